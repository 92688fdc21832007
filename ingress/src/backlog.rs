//! Admission control for catalog writes: refuse a write (503, `Retry-After`) while the
//! catalog pool's backlog would take longer than a bound to drain at the pool's recent
//! apply rate.
//!
//! A write accepted behind a long backlog is not searchable until the backlog drains:
//! the catalog benchmark accepted writes at 2,167/s while the pipeline applied 1,346/s,
//! and a write's 202 → searchable time grew to 22 s. Refusing writes once the backlog
//! is a bounded TIME of work keeps that time bounded and tells clients to slow down
//! (they retry with the same `Idempotency-Key`; nothing is accepted twice or lost). The
//! bound is time, not a count, because freshness is time: the same count is 0.1 s of
//! work on a fast machine and seconds on a slow one or a pool scaled down.
//!
//! The backlog is the consumer's `num_pending + num_ack_pending` (stored and not yet
//! applied), read from JetStream every [`POLL`] by one background task, never per
//! request. The same read gives the pool's rate: deliveries done (delivered and no
//! longer awaiting an ack) per second between two reads — of every process running the
//! pool, with no heartbeat delay and no request beyond the one per poll. A rate
//! measured while messages waited undelivered at both reads (the pool kept busy) is
//! its capacity and moves the estimate either way ([`RATE_WEIGHT`]); one measured while
//! the pool kept up only raises it (it could do at least that). Between reads, the
//! writes this process admitted count as backlog, so a burst between two reads cannot
//! overshoot the bound. At least [`MIN_BACKLOG`] writes are always admitted, so a pool
//! whose rate is not known yet (or measured low while idle) still gets work to be
//! measured on; a stalled pool (paused, its database down) measures 0/s and so holds at
//! most that many. A backlog that cannot be read admits writes: the intake itself
//! answers 503 when JetStream is down.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How often the backlog is read.
pub const POLL: Duration = Duration::from_millis(200);
/// How long a write over the bound waits for the backlog to drain before it is refused.
/// A refused client waits `Retry-After` (1 s) anyway; waiting here instead admits it at
/// the first read that shows room, so the pool is not left idle while refused writers
/// sit out their second (the benchmark lost 41 % of its rate to that), and the write's
/// 202 still comes when there is room for it.
pub const ADMIT_WAIT: Duration = Duration::from_secs(1);
/// Writes admitted behind, whatever the rate (see the module doc).
pub const MIN_BACKLOG: u64 = 64;
/// The weight of a new busy measurement in the rate estimate: with a read every
/// [`POLL`], the estimate follows a change of rate within about a second.
const RATE_WEIGHT: f64 = 0.3;
/// `rate_milli` while no rate is known.
const UNKNOWN: u64 = u64::MAX;

/// Which consumer's backlog bounds catalog writes, and how far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BacklogLimit {
    pub stream: String,
    pub consumer: String,
    /// New writes are refused while the backlog would take longer than this to drain
    /// at the pool's recent rate.
    pub max_drain: Duration,
}

/// One read of the consumer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Sample {
    pub at: Instant,
    /// Stored, not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub in_flight: u64,
    /// Deliveries ever made (the consumer's delivered sequence).
    pub delivered: u64,
}

impl Sample {
    fn backlog(&self) -> u64 {
        self.pending.saturating_add(self.in_flight)
    }

    fn done(&self) -> u64 {
        self.delivered.saturating_sub(self.in_flight)
    }
}

/// The pool's apply rate, learnt from successive reads.
#[derive(Debug, Default)]
pub(crate) struct RateEstimate {
    last: Option<Sample>,
    rate: Option<f64>,
}

