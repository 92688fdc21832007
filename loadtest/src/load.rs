//! The load driver: runs one operation over and over, closed or open loop, and tallies
//! what came back.
//!
//! Throughput counts operations *completed* inside the measured window, whenever they
//! started: that is what a server sustains, and it does not penalise the window's edges
//! (operations straddling the start or the end) the way "started and finished inside"
//! would.

use futures::future::BoxFuture;
use hdrhistogram::Histogram;
use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{sync::Semaphore, task::JoinSet, time::Instant};

/// Longest one operation may take before it counts as an error (`timeout`): keeps every
/// loop bounded even if a server stops answering.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an open-loop generator that fell behind keeps sending after the window ends.
const OPEN_LOOP_GRACE: Duration = Duration::from_secs(2);

/// One operation: `Ok(units done)` (1 per request or row, 100 per atomic batch of 100),
/// or `Err(class)` with a short error class (`"503"`, `"timeout"`, …) to count.
pub type Op = Arc<dyn Fn() -> BoxFuture<'static, Result<u64, String>> + Send + Sync>;

/// An operation that also names what it sent (a query's kind, say): the run tallies the
/// latency per label beside the totals ([`Tally::by_label`]).
pub type LabelledOp = Arc<dyn Fn() -> (&'static str, BoxFuture<'static, Result<u64, String>>) + Send + Sync>;

/// How operations are issued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` tasks, each issuing its next operation when the previous one is
    /// answered. Measures capacity at that concurrency, but a slow answer also slows
    /// the client down (coordinated omission): latency is optimistic under overload.
    Closed { concurrency: usize },
    /// Operations start on a schedule (`rate` per second, Poisson or evenly spaced)
    /// whatever the answers, at most `max_in_flight` at once. Latency counts from the
    /// scheduled start, so time spent waiting for a free slot shows up as latency.
    Open { rate: f64, max_in_flight: usize, poisson: bool },
}

impl Mode {
    pub fn describe(&self) -> String {
        match self {
            Mode::Closed { concurrency } => format!("closed loop, {concurrency} concurrent"),
            Mode::Open { rate, max_in_flight, poisson } => format!(
                "open loop, {rate} req/s offered ({}), at most {max_in_flight} in flight; \
                 HTTP rates cannot exceed the offered rate",
                if *poisson { "Poisson" } else { "evenly spaced" }
            ),
        }
    }
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub mode: Mode,
    /// Unmeasured lead-in (connections open, caches fill, batches reach steady size).
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop early after this many measured operations.
    pub max_ops: Option<u64>,
}

/// What one run did inside its measured window.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Units completed successfully (messages, rows, requests).
    pub units: u64,
    /// Operations completed successfully.
    pub ops: u64,
    /// Failed operations by class.
    pub errors: BTreeMap<String, u64>,
    /// Microseconds per operation, successful or not (what a client lives with).
    pub latency: Histogram<u64>,
    /// Microseconds per successful operation.
    pub latency_ok: Histogram<u64>,
    /// Microseconds per operation, successful or not, per label (labelled runs only).
    pub by_label: BTreeMap<&'static str, Histogram<u64>>,
    /// When the first successful operation completed.
    pub first_ok: Option<Instant>,
    /// When the last counted operation completed.
    pub last_done: Option<Instant>,
    /// Start of the measured window.
    pub start: Instant,
    /// Length of the measured window (shorter than planned if `max_ops` stopped it).
    pub elapsed: Duration,
    /// Open loop only: scheduled operations never sent because the generator fell too
    /// far behind (every slot busy until the grace period ran out).
    pub unsent: u64,
}

