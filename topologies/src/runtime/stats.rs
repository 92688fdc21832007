//! A pool's own counts, kept beside its Prometheus metrics: the Prometheus recorder
//! cannot be read back, and the pipeline status model needs every process's numbers,
//! not only those of the process that renders it. Each process publishes these with
//! its heartbeat ([`crate::status::heartbeat`]): totals since it started, and the
//! counts of the last 10 s, 1, 5 and 15 minutes (from a ring of its own snapshots, so
//! no reader has to difference counters across process restarts).

use serde::{Deserialize, Serialize};
use std::{
    collections::VecDeque,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Upper bounds (seconds) of the handler-duration buckets: the same as the
/// `souk_worker_handle_seconds` histogram's, plus an implicit +Inf bucket.
pub const HANDLE_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The windows a heartbeat reports, in seconds.
pub const WINDOWS: [u64; 4] = [10, 60, 300, 900];

/// Outcome labels (of `souk_worker_messages_total`) that count as errors.
pub const ERROR_OUTCOMES: [&str; 3] = ["retry", "dead_letter", "dead_letter_failed"];

/// Cumulative counts of one pool in one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Deliveries that reached an outcome (every `souk_worker_messages_total` label).
    pub handled: u64,
    pub acked: u64,
    /// Retried or dead-lettered (see [`ERROR_OUTCOMES`]).
    pub errors: u64,
    pub dead_lettered: u64,
    /// Handler durations per [`HANDLE_BUCKETS`] bucket (not cumulative), +Inf last.
    pub buckets: Vec<u64>,
}

impl Tally for Counters {
    fn minus(&self, earlier: &Counters) -> Counters {
        Counters {
            handled: self.handled.saturating_sub(earlier.handled),
            acked: self.acked.saturating_sub(earlier.acked),
            errors: self.errors.saturating_sub(earlier.errors),
            dead_lettered: self.dead_lettered.saturating_sub(earlier.dead_lettered),
            buckets: buckets_minus(&self.buckets, &earlier.buckets),
        }
    }
}

/// Duration buckets less an earlier snapshot of them, bucket by bucket.
pub(crate) fn buckets_minus(now: &[u64], earlier: &[u64]) -> Vec<u64> {
    now.iter().enumerate().map(|(i, n)| n.saturating_sub(earlier.get(i).copied().unwrap_or(0))).collect()
}

/// Add another process's duration buckets to `mine`, bucket by bucket.
pub(crate) fn buckets_add(mine: &mut Vec<u64>, theirs: &[u64]) {
    if mine.len() < theirs.len() {
        mine.resize(theirs.len(), 0);
    }
    for (m, t) in mine.iter_mut().zip(theirs) {
        *m += t;
    }
}

impl Counters {
    /// Add `other` (another process's counts) to these.
    pub fn add(&mut self, other: &Counters) {
        self.handled += other.handled;
        self.acked += other.acked;
        self.errors += other.errors;
        self.dead_lettered += other.dead_lettered;
        buckets_add(&mut self.buckets, &other.buckets);
    }
}

/// Cumulative counts that can be differenced: what a [`Ring`] keeps snapshots of.
pub trait Tally: Clone + Default {
    /// These counts less an `earlier` snapshot of the same (never below zero).
    fn minus(&self, earlier: &Self) -> Self;
}

/// The counts of the last `secs` seconds (or of the process's life, if shorter:
/// `covered_secs`): a pool's [`Counters`] or a sink's [`super::SinkCounters`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Window<C = Counters> {
    pub secs: u64,
    pub covered_secs: f64,
    pub counts: C,
}

/// How often the ring keeps a snapshot: windows are exact to this.
const RING_STEP: Duration = Duration::from_secs(5);

/// Snapshots of some [`Tally`] every [`RING_STEP`], the last 15 minutes' worth (plus
/// one), from which each of [`WINDOWS`] is a difference.
#[derive(Debug)]
pub(crate) struct Ring<C> {
    started: Instant,
    snapshots: Mutex<VecDeque<(Instant, C)>>,
}

impl<C: Tally> Default for Ring<C> {
    fn default() -> Self {
        let started = Instant::now();
        Ring { started, snapshots: Mutex::new(VecDeque::from([(started, C::default())])) }
    }
}

