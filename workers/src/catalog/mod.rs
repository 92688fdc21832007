//! Catalog: the search indexer (`catalog.index`, from `souk.evt.catalog.product-changed`)
//! and its lag.

mod index;
pub mod lag;

pub use index::IndexProducts;

/// Handler name of the indexer pool in the topology.
pub const INDEX_HANDLER: &str = "catalog.index";
/// The durable consumer of `souk.evt.catalog.product-changed` it drains.
pub const INDEX_CONSUMER: &str = "catalog-index";
/// The one index souk keeps (a label of the lag metrics and `souk status`).
pub const PRODUCTS_INDEX: &str = "products";
