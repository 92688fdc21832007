//! reindex: a fresh search index built from Postgres and swapped in while search keeps
//! answering ([`SearchStore::begin_rebuild`]: the live index answers, and keeps taking
//! the indexer's writes, until [`Rebuild::finish`] swaps atomically).
//!
//! Every product of every tenant goes in — deleted ones as deletes, so their
//! tombstones keep stale events out after the swap — because the store swaps its whole
//! index: a rebuild of one tenant would drop the others. Products are read in
//! (tenant, sku) order, 1,000 at a time (keyset pages, no long transaction); progress
//! is recorded after each page. A rebuild is not resumable: a run that stops or
//! crashes abandons it (the live index is untouched) and the next run starts over.
//! One reindex runs at a time across processes (a Postgres advisory lock held by the
//! run's session); another waits for it.

use chrono::{DateTime, Utc};
use souk_pipelines::{Currency, catalog::AttrValue};
use souk_stores::search::{IndexOp, Rebuild, SearchDoc, SearchStore};
use sqlx::{Connection, PgConnection, PgPool};
use std::{collections::BTreeMap, time::Duration};
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    record::{self, Job, JobState},
    worker::Outcome,
};

/// Products per page and per rebuild batch.
const PAGE: i64 = 1000;

type ProductRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    serde_json::Value,
    i64,
    String,
    i64,
    i64,
    bool,
    DateTime<Utc>,
);

pub(crate) async fn run(
    pool: &PgPool,
    store: Option<&dyn SearchStore>,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Outcome, Error> {
    let Some(store) = store else {
        return Ok(Outcome::Final(JobState::Failed, Some("this worker process has no search store".into())));
    };
    let lock = match exclusive(pool, job, stop).await? {
        Ok(lock) => lock,
        Err(outcome) => return Ok(outcome),
    };
    let outcome = rebuild(pool, store, job, stop).await;
    // Closing the session releases the lock.
    let _ = lock.close().await;
    outcome
}

/// Session-level advisory lock key of "a reindex is running" (any process).
const REINDEX_LOCK: i64 = 0x736f_756b_2d72_6978; // "souk-rix"

/// Wait until no other reindex runs, anywhere: a shared index (OpenSearch) sees one
/// rebuild at a time — a second `begin_rebuild` elsewhere would take the first one's
/// `-next` index for a dead rebuild's and delete it. The lock lives in a session held
/// for the whole run, so a crashed process releases it with its connection.
async fn exclusive(
    pool: &PgPool,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Result<PgConnection, Outcome>, Error> {
    // Detached from the pool: a run that panics or is aborted drops the connection,
    // which closes the session and so releases the lock; a pooled one would go back
    // to the pool still holding it, and every later reindex would wait for ever.
    let mut conn = pool.acquire().await?.detach();
    let mut said = false;
    loop {
        let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
            .bind(REINDEX_LOCK)
            .fetch_one(&mut conn)
            .await?;
        // Read after the lock is taken: a run of this job elsewhere (one declared dead
        // while only paused) may have ended it meanwhile, and must not be redone.
        let (running, cancel): (bool, bool) =
            sqlx::query_as("select state = 'running', cancel_requested from jobs where id = $1")
                .bind(job.id)
                .fetch_optional(pool)
                .await?
                .unwrap_or((false, false));
        let ended = if !running {
            Some(Outcome::Ended)
        } else if cancel {
            Some(Outcome::Final(JobState::Cancelled, None))
        } else {
            None
        };
        match (got, ended) {
            (true, None) => return Ok(Ok(conn)),
            (_, Some(outcome)) => {
                let _ = conn.close().await; // and the lock with it
                return Ok(Err(outcome));
            }
            (false, None) => {}
        }
        if !said {
            tracing::info!(job = %job.id, "another reindex is running; this one waits for it");
            said = true;
        }
        tokio::select! {
            () = stop.cancelled() => return Ok(Err(Outcome::Stopped)),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn rebuild(
    pool: &PgPool,
    store: &dyn SearchStore,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Outcome, Error> {
    let total: i64 = sqlx::query_scalar("select count(*) from products").fetch_one(pool).await?;
    sqlx::query("update jobs set rows_total = $2, rows_done = 0, updated_at = now() where id = $1 and state = 'running'")
        .bind(job.id)
        .bind(total)
        .execute(pool)
        .await?;
    let rebuild = match store.begin_rebuild().await {
        Ok(r) => r,
        Err(e) => {
            return Ok(Outcome::Final(JobState::Failed, Some(format!("cannot start the rebuild: {e}"))));
        }
    };
    match fill(pool, rebuild.as_ref(), job, stop).await {
        Ok(None) => match rebuild.finish().await {
            Ok(()) => Ok(Outcome::Final(JobState::Done, None)),
            Err(e) => Ok(Outcome::Final(JobState::Failed, Some(format!("swapping the new index in: {e}")))),
        },
        Ok(Some(outcome)) => {
            abort(rebuild).await;
            Ok(outcome)
        }
        Err(e) => {
            abort(rebuild).await;
            Err(e)
        }
    }
}

async fn abort(rebuild: Box<dyn Rebuild>) {
    if let Err(e) = rebuild.abort().await {
        tracing::warn!(error = %e, "abandoning a rebuild");
    }
}

/// Feed every product; `Some` when the run ends early (cancelled, stopping).
async fn fill(
    pool: &PgPool,
    rebuild: &dyn Rebuild,
    job: &Job,
    stop: &CancellationToken,
) -> Result<Option<Outcome>, Error> {
    let mut after = (String::new(), String::new());
    loop {
        if record::cancel_requested(pool, job.id).await? {
            return Ok(Some(Outcome::Final(JobState::Cancelled, None)));
        }
        if stop.is_cancelled() {
            return Ok(Some(Outcome::Stopped));
        }
        let rows: Vec<ProductRow> = sqlx::query_as(
            "select tenant, sku, seller, title, description, category, attributes, price_minor, currency,
                    stock, version, deleted_at is not null, updated_at
             from products where (tenant, sku) > ($1, $2) order by tenant, sku limit $3",
        )
        .bind(&after.0)
        .bind(&after.1)
        .bind(PAGE)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { return Ok(None) };
        after = (last.0.clone(), last.1.clone());
        let n = rows.len() as i64;
        let ops = rows.into_iter().map(op).collect::<Result<Vec<_>, Error>>()?;
        rebuild.apply(ops).await.map_err(|e| Error::Search(e.to_string()))?;
        sqlx::query("update jobs set rows_done = rows_done + $2, updated_at = now() where id = $1 and state = 'running'")
            .bind(job.id)
            .bind(n)
            .execute(pool)
            .await?;
    }
}

fn op(r: ProductRow) -> Result<IndexOp, Error> {
    let (
        tenant,
        sku,
        seller,
        title,
        description,
        category,
        attributes,
        price_minor,
        currency,
        stock,
        version,
        deleted,
        updated_at,
    ) = r;
    if deleted {
        return Ok(IndexOp::Delete { tenant, sku, version });
    }
    let attributes: BTreeMap<String, AttrValue> = serde_json::from_value(attributes)?;
    let currency: Currency =
        currency.parse().map_err(|_| Error::Corrupt(format!("currency {currency:?}")))?;
    Ok(IndexOp::Upsert(SearchDoc {
        tenant,
        sku,
        seller,
        version,
        title,
        description,
        category,
        attributes,
        price_minor,
        currency,
        stock,
        updated_at,
    }))
}
