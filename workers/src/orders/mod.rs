//! Orders: intake of `souk.cmd.orders.place`, which starts each order's [`saga`].

mod dead_lettered;
mod place;
pub mod saga;

pub use dead_lettered::OrderDeadLettered;
pub use place::PlaceOrderHandler;

/// Handler name in the topology.
pub const PLACE_HANDLER: &str = "orders.place";
/// The durable consumer it drains (its inbox records are keyed by this name).
pub const PLACE_CONSUMER: &str = "orders-place";

/// Handler name of the pool that marks the orders of dead-lettered commands failed.
pub const DEAD_LETTERED_HANDLER: &str = "orders.dead-lettered";
/// The durable consumer of `souk.dlq.orders-place` it drains.
pub const DEAD_LETTERED_CONSUMER: &str = "orders-dead-lettered";
