//! Orders in the system of record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use souk_pipelines::orders::{OrderLine, PlaceOrder};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::Error;

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Order {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub status: String,
    pub currency: String,
    pub total_minor: i64,
    pub lines: Vec<OrderLine>,
    pub placed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Insert accepted orders in the current transaction, in one statement. Returns the ids
/// inserted; an order that already exists (a replay that outlived the inbox) is left as
/// it is.
pub async fn insert_accepted_many(
    tx: &mut PgConnection,
    cmds: &[&PlaceOrder],
) -> Result<std::collections::HashSet<Uuid>, Error> {
    let lines = cmds
        .iter()
        .map(|c| serde_json::to_value(&c.lines))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "insert into orders (order_id, tenant, buyer_id, status, currency, total_minor, lines, placed_at)
         select o, t, b, 'accepted', c, tm, l, p
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::jsonb[], $7::timestamptz[])
              as x(o, t, b, c, tm, l, p)
         on conflict (order_id) do nothing
         returning order_id",
    )
    .bind(cmds.iter().map(|c| c.order_id).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.tenant.clone()).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.buyer_id.clone()).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.currency.code().to_owned()).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.total_minor).collect::<Vec<_>>())
    .bind(&lines)
    .bind(cmds.iter().map(|c| c.placed_at).collect::<Vec<_>>())
    .fetch_all(tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// One order by id.
pub async fn get(pool: &PgPool, order_id: Uuid) -> Result<Option<Order>, Error> {
    let row = sqlx::query(
        "select order_id, tenant, buyer_id, status, currency, total_minor, lines, placed_at,
                created_at, updated_at
         from orders where order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let lines: serde_json::Value = r.try_get("lines")?;
    Ok(Some(Order {
        order_id: r.try_get("order_id")?,
        tenant: r.try_get("tenant")?,
        buyer_id: r.try_get("buyer_id")?,
        status: r.try_get("status")?,
        currency: r.try_get::<String, _>("currency")?.trim().to_owned(),
        total_minor: r.try_get("total_minor")?,
        lines: serde_json::from_value(lines).map_err(|e| Error::Corrupt(e.to_string()))?,
        placed_at: r.try_get("placed_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    }))
}
