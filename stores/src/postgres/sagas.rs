//! The order saga's persisted state (migration 0020): one `sagas` row per order and its
//! step log (`saga_steps`). The state machine itself lives in `souk-workers`
//! (`orders::saga`); this is its storage: rows are locked (`for update`, or `skip
//! locked` for the sweeper) and saved with a version check, in the caller's transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use souk_pipelines::orders::PricedLine;
use sqlx::{PgConnection, PgExecutor, PgPool, Row, postgres::PgRow};
use std::collections::HashSet;
use uuid::Uuid;

use super::Error;

/// Sends of one step's command before the sweeper gives up on it and compensates (for
/// the steps it gives up: `orders::saga::State::gives_up`); a saga sent more often is
/// `stuck` in views (the literal in [`stuck_sql`]).
pub const MAX_ATTEMPTS: i32 = 3;

/// Whether a saga is `stuck` (SQL over a `sagas` row), for views and `list --stuck`:
/// past its deadline, sent more than [`MAX_ATTEMPTS`] times — or confirmed and still
/// not shipped by every seller a week after it was placed. The fulfilment request is
/// sent again every day without end (a seller may ship late), so nothing else shows an
/// operator the order a seller never ships (review, twelfth session).
macro_rules! stuck_sql {
    () => {
        "(coalesce(deadline < now(), false) or (attempt > 3 and state <> 'fulfilling')
          or (state = 'fulfilling' and created_at < now() - interval '7 days'))"
    };
}

/// A saga to create with its order.
#[derive(Debug, Clone)]
pub struct NewSaga {
    pub order_id: Uuid,
    pub tenant: String,
    pub state: String,
    pub deadline: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub payment_token: Option<String>,
    pub hold_until: DateTime<Utc>,
}

/// Insert sagas in one statement; returns the ids inserted (an order that already has
/// one keeps it).
pub async fn insert_many(tx: &mut PgConnection, sagas: &[NewSaga]) -> Result<HashSet<Uuid>, Error> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "insert into sagas (order_id, tenant, state, deadline, reason, payment_token, hold_until)
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::text[],
                              $7::timestamptz[])
         on conflict (order_id) do nothing
         returning order_id",
    )
    .bind(sagas.iter().map(|s| s.order_id).collect::<Vec<_>>())
    .bind(sagas.iter().map(|s| s.tenant.clone()).collect::<Vec<_>>())
    .bind(sagas.iter().map(|s| s.state.clone()).collect::<Vec<_>>())
    .bind(sagas.iter().map(|s| s.deadline).collect::<Vec<_>>())
    .bind(sagas.iter().map(|s| s.reason.clone()).collect::<Vec<_>>())
    .bind(sagas.iter().map(|s| s.payment_token.clone()).collect::<Vec<_>>())
    .bind(sagas.iter().map(|s| s.hold_until).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    Ok(ids.into_iter().collect())
}

/// A saga with what its commands need from its order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub currency: String,
    pub total_minor: i64,
    pub lines: Vec<PricedLine>,
    pub state: String,
    pub attempt: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub version: i64,
    pub reason: Option<String>,
    pub payment_token: Option<String>,
    pub hold_until: DateTime<Utc>,
    pub awaiting_sellers: Vec<String>,
}

const SAGA_COLUMNS: &str =
    "s.order_id, s.tenant, o.buyer_id, o.currency, o.total_minor, o.lines, s.state, s.attempt,
     s.deadline, s.version, s.reason, s.payment_token, s.hold_until, s.awaiting_sellers";

fn saga(r: &PgRow) -> Result<Saga, Error> {
    let lines: serde_json::Value = r.try_get("lines")?;
    Ok(Saga {
        order_id: r.try_get("order_id")?,
        tenant: r.try_get("tenant")?,
        buyer_id: r.try_get("buyer_id")?,
        currency: r.try_get::<String, _>("currency")?.trim().to_owned(),
        total_minor: r.try_get("total_minor")?,
        lines: serde_json::from_value(lines).map_err(|e| Error::Corrupt(e.to_string()))?,
        state: r.try_get("state")?,
        attempt: r.try_get("attempt")?,
        deadline: r.try_get("deadline")?,
        version: r.try_get("version")?,
        reason: r.try_get("reason")?,
        payment_token: r.try_get("payment_token")?,
        hold_until: r.try_get("hold_until")?,
        awaiting_sellers: r.try_get("awaiting_sellers")?,
    })
}

