//! Subject names. Commands are `souk.cmd.<domain>.<verb>`, events
//! `souk.evt.<domain>.<event>`, dead letters `souk.dlq.<consumer>`.

/// Prefix of every command subject (stream `CMD`).
pub const COMMANDS: &str = "souk.cmd";
/// Prefix of every event subject (stream `EVT`).
pub const EVENTS: &str = "souk.evt";
/// Prefix of every dead-letter subject (stream `DLQ`).
pub const DEAD_LETTERS: &str = "souk.dlq";

/// Place an order (published by the ingress, consumed by the orders pool).
pub const ORDERS_PLACE: &str = "souk.cmd.orders.place";
/// An order was accepted into the system of record.
pub const ORDERS_ACCEPTED: &str = "souk.evt.orders.accepted";

/// Create, replace, patch or delete a product (ingress, import job, seed → catalog pool).
pub const CATALOG_WRITE: &str = "souk.cmd.catalog.write";
/// A product changed (catalog pool → indexer and any other reader of the catalog).
pub const CATALOG_PRODUCT_CHANGED: &str = "souk.evt.catalog.product-changed";

/// The dead-letter subject of one durable consumer.
pub fn dead_letter(consumer: &str) -> String {
    format!("{DEAD_LETTERS}.{consumer}")
}
