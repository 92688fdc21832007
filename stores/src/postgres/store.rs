//! Connecting, migrating, housekeeping, and the store error.

use sqlx::{
    Connection, Executor, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use std::{str::FromStr, time::Duration};

use super::PgOptions;

/// A store error, with what the caller needs to decide whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("postgres: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// No connection could be had (server down, restarting, refusing connections).
    #[error("postgres unavailable: {0}")]
    Unavailable(sqlx::Error),
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The connection settings cannot work (e.g. no database named).
    #[error("postgres configuration: {0}")]
    Config(String),
    /// The outbox relay lease was taken over by another relay (its epoch is no longer
    /// current): this relay must not mark rows.
    #[error("this relay does not hold the outbox lease (epoch {0} is not the current one)")]
    LeaseLost(i64),
}

impl Error {
    /// Whether trying again may succeed: an outage (see [`is_outage`](Self::is_outage)),
    /// or contention — serialization failures, deadlocks, lock timeouts — that another
    /// attempt of the same statement may not meet. Constraint violations and bad data are
    /// not retryable.
    pub fn is_retryable(&self) -> bool {
        self.is_outage() || matches!(self.sqlstate().as_deref(), Some(code) if contention_sqlstate(code))
    }

    /// Whether the server (or the way to it) is failing, whatever the request: no
    /// connection, connection lost, pool exhausted, shutting down or recovering, a
    /// read-only standby, too many connections, out of resources, a statement timeout,
    /// a failing disk (I/O errors).
    /// The caller is not at fault: a worker holds its message and waits for the store
    /// rather than spending the message's delivery attempts.
    pub fn is_outage(&self) -> bool {
        match self {
            Error::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Protocol(_)
                | sqlx::Error::Tls(_) => true,
                sqlx::Error::Database(db) => outage_sqlstate(&db.code().unwrap_or_default()),
                _ => false,
            },
            Error::Unavailable(_) => true,
            Error::Migrate(_) | Error::Corrupt(_) | Error::Config(_) | Error::LeaseLost(_) => false,
        }
    }

    /// A stable code for logs, metrics and dead letters.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Unavailable(_) => "pg_unavailable",
            Error::Migrate(_) => "pg_migration",
            Error::Corrupt(_) => "pg_corrupt_data",
            Error::Config(_) => "pg_config",
            Error::LeaseLost(_) => "outbox_lease_lost",
            Error::Database(sqlx::Error::PoolTimedOut) => "pg_pool_timeout",
            Error::Database(sqlx::Error::Database(_)) => match self.sqlstate().as_deref().unwrap_or_default()
            {
                "25006" => "pg_read_only",
                "53300" => "pg_too_many_connections",
                "57014" => "pg_statement_timeout",
                "40001" => "pg_serialization_failure",
                "40P01" => "pg_deadlock",
                "55P03" => "pg_lock_timeout",
                code if code.starts_with("08") => "pg_connection",
                code if code.starts_with("57P") => "pg_shutting_down",
                code if code.starts_with("53") => "pg_insufficient_resources",
                code if code.starts_with("58") => "pg_system_error",
                code if code.starts_with("23") => "pg_constraint_violation",
                code if code.starts_with("22") => "pg_data_exception",
                _ => "pg_statement",
            },
            Error::Database(_) if self.is_outage() => "pg_connection",
            Error::Database(_) => "pg_client",
        }
    }

    fn sqlstate(&self) -> Option<String> {
        match self {
            Error::Database(sqlx::Error::Database(db)) => db.code().map(|c| c.into_owned()),
            _ => None,
        }
    }
}

/// SQLSTATEs that describe the server's state, not the request: any statement would
/// fail now, and the same statement may well succeed once the server is back.
fn outage_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "57014" // statement timeout or cancel
        | "25006" // read-only transaction: a standby, or a primary being demoted in a failover
    ) || code.starts_with("08") // connection
        || code.starts_with("57P") // shutdown, crash recovery
        || code.starts_with("53") // insufficient resources, too many connections
        || code.starts_with("58") // system error: I/O errors, files gone (external to Postgres)
}

/// SQLSTATEs of contention between transactions: this attempt lost, another may win.
fn contention_sqlstate(code: &str) -> bool {
    matches!(
        code,
        "40001" // serialization failure
        | "40P01" // deadlock
        | "55P03" // lock not available (lock_timeout)
    )
}

/// Whether a SQLSTATE is worth retrying (an outage or contention).
#[cfg(test)]
fn transient_sqlstate(code: &str) -> bool {
    outage_sqlstate(code) || contention_sqlstate(code)
}

/// Begin a transaction. Failing to get one at all means Postgres is unavailable, which
/// is always worth retrying, whatever error the server gave while refusing.
pub async fn begin(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
    pool.begin().await.map_err(Error::Unavailable)
}

