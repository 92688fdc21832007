//! Products and catalog write outcomes in the system of record.
//!
//! Reads ([`get`], [`list_by_seller`], [`write_outcome`]) serve the ingress; the rest
//! is the catalog pool's transaction: [`lock`] the SKU, decide, then [`put`] or
//! [`mark_deleted`], and [`record_outcome`]. A product's version only grows; a delete
//! keeps the row (past orders point at it) and a later put revives it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use souk_pipelines::catalog::{AttrValue, Product, ProductFields};
use sqlx::{PgConnection, PgPool, Row, postgres::PgRow};
use std::collections::BTreeMap;
use uuid::Uuid;

use super::Error;

/// Advisory-lock class of catalog writes (the two-key form: its own key space, apart
/// from the relay's one-key lease).
const SKU_LOCK_CLASS: i32 = 0x0053_4b55; // "SKU"

/// A product row: the product, and when it was deleted (if it was).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProduct {
    pub product: Product,
    pub deleted_at: Option<DateTime<Utc>>,
    /// When the write that made this version was requested (`None` for rows written
    /// before migration 0015): an earlier-requested write arriving later is superseded.
    pub requested_at: Option<DateTime<Utc>>,
}

impl StoredProduct {
    pub fn is_deleted(&self) -> bool {
        self.deleted_at.is_some()
    }
}

const COLUMNS: &str = "sku, seller, title, description, category, attributes, price_minor, currency, stock, \
                       images, version, deleted_at, created_at, updated_at, requested_at";

fn from_row(row: &PgRow) -> Result<StoredProduct, Error> {
    let corrupt = |what: &str, e: &dyn std::fmt::Display| Error::Corrupt(format!("products.{what}: {e}"));
    let attributes: serde_json::Value = row.try_get("attributes")?;
    let attributes: BTreeMap<String, AttrValue> =
        serde_json::from_value(attributes).map_err(|e| corrupt("attributes", &e))?;
    let images: serde_json::Value = row.try_get("images")?;
    let images: Vec<String> = serde_json::from_value(images).map_err(|e| corrupt("images", &e))?;
    let currency: String = row.try_get("currency")?;
    let fields = ProductFields {
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        category: row.try_get("category")?,
        attributes,
        price_minor: row.try_get("price_minor")?,
        currency: currency.trim().parse().map_err(|e| corrupt("currency", &e))?,
        stock: row.try_get("stock")?,
        images,
    };
    Ok(StoredProduct {
        product: Product {
            sku: row.try_get("sku")?,
            seller: row.try_get("seller")?,
            fields,
            version: row.try_get("version")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
        },
        deleted_at: row.try_get("deleted_at")?,
        requested_at: row.try_get("requested_at")?,
    })
}

/// The product `sku` of `tenant`, deleted or not.
pub async fn get(pool: &PgPool, tenant: &str, sku: &str) -> Result<Option<StoredProduct>, Error> {
    let sql = format!("select {COLUMNS} from products where tenant = $1 and sku = $2");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(sku).fetch_optional(pool).await?;
    row.as_ref().map(from_row).transpose()
}

