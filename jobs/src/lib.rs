//! # souk-jobs: jobs for internal teams
//!
//! Long-running work that operators submit, follow and cancel (`souk jobs …`,
//! `POST /v1/jobs`): **catalog-import** (a JSONL or CSV file of one seller's products,
//! validated row by row at submission; the valid rows become `WriteProduct` commands
//! through JetStream, like API writes) and **reindex** (a fresh search index from
//! Postgres, swapped in while search keeps answering).
//!
//! - [`record`]: souk's own record of a job (`jobs`, `job_rows`, `job_errors`,
//!   migration 0013) — state, progress, errors by line, who, when.
//! - [`parse`] + [`validate`]: import files, refused whole or row by row.
//! - [`submit`]: record, rows and queue entry in one transaction.
//! - [`worker`]: apalis-postgres workers that run jobs, recover those of dead workers
//!   and resume from checkpoints; [`import`], [`reindex`]: the two kinds.
//! - [`commands`]: product writes as the ingress publishes them (message ids).
//! - [`seed`]: generated listings for demos and the benchmark.
//!
//! The queue is apalis-postgres's (schema `apalis`, its own migrations, applied by
//! `souk_stores::postgres::migrate`); a queued task carries only a job id, and every
//! decision reads souk's record, so the record stays the truth.

pub mod commands;
pub mod import;
pub mod parse;
pub mod record;
pub mod reindex;
pub mod seed;
pub mod submit;
pub mod validate;
pub mod worker;

pub use record::{Job, JobKind, JobState, Progress, RowError};
pub use submit::{Submission, submit};
pub use worker::{Tuning, WorkerOptions, run};

/// The apalis queue (its `job_type`) catalog imports go through: any job worker.
pub const QUEUE: &str = "souk-jobs";
/// The queue of reindex jobs: only workers that hold the search store take them.
pub const REINDEX_QUEUE: &str = "souk-jobs-reindex";

/// Why a job operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("job queue: {0}")]
    Queue(#[from] apalis_postgres::Error),
    #[error("encoding: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unexpected data: {0}")]
    Corrupt(String),
    /// Stored data this release cannot read: the job fails (a retry reads the same).
    #[error("{0}")]
    Unreadable(String),
    #[error("search store: {0}")]
    Search(String),
    #[error("the worker is stopping; the job will resume")]
    Stopping,
}

/// A store error: Postgres's own as [`Error::Db`] (an outage is retried like any other),
/// stored data that cannot be read as [`Error::Corrupt`].
impl From<souk_stores::postgres::Error> for Error {
    fn from(e: souk_stores::postgres::Error) -> Self {
        match e {
            souk_stores::postgres::Error::Database(e) | souk_stores::postgres::Error::Unavailable(e) => {
                Error::Db(e)
            }
            other => Error::Corrupt(other.to_string()),
        }
    }
}

impl Error {
    /// Whether running the job again reads the same thing and fails the same way.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Corrupt(_) | Error::Unreadable(_) | Error::Json(_))
    }
}
