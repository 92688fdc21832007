//! A circuit breaker per provider: failsafe's state machine (consecutive failures
//! open it for a while; then one trial call half-opens it), wrapped small, with its
//! state and transitions as metrics:
//!
//! - `souk_payments_breaker_state{provider}`: 0 closed, 1 half-open, 2 open;
//! - `souk_payments_breaker_transitions_total{provider, to}`.

use failsafe::{
    Config, StateMachine,
    backoff::{self, Constant},
    failure_policy::{self, ConsecutiveFailures},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

const CLOSED: u8 = 0;
const HALF_OPEN: u8 = 1;
const OPEN: u8 = 2;

/// A provider's breaker.
#[derive(Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Constant>, Metrics>,
    state: Arc<AtomicU8>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("state", &self.state()).finish()
    }
}

/// Publishes the breaker's transitions.
struct Metrics {
    provider: String,
    state: Arc<AtomicU8>,
}

impl Metrics {
    fn to(&self, state: u8, name: &'static str) {
        let before = self.state.swap(state, Ordering::SeqCst);
        metrics::gauge!("souk_payments_breaker_state", "provider" => self.provider.clone())
            .set(f64::from(state));
        if before != state {
            metrics::counter!("souk_payments_breaker_transitions_total", "provider" => self.provider.clone(), "to" => name)
                .increment(1);
            tracing::warn!(provider = %self.provider, state = name, "payment provider circuit breaker");
        }
    }
}

impl failsafe::Instrument for Metrics {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.to(OPEN, "open");
    }
    fn on_half_open(&self) {
        self.to(HALF_OPEN, "half_open");
    }
    fn on_closed(&self) {
        self.to(CLOSED, "closed");
    }
}

impl Breaker {
    /// Opens after `failures` consecutive failures, for `open_for`.
    pub fn new(provider: &str, failures: u32, open_for: Duration) -> Breaker {
        let state = Arc::new(AtomicU8::new(CLOSED));
        // Exported closed from the start: an alert or a panel finds the provider's series
        // before its first transition.
        metrics::gauge!("souk_payments_breaker_state", "provider" => provider.to_owned())
            .set(f64::from(CLOSED));
        let metrics = Metrics { provider: provider.to_owned(), state: state.clone() };
        let machine = Config::new()
            .failure_policy(failure_policy::consecutive_failures(
                failures.max(1),
                backoff::constant(open_for),
            ))
            .instrument(metrics)
            .build();
        Breaker { machine, state }
    }

    /// Whether a call may go to the provider now (an open breaker past its wait lets
    /// one trial through: half-open).
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }

    /// The provider answered (whatever it answered).
    pub fn success(&self) {
        self.machine.on_success();
    }

    /// The provider did not answer usefully (not processed, or no answer).
    pub fn failure(&self) {
        self.machine.on_error();
    }

    /// `closed`, `half_open` or `open`.
    pub fn state(&self) -> &'static str {
        match self.state.load(Ordering::SeqCst) {
            OPEN => "open",
            HALF_OPEN => "half_open",
            _ => "closed",
        }
    }
}
