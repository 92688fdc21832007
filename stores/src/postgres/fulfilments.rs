//! Each seller's part of a confirmed order (migration 0017): requested by the saga
//! ([`request`]), listed for the seller newest first ([`list`]), shipped once
//! ([`lock`], [`mark_shipped`]).

use chrono::{DateTime, Utc};
use serde::Serialize;
use souk_pipelines::fulfilment::FulfilmentLine;
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};
use uuid::Uuid;

use super::Error;

/// A seller's part of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Fulfilment {
    pub order_id: Uuid,
    pub seller: String,
    pub lines: Vec<FulfilmentLine>,
    /// `requested` (to ship) or `shipped`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracking: Option<String>,
    pub requested_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shipped_at: Option<DateTime<Utc>>,
}

impl Fulfilment {
    pub fn is_shipped(&self) -> bool {
        self.status == "shipped"
    }
}

const COLUMNS: &str = "order_id, seller, lines, status, tracking, requested_at, shipped_at";

fn from_row(row: &PgRow) -> Result<Fulfilment, Error> {
    let lines: serde_json::Value = row.try_get("lines")?;
    Ok(Fulfilment {
        order_id: row.try_get("order_id")?,
        seller: row.try_get("seller")?,
        lines: serde_json::from_value(lines)
            .map_err(|e| Error::Corrupt(format!("fulfilments.lines: {e}")))?,
        status: row.try_get("status")?,
        tracking: row.try_get("tracking")?,
        requested_at: row.try_get("requested_at")?,
        shipped_at: row.try_get("shipped_at")?,
    })
}

/// Ask `seller` to ship `lines` of the order. `false` when it was asked already (a
/// repeated request changes nothing).
pub async fn request(
    tx: &mut PgConnection,
    tenant: &str,
    seller: &str,
    order_id: Uuid,
    lines: &[FulfilmentLine],
) -> Result<bool, Error> {
    let lines = serde_json::to_value(lines).map_err(|e| Error::Corrupt(e.to_string()))?;
    let done = sqlx::query(
        "insert into fulfilments (tenant, seller, order_id, lines, status) values ($1, $2, $3, $4, 'requested')
         on conflict do nothing",
    )
    .bind(tenant)
    .bind(seller)
    .bind(order_id)
    .bind(lines)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// The seller's part of the order, locked for the current transaction.
pub async fn lock(
    tx: &mut PgConnection,
    tenant: &str,
    seller: &str,
    order_id: Uuid,
) -> Result<Option<Fulfilment>, Error> {
    let sql = format!(
        "select {COLUMNS} from fulfilments where tenant = $1 and seller = $2 and order_id = $3 for update"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(seller)
        .bind(order_id)
        .fetch_optional(tx)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The seller's part of the order.
pub async fn get(
    pool: &PgPool,
    tenant: &str,
    seller: &str,
    order_id: Uuid,
) -> Result<Option<Fulfilment>, Error> {
    let sql =
        format!("select {COLUMNS} from fulfilments where tenant = $1 and seller = $2 and order_id = $3");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(seller)
        .bind(order_id)
        .fetch_optional(pool)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Mark a requested part shipped (call under [`lock`], on a `requested` one).
pub async fn mark_shipped(
    tx: &mut PgConnection,
    tenant: &str,
    seller: &str,
    order_id: Uuid,
    tracking: Option<&str>,
    actor: &str,
) -> Result<DateTime<Utc>, Error> {
    sqlx::query_scalar(
        "update fulfilments set status = 'shipped', tracking = $4, shipped_by = $5, shipped_at = now()
         where tenant = $1 and seller = $2 and order_id = $3 and status = 'requested'
         returning shipped_at",
    )
    .bind(tenant)
    .bind(seller)
    .bind(order_id)
    .bind(tracking)
    .bind(actor)
    .fetch_optional(tx)
    .await?
    .ok_or_else(|| Error::Corrupt(format!("fulfilment {order_id} of {seller} is not requested")))
}

/// Where a page of a seller's orders continues: after this one (newest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct After {
    pub requested_at: DateTime<Utc>,
    pub order_id: Uuid,
}

/// The seller's orders, newest request first, after `after` (keyset pages: stable while
/// new requests arrive, which land before the first page).
pub async fn list(
    pool: &PgPool,
    tenant: &str,
    seller: &str,
    after: Option<After>,
    limit: i64,
) -> Result<Vec<Fulfilment>, Error> {
    let sql = format!(
        "select {COLUMNS} from fulfilments
         where tenant = $1 and seller = $2
           and ($3::timestamptz is null or (requested_at, order_id) < ($3, $4))
         order by requested_at desc, order_id desc limit $5"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(seller)
        .bind(after.map(|a| a.requested_at))
        .bind(after.map(|a| a.order_id))
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(from_row).collect()
}
