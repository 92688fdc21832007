//! Carts (migration 0019): one per buyer, its items with the price the buyer last saw,
//! and the checkouts that emptied it.
//!
//! Every change of a cart first upserts its `carts` row, which takes that row's lock:
//! changes of one cart serialise there, so the item bound holds under concurrency (two
//! puts of new SKUs into a cart one short of full cannot both pass the count).

use chrono::{DateTime, Utc};
use souk_pipelines::{
    Currency,
    orders::{CartLine, CheckedOutCart},
};
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use super::Error;

/// One line of a cart as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartItem {
    pub sku: String,
    pub quantity: i64,
    /// The unit price and currency when the buyer last put this line.
    pub seen_price_minor: i64,
    pub seen_currency: Currency,
    pub updated_at: DateTime<Utc>,
}

impl CartItem {
    /// This line as a checkout read it (what its order takes out of the cart).
    pub fn as_read(&self) -> CartLine {
        CartLine { sku: self.sku.clone(), quantity: self.quantity, put_at: self.updated_at }
    }
}

/// What a put did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    /// The line is stored (added or its quantity replaced).
    Stored,
    /// Not stored: the cart already holds `max_items` other SKUs.
    Full,
}

/// The items of `buyer`'s cart, by SKU.
pub async fn items(pool: &PgPool, tenant: &str, buyer: &str) -> Result<Vec<CartItem>, Error> {
    let rows = sqlx::query(
        "select sku, quantity, seen_price_minor, seen_currency, updated_at
         from cart_items where tenant = $1 and buyer_id = $2 order by sku",
    )
    .bind(tenant)
    .bind(buyer)
    .fetch_all(pool)
    .await?;
    rows.iter().map(|row| item_from_row(row, "")).collect()
}

/// The items of `buyer`'s cart, by SKU, and the tenant's products among them (deleted
/// or not) with their available units: one query for what pricing a cart needs.
pub async fn items_with_products(
    pool: &PgPool,
    tenant: &str,
    buyer: &str,
) -> Result<(Vec<CartItem>, Vec<super::products::WithAvailable>), Error> {
    let sql = format!(
        "select i.sku as item_sku, i.quantity as item_quantity, i.seen_price_minor, i.seen_currency,
                i.updated_at as item_updated_at, {}, greatest(s.on_hand - s.held, 0) as available
         from cart_items i
         left join products p on p.tenant = i.tenant and p.sku = i.sku
         left join stock s on s.tenant = i.tenant and s.sku = i.sku
         where i.tenant = $1 and i.buyer_id = $2 order by i.sku",
        super::products::columns_of_p()
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(buyer).fetch_all(pool).await?;
    let mut items = Vec::with_capacity(rows.len());
    let mut products = Vec::with_capacity(rows.len());
    for row in &rows {
        items.push(item_from_row(row, "item_")?);
        products.extend(super::products::with_available_from_row(row)?);
    }
    Ok((items, products))
}

/// A cart item from `row`, whose item columns are named with `prefix` where they
/// could clash with a joined table's (`sku`, `quantity`, `updated_at`).
fn item_from_row(row: &sqlx::postgres::PgRow, prefix: &str) -> Result<CartItem, Error> {
    let currency: String = row.try_get("seen_currency")?;
    Ok(CartItem {
        sku: row.try_get(format!("{prefix}sku").as_str())?,
        quantity: row.try_get(format!("{prefix}quantity").as_str())?,
        seen_price_minor: row.try_get("seen_price_minor")?,
        seen_currency: currency
            .trim()
            .parse()
            .map_err(|e| Error::Corrupt(format!("cart_items.seen_currency: {e}")))?,
        updated_at: row.try_get(format!("{prefix}updated_at").as_str())?,
    })
}

/// Lock `buyer`'s cart for the rest of the transaction (creating it if need be).
async fn lock(tx: &mut PgConnection, tenant: &str, buyer: &str) -> Result<(), Error> {
    sqlx::query(
        "insert into carts (tenant, buyer_id) values ($1, $2)
         on conflict (tenant, buyer_id) do update set updated_at = now()",
    )
    .bind(tenant)
    .bind(buyer)
    .execute(tx)
    .await?;
    Ok(())
}

/// Put `quantity` of `sku` in `buyer`'s cart (replacing the line's quantity), seen at
/// `price` — unless that would make more than `max_items` lines.
pub async fn put_item(
    pool: &PgPool,
    tenant: &str,
    buyer: &str,
    sku: &str,
    quantity: i64,
    price: (i64, Currency),
    max_items: usize,
) -> Result<Put, Error> {
    let mut tx = super::begin(pool).await?;
    lock(&mut tx, tenant, buyer).await?;
    let (lines, has_sku): (i64, bool) = sqlx::query_as(
        "select count(*), coalesce(bool_or(sku = $3), false) from cart_items where tenant = $1 and buyer_id = $2",
    )
    .bind(tenant)
    .bind(buyer)
    .bind(sku)
    .fetch_one(&mut *tx)
    .await?;
    if !has_sku && lines >= max_items as i64 {
        return Ok(Put::Full);
    }
    sqlx::query(
        "insert into cart_items (tenant, buyer_id, sku, quantity, seen_price_minor, seen_currency)
         values ($1, $2, $3, $4, $5, $6)
         on conflict (tenant, buyer_id, sku) do update set
             quantity = excluded.quantity, seen_price_minor = excluded.seen_price_minor,
             seen_currency = excluded.seen_currency,
             updated_at = case when cart_items.quantity = excluded.quantity
                               then cart_items.updated_at else now() end",
    )
    .bind(tenant)
    .bind(buyer)
    .bind(sku)
    .bind(quantity)
    .bind(price.0)
    .bind(price.1.code())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Put::Stored)
}