impl RateEstimate {
    /// Take a new read; the estimate after it (writes per second), if any.
    pub(crate) fn observe(&mut self, now: Sample) -> Option<f64> {
        let Some(before) = self.last.replace(now) else { return self.rate };
        let secs = now.at.saturating_duration_since(before.at).as_secs_f64();
        if secs <= 0.0 {
            return self.rate;
        }
        // A consumer re-created in between counts from 0 again: nothing done, not negative.
        let seen = now.done().saturating_sub(before.done()) as f64 / secs;
        let busy = before.pending > 0 && now.pending > 0;
        self.rate = match (self.rate, busy) {
            (Some(rate), true) => Some(rate + RATE_WEIGHT * (seen - rate)),
            (None, true) => Some(seen),
            (Some(rate), false) => Some(rate.max(seen)),
            (None, false) => (seen > 0.0).then_some(seen),
        };
        self.rate
    }
}

/// Writes that may be behind: [`MIN_BACKLOG`], or `max_drain` of work at `rate`.
pub(crate) fn allowed(max_drain: Duration, rate: Option<f64>) -> u64 {
    let by_rate = rate.map_or(0.0, |r| r * max_drain.as_secs_f64());
    // `as` saturates (and maps NaN to 0).
    (by_rate as u64).max(MIN_BACKLOG)
}

/// Why a write was refused: the backlog as this process sees it, and the pool's rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Refusal {
    pub behind: u64,
    /// Writes per second; `None` when not measured yet.
    pub rate: Option<f64>,
    pub max_drain: Duration,
}

impl Refusal {
    /// The problem's detail.
    pub(crate) fn detail(&self) -> String {
        let work = match self.rate {
            Some(rate) if rate >= 1.0 => format!(
                "about {:.1} s of work at the {rate:.0} writes/s it applies; the bound is {:.1} s",
                self.behind as f64 / rate,
                self.max_drain.as_secs_f64()
            ),
            Some(_) => "and its pool applied none recently".to_owned(),
            None => "and its pool's rate is not measured yet".to_owned(),
        };
        format!(
            "the catalog is {} writes behind ({work}); retry shortly with the same Idempotency-Key",
            self.behind
        )
    }
}

/// The last backlog read, shared with the request handlers.
#[derive(Debug, Clone)]
pub(crate) struct Backlog {
    shared: Arc<Shared>,
    max_drain: Duration,
}

#[derive(Debug)]
struct Shared {
    /// The backlog as last read.
    read: AtomicU64,
    /// Writes admitted by this process since that read.
    admitted: AtomicU64,
    /// Writes that may be behind.
    allowed: AtomicU64,
    /// The pool's rate in thousandths of a write per second ([`UNKNOWN`]: none yet).
    rate_milli: AtomicU64,
    /// Wakes the writes waiting for room ([`Backlog::admit_within`]) after each read.
    read_done: tokio::sync::Notify,
}

impl Backlog {
    /// A gate with nothing read yet (it admits [`MIN_BACKLOG`] writes).
    fn new(max_drain: Duration) -> Backlog {
        let shared = Shared {
            read: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            allowed: AtomicU64::new(allowed(max_drain, None)),
            rate_milli: AtomicU64::new(UNKNOWN),
            read_done: tokio::sync::Notify::new(),
        };
        Backlog { shared: Arc::new(shared), max_drain }
    }

