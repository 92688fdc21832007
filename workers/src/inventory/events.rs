//! The inventory pool's answers, as outbox rows written in the transaction that decided
//! them.

use souk_pipelines::{Message, encode, headers};
use souk_stores::postgres::outbox::NewMessage;
use souk_topologies::trace;
use uuid::Uuid;

/// The outbox aggregate of one order's inventory events: the relay publishes them in
/// the order they were decided (a reservation before its release).
pub fn aggregate_id(tenant: &str, order_id: Uuid) -> String {
    format!("inventory:{tenant}:{order_id}")
}

/// `event` about `order_id` for the outbox, caused by the message `causation` (the
/// command's message id; the sweeper's own id for an expiry).
pub(crate) fn outbox_event<M: Message>(
    tenant: &str,
    order_id: Uuid,
    causation: &str,
    event: &M,
) -> NewMessage {
    let mut h = trace::outbox_context(&trace::current_context_pairs(), M::SUBJECT);
    h.push((headers::SCHEMA.into(), M::schema_header()));
    h.push((headers::TENANT.into(), tenant.to_owned()));
    h.push((headers::CAUSATION_ID.into(), causation.to_owned()));
    NewMessage {
        aggregate_id: aggregate_id(tenant, order_id),
        subject: M::SUBJECT.into(),
        headers: h,
        payload: encode(event),
    }
}
