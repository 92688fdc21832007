//! Operators' actions over the engine, each recorded in `operator_actions`: dead-letter
//! redrives and purges (`topologies::dead_letters`) and pool pause/resume/scale
//! (`topologies::control`). `souk dlq`/`souk pool` and the dashboard both call these
//! (here, not in the CLI, so the dashboard need not depend on the binary's crate).
//!
//! **Recording.** Postgres is checked before anything is done, so an action that could
//! not be recorded is not taken. A pool change is recorded in a transaction committed
//! only after the control bucket took the change (a refused change leaves no row).
//! A dead-letter action cannot share a transaction with JetStream: it is recorded
//! twice. Before anything is done, a `dlq.redrive-begun`/`dlq.purge-begun` row names
//! the actor and the letters chosen — an action cut off half-way (a killed CLI, a node
//! stopped by a deploy) is still on record, and `souk dlq list` shows what is left.
//! After the work, the `dlq.redrive`/`dlq.purge` row lists what was done and what
//! failed, and names its `begun` row. That transaction also updates the records
//! `souk trace` keeps of those dead letters (table `dead_letters`): a purged dead
//! letter's record goes, a redriven one's says when. A row that cannot be written after
//! the work is [`Error::NotRecorded`], naming what was done — never an error that reads
//! as "nothing done". The dashboard runs an action in a task of its own, so a browser
//! that hangs up does not cut it short, and a stopping node waits for it.

use crate::postgres::{follow as journal, operator_actions};
use serde_json::json;
use souk_topologies::{
    Error as EngineError, Topology,
    control::{Change, Controls, PoolSettings},
    dead_letters::{self, Purged, Redriven, Selection},
    publisher::Publisher,
};

/// Who acts: a token's subject, or `cli:<local user>`.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

impl Actor {
    /// The local user of a command run without a token.
    pub fn local() -> Actor {
        let user =
            std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
        Actor(format!("cli:{user}"))
    }
}

/// A time in an operator's filter: RFC 3339 (`2026-05-01T10:00:00Z`) or a duration
/// meaning that long ago (`2h`, `30m`).
pub fn parse_time(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc).into());
    }
    let ago = humantime_serde::re::humantime::parse_duration(s).map_err(|_| {
        format!("{s:?} is neither an RFC 3339 time (2026-05-01T10:00:00Z) nor a time ago (2h, 30m)")
    })?;
    std::time::SystemTime::now().checked_sub(ago).ok_or_else(|| format!("{s:?} is too long ago"))
}

/// Why an operator action was not (fully) done.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: unknown pool or sequence, out-of-bounds concurrency, empty selection.
    #[error("{0}")]
    Input(String),
    #[error(transparent)]
    Engine(EngineError),
    #[error("operator_actions: {0}")]
    Record(#[from] crate::postgres::Error),
    #[error("Postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Done, but its `operator_actions` row could not be committed.
    #[error("{0}")]
    NotRecorded(String),
}

impl From<EngineError> for Error {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NotFound(m) | EngineError::Invalid(m) => Error::Input(m),
            e => Error::Engine(e),
        }
    }
}

/// What a redrive command did.
#[derive(Debug, Default, serde::Serialize)]
pub struct RedriveReport {
    pub redriven: Vec<Redriven>,
    /// Sequence and error of each dead letter not redriven (it stays in the DLQ).
    pub failed: Vec<(u64, String)>,
    /// The `operator_actions` row.
    pub action_id: i64,
}

/// Redrive the dead letters `selection` names, then record it.
pub async fn redrive(
    publisher: &Publisher,
    db: &sqlx::PgPool,
    actor: &Actor,
    selection: &Selection,
) -> Result<RedriveReport, Error> {
    let letters = dead_letters::select(publisher.jetstream(), selection).await?;
    let begun = begin(db, actor, "dlq.redrive", selection, &letters).await?;
    let mut report = RedriveReport::default();
    for letter in &letters {
        match dead_letters::redrive(publisher, letter.seq).await {
            Ok(r) => report.redriven.push(r),
            Err(e) => report.failed.push((letter.seq, e.to_string())),
        }
    }
    let details = json!({
        "begun": begun,
        "selection": describe(selection),
        "sequences": letters.iter().map(|d| d.seq).collect::<Vec<_>>(),
        "redriven": report.redriven,
        "failed": report.failed,
    });
    let redriven: Vec<u64> = report.redriven.iter().map(|r| r.seq).collect();
    let recorded = async {
        let mut tx = db.begin().await?;
        journal::mark_redriven(&mut *tx, dead_letters::STREAM, &redriven).await?;
        let id = operator_actions::record(&mut *tx, &actor.0, "dlq.redrive", &target_of(&letters), &details)
            .await?;
        tx.commit().await?;
        Ok::<_, Error>(id)
    };
    report.action_id = recorded.await.map_err(|e| {
        Error::NotRecorded(format!(
            "{} dead letter(s) redriven ({:?}), {} failed, but the redrive could not be recorded: {e}",
            redriven.len(),
            redriven,
            report.failed.len()
        ))
    })?;
    Ok(report)
}

