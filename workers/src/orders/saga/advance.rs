//! Applying one transition to a locked saga: the new state, the order's status, the
//! commands and events as outbox rows and the step log — all in the caller's
//! transaction (the reply's inbox record, the sweeper's or operator's lock). One path
//! for replies, the sweeper and operators, so they cannot drift apart.

use chrono::{DateTime, Utc};
use souk_pipelines::{
    Currency, Message, encode,
    fulfilment::{FulfilmentLine, RequestFulfilment},
    headers,
    inventory::{CommitStock, ReleaseStock, ReserveStock, StockLine},
    orders::{OrderCancelled, OrderConfirmed, OrderShipped},
    payments::{AuthorizePayment, Operation, SettlePayment, idempotency_key},
};
use souk_stores::postgres::{
    self as pg, outbox,
    sagas::{self, Change, Saga},
};
use souk_topologies::trace;
use sqlx::PgConnection;
use std::collections::BTreeMap;

use super::machine::{Effect, Event, State, Transition, fulfil_step, transition};

/// What caused a change: the message id (`souk-causation-id` of what it writes) and
/// the trace context its rows continue.
#[derive(Debug, Clone)]
pub struct Cause {
    pub id: String,
    pub trace: Vec<(String, String)>,
}

impl Cause {
    /// A cause with no message behind it (the sweeper, an operator): the current span.
    pub fn local(id: impl Into<String>) -> Cause {
        Cause { id: id.into(), trace: trace::current_context_pairs() }
    }
}

/// The reply an event is, for the step log: which step and what it said.
#[derive(Debug, Clone)]
pub struct Reply {
    pub step: String,
    pub outcome: String,
}

/// What [`advance`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advanced {
    Moved { from: State, to: State },
    Ignored { state: State },
}

