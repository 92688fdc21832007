//! `PlaceOrder` → order row (status `accepted`) + inbox record + `OrderAccepted`
//! outbox row, in one transaction — for one message, or for a batch of messages that
//! arrived together (one commit, one fsync, for all of them).

use crate::store::store_error;
use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message, encode, headers,
    orders::{OrderAccepted, PlaceOrder},
};
use souk_stores::postgres::{self as pg, inbox, orders, outbox};
use souk_topologies::{
    runtime::{Delivery, Handler, HandlerError, Outcome},
    trace,
};
use sqlx::PgPool;

/// Handles `souk.cmd.orders.place`.
#[derive(Debug, Clone)]
pub struct PlaceOrderHandler {
    pool: PgPool,
    consumer: String,
}

impl PlaceOrderHandler {
    /// A handler writing to `pool`, recording its inbox under `consumer`.
    pub fn new(pool: PgPool, consumer: impl Into<String>) -> Self {
        PlaceOrderHandler { pool, consumer: consumer.into() }
    }

    /// Apply commands in one transaction and a handful of statements, whatever their
    /// number: inbox records for new message ids, orders for new order ids (a replay
    /// with another message id keeps its inbox record and adds nothing else), and one
    /// `OrderAccepted` outbox row per new order, whose trace context `trace` gives.
    async fn apply(
        &self,
        batch: &[(&PlaceOrder, &Delivery)],
        trace: fn(&Delivery) -> Vec<(String, String)>,
    ) -> Result<(), pg::Error> {
        let ids: Vec<String> = batch.iter().map(|(_, d)| d.dedupe_id()).collect();
        let mut tx = pg::begin(&self.pool).await?;
        let mut new_ids = inbox::record_many(&mut tx, &self.consumer, &ids).await?;
        // Each new message id once (a message repeated in one batch is handled once).
        let fresh: Vec<(&PlaceOrder, &Delivery, String)> = batch
            .iter()
            .zip(ids)
            .filter_map(|((cmd, d), id)| new_ids.remove(&id).then_some((*cmd, *d, id)))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let cmds: Vec<&PlaceOrder> = fresh.iter().map(|(c, _, _)| *c).collect();
        let mut inserted = orders::insert_accepted_many(&mut tx, &cmds).await?;
        let events: Vec<_> = fresh
            .into_iter()
            .filter(|(cmd, _, _)| inserted.remove(&cmd.order_id))
            .map(|(cmd, d, id)| accepted_event(cmd, id, trace(d)))
            .collect();
        if !events.is_empty() {
            outbox::enqueue_many(&mut tx, &events).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// The `OrderAccepted` outbox row for `cmd`, caused by message `causation_id`.
fn accepted_event(
    cmd: &PlaceOrder,
    causation_id: String,
    trace_context: Vec<(String, String)>,
) -> outbox::NewMessage {
    // The row's own span, in the handler's trace: the relay continues it.
    let mut h = trace::outbox_context(&trace_context, OrderAccepted::SUBJECT);
    let event = OrderAccepted {
        order_id: cmd.order_id,
        tenant: cmd.tenant.clone(),
        buyer_id: cmd.buyer_id.clone(),
        currency: cmd.currency,
        total_minor: cmd.total_minor,
        accepted_at: chrono::Utc::now(),
    };
    h.push((headers::SCHEMA.into(), OrderAccepted::schema_header()));
    h.push((headers::TENANT.into(), cmd.tenant.clone()));
    h.push((headers::CAUSATION_ID.into(), causation_id));
    outbox::NewMessage {
        aggregate_id: cmd.order_id.to_string(),
        subject: OrderAccepted::SUBJECT.into(),
        headers: h,
        payload: encode(&event),
    }
}

/// One message, handled in its own span: the event is a child of the handler's span.
fn handler_span_context(_: &Delivery) -> Vec<(String, String)> {
    trace::current_context_pairs()
}

/// The trace context a batched delivery carries, for events written by a batch (which
/// runs outside any one message's span): the runtime puts its handler span's there, so
/// the event stays in the trace of the request that caused it.
fn command_context(d: &Delivery) -> Vec<(String, String)> {
    [headers::TRACEPARENT, headers::TRACESTATE]
        .into_iter()
        .filter_map(|k| d.header(k).map(|v| (k.to_owned(), v.to_owned())))
        .collect()
}

/// Decode and check a delivery. The command must be internally consistent; the ingress
/// guarantees it, but a worker does not trust the bus.
/// Every refusal is the message's fault (poison): no later attempt can pass — except a
/// newer schema version, which this reader's next release will read (too new: it waits).
fn command(delivery: &Delivery) -> Result<PlaceOrder, HandlerError> {
    let cmd: PlaceOrder = delivery.decode().map_err(|e| {
        if e.is_newer_version() {
            HandlerError::too_new("schema_too_new", e)
        } else {
            HandlerError::poison("undecodable", e)
        }
    })?;
    cmd.validate().map_err(|errors| {
        let fields: Vec<_> = errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect();
        HandlerError::poison("invalid_order", format!("invalid order: {}", fields.join("; ")))
    })?;
    if cmd.tenant.is_empty() || cmd.buyer_id.is_empty() {
        return Err(HandlerError::poison("missing_party", "tenant and buyer are required"));
    }
    Ok(cmd)
}

fn outcome(result: Result<(), pg::Error>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ack,
        Err(e) => store_error(&e).into(),
    }
}

impl Handler for PlaceOrderHandler {
    /// A `PlaceOrder` of a newer version than this release reads waits for the upgrade.
    fn too_new(&self, delivery: &Delivery) -> Option<String> {
        crate::schema::too_new::<PlaceOrder>(delivery)
    }

    /// Postgres answers and takes writes (a standby, or a primary demoted in a
    /// failover, answers `select 1` but refuses every write), to this handler's tables.
    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        crate::store::probe_writable(&self.pool, &["inbox", "orders", "outbox"]).boxed()
    }

    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let cmd = match command(delivery) {
                Ok(cmd) => cmd,
                Err(refused) => return refused.into(),
            };
            outcome(self.apply(&[(&cmd, delivery)], handler_span_context).await)
        }
        .boxed()
    }

    fn handle_batch<'a>(&'a self, deliveries: &'a [Delivery]) -> BoxFuture<'a, Vec<Outcome>> {
        async move {
            let mut outcomes = vec![Outcome::Ack; deliveries.len()];
            let mut valid = Vec::with_capacity(deliveries.len());
            for (i, d) in deliveries.iter().enumerate() {
                match command(d) {
                    Ok(cmd) => valid.push((i, cmd)),
                    Err(refused) => outcomes[i] = refused.into(),
                }
            }
            let batch: Vec<_> = valid.iter().map(|(i, cmd)| (cmd, &deliveries[*i])).collect();
            match self.apply(&batch, command_context).await {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    let error = store_error(&e);
                    for (i, _) in &valid {
                        outcomes[*i] = error.clone().into();
                    }
                }
                // Something in the batch is refused: find out which, one by one.
                Err(e) => {
                    tracing::warn!(error = %e, "batch refused; handling its messages one by one");
                    for (i, _) in &valid {
                        outcomes[*i] = self.handle(&deliveries[*i]).await;
                    }
                }
            }
            outcomes
        }
        .boxed()
    }
}
