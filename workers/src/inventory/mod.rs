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

impl Apply for InventoryHandler {
    fn tables(&self) -> &'static [&'static str] {
        &["stock", "stock_reservations", "stock_holds", "outbox"]
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
                    holds::reserve(tx, &cmd, &causation).await
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