    /// Start reading `limit`'s consumer on `tracker` until `cancel`.
    pub(crate) fn spawn(
        limit: BacklogLimit,
        nats: async_nats::Client,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Backlog {
        let backlog = Backlog::new(limit.max_drain);
        let gate = backlog.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let js = async_nats::jetstream::new(nats);
            let mut estimate = RateEstimate::default();
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // Admitted before this read: in it, or about to be (counted until the next).
                let admitted = gate.shared.admitted.load(Ordering::Relaxed);
                // One request per poll: the consumer's info (a stream handle without
                // the stream's own info, which nothing here reads).
                let read = async {
                    let stream = js.get_stream_no_info(&limit.stream).await.ok()?;
                    let info = stream.consumer_info(&limit.consumer).await.ok()?;
                    Some(Sample {
                        at: Instant::now(),
                        pending: info.num_pending,
                        in_flight: info.num_ack_pending as u64,
                        delivered: info.delivered.consumer_sequence,
                    })
                };
                let sample = read.await;
                let rate = sample.and_then(|s| estimate.observe(s));
                gate.record(sample.map_or(0, |s| s.backlog()), admitted, rate);
            }
        });
        backlog
    }

    /// Take a read: `backlog` behind, which includes the first `admitted` writes this
    /// process admitted, and the pool's `rate`.
    fn record(&self, backlog: u64, admitted: u64, rate: Option<f64>) {
        let s = &self.shared;
        s.read.store(backlog, Ordering::Relaxed);
        // Never below 0: admissions racing with this read stay counted until the next.
        let _ = s
            .admitted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| Some(a.saturating_sub(admitted)));
        let allowed = allowed(self.max_drain, rate);
        s.allowed.store(allowed, Ordering::Relaxed);
        s.rate_milli.store(rate.map_or(UNKNOWN, |r| (r * 1000.0) as u64), Ordering::Relaxed);
        metrics::gauge!("souk_ingress_catalog_backlog").set(backlog as f64);
        metrics::gauge!("souk_ingress_catalog_backlog_allowed").set(allowed as f64);
        metrics::gauge!("souk_ingress_catalog_apply_rate").set(rate.unwrap_or(0.0));
        s.read_done.notify_waiters();
    }

    /// [`Backlog::admit`], waiting up to `wait` for a read that shows room (each read
    /// lets the waiting writes try again, first come first served by the counter).
    pub(crate) async fn admit_within(&self, wait: Duration) -> Result<(), Refusal> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before trying, so a read between the try and the wait wakes it.
            let read = self.shared.read_done.notified();
            let refusal = match self.admit() {
                Ok(()) => return Ok(()),
                Err(r) => r,
            };
            tokio::select! {
                () = read => {}
                () = tokio::time::sleep_until(deadline) => return Err(refusal),
            }
        }
    }

    /// Admit one write (counted as backlog until the next read), or say why not.
    pub(crate) fn admit(&self) -> Result<(), Refusal> {
        let s = &self.shared;
        let ahead = s.read.load(Ordering::Relaxed).saturating_add(s.admitted.fetch_add(1, Ordering::Relaxed));
        if ahead < s.allowed.load(Ordering::Relaxed) {
            return Ok(());
        }
        s.admitted.fetch_sub(1, Ordering::Relaxed);
        let rate = match s.rate_milli.load(Ordering::Relaxed) {
            UNKNOWN => None,
            milli => Some(milli as f64 / 1000.0),
        };
        Err(Refusal { behind: ahead, rate, max_drain: self.max_drain })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Reads every [`POLL`] from `start`: (pending, in flight, delivered).
    fn samples(start: Instant, reads: &[(u64, u64, u64)]) -> Vec<Sample> {
        reads
            .iter()
            .enumerate()
            .map(|(i, &(pending, in_flight, delivered))| Sample {
                at: start + POLL * i as u32,
                pending,
                in_flight,
                delivered,
            })
            .collect()
    }

    fn estimate(reads: &[(u64, u64, u64)]) -> Option<f64> {
        let mut e = RateEstimate::default();
        samples(Instant::now(), reads).into_iter().map(|s| e.observe(s)).last().flatten()
    }

    #[test]
    fn a_busy_pool_is_measured_by_what_it_finished() {
        // 200 finished every 200 ms with work always waiting: 1,000 writes/s.
        let rate = estimate(&[(5000, 128, 1000), (4800, 128, 1200), (4600, 128, 1400)]).unwrap_or_default();
        assert!((rate - 1000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn a_stalled_pool_measures_zero_and_holds_the_minimum() {
        // Work waiting, nothing delivered (a paused pool, or none running).
        let rate = estimate(&[(1001, 0, 0), (1001, 0, 0)]);
        assert_eq!(rate, Some(0.0));
        assert_eq!(allowed(SECOND, rate), MIN_BACKLOG);
        assert_eq!(allowed(SECOND, None), MIN_BACKLOG, "nothing measured yet");
    }

    #[test]
    fn a_pool_that_keeps_up_only_raises_the_estimate() {
        // Busy at 1,000/s, then idle (10/s arriving, 0 waiting): still 1,000/s.
        let rate = estimate(&[(5000, 0, 0), (4800, 0, 200), (0, 0, 202), (0, 0, 204)]);
        assert_eq!(rate, Some(1000.0));
        // Never busy: what it did is what it can at least do.
        assert_eq!(estimate(&[(0, 0, 0), (0, 2, 52)]), Some(250.0));
        assert_eq!(estimate(&[(0, 0, 0), (0, 0, 0)]), None);
    }

    #[test]
    fn a_slower_pool_lowers_the_estimate_within_about_a_second() {
        // 1,000/s, then 100/s while still busy.
        let mut reads = vec![(5000, 0, 0), (5000, 0, 200)];
        let mut done = 200;
        for _ in 0..8 {
            done += 20;
            reads.push((5000, 0, done));
        }
        let rate = estimate(&reads).unwrap_or_default();
        assert!(rate < 200.0, "{rate}");
    }

    #[test]
    fn the_bound_is_time_at_the_measured_rate() {
        assert_eq!(allowed(Duration::from_millis(500), Some(1300.0)), 650);
        assert_eq!(allowed(Duration::from_millis(500), Some(50.0)), MIN_BACKLOG);
        assert_eq!(allowed(SECOND, Some(f64::INFINITY)), u64::MAX);
    }

    #[test]
    fn the_drain_estimate_over_the_bound_refuses_and_under_it_admits() {
        let gate = Backlog::new(Duration::from_millis(500));
        // 600 behind at 1,000 writes/s: 0.6 s of work, over 0.5 s.
        gate.record(600, 0, Some(1000.0));
        let refusal = gate.admit().err();
        assert_eq!(refusal.map(|r| r.behind), Some(600));
        assert!(
            refusal.is_some_and(|r| r.detail().contains("600 writes behind (about 0.6 s")),
            "{refusal:?}"
        );
        // The same 600 behind at 2,000 writes/s: 0.3 s of work.
        gate.record(600, 0, Some(2000.0));
        assert_eq!(gate.admit(), Ok(()));
    }

    #[test]
    fn writes_admitted_between_reads_count_as_backlog() {
        let gate = Backlog::new(Duration::from_millis(500));
        gate.record(0, 0, Some(1000.0));
        let admitted = (0..1000).take_while(|_| gate.admit().is_ok()).count();
        assert_eq!(admitted, 500, "0.5 s at 1,000/s");
        // The next read sees 300 of them behind (200 applied): 200 more fit.
        gate.record(300, 500, Some(1000.0));
        assert_eq!((0..1000).take_while(|_| gate.admit().is_ok()).count(), 200);
    }

    /// A write over the bound waits for a read that shows room and is admitted then;
    /// with no such read within the wait it is refused, and it holds no place behind.
    #[tokio::test]
    async fn a_write_over_the_bound_waits_for_room_and_is_refused_only_when_none_comes() {
        let gate = Backlog::new(Duration::from_millis(500));
        gate.record(600, 0, Some(1000.0)); // 0.6 s of work: full
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.admit_within(Duration::from_secs(30)).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "no read has shown room yet");
        gate.record(300, 0, Some(1000.0)); // drained to 0.3 s
        assert_eq!(waiting.await.ok(), Some(Ok(())));
        assert_eq!(gate.shared.admitted.load(Ordering::Relaxed), 1, "counted behind once admitted");

        gate.record(600, 1, Some(1000.0)); // full again, and it stays full
        let wait = Duration::from_millis(200);
        let started = Instant::now();
        let refused = gate.admit_within(wait).await;
        assert_eq!(refused.map_err(|r| r.behind), Err(600));
        assert!(started.elapsed() >= wait, "refused when the wait ran out");
        assert_eq!(gate.shared.admitted.load(Ordering::Relaxed), 0, "a refused write holds no place");
    }
}
