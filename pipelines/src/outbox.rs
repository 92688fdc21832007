//! The transactional outbox, as the relay sees it.
//!
//! Handlers write outbox rows in the same Postgres transaction as their state change;
//! the relay in `souk-topologies` drains them through this trait, so the engine never
//! needs to know which database holds them.

use futures::future::BoxFuture;

/// One message waiting to be published. `id` becomes the `Nats-Msg-Id`, so a relay that
/// crashes after publishing but before [`Outbox::mark_published`] republishes harmlessly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// Unique id; also the JetStream de-duplication id.
    pub id: uuid::Uuid,
    /// Position in the outbox: messages of one aggregate are published in this order.
    pub seq: i64,
    /// The aggregate (e.g. order id) the message is about.
    pub aggregate_id: String,
    pub subject: String,
    /// Headers to send besides `Nats-Msg-Id` (schema, trace context, causation).
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Where JetStream stored a published message (its PubAck; for a duplicate, the copy
/// stored first): kept with the row, so a message can be read back by sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub id: uuid::Uuid,
    pub stream: String,
    pub stream_seq: u64,
}

/// A store of unpublished messages.
pub trait Outbox: Send + Sync + 'static {
    type Error: std::error::Error + Send + Sync + 'static;

    /// Up to `limit` unpublished messages, oldest first — except parked ones, the later
    /// messages of a parked message's aggregate (they wait behind it, in order), and
    /// every message of the aggregates in `skip` (held back by the relay: a message of
    /// theirs cannot be published now).
    fn pending<'a>(
        &'a self,
        limit: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<OutboxMessage>, Self::Error>>;

    /// Record that these messages were acknowledged by JetStream, and where it stored
    /// them. Fails, marking nothing, when this outbox no longer holds the lease it last
    /// took with [`Outbox::try_lease`] (another relay has taken over).
    fn mark_published<'a>(&'a self, published: &'a [Published]) -> BoxFuture<'a, Result<(), Self::Error>>;

    /// Record that publishing message `id` failed with a permanent error (one the same
    /// message gets every time). Returns how many times that has happened to it.
    fn record_failure<'a>(
        &'a self,
        id: uuid::Uuid,
        error: &'a str,
    ) -> BoxFuture<'a, Result<u32, Self::Error>>;

    /// Set message `id` aside with `error`: it and the later unpublished messages of its
    /// aggregate are no longer pending until an operator requeues them. Returns how many
    /// messages are parked in all afterwards. Fails, parking nothing, when this outbox no
    /// longer holds the lease (as [`Outbox::mark_published`]).
    fn park<'a>(&'a self, id: uuid::Uuid, error: &'a str) -> BoxFuture<'a, Result<u64, Self::Error>>;

    /// How many messages are parked (for the relay's gauge).
    fn parked_count(&self) -> BoxFuture<'_, Result<u64, Self::Error>>;

    /// Wait until new messages may be pending, or `timeout` passes (a hint; the relay
    /// polls anyway).
    fn wait_for_new(&self, timeout: std::time::Duration) -> BoxFuture<'_, ()>;

    /// Take the relay lease: only one relay publishes from an outbox at a time, which is
    /// what keeps the messages of one aggregate in order. Returns false if another
    /// relay holds it.
    fn try_lease(&self) -> BoxFuture<'_, Result<bool, Self::Error>>;
}

/// How far behind an outbox is, for the pipeline status (`souk status`, the dashboard,
/// the `souk_outbox_*` gauges).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OutboxBacklog {
    /// Unpublished messages the relay will publish (parked ones excluded).
    pub unpublished: u64,
    /// Messages set aside until an operator requeues them.
    pub parked: u64,
    /// Age of the oldest of `unpublished` (`None` when there is none).
    pub oldest_secs: Option<f64>,
}

/// An outbox that can say how far behind it is. Separate from [`Outbox`] (the relay's
/// view): whatever reads the status needs no lease and no relay.
pub trait OutboxStats: Send + Sync + 'static {
    fn backlog(&self) -> BoxFuture<'_, Result<OutboxBacklog, Box<dyn std::error::Error + Send + Sync>>>;
}
