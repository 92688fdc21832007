//! Fulfilment: each seller's part of a confirmed order.
//!
//! One pool takes `souk.cmd.fulfilment.request` (from the saga: a row per order and
//! seller, `requested`) and `souk.cmd.fulfilment.ship` (from `POST
//! /v1/sellers/{seller}/orders/{id}/ship`: the row `shipped`, and `SellerShipped` in
//! the outbox), under [`Deduplicated`](crate::dedupe::Deduplicated). Both are
//! idempotent: a repeated request changes nothing — but for a part already shipped it
//! announces `SellerShipped` again, as inventory and payments answer a re-sent command
//! again: the saga re-sends its requests when a day passes without every answer, and
//! an answer lost with a stream would otherwise never come — and shipping a part
//! already shipped changes nothing and announces nothing again (the first ship's
//! tracking stays).
//! A ship of a part never requested cannot be applied (the ingress checks it first, so
//! only a forged or corrupted command gets here): it is dead-lettered.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message, encode,
    fulfilment::{MarkShipped, RequestFulfilment, SellerShipped},
    headers,
};
use souk_stores::postgres::{fulfilments, outbox};
use souk_topologies::{runtime::Delivery, trace};
use sqlx::PgConnection;

use crate::dedupe::{Apply, ApplyError};

/// Handler name in the topology.
pub const HANDLER: &str = "fulfilment";
/// The durable consumer it drains (its inbox records are keyed by this name).
pub const CONSUMER: &str = "fulfilment";

/// The outbox aggregate of an order's fulfilment events: published in the order
/// written, whichever seller.
pub fn aggregate_id(tenant: &str, order_id: uuid::Uuid) -> String {
    format!("fulfilment:{tenant}:{order_id}")
}

/// Applies `RequestFulfilment` and `MarkShipped`, by subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct FulfilmentHandler;

impl Apply for FulfilmentHandler {
    fn tables(&self) -> &'static [&'static str] {
        &["fulfilments", "outbox"]
    }

    /// The fulfilment row (order and seller) a request inserts or a ship locks: in a
    /// batch, one row's commands apply in stream order and batches meet rows in one
    /// order.
    fn lock_key(&self, d: &Delivery) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Key<'a> {
            #[serde(borrow)]
            tenant: std::borrow::Cow<'a, str>,
            order_id: uuid::Uuid,
            #[serde(borrow)]
            seller: std::borrow::Cow<'a, str>,
        }
        let key: Key<'_> = serde_json::from_slice(&d.payload).ok()?;
        Some(format!("{}/{}/{}", key.tenant, key.order_id, key.seller))
    }

    fn too_new(&self, d: &Delivery) -> Option<String> {
        match d.subject.as_str() {
            RequestFulfilment::SUBJECT => crate::schema::too_new::<RequestFulfilment>(d),
            MarkShipped::SUBJECT => crate::schema::too_new::<MarkShipped>(d),
            _ => None,
        }
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            let unreadable =
                |e: &dyn std::fmt::Display| ApplyError::Message(format!("unreadable command: {e}"));
            match d.subject.as_str() {
                RequestFulfilment::SUBJECT => {
                    request(tx, &d.decode().map_err(|e| unreadable(&e))?, &d.dedupe_id()).await
                }
                MarkShipped::SUBJECT => {
                    ship(tx, &d.decode().map_err(|e| unreadable(&e))?, &d.dedupe_id()).await
                }
                other => Err(ApplyError::Message(format!("the fulfilment pool takes no {other}"))),
            }
        }
        .boxed()
    }
}

async fn request(tx: &mut PgConnection, cmd: &RequestFulfilment, causation: &str) -> Result<(), ApplyError> {
    if cmd.seller.is_empty()
        || cmd.lines.is_empty()
        || cmd.lines.iter().any(|l| l.sku.is_empty() || l.quantity <= 0)
    {
        return Err(ApplyError::Message(format!(
            "fulfilment request of order {} needs a seller and lines with a SKU and a positive quantity",
            cmd.order_id
        )));
    }
    let fresh = fulfilments::request(tx, &cmd.tenant, &cmd.seller, cmd.order_id, &cmd.lines).await?;
    let outcome = if fresh { "requested" } else { "repeated" };
    metrics::counter!("souk_fulfilment_requests_total", "outcome" => outcome).increment(1);
    if !fresh
        && let Some(part) = fulfilments::lock(tx, &cmd.tenant, &cmd.seller, cmd.order_id).await?
        && let (true, Some(at)) = (part.is_shipped(), part.shipped_at)
    {
        // Asked again for a part already shipped: the saga did not get the answer.
        announce_shipped(tx, &cmd.tenant, &cmd.seller, cmd.order_id, at, causation).await?;
    }
    Ok(())
}

async fn ship(tx: &mut PgConnection, cmd: &MarkShipped, causation: &str) -> Result<(), ApplyError> {
    let Some(part) = fulfilments::lock(tx, &cmd.tenant, &cmd.seller, cmd.order_id).await? else {
        return Err(ApplyError::Message(format!(
            "no fulfilment of order {} was requested of seller {}",
            cmd.order_id, cmd.seller
        )));
    };
    if part.is_shipped() {
        metrics::counter!("souk_fulfilment_ships_total", "outcome" => "repeated").increment(1);
        return Ok(());
    }
    let at = fulfilments::mark_shipped(
        tx,
        &cmd.tenant,
        &cmd.seller,
        cmd.order_id,
        cmd.tracking.as_deref(),
        &cmd.actor,
    )
    .await?;
    metrics::counter!("souk_fulfilment_ships_total", "outcome" => "shipped").increment(1);
    announce_shipped(tx, &cmd.tenant, &cmd.seller, cmd.order_id, at, causation).await
}

/// `SellerShipped` for the seller's part of the order, in the outbox.
async fn announce_shipped(
    tx: &mut PgConnection,
    tenant: &str,
    seller: &str,
    order_id: uuid::Uuid,
    at: chrono::DateTime<chrono::Utc>,
    causation: &str,
) -> Result<(), ApplyError> {
    let event = SellerShipped { tenant: tenant.to_owned(), order_id, seller: seller.to_owned(), at };
    let mut h = trace::outbox_context(&trace::current_context_pairs(), SellerShipped::SUBJECT);
    h.push((headers::SCHEMA.into(), SellerShipped::schema_header()));
    h.push((headers::TENANT.into(), tenant.to_owned()));
    h.push((headers::CAUSATION_ID.into(), causation.to_owned()));
    outbox::enqueue(
        tx,
        outbox::NewMessage {
            aggregate_id: aggregate_id(tenant, order_id),
            subject: SellerShipped::SUBJECT.into(),
            headers: h,
            payload: encode(&event),
        },
    )
    .await?;
    Ok(())
}