/// The live (not deleted) products of `seller`, by SKU, starting after `after` (the
/// last SKU of the previous page: keyset pagination, stable while products change).
pub async fn list_by_seller(
    pool: &PgPool,
    tenant: &str,
    seller: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Product>, Error> {
    let sql = format!(
        "select {COLUMNS} from products
         where tenant = $1 and seller = $2 and deleted_at is null and ($3::text is null or sku > $3)
         order by sku limit $4"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(seller)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?;
    rows.iter().map(|r| from_row(r).map(|p| p.product)).collect()
}

/// Every live product of `tenant`, by SKU, after `after` (a reindex reads the catalog
/// in pages this way).
pub async fn list_all(
    pool: &PgPool,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Product>, Error> {
    let sql = format!(
        "select {COLUMNS} from products
         where tenant = $1 and deleted_at is null and ($2::text is null or sku > $2)
         order by sku limit $3"
    );
    let rows =
        sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(after).bind(limit).fetch_all(pool).await?;
    rows.iter().map(|r| from_row(r).map(|p| p.product)).collect()
}

/// Take the write lock of `sku` for the current transaction and read its row. Writes of
/// one SKU serialise here — also when it has no row yet, which a row lock alone cannot
/// cover (two first writes would both insert) — so a write decides on the state the
/// previous one committed.
pub async fn lock(tx: &mut PgConnection, tenant: &str, sku: &str) -> Result<Option<StoredProduct>, Error> {
    sqlx::query("select pg_advisory_xact_lock($1, hashtext($2 || '/' || $3))")
        .bind(SKU_LOCK_CLASS)
        .bind(tenant)
        .bind(sku)
        .execute(&mut *tx)
        .await?;
    let sql = format!("select {COLUMNS} from products where tenant = $1 and sku = $2 for update");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(sku).fetch_optional(&mut *tx).await?;
    row.as_ref().map(from_row).transpose()
}

/// Write `fields` as `sku` at `version`, live (a deleted product is revived; its
/// `created_at` kept), by a write requested at `requested_at`. Call under [`lock`].
/// Returns the stored product.
#[allow(clippy::too_many_arguments)] // the row's key, owner, content and write
pub async fn put(
    tx: &mut PgConnection,
    tenant: &str,
    sku: &str,
    seller: &str,
    fields: &ProductFields,
    version: i64,
    requested_at: DateTime<Utc>,
) -> Result<Product, Error> {
    let json = |v: serde_json::Result<serde_json::Value>| v.map_err(|e| Error::Corrupt(e.to_string()));
    let sql = format!(
        "insert into products (tenant, sku, seller, title, description, category, attributes, price_minor,
                               currency, stock, images, version, requested_at)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         on conflict (tenant, sku) do update set
             seller = excluded.seller, title = excluded.title, description = excluded.description,
             category = excluded.category, attributes = excluded.attributes,
             price_minor = excluded.price_minor, currency = excluded.currency, stock = excluded.stock,
             images = excluded.images, version = excluded.version, deleted_at = null, updated_at = now(),
             requested_at = excluded.requested_at
             where products.version < excluded.version
         returning {COLUMNS}"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(sku)
        .bind(seller)
        .bind(&fields.title)
        .bind(&fields.description)
        .bind(&fields.category)
        .bind(json(serde_json::to_value(&fields.attributes))?)
        .bind(fields.price_minor)
        .bind(fields.currency.code())
        .bind(fields.stock)
        .bind(json(serde_json::to_value(&fields.images))?)
        .bind(version)
        .bind(requested_at)
        .fetch_optional(tx)
        .await?
        .ok_or_else(|| {
            Error::Corrupt(format!("product {sku}: version {version} is not newer than the stored one"))
        })?;
    Ok(from_row(&row)?.product)
}

/// Soft-delete `sku` at `version` (the row stays), by a write requested at
/// `requested_at`. Call under [`lock`].
pub async fn mark_deleted(
    tx: &mut PgConnection,
    tenant: &str,
    sku: &str,
    version: i64,
    requested_at: DateTime<Utc>,
) -> Result<(), Error> {
    let done = sqlx::query(
        "update products set deleted_at = now(), updated_at = now(), version = $3, requested_at = $4
         where tenant = $1 and sku = $2 and deleted_at is null and version < $3",
    )
    .bind(tenant)
    .bind(sku)
    .bind(version)
    .bind(requested_at)
    .execute(tx)
    .await?
    .rows_affected();
    if done == 1 {
        Ok(())
    } else {
        Err(Error::Corrupt(format!("product {sku}: nothing to delete at {version}")))
    }
}

/// What became of a catalog write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Outcome {
    /// Stored as the product's `version`.
    Applied { version: i64 },
    /// Not stored, for `reason`.
    Rejected { reason: String },
    /// Not applied: its command was dead-lettered, or never handled before its claim
    /// expired (`reason`). Not final: a redrive that applies it replaces this.
    Failed { reason: String },
}

/// A decided catalog write, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteRecord {
    pub write_id: Uuid,
    pub seller: String,
    pub sku: String,
    /// The principal that asked.
    pub actor: String,
    #[serde(flatten)]
    pub outcome: Outcome,
    pub decided_at: DateTime<Utc>,
}

/// Whether `write_id` was decided already (a replay under another message id). A write
/// recorded `failed` is not decided: a redrive may still apply it.
pub async fn write_decided(tx: &mut PgConnection, tenant: &str, write_id: Uuid) -> Result<bool, Error> {
    Ok(sqlx::query_scalar::<_, i32>(
        "select 1 from catalog_writes where tenant = $1 and write_id = $2 and outcome <> 'failed'",
    )
    .bind(tenant)
    .bind(write_id)
    .fetch_optional(tx)
    .await?
    .is_some())
}

/// Record the outcome of a write, in its transaction (replacing a `failed` record: a
/// redrive that got further than the dead letter).
pub async fn record_outcome(
    tx: &mut PgConnection,
    tenant: &str,
    write_id: Uuid,
    seller: &str,
    sku: &str,
    actor: &str,
    outcome: &Outcome,
) -> Result<(), Error> {
    let (kind, version, reason) = match outcome {
        Outcome::Applied { version } => ("applied", Some(*version), None),
        Outcome::Rejected { reason } => ("rejected", None, Some(reason.as_str())),
        Outcome::Failed { reason } => ("failed", None, Some(reason.as_str())),
    };
    let done = sqlx::query(
        "insert into catalog_writes (tenant, write_id, seller, sku, actor, outcome, version, reason)
         values ($1, $2, $3, $4, $5, $6, $7, $8)
         on conflict (tenant, write_id) do update set
             seller = excluded.seller, sku = excluded.sku, actor = excluded.actor,
             outcome = excluded.outcome, version = excluded.version, reason = excluded.reason,
             decided_at = now()
             where catalog_writes.outcome = 'failed'",
    )
    .bind(tenant)
    .bind(write_id)
    .bind(seller)
    .bind(sku)
    .bind(actor)
    .bind(kind)
    .bind(version)
    .bind(reason)
    .execute(tx)
    .await?
    .rows_affected();
    if done == 1 {
        Ok(())
    } else {
        Err(Error::Corrupt(format!("catalog write {write_id} was decided already")))
    }
}

/// A catalog write as its dead letter names it.
#[derive(Debug, Clone, Copy)]
pub struct FailedWrite<'a> {
    pub tenant: &'a str,
    pub write_id: Uuid,
    pub seller: &'a str,
    pub sku: &'a str,
    pub actor: &'a str,
}

