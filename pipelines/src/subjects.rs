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

/// An order is confirmed (stock sold, payment captured).
pub const ORDERS_CONFIRMED: &str = "souk.evt.orders.confirmed";
/// An order is cancelled, its compensations done.
pub const ORDERS_CANCELLED: &str = "souk.evt.orders.cancelled";
/// Every seller of an order has shipped.
pub const ORDERS_SHIPPED: &str = "souk.evt.orders.shipped";

/// Hold stock for an order (saga → inventory pool).
pub const INVENTORY_RESERVE: &str = "souk.cmd.inventory.reserve";
/// Release an order's hold (saga → inventory pool; a compensation).
pub const INVENTORY_RELEASE: &str = "souk.cmd.inventory.release";
/// Turn an order's hold into sold units (saga → inventory pool).
pub const INVENTORY_COMMIT: &str = "souk.cmd.inventory.commit";
/// The order's stock is held.
pub const INVENTORY_RESERVED: &str = "souk.evt.inventory.reserved";
/// The order's hold was refused.
pub const INVENTORY_REJECTED: &str = "souk.evt.inventory.rejected";
/// The order's hold was released or expired.
pub const INVENTORY_RELEASED: &str = "souk.evt.inventory.released";
/// The answer to a commit.
pub const INVENTORY_COMMITTED: &str = "souk.evt.inventory.committed";

/// Authorize an order's payment (saga → payments pool).
pub const PAYMENTS_AUTHORIZE: &str = "souk.cmd.payments.authorize";
/// Capture, void or refund an order's payment (saga → payments pool).
pub const PAYMENTS_SETTLE: &str = "souk.cmd.payments.settle";
/// The outcome of a payment command.
pub const PAYMENTS_RESULT: &str = "souk.evt.payments.result";

/// Ask a seller to ship its lines of an order (saga → fulfilment pool).
pub const FULFILMENT_REQUEST: &str = "souk.cmd.fulfilment.request";
/// A seller shipped its lines (ingress → fulfilment pool).
pub const FULFILMENT_SHIP: &str = "souk.cmd.fulfilment.ship";
/// A seller shipped its lines of an order (fulfilment pool → saga).
pub const FULFILMENT_SHIPPED: &str = "souk.evt.fulfilment.shipped";

/// Create, replace, patch or delete a product (ingress, import job, seed → catalog pool).
pub const CATALOG_WRITE: &str = "souk.cmd.catalog.write";
/// A product changed (catalog pool → indexer and any other reader of the catalog).
pub const CATALOG_PRODUCT_CHANGED: &str = "souk.evt.catalog.product-changed";

/// The dead-letter subject of one durable consumer.
pub fn dead_letter(consumer: &str) -> String {
    format!("{DEAD_LETTERS}.{consumer}")
}
