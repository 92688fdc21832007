//! The saga's replies: every event the inventory, payments and fulfilment pools answer
//! its commands with, applied under `dedupe::Deduplicated` (inbox) and the saga's row
//! lock. A duplicated or stale reply finds the saga elsewhere and is recorded and
//! ignored by the table (`machine::transition`).

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    DecodeError, Message,
    fulfilment::SellerShipped,
    inventory::{StockCommitted, StockRejected, StockReleased, StockReserved},
    payments::{Operation, PaymentFailure, PaymentResult},
};
use souk_stores::postgres::sagas;
use souk_topologies::{runtime::Delivery, trace};
use sqlx::PgConnection;
use uuid::Uuid;

use super::{
    advance::{Cause, Reply, advance},
    machine::{Event, fulfil_step, payment_reason},
};
use crate::dedupe::{Apply, ApplyError};

/// Applies reply events to sagas (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct SagaReplies;

/// A reply, read: whose order, from which tenant, what it means, and what the step
/// log says of it.
struct Read {
    order_id: Uuid,
    tenant: String,
    event: ReadEvent,
    reply: Reply,
}

enum ReadEvent {
    Now(Event),
    /// A seller shipped: whether it was the last one depends on the saga.
    Shipped(String),
}

fn decode<M: Message>(d: &Delivery) -> Result<M, ApplyError> {
    d.decode::<M>().map_err(|e: DecodeError| ApplyError::Message(format!("{}: {e}", M::SCHEMA)))
}

fn reply(step: &str, outcome: impl Into<String>) -> Reply {
    Reply { step: step.into(), outcome: outcome.into() }
}

fn read(d: &Delivery) -> Result<Read, ApplyError> {
    use souk_pipelines::subjects as s;
    let now =
        |order_id, tenant, event, reply| Ok(Read { order_id, tenant, event: ReadEvent::Now(event), reply });
    match d.subject.as_str() {
        s::INVENTORY_RESERVED => {
            let e: StockReserved = decode(d)?;
            now(e.order_id, e.tenant, Event::Reserved, reply("reserve", "ok"))
        }
        s::INVENTORY_REJECTED => {
            let e: StockRejected = decode(d)?;
            let skus: Vec<&str> = e.shortages.iter().map(|s| s.sku.as_str()).collect();
            let why = format!("out of stock: SKU {}", skus.join(", "));
            now(
                e.order_id,
                e.tenant,
                Event::Rejected(why.clone()),
                reply("reserve", format!("rejected: {why}")),
            )
        }
        s::INVENTORY_RELEASED => {
            let e: StockReleased = decode(d)?;
            let outcome = match (e.expired, e.released) {
                (true, _) => "ok: the hold expired",
                (false, true) => "ok",
                (false, false) => "ok: nothing was held",
            };
            now(e.order_id, e.tenant, Event::Released, reply("release", outcome))
        }
        s::INVENTORY_COMMITTED => {
            let e: StockCommitted = decode(d)?;
            if e.committed {
                now(e.order_id, e.tenant, Event::Committed, reply("commit", "ok"))
            } else {
                let why = e.reason.unwrap_or_else(|| "the stock hold expired".into());
                let buyer = format!("the items could not be kept for you: {why}");
                now(
                    e.order_id,
                    e.tenant,
                    Event::CommitRefused(buyer),
                    reply("commit", format!("refused: {why}")),
                )
            }
        }
        s::PAYMENTS_RESULT => {
            let e: PaymentResult = decode(d)?;
            let step = e.operation.as_str();
            let event = match (&e.failure, e.operation) {
                (None, Operation::Authorize) => Event::Authorized,
                (None, Operation::Capture) => Event::Captured,
                (None, Operation::Void) => Event::Voided,
                (None, Operation::Refund) => Event::Refunded,
                // A void refused because the payment is captured: the money moved (a
                // capture whose answer the saga never had — found in review, the saga
                // ended cancelled and kept it). Read as the capture, so it is refunded.
                // A capture refused so is the capture too (its recorded answer purged
                // before a re-sent copy came: review, eleventh session — the paid order
                // was unwound and refunded).
                (Some(PaymentFailure::Declined { code, .. }), Operation::Void | Operation::Capture)
                    if code == souk_pipelines::payments::ALREADY_CAPTURED =>
                {
                    Event::Captured
                }
                (Some(f), op) => {
                    let (declined, detail) = match f {
                        PaymentFailure::Declined { code, message } => (true, format!("{message} ({code})")),
                        PaymentFailure::Exhausted { attempts, last_error } => {
                            (false, format!("{last_error} (after {attempts} attempts)"))
                        }
                    };
                    let why = payment_reason(step, declined, &detail);
                    match op {
                        Operation::Authorize => Event::AuthorizeFailed(why),
                        Operation::Capture => Event::CaptureFailed(why),
                        Operation::Void if declined => Event::VoidFailed(why),
                        Operation::Void => Event::VoidExhausted(why),
                        Operation::Refund if declined => {
                            metrics::counter!("souk_saga_refunds_refused_total").increment(1);
                            tracing::error!(order_id = %e.order_id, reason = %why, "a refund was refused by the provider: the captured money needs a person");
                            Event::RefundFailed(why)
                        }
                        Operation::Refund => Event::RefundExhausted(why),
                    }
                }
            };
            let outcome = match &e.failure {
                None => format!("ok ({})", e.provider.as_deref().unwrap_or("provider unknown")),
                Some(PaymentFailure::Declined { code, message }) => format!("declined: {message} ({code})"),
                Some(PaymentFailure::Exhausted { attempts, last_error }) => {
                    format!("failed after {attempts} attempts: {last_error}")
                }
            };
            now(e.order_id, e.tenant, event, reply(step, outcome))
        }
        s::FULFILMENT_SHIPPED => {
            let e: SellerShipped = decode(d)?;
            let step = fulfil_step(&e.seller);
            Ok(Read {
                order_id: e.order_id,
                tenant: e.tenant,
                event: ReadEvent::Shipped(e.seller),
                reply: reply(&step, "ok"),
            })
        }
        other => Err(ApplyError::Message(format!("the saga takes no {other}"))),
    }
}