/// Take `sku` out of `buyer`'s cart; whether it was there.
pub async fn remove_item(pool: &PgPool, tenant: &str, buyer: &str, sku: &str) -> Result<bool, Error> {
    let done = sqlx::query("delete from cart_items where tenant = $1 and buyer_id = $2 and sku = $3")
        .bind(tenant)
        .bind(buyer)
        .bind(sku)
        .execute(pool)
        .await?
        .rows_affected();
    Ok(done == 1)
}

/// What [`begin_checkout`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckoutClaim {
    /// Claimed now: the cart was free (or its claim had expired).
    Fresh,
    /// Claimed again by a retry under the key that held it: an earlier request under
    /// the key may have stored an order of this cart.
    Renewed,
    /// A checkout under another key holds it (claimed less than its hold ago).
    Busy,
}

/// Claim `buyer`'s cart for the checkout under `key` for `hold`, unless a checkout
/// under another key holds it (claimed less than its hold ago, not finished). The same
/// key may claim it again (a retry): [`CheckoutClaim::Renewed`]. Migration 0028.
pub async fn begin_checkout(
    pool: &PgPool,
    tenant: &str,
    buyer: &str,
    key: &str,
    hold: std::time::Duration,
) -> Result<(CheckoutClaim, Option<DateTime<Utc>>), Error> {
    // `before` reads the claim as the statement's snapshot saw it, ahead of the upsert.
    let claimed: Option<(bool, DateTime<Utc>)> = sqlx::query_as(
        "with before as (
             select checkout_key = $3 and checkout_until >= now() as held
             from carts where tenant = $1 and buyer_id = $2
         )
         insert into carts (tenant, buyer_id, checkout_key, checkout_until)
         values ($1, $2, $3, now() + make_interval(secs => $4))
         on conflict (tenant, buyer_id) do update
           set checkout_key = excluded.checkout_key, checkout_until = excluded.checkout_until
           where carts.checkout_key is null or carts.checkout_key = excluded.checkout_key
              or carts.checkout_until < now()
         returning coalesce((select held from before), false), checkout_until",
    )
    .bind(tenant)
    .bind(buyer)
    .bind(key)
    .bind(hold.as_secs_f64())
    .fetch_optional(pool)
    .await?;
    Ok(match claimed {
        None => (CheckoutClaim::Busy, None),
        Some((false, until)) => (CheckoutClaim::Fresh, Some(until)),
        Some((true, until)) => (CheckoutClaim::Renewed, Some(until)),
    })
}

/// Give up the claim of `buyer`'s cart under `key` that [`begin_checkout`] made until
/// `until` (a checkout refused: nothing placed). A claim renewed since — a retry under
/// the same key, whose order may be stored by now — is left alone (review, twelfth
/// session: a slow first request giving the claim up let a third under another key
/// order the cart its retry had just ordered).
pub async fn end_checkout(
    pool: &PgPool,
    tenant: &str,
    buyer: &str,
    key: &str,
    until: DateTime<Utc>,
) -> Result<(), Error> {
    sqlx::query(
        "update carts set checkout_key = null, checkout_until = null
         where tenant = $1 and buyer_id = $2 and checkout_key = $3 and checkout_until = $4",
    )
    .bind(tenant)
    .bind(buyer)
    .bind(key)
    .bind(until)
    .execute(pool)
    .await?;
    Ok(())
}

