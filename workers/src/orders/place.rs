//! `PlaceOrder` → order row (status `accepted`) + inbox record + `OrderAccepted`
//! outbox row, in one transaction.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message, encode, headers,
    orders::{OrderAccepted, PlaceOrder, PlaceOrderRequest},
};
use souk_stores::postgres::{self as pg, inbox, orders, outbox};
use souk_topologies::{
    runtime::{Delivery, Handler, Outcome},
    trace,
};
use sqlx::PgPool;

/// Handles `souk.cmd.orders.place`.
#[derive(Debug, Clone)]
pub struct PlaceOrderHandler {
    pool: PgPool,
    consumer: String,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Accepted,
    AlreadyHandled,
}

impl PlaceOrderHandler {
    /// A handler writing to `pool`, recording its inbox under `consumer`.
    pub fn new(pool: PgPool, consumer: impl Into<String>) -> Self {
        PlaceOrderHandler { pool, consumer: consumer.into() }
    }

    async fn apply(&self, cmd: &PlaceOrder, delivery: &Delivery) -> Result<Applied, pg::Error> {
        let message_id = delivery.dedupe_id();
        let mut tx = pg::begin(&self.pool).await?;
        if !inbox::record(&mut tx, &self.consumer, &message_id).await? {
            return Ok(Applied::AlreadyHandled);
        }
        if !orders::insert_accepted(&mut tx, cmd).await? {
            // The order exists though this message id is new to the inbox (its record
            // was purged): keep the inbox record, add nothing else.
            tx.commit().await?;
            return Ok(Applied::AlreadyHandled);
        }
        let event = OrderAccepted {
            order_id: cmd.order_id,
            tenant: cmd.tenant.clone(),
            buyer_id: cmd.buyer_id.clone(),
            currency: cmd.currency,
            total_minor: cmd.total_minor,
            accepted_at: chrono::Utc::now(),
        };
        let mut event_headers = trace::current_context_pairs();
        event_headers.push((headers::SCHEMA.into(), OrderAccepted::schema_header()));
        event_headers.push((headers::TENANT.into(), cmd.tenant.clone()));
        event_headers.push((headers::CAUSATION_ID.into(), message_id));
        outbox::enqueue(
            &mut tx,
            outbox::NewMessage {
                aggregate_id: cmd.order_id.to_string(),
                subject: OrderAccepted::SUBJECT.into(),
                headers: event_headers,
                payload: encode(&event),
            },
        )
        .await?;
        tx.commit().await?;
        Ok(Applied::Accepted)
    }
}

/// The command must be internally consistent; the ingress guarantees it, but a worker
/// does not trust the bus.
fn check(cmd: &PlaceOrder) -> Result<(), String> {
    let request = PlaceOrderRequest { currency: cmd.currency, lines: cmd.lines.clone() };
    let total = request.validate().map_err(|errors| {
        let fields: Vec<_> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        format!("invalid order: {}", fields.join("; "))
    })?;
    if total.amount_minor != cmd.total_minor {
        return Err(format!("total {} does not match lines ({})", cmd.total_minor, total.amount_minor));
    }
    if cmd.tenant.is_empty() || cmd.buyer_id.is_empty() {
        return Err("tenant and buyer are required".into());
    }
    Ok(())
}

impl Handler for PlaceOrderHandler {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let cmd: PlaceOrder = match delivery.decode() {
                Ok(cmd) => cmd,
                Err(e) => return Outcome::fail(e),
            };
            if let Err(reason) = check(&cmd) {
                return Outcome::fail(reason);
            }
            match self.apply(&cmd, delivery).await {
                Ok(applied) => {
                    tracing::debug!(order_id = %cmd.order_id, ?applied, "order intake");
                    Outcome::Ack
                }
                Err(e) if e.is_retryable() => Outcome::retry(e),
                Err(e) => Outcome::fail(e),
            }
        }
        .boxed()
    }
}