/// Record `write` `failed` for `reason` unless it has an outcome already. Returns
/// whether it was recorded.
pub async fn mark_failed(
    tx: &mut PgConnection,
    write: &FailedWrite<'_>,
    reason: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "insert into catalog_writes (tenant, write_id, seller, sku, actor, outcome, reason)
         values ($1, $2, $3, $4, $5, 'failed', $6)
         on conflict (tenant, write_id) do nothing",
    )
    .bind(write.tenant)
    .bind(write.write_id)
    .bind(write.seller)
    .bind(write.sku)
    .bind(write.actor)
    .bind(reason)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// Record the write of a catalog claim (`write_id`, the claim's id) `failed` for
/// `reason` unless it has an outcome: an unreadable dead letter, whose seller and SKU
/// are unknown (stored empty); its sender, the claim's principal, can read it.
pub async fn mark_failed_from_claim(
    tx: &mut PgConnection,
    write_id: Uuid,
    reason: &str,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "insert into catalog_writes (tenant, write_id, seller, sku, actor, outcome, reason)
         select k.tenant, k.order_id, '', '', k.principal, 'failed', $2
         from idempotency_keys k where k.order_id = $1 and k.key like 'catalog.write %'
         on conflict (tenant, write_id) do nothing",
    )
    .bind(write_id)
    .bind(reason)
    .execute(tx)
    .await?
    .rows_affected();
    Ok(done >= 1)
}

/// The outcome of `write_id` of `tenant`, once the catalog pool decided it.
pub async fn write_outcome(
    pool: &PgPool,
    tenant: &str,
    write_id: Uuid,
) -> Result<Option<WriteRecord>, Error> {
    let row = sqlx::query(
        "select write_id, seller, sku, actor, outcome, version, reason, decided_at
         from catalog_writes where tenant = $1 and write_id = $2",
    )
    .bind(tenant)
    .bind(write_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let outcome = match (
        row.try_get::<String, _>("outcome")?.as_str(),
        row.try_get("version")?,
        row.try_get("reason")?,
    ) {
        ("applied", Some(version), _) => Outcome::Applied { version },
        ("rejected", _, Some(reason)) => Outcome::Rejected { reason },
        ("failed", _, Some(reason)) => Outcome::Failed { reason },
        (other, ..) => return Err(Error::Corrupt(format!("catalog_writes.outcome {other:?}"))),
    };
    Ok(Some(WriteRecord {
        write_id: row.try_get("write_id")?,
        seller: row.try_get("seller")?,
        sku: row.try_get("sku")?,
        actor: row.try_get("actor")?,
        outcome,
        decided_at: row.try_get("decided_at")?,
    }))
}

/// The products `skus` of `tenant` (deleted ones too; missing SKUs have no entry), in
/// one round trip: what an order or a cart is priced from.
pub async fn get_many(pool: &PgPool, tenant: &str, skus: &[String]) -> Result<Vec<StoredProduct>, Error> {
    let sql = format!("select {COLUMNS} from products where tenant = $1 and sku = any($2)");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(skus).fetch_all(pool).await?;
    rows.iter().map(from_row).collect()
}

/// A product row with the units of its SKU available now (on hand less held; `None`
/// when the inventory has no row for it).
pub type WithAvailable = (StoredProduct, Option<i64>);

/// [`COLUMNS`] of the products table aliased `p`, for reads that join it.
pub(super) fn columns_of_p() -> String {
    COLUMNS.split(',').map(|c| format!("p.{}", c.trim())).collect::<Vec<_>>().join(", ")
}

/// The row of `products p` left-joined to `stock s` in `row` (`None` when it matched
/// no product), with `available`.
pub(super) fn with_available_from_row(row: &PgRow) -> Result<Option<WithAvailable>, Error> {
    let sku: Option<String> = row.try_get("sku")?;
    if sku.is_none() {
        return Ok(None);
    }
    Ok(Some((from_row(row)?, row.try_get("available")?)))
}

/// [`get_many`] and each product's available units, in one query.
pub async fn get_many_with_available(
    pool: &PgPool,
    tenant: &str,
    skus: &[String],
) -> Result<Vec<WithAvailable>, Error> {
    let sql = format!(
        "select {}, greatest(s.on_hand - s.held, 0) as available
         from products p left join stock s on s.tenant = p.tenant and s.sku = p.sku
         where p.tenant = $1 and p.sku = any($2)",
        columns_of_p()
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(tenant).bind(skus).fetch_all(pool).await?;
    rows.iter().filter_map(|r| with_available_from_row(r).transpose()).collect()
}