/// What a purge command did.
#[derive(Debug, serde::Serialize)]
pub struct PurgeReport {
    #[serde(flatten)]
    pub purged: Purged,
    pub action_id: i64,
}

/// The dead letters a purge of `selection` would delete (to confirm first).
pub async fn purge_preview(
    js: &async_nats::jetstream::Context,
    selection: &Selection,
) -> Result<Vec<dead_letters::DeadLetter>, Error> {
    Ok(dead_letters::select(js, selection).await?)
}

/// Purge exactly `letters` (from [`purge_preview`]), then record it.
pub async fn purge(
    js: &async_nats::jetstream::Context,
    db: &sqlx::PgPool,
    actor: &Actor,
    selection: &Selection,
    letters: &[dead_letters::DeadLetter],
) -> Result<PurgeReport, Error> {
    let begun = begin(db, actor, "dlq.purge", selection, letters).await?;
    let seqs: Vec<u64> = letters.iter().map(|d| d.seq).collect();
    let purged = dead_letters::purge(js, &seqs).await;
    let details =
        json!({ "begun": begun, "selection": describe(selection), "sequences": seqs, "result": purged });
    let recorded = async {
        let mut tx = db.begin().await?;
        journal::forget_dead_letters(&mut *tx, dead_letters::STREAM, &purged.deleted).await?;
        let id =
            operator_actions::record(&mut *tx, &actor.0, "dlq.purge", &target_of(letters), &details).await?;
        tx.commit().await?;
        Ok::<_, Error>(id)
    };
    let action_id = recorded.await.map_err(|e| {
        Error::NotRecorded(format!(
            "{} dead letter(s) purged ({:?}), but the purge could not be recorded: {e}",
            purged.deleted.len(),
            purged.deleted
        ))
    })?;
    Ok(PurgeReport { purged, action_id })
}

/// Pause, resume or scale `pool` in every process running it, recorded.
pub async fn change_pool(
    controls: &Controls,
    topology: &Topology,
    db: &sqlx::PgPool,
    actor: &Actor,
    pool: &str,
    change: Change,
) -> Result<(PoolSettings, PoolSettings), Error> {
    if topology.pool(pool).is_none() {
        let known: Vec<&str> = topology.pools.iter().map(|p| p.name.as_str()).collect();
        return Err(Error::Input(format!("no pool {pool:?} in the topology (pools: {})", known.join(", "))));
    }
    let change = change.check()?;
    let action = match change {
        Change::Pause => "pool.pause",
        Change::Resume => "pool.resume",
        Change::Scale(_) => "pool.scale",
    };
    // Postgres is reached first; the row is committed once the bucket took the change.
    let mut tx = db.begin().await?;
    let (before, after) = controls.change(pool, change, &actor.0).await?;
    let details = json!({ "before": before, "after": after });
    let recorded = async {
        operator_actions::record(&mut *tx, &actor.0, action, pool, &details).await?;
        tx.commit().await.map_err(Error::from)
    };
    if let Err(e) = recorded.await {
        return Err(Error::NotRecorded(format!(
            "{action} {pool} was applied but could not be recorded: {e}"
        )));
    }
    Ok((before, after))
}

/// Record that `actor` begins `action` (`dlq.redrive`, `dlq.purge`) on `letters`, as
/// `<action>-begun`, before anything is done: Postgres refusing it stops the action.
async fn begin(
    db: &sqlx::PgPool,
    actor: &Actor,
    action: &str,
    selection: &Selection,
    letters: &[dead_letters::DeadLetter],
) -> Result<i64, Error> {
    let details = json!({
        "selection": describe(selection),
        "sequences": letters.iter().map(|d| d.seq).collect::<Vec<_>>(),
    });
    let begun = format!("{action}-begun");
    Ok(operator_actions::record(db, &actor.0, &begun, &target_of(letters), &details).await?)
}

fn describe(selection: &Selection) -> serde_json::Value {
    match selection {
        Selection::Seqs(seqs) => json!({ "sequences": seqs }),
        Selection::Matching(filter) => json!({
            "consumer": filter.consumer,
            "error": filter.error,
            "since": filter.since.map(rfc3339),
            "until": filter.until.map(rfc3339),
        }),
        Selection::All => json!("all"),
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()
}

/// The consumer the dead letters belong to, or `dlq` when several.
fn target_of(letters: &[dead_letters::DeadLetter]) -> String {
    match letters.first() {
        Some(first) if letters.iter().all(|d| d.consumer == first.consumer) => first.consumer.clone(),
        _ => "dlq".into(),
    }
}

/// Everything souk did with the order `id` names (an order id, or the trace id of the
/// request that placed it), across pipelines, in time order: the engine's
/// [`souk_topologies::follow`] over this deployment's Postgres records. Read-only, so
/// nothing is recorded. `souk trace` and the dashboard call this.
pub async fn trace(
    js: &async_nats::jetstream::Context,
    topology: &Topology,
    pool: &sqlx::PgPool,
    id: &str,
) -> Result<souk_pipelines::follow::Trace, souk_topologies::follow::FollowError> {
    use crate::postgres::follow::{PgJournal, sources};
    let journal = PgJournal(pool.clone());
    souk_topologies::follow::follow(js, topology, &journal, &sources(pool), id).await
}
