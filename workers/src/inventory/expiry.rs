//! The durable timer of stock holds: a deadline table swept on a short period.
//!
//! Each reservation's `hold_until` is its deadline, in the table that holds it
//! (`stock_reservations`, indexed on `hold_until` for held ones): the timer is as
//! durable as the hold, written in the same transaction, and needs nothing else to
//! survive a crash. Every worker process running the inventory pool sweeps: it locks the
//! due holds (earliest first, a bounded batch; each order's lock taken without waiting)
//! and expires them in one transaction — sweepers in several processes, or a commit of
//! the same order, never decide one hold twice. Between
//! sweeps it sleeps until the next deadline, at most `every`, so a hold is taken back at
//! most `every` (plus the sweep's own work) after its time. See ARCHITECTURE.md
//! ("Inventory") for why this and not JetStream message schedules, with measurements.

use souk_stores::postgres::{self as pg, inventory as inv};
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use super::holds;

/// How the sweeper runs.
#[derive(Debug, Clone, Copy)]
pub struct ExpiryOptions {
    /// Longest sleep between two sweeps (the bound on lateness beside the sweep's work).
    pub every: Duration,
    /// Holds expired per query of due ones (the sweep goes on while batches are full).
    pub batch: i64,
}

impl Default for ExpiryOptions {
    fn default() -> Self {
        ExpiryOptions { every: Duration::from_secs(1), batch: 500 }
    }
}

/// The causation id of the events an expiry writes (no message caused them).
const CAUSATION: &str = "inventory.expiry";

/// Expire every held reservation that is due now, `batch` to a transaction (one
/// commit, one fsync, for many holds). Returns how many it expired.
pub async fn sweep(pool: &PgPool, batch: i64) -> Result<u64, pg::Error> {
    let mut expired = 0;
    loop {
        let mut tx = pg::begin(pool).await?;
        let n = holds::expire_due(&mut tx, batch, CAUSATION).await?;
        tx.commit().await?;
        expired += n;
        // Fewer than a batch: nothing more is due, or the rest is being decided
        // elsewhere (left to the next sweep rather than spun on).
        if (n as i64) < batch {
            return Ok(expired);
        }
    }
}

/// Sweep until `cancel`: after each sweep, sleep until the next hold falls due, at most
/// `options.every` (see [`pause_after_sweep`]).
pub async fn run(pool: PgPool, options: ExpiryOptions, cancel: CancellationToken) {
    loop {
        match sweep(&pool, options.batch).await {
            Ok(n) if n > 0 => tracing::debug!(expired = n, "stock holds expired"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the stock hold sweep failed; trying again"),
        }
        let next = inv::next_due(&pool).await.ok().flatten();
        let pause = pause_after_sweep(next, chrono::Utc::now(), options.every);
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// Shortest sleep between sweeps.
const MIN_PAUSE: Duration = Duration::from_millis(5);
/// Sleep after a sweep that left a due hold: its order is being decided elsewhere (a
/// commit holds its lock), and the sweep takes no lock it would wait for.
const LOCKED_ELSEWHERE_PAUSE: Duration = Duration::from_millis(100);

/// How long to sleep after a sweep, `next` being the earliest hold still held: until
/// it falls due, at most `every`. One already due was skipped by the sweep (locked
/// elsewhere): sweeping again at once would only skip it again — the sweeper used to,
/// every 5 ms, for as long as the commit held the lock (found in review).
fn pause_after_sweep(
    next: Option<chrono::DateTime<chrono::Utc>>,
    now: chrono::DateTime<chrono::Utc>,
    every: Duration,
) -> Duration {
    match next {
        None => every,
        Some(next) if next <= now => every.min(LOCKED_ELSEWHERE_PAUSE),
        Some(next) => (next - now).to_std().unwrap_or_default().clamp(MIN_PAUSE, every.max(MIN_PAUSE)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sweep_sleeps_until_the_next_hold_falls_due_and_not_on_a_hold_locked_elsewhere() {
        let now = chrono::Utc::now();
        let every = Duration::from_secs(1);
        let ms = |n: i64| chrono::Duration::milliseconds(n);
        assert_eq!(pause_after_sweep(None, now, every), every, "nothing held");
        assert_eq!(pause_after_sweep(Some(now + ms(300)), now, every), Duration::from_millis(300));
        assert_eq!(pause_after_sweep(Some(now + ms(5_000)), now, every), every, "at most every");
        assert_eq!(pause_after_sweep(Some(now + ms(1)), now, every), MIN_PAUSE);
        // Due already, after the sweep: locked elsewhere. Not every 5 ms.
        assert_eq!(pause_after_sweep(Some(now - ms(10)), now, every), LOCKED_ELSEWHERE_PAUSE);
        assert_eq!(pause_after_sweep(Some(now), now, Duration::from_millis(50)), Duration::from_millis(50));
    }
}