impl Tally {
    fn new(start: Instant) -> anyhow::Result<Tally> {
        // 1 µs to 1 hour at 3 significant digits: any latency a bounded op can have.
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3);
        Ok(Tally {
            units: 0,
            ops: 0,
            errors: BTreeMap::new(),
            latency: histogram()?,
            latency_ok: histogram()?,
            by_label: BTreeMap::new(),
            first_ok: None,
            last_done: None,
            start,
            elapsed: Duration::ZERO,
            unsent: 0,
        })
    }

    fn record(&mut self, label: &'static str, result: Result<u64, String>, latency: Duration, done: Instant) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency.saturating_record(micros);
        if !label.is_empty() {
            // Same bounds as `latency`: creating one with them cannot fail.
            if !self.by_label.contains_key(label)
                && let Ok(h) = Histogram::new_with_bounds(1, 3_600_000_000, 3)
            {
                self.by_label.insert(label, h);
            }
            if let Some(h) = self.by_label.get_mut(label) {
                h.saturating_record(micros);
            }
        }
        self.record_result(result, micros, done);
    }

    fn record_result(&mut self, result: Result<u64, String>, micros: u64, done: Instant) {
        match result {
            Ok(units) => {
                self.units += units;
                self.ops += 1;
                self.latency_ok.saturating_record(micros);
                self.first_ok = Some(self.first_ok.map_or(done, |f| f.min(done)));
            }
            Err(class) => *self.errors.entry(class).or_default() += 1,
        }
        self.last_done = Some(self.last_done.map_or(done, |l| l.max(done)));
    }

    fn merge(&mut self, other: Tally) {
        self.units += other.units;
        self.ops += other.ops;
        for (class, n) in other.errors {
            *self.errors.entry(class).or_default() += n;
        }
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        let _ = self.latency_ok.add(&other.latency_ok);
        for (label, h) in other.by_label {
            match self.by_label.entry(label) {
                std::collections::btree_map::Entry::Occupied(mut e) => {
                    let _ = e.get_mut().add(&h);
                }
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(h);
                }
            }
        }
        self.first_ok = match (self.first_ok, other.first_ok) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        self.unsent += other.unsent;
    }

    /// A tally of nothing (for the reports' tests).
    #[cfg(test)]
    pub fn empty() -> Tally {
        Tally::new(Instant::now()).expect("valid histogram bounds")
    }

    /// Successful units per second of the measured window.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.units as f64 / secs } else { 0.0 }
    }
}

/// Run `op` according to `plan`.
pub async fn run(plan: Plan, op: Op) -> anyhow::Result<Tally> {
    run_labelled(plan, Arc::new(move || ("", op()))).await
}

/// Run `op` according to `plan`, tallying latency per label too.
pub async fn run_labelled(plan: Plan, op: LabelledOp) -> anyhow::Result<Tally> {
    match plan.mode {
        Mode::Closed { concurrency } => closed(plan, concurrency.max(1), op).await,
        Mode::Open { rate, max_in_flight, poisson } => {
            open(plan, rate, max_in_flight.max(1), poisson, op).await
        }
    }
}

async fn timed(op: BoxFuture<'static, Result<u64, String>>) -> Result<u64, String> {
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(r) => r,
        Err(_) => Err("timeout".into()),
    }
}

async fn closed(plan: Plan, concurrency: usize, op: LabelledOp) -> anyhow::Result<Tally> {
    let start = Instant::now() + plan.warmup;
    let end = start + plan.duration;
    // Operations started inside the window, against `max_ops`.
    let started = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (op, started, mut tally) = (op.clone(), started.clone(), Tally::new(start)?);
        tasks.spawn(async move {
            let mut capped = false;
            loop {
                let begun = Instant::now();
                if begun >= end {
                    break;
                }
                if begun >= start
                    && let Some(cap) = plan.max_ops
                    && started.fetch_add(1, Ordering::Relaxed) >= cap
                {
                    capped = true;
                    break;
                }
                let (label, future) = op();
                let result = timed(future).await;
                let done = Instant::now();
                if done >= start && done <= end {
                    tally.record(label, result, done - begun, done);
                }
            }
            (tally, capped)
        });
    }
    let mut total = Tally::new(start)?;
    let mut capped = false;
    while let Some(joined) = tasks.join_next().await {
        let (tally, c) = joined?;
        capped |= c;
        total.merge(tally);
    }
    total.elapsed = match (capped, total.last_done) {
        (true, Some(last)) => last.saturating_duration_since(start),
        _ => plan.duration,
    };
    Ok(total)
}

