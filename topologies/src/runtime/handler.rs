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
    /// Position in the stream: unique per message, stable across redeliveries.
    pub stream_sequence: u64,
    /// 1 on the first attempt. Deliveries deferred by this pool because the handler
    /// could not read the message yet ([`Handler::too_new`]) are not counted.
    pub attempt: u64,
    /// The durable consumer that delivered it.
    pub consumer: String,
}

impl Delivery {
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

/// A handler's verdict on one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled and committed: ack it.
    Ack,
    /// A transient failure: try again after `after`, or after the consumer's backoff
    /// step when `None` (unless deliveries are used up).
    Retry { after: Option<Duration>, error: String },
    /// Can never succeed (bad payload, broken invariant): dead-letter it now.
    Fail { reason: String },
    /// Not readable by this release yet (a newer schema version: a writer was upgraded
    /// before this reader): retried after a long delay, never dead-lettered, and not
    /// counted toward max-deliver. The pool alerts (`souk_worker_unknown_schema_total`).
    Defer { reason: String },
}

impl Outcome {
    /// Retry on the consumer's backoff schedule.
    pub fn retry(error: impl std::fmt::Display) -> Self {
        Outcome::Retry { after: None, error: error.to_string() }
    }

    /// Dead-letter now.
    pub fn fail(reason: impl std::fmt::Display) -> Self {
        Outcome::Fail { reason: reason.to_string() }
    }

    /// Wait for a release that can read it.
    pub fn defer(reason: impl std::fmt::Display) -> Self {
        Outcome::Defer { reason: reason.to_string() }
    }
}

/// Handles messages of one pool. Must be idempotent: a message can be delivered again
/// after its effects were committed (e.g. the worker died before acking).
pub trait Handler: Send + Sync + 'static {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome>;

    /// `Some(reason)` when this release cannot read `delivery` yet: its schema version
    /// is newer than the handler knows (see [`Delivery::newer_version`]). Asked first,
    /// on every delivery — also one past max-deliver, whose earlier deliveries may have
    /// been deferrals by a process that has since gone — so such a message is deferred
    /// ([`Outcome::Defer`]) and never dead-lettered for its delivery count. Must only
    /// look at the delivery (no I/O). The default: every schema is readable.
    fn too_new(&self, _delivery: &Delivery) -> Option<String> {
        None
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