/// Record that order `order_id` took `taken` (the lines as the checkout read them) out
/// of `buyer`'s cart, and empty them from it, in one transaction: the ingress's
/// emptying after the PubAck. A line the buyer changed meanwhile (another quantity, or
/// removed and put back after the read: its `updated_at` is later) stays: it is not
/// what was ordered. Recording the same order again changes nothing. The checkout's
/// claim under `key` ends with it (also when the order was recorded before: the orders
/// pool empties checkouts too, [`empty_checked_out`], and a retry renews the claim).
pub async fn checked_out(
    pool: &PgPool,
    tenant: &str,
    buyer: &str,
    key: &str,
    order_id: Uuid,
    taken: &[CartItem],
) -> Result<(), Error> {
    let cart = CheckedOutCart { key: key.to_owned(), lines: taken.iter().map(CartItem::as_read).collect() };
    let mut tx = super::begin(pool).await?;
    empty(&mut tx, tenant, buyer, order_id, &cart, true).await?;
    tx.commit().await?;
    Ok(())
}

/// [`checked_out`] inside the caller's transaction, for the orders pool placing the
/// order of `cart`: true when this recorded the checkout (the ingress had not), and
/// only then is the claim ended and are the lines taken out.
pub async fn empty_checked_out(
    conn: &mut PgConnection,
    tenant: &str,
    buyer: &str,
    order_id: Uuid,
    cart: &CheckedOutCart,
) -> Result<bool, Error> {
    empty(conn, tenant, buyer, order_id, cart, false).await
}

/// The emptying. Locks in the same order wherever it runs — the checkout's record
/// (the ingress and the orders pool may empty one checkout at once: the second waits
/// for the first and finds it recorded), then the cart's row (as every cart change
/// takes it first), then its lines — so the two never deadlock.
async fn empty(
    conn: &mut PgConnection,
    tenant: &str,
    buyer: &str,
    order_id: Uuid,
    cart: &CheckedOutCart,
    end_claim_anyway: bool,
) -> Result<bool, Error> {
    let ordered: Vec<(&str, i64)> = cart.lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
    let json = serde_json::to_value(&ordered).map_err(|e| Error::Corrupt(e.to_string()))?;
    let fresh = sqlx::query(
        "insert into cart_checkouts (tenant, buyer_id, order_id, lines) values ($1, $2, $3, $4)
         on conflict do nothing",
    )
    .bind(tenant)
    .bind(buyer)
    .bind(order_id)
    .bind(json)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        == 1;
    if fresh || end_claim_anyway {
        sqlx::query(
            "update carts set updated_at = now(),
               checkout_key = nullif(checkout_key, $3),
               checkout_until = case when checkout_key = $3 then null else checkout_until end
             where tenant = $1 and buyer_id = $2",
        )
        .bind(tenant)
        .bind(buyer)
        .bind(&cart.key)
        .execute(&mut *conn)
        .await?;
    }
    if fresh {
        let skus: Vec<&str> = cart.lines.iter().map(|l| l.sku.as_str()).collect();
        let quantities: Vec<i64> = cart.lines.iter().map(|l| l.quantity).collect();
        let put_at: Vec<DateTime<Utc>> = cart.lines.iter().map(|l| l.put_at).collect();
        sqlx::query(
            "delete from cart_items i
             using unnest($3::text[], $4::bigint[], $5::timestamptz[]) as l(sku, quantity, put_at)
             where i.tenant = $1 and i.buyer_id = $2 and i.sku = l.sku and i.quantity = l.quantity
               and i.updated_at = l.put_at",
        )
        .bind(tenant)
        .bind(buyer)
        .bind(&skus)
        .bind(&quantities)
        .bind(&put_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(fresh)
}

/// The lines (sku, quantity) order `order_id` took out of `buyer`'s cart, if a
/// checkout recorded it.
pub async fn checkout_lines(
    pool: &PgPool,
    tenant: &str,
    buyer: &str,
    order_id: Uuid,
) -> Result<Option<Vec<(String, i64)>>, Error> {
    let lines: Option<serde_json::Value> = sqlx::query_scalar(
        "select lines from cart_checkouts where tenant = $1 and buyer_id = $2 and order_id = $3",
    )
    .bind(tenant)
    .bind(buyer)
    .bind(order_id)
    .fetch_optional(pool)
    .await?;
    lines
        .map(|l| serde_json::from_value(l).map_err(|e| Error::Corrupt(format!("cart_checkouts.lines: {e}"))))
        .transpose()
}
