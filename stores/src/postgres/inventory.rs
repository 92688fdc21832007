//! Stock and stock holds in the system of record (migration 0017).
//!
//! A SKU's row counts `on_hand` (held units included), `held` and `sold`; available is
//! `on_hand - held`. The catalog pool sets what is available from a product's `stock`
//! ([`set_available`], [`withdraw_all`]); the inventory pool moves units between
//! available, held and sold for one order at a time, under [`lock_order`]. Statements
//! that change several SKUs run one SKU at a time in SKU order (callers pass lines
//! sorted), so two orders never lock the same rows in opposite orders.

use chrono::{DateTime, Utc};
use souk_pipelines::{
    catalog::StockBasis,
    inventory::{Shortage, StockLine},
};
use sqlx::{PgConnection, PgExecutor, PgPool, Row};
use uuid::Uuid;

use super::Error;

/// Advisory-lock class of inventory orders (the two-key form; its own key space).
const ORDER_LOCK_CLASS: i32 = 0x0049_4e56; // "INV"

/// Where an order's reservation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Held,
    Rejected,
    Committed,
    Released,
    Expired,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Held => "held",
            State::Rejected => "rejected",
            State::Committed => "committed",
            State::Released => "released",
            State::Expired => "expired",
        }
    }

    fn parse(s: &str) -> Result<State, Error> {
        Ok(match s {
            "held" => State::Held,
            "rejected" => State::Rejected,
            "committed" => State::Committed,
            "released" => State::Released,
            "expired" => State::Expired,
            other => return Err(Error::Corrupt(format!("stock_reservations.state {other:?}"))),
        })
    }
}

/// An order's reservation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub state: State,
    pub hold_until: DateTime<Utc>,
    /// Whether `hold_until` has passed (by the database's clock, the one every
    /// process shares).
    pub due: bool,
    /// The refusal's shortages (`Rejected`).
    pub shortages: Vec<Shortage>,
    pub reserved_at: DateTime<Utc>,
    /// When it reached its state.
    pub decided_at: DateTime<Utc>,
    /// Its lines, by SKU (empty when rejected).
    pub lines: Vec<StockLine>,
}

/// One SKU's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock {
    pub on_hand: i64,
    pub held: i64,
    pub sold: i64,
    pub withdrawn: i64,
    /// When any of them last changed.
    pub updated_at: DateTime<Utc>,
}

impl Stock {
    /// Units that can be held now.
    pub fn available(&self) -> i64 {
        (self.on_hand - self.held).max(0)
    }
}

/// Serialise every change of one order's reservation for the current transaction:
/// reserve, release, commit and expiry of one order decide one after the other, so
/// exactly one of a commit and an expiry racing each other wins. Take it before any
/// stock row (the lock order is order, then SKUs in order).
pub async fn lock_order(tx: &mut PgConnection, tenant: &str, order_id: Uuid) -> Result<(), Error> {
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2 || '/' || $3::text))")
        .bind(ORDER_LOCK_CLASS)
        .bind(tenant)
        .bind(order_id)
        .execute(tx)
        .await?;
    Ok(())
}

