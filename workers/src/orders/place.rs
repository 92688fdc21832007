//! `PlaceOrder` → order row (status `accepted`) + inbox record + `OrderAccepted`
//! outbox row + the order's saga (its row, its first step and the `ReserveStock`
//! outbox row), in one transaction — for one message, or for a batch of messages that
//! arrived together (one commit, one fsync, for all of them). A command without a
//! payment token or sellers (version 1) cannot be paid for: its order is cancelled at
//! once, with the reason and an `OrderCancelled` event instead of `OrderAccepted`.
//! A checkout's command carries the cart lines it ordered: they are emptied from the
//! cart in the same transaction (a no-op when the ingress emptied them after the
//! PubAck, as it usually has), so a cart is never left full under a placed order.

use super::saga::{
    self, Effect, State,
    advance::{Cause, StepRow, effects_of},
};
use crate::store::store_error;
use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message, encode, headers,
    orders::{OrderAccepted, PlaceOrder},
};
use souk_stores::postgres::{
    self as pg, carts, inbox, orders, outbox,
    sagas::{self, NewSaga, Saga},
};
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
        let received: Vec<_> = batch.iter().map(|(_, d)| crate::store::received(d)).collect();
        let mut new_ids = inbox::record_many(&mut tx, &self.consumer, &received).await?;
        // Each new message id once (a message repeated in one batch is handled once).
        let fresh: Vec<(&PlaceOrder, &Delivery, String)> = batch
            .iter()
            .zip(ids)
            .filter_map(|((cmd, d), id)| new_ids.remove(&id).then_some((*cmd, *d, id)))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        // Each with the trace that placed it (`souk trace` takes a trace id too).
        let cmds: Vec<(&PlaceOrder, Option<String>)> =
            fresh.iter().map(|(c, d, _)| (*c, trace::trace_id(d.headers.as_ref()))).collect();
        let mut inserted = orders::insert_accepted_many(&mut tx, &cmds).await?;
        let placed: Vec<_> = fresh.into_iter().filter(|(cmd, _, _)| inserted.remove(&cmd.order_id)).collect();
        // A checkout's cart is emptied with its order, whether or not the ingress lived
        // to empty it after the PubAck (usually it did, and this finds it recorded).
        // By buyer: two batches emptying carts of the same buyers lock them in one order.
        let mut checkouts: Vec<_> =
            placed.iter().filter_map(|(cmd, _, _)| Some((*cmd, cmd.cart.as_ref()?))).collect();
        checkouts.sort_by(|(a, _), (b, _)| (&a.tenant, &a.buyer_id).cmp(&(&b.tenant, &b.buyer_id)));
        for (cmd, cart) in checkouts {
            carts::empty_checked_out(&mut tx, &cmd.tenant, &cmd.buyer_id, cmd.order_id, cart).await?;
        }
        // An order that cannot be paid for is cancelled, never accepted.
        let mut events: Vec<_> = placed
            .iter()
            .filter(|(cmd, _, _)| payable(cmd))
            .map(|(cmd, d, id)| accepted_event(cmd, id.clone(), trace(d)))
            .collect();
        let steps = start_sagas(&mut tx, &placed, trace, &mut events).await?;
        if !events.is_empty() {
            outbox::enqueue_many(&mut tx, &events).await?;
        }
        sagas::start_steps(&mut tx, &steps).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// Create the sagas of newly placed orders: `reserving`, with the `ReserveStock`
/// command added to `rows` (and its step returned), or — for a command that cannot
/// be paid for — `cancelled` at once with [`saga::NO_PAYMENT_REASON`] and its
/// `OrderCancelled` event.
async fn start_sagas(
    tx: &mut sqlx::PgConnection,
    placed: &[(&PlaceOrder, &Delivery, String)],
    trace: fn(&Delivery) -> Vec<(String, String)>,
    rows: &mut Vec<outbox::NewMessage>,
) -> Result<Vec<StepRow>, pg::Error> {
    if placed.is_empty() {
        return Ok(Vec::new());
    }
    let now = chrono::Utc::now();
    let hold_until = now + saga::hold_duration();
    let new: Vec<NewSaga> = placed
        .iter()
        .map(|(cmd, _, _)| {
            let (state, reason) = match payable(cmd) {
                true => (State::Reserving, None),
                false => (State::Cancelled, Some(saga::NO_PAYMENT_REASON.to_owned())),
            };
            NewSaga {
                order_id: cmd.order_id,
                tenant: cmd.tenant.clone(),
                state: state.as_str().to_owned(),
                deadline: state.step_timeout().map(|t| now + t),
                reason,
                payment_token: cmd.payment_token.clone(),
                hold_until,
            }
        })
        .collect();
    let started = sagas::insert_many(tx, &new).await?;
    let cancelled: Vec<_> = placed
        .iter()
        .filter(|(c, _, _)| !payable(c) && started.contains(&c.order_id))
        .map(|(c, _, _)| c.order_id)
        .collect();
    if !cancelled.is_empty() {
        sagas::set_order_status(
            tx,
            &cancelled,
            State::Cancelled.order_status(),
            Some(saga::NO_PAYMENT_REASON),
        )
        .await?;
    }
    let mut steps = Vec::new();
    for ((cmd, d, id), new) in placed.iter().zip(&new) {
        if !started.contains(&cmd.order_id) {
            continue;
        }
        let effects: &[Effect] = if payable(cmd) { &[Effect::Reserve] } else { &[Effect::Cancel] };
        let saga = Saga {
            order_id: cmd.order_id,
            tenant: cmd.tenant.clone(),
            buyer_id: cmd.buyer_id.clone(),
            currency: cmd.currency.code().to_owned(),
            total_minor: cmd.total_minor,
            lines: cmd.lines.clone(),
            state: new.state.clone(),
            attempt: 1,
            deadline: new.deadline,
            version: 1,
            reason: new.reason.clone(),
            payment_token: cmd.payment_token.clone(),
            hold_until,
            awaiting_sellers: Vec::new(),
        };
        let cause = Cause { id: id.clone(), trace: trace(d) };
        let (mut r, mut s) = effects_of(&saga, effects, &cause, now)?;
        rows.append(&mut r);
        steps.append(&mut s);
    }
    Ok(steps)
}

/// Whether a saga can run for `cmd`: it names a payment token and each line's seller
/// (a version-1 command, priced by the client, has neither).
fn payable(cmd: &PlaceOrder) -> bool {
    cmd.payment_token.is_some() && cmd.lines.iter().all(|l| !l.seller.is_empty())
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
        crate::store::probe_writable(&self.pool, &["inbox", "orders", "outbox", "sagas", "saga_steps"])
            .boxed()
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
