//! What a handler sees and what it answers.

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::future::BoxFuture;
use souk_pipelines::{DecodeError, Message, headers};
use std::{collections::HashMap, sync::Arc, time::Duration};

/// One delivery of one message to a handler.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subject: String,
    pub headers: Option<HeaderMap>,
    pub payload: Bytes,
    /// The message's `Nats-Msg-Id`, if it was published with one.
    pub message_id: Option<String>,
    /// The stream that holds the message.
    pub stream: String,
    /// Position in the stream: unique per message, stable across redeliveries.
    pub stream_sequence: u64,
    /// 1 on the first attempt. Deliveries deferred by this pool because the handler
    /// could not read the message yet ([`Handler::too_new`]) are not counted.
    pub attempt: u64,
    /// The durable consumer that delivered it.
    pub consumer: String,
    /// When the stream stored the message (by the server's clock): how long a command
    /// waited before it ran (`None`: not known).
    pub stored_at: Option<std::time::SystemTime>,
}

impl Delivery {
    /// The delivery of `msg`, a message at `stream_sequence` of its stream, as attempt
    /// `attempt` by `consumer`.
    pub fn of(
        msg: &async_nats::jetstream::Message,
        stream_sequence: u64,
        attempt: u64,
        consumer: impl Into<String>,
    ) -> Delivery {
        let info = msg.info().ok();
        Delivery {
            subject: msg.subject.to_string(),
            headers: msg.headers.clone(),
            payload: msg.payload.clone(),
            message_id: msg
                .headers
                .as_ref()
                .and_then(|h| h.get(headers::MSG_ID))
                .map(|v| v.as_str().to_owned()),
            stream: info.as_ref().map(|i| i.stream.to_owned()).unwrap_or_default(),
            stream_sequence,
            attempt,
            consumer: consumer.into(),
            stored_at: info.map(|i| std::time::SystemTime::from(i.published)),
        }
    }

    /// A header value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.as_ref()?.get(name).map(|v| v.as_str())
    }

    /// Decode the payload as `M`, checking the `souk-schema` header.
    pub fn decode<M: Message>(&self) -> Result<M, DecodeError> {
        souk_pipelines::decode(self.header(headers::SCHEMA), &self.payload)
    }

    /// `Some(version)` when the `souk-schema` header names `M` at a version newer than
    /// this release reads (see [`Handler::too_new`]).
    pub fn newer_version<M: Message>(&self) -> Option<u16> {
        souk_pipelines::newer_version::<M>(self.header(headers::SCHEMA))
    }

    /// An id that identifies this message for inbox de-duplication: the `Nats-Msg-Id`
    /// when present, else the stream and sequence.
    pub fn dedupe_id(&self) -> String {
        match &self.message_id {
            Some(id) => id.clone(),
            None => format!("seq:{}", self.stream_sequence),
        }
    }
}

/// Whose fault a failure is, which decides what the runtime does with the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The message failed and may pass on a later attempt (a conflict, a race, a panic,
    /// a handler timeout while the dependency answers its probe): retried after the
    /// consumer's backoff step. Counts toward max-deliver; the last failed attempt is
    /// dead-lettered.
    Retryable,
    /// The message can never succeed (undecodable payload, a broken business rule):
    /// dead-lettered at once.
    Poison,
    /// A dependency failed (store or broker unavailable, timed out, read-only, out of
    /// connections): the message is not at fault. It never counts toward max-deliver
    /// and is never dead-lettered: the pool's breaker opens, the pool stops fetching,
    /// the message is kept (progress acks) and runs again once the dependency answers
    /// [`Handler::probe`].
    Dependency,
    /// The message is of a newer schema version than this release reads (a writer was
    /// upgraded before this reader): not malformed, readable after the upgrade. Retried
    /// after a long delay (60 s), never dead-lettered, not counted toward max-deliver;
    /// the pool alerts (`souk_worker_unknown_schema_total`, a warning a minute).
    TooNew,
    /// Another delivery of the same work is under way (a payment key another call
    /// holds): not the message's fault, not a dependency's. Kept in the process
    /// (progress acks, its handler slot given up) for the error's delay (else 10 s) and
    /// run again as the same delivery: never dead-lettered, not counted toward max-deliver — a
    /// re-sent command beside its original would otherwise spend its attempts waiting
    /// and be dead-lettered for it (found in review). Of the deliveries waiting on one
    /// work ([`HandlerError::on_work`]) in a pool, the first waits; the others are acked.
    Waiting,
}

impl ErrorClass {
    /// A metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::Poison => "poison",
            ErrorClass::Dependency => "dependency",
            ErrorClass::TooNew => "too_new",
            ErrorClass::Waiting => "waiting",
        }
    }
}

/// A classified handler failure: its class, a stable code (snake_case, from a fixed
/// set per handler: fit for alerts and metrics labels) and the details.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct HandlerError {
    pub class: ErrorClass,
    pub code: &'static str,
    pub message: String,
    /// For a `Retryable` error: wait this long instead of the consumer's backoff step;
    /// for a `Waiting` one, this long instead of 10 s.
    pub retry_after: Option<Duration>,
    /// For a `Waiting` error: the work it waits to do (a payment step's idempotency
    /// key), if another delivery of the same work may come (a re-sent command). One
    /// delivery per work waits in a pool: another that comes to wait on it is acked, as
    /// done by the one waiting, which answers for both — re-sends waiting beside their
    /// originals filled the consumer's max-ack-pending during a long outage and stopped
    /// its other commands (review, eleventh session).
    pub work: Option<String>,
}