/// [`lock_order`] for each of `orders` (tenant, order id) in the order given, then the
/// stock rows of `skus` (tenant, SKU) and of every line held for those orders, in
/// (tenant, SKU) byte order — for a transaction that decides many orders (a batch of
/// the inventory pool). The lock order every path keeps is orders first, then stock
/// rows by SKU: taking all of a batch's locks up front in that order is what lets it
/// decide its orders one after the other without ever waiting for a lock out of order
/// (two batches, or a batch and a lone command, cannot deadlock). Callers pass
/// `orders` sorted; a lock taken again later in the transaction is already held.
pub async fn lock_many(
    tx: &mut PgConnection,
    orders: &[(&str, Uuid)],
    skus: &[(&str, &str)],
) -> Result<(), Error> {
    let (tenants, ids): (Vec<&str>, Vec<Uuid>) = orders.iter().copied().unzip();
    // A function scan yields the array's rows in order: the locks are taken in it.
    sqlx::query(
        "select pg_advisory_xact_lock($1, hashtext(o.tenant || '/' || o.order_id::text))
         from unnest($2::text[], $3::uuid[]) as o(tenant, order_id)",
    )
    .bind(ORDER_LOCK_CLASS)
    .bind(&tenants)
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    let (sku_tenants, sku_names): (Vec<&str>, Vec<&str>) = skus.iter().copied().unzip();
    // `collate "C"`: byte order, the order Rust sorts SKUs in on every other path.
    sqlx::query(
        r#"select 1 from stock s
         where (s.tenant, s.sku) in (
             select h.tenant, h.sku from stock_holds h
             join unnest($1::text[], $2::uuid[]) as o(tenant, order_id)
               on h.tenant = o.tenant and h.order_id = o.order_id
             union
             select * from unnest($3::text[], $4::text[]))
         order by s.tenant collate "C", s.sku collate "C"
         for update of s"#,
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(&sku_tenants)
    .bind(&sku_names)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The order's reservation, if any. Call under [`lock_order`].
pub async fn reservation(
    tx: &mut PgConnection,
    tenant: &str,
    order_id: Uuid,
) -> Result<Option<Reservation>, Error> {
    let row = sqlx::query(
        "select state, hold_until, hold_until <= now() as due, shortages, reserved_at, decided_at
         from stock_reservations where tenant = $1 and order_id = $2",
    )
    .bind(tenant)
    .bind(order_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let shortages: Option<serde_json::Value> = row.try_get("shortages")?;
    let shortages = match shortages {
        Some(v) => serde_json::from_value(v).map_err(|e| Error::Corrupt(format!("shortages: {e}")))?,
        None => Vec::new(),
    };
    let lines =
        sqlx::query("select sku, quantity from stock_holds where tenant = $1 and order_id = $2 order by sku collate \"C\"")
            .bind(tenant)
            .bind(order_id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| Ok(StockLine { sku: r.try_get("sku")?, quantity: r.try_get("quantity")? }))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(Some(Reservation {
        state: State::parse(row.try_get("state")?)?,
        hold_until: row.try_get("hold_until")?,
        due: row.try_get("due")?,
        shortages,
        reserved_at: row.try_get("reserved_at")?,
        decided_at: row.try_get("decided_at")?,
        lines,
    }))
}

/// Hold `quantity` of `sku` if that many are available: one conditional update, so no
/// interleaving of holds can take more than there is. `false` when short (or unknown).
pub async fn hold(tx: &mut PgConnection, tenant: &str, sku: &str, quantity: i64) -> Result<bool, Error> {
    let done = sqlx::query(
        "update stock set held = held + $3, updated_at = now()
         where tenant = $1 and sku = $2 and on_hand - held >= $3",
    )
    .bind(tenant)
    .bind(sku)
    .bind(quantity)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Units of `sku` available now (0 for an unknown SKU).
pub async fn available(tx: &mut PgConnection, tenant: &str, sku: &str) -> Result<i64, Error> {
    let n: Option<i64> =
        sqlx::query_scalar("select greatest(on_hand - held, 0) from stock where tenant = $1 and sku = $2")
            .bind(tenant)
            .bind(sku)
            .fetch_optional(tx)
            .await?;
    Ok(n.unwrap_or(0))
}

/// Record that `order_id`'s stock was released before any reservation of it arrived
/// (a release overtaking its reserve: the saga gave up while the reserve was queued),
/// with no lines, so that the reserve, when it comes, holds nothing
/// (`holds::reserve`). Nothing if a reservation exists.
pub async fn record_released_unreserved(
    tx: &mut PgConnection,
    tenant: &str,
    order_id: Uuid,
) -> Result<(), Error> {
    sqlx::query(
        "insert into stock_reservations (tenant, order_id, state, hold_until)
         values ($1, $2, 'released', now()) on conflict do nothing",
    )
    .bind(tenant)
    .bind(order_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Record the order's reservation: `Held` with its `lines`, or `Rejected` with its
/// `shortages` (and no lines). Returns `hold_until` and the time of the decision as
/// stored (at the database's precision), so the answer now and a replayed one later
/// say the same.
pub async fn record(
    tx: &mut PgConnection,
    tenant: &str,
    order_id: Uuid,
    hold_until: DateTime<Utc>,
    lines: &[StockLine],
    shortages: Option<&[Shortage]>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), Error> {
    let (state, shortages) = match shortages {
        Some(s) => {
            let json = serde_json::to_value(s).map_err(|e| Error::Corrupt(e.to_string()))?;
            (State::Rejected, Some(json))
        }
        None => (State::Held, None),
    };
    let stored: (DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "insert into stock_reservations (tenant, order_id, state, hold_until, shortages)
         values ($1, $2, $3, $4, $5) returning hold_until, decided_at",
    )
    .bind(tenant)
    .bind(order_id)
    .bind(state.as_str())
    .bind(hold_until)
    .bind(shortages)
    .fetch_one(&mut *tx)
    .await?;
    if state == State::Held {
        let skus: Vec<&str> = lines.iter().map(|l| l.sku.as_str()).collect();
        let quantities: Vec<i64> = lines.iter().map(|l| l.quantity).collect();
        sqlx::query(
            "insert into stock_holds (tenant, order_id, sku, quantity)
             select $1, $2, sku, quantity from unnest($3::text[], $4::bigint[]) as l(sku, quantity)",
        )
        .bind(tenant)
        .bind(order_id)
        .bind(&skus)
        .bind(&quantities)
        .execute(&mut *tx)
        .await?;
    }
    Ok(stored)
}

/// Move the order's reservation to `state` (its stock already moved).
pub async fn set_state(
    tx: &mut PgConnection,
    tenant: &str,
    order_id: Uuid,
    state: State,
) -> Result<(), Error> {
    sqlx::query(
        "update stock_reservations set state = $3, decided_at = now() where tenant = $1 and order_id = $2",
    )
    .bind(tenant)
    .bind(order_id)
    .bind(state.as_str())
    .execute(tx)
    .await?;
    Ok(())
}

/// What happens to one line's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Movement {
    /// Held → available (a release or an expiry). Units a seller withdrew while they
    /// were held leave on_hand instead.
    Unhold,
    /// Held → sold (a commit): they leave on_hand.
    Sell,
    /// Sold → available (a committed order cancelled). Returned units are real: they
    /// first back held units a seller withdrew (which then stay), the rest go on sale.
    Unsell,
}

/// Apply `movement` to each of `lines`, one SKU at a time in the order given (callers
/// pass them sorted by SKU).
pub async fn apply(
    tx: &mut PgConnection,
    tenant: &str,
    lines: &[StockLine],
    movement: Movement,
) -> Result<(), Error> {
    let sql = match movement {
        Movement::Unhold => {
            "update stock set held = held - $3, on_hand = on_hand - least($3, withdrawn),
                 withdrawn = withdrawn - least($3, withdrawn), updated_at = now()
             where tenant = $1 and sku = $2"
        }
        Movement::Sell => {
            "update stock set held = held - $3, on_hand = on_hand - $3, sold = sold + $3,
                 withdrawn = least(withdrawn, held - $3), updated_at = now()
             where tenant = $1 and sku = $2"
        }
        Movement::Unsell => {
            "update stock set sold = sold - $3, on_hand = on_hand + $3 - least($3, withdrawn),
                 withdrawn = withdrawn - least($3, withdrawn), updated_at = now()
             where tenant = $1 and sku = $2"
        }
    };
    for line in lines {
        let done = sqlx::query(sql)
            .bind(tenant)
            .bind(&line.sku)
            .bind(line.quantity)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if done != 1 {
            return Err(Error::Corrupt(format!("stock of {} is missing for a hold of it", line.sku)));
        }
    }
    Ok(())
}

/// Set `sku`'s units available to buy from a seller's write of its `stock`: the figure
/// a product read shows (`GET /v1/products/{sku}`: held units excluded), so a seller
/// who writes back what they read changes nothing. Units held for checkouts stay
/// promised beside it. The units on the shelf are the stock written + the units held
/// on the shelf when the write was accepted (`basis`: held − withdrawn) − the units
/// sold since; holds made since came out of the stock written (without a basis, those
/// of now). Units a seller withdrew stay withdrawn (still promised, not on the shelf),
/// and promises beyond the shelf are withdrawn too (on hand = held, available 0): on
/// hand = shelf + withdrawn. A product created again after its deletion (`revived`)
/// counts every held unit as on the shelf again, its withdrawals forgotten. Reviews
/// (twelfth session): a write set on hand, so writing back the available figure read
/// took the held units off sale for good; counted beside the holds at apply time, a
/// hold made while the write waited was counted twice; recomputed from nothing, a
/// write-back forgot the units withdrawn, and a shelf sold below zero broke
/// `withdrawn <= held` (the write was dead-lettered). Call under the catalog's SKU lock.
pub async fn set_available(
    tx: &mut PgConnection,
    tenant: &str,
    sku: &str,
    available: i64,
    basis: Option<StockBasis>,
    revived: bool,
) -> Result<(), Error> {
    // $6: revived. The shelf: the stock written + held then − withdrawn then − sold since.
    const SHELF: &str = "(excluded.on_hand + coalesce($4, stock.held)
                          - (case when $6 then 0 else coalesce($7, stock.withdrawn) end)
                          - (stock.sold - coalesce($5, stock.sold)))";
    // Withdrawn units stay withdrawn — but not more than the basis knew of: withdrawals
    // since were made by writes this one supersedes (fourth review).
    const KEPT: &str = "(case when $6 then 0 else least(stock.withdrawn, coalesce($7, stock.withdrawn)) end)";
    let sql = format!(
        "insert into stock (tenant, sku, on_hand) values ($1, $2, $3)
         on conflict (tenant, sku) do update set
             on_hand = greatest({SHELF}, 0) + least(stock.held, greatest({KEPT}, stock.held - {SHELF})),
             withdrawn = least(stock.held, greatest({KEPT}, stock.held - {SHELF})),
             updated_at = now()"
    );
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(sku)
        .bind(available)
        .bind(basis.map(|b| b.held))
        .bind(basis.map(|b| b.sold))
        .bind(revived)
        .bind(basis.map(|b| b.withdrawn))
        .execute(tx)
        .await?;
    Ok(())
}

/// What `sku`'s stock row counts now, as the basis of a write of its stock being
/// accepted (nothing held or sold when it has no row), and whether the write revives
/// the product (deleted or absent now).
pub async fn basis(db: impl PgExecutor<'_>, tenant: &str, sku: &str) -> Result<StockBasis, Error> {
    let skus = [sku.to_owned()];
    let mut found = bases(db, tenant, &skus).await?;
    Ok(found.remove(sku).unwrap_or_default()) // `bases` answers for every SKU asked
}

/// [`basis`] of each of `skus` (an import's chunk), in one query.
pub async fn bases(
    db: impl PgExecutor<'_>,
    tenant: &str,
    skus: &[String],
) -> Result<std::collections::HashMap<String, StockBasis>, Error> {
    let rows: Vec<(String, i64, i64, i64, bool)> = sqlx::query_as(
        "select k.sku, coalesce(s.held, 0), coalesce(s.sold, 0), coalesce(s.withdrawn, 0),
                p.sku is null or p.deleted_at is not null
         from unnest($2::text[]) as k(sku)
         left join stock s on s.tenant = $1 and s.sku = k.sku
         left join products p on p.tenant = $1 and p.sku = k.sku",
    )
    .bind(tenant)
    .bind(skus)
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(sku, held, sold, withdrawn, revives)| (sku, StockBasis { held, sold, withdrawn, revives }))
        .collect())
}

/// A deleted product has nothing to sell: nothing is available, and units held for
/// checkouts stay promised but are withdrawn — they leave on hand as their holds are
/// released (a commit sells them).
pub async fn withdraw_all(tx: &mut PgConnection, tenant: &str, sku: &str) -> Result<(), Error> {
    sqlx::query(
        "update stock set on_hand = held, withdrawn = held, updated_at = now()
         where tenant = $1 and sku = $2",
    )
    .bind(tenant)
    .bind(sku)
    .execute(tx)
    .await?;
    Ok(())
}

/// `sku`'s counts, if it has any.
pub async fn stock(pool: &PgPool, tenant: &str, sku: &str) -> Result<Option<Stock>, Error> {
    let row = sqlx::query(
        "select on_hand, held, sold, withdrawn, updated_at from stock where tenant = $1 and sku = $2",
    )
    .bind(tenant)
    .bind(sku)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some(Stock {
        on_hand: row.try_get("on_hand")?,
        held: row.try_get("held")?,
        sold: row.try_get("sold")?,
        withdrawn: row.try_get("withdrawn")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

/// Units available now of each of `skus` that has stock (a catalog listing's page).
pub async fn available_many(
    pool: &PgPool,
    tenant: &str,
    skus: &[String],
) -> Result<std::collections::HashMap<String, i64>, Error> {
    let rows = sqlx::query(
        "select sku, greatest(on_hand - held, 0) as available from stock where tenant = $1 and sku = any($2)",
    )
    .bind(tenant)
    .bind(skus)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|r| Ok((r.try_get("sku")?, r.try_get("available")?))).collect()
}

/// A held reservation whose time has come, locked for expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueHold {
    pub tenant: String,
    pub order_id: Uuid,
    pub hold_until: DateTime<Utc>,
    pub lines: Vec<StockLine>,
}

/// Lock (without waiting: an order being decided elsewhere is skipped) up to `limit`
/// held reservations whose time has come, earliest first, and read them — in a second
/// statement, so what is read is what committed before the locks were had (a commit
/// that held an order's lock until just now has its state seen).
pub async fn lock_due(tx: &mut PgConnection, limit: i64) -> Result<Vec<DueHold>, Error> {
    let locked: Vec<(String, Uuid)> = sqlx::query_as(
        "select tenant, order_id from (
             select tenant, order_id from stock_reservations
             where state = 'held' and hold_until <= now() order by hold_until limit $2
         ) due
         where pg_try_advisory_xact_lock($1, hashtext(tenant || '/' || order_id::text))",
    )
    .bind(ORDER_LOCK_CLASS)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if locked.is_empty() {
        return Ok(Vec::new());
    }
    let (tenants, ids): (Vec<String>, Vec<Uuid>) = locked.into_iter().unzip();
    let rows = sqlx::query(
        "select r.tenant, r.order_id, r.hold_until, h.sku, h.quantity
         from unnest($1::text[], $2::uuid[]) as l(tenant, order_id)
         join stock_reservations r on r.tenant = l.tenant and r.order_id = l.order_id
         join stock_holds h on h.tenant = r.tenant and h.order_id = r.order_id
         where r.state = 'held' and r.hold_until <= now()
         order by r.tenant collate \"C\", r.order_id, h.sku collate \"C\"",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut due: Vec<DueHold> = Vec::new();
    for row in &rows {
        let (tenant, order_id): (String, Uuid) = (row.try_get("tenant")?, row.try_get("order_id")?);
        let line = StockLine { sku: row.try_get("sku")?, quantity: row.try_get("quantity")? };
        match due.last_mut() {
            Some(d) if d.tenant == tenant && d.order_id == order_id => d.lines.push(line),
            _ => due.push(DueHold {
                tenant,
                order_id,
                hold_until: row.try_get("hold_until")?,
                lines: vec![line],
            }),
        }
    }
    Ok(due)
}

/// Move the reservations of `orders` (of `tenant`) to `state` in one statement.
pub async fn set_states(
    tx: &mut PgConnection,
    tenant: &str,
    orders: &[Uuid],
    state: State,
) -> Result<(), Error> {
    sqlx::query(
        "update stock_reservations set state = $3, decided_at = now() where tenant = $1 and order_id = any($2)",
    )
    .bind(tenant)
    .bind(orders)
    .bind(state.as_str())
    .execute(tx)
    .await?;
    Ok(())
}

/// When the earliest held reservation falls due, if any is held.
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, Error> {
    Ok(sqlx::query_scalar("select min(hold_until) from stock_reservations where state = 'held'")
        .fetch_one(pool)
        .await?)
}
