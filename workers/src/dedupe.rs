//! Apply each message once, whatever JetStream delivers: the inbox pattern as a wrapper
//! every event handler (and every other handler without its own aggregate keys) uses.
//!
//! Delivery is at least once, and the events stream can hold the same event twice: the
//! relay republishes what it published but could not mark (a crash, a lease lost
//! mid-round), and past `EVT`'s 2-minute dedupe window JetStream stores the copy. Every
//! event carries its outbox id as `Nats-Msg-Id`, so [`Deduplicated`] records that id in
//! the inbox in the same transaction as the handler's changes: a copy, or a redelivery
//! after a commit whose ack was lost, finds the record and changes nothing.
//!
//! ```ignore
//! registry.register("search.index-order", Deduplicated::new(pool, "search-orders", IndexOrder));
//! ```
//!
//! In a pool with `max-batch` > 1 the deliveries that are ready together share one
//! transaction (one commit, one fsync): inbox records for all, then each `Apply` in
//! turn, in a fixed order (see [`Deduplicated::handle_batch`]).

use futures::{FutureExt, future::BoxFuture};
use souk_stores::postgres::{self as pg, inbox};
use souk_topologies::{
    runtime::{Delivery, Handler, HandlerError, Outcome},
    trace,
};
use sqlx::{PgConnection, PgPool};
use tracing::Instrument;

/// Why a message was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The message itself can never be applied (unreadable, against a business rule):
    /// it is dead-lettered.
    #[error("{0}")]
    Message(String),
    /// The store failed: an outage holds the message behind the pool's breaker,
    /// contention is retried, anything else dead-letters it (`store::store_error`).
    #[error(transparent)]
    Store(#[from] pg::Error),
}

/// The changes one message makes, inside the transaction that also records it in the
/// inbox. Implementations must not commit (the wrapper does).
pub trait Apply: Send + Sync + 'static {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        delivery: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>>;

    /// The tables `apply` writes: the breaker's probe checks they take writes now
    /// (see `store::probe_writable`), besides the inbox.
    fn tables(&self) -> &'static [&'static str] {
        &[]
    }

    /// `Some(why)` when this release cannot read `delivery` yet (a newer schema): the
    /// runtime defers it until the upgrade instead of applying it (see
    /// [`Handler::too_new`]).
    fn too_new(&self, _delivery: &Delivery) -> Option<String> {
        None
    }

    /// The aggregate whose lock `apply` takes for `delivery` (a product's tenant and
    /// SKU), if any; must only look at the delivery. A batch applies its deliveries by
    /// this key, then by stream sequence (see [`Deduplicated::handle_batch`]). `None`
    /// (the default): stream order alone.
    fn lock_key(&self, _delivery: &Delivery) -> Option<String> {
        None
    }

    /// Take, in a batch's transaction, the locks its `deliveries` (those not applied
    /// before, in the order they will be applied) need beyond their [`Self::lock_key`],
    /// before any of them is applied: for handlers whose messages lock several rows
    /// each (an order's stock rows), so that every lock of the batch is taken in one
    /// global order and two batches cannot deadlock. A delivery it cannot read is left
    /// to its `apply`, which refuses it. Not called for a message handled alone (its
    /// own lock order is the global one). The default takes nothing.
    fn lock_batch<'a>(
        &'a self,
        _tx: &'a mut PgConnection,
        _deliveries: &'a [&'a Delivery],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        futures::future::ready(Ok(())).boxed()
    }
}

/// A [`Handler`] that applies each message id once per consumer (see the module docs).
#[derive(Debug, Clone)]
pub struct Deduplicated<A> {
    pool: PgPool,
    consumer: String,
    apply: A,
}

impl<A: Apply> Deduplicated<A> {
    /// `apply` for the messages of `consumer` (its inbox records are keyed by this name).
    pub fn new(pool: PgPool, consumer: impl Into<String>, apply: A) -> Self {
        Deduplicated { pool, consumer: consumer.into(), apply }
    }

    async fn once(&self, delivery: &Delivery) -> Result<(), ApplyError> {
        let mut tx = pg::begin(&self.pool).await?;
        if inbox::record_many(&mut tx, &self.consumer, &[crate::store::received(delivery)]).await?.is_empty()
        {
            // Applied before: nothing to do (the transaction rolls back on drop).
            return Ok(());
        }
        self.apply.apply(&mut tx, delivery).await?;
        tx.commit().await.map_err(pg::Error::from)?;
        Ok(())
    }

