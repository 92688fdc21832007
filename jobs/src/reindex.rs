//! reindex: a fresh search index built from Postgres and swapped in (placeholder until
//! the search store lands).

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    Error,
    record::{Job, JobState},
    worker::Outcome,
};

/// The search index a reindex rebuilds.
pub trait Target: Send + Sync {}

pub(crate) async fn run(
    _pool: &PgPool,
    target: Option<&dyn Target>,
    _job: &Job,
    _stop: &CancellationToken,
) -> Result<Outcome, Error> {
    match target {
        None => Ok(Outcome::Final(JobState::Failed, Some("this worker has no search store".into()))),
        Some(_) => Ok(Outcome::Final(JobState::Failed, Some("not yet".into()))),
    }
}
