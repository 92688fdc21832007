//! What a pool remembers about the messages it has not finished with: how often each
//! was deferred (a newer schema than its handler reads), and the last real error it
//! failed with. JetStream only counts deliveries, and a delivery carries nothing of the
//! one before, so without this a deferral would count as a failed attempt, and a
//! delivery arriving past max-deliver — after a dead-letter publish that failed, or an
//! attempt abandoned at shutdown — could only say "the last attempt did not finish"
//! instead of what went wrong.
//!
//! In memory, per pool, bounded: at most [`CAPACITY`] messages (the oldest entry goes
//! first), errors cut to [`MAX_ERROR_LEN`]. A message is forgotten once acked or
//! dead-lettered. A process that restarts, or another process taking the message,
//! starts without its history: deferrals then count as deliveries (a newer-schema
//! message is still deferred, whatever its count: the check runs first), and a
//! delivery past max-deliver carries the generic reason.

use super::HandlerError;
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Messages remembered per pool: far more than a pool has in flight (its concurrency)
/// or waiting on a retry, so eviction only drops entries of messages long gone.
pub(super) const CAPACITY: usize = 8192;
/// Longest error kept (a dead-letter header keeps 1024 characters).
pub(super) const MAX_ERROR_LEN: usize = 1024;

/// Identifies one stored message across re-created streams: its stream sequence and
/// the time the stream stored it.
pub(super) type Key = (u64, i128);

/// The key of the message a delivery's metadata describes.
pub(super) fn key_of(info: &async_nats::jetstream::message::Info<'_>) -> Key {
    (info.stream_sequence, info.published.unix_timestamp_nanos())
}

/// What is known of one message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct History {
    /// Deliveries deferred because the handler cannot read the message yet.
    pub(super) deferrals: u64,
    /// The last real error, and the (counted) attempt that reported it.
    pub(super) last_error: Option<(HandlerError, u64)>,
    /// When it first failed here (a dead letter's `souk-dlq-first-failure`).
    pub(super) first_failed_at: Option<std::time::SystemTime>,
}

#[derive(Debug, Default)]
pub(super) struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<Key, History>,
    /// Insertion order, for eviction; may hold keys already forgotten.
    order: VecDeque<Key>,
}

impl Ledger {
    /// What is known of `key` (nothing: the default).
    pub(super) fn get(&self, key: Key) -> History {
        self.lock().entries.get(&key).cloned().unwrap_or_default()
    }

    /// One more deferral of `key`.
    pub(super) fn deferred(&self, key: Key) {
        self.update(key, |h| h.deferrals += 1);
    }

    /// `key`'s attempt `attempt` failed with `error`.
    pub(super) fn failed(&self, key: Key, attempt: u64, error: &HandlerError) {
        let mut error = error.clone();
        if error.message.len() > MAX_ERROR_LEN {
            error.message = error.message.chars().take(MAX_ERROR_LEN).collect();
        }
        self.update(key, |h| {
            h.last_error = Some((error, attempt));
            h.first_failed_at.get_or_insert_with(std::time::SystemTime::now);
        });
    }

    /// Done with `key` (acked or dead-lettered).
    pub(super) fn forget(&self, key: Key) {
        self.lock().entries.remove(&key);
    }

    fn update(&self, key: Key, f: impl FnOnce(&mut History)) {
        let mut inner = self.lock();
        if !inner.entries.contains_key(&key) {
            while inner.entries.len() >= CAPACITY {
                match inner.order.pop_front() {
                    Some(old) => {
                        inner.entries.remove(&old);
                    }
                    None => break,
                }
            }
            inner.order.push_back(key);
        }
        f(inner.entries.entry(key).or_default());
        // Forgotten keys stay in `order` until they reach its front; keep it bounded too.
        if inner.order.len() > 2 * CAPACITY {
            let Inner { entries, order } = &mut *inner;
            order.retain(|k| entries.contains_key(k));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind: keep using it.
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A warning logged at most once per `every`, saying how many it stands for: a deploy
/// gone in the wrong order defers every new message, and one line each would flood the
/// log (the counter metric counts them all).
#[derive(Debug)]
pub(super) struct RateLimitedWarning {
    started: Instant,
    every: Duration,
    /// Milliseconds since `started` of the last line logged (0: none yet).
    last_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedWarning {
    pub(super) fn new(every: Duration) -> Self {
        RateLimitedWarning {
            started: Instant::now(),
            every,
            last_ms: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line is due now, standing for itself and `n` suppressed before.
    pub(super) fn due(&self) -> Option<u64> {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        let every = u64::try_from(self.every.as_millis()).unwrap_or(u64::MAX);
        if (last == 0 || now.saturating_sub(last) >= every)
            && self.last_ms.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_deferrals_and_the_last_error_until_forgotten() {
        let ledger = Ledger::default();
        let key = (7, 1);
        assert_eq!(ledger.get(key), History::default());
        ledger.deferred(key);
        ledger.deferred(key);
        ledger.failed(key, 1, &HandlerError::retryable("conflict", "serialization failure"));
        let last = HandlerError::retryable("conflict", "deadlock detected");
        ledger.failed(key, 2, &last);
        let first_failed_at = ledger.get(key).first_failed_at;
        assert!(first_failed_at.is_some());
        assert_eq!(ledger.get(key), History { deferrals: 2, last_error: Some((last, 2)), first_failed_at });
        assert_eq!(ledger.get((7, 2)), History::default(), "same sequence, another stream: not this message");
        ledger.forget(key);
        assert_eq!(ledger.get(key), History::default());
    }

    #[test]
    fn stays_bounded_dropping_the_oldest() {
        let ledger = Ledger::default();
        for seq in 0..(3 * CAPACITY as u64) {
            ledger.failed((seq, 0), 1, &HandlerError::retryable("x", "x".repeat(2 * MAX_ERROR_LEN)));
            if seq % 2 == 0 {
                ledger.forget((seq, 0));
            }
        }
        let inner = ledger.lock();
        assert!(inner.entries.len() <= CAPACITY);
        assert!(inner.order.len() <= 2 * CAPACITY + 1);
        assert!(
            inner
                .entries
                .values()
                .all(|h| h.last_error.as_ref().is_some_and(|(e, _)| e.message.len() == MAX_ERROR_LEN))
        );
        drop(inner);
        let last = 3 * CAPACITY as u64 - 1;
        assert!(ledger.get((last, 0)).last_error.is_some(), "the newest is kept");
        assert!(ledger.get((1, 0)).last_error.is_none(), "the oldest went first");
    }

    #[test]
    fn a_rate_limited_warning_counts_what_it_suppressed() {
        let w = RateLimitedWarning::new(Duration::from_secs(3600));
        assert_eq!(w.due(), Some(0));
        assert_eq!(w.due(), None);
        assert_eq!(w.due(), None);
        let w = RateLimitedWarning::new(Duration::ZERO);
        assert_eq!(w.due(), Some(0));
    }
}
