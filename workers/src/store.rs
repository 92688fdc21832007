//! How handlers read store failures: whose fault they are, and whether the store is
//! back. One classification for every handler, so that an outage never spends a
//! message's delivery attempts in one pool and does in another.

use souk_stores::postgres as pg;
use souk_topologies::runtime::HandlerError;
use sqlx::PgPool;

/// A store error, classified: an outage is Postgres' fault (the pool's breaker opens
/// and the message waits, its attempts untouched), contention is retried on the
/// backoff schedule, anything else is refused for good.
pub(crate) fn store_error(e: &pg::Error) -> HandlerError {
    if e.is_outage() {
        HandlerError::dependency(e.code(), e)
    } else if e.is_retryable() {
        HandlerError::retryable(e.code(), e)
    } else {
        HandlerError::poison(e.code(), e)
    }
}

/// The breaker's probe for handlers that write to Postgres: it answers and takes writes
/// (a standby, or a primary demoted in a failover, answers `select 1` but refuses every
/// write).
pub(crate) async fn probe_writable(pool: &PgPool) -> Result<(), HandlerError> {
    let read_only: bool =
        sqlx::query_scalar("select pg_is_in_recovery() or current_setting('transaction_read_only') = 'on'")
            .fetch_one(pool)
            .await
            .map_err(|e| store_error(&pg::Error::Unavailable(e)))?;
    match read_only {
        true => Err(HandlerError::dependency("pg_read_only", "postgres is read-only (a standby?)")),
        false => Ok(()),
    }
}
