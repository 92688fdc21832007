//! Following one order through every pipeline (`souk trace`, the dashboard's order page):
//! what a trace is made of, and the traits through which the stores join it. No I/O.
//!
//! The engine (`souk_topologies::follow`) builds a [`Trace`] from a [`Journal`] — which
//! order an id names, the outbox rows of the order's aggregates, which consumers handled
//! which messages — and from one [`Source`] per pipeline (its own records: a saga's steps,
//! a stock hold, a payment ledger row, a fulfilment). A pipeline joins the trace by
//! adding its `Source` to the list its store hands out; nothing else changes. Every
//! record names the message it is about by stream and sequence where one exists, so the
//! engine reads the few stored messages it needs directly, never scanning a stream.

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A store failure while reading a trace.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// The order being followed, as the id given resolved to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Followed {
    pub order_id: Uuid,
    pub tenant: String,
    /// The W3C trace id of the request that placed the order, when known.
    pub trace_id: Option<String>,
    /// Sellers of the order's lines (a seller's part of an order is keyed by seller).
    pub sellers: Vec<String>,
}

/// What one entry of a trace is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The HTTP request that placed the order (its idempotency claim).
    Request,
    /// A command written (to the outbox, or published by the ingress).
    Command,
    /// An event written to the outbox.
    Event,
    /// The relay stored an outbox row in its stream (with its sequence).
    Published,
    /// A consumer's handler failed on one delivery of a message (a [`FailedAttempt`]).
    Attempt,
    /// A consumer handled a message (its inbox record: stream sequence, delivery).
    Handled,
    /// A message copied to the dead-letter stream.
    DeadLetter,
    /// A saga step: its command sent, or its reply taken.
    Step,
    /// A pipeline's own record: the order row, a stock hold, a payment, a fulfilment.
    Record,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Command => "command",
            Kind::Event => "event",
            Kind::Published => "published",
            Kind::Attempt => "attempt",
            Kind::Handled => "handled",
            Kind::DeadLetter => "dead-letter",
            Kind::Step => "step",
            Kind::Record => "record",
        }
    }
}

/// One thing souk did with the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub at: DateTime<Utc>,
    /// The pipeline that did it: `orders`, `saga`, `inventory`, `payments`, `fulfilment`.
    pub pipeline: String,
    pub kind: Kind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// The consumer that handled (or dead-lettered) the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The delivery of the message to `consumer` (1: the first) that this entry is
    /// about: a handling, or a failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<u64>,
    pub detail: String,
    /// How it ended (`ok`, a step's outcome, the dead letter's error, what the runtime
    /// did after a failed attempt: `retry`, `held`, `dead-letter` …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The error of a failed attempt (cut to [`MAX_ATTEMPT_ERROR`] characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Entry {
    /// An entry with no message attached.
    pub fn new(at: DateTime<Utc>, pipeline: &str, kind: Kind, detail: impl Into<String>) -> Entry {
        Entry {
            at,
            pipeline: pipeline.to_owned(),
            kind,
            subject: None,
            stream: None,
            stream_seq: None,
            message_id: None,
            consumer: None,
            delivery: None,
            detail: detail.into(),
            outcome: None,
            error: None,
        }
    }

    pub fn outcome(mut self, outcome: impl Into<String>) -> Entry {
        self.outcome = Some(outcome.into());
        self
    }

    pub fn message(mut self, subject: &str, message_id: &str) -> Entry {
        self.subject = Some(subject.to_owned());
        self.message_id = Some(message_id.to_owned());
        self
    }
}

/// Everything souk did with one order, in time order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trace {
    pub order_id: Uuid,
    pub tenant: String,
    pub trace_id: Option<String>,
    pub entries: Vec<Entry>,
    /// Parts that could not be read (then missing from `entries`, never guessed).
    pub problems: Vec<String>,
}

/// An outbox row of one of the order's aggregates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: Uuid,
    pub aggregate_id: String,
    pub subject: String,
    pub created_at: DateTime<Utc>,
    pub published_at: Option<DateTime<Utc>>,
    /// Where the relay stored it (from its PubAck).
    pub stream: Option<String>,
    pub stream_seq: Option<u64>,
    pub parked_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// A consumer's inbox record of a message it handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handling {
    pub consumer: String,
    pub message_id: String,
    pub at: DateTime<Utc>,
    /// Where the message was (null for records written before souk kept it).
    pub stream: Option<String>,
    pub stream_seq: Option<u64>,
    /// The delivery that handled it (1: the first).
    pub delivered: Option<u64>,
}

/// The records that join the pipelines of one deployment.
pub trait Journal: Send + Sync {
    /// The order `id` names: an order id, or the trace id of the request that placed it.
    fn resolve<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Followed>, SourceError>>;

    /// The outbox rows of these aggregates, in outbox order.
    fn outbox<'a>(&'a self, aggregates: &'a [String]) -> BoxFuture<'a, Result<Vec<OutboxRow>, SourceError>>;

    /// Which of these `(consumer, message id)` pairs were handled, and how.
    fn handled<'a>(
        &'a self,
        pairs: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Handling>, SourceError>>;

    /// The recorded dead letters of these messages (by the originals' message ids).
    fn dead_letters<'a>(
        &'a self,
        message_ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<DeadLetterRecord>, SourceError>>;

