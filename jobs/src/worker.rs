//! The job worker: an apalis worker on the `souk-jobs` queue of apalis-postgres, run
//! (and restarted) until the node stops.
//!
//! apalis delivers a task (a job id) to one worker at a time and recovers it when that
//! worker dies: workers heartbeat every `heartbeat`, and any live worker re-queues
//! tasks held by a worker silent for `heartbeat × missed_heartbeats` (at its own
//! registration and heartbeats). A worker that stops gracefully hands its running job
//! back at once (the run ends between chunks and returns an error, so apalis marks the
//! task failed-retryable and fetches it again). Either way the job resumes from its
//! checkpoint in souk's record.
//!
//! apalis ends a worker for good on any failed fetch or heartbeat (a Postgres blip), so
//! [`run`] starts a new one, under a new name, after a pause. A new name each start
//! also matters: a worker registering under the name of a dead one refreshes its
//! `last_seen` and so hides the dead one's tasks from orphan recovery for ever.

use apalis::prelude::{BoxDynError, Data, WorkerBuilder, WorkerBuilderExt};
use apalis_postgres::{Config, PostgresStorage};
use serde::{Deserialize, Serialize};
use souk_stores::search::SearchStore;
use souk_topologies::publisher::Publisher;
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Error, QUEUE, REINDEX_QUEUE,
    import::Import,
    record::{self, JobKind, JobState},
    reindex,
};

/// How long a job interrupted by an outage waits before apalis runs it again.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// An apalis task: which job to run. Everything else is in the job's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobTask {
    pub job_id: Uuid,
}

/// How a run of a job ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// The job reached a final state; record it.
    Final(JobState, Option<String>),
    /// Someone else ended it (cancelled while queued, or finished by another run).
    Ended,
    /// This worker is stopping: hand the job back to run again.
    Stopped,
}

/// What a job worker runs with.
#[derive(Clone)]
pub struct WorkerOptions {
    pub pool: PgPool,
    pub publisher: Publisher,
    /// The search index a reindex rebuilds; `None`: reindex jobs fail saying so.
    pub search: Option<Arc<dyn SearchStore>>,
    pub tuning: Tuning,
}

impl std::fmt::Debug for WorkerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerOptions").field("tuning", &self.tuning).finish_non_exhaustive()
    }
}

/// How a job worker runs.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Jobs run at once by this process.
    pub concurrency: usize,
    /// Rows per JetStream batch and checkpoint.
    pub chunk: usize,
    pub heartbeat: Duration,
    /// Heartbeats a worker may miss before its jobs are given to another.
    pub missed_heartbeats: usize,
}

impl Default for Tuning {
    /// 2 jobs at once, chunks of 500 rows, a heartbeat every 5 s; a worker silent for
    /// 30 s is dead and its jobs resume elsewhere.
    fn default() -> Self {
        Tuning { concurrency: 2, chunk: 500, heartbeat: Duration::from_secs(5), missed_heartbeats: 6 }
    }
}

#[derive(Clone)]
struct Deps {
    options: WorkerOptions,
    stop: CancellationToken,
}

/// Run job workers until `stop` is cancelled; running jobs are handed back. Imports
/// run anywhere; reindexes only in a process holding the search store (with one
/// tantivy index per node, a worker process without it must not take them), so they
/// have a queue of their own.
pub async fn run(options: WorkerOptions, stop: CancellationToken) {
    let reindex = options.search.is_some().then(|| supervise(REINDEX_QUEUE, options.clone(), stop.clone()));
    let imports = supervise(QUEUE, options, stop);
    match reindex {
        Some(reindex) => {
            tokio::join!(imports, reindex);
        }
        None => imports.await,
    }
}

/// One apalis worker on `queue`, started again whenever it ends, until `stop`.
async fn supervise(queue: &'static str, options: WorkerOptions, stop: CancellationToken) {
    let mut pause = Duration::from_millis(500);
    loop {
        let name = format!("{queue}-{}", Uuid::now_v7().simple());
        let config = Config::default()
            .queue(queue)
            .batch_size(options.tuning.concurrency.max(1))
            .heartbeat_interval(options.tuning.heartbeat)
            .missed_heartbeats(options.tuning.missed_heartbeats);
        let storage = PostgresStorage::<JobTask>::new(&options.pool).with_config(config).with_pubsub();
        let deps = Deps { options: options.clone(), stop: stop.clone() };
        let worker = WorkerBuilder::new(name.as_str())
            .backend(storage)
            .data(deps)
            .concurrency(options.tuning.concurrency.max(1))
            .build(handle);
        let signal = stop.clone();
        tracing::info!(worker = %name, "job worker started");
        let result = worker
            .run_until(async move {
                signal.cancelled().await;
                Ok::<(), std::io::Error>(())
            })
            .await;
        if stop.is_cancelled() {
            return;
        }
        match result {
            Ok(()) => tracing::warn!(worker = %name, "job worker ended; starting another"),
            Err(e) => tracing::warn!(worker = %name, error = %e, "job worker failed; starting another"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(15));
    }
}

/// Run one job (first start or resume). An `Err` makes apalis deliver the task again.
/// A panic is caught here (apalis's catch-panic layer makes the worker future
/// non-`Send` for tokio) and ends the job failed: it would panic again.
async fn handle(task: JobTask, deps: Data<Deps>) -> Result<(), BoxDynError> {
    use futures::FutureExt;
    let job_id = task.job_id;
    let pool = deps.options.pool.clone();
    match std::panic::AssertUnwindSafe(run_job(task, deps)).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panicked".into());
            tracing::error!(job = %job_id, error = %why, "job panicked");
            record::finish(&pool, job_id, JobState::Failed, Some(&format!("internal error: {why}"))).await?;
            Ok(())
        }
    }
}

async fn run_job(task: JobTask, deps: Data<Deps>) -> Result<(), BoxDynError> {
    let pool = &deps.options.pool;
    let Some(job) = record::start(pool, task.job_id).await? else {
        return Ok(()); // cancelled while queued, or already final
    };
    tracing::info!(job = %job.id, kind = %job.kind, "job running");
    let outcome = match job.kind {
        JobKind::CatalogImport => {
            let import = Import {
                pool,
                publisher: &deps.options.publisher,
                chunk: deps.options.tuning.chunk.max(1),
                stop: &deps.stop,
            };
            import.run(&job).await
        }
        JobKind::Reindex => reindex::run(pool, deps.options.search.as_deref(), &job, &deps.stop).await,
    };
    match outcome {
        Ok(Outcome::Final(state, error)) => {
            record::finish(pool, job.id, state, error.as_deref()).await?;
            tracing::info!(job = %job.id, %state, "job ended");
            Ok(())
        }
        Ok(Outcome::Ended) => Ok(()),
        Ok(Outcome::Stopped) => Err(Box::new(Error::Stopping)),
        // Data no run can read: retrying would loop (apalis retries at once, up to the
        // task's attempts, and then leaves the record `running` for ever).
        Err(e) if e.is_permanent() => {
            tracing::error!(job = %job.id, error = %e, "job failed");
            record::finish(pool, job.id, JobState::Failed, Some(&e.to_string())).await?;
            Ok(())
        }
        // Postgres (or the search store) failing: apalis runs the job again, from its
        // checkpoint, after a pause (it has no backoff of its own).
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "job interrupted; it will resume");
            tokio::select! {
                () = deps.stop.cancelled() => {}
                () = tokio::time::sleep(RETRY_PAUSE) => {}
            }
            Err(Box::new(e))
        }
    }
}
