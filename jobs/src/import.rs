//! catalog-import: the job's stored rows, in line order, as `WriteProduct` commands
//! through JetStream — the path API writes take.
//!
//! Exactly-once, by construction rather than by luck:
//! - each row's write id is a v5 UUID of (job id, line), its `Nats-Msg-Id` derived from
//!   it, its `requested_at` the job's submission time: a row published again (after a
//!   crash between the PubAck and the checkpoint) is the same command, dropped by
//!   JetStream's dedupe window and, past it, by the catalog pool's inbox;
//! - a chunk's progress is checkpointed only after JetStream acknowledged every
//!   message of it (durably), in one statement fenced on the previous checkpoint, so
//!   two runs of one job (a worker declared dead that was only slow) cannot both count
//!   a chunk;
//! - a resumed job starts after its checkpoint and redoes at most one chunk.

use souk_pipelines::catalog::{ProductChange, ProductFields, WriteProduct};
use souk_topologies::publisher::Publisher;
use sqlx::PgPool;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Error,
    commands::{uuid_v5, write_message},
    record::{Job, JobState},
    worker::Outcome,
};

/// What a run of the job needs.
pub(crate) struct Import<'a> {
    pub pool: &'a PgPool,
    pub publisher: &'a Publisher,
    pub chunk: usize,
    pub stop: &'a CancellationToken,
}

/// The write id of the row on `line` of job `job`.
pub fn write_id(job: Uuid, line: u64) -> Uuid {
    uuid_v5(job, line.to_string().as_bytes())
}

impl Import<'_> {
    pub async fn run(&self, job: &Job) -> Result<Outcome, Error> {
        let seller = job.seller.clone().ok_or_else(|| Error::Corrupt("an import without a seller".into()))?;
        let mut failures = 0u32;
        loop {
            let Some((checkpoint, cancel)) = self.position(job.id).await? else {
                return Ok(Outcome::Ended); // finished or cancelled elsewhere
            };
            let rows: Vec<(i64, String, serde_json::Value)> = sqlx::query_as(
                "select line, sku, fields from job_rows where job_id = $1 and line > $2 order by line limit $3",
            )
            .bind(job.id)
            .bind(checkpoint)
            .bind(self.chunk as i64)
            .fetch_all(self.pool)
            .await?;
            // Every row stored: the job is done, even if a cancel came after its last
            // chunk (reporting it cancelled would say rows were left out).
            let Some(last) = rows.last().map(|r| r.0) else {
                return Ok(Outcome::Final(JobState::Done, None));
            };
            if cancel {
                return Ok(Outcome::Final(JobState::Cancelled, None));
            }
            if self.stop.is_cancelled() {
                return Ok(Outcome::Stopped);
            }
            // Each row's stock counts beside the units held when its chunk is published.
            let skus: Vec<String> = rows.iter().map(|r| r.1.clone()).collect();
            let bases = souk_stores::postgres::inventory::bases(self.pool, &job.tenant, &skus).await?;
            let mut commands = Vec::with_capacity(rows.len());
            for (line, sku, fields) in rows {
                // Unreadable by this release (a row stored by a newer one, or damaged):
                // retrying cannot help, so the job fails naming the line.
                let fields: ProductFields = serde_json::from_value(fields).map_err(|e| {
                    Error::Unreadable(format!("line {line}: the stored row cannot be read: {e}"))
                })?;
                commands.push(WriteProduct {
                    write_id: write_id(job.id, line as u64),
                    tenant: job.tenant.clone(),
                    seller: seller.clone(),
                    stock_basis: Some(bases.get(&sku).copied().unwrap_or_default()),
                    sku,
                    expected_version: None,
                    change: ProductChange::Put { fields },
                    actor: job.submitted_by.clone(),
                    requested_at: job.created_at,
                });
            }
            let messages: Vec<_> = commands.iter().map(write_message).collect();
            let results = self.publisher.publish_all(&messages).await;
            if let Some(e) = results.iter().find_map(|r| r.as_ref().err()) {
                // An outage (or a refusal that a retry cannot fix, which the operator
                // sees in the log and `souk status`): the same chunk again, after a
                // pause; its stored messages are deduplicated.
                failures += 1;
                tracing::warn!(job = %job.id, error = %e, failures, "import chunk not stored; retrying");
                let pause = Duration::from_millis(250u64 << failures.min(6));
                tokio::select! {
                    () = self.stop.cancelled() => return Ok(Outcome::Stopped),
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            failures = 0;
            self.checkpoint(job.id, checkpoint, last, messages.len() as i64).await?;
        }
    }

    /// The job's checkpoint and whether it was asked to stop; `None` once it is final.
    async fn position(&self, id: Uuid) -> Result<Option<(i64, bool)>, Error> {
        Ok(sqlx::query_as(
            "select checkpoint, cancel_requested from jobs where id = $1 and state = 'running'",
        )
        .bind(id)
        .fetch_optional(self.pool)
        .await?)
    }

    /// Record `done` more rows up to `last`, if nobody else moved the checkpoint.
    async fn checkpoint(&self, id: Uuid, from: i64, last: i64, done: i64) -> Result<(), Error> {
        let moved = sqlx::query(
            "update jobs set checkpoint = $3, rows_done = rows_done + $4, updated_at = now()
             where id = $1 and checkpoint = $2 and state = 'running'",
        )
        .bind(id)
        .bind(from)
        .bind(last)
        .bind(done)
        .execute(self.pool)
        .await?
        .rows_affected();
        if moved == 0 {
            tracing::info!(job = %id, "another run of this job moved its checkpoint first");
        }
        Ok(())
    }
}
