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
    /// Too much work queued: shed load instead of queueing without bound. Retryable.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// Not done because it would lose data; possible again once what it names changes.
    #[error("{0}")]
    Refused(String),
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
        !matches!(self, Error::Spec { .. } | Error::ShuttingDown)
    }
}
