//! Submitting a job: its record, its rows and its apalis task in ONE transaction, so a
//! job is either wholly there (and will run) or not at all.

use apalis::prelude::TaskBuilder;
use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    Error, QUEUE, REINDEX_QUEUE,
    parse::Parsed,
    record::{self, Job, JobKind},
    worker::JobTask,
};

/// What to run.
#[derive(Debug, Clone)]
pub enum Submission {
    /// The valid rows of a parsed file become products of `seller`.
    CatalogImport { seller: String, parsed: Parsed },
    /// A fresh search index from Postgres, swapped in.
    Reindex,
}

impl Submission {
    pub fn kind(&self) -> JobKind {
        match self {
            Submission::CatalogImport { .. } => JobKind::CatalogImport,
            Submission::Reindex => JobKind::Reindex,
        }
    }
}

/// Rows per insert statement.
const ROWS_PER_INSERT: usize = 2000;

/// Store the job for `tenant`, asked by `submitted_by`, and queue it.
pub async fn submit(
    pool: &PgPool,
    tenant: &str,
    submitted_by: &str,
    submission: Submission,
) -> Result<Job, Error> {
    let id = Uuid::now_v7();
    let kind = submission.kind();
    let mut tx = pool.begin().await?;
    let (seller, total, failed) = match &submission {
        Submission::CatalogImport { seller, parsed } => {
            (Some(seller.as_str()), parsed.total() as i64, parsed.errors.len() as i64)
        }
        Submission::Reindex => (None, 0, 0),
    };
    sqlx::query(
        "insert into jobs (id, tenant, kind, seller, submitted_by, rows_total, rows_failed)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id)
    .bind(tenant)
    .bind(kind.as_str())
    .bind(seller)
    .bind(submitted_by)
    .bind(total)
    .bind(failed)
    .execute(&mut *tx)
    .await?;
    if let Submission::CatalogImport { parsed, .. } = &submission {
        for chunk in parsed.rows.chunks(ROWS_PER_INSERT) {
            let lines: Vec<i64> = chunk.iter().map(|r| r.line as i64).collect();
            let skus: Vec<&str> = chunk.iter().map(|r| r.sku.as_str()).collect();
            let fields: Vec<serde_json::Value> =
                chunk.iter().map(|r| serde_json::to_value(&r.fields)).collect::<Result<_, _>>()?;
            sqlx::query(
                "insert into job_rows (job_id, line, sku, fields)
                 select $1, * from unnest($2::bigint[], $3::text[], $4::jsonb[])",
            )
            .bind(id)
            .bind(&lines)
            .bind(&skus)
            .bind(&fields)
            .execute(&mut *tx)
            .await?;
        }
        for chunk in parsed.errors.chunks(ROWS_PER_INSERT) {
            let lines: Vec<i64> = chunk.iter().map(|e| e.line as i64).collect();
            let reasons: Vec<&str> = chunk.iter().map(|e| e.reason.as_str()).collect();
            sqlx::query(
                "insert into job_errors (job_id, line, reason)
                 select $1, * from unnest($2::bigint[], $3::text[])",
            )
            .bind(id)
            .bind(&lines)
            .bind(&reasons)
            .execute(&mut *tx)
            .await?;
        }
    }
    // apalis's own insert, run in our transaction: the task exists iff the job does.
    let task = TaskBuilder::new(serde_json::to_vec(&JobTask { job_id: id })?)
        .idempotency_key(id.to_string())
        // Each crash or stop of a worker counts an attempt; a job must outlive many.
        .max_attempts(10_000)
        .build();
    let queue = match kind {
        JobKind::CatalogImport => QUEUE,
        JobKind::Reindex => REINDEX_QUEUE,
    };
    apalis_postgres::queries::push_tasks(&mut *tx, queue, vec![task]).await?;
    tx.commit().await?;
    record::get(pool, None, id).await?.ok_or_else(|| Error::Corrupt("job vanished after submit".into()))
}