/// Begin a read-only transaction that sees one snapshot (repeatable read): reads of
/// several tables that must agree, as an order and its saga in one answer.
pub async fn begin_snapshot(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, Error> {
    pool.begin_with("begin isolation level repeatable read read only").await.map_err(Error::Unavailable)
}

/// A connection pool. Connections are opened lazily, so a process can start (and
/// report not-ready) while Postgres is down.
pub fn connect(options: &PgOptions) -> Result<PgPool, Error> {
    let connect = PgConnectOptions::from_str(&options.url)?.application_name("souk");
    Ok(PgPoolOptions::new()
        .max_connections(options.max_connections)
        .acquire_timeout(options.acquire_timeout)
        .connect_lazy_with(connect))
}

/// souk's migrations (`stores/migrations`), embedded once for [`migrate`] and
/// [`schema_versions`].
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Apply the migrations in `stores/migrations`, then apalis-postgres's (the job queue
/// of souk-jobs) — idempotent. apalis keeps its tables and its migration history in its
/// own schema (`apalis._sqlx_migrations`), so the two migrators never see each other's
/// versions (ours would refuse a database holding versions it does not know).
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await?;
    apalis_postgres::PostgresStorage::migrations().run(pool).await?;
    Ok(())
}

/// The newest migration this release needs, and the newest the database has applied
/// (`None`: never migrated). A process that does not migrate (`souk ingress`, `souk
/// worker`) refuses to start on an older schema: it would write states, call functions
/// or rely on constraints the database does not have yet — in handlers, where each
/// failure reads as a bad message and is dead-lettered.
pub async fn schema_versions(pool: &PgPool) -> Result<(i64, Option<i64>), Error> {
    let needed = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let exists: bool =
        sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null").fetch_one(pool).await?;
    if !exists {
        return Ok((needed, None));
    }
    let applied: Option<i64> =
        sqlx::query_scalar("select max(version) from _sqlx_migrations where success").fetch_one(pool).await?;
    Ok((needed, applied))
}

/// Create the database named in `url` if it does not exist (connecting to the
/// `postgres` maintenance database of the same server).
pub async fn ensure_database(url: &str) -> Result<(), Error> {
    let target = PgConnectOptions::from_str(url)?;
    let name = database_name(&target)?;
    let mut admin = sqlx::PgConnection::connect_with(&target.clone().database("postgres")).await?;
    let exists: bool = sqlx::query_scalar("select exists(select 1 from pg_database where datname = $1)")
        .bind(&name)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        match admin.execute(sqlx::AssertSqlSafe(format!("create database {}", quote_ident(&name)))).await {
            Ok(_) => {}
            // Another process created it between our check and our create.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    admin.close().await?;
    Ok(())
}

/// Drop the database named in `url`, disconnecting whatever still uses it (from the
/// `postgres` maintenance database of the same server). Dropping one that does not
/// exist is not an error.
pub async fn drop_database(url: &str) -> Result<(), Error> {
    let target = PgConnectOptions::from_str(url)?;
    let name = database_name(&target)?;
    let mut admin = sqlx::PgConnection::connect_with(&target.database("postgres")).await?;
    let sql = format!("drop database if exists {} with (force)", quote_ident(&name));
    admin.execute(sqlx::AssertSqlSafe(sql)).await?;
    admin.close().await?;
    Ok(())
}

/// The database a URL names. It must name one: without it Postgres picks the user's
/// name, which these functions would not know. And it must fit Postgres' 63-byte
/// identifiers, which it would silently cut, so two long names could mean one database
/// (and dropping one would drop the other).
fn database_name(target: &PgConnectOptions) -> Result<String, Error> {
    match target.get_database() {
        Some(name) if !name.is_empty() && name.len() <= 63 => Ok(name.to_owned()),
        Some(name) if !name.is_empty() => {
            Err(Error::Config(format!("database name longer than 63 bytes: {name}")))
        }
        _ => Err(Error::Config("the Postgres URL names no database".into())),
    }
}

/// `name` as a quoted SQL identifier (DDL cannot take it as a bind parameter).
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// What one housekeeping round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Housekeeping {
    /// Rows deleted: published outbox rows, inbox records, idempotency keys, failed
    /// attempts … (see [`housekeeping`]).
    pub deleted: u64,
    /// Orders and catalog writes written `failed` because their command was never
    /// handled (see below).
    pub lost: u64,
}

/// The reason a lost order reads.
pub const LOST_REASON: &str =
    "lost: its command was not handled within the retention period (CMD keeps commands as long)";