    /// The recorded failed attempts of these `(consumer, message id)` pairs.
    fn attempts<'a>(
        &'a self,
        pairs: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<FailedAttempt>, SourceError>>;
}

/// Where a message's dead letter is: recorded by the runtime when it copies a message
/// to the dead-letter stream, so a trace finds it by the original's message id and reads
/// it by sequence (DLQ holds every consumer's dead letters; scanning it is not an option).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLettered {
    /// The consumer that gave up on the message.
    pub consumer: String,
    /// The original's `Nats-Msg-Id`, if it had one.
    pub message_id: Option<String>,
    pub stream: String,
    pub stream_seq: u64,
    pub dlq_stream: String,
    pub dlq_seq: u64,
    pub attempts: u64,
    pub error: String,
}

/// Longest error text a [`FailedAttempt`] keeps (as a dead letter's `souk-dlq-error`).
pub const MAX_ATTEMPT_ERROR: usize = 1024;

/// `text` cut to [`MAX_ATTEMPT_ERROR`] characters.
pub fn bounded_error(text: &str) -> String {
    match text.char_indices().nth(MAX_ATTEMPT_ERROR) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// What failed in an attempt: the handler's error class, with the runtime's own two
/// failures (a timeout, a panic) told apart from other retryable errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureClass {
    /// A retryable error (a conflict, a transient refusal): counts toward max-deliver.
    Retryable,
    /// The handler ran past its timeout (and the dependency's probe passed).
    Timeout,
    /// The handler panicked.
    Panic,
    /// The message itself cannot be handled: dead-lettered at once.
    Poison,
    /// A dependency (a store, a broker) failed: the delivery is held, not counted.
    Dependency,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::Retryable => "retryable",
            FailureClass::Timeout => "timeout",
            FailureClass::Panic => "panic",
            FailureClass::Poison => "poison",
            FailureClass::Dependency => "dependency",
        }
    }

    pub fn parse(s: &str) -> Option<FailureClass> {
        [Self::Retryable, Self::Timeout, Self::Panic, Self::Poison, Self::Dependency]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// What the runtime did with a delivery whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AfterFailure {
    /// Nak'd for a later redelivery (after the backoff step or the error's delay).
    Retry,
    /// Held in the process while the pool's breaker is open, then run again as the
    /// same delivery.
    Held,
    /// Copied to the dead-letter stream, the original terminated.
    DeadLetter,
    /// The dead-letter copy could not be stored: left for redelivery.
    DeadLetterFailed,
}

impl AfterFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AfterFailure::Retry => "retry",
            AfterFailure::Held => "held",
            AfterFailure::DeadLetter => "dead-letter",
            AfterFailure::DeadLetterFailed => "dead-letter-failed",
        }
    }

    pub fn parse(s: &str) -> Option<AfterFailure> {
        [Self::Retry, Self::Held, Self::DeadLetter, Self::DeadLetterFailed]
            .into_iter()
            .find(|c| c.as_str() == s)
    }
}

/// One delivery of a message whose handling failed, as the runtime saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAttempt {
    pub consumer: String,
    /// The message's `Nats-Msg-Id`, if it had one (the trace finds attempts by it).
    pub message_id: Option<String>,
    pub stream: String,
    pub stream_seq: u64,
    /// Which delivery failed (1: the first; deferrals of a too-new schema not counted).
    pub delivery: u64,
    pub class: FailureClass,
    /// The error's stable code (`pg_serialization_failure`, `handler_panic` …).
    pub code: String,
    /// At most [`MAX_ATTEMPT_ERROR`] characters.
    pub error: String,
    pub then: AfterFailure,
    /// When the attempt failed (the runtime's clock).
    pub at: DateTime<Utc>,
}

/// Where the runtime records failures for `souk trace` ([`FailedAttempt`]s and
/// [`DeadLettered`] copies). The runtime writes to it from a queue, off the path of the
/// messages: a slow or failing log never delays or changes a message's outcome.
pub trait FailureLog: Send + Sync + 'static {
    /// Record these failed attempts (a batch the runtime gathered).
    fn record_attempts<'a>(&'a self, attempts: &'a [FailedAttempt])
    -> BoxFuture<'a, Result<(), SourceError>>;

    /// Record where a dead letter was stored.
    fn record_dead_letter<'a>(&'a self, letter: &'a DeadLettered) -> BoxFuture<'a, Result<(), SourceError>>;
}

/// A recorded dead letter of one of the order's messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterRecord {
    pub consumer: String,
    pub message_id: String,
    pub dlq_stream: String,
    pub dlq_seq: u64,
    pub at: DateTime<Utc>,
    /// When an operator redrove it (it left the DLQ then).
    pub redriven_at: Option<DateTime<Utc>>,
}

/// One pipeline's part of an order's trace.
pub trait Source: Send + Sync {
    /// The pipeline's name, as entries carry it.
    fn pipeline(&self) -> &'static str;

    /// The outbox aggregates the pipeline writes the order's messages under.
    fn aggregates(&self, _order: &Followed) -> Vec<String> {
        Vec::new()
    }

    /// The pipeline's own records of the order, as entries. Messages it names (as
    /// `Command` entries with a subject and message id) are joined to their handlers.
    fn entries<'a>(&'a self, order: &'a Followed) -> BoxFuture<'a, Result<Vec<Entry>, SourceError>>;
}
