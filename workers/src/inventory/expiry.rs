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
/// `options.every`.
pub async fn run(pool: PgPool, options: ExpiryOptions, cancel: CancellationToken) {
    loop {
        let mut pause = options.every;
        match sweep(&pool, options.batch).await {
            Ok(n) if n > 0 => tracing::debug!(expired = n, "stock holds expired"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "the stock hold sweep failed; trying again"),
        }
        if let Ok(Some(next)) = inv::next_due(&pool).await {
            let wait = (next - chrono::Utc::now()).to_std().unwrap_or_default();
            pause = pause.min(wait);
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(pause.max(Duration::from_millis(5))) => {}
        }
    }
}
