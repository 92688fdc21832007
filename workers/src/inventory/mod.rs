//! Inventory: stock holds for orders, never more than there is.
//!
//! One pool takes the three inventory commands (`souk.cmd.inventory.{reserve, release,
//! commit}`, consumer `inventory`) under [`Deduplicated`](crate::dedupe::Deduplicated):
//! each command's changes, its inbox record and its answer (an event in the outbox)
//! commit in one transaction ([`holds`]). Holds that outlive their `hold_until` are
//! taken back by the sweeper ([`expiry`]), which every process running this pool runs.
//! Stock is conserved: available + held + sold changes only when a seller writes a
//! product's stock (`workers::catalog`), which sets on_hand in its own transaction.

mod events;
pub mod expiry;
pub mod holds;

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message,
    inventory::{CommitStock, ReleaseStock, ReserveStock},
};
use souk_topologies::runtime::Delivery;
use sqlx::PgConnection;

pub use events::aggregate_id;
pub use expiry::ExpiryOptions;

use crate::dedupe::{Apply, ApplyError};

/// Handler name in the topology.
pub const HANDLER: &str = "inventory";
/// The durable consumer it drains (its inbox records are keyed by this name).
pub const CONSUMER: &str = "inventory";

/// Applies `ReserveStock`, `ReleaseStock` and `CommitStock`, by subject.
#[derive(Debug, Clone, Copy, Default)]
pub struct InventoryHandler;

fn unreadable(what: &str, e: impl std::fmt::Display) -> ApplyError {
    ApplyError::Message(format!("unreadable {what}: {e}"))
}

/// What a batch needs of an inventory command before applying it: whose order, and
/// (a reservation's) the SKUs it holds. Read without the schema check: `apply` decodes
/// for real and refuses what it cannot read.
#[derive(serde::Deserialize)]
struct Target<'a> {
    #[serde(borrow)]
    tenant: std::borrow::Cow<'a, str>,
    order_id: uuid::Uuid,
    #[serde(default)]
    lines: Vec<TargetLine<'a>>,
}

#[derive(serde::Deserialize)]
struct TargetLine<'a> {
    #[serde(borrow)]
    sku: std::borrow::Cow<'a, str>,
}

fn target(d: &Delivery) -> Option<Target<'_>> {
    serde_json::from_slice(&d.payload).ok()
}

impl Apply for InventoryHandler {
    fn tables(&self) -> &'static [&'static str] {
        &["stock", "stock_reservations", "stock_holds", "outbox"]
    }

    /// The order whose lock `apply` takes: one order's commands apply in stream order.
    fn lock_key(&self, d: &Delivery) -> Option<String> {
        target(d).map(|t| format!("{}/{}", t.tenant, t.order_id))
    }

    /// Every order of the batch, then every stock row its commands touch, in the lock
    /// order (`inventory::lock_many`): a batch decides many orders, each locking its
    /// stock rows, and two batches taking them as they go would meet SKUs in opposite
    /// orders.
    fn lock_batch<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        deliveries: &'a [&'a Delivery],
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            let targets: Vec<Target<'_>> = deliveries.iter().filter_map(|d| target(d)).collect();
            let orders: Vec<(&str, uuid::Uuid)> =
                targets.iter().map(|t| (t.tenant.as_ref(), t.order_id)).collect();
            let skus: Vec<(&str, &str)> = targets
                .iter()
                .flat_map(|t| t.lines.iter().map(|l| (t.tenant.as_ref(), l.sku.as_ref())))
                .collect();
            souk_stores::postgres::inventory::lock_many(tx, &orders, &skus).await?;
            Ok(())
        }
        .boxed()
    }

    fn too_new(&self, d: &Delivery) -> Option<String> {
        match d.subject.as_str() {
            ReserveStock::SUBJECT => crate::schema::too_new::<ReserveStock>(d),
            ReleaseStock::SUBJECT => crate::schema::too_new::<ReleaseStock>(d),
            CommitStock::SUBJECT => crate::schema::too_new::<CommitStock>(d),
            _ => None,
        }
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            let causation = d.dedupe_id();
            match d.subject.as_str() {
                ReserveStock::SUBJECT => {
                    let cmd: ReserveStock = d.decode().map_err(|e| unreadable("reservation", e))?;
                    holds::reserve(tx, &cmd, &causation, d.stored_at).await
                }
                ReleaseStock::SUBJECT => {
                    let cmd: ReleaseStock = d.decode().map_err(|e| unreadable("release", e))?;
                    holds::release(tx, &cmd, &causation).await
                }
                CommitStock::SUBJECT => {
                    let cmd: CommitStock = d.decode().map_err(|e| unreadable("commit", e))?;
                    holds::commit(tx, &cmd, &causation).await
                }
                other => Err(ApplyError::Message(format!("the inventory pool takes no {other}"))),
            }
        }
        .boxed()
    }
}
