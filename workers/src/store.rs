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

/// The breaker's probe for handlers that write to Postgres: it answers, takes writes
/// (a standby, or a primary demoted in a failover, answers `select 1` but refuses every
/// write), and would let this handler write to `tables` now. A migration (`alter
/// table`, a non-concurrent `create index`, `vacuum full`) that holds or waits for a lock
/// blocking inserts leaves handlers hanging until their timeout: without this check
/// the probe passed, so each timeout counted as the message's fault and spent its
/// attempts. `row exclusive` is what insert and update take; `nowait` answers at once.
pub(crate) async fn probe_writable(pool: &PgPool, tables: &[&str]) -> Result<(), HandlerError> {
    let unavailable = |e: sqlx::Error| store_error(&pg::Error::Unavailable(e));
    let mut tx = pool.begin().await.map_err(unavailable)?;
    let read_only: bool =
        sqlx::query_scalar("select pg_is_in_recovery() or current_setting('transaction_read_only') = 'on'")
            .fetch_one(&mut *tx)
            .await
            .map_err(unavailable)?;
    if read_only {
        return Err(HandlerError::dependency("pg_read_only", "postgres is read-only (a standby?)"));
    }
    if !tables.is_empty() {
        let lock = format!("lock table {} in row exclusive mode nowait", tables.join(", "));
        match sqlx::query(sqlx::AssertSqlSafe(lock)).execute(&mut *tx).await {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => {
                return Err(HandlerError::dependency(
                    "pg_locked",
                    format!("{} locked against writes (a migration?): {e}", tables.join(", ")),
                ));
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    tx.rollback().await.map_err(unavailable)?;
    Ok(())
}

/// `d` as the inbox records it: its dedupe id, and where it is in its stream.
pub(crate) fn received(d: &souk_topologies::runtime::Delivery) -> pg::inbox::Received {
    pg::inbox::Received {
        message_id: d.dedupe_id(),
        stream: d.stream.clone(),
        stream_seq: d.stream_sequence,
        delivered: d.attempt,
    }
}
