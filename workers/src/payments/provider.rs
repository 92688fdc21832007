//! The `PaymentProvider` trait: what the payments pool asks of a provider, whatever
//! its dialect, and how a call can end — the distinction every decision rests on.

use futures::future::BoxFuture;
use souk_pipelines::payments::Operation;

/// Authorize `amount_minor` on `token`.
#[derive(Debug, Clone)]
pub struct Charge<'a> {
    pub key: &'a str,
    pub token: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
}

/// Capture, void or refund the provider's payment `payment_id`.
#[derive(Debug, Clone)]
pub struct Settle<'a> {
    pub key: &'a str,
    pub operation: Operation,
    pub payment_id: &'a str,
    pub amount_minor: i64,
}

/// The provider processed the request and answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Approved {
        payment_id: String,
    },
    /// `soft`: the issuer asks to try again later; otherwise final.
    Declined {
        code: String,
        message: String,
        soft: bool,
    },
}

/// A call that did not end with a processed answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Refused before processing (connection refused, 503): nothing moved. Safe to
    /// send elsewhere.
    #[error("not processed: {0}")]
    NotProcessed(String),
    /// No usable answer (timeout, connection reset, another 5xx, an unreadable body):
    /// the request may have been processed. Ask the provider by key before deciding.
    #[error("no answer: {0}")]
    Ambiguous(String),
    /// The provider refused the request itself (4xx: unknown token, invalid state).
    #[error("refused ({status} {code}): {message}")]
    Refused { status: u16, code: String, message: String },
}

/// A payment provider, spoken to over HTTP by an adapter of its dialect. Every call
/// carries the step's idempotency key and has a timeout.
pub trait PaymentProvider: Send + Sync + 'static {
    /// The provider's name (`primary`, `secondary`): in the ledger and in metrics.
    fn name(&self) -> &str;

    fn authorize<'a>(&'a self, charge: &'a Charge<'a>) -> BoxFuture<'a, Result<Reply, CallError>>;

    fn settle<'a>(&'a self, settle: &'a Settle<'a>) -> BoxFuture<'a, Result<Reply, CallError>>;

    /// The answer the provider gave `key`; `None`: it processed no request under it.
    fn status<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Reply>, CallError>>;

    /// Whether the provider answers at all (the pool's probe while its breaker is open).
    fn health(&self) -> BoxFuture<'_, Result<(), CallError>>;
}
