//! Orders: intake of `souk.cmd.orders.place` (the skeleton the order saga grows from).

mod place;

pub use place::PlaceOrderHandler;

/// Handler name in the topology.
pub const PLACE_HANDLER: &str = "orders.place";
/// The durable consumer it drains (its inbox records are keyed by this name).
pub const PLACE_CONSUMER: &str = "orders-place";
