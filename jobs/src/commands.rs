//! `WriteProduct` commands as the job and the seeder publish them: the same subject,
//! headers and message id scheme as the ingress's product writes, so the catalog pool
//! (and its inbox) cannot tell them apart.

use async_nats::HeaderMap;
use bytes::Bytes;
use souk_pipelines::{Message, catalog::WriteProduct, encode, headers};
use souk_topologies::publisher::OutgoingMessage;
use uuid::Uuid;

/// `Nats-Msg-Id` of a product write: its write id, which a retry keeps.
pub fn message_id(tenant: &str, write_id: Uuid) -> String {
    format!("catalog.write:{tenant}:{write_id}")
}

/// The message for `command`.
pub fn write_message(command: &WriteProduct) -> OutgoingMessage {
    let msg_id = message_id(&command.tenant, command.write_id);
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEMA, WriteProduct::schema_header().as_str());
    h.insert(headers::TENANT, command.tenant.as_str());
    h.insert(headers::CAUSATION_ID, msg_id.as_str());
    OutgoingMessage {
        subject: WriteProduct::SUBJECT.into(),
        msg_id,
        headers: h,
        payload: Bytes::from(encode(command)),
    }
}

/// A name-based (version 5) UUID: the same `name` under `namespace` always gives the
/// same id. SHA-1 is what RFC 9562 prescribes for v5; it serves as a hash here, not as
/// a signature.
pub fn uuid_v5(namespace: Uuid, name: &[u8]) -> Uuid {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(namespace.as_bytes());
    ctx.update(name);
    let digest = ctx.finish();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest.as_ref()[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v5_matches_the_rfc_example() {
        // RFC 9562 appendix A.4: "www.example.com" in the DNS namespace.
        let dns = Uuid::parse_str("6ba7b810-9dad-11d1-80b4-00c04fd430c8").expect("uuid");
        assert_eq!(uuid_v5(dns, b"www.example.com").to_string(), "2ed6657d-e927-568b-95e1-2665a8aea6a2");
    }
}
