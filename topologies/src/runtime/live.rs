//! What a running pool reports of itself in its process's heartbeat (and so in the
//! status model): whether it is paused (and done draining), its concurrency now, and
//! how many messages it has in flight. Also
//! the resizer that moves a pool's handler slots to the concurrency an operator set.

use serde::{Deserialize, Serialize};
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::control::PoolSettings;

/// Whether a pool fetches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Activity {
    /// Fetching (or its breaker holds it: see the breaker state).
    #[default]
    Running,
    /// Paused, but a pull request is still open (it ends within its 5 s expiry) or
    /// handlers are still running: not drained yet.
    Pausing,
    /// Paused and drained: no pull request open, nothing in flight.
    Paused,
}

impl Activity {
    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Running => "running",
            Activity::Pausing => "pausing",
            Activity::Paused => "paused",
        }
    }
}

/// A pool's live numbers, shared by its fetch loop, its tasks and the heartbeat.
#[derive(Debug, Default)]
pub(super) struct Live {
    paused: AtomicBool,
    pulling: AtomicBool,
    in_flight: AtomicUsize,
    /// Of `in_flight`, deliveries waiting to be tried again (slot given up).
    waiting: AtomicUsize,
    concurrency: AtomicUsize,
}

impl Live {
    pub(super) fn new(concurrency: usize, paused: bool) -> Arc<Live> {
        let live = Live::default();
        live.concurrency.store(concurrency, Ordering::Relaxed);
        live.paused.store(paused, Ordering::Relaxed);
        Arc::new(live)
    }

    /// A pool about to start with `settings` (its slots are sized from this).
    pub(super) fn starting(spec: &crate::spec::PoolSpec, settings: &PoolSettings) -> Arc<Live> {
        Live::new(settings.concurrency.unwrap_or(spec.concurrency), settings.paused)
    }

    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    pub(super) fn set_paused(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }

    pub(super) fn set_pulling(&self, pulling: bool) {
        self.pulling.store(pulling, Ordering::SeqCst);
    }

    pub(super) fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    pub(super) fn finished(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// One delivery more waits (see `ErrorClass::Waiting`) until the guard drops: in
    /// the heartbeat and `souk_worker_waiting_messages{pool}`.
    pub(super) fn waiting_one(&self, pool: &str) -> WaitingOne<'_> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let gauge = metrics::gauge!("souk_worker_waiting_messages", "pool" => pool.to_owned());
        gauge.increment(1.0);
        WaitingOne { live: self, gauge }
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }

    pub(super) fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::SeqCst)
    }

    pub(super) fn activity(&self) -> Activity {
        match self.paused.load(Ordering::SeqCst) {
            false => Activity::Running,
            true if self.pulling.load(Ordering::SeqCst) || self.in_flight() > 0 => Activity::Pausing,
            true => Activity::Paused,
        }
    }
}

/// A waiting delivery, counted while it lives.
pub(super) struct WaitingOne<'a> {
    live: &'a Live,
    gauge: metrics::Gauge,
}

impl Drop for WaitingOne<'_> {
    fn drop(&mut self) {
        self.live.waiting.fetch_sub(1, Ordering::SeqCst);
        self.gauge.decrement(1.0);
    }
}

/// Keep `slots` at the concurrency `settings` ask for (else `default`), and the shown
/// paused state at theirs, until `stop`.
/// Growing adds permits at once; shrinking takes permits away as running handlers
/// return them (a running handler is never interrupted), so the in-flight bound falls
/// to the new value as soon as enough handlers have finished.
pub(super) async fn resize(
    slots: Arc<Semaphore>,
    live: Arc<Live>,
    mut settings: watch::Receiver<PoolSettings>,
    default: usize,
    stop: CancellationToken,
) {
    let mut current = live.concurrency();
    loop {
        let target = {
            let s = settings.borrow_and_update();
            // Shown at once; the fetch loop stops pulling when its open pull ends.
            live.set_paused(s.paused);
            s.concurrency.unwrap_or(default)
        };
        if target > current {
            slots.add_permits(target - current);
            current = target;
            live.concurrency.store(current, Ordering::SeqCst);
        } else if target < current {
            let shrink = u32::try_from(current - target).unwrap_or(u32::MAX);
            tokio::select! {
                () = stop.cancelled() => return,
                // Another change first: the partly acquired permits go back.
                r = settings.changed() => { if r.is_err() { return; } continue; }
                p = slots.clone().acquire_many_owned(shrink) => match p {
                    Ok(p) => {
                        p.forget();
                        current = target;
                        live.concurrency.store(current, Ordering::SeqCst);
                    }
                    Err(_) => return,
                },
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = settings.changed() => if r.is_err() { return },
        }
    }
}
