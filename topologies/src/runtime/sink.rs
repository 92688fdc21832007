//! A sink's own counts: the stores a pipeline writes to besides its system of record
//! (the search index today; the wide-column timelines when they land). A pool's
//! counters say how many deliveries its handler finished; they cannot say how many
//! documents reached the index, how fast, or whether the index refused writes while
//! the pool retried. So the handler that writes a sink records each write call here,
//! and declares the sink ([`super::Handler::sinks`]); the process publishes the counts
//! of the sinks its pools write with its heartbeat, like its pools' counts
//! ([`super::PoolStats`]), and the status model sums them over live processes.
//!
//! Beside these, every write is a Prometheus sample: `souk_sink_writes_total{sink,
//! outcome="ok"|"error"}`, `souk_sink_items_total{sink}` and the histogram
//! `souk_sink_write_seconds{sink}`.

use serde::{Deserialize, Serialize};
use std::{
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::stats::{HANDLE_BUCKETS, Ring, Tally, Window, bucket_of, buckets_add, buckets_minus};

/// Longest error text kept for the status model.
const MAX_ERROR_LEN: usize = 300;

/// Cumulative counts of one sink in one process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkCounters {
    /// Write calls that returned (a batch is one call).
    pub writes: u64,
    /// Items (documents, rows) those that succeeded carried.
    pub items: u64,
    /// Write calls that failed.
    pub errors: u64,
    /// Write durations per [`HANDLE_BUCKETS`] bucket (not cumulative), +Inf last.
    pub buckets: Vec<u64>,
}

impl Tally for SinkCounters {
    fn minus(&self, earlier: &SinkCounters) -> SinkCounters {
        SinkCounters {
            writes: self.writes.saturating_sub(earlier.writes),
            items: self.items.saturating_sub(earlier.items),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: buckets_minus(&self.buckets, &earlier.buckets),
        }
    }
}

impl SinkCounters {
    /// Add `other` (another process's counts) to these.
    pub fn add(&mut self, other: &SinkCounters) {
        self.writes += other.writes;
        self.items += other.items;
        self.errors += other.errors;
        buckets_add(&mut self.buckets, &other.buckets);
    }
}

/// The last failed write of a sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkError {
    /// Unix milliseconds.
    pub at_ms: i64,
    pub error: String,
}

/// One sink's live counts in this process. Shared (`Arc`) between the handler that
/// writes it and the heartbeat.
#[derive(Debug)]
pub struct SinkStats {
    name: String,
    /// What implements it (`tantivy`, `opensearch`).
    backend: String,
    writes: AtomicU64,
    items: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; HANDLE_BUCKETS.len() + 1],
    last_error: Mutex<Option<SinkError>>,
    ring: Ring<SinkCounters>,
}

impl SinkStats {
    pub fn new(name: impl Into<String>, backend: impl Into<String>) -> SinkStats {
        SinkStats {
            name: name.into(),
            backend: backend.into(),
            writes: AtomicU64::new(0),
            items: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            last_error: Mutex::new(None),
            ring: Ring::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// A write of `items` succeeded after `took`.
    pub fn wrote(&self, items: usize, took: Duration) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
        self.buckets[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
        let sink = self.name.clone();
        metrics::counter!("souk_sink_writes_total", "sink" => sink.clone(), "outcome" => "ok").increment(1);
        metrics::counter!("souk_sink_items_total", "sink" => sink.clone()).increment(items as u64);
        metrics::histogram!("souk_sink_write_seconds", "sink" => sink).record(took.as_secs_f64());
    }

    /// A write failed with `error` after `took`.
    pub fn failed(&self, error: &dyn std::fmt::Display, took: Duration) {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.buckets[bucket_of(took)].fetch_add(1, Ordering::Relaxed);
        let mut text = error.to_string();
        if text.len() > MAX_ERROR_LEN {
            let cut = (0..=MAX_ERROR_LEN).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
            text.truncate(cut);
        }
        let at_ms = chrono::Utc::now().timestamp_millis();
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(SinkError { at_ms, error: text });
        }
        let sink = self.name.clone();
        metrics::counter!("souk_sink_writes_total", "sink" => sink.clone(), "outcome" => "error")
            .increment(1);
        metrics::histogram!("souk_sink_write_seconds", "sink" => sink).record(took.as_secs_f64());
    }

    /// Totals since this process started.
    pub fn totals(&self) -> SinkCounters {
        SinkCounters {
            writes: self.writes.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            buckets: self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect(),
        }
    }

    /// The counts of each of [`super::WINDOWS`], ending now.
    pub fn windows(&self) -> Vec<Window<SinkCounters>> {
        self.ring.windows(self.totals())
    }

    pub fn last_error(&self) -> Option<SinkError> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_items_and_errors_are_counted_and_the_last_error_kept() {
        let s = SinkStats::new("search", "tantivy");
        s.wrote(100, Duration::from_millis(3));
        s.wrote(7, Duration::from_millis(30));
        s.failed(&"disk full".repeat(100), Duration::from_secs(20));
        let t = s.totals();
        assert_eq!((t.writes, t.items, t.errors), (3, 107, 1));
        assert_eq!(t.buckets[3], 1, "(2.5 ms, 5 ms]");
        assert_eq!(t.buckets[HANDLE_BUCKETS.len()], 1, "+Inf");
        let last = s.last_error().expect("an error");
        assert!(last.error.starts_with("disk full") && last.error.len() <= MAX_ERROR_LEN, "{last:?}");
        let w = s.windows();
        assert!(w.iter().all(|w| w.counts == t), "a young process: every window is its whole life");
    }
}
