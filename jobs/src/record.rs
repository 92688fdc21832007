//! souk's own record of a job (table `jobs`, migration 0013): what operators see —
//! kind, state, progress, errors by line, who submitted it, when. apalis's task for a
//! job carries only its id; every decision (cancelled? where to resume?) reads this
//! record, so it is the one truth whichever worker runs the job.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, PgPool};
use std::fmt;
use uuid::Uuid;

use crate::Error;

/// What a job does.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobKind {
    /// Write the valid rows of a file as products of one seller.
    CatalogImport,
    /// Build a fresh search index from Postgres and swap it in.
    Reindex,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::CatalogImport => "catalog-import",
            JobKind::Reindex => "reindex",
        }
    }

    pub fn parse(s: &str) -> Option<JobKind> {
        match s {
            "catalog-import" => Some(JobKind::CatalogImport),
            "reindex" => Some(JobKind::Reindex),
            _ => None,
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is. `done`, `failed` and `cancelled` are final.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    Queued,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Done | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A row refused at submission.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowError {
    /// 1-based line of the file (a CSV header is line 1).
    pub line: u64,
    pub reason: String,
}

/// A job as operators see it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: Uuid,
    pub tenant: String,
    pub kind: JobKind,
    pub state: JobState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seller: Option<String>,
    pub submitted_by: String,
    pub progress: Progress,
    /// A stop was asked for; a running job stops at its next chunk.
    pub cancel_requested: bool,
    /// Why the job failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// Rows refused at submission, by line (only with [`get_with_errors`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<RowError>,
}

/// Rows of a job: `done + failed == total` once it is done.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Every row of the file (import) or every product to index (reindex).
    pub total: i64,
    /// Rows written: an import row's command stored by JetStream, a reindex row indexed.
    pub done: i64,
    /// Rows refused (by line in `errors`).
    pub failed: i64,
}

type JobRow = (
    Uuid,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
    i64,
    bool,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<DateTime<Utc>>,
    DateTime<Utc>,
);

const COLUMNS: &str = "id, tenant, kind, state, seller, submitted_by, rows_total, rows_done, rows_failed, \
     cancel_requested, error, created_at, started_at, finished_at, updated_at";

fn from_row(r: JobRow) -> Result<Job, Error> {
    let kind = JobKind::parse(&r.2).ok_or_else(|| Error::Corrupt(format!("job kind {:?}", r.2)))?;
    let state = JobState::parse(&r.3).ok_or_else(|| Error::Corrupt(format!("job state {:?}", r.3)))?;
    Ok(Job {
        id: r.0,
        tenant: r.1,
        kind,
        state,
        seller: r.4,
        submitted_by: r.5,
        progress: Progress { total: r.6, done: r.7, failed: r.8 },
        cancel_requested: r.9,
        error: r.10,
        created_at: r.11,
        started_at: r.12,
        finished_at: r.13,
        updated_at: r.14,
        errors: Vec::new(),
    })
}

/// The job `id` of `tenant` (`None` for any tenant), without its row errors.
pub async fn get(db: impl PgExecutor<'_>, tenant: Option<&str>, id: Uuid) -> Result<Option<Job>, Error> {
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where id = $1 and ($2::text is null or tenant = $2)"
    )))
    .bind(id)
    .bind(tenant)
    .fetch_optional(db)
    .await?;
    row.map(from_row).transpose()
}

/// The job `id` with its row errors (by line).
pub async fn get_with_errors(pool: &PgPool, tenant: Option<&str>, id: Uuid) -> Result<Option<Job>, Error> {
    let Some(mut job) = get(pool, tenant, id).await? else { return Ok(None) };
    let errors: Vec<(i64, String)> =
        sqlx::query_as("select line, reason from job_errors where job_id = $1 order by line")
            .bind(id)
            .fetch_all(pool)
            .await?;
    job.errors = errors
        .into_iter()
        .map(|(line, reason)| RowError { line: u64::try_from(line).unwrap_or_default(), reason })
        .collect();
    Ok(Some(job))
}

/// The newest `limit` jobs of `tenant` (`None`: of every tenant), newest first.
pub async fn list(pool: &PgPool, tenant: Option<&str>, limit: i64) -> Result<Vec<Job>, Error> {
    let rows: Vec<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "select {COLUMNS} from jobs where ($1::text is null or tenant = $1) order by created_at desc, id limit $2"
    )))
    .bind(tenant)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(from_row).collect()
}

/// What [`cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancelled {
    /// It was queued: it is cancelled now and will not start.
    Now,
    /// It is running: it stops at its next chunk.
    Requested,
    /// It had already ended in this state; nothing changed.
    AlreadyFinal(JobState),
    NotFound,
}

/// Cancel a job: a queued one at once, a running one between chunks.
///
/// The row is locked first and its state read under the lock: a state read in the
/// statement's snapshot could be `queued` for a job a worker had just started, and
/// its rows would be deleted under the running job.
pub async fn cancel(pool: &PgPool, tenant: Option<&str>, id: Uuid) -> Result<Cancelled, Error> {
    let mut tx = pool.begin().await?;
    let state: Option<String> = sqlx::query_scalar(
        "select state from jobs where id = $1 and ($2::text is null or tenant = $2) for update",
    )
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    let outcome = match state
        .as_deref()
        .map(|s| JobState::parse(s).ok_or_else(|| Error::Corrupt(format!("job state {s:?}"))))
    {
        None => return Ok(Cancelled::NotFound),
        Some(Err(e)) => return Err(e),
        Some(Ok(JobState::Queued)) => Cancelled::Now,
        Some(Ok(JobState::Running)) => Cancelled::Requested,
        Some(Ok(s)) => return Ok(Cancelled::AlreadyFinal(s)),
    };
    sqlx::query(
        "update jobs set
             cancel_requested = true,
             state = case when state = 'queued' then 'cancelled' else state end,
             finished_at = case when state = 'queued' then now() else finished_at end,
             updated_at = now()
         where id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    if outcome == Cancelled::Now {
        sqlx::query("delete from job_rows where job_id = $1").bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(outcome)
}

/// Mark a job running (first start or resume) and return it; `None` if it is final
/// already (cancelled while queued, or finished by an earlier run).
pub(crate) async fn start(pool: &PgPool, id: Uuid) -> Result<Option<Job>, Error> {
    let row: Option<JobRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "update jobs set state = 'running', started_at = coalesce(started_at, now()), updated_at = now()
         where id = $1 and state in ('queued', 'running') returning {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    row.map(from_row).transpose()
}

/// End a job in `state` (unless it already ended). Its stored rows go with it: an
/// ended job never reads them again (its row errors stay, for operators).
pub(crate) async fn finish(
    pool: &PgPool,
    id: Uuid,
    state: JobState,
    error: Option<&str>,
) -> Result<(), Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "update jobs set state = $2, error = $3, finished_at = now(), updated_at = now()
         where id = $1 and state in ('queued', 'running')",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(error)
    .execute(&mut *tx)
    .await?;
    sqlx::query("delete from job_rows where job_id = $1").bind(id).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// Whether someone asked the job to stop.
pub(crate) async fn cancel_requested(pool: &PgPool, id: Uuid) -> Result<bool, Error> {
    Ok(sqlx::query_scalar("select cancel_requested from jobs where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?
        .unwrap_or(true))
}