/// Delete what no longer serves a purpose: published outbox rows, inbox records,
/// idempotency keys, payment command answers and provider attempts, failed handler
/// attempts and the records of redriven dead letters older than
/// `retention` (which must exceed JetStream's duplicate window and any redelivery horizon).
/// The payments ledger (authorizations, captures, voids, refunds) is kept: it is the
/// record of money moved.
///
/// A claim that expires with no order row means its command was accepted (202) but
/// never handled — the stream dropped it by age (CMD's max-age equals souk's retention),
/// or it was purged or lost with a re-created stream. Before the claim goes, its order is
/// written `failed` with [`LOST_REASON`], from the claim (no lines, zero total, currency
/// `XXX`, as for an unreadable dead letter), so it never reads `pending` for ever and then
/// vanishes; a command that does turn up later (a redrive) still moves it to `accepted`.
/// Claims of other requests (keys stored as `<kind> <key>`: `catalog.write <key>`,
/// `fulfilment.ship <key>`) have no order. Catalog write claims (see
/// `idempotency::CATALOG_WRITE_PREFIX`): one that expires with no write
/// outcome makes its write `failed` with [`LOST_REASON`] (`catalog_writes`, readable by
/// its sender; seller and SKU unknown, stored empty), for the same reason. Catalog
/// write outcomes, and the checkouts that emptied carts, expire with the rest.
pub async fn housekeeping(pool: &PgPool, retention: Duration) -> Result<Housekeeping, Error> {
    let secs = retention.as_secs_f64();
    let mut tx = pool.begin().await?;
    let lost = sqlx::query(
        "insert into orders (order_id, tenant, buyer_id, status, reason, currency, total_minor, lines, placed_at)
         select k.order_id, k.tenant, k.principal, 'failed', $2, 'XXX', 0, '[]', k.created_at
         from idempotency_keys k
         where k.created_at < now() - make_interval(secs => $1)
           and not exists (select 1 from orders o where o.order_id = k.order_id)
           and k.key not like '% %' -- order keys have no space; other claims' keys a prefix
         on conflict (order_id) do nothing",
    )
    .bind(secs)
    .bind(LOST_REASON)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let lost_writes = sqlx::query(
        "insert into catalog_writes (tenant, write_id, seller, sku, actor, outcome, reason)
         select k.tenant, k.order_id, '', '', k.principal, 'failed', $2
         from idempotency_keys k
         where k.created_at < now() - make_interval(secs => $1)
           and k.key like 'catalog.write %'
         on conflict (tenant, write_id) do nothing",
    )
    .bind(secs)
    .bind(LOST_REASON)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let mut deleted = 0;
    for sql in [
        "delete from outbox where published_at < now() - make_interval(secs => $1)",
        "delete from inbox where handled_at < now() - make_interval(secs => $1)",
        "delete from idempotency_keys where created_at < now() - make_interval(secs => $1)",
        "delete from catalog_writes where decided_at < now() - make_interval(secs => $1)",
        "delete from cart_checkouts where checked_out_at < now() - make_interval(secs => $1)",
        // A payment command's recorded answer is its inbox: it goes when the inbox does.
        // A copy can come back later all the same (a dead letter redriven — DLQ has no
        // max-age — or a parked outbox row requeued): the ledger, kept for good, then
        // answers an authorize, and judges a settle. Provider calls are only asked by a
        // retry of their step, which no saga makes after its deadline.
        "delete from payment_results where at < now() - make_interval(secs => $1)",
        "delete from payment_attempts where at < now() - make_interval(secs => $1)",
        // Failed handler attempts (`souk trace`) go with the inbox records of the same
        // messages; a redriven dead letter's record, that long after its redrive (a
        // purged one's goes at once, one the DLQ dropped with `forget_dropped_dead_letters`).
        "delete from failed_attempts where at < now() - make_interval(secs => $1)",
        "delete from dead_letters where redriven_at < now() - make_interval(secs => $1)",
    ] {
        deleted += sqlx::query(sql).bind(secs).execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(Housekeeping { deleted, lost: lost + lost_writes })
}

#[cfg(test)]
mod tests {
    use super::transient_sqlstate;

    #[test]
    fn database_names_must_be_given_and_fit_postgres_identifiers() {
        use sqlx::postgres::PgConnectOptions;
        use std::str::FromStr;
        let named = |url: &str| super::database_name(&PgConnectOptions::from_str(url).expect("url"));
        assert_eq!(named("postgres://u@h/souk_1").expect("named"), "souk_1");
        assert!(named("postgres://u@h").is_err(), "no name");
        assert!(named(&format!("postgres://u@h/{}", "a".repeat(63))).is_ok());
        assert!(named(&format!("postgres://u@h/{}", "a".repeat(64))).is_err(), "would be cut");
    }

    #[test]
    fn outages_are_told_from_contention_and_request_errors() {
        for code in ["57014", "25006", "08006", "57P01", "57P03", "53300", "58030"] {
            assert!(super::outage_sqlstate(code), "{code} is an outage");
        }
        for code in ["40001", "40P01", "55P03", "23505", "22P02", ""] {
            assert!(!super::outage_sqlstate(code), "{code} is not an outage");
        }
        let refused = super::Error::Unavailable(sqlx::Error::PoolTimedOut);
        assert!(refused.is_outage() && refused.is_retryable());
        assert_eq!(refused.code(), "pg_unavailable");
        let corrupt = super::Error::Corrupt("x".into());
        assert!(!corrupt.is_outage() && !corrupt.is_retryable());
    }

    #[test]
    fn transient_sqlstates_are_retried_and_request_errors_are_not() {
        for code in ["40001", "40P01", "57014", "55P03", "25006", "08006", "57P01", "57P03", "53300"] {
            assert!(transient_sqlstate(code), "{code} is transient");
        }
        // unique violation, check violation, undefined table, invalid text, division by zero
        for code in ["23505", "23514", "42P01", "22P02", "22012", ""] {
            assert!(!transient_sqlstate(code), "{code} is not transient");
        }
    }
}
