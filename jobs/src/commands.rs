//! `WriteProduct` commands as the job and the seeder publish them: through
//! `OutgoingMessage::command` with `WriteProduct::message_id`, as the ingress's product
//! writes, so the catalog pool (and its inbox) cannot tell them apart; and the v5 UUIDs
//! that make their write ids deterministic.

use souk_pipelines::catalog::WriteProduct;
use souk_topologies::publisher::OutgoingMessage;
use uuid::Uuid;

/// The message for `command`: headers and `Nats-Msg-Id` (from its write id, which a
/// retry keeps) as every command publisher sends them.
pub fn write_message(command: &WriteProduct) -> OutgoingMessage {
    OutgoingMessage::command(command, command.message_id(), &command.tenant)
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
