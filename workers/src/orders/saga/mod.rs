//! The order saga: reserve stock → authorize payment → commit stock → capture →
//! confirmed (OrderConfirmed) → fulfilment per seller → shipped (OrderShipped); a
//! failure after partial success compensates in reverse and ends `cancelled` with a
//! reason the buyer can read.
//!
//! - [`machine`]: states, events, effects and THE transition table (pure).
//! - [`advance`]: one transition applied to a locked saga: state, order status, step
//!   log, and commands/events as outbox rows — in the caller's transaction.
//! - [`SagaReplies`]: the reply events (pool `orders-saga`, under `Deduplicated`).
//! - [`sweeper`]: resumes or compensates sagas past their deadline.
//! - [`operator`]: `souk sagas retry|compensate`, recorded in `operator_actions`.
//!
//! The saga starts in `PlaceOrderHandler`, in the transaction that records the order.

pub mod advance;
pub mod machine;
pub mod operator;
mod replies;
pub mod sweeper;

pub use machine::{Effect, Event, State};
pub use replies::SagaReplies;
pub use sweeper::{MAX_ATTEMPTS, Stalled, Swept, sweep};

use std::time::Duration;

/// Handler name of the saga's reply pool in the topology.
pub const HANDLER: &str = "orders.saga";
/// The durable consumer of reply events it drains (its inbox records are keyed by it).
pub const CONSUMER: &str = "orders-saga";

/// How long a stock hold lasts: the longest the saga can take to reach its commit —
/// every attempt of reserve, authorize and commit timing out
/// (`State::step_timeout` × [`MAX_ATTEMPTS`]) — plus a margin for a sweeper that runs
/// late or a pool that is behind. A hold that expired earlier would make the commit
/// refuse stock the buyer already paid for (the saga then voids and cancels).
pub fn hold_duration() -> Duration {
    let forward = [State::Reserving, State::Authorizing, State::Committing];
    let longest: Duration = forward.iter().filter_map(|s| s.step_timeout()).sum();
    longest * MAX_ATTEMPTS.unsigned_abs() + HOLD_MARGIN
}

/// See [`hold_duration`].
pub const HOLD_MARGIN: Duration = Duration::from_secs(120);

/// The reason an order placed without a payment token or sellers (a version-1
/// `PlaceOrder`, client-priced) is cancelled with at once: no saga can pay for it.
pub const NO_PAYMENT_REASON: &str = "cancelled: the order has no payment method or sellers (placed through the old order API); place it again through checkout";