/// Apply `event` to `saga` (locked by the caller's transaction).
pub async fn advance(
    tx: &mut PgConnection,
    saga: &Saga,
    event: &Event,
    reply: Option<&Reply>,
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<Advanced, pg::Error> {
    let state =
        State::parse(&saga.state).ok_or_else(|| pg::Error::Corrupt(format!("saga state {}", saga.state)))?;
    let Transition::To { next, effects, reason } = transition(state, event) else {
        // The answer to a command still open (a void sent after the cancel) closes its
        // step; anything else is only recorded.
        if let Some(r) = reply
            && !sagas::finish_step(tx, saga.order_id, &r.step, &r.outcome).await?
        {
            let why = format!("ignored: {} (arrived while {})", r.outcome, state.as_str());
            sagas::note(tx, saga.order_id, &r.step, saga.attempt, &why).await?;
        }
        metrics::counter!("souk_saga_replies_ignored_total").increment(1);
        return Ok(Advanced::Ignored { state });
    };
    if let Some(r) = reply
        && !sagas::finish_step(tx, saga.order_id, &r.step, &r.outcome).await?
    {
        // Its step was already answered (a late reply that moved money, say).
        sagas::note(tx, saga.order_id, &r.step, saga.attempt, &format!("{} (late)", r.outcome)).await?;
    }
    let resend = matches!(event, Event::Resend);
    let attempt = if resend {
        saga.attempt + 1
    } else if next != state {
        1
    } else {
        saga.attempt
    };
    let deadline =
        if resend || next != state { next.wait_after(attempt).map(|t| now + t) } else { saga.deadline };
    let mut awaiting = saga.awaiting_sellers.clone();
    match event {
        Event::SellerShipped(s) | Event::AllShipped(s) => awaiting.retain(|a| a != s),
        _ if effects.contains(&Effect::RequestFulfilment) && !resend => awaiting = sellers(saga),
        _ => {}
    }
    let change = Change {
        state: next.as_str().to_owned(),
        attempt,
        deadline,
        reason: saga.reason.clone().or(reason),
        awaiting_sellers: awaiting,
        order_status: (next.order_status() != state.order_status()).then(|| next.order_status().to_owned()),
    };
    if !sagas::save(tx, saga.order_id, saga.version, &change).await? {
        return Err(pg::Error::Corrupt(format!("saga {} changed under its lock", saga.order_id)));
    }
    let after = Saga {
        state: change.state.clone(),
        attempt,
        deadline,
        reason: change.reason.clone(),
        awaiting_sellers: change.awaiting_sellers.clone(),
        ..saga.clone()
    };
    let (rows, steps) = effects_of(&after, effects, cause, now)?;
    if !rows.is_empty() {
        outbox::enqueue_many(tx, &rows).await?;
    }
    sagas::start_steps(tx, &steps).await?;
    metrics::counter!("souk_saga_transitions_total", "to" => next.as_str()).increment(1);
    Ok(Advanced::Moved { from: state, to: next })
}

/// The distinct sellers of the saga's order, sorted.
fn sellers(saga: &Saga) -> Vec<String> {
    let mut s: Vec<String> = saga.lines.iter().map(|l| l.seller.clone()).collect();
    s.sort();
    s.dedup();
    s
}

/// A started step: (order, step, attempt).
pub type StepRow = (uuid::Uuid, String, i32);

/// The outbox rows and started steps of `effects` for `saga` (as it is after the
/// transition).
pub fn effects_of(
    saga: &Saga,
    effects: &[Effect],
    cause: &Cause,
    now: DateTime<Utc>,
) -> Result<(Vec<outbox::NewMessage>, Vec<StepRow>), pg::Error> {
    let currency: Currency =
        saga.currency.parse().map_err(|_| pg::Error::Corrupt(format!("order currency {}", saga.currency)))?;
    let (tenant, order_id) = (saga.tenant.clone(), saga.order_id);
    let settle = |operation| SettlePayment {
        tenant: tenant.clone(),
        order_id,
        operation,
        amount_minor: saga.total_minor,
        currency,
        idempotency_key: idempotency_key(order_id, operation),
    };
    let mut rows = Vec::new();
    let mut steps = Vec::new();
    for &effect in effects {
        let row = match effect {
            Effect::Reserve => {
                let mut units: BTreeMap<&str, i64> = BTreeMap::new();
                for l in &saga.lines {
                    *units.entry(&l.sku).or_default() += l.quantity;
                }
                let lines = units
                    .into_iter()
                    .map(|(sku, quantity)| StockLine { sku: sku.to_owned(), quantity })
                    .collect();
                row(
                    &ReserveStock { tenant: tenant.clone(), order_id, lines, hold_until: saga.hold_until },
                    saga,
                    cause,
                )
            }
            Effect::Authorize => {
                let payment_token = saga
                    .payment_token
                    .clone()
                    .ok_or_else(|| pg::Error::Corrupt(format!("saga {order_id} has no payment token")))?;
                row(
                    &AuthorizePayment {
                        tenant: tenant.clone(),
                        order_id,
                        amount_minor: saga.total_minor,
                        currency,
                        payment_token,
                        idempotency_key: idempotency_key(order_id, Operation::Authorize),
                    },
                    saga,
                    cause,
                )
            }
            Effect::Commit => row(&CommitStock { tenant: tenant.clone(), order_id }, saga, cause),
            Effect::Capture => row(&settle(Operation::Capture), saga, cause),
            Effect::Void => row(&settle(Operation::Void), saga, cause),
            Effect::Refund => row(&settle(Operation::Refund), saga, cause),
            Effect::Release => {
                let reason = saga.reason.clone().unwrap_or_else(|| "order cancelled".into());
                row(&ReleaseStock { tenant: tenant.clone(), order_id, reason }, saga, cause)
            }
            Effect::RequestFulfilment => {
                for seller in &saga.awaiting_sellers {
                    let lines = saga
                        .lines
                        .iter()
                        .filter(|l| &l.seller == seller)
                        .map(|l| FulfilmentLine { sku: l.sku.clone(), quantity: l.quantity })
                        .collect();
                    let cmd =
                        RequestFulfilment { tenant: tenant.clone(), order_id, seller: seller.clone(), lines };
                    rows.push(row(&cmd, saga, cause));
                    steps.push((order_id, fulfil_step(seller), saga.attempt));
                }
                continue;
            }
            Effect::Confirm => row(
                &OrderConfirmed {
                    order_id,
                    tenant: tenant.clone(),
                    buyer_id: saga.buyer_id.clone(),
                    currency,
                    total_minor: saga.total_minor,
                    confirmed_at: now,
                },
                saga,
                cause,
            ),
            Effect::Cancel => row(
                &OrderCancelled {
                    order_id,
                    tenant: tenant.clone(),
                    buyer_id: saga.buyer_id.clone(),
                    reason: saga.reason.clone().unwrap_or_else(|| "cancelled".into()),
                    cancelled_at: now,
                },
                saga,
                cause,
            ),
            Effect::Ship => row(
                &OrderShipped {
                    order_id,
                    tenant: tenant.clone(),
                    buyer_id: saga.buyer_id.clone(),
                    shipped_at: now,
                },
                saga,
                cause,
            ),
        };
        rows.push(row);
        if let Some(step) = effect.step() {
            steps.push((order_id, step.to_owned(), saga.attempt));
        }
    }
    Ok((rows, steps))
}

/// The outbox row of one command or event of the saga: its aggregate is the order, so
/// the relay publishes an order's messages in the order they were written.
fn row<M: Message>(message: &M, saga: &Saga, cause: &Cause) -> outbox::NewMessage {
    let mut h = trace::outbox_context(&cause.trace, M::SUBJECT);
    h.push((headers::SCHEMA.into(), M::schema_header()));
    h.push((headers::TENANT.into(), saga.tenant.clone()));
    h.push((headers::CAUSATION_ID.into(), cause.id.clone()));
    outbox::NewMessage {
        aggregate_id: saga.order_id.to_string(),
        subject: M::SUBJECT.into(),
        headers: h,
        payload: encode(message),
    }
}
