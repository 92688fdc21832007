//! Catalog: applies `souk.cmd.catalog.write` (product writes from the ingress, import
//! jobs and the seed generator) to Postgres, emitting `ProductChanged`.

mod write;

pub use write::{WriteProductHandler, aggregate_id, apply};

/// Handler name in the topology.
pub const WRITE_HANDLER: &str = "catalog.write";
/// The durable consumer it drains (its inbox records are keyed by this name).
pub const WRITE_CONSUMER: &str = "catalog-write";
