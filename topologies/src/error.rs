//! Errors of the engine, with what a caller needs to decide: retry or not.

use std::time::Duration;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An engine error.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The topology file is unreadable or inconsistent. Not retryable.
    #[error("topology {path}: {message}")]
    Spec { path: String, message: String },
    /// JetStream did not acknowledge in time. Retryable.
    #[error("no acknowledgement from JetStream within {0:?}")]
    AckTimeout(Duration),
    /// JetStream refused a publish or an API call (`code` is its err_code). Retryable
    /// unless the caller knows the code is permanent.
    #[error("JetStream error {code}: {description}")]
    JetStream { code: u64, description: String },
    /// The NATS connection failed. Retryable.
    #[error("NATS: {0}")]
    Nats(String),
    /// No stream takes this subject (no responders to a JetStream publish, or no
    /// stream listed for it). Permanent until the topology changes.
    #[error("no stream takes subject {0}")]
    NoStream(String),
    /// The message (headers and payload) is larger than the server's `max_payload`.
    /// Permanent: the same message is refused every time.
    #[error("too large: {0}")]
    TooLarge(String),
    /// A header name or value NATS cannot carry (control characters, `:` in a name,
    /// CR/LF in a value). Permanent.
    #[error("header refused: {0}")]
    BadHeader(String),
    /// Too much work queued: shed load instead of queueing without bound. Retryable.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// Not done because it would lose data; possible again once what it names changes.
    #[error("{0}")]
    Refused(String),
    /// What an operator named does not exist (a dead letter's sequence, a pool).
    #[error("{0}")]
    NotFound(String),
    /// An operator's request is out of bounds (a concurrency of 0, an empty selection).
    #[error("{0}")]
    Invalid(String),
    /// The component was asked to stop.
    #[error("shutting down")]
    ShuttingDown,
}

impl Error {
    pub(crate) fn nats(e: impl std::fmt::Display) -> Self {
        Error::Nats(e.to_string())
    }

    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        !self.is_permanent()
            && !matches!(
                self,
                Error::Spec { .. } | Error::ShuttingDown | Error::NotFound(_) | Error::Invalid(_)
            )
    }

    /// Whether publishing the same message again can never succeed as things stand:
    /// no stream takes its subject, it is too large, a header is refused, or JetStream
    /// answered with an err_code that describes the message rather than the server's
    /// moment ([`PERMANENT_PUBLISH_CODES`]). A caller that must not block on such a
    /// message (the outbox relay) sets it aside; everything else — timeouts, a lost
    /// connection, a full stream, a leader election — is transient.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::NoStream(_) | Error::TooLarge(_) | Error::BadHeader(_) => true,
            Error::JetStream { code, .. } => PERMANENT_PUBLISH_CODES.contains(code),
            _ => false,
        }
    }
}

/// JetStream err_codes of a publish that the same message will get every time.
/// Deliberately absent (transient): 10077 store failed, 10047/10023 resources, 10053
/// stream limits (a full `discard = "new"` stream drains), 10158 duplicate in process,
/// 10167/10210 too many requests, 10201 duplicate id in a batch (the publisher falls
/// back to single publishes).
pub const PERMANENT_PUBLISH_CODES: &[u64] = &[
    10054, // message size exceeds the stream's max_msg_size
    10097, // header size exceeds 64k
    10060, // Nats-Expected-Stream does not match
    10063, // expected stream sequence does not match
    10070, // Nats-Expected-Last-Msg-Id does not match
    10071, // Nats-Expected-Last-Sequence does not match
    10164, // wrong last sequence
    10109, // stream sealed
    10165, // invalid Nats-TTL
    10166, // per-message TTL disabled on the stream
    10174, // atomic publish disabled on the stream
    10177, // a header atomic batches do not support
    10199, // atomic batch too large
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpublishable_messages_are_permanent_and_outages_are_not() {
        for e in [
            Error::NoStream("souk.nowhere".into()),
            Error::TooLarge("2 > 1".into()),
            Error::BadHeader("x".into()),
            Error::JetStream { code: 10054, description: "message size exceeds maximum allowed".into() },
            Error::JetStream { code: 10166, description: "per-message TTL is disabled".into() },
        ] {
            assert!(e.is_permanent() && !e.is_retryable(), "{e}");
        }
        for e in [
            Error::AckTimeout(Duration::from_secs(1)),
            Error::Nats("connection closed".into()),
            Error::JetStream { code: 10077, description: "store failed".into() },
            Error::JetStream { code: 10053, description: "maximum bytes exceeded".into() },
            Error::JetStream { code: 10201, description: "duplicate message id".into() },
            Error::Overloaded("queue full"),
        ] {
            assert!(!e.is_permanent() && e.is_retryable(), "{e}");
        }
    }
}