/// The saga of `order_id`, locked for this transaction (replies to one order, the
/// sweeper and operators take turns).
pub async fn lock(tx: &mut PgConnection, order_id: Uuid) -> Result<Option<Saga>, Error> {
    let sql = format!(
        "select {SAGA_COLUMNS} from sagas s join orders o using (order_id) where s.order_id = $1 for update of s"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(order_id).fetch_optional(tx).await?;
    row.as_ref().map(saga).transpose()
}

/// Up to `limit` sagas whose deadline is before `now`, locked for this transaction;
/// sagas another transaction holds (a reply being handled, another process's sweeper)
/// are skipped, so several sweepers never act on one saga at once.
pub async fn lock_due(tx: &mut PgConnection, now: DateTime<Utc>, limit: i64) -> Result<Vec<Saga>, Error> {
    let sql = format!(
        "select {SAGA_COLUMNS} from sagas s join orders o using (order_id)
         where s.deadline < $1 order by s.deadline limit $2 for update of s skip locked"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(limit).fetch_all(tx).await?;
    rows.iter().map(saga).collect()
}

/// Of `aggregates`, those with a message waiting in the outbox (unpublished, not
/// parked). The sweeper asks for each due saga's order and the aggregates its replies
/// are written under: while one waits, the saga's last command has not reached
/// JetStream yet or its reply has not (the relay publishes an aggregate's rows in
/// order) — the broker is down, or no process holds the relay's lease. Not parked rows:
/// those wait for an operator (`souk outbox requeue`), and a saga waiting on one would
/// never show as stuck; it is swept as before (re-sent, given up where its state gives
/// up). Nor rows behind a parked row of their aggregate: the relay holds them with it
/// (review: a saga re-sent past its parked command waited on the re-send for ever).
pub async fn with_unsent_messages(
    tx: &mut PgConnection,
    aggregates: &[String],
) -> Result<HashSet<String>, Error> {
    if aggregates.is_empty() {
        return Ok(HashSet::new());
    }
    let unsent: Vec<String> = sqlx::query_scalar(
        "select distinct aggregate_id from outbox o
         where aggregate_id = any($1) and published_at is null and parked_at is null
           and not exists (select 1 from outbox p
                           where p.parked_at is not null and p.aggregate_id = o.aggregate_id
                             and p.seq < o.seq)",
    )
    .bind(aggregates)
    .fetch_all(tx)
    .await?;
    Ok(unsent.into_iter().collect())
}

/// Move the deadline of a saga locked by this transaction, changing nothing else (not
/// its version: no transition happened).
pub async fn postpone(tx: &mut PgConnection, order_id: Uuid, deadline: DateTime<Utc>) -> Result<(), Error> {
    sqlx::query("update sagas set deadline = $2 where order_id = $1")
        .bind(order_id)
        .bind(deadline)
        .execute(tx)
        .await?;
    Ok(())
}

/// The new state of a saga, and what its order reads.
#[derive(Debug, Clone)]
pub struct Change {
    pub state: String,
    pub attempt: i32,
    pub deadline: Option<DateTime<Utc>>,
    pub reason: Option<String>,
    pub awaiting_sellers: Vec<String>,
    /// The order's new status (`confirmed`, `cancelled`, `shipped`), if it changes.
    pub order_status: Option<String>,
}

/// Save `change` if the saga is still at `expected_version` (its version grows by
/// one). Returns false, changing nothing, when another change came first.
pub async fn save(
    tx: &mut PgConnection,
    order_id: Uuid,
    expected_version: i64,
    change: &Change,
) -> Result<bool, Error> {
    let saved = sqlx::query(
        "update sagas set state = $3, attempt = $4, deadline = $5, reason = $6, awaiting_sellers = $7,
                          version = version + 1, updated_at = now()
         where order_id = $1 and version = $2",
    )
    .bind(order_id)
    .bind(expected_version)
    .bind(&change.state)
    .bind(change.attempt)
    .bind(change.deadline)
    .bind(&change.reason)
    .bind(&change.awaiting_sellers)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        == 1;
    if saved && let Some(status) = &change.order_status {
        set_order_status(tx, &[order_id], status, change.reason.as_deref()).await?;
    }
    Ok(saved)
}

/// Set orders' status (and reason, when given) in the current transaction.
pub async fn set_order_status(
    tx: &mut PgConnection,
    order_ids: &[Uuid],
    status: &str,
    reason: Option<&str>,
) -> Result<(), Error> {
    sqlx::query(
        "update orders set status = $2, reason = coalesce($3, reason), updated_at = now()
         where order_id = any($1)",
    )
    .bind(order_ids)
    .bind(status)
    .bind(reason)
    .execute(tx)
    .await?;
    Ok(())
}

/// Log commands sent: one started step per (order, step, attempt).
pub async fn start_steps(tx: &mut PgConnection, steps: &[(Uuid, String, i32)]) -> Result<(), Error> {
    if steps.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "insert into saga_steps (order_id, step, attempt)
         select * from unnest($1::uuid[], $2::text[], $3::int4[])",
    )
    .bind(steps.iter().map(|s| s.0).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.1.clone()).collect::<Vec<_>>())
    .bind(steps.iter().map(|s| s.2).collect::<Vec<_>>())
    .execute(tx)
    .await?;
    Ok(())
}