    /// Apply `deliveries` in one transaction, in [`Self::apply_order`]. A message id
    /// recorded before (or twice in the batch) is applied once, by its first delivery.
    async fn all(&self, deliveries: &[Delivery]) -> Result<(), ApplyError> {
        let ordered: Vec<&Delivery> =
            self.apply_order(deliveries).into_iter().map(|i| &deliveries[i]).collect();
        let ids: Vec<String> = ordered.iter().map(|d| d.dedupe_id()).collect();
        let mut tx = pg::begin(&self.pool).await?;
        let records: Vec<_> = ordered.iter().map(|d| crate::store::received(d)).collect();
        let mut new = inbox::record_many(&mut tx, &self.consumer, &records).await?;
        if new.is_empty() {
            return Ok(());
        }
        // Each new message id once, by its first delivery.
        let fresh: Vec<(&Delivery, &String)> =
            ordered.into_iter().zip(&ids).filter(|(_, id)| new.remove(*id)).collect();
        let to_apply: Vec<&Delivery> = fresh.iter().map(|(d, _)| *d).collect();
        self.apply.lock_batch(&mut tx, &to_apply).await?;
        for (d, id) in fresh {
            // Each message's changes (and the outbox rows they write) in a span of the
            // trace that delivered it, as when it is handled alone: the runtime puts
            // its handler span's context in the batched delivery's headers.
            let span = tracing::info_span!("apply", message_id = %id, stream_seq = d.stream_sequence);
            trace::set_parent_from(&span, d.headers.as_ref());
            self.apply.apply(&mut tx, d).instrument(span).await?;
        }
        tx.commit().await.map_err(pg::Error::from)?;
        Ok(())
    }

    /// The order a batch is applied in: by [`Apply::lock_key`], then stream sequence.
    ///
    /// Stream sequence, because the runtime's batcher hands deliveries over in the order
    /// their tasks ran, which is not the stream's (tokio runs the newest spawned task
    /// first), while writes of one aggregate must apply in the order they were sent: a
    /// later write of a SKU applied first makes the earlier one "superseded", or, for
    /// writes requested at the same time (the rows of one import), leaves the older
    /// content last.
    ///
    /// Key first, because a batch takes each aggregate's lock as it reaches it and holds
    /// them all until its commit: two batches running at once (`batches-in-flight`) that
    /// met SKUs a and b in opposite orders would deadlock (Postgres breaks it after
    /// `deadlock_timeout`, 1 s, and the loser falls back to one by one). Taking locks in
    /// one global order rules that out; the inbox records, inserted first in the same
    /// order, cannot cycle either. Ordering by key keeps each key's deliveries in
    /// stream order, which is all that ordering by sequence was for.
    /// Returns indices into `deliveries`.
    fn apply_order(&self, deliveries: &[Delivery]) -> Vec<usize> {
        let mut keyed: Vec<(Option<String>, u64, usize)> = deliveries
            .iter()
            .enumerate()
            .map(|(i, d)| (self.apply.lock_key(d), d.stream_sequence, i))
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(_, _, i)| i).collect()
    }
}

fn outcome(result: Result<(), ApplyError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ack,
        Err(ApplyError::Store(e)) => crate::store::store_error(&e).into(),
        Err(e @ ApplyError::Message(_)) => Outcome::fail("invalid_message", e),
    }
}

impl<A: Apply> Handler for Deduplicated<A> {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move { outcome(self.once(delivery).await) }.boxed()
    }

    /// The deliveries that are ready together, in one transaction (see
    /// [`Self::apply_order`] for the order). A store outage holds them all (a dependency
    /// failure: nothing is the messages' fault); any other failure — one message
    /// unreadable or refused, contention — rolls the batch back and handles its
    /// messages one by one, so each gets its own outcome and no good one waits on a bad
    /// one.
    fn handle_batch<'a>(&'a self, deliveries: &'a [Delivery]) -> BoxFuture<'a, Vec<Outcome>> {
        async move {
            if let [one] = deliveries {
                return vec![self.handle(one).await];
            }
            match self.all(deliveries).await {
                Ok(()) => vec![Outcome::Ack; deliveries.len()],
                Err(ApplyError::Store(e)) if e.is_outage() => {
                    vec![crate::store::store_error(&e).into(); deliveries.len()]
                }
                Err(e) => {
                    tracing::warn!(error = %e, size = deliveries.len(), "batch refused; handling its messages one by one");
                    metrics::counter!("souk_worker_batch_fallbacks_total", "consumer" => self.consumer.clone())
                        .increment(1);
                    // Applied in the batch's order, answered in the order handed over.
                    let mut outcomes = vec![Outcome::Ack; deliveries.len()];
                    for i in self.apply_order(deliveries) {
                        outcomes[i] = self.handle(&deliveries[i]).await;
                    }
                    outcomes
                }
            }
        }
        .boxed()
    }

    fn too_new(&self, delivery: &Delivery) -> Option<String> {
        self.apply.too_new(delivery)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        async move {
            let mut tables = vec!["inbox"];
            tables.extend_from_slice(self.apply.tables());
            crate::store::probe_writable(&self.pool, &tables).await
        }
        .boxed()
    }
}