async fn open(
    plan: Plan,
    rate: f64,
    max_in_flight: usize,
    poisson: bool,
    op: LabelledOp,
) -> anyhow::Result<Tally> {
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number");
    let t0 = Instant::now();
    let start = t0 + plan.warmup;
    let end = start + plan.duration;
    let give_up = end + OPEN_LOOP_GRACE;
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let tally = Arc::new(Mutex::new(Tally::new(start)?));
    let mut rng = SplitMix64::seeded();
    let mut scheduled = t0;
    let mut measured_sent = 0u64;
    let mut unsent = 0u64;
    let mut behind = false;
    loop {
        let gap = if poisson { -(1.0 - rng.next_f64()).ln() / rate } else { 1.0 / rate };
        scheduled += Duration::from_secs_f64(gap);
        if scheduled >= end || plan.max_ops.is_some_and(|cap| measured_sent >= cap) {
            break;
        }
        let measured = scheduled >= start;
        if behind {
            // Still count what the schedule wanted, so the report says how much was not sent.
            unsent += u64::from(measured);
            continue;
        }
        tokio::time::sleep_until(scheduled).await;
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p?,
            () = tokio::time::sleep_until(give_up) => {
                behind = true;
                unsent += u64::from(measured);
                continue;
            }
        };
        measured_sent += u64::from(measured);
        let (op, tally) = (op.clone(), tally.clone());
        tokio::spawn(async move {
            let (label, future) = op();
            let result = timed(future).await;
            let done = Instant::now();
            if measured && let Ok(mut t) = tally.lock() {
                t.record(label, result, done - scheduled, done);
            }
            drop(permit);
        });
    }
    // Every spawned operation is bounded by OP_TIMEOUT; wait for all of them.
    let all = u32::try_from(max_in_flight).unwrap_or(u32::MAX);
    let _all_done = tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(1), slots.acquire_many(all)).await;
    let mut total = Tally::new(start)?;
    if let Ok(t) = tally.lock() {
        total.merge(t.clone());
    }
    total.unsent = unsent;
    total.elapsed = total.last_done.map_or(plan.duration, |last| last.max(end) - start);
    Ok(total)
}

/// A small, fast PRNG for arrival times (no need for cryptographic randomness here).
struct SplitMix64(u64);

impl SplitMix64 {
    fn seeded() -> Self {
        SplitMix64(uuid::Uuid::new_v4().as_u64_pair().0)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn sleepy(ms: u64) -> Op {
        Arc::new(move || {
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(1)
            }
            .boxed()
        })
    }

    #[tokio::test]
    async fn closed_loop_counts_completions_in_the_window() {
        let plan = Plan {
            mode: Mode::Closed { concurrency: 4 },
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            max_ops: None,
        };
        let t = run(plan, sleepy(10)).await.expect("runs");
        // 4 tasks × ~30 ops each; timer slack makes it fewer, never more.
        assert!(t.ops > 40 && t.ops <= 124, "ops {}", t.ops);
        assert!(t.errors.is_empty());
        assert_eq!(t.elapsed, Duration::from_millis(300));
    }

    #[tokio::test]
    async fn labelled_runs_tally_latency_per_label() {
        let plan = Plan {
            mode: Mode::Closed { concurrency: 2 },
            warmup: Duration::ZERO,
            duration: Duration::from_secs(5),
            max_ops: Some(20),
        };
        let next = Arc::new(AtomicU64::new(0));
        let (fast, slow) = (sleepy(1), sleepy(8));
        let op: LabelledOp = Arc::new(move || match next.fetch_add(1, Ordering::Relaxed) % 2 {
            0 => ("fast", fast()),
            _ => ("slow", slow()),
        });
        let t = run_labelled(plan, op).await.expect("runs");
        assert_eq!(t.ops, 20);
        let count = |l: &str| t.by_label.get(l).map_or(0, |h| h.len());
        assert_eq!(count("fast") + count("slow"), 20);
        assert!(count("fast") > 0 && count("slow") > 0);
        assert!(t.by_label["slow"].min() >= 8_000, "a slow op sleeps 8 ms");
        assert!(t.by_label["fast"].value_at_quantile(0.5) < t.by_label["slow"].value_at_quantile(0.5));
    }

    #[tokio::test]
    async fn request_cap_stops_early() {
        let plan = Plan {
            mode: Mode::Closed { concurrency: 2 },
            warmup: Duration::ZERO,
            duration: Duration::from_secs(5),
            max_ops: Some(10),
        };
        let t = run(plan, sleepy(1)).await.expect("runs");
        assert_eq!(t.ops, 10);
        assert!(t.elapsed < Duration::from_secs(1));
    }

    #[tokio::test]
    async fn open_loop_follows_the_schedule_and_bounds_in_flight() {
        let plan = Plan {
            mode: Mode::Open { rate: 200.0, max_in_flight: 8, poisson: false },
            warmup: Duration::ZERO,
            duration: Duration::from_millis(500),
            max_ops: None,
        };
        let t = run(plan, sleepy(5)).await.expect("runs");
        assert!((90..=101).contains(&t.ops), "ops {}", t.ops);
        assert_eq!(t.unsent, 0);
    }

    #[test]
    fn uniform_numbers_stay_in_range() {
        let mut rng = SplitMix64(42);
        assert!((0..10_000).map(|_| rng.next_f64()).all(|x| (0.0..1.0).contains(&x)));
    }
}