/// Finish the latest unfinished `step` of the saga with `outcome`; false when none is
/// open (its reply came already).
pub async fn finish_step(
    tx: &mut PgConnection,
    order_id: Uuid,
    step: &str,
    outcome: &str,
) -> Result<bool, Error> {
    let n = sqlx::query(
        "update saga_steps set finished_at = now(), outcome = $3
         where id = (select id from saga_steps where order_id = $1 and step = $2 and finished_at is null
                     order by id desc limit 1)",
    )
    .bind(order_id)
    .bind(step)
    .bind(outcome)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Record something that happened to the saga at once (a reply it ignored, an
/// operator's action): a step started and finished now.
pub async fn note(
    tx: &mut PgConnection,
    order_id: Uuid,
    step: &str,
    attempt: i32,
    outcome: &str,
) -> Result<(), Error> {
    sqlx::query(
        "insert into saga_steps (order_id, step, attempt, finished_at, outcome) values ($1, $2, $3, now(), $4)",
    )
    .bind(order_id)
    .bind(step)
    .bind(attempt)
    .bind(outcome)
    .execute(tx)
    .await?;
    Ok(())
}

/// One step of a saga as shown to clients and operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Step {
    /// `reserve`, `authorize`, `commit`, `capture`, `fulfil <seller>`, `release`,
    /// `void`, `refund`, or an operator's `retry`/`compensate`.
    pub step: String,
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    /// When its reply came (absent while awaited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    /// `ok`, or what went wrong, or why a reply was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// A saga as shown to clients (`GET /v1/orders/{id}`) and operators (`souk sagas show`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SagaView {
    pub order_id: Uuid,
    pub tenant: String,
    /// `reserving`, `authorizing`, `committing`, `capturing`, `fulfilling`, `shipped`,
    /// `releasing`, `unwinding`, `voiding`, `cancelled`, `refunding` or `voiding_late`.
    pub state: String,
    pub attempt: i32,
    /// When the sweeper acts if the awaited reply does not come.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Past its deadline (the sweeper has not acted yet), or sent more than 3 times
    /// (the sweeper's attempts: a step it never gives up — a capture, a void, a refund
    /// — being sent again and again wants a look; not sellers awaited, who take days).
    pub stuck: bool,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Oldest first. Empty in lists.
    pub steps: Vec<Step>,
}

const VIEW_COLUMNS: &str = concat!(
    "order_id, tenant, state, attempt, deadline, reason, ",
    stuck_sql!(),
    " as stuck, version, created_at, updated_at"
);

fn view_of(r: &PgRow) -> Result<SagaView, Error> {
    Ok(SagaView {
        order_id: r.try_get("order_id")?,
        tenant: r.try_get("tenant")?,
        state: r.try_get("state")?,
        attempt: r.try_get("attempt")?,
        deadline: r.try_get("deadline")?,
        reason: r.try_get("reason")?,
        stuck: r.try_get("stuck")?,
        version: r.try_get("version")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        steps: Vec::new(),
    })
}

/// The saga of `order_id` with its steps.
pub async fn view(pool: &PgPool, order_id: Uuid) -> Result<Option<SagaView>, Error> {
    view_on(&mut *pool.acquire().await?, order_id).await
}

/// [`view`] on `conn` (a snapshot transaction's, to read it beside the order).
pub async fn view_on(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<SagaView>, Error> {
    let sql = format!("select {VIEW_COLUMNS} from sagas where order_id = $1");
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(order_id).fetch_optional(&mut *conn).await?
    else {
        return Ok(None);
    };
    let mut view = view_of(&row)?;
    let steps = sqlx::query(
        "select step, attempt, started_at, finished_at, outcome from saga_steps where order_id = $1 order by id",
    )
    .bind(order_id)
    .fetch_all(&mut *conn)
    .await?;
    view.steps = steps
        .iter()
        .map(|r| {
            Ok(Step {
                step: r.try_get("step")?,
                attempt: r.try_get("attempt")?,
                started_at: r.try_get("started_at")?,
                finished_at: r.try_get("finished_at")?,
                outcome: r.try_get("outcome")?,
            })
        })
        .collect::<Result<_, Error>>()?;
    Ok(Some(view))
}

/// The newest `limit` sagas (without steps), in `state` when given, only the stuck ones
/// with `stuck`.
pub async fn list(
    db: impl PgExecutor<'_>,
    state: Option<&str>,
    stuck: bool,
    limit: i64,
) -> Result<Vec<SagaView>, Error> {
    let sql = format!(
        "select {} from sagas
         where ($1::text is null or state = $1) and (not $2 or {})
         order by updated_at desc, order_id limit $3",
        VIEW_COLUMNS,
        stuck_sql!()
    );
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(state).bind(stuck).bind(limit).fetch_all(db).await?;
    rows.iter().map(view_of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuck_counts_the_sweepers_attempts() {
        let past = format!("attempt > {MAX_ATTEMPTS} and state <> 'fulfilling'");
        assert!(stuck_sql!().contains(&past), "{}", stuck_sql!());
        assert!(VIEW_COLUMNS.contains(stuck_sql!()), "{VIEW_COLUMNS}");
    }
}
