//! Orders in the system of record.

use chrono::{DateTime, Utc};
use serde::Serialize;
use souk_pipelines::orders::{PlaceOrder, PricedLine};
use sqlx::{PgConnection, Row};
use uuid::Uuid;

use super::Error;

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Order {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub status: String,
    /// Why the order failed (`status = "failed"`): the last error of its dead-lettered
    /// command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub currency: String,
    pub total_minor: i64,
    pub lines: Vec<PricedLine>,
    pub placed_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Insert accepted orders in the current transaction, in one statement. Returns the ids
/// inserted, and those of `failed` orders now accepted (a redriven command that
/// succeeded this time); an order that already exists otherwise (a replay that outlived
/// the inbox) is left as it is. Each command comes with the trace id of the request
/// that placed it, if it carried one.
pub async fn insert_accepted_many(
    tx: &mut PgConnection,
    cmds: &[(&PlaceOrder, Option<String>)],
) -> Result<std::collections::HashSet<Uuid>, Error> {
    let traces: Vec<Option<String>> = cmds.iter().map(|(_, t)| t.clone()).collect();
    let cmds: Vec<&PlaceOrder> = cmds.iter().map(|(c, _)| *c).collect();
    let lines = cmds
        .iter()
        .map(|c| serde_json::to_value(&c.lines))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "insert into orders (order_id, tenant, buyer_id, status, currency, total_minor, lines, placed_at, trace_id)
         select o, t, b, 'accepted', c, tm, l, p, tr
         from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::jsonb[], $7::timestamptz[],
                     $8::text[])
              as x(o, t, b, c, tm, l, p, tr)
         on conflict (order_id) do update
             set status = 'accepted', reason = null, buyer_id = excluded.buyer_id,
                 currency = excluded.currency, total_minor = excluded.total_minor,
                 lines = excluded.lines, placed_at = excluded.placed_at, updated_at = now(),
                 trace_id = coalesce(orders.trace_id, excluded.trace_id)
             where orders.status = 'failed' and orders.tenant = excluded.tenant
         returning order_id",
    )
    .bind(cmds.iter().map(|c| c.order_id).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.tenant.clone()).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.buyer_id.clone()).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.currency.code().to_owned()).collect::<Vec<_>>())
    .bind(cmds.iter().map(|c| c.total_minor).collect::<Vec<_>>())
    .bind(&lines)
    .bind(cmds.iter().map(|c| c.placed_at).collect::<Vec<_>>())
    .bind(&traces)
    .fetch_all(tx)
    .await?;
    Ok(inserted.into_iter().collect())
}

/// Mark the order of `cmd` failed with `reason`, in the current transaction, writing
/// its row if there is none yet (its command never got through). An order that exists
/// in any other state stays as it is: it got further than its dead letter says (a
/// worker committed and died before acking, or a redrive succeeded first). Returns
/// whether the order reads `failed` now.
pub async fn mark_failed(tx: &mut PgConnection, cmd: &PlaceOrder, reason: &str) -> Result<bool, Error> {
    let lines = serde_json::to_value(&cmd.lines).map_err(|e| Error::Corrupt(e.to_string()))?;
    let failed: Option<Uuid> = sqlx::query_scalar(
        "insert into orders (order_id, tenant, buyer_id, status, reason, currency, total_minor, lines, placed_at)
         values ($1, $2, $3, 'failed', $4, $5, $6, $7, $8)
         on conflict (order_id) do update set reason = excluded.reason, updated_at = now()
             where orders.status = 'failed'
         returning order_id",
    )
    .bind(cmd.order_id)
    .bind(&cmd.tenant)
    .bind(&cmd.buyer_id)
    .bind(reason)
    .bind(cmd.currency.code())
    .bind(cmd.total_minor)
    .bind(lines)
    .bind(cmd.placed_at)
    .fetch_optional(tx)
    .await?;
    Ok(failed.is_some())
}

/// [`mark_failed`] for an order whose command cannot be read (only its id is known, and
/// its owner from the idempotency claim): the row gets no lines, a zero total and the
/// "no currency" code `XXX`. Returns whether the order reads `failed` now (false when
/// no claim names it: no client was ever told of it).
pub async fn mark_failed_unreadable(
    tx: &mut PgConnection,
    order_id: Uuid,
    reason: &str,
) -> Result<bool, Error> {
    let failed: Option<Uuid> = sqlx::query_scalar(
        "insert into orders (order_id, tenant, buyer_id, status, reason, currency, total_minor, lines, placed_at)
         select order_id, tenant, principal, 'failed', $2, 'XXX', 0, '[]', created_at
         from idempotency_keys where order_id = $1 limit 1
         on conflict (order_id) do update set reason = excluded.reason, updated_at = now()
             where orders.status = 'failed'
         returning order_id",
    )
    .bind(order_id)
    .bind(reason)
    .fetch_optional(tx)
    .await?;
    Ok(failed.is_some())
}

/// One order by id.
pub async fn get(db: impl sqlx::PgExecutor<'_>, order_id: Uuid) -> Result<Option<Order>, Error> {
    let row = sqlx::query(
        "select order_id, tenant, buyer_id, status, reason, currency, total_minor, lines, placed_at,
                created_at, updated_at
         from orders where order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(db)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let lines: serde_json::Value = r.try_get("lines")?;
    Ok(Some(Order {
        order_id: r.try_get("order_id")?,
        tenant: r.try_get("tenant")?,
        buyer_id: r.try_get("buyer_id")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        currency: r.try_get::<String, _>("currency")?.trim().to_owned(),
        total_minor: r.try_get("total_minor")?,
        lines: serde_json::from_value(lines).map_err(|e| Error::Corrupt(e.to_string()))?,
        placed_at: r.try_get("placed_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
    }))
}
