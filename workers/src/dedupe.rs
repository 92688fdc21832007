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

use futures::{FutureExt, future::BoxFuture};
use souk_stores::postgres::{self as pg, inbox};
use souk_topologies::runtime::{Delivery, Handler, HandlerError, Outcome};
use sqlx::{PgConnection, PgPool};

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
        let id = delivery.dedupe_id();
        if inbox::record_many(&mut tx, &self.consumer, std::slice::from_ref(&id)).await?.is_empty() {
            // Applied before: nothing to do (the transaction rolls back on drop).
            return Ok(());
        }
        self.apply.apply(&mut tx, delivery).await?;
        tx.commit().await.map_err(pg::Error::from)?;
        Ok(())
    }
}

impl<A: Apply> Handler for Deduplicated<A> {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            match self.once(delivery).await {
                Ok(()) => Outcome::Ack,
                Err(ApplyError::Store(e)) => crate::store::store_error(&e).into(),
                Err(e @ ApplyError::Message(_)) => Outcome::fail("invalid_message", e),
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