impl SagaReplies {
    async fn apply_one(&self, tx: &mut PgConnection, d: &Delivery) -> Result<(), ApplyError> {
        let read = read(d)?;
        let Some(saga) = sagas::lock(tx, read.order_id).await? else {
            // Sagas are created with their first command, so no reply precedes its saga:
            // this one is for an order souk never ran a saga for. Nothing to change.
            tracing::warn!(order_id = %read.order_id, subject = %d.subject, "a reply for no saga; ignored");
            metrics::counter!("souk_saga_replies_ignored_total").increment(1);
            return Ok(());
        };
        if saga.tenant != read.tenant {
            return Err(ApplyError::Message(format!(
                "reply of tenant {} for an order of another tenant",
                read.tenant
            )));
        }
        let event = match read.event {
            ReadEvent::Now(e) => e,
            // Shipped twice, or by a seller not awaited: the table keeps the saga where it is.
            ReadEvent::Shipped(seller) if saga.awaiting_sellers == [seller.clone()] => {
                Event::AllShipped(seller)
            }
            ReadEvent::Shipped(seller) => Event::SellerShipped(seller),
        };
        let cause = Cause { id: d.dedupe_id(), trace: trace::current_context_pairs() };
        advance(tx, &saga, &event, Some(&read.reply), &cause, chrono::Utc::now()).await?;
        Ok(())
    }
}

impl Apply for SagaReplies {
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        self.apply_one(tx, d).boxed()
    }

    fn tables(&self) -> &'static [&'static str] {
        &["sagas", "saga_steps", "orders", "outbox"]
    }

    /// The order whose saga row `apply` locks: in a batch, one order's replies apply in
    /// stream order and every batch locks saga rows in one order.
    fn lock_key(&self, d: &Delivery) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Key {
            order_id: Uuid,
        }
        serde_json::from_slice::<Key>(&d.payload).ok().map(|k| k.order_id.to_string())
    }

    fn too_new(&self, d: &Delivery) -> Option<String> {
        use souk_pipelines::subjects as s;
        match d.subject.as_str() {
            s::INVENTORY_RESERVED => crate::schema::too_new::<StockReserved>(d),
            s::INVENTORY_REJECTED => crate::schema::too_new::<StockRejected>(d),
            s::INVENTORY_RELEASED => crate::schema::too_new::<StockReleased>(d),
            s::INVENTORY_COMMITTED => crate::schema::too_new::<StockCommitted>(d),
            s::PAYMENTS_RESULT => crate::schema::too_new::<PaymentResult>(d),
            s::FULFILMENT_SHIPPED => crate::schema::too_new::<SellerShipped>(d),
            _ => None,
        }
    }
}
