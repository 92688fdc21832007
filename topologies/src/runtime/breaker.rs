//! A breaker per pool: when a handler reports a dependency failure the pool stops
//! fetching, keeps what it holds, probes the dependency with [`Handler::probe`] (backing
//! off between probes, bounded), and resumes when a probe passes.
//!
//! `closed`: fetching and running. `open`: a dependency failed; nothing is fetched or
//! run, held messages keep their place with progress acks. `half-open`: a probe is
//! running. A passing probe closes the breaker and the held messages run again (with
//! the same delivery: an outage costs them no attempt); if they fail again the breaker
//! reopens and the next probe waits longer. The wait only resets after a message is
//! handled, so a dependency that passes its probe but fails real work (a probe that
//! checks too little) is retried ever more slowly, never in a tight loop.

use futures::FutureExt;
use serde::Serialize;
use std::{
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Handler, HandlerError};

/// First wait before probing; it doubles per failed probe up to [`PROBE_MAX_WAIT`].
const PROBE_FIRST_WAIT: Duration = Duration::from_millis(500);
/// Longest wait between probes: a dependency that came back is noticed within this.
const PROBE_MAX_WAIT: Duration = Duration::from_secs(15);
/// A probe that has not answered by then failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pool's breaker stands (ordered from best to worst).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BreakerState {
    Closed,
    /// Probing.
    HalfOpen,
    Open,
}

impl BreakerState {
    /// For `souk_worker_pool_breaker_state`: 0 closed, 1 half-open, 2 open.
    fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half-open",
            BreakerState::Open => "open",
        }
    }
}

impl std::fmt::Display for BreakerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One pool's breaker. Shared by its fetch loop, its message tasks and its prober.
#[derive(Debug)]
pub(super) struct Breaker {
    pool: String,
    state: watch::Sender<BreakerState>,
    /// Failed probes (and trips) since a message was last handled: the probe wait.
    level: AtomicU32,
    last_error: Mutex<Option<HandlerError>>,
}

impl Breaker {
    pub(super) fn new(pool: &str) -> Arc<Breaker> {
        metrics::gauge!("souk_worker_pool_breaker_state", "pool" => pool.to_owned())
            .set(BreakerState::Closed.gauge());
        Arc::new(Breaker {
            pool: pool.to_owned(),
            state: watch::Sender::new(BreakerState::Closed),
            level: AtomicU32::new(0),
            last_error: Mutex::new(None),
        })
    }

    pub(super) fn state(&self) -> BreakerState {
        *self.state.borrow()
    }

    /// Changes of the state, for the process's heartbeat (sent at once on a change).
    pub(super) fn watch(&self) -> watch::Receiver<BreakerState> {
        self.state.subscribe()
    }

    /// The dependency failure that opened the breaker (or failed the last probe).
    pub(super) fn last_error(&self) -> Option<HandlerError> {
        self.last_error.lock().ok()?.clone()
    }

    fn set(&self, to: BreakerState) {
        let from = self.state.send_replace(to);
        if from != to {
            metrics::gauge!("souk_worker_pool_breaker_state", "pool" => self.pool.clone()).set(to.gauge());
        }
    }

    /// A handler reported a dependency failure: open (unless a probe is running).
    pub(super) fn trip(&self, error: &HandlerError) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.clone());
        }
        let opened = self.state.send_if_modified(|s| {
            let open = *s == BreakerState::Closed;
            if open {
                *s = BreakerState::Open;
            }
            open
        });
        if opened {
            metrics::gauge!("souk_worker_pool_breaker_state", "pool" => self.pool.clone())
                .set(BreakerState::Open.gauge());
            metrics::counter!("souk_worker_pool_breaker_opened_total", "pool" => self.pool.clone())
                .increment(1);
            tracing::warn!(pool = %self.pool, code = error.code, error = %error.message,
                "dependency failed: breaker open, pool stops fetching until a probe passes");
        }
    }

    /// A message was handled: the dependency works, the next outage starts probing fast.
    pub(super) fn handled(&self) {
        self.level.store(0, Ordering::Relaxed);
    }

    /// Wait until the breaker is closed; `false` if `cancel` fired first.
    pub(super) async fn closed(&self, cancel: &CancellationToken) -> bool {
        let mut rx = self.state.subscribe();
        tokio::select! {
            r = rx.wait_for(|s| *s == BreakerState::Closed) => r.is_ok(),
            () = cancel.cancelled() => false,
        }
    }

    /// Probe while open, close when a probe passes; until `cancel`.
    pub(super) async fn run_prober(&self, handler: Arc<dyn Handler>, cancel: CancellationToken) {
        let mut rx = self.state.subscribe();
        loop {
            tokio::select! {
                r = rx.wait_for(|s| *s == BreakerState::Open) => if r.is_err() { return },
                () = cancel.cancelled() => return,
            }
            let level = self.level.fetch_add(1, Ordering::Relaxed).min(16);
            let wait = PROBE_FIRST_WAIT.saturating_mul(1 << level).min(PROBE_MAX_WAIT);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = cancel.cancelled() => return,
            }
            self.set(BreakerState::HalfOpen);
            match probe(handler.as_ref()).await {
                Ok(()) => {
                    tracing::info!(pool = %self.pool, "probe passed: breaker closed, pool resumes");
                    self.set(BreakerState::Closed);
                }
                Err(e) => self.probe_failed(e, wait),
            }
        }
    }

    fn probe_failed(&self, error: HandlerError, waited: Duration) {
        tracing::info!(pool = %self.pool, code = error.code, error = %error.message, waited = ?waited,
            "probe failed: breaker stays open");
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
        self.set(BreakerState::Open);
    }
}

/// Run `handler`'s probe, cut at [`PROBE_TIMEOUT`]. A panicking probe failed: uncaught,
/// it would end the prober with the breaker half-open, and the pool would neither
/// fetch nor re-run what it holds until the process restarts.
pub(super) async fn probe(handler: &dyn Handler) -> Result<(), HandlerError> {
    // The call is inside the async block so that a panic in `probe()` itself is caught too.
    let run = AssertUnwindSafe(async { handler.probe().await }).catch_unwind();
    match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(HandlerError::dependency("probe_panic", "probe panicked")),
        Err(_) => {
            Err(HandlerError::dependency("probe_timeout", format!("probe timed out after {PROBE_TIMEOUT:?}")))
        }
    }
}
