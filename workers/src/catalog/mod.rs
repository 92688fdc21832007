//! Catalog: applies `souk.cmd.catalog.write` (product writes from the ingress, import
//! jobs and the seed generator) to Postgres, emitting `ProductChanged`; and the search
//! indexer (`catalog.index`, from `souk.evt.catalog.product-changed`) with its lag;
//! dead-lettered writes recorded `failed` (`catalog.dead-lettered`).

mod dead_lettered;
mod index;
pub mod lag;
mod write;

pub use dead_lettered::WriteDeadLettered;
pub use index::IndexProducts;
pub use write::{WriteProductHandler, aggregate_id, apply};

/// Handler name in the topology.
pub const WRITE_HANDLER: &str = "catalog.write";
/// The durable consumer it drains (its inbox records are keyed by this name).
pub const WRITE_CONSUMER: &str = "catalog-write";

/// Handler name of the pool that records dead-lettered writes `failed`.
pub const DEAD_LETTERED_HANDLER: &str = "catalog.dead-lettered";
/// The durable consumer of `souk.dlq.catalog-write` it drains.
pub const DEAD_LETTERED_CONSUMER: &str = "catalog-dead-lettered";

/// Handler name of the indexer pool in the topology.
pub const INDEX_HANDLER: &str = "catalog.index";
/// The durable consumer of `souk.evt.catalog.product-changed` it drains.
pub const INDEX_CONSUMER: &str = "catalog-index";
/// The one index souk keeps (a label of the lag metrics and `souk status`).
pub const PRODUCTS_INDEX: &str = "products";