impl HandlerError {
    fn new(class: ErrorClass, code: &'static str, message: impl std::fmt::Display) -> Self {
        HandlerError { class, code, message: message.to_string(), retry_after: None, work: None }
    }

    /// The message failed; a later attempt may pass (counts toward max-deliver).
    pub fn retryable(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorClass::Retryable, code, message)
    }

    /// The message can never succeed: dead-letter it now.
    pub fn poison(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorClass::Poison, code, message)
    }

    /// A dependency failed, not the message.
    pub fn dependency(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorClass::Dependency, code, message)
    }

    /// Another delivery of the same work is under way: wait for it (see
    /// [`ErrorClass::Waiting`]; [`HandlerError::after`] sets the wait).
    pub fn waiting(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorClass::Waiting, code, message)
    }

    /// Written by a newer release than this reader: wait for the upgrade.
    pub fn too_new(code: &'static str, message: impl std::fmt::Display) -> Self {
        Self::new(ErrorClass::TooNew, code, message)
    }

    /// Retry after `after` rather than the consumer's backoff step.
    pub fn after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    /// A `Waiting` error's work (see [`HandlerError::work`]).
    pub fn on_work(mut self, work: impl Into<String>) -> Self {
        self.work = Some(work.into());
        self
    }
}

/// A handler's verdict on one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled and committed: ack it.
    Ack,
    /// Not handled: the error's [`ErrorClass`] decides what happens to the message.
    Error(HandlerError),
}

impl Outcome {
    /// A retryable failure of the message (see [`HandlerError::retryable`]).
    pub fn retry(code: &'static str, message: impl std::fmt::Display) -> Self {
        Outcome::Error(HandlerError::retryable(code, message))
    }

    /// The message is poison: dead-letter it now.
    pub fn fail(code: &'static str, message: impl std::fmt::Display) -> Self {
        Outcome::Error(HandlerError::poison(code, message))
    }

    /// A dependency failed (see [`HandlerError::dependency`]).
    pub fn unavailable(code: &'static str, message: impl std::fmt::Display) -> Self {
        Outcome::Error(HandlerError::dependency(code, message))
    }

    /// Not readable by this release yet (see [`HandlerError::too_new`]).
    pub fn defer(code: &'static str, message: impl std::fmt::Display) -> Self {
        Outcome::Error(HandlerError::too_new(code, message))
    }

    /// The error, unless acked.
    pub fn error(&self) -> Option<&HandlerError> {
        match self {
            Outcome::Ack => None,
            Outcome::Error(e) => Some(e),
        }
    }
}

impl From<HandlerError> for Outcome {
    fn from(e: HandlerError) -> Self {
        Outcome::Error(e)
    }
}

/// Handles messages of one pool. Must be idempotent: a message can be delivered again
/// after its effects were committed (e.g. the worker died before acking).
///
/// The contract on failures: classify every error by whose fault it is
/// ([`ErrorClass`]). A failure of the message (bad payload, business rule, a conflict)
/// counts toward max-deliver and ends in the dead-letter stream; a failure of a
/// dependency (store or broker unavailable, timeout, read-only standby, too many
/// connections) never does: the pool's breaker opens and [`probe`](Handler::probe)
/// tells when to resume.
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome>;

    /// `Some(reason)` when this release cannot read `delivery` yet: its schema version
    /// is newer than the handler knows (see [`Delivery::newer_version`]). Asked first,
    /// on every delivery — also one past max-deliver, whose earlier deliveries may have
    /// been deferrals by a process that has since gone — so such a message is deferred
    /// (class [`ErrorClass::TooNew`]) and never dead-lettered for its delivery count. Must only
    /// look at the delivery (no I/O). The default: every schema is readable.
    fn too_new(&self, _delivery: &Delivery) -> Option<String> {
        None
    }

    /// A cheap health check of the handler's dependencies (e.g. `select 1`), run while
    /// the pool's breaker is open, so probing costs no message a delivery. Also asked
    /// after a handler timeout: a timeout is the dependency's fault only if the probe
    /// fails too. The default has no dependency to check.
    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }

    /// The sinks this handler writes besides its system of record (see
    /// [`super::SinkStats`]): a process reports the sinks of the pools it runs with its
    /// heartbeat, so they appear in the status model. The default writes none.
    fn sinks(&self) -> Vec<std::sync::Arc<super::SinkStats>> {
        Vec::new()
    }

    /// Handle several deliveries at once, returning one outcome per delivery, in order.
    /// Pools with `max-batch` > 1 call this with whatever messages are ready together,
    /// so a handler can commit many messages in one transaction (one fsync): each
    /// message's state, inbox record and outbox rows still commit together. The
    /// default handles them one by one.
    fn handle_batch<'a>(&'a self, deliveries: &'a [Delivery]) -> BoxFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(deliveries.len());
            for d in deliveries {
                outcomes.push(self.handle(d).await);
            }
            outcomes
        })
    }
}

/// Handlers by the name pools refer to them with in the topology.
#[derive(Default, Clone)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.handlers.keys()).finish()
    }
}

impl Registry {
    /// Register `handler` as `name`.
    pub fn register(&mut self, name: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(name.into(), Arc::new(handler));
        self
    }

    /// The handler registered as `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Handler>> {
        self.handlers.get(name).cloned()
    }
}
