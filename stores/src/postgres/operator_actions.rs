//! The append-only record of what operators did (`operator_actions`): who, what, when,
//! to which target and messages. Every state-changing operator command writes one row,
//! in the same transaction as its change where the change is in Postgres.

use super::Error;
use chrono::{DateTime, Utc};
use sqlx::{PgExecutor, Row};

/// One recorded action.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OperatorAction {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub details: serde_json::Value,
}

/// Record that `actor` did `action` (`<area>.<verb>`) to `target`.
pub async fn record(
    db: impl PgExecutor<'_>,
    actor: &str,
    action: &str,
    target: &str,
    details: &serde_json::Value,
) -> Result<i64, Error> {
    let row = sqlx::query(
        "insert into operator_actions (actor, action, target, details) values ($1, $2, $3, $4) returning id",
    )
    .bind(actor)
    .bind(action)
    .bind(target)
    .bind(details)
    .fetch_one(db)
    .await?;
    Ok(row.get(0))
}

/// The latest `limit` actions, newest first; only those on `target` when given.
pub async fn recent(
    db: impl PgExecutor<'_>,
    target: Option<&str>,
    limit: i64,
) -> Result<Vec<OperatorAction>, Error> {
    let rows = sqlx::query(
        "select id, at, actor, action, target, details from operator_actions
         where $1::text is null or target = $1 order by at desc, id desc limit $2",
    )
    .bind(target)
    .bind(limit)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| OperatorAction {
            id: r.get(0),
            at: r.get(1),
            actor: r.get(2),
            action: r.get(3),
            target: r.get(4),
            details: r.get(5),
        })
        .collect())
}
