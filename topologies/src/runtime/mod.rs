//! The worker runtime: pools that drain durable pull consumers through handlers.
//!
//! A pool fetches in batches no larger than its free concurrency, so a message is only
//! pulled when a handler slot is ready for it (its ack-wait clock never runs while it
//! sits in a local queue); under load it waits up to 2 ms for a quarter of `fetch-batch`
//! slots to free up, so pulls stay large instead of one message each. Each message runs in its own span (parented on the trace
//! context in its headers) and its [`Outcome`] maps to JetStream:
//!
//! | outcome | JetStream |
//! |---|---|
//! | `Ack` | ack (after the handler committed) |
//! | `Error`, class `Retryable` | nak with the error's delay, else the backoff step; on the last allowed delivery: dead letter |
//! | `Error`, class `Poison` | dead letter at once |
//! | `Error`, class `Dependency` | nothing: the pool's breaker opens, the delivery is held (progress acks) and runs again when the breaker closes; nak'd at shutdown |
//! | `Error`, class `TooNew` (or [`Handler::too_new`]) | nak with a 60 s delay; never dead-lettered, not counted toward max-deliver |
//! | `Error`, class `Waiting` (another delivery of the same work is under way, a provider it needs is down) | kept (progress acks), its slot given up, run again after the error's delay (else 10 s); never dead-lettered, not counted toward max-deliver; handed back at shutdown, or when its wait ends in a paused pool |
//! | panic | `Retryable` |
//! | timeout | `Dependency` if the handler's probe fails too, else `Retryable` |
//!
//! A dependency failure never counts toward max-deliver and never dead-letters: while a
//! pool's breaker is open the pool fetches nothing and probes its handler's dependency
//! ([`Handler::probe`]) with growing waits; see [`BreakerState`]. A delivery past
//! max-deliver whose earlier deliveries this process cannot account for (hand-backs,
//! another process) runs once more, marked for that run ([`LastRuns`]); it is
//! dead-lettered unrun only when an earlier such run never returned.
//!
//! With `max-batch` > 1 a pool groups the messages that are ready together (none waits
//! for others) and hands them to [`Handler::handle_batch`], so a handler can commit
//! many messages in one transaction; each message still gets its own outcome and is
//! settled on its own.
//!
//! Long handlers send progress acks every third of the ack wait. On shutdown a pool
//! stops fetching, naks what it fetched but did not start, and waits up to its drain
//! timeout for running handlers; whatever is still running then is abandoned unacked
//! and JetStream redelivers it.
//!
//! With a [`FailureLog`](souk_pipelines::follow::FailureLog) (`Runtime::failure_log`),
//! each failed attempt and each dead letter's place are recorded for `souk trace`, off
//! the messages' path (see the `failures` module).

mod breaker;
mod dead_letter;
mod execute;
mod failures;
mod fetch;
mod handler;
mod heartbeat;
mod last_run;
mod ledger;
mod live;
mod pool;
mod settle;
mod sink;
mod stats;
mod waiting;

pub use breaker::BreakerState;
pub use dead_letter::dead_letter;
pub use handler::{Delivery, ErrorClass, Handler, HandlerError, Outcome, Registry};
pub use last_run::LastRuns;
pub use live::Activity;
pub use pool::{Pool, Runtime};
pub use sink::{SinkCounters, SinkError, SinkStats};
pub use stats::{Counters, ERROR_OUTCOMES, HANDLE_BUCKETS, PoolStats, WINDOWS, Window};