impl<C: Tally> Ring<C> {
    /// The counts of each of [`WINDOWS`] ending now, given the `totals` now.
    pub(crate) fn windows(&self, totals: C) -> Vec<Window<C>> {
        let now = Instant::now();
        let Ok(mut ring) = self.snapshots.lock() else { return Vec::new() };
        if ring.back().is_none_or(|(at, _)| now.duration_since(*at) >= RING_STEP) {
            ring.push_back((now, totals.clone()));
        }
        let longest = Duration::from_secs(WINDOWS[WINDOWS.len() - 1]) + RING_STEP;
        while ring.len() > 2 && ring.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= longest) {
            ring.pop_front();
        }
        WINDOWS
            .iter()
            .map(|&secs| {
                let from = now.checked_sub(Duration::from_secs(secs)).unwrap_or(self.started);
                // The newest snapshot at or before the window's start (else the oldest).
                let (at, base) = ring
                    .iter()
                    .rev()
                    .find(|(at, _)| *at <= from)
                    .or_else(|| ring.front())
                    .cloned()
                    .unwrap_or((self.started, C::default()));
                Window {
                    secs,
                    covered_secs: now.duration_since(at).as_secs_f64(),
                    counts: totals.minus(&base),
                }
            })
            .collect()
    }
}

/// The [`HANDLE_BUCKETS`] bucket `took` falls in (the last: +Inf).
pub(crate) fn bucket_of(took: Duration) -> usize {
    let secs = took.as_secs_f64();
    HANDLE_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(HANDLE_BUCKETS.len())
}

/// One pool's live counts in this process.
#[derive(Debug)]
pub struct PoolStats {
    handled: AtomicU64,
    acked: AtomicU64,
    errors: AtomicU64,
    dead_lettered: AtomicU64,
    buckets: [AtomicU64; HANDLE_BUCKETS.len() + 1],
    ring: Ring<Counters>,
}

impl Default for PoolStats {
    fn default() -> Self {
        PoolStats {
            handled: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            ring: Ring::default(),
        }
    }
}

impl PoolStats {
    /// One delivery reached `outcome` (a `souk_worker_messages_total` label) after `took`.
    pub(super) fn record(&self, outcome: &str, took: Duration) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        match outcome {
            "ack" => _ = self.acked.fetch_add(1, Ordering::Relaxed),
            "dead_letter" => _ = self.dead_lettered.fetch_add(1, Ordering::Relaxed),
            _ => {}
        }
        if ERROR_OUTCOMES.contains(&outcome) {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.buckets[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
    }

    /// Totals since this pool started.
    pub fn totals(&self) -> Counters {
        Counters {
            handled: self.handled.load(Ordering::Relaxed),
            acked: self.acked.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }

    /// The counts of each of [`WINDOWS`], ending now.
    pub fn windows(&self) -> Vec<Window> {
        self.ring.windows(self.totals())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_counted_by_kind_and_duration_bucket() {
        let s = PoolStats::default();
        s.record("ack", Duration::from_micros(100));
        s.record("ack", Duration::from_millis(30));
        s.record("retry", Duration::from_secs(20));
        s.record("dead_letter", Duration::from_millis(1));
        s.record("held_at_shutdown", Duration::ZERO);
        let t = s.totals();
        assert_eq!((t.handled, t.acked, t.errors, t.dead_lettered), (5, 2, 2, 1));
        assert_eq!(t.buckets.len(), HANDLE_BUCKETS.len() + 1);
        assert_eq!(t.buckets[0], 2, "≤ 0.5 ms: 100 µs and zero");
        assert_eq!(t.buckets[1], 1, "≤ 1 ms");
        assert_eq!(t.buckets[6], 1, "(25 ms, 50 ms]");
        assert_eq!(t.buckets[HANDLE_BUCKETS.len()], 1, "+Inf");
        let w = s.windows();
        assert_eq!(w.iter().map(|w| w.secs).collect::<Vec<_>>(), WINDOWS);
        assert!(w.iter().all(|w| w.counts == t), "a young process: every window is its whole life");
    }
}
