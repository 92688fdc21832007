//! Catalog: the `WriteProduct` command and the `ProductChanged` event.
//!
//! Sellers write products through the ingress (and `souk jobs submit catalog-import`,
//! and `souk seed catalog`, all through the same command). The catalog pool applies a
//! write to Postgres, where a product's `version` only grows (every applied write, a
//! delete included, takes the next one), and emits `ProductChanged` with the whole
//! product through the outbox, so the indexer never reads Postgres.
//!
//! Validation ([`validate`]): every rule of a product, its patch and its command,
//! against the category schema shipped with souk ([`crate::categories`]), returning
//! every field error at once. The ingress, the import job and the catalog pool all call
//! the same functions.

mod json;
mod validate;

pub use crate::orders::FieldError;
pub use json::parse_json;
pub use validate::{
    MAX_ATTRIBUTES, MAX_DESCRIPTION_CHARS, MAX_IMAGE_URL_BYTES, MAX_IMAGES, MAX_PRICE_MINOR,
    MAX_SELLER_ID_LEN, MAX_STOCK, MAX_TITLE_CHARS, check_seller_id, check_sku, check_text,
};

use crate::{Currency, Message, subjects};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A typed attribute value. Which type a key takes is decided per category by the
/// category schema shipped with souk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    Number(f64),
    Text(String),
}

/// A product as a seller describes it: the body of `PUT /v1/sellers/{seller}/products/{sku}`
/// and one row of an import file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProductFields {
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Category path, e.g. `home/kitchen/mugs`.
    pub category: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
    /// Price of one unit in minor units of `currency`.
    pub price_minor: i64,
    pub currency: Currency,
    /// Units available to buy: read, held units excluded (units promised to checkouts
    /// in progress); written, the units to sell beside those held — so a product
    /// written back as read keeps its stock.
    pub stock: i64,
    /// Absolute https URLs; validated, never fetched.
    #[serde(default)]
    pub images: Vec<String>,
}

/// The body of `PATCH /v1/sellers/{seller}/products/{sku}`: only what changes.
/// An attribute set to `null` is removed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ProductPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Units available to buy beside those held for checkouts (as `ProductFields::stock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::attribute_patch))]
    pub attributes: Option<BTreeMap<String, Option<AttrValue>>>,
}

/// What a write does to the product.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum ProductChange {
    /// Create or replace.
    Put { fields: ProductFields },
    /// Change some fields of an existing (not deleted) product.
    Patch { patch: ProductPatch },
    /// Soft delete: gone from search and reads, kept for past orders.
    Delete,
}

impl ProductChange {
    /// Whether the write names a stock figure (a `Put`, or a `Patch` with `stock`):
    /// only then do the units available follow it. A patch of the price keeps the
    /// stored fields' stock, the seller's last figure, not what is left after sales.
    pub fn states_stock(&self) -> bool {
        match self {
            ProductChange::Put { .. } => true,
            ProductChange::Patch { patch } => patch.stock.is_some(),
            ProductChange::Delete => false,
        }
    }
}

/// Command: change one product. Published by the ingress (and the import job, and
/// `souk seed`) once the request is authorised and validated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteProduct {
    /// Fixed by the idempotency claim: a retried request republishes the same write.
    pub write_id: Uuid,
    pub tenant: String,
    pub seller: String,
    pub sku: String,
    /// `If-Match`: apply only if the stored version is still this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_version: Option<i64>,
    pub change: ProductChange,
    /// The principal (`sub`) that asked.
    pub actor: String,
    pub requested_at: DateTime<Utc>,
    /// The SKU's held and sold units when the write was accepted, for a write that states
    /// `stock` (absent from older writers and from seeds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stock_basis: Option<StockBasis>,
}

/// What a SKU's stock row counted when a write of its `stock` was accepted. `stock` is
/// the units available then, beside the units held that are on the shelf (`held -
/// withdrawn`); applied later (the command waits in CMD, an import's rows wait their
/// chunk), the units on the shelf are `stock + held - withdrawn - (sold now - sold)`:
/// holds made since came out of the stock written, and units sold since came out of
/// the holds or the stock of then. Without it (read at apply), a write racing new
/// holds counted them twice — units for sale that no shelf held (review, twelfth
/// session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct StockBasis {
    pub held: i64,
    pub sold: i64,
    /// Of `held`, the units a seller took away (promised, not on the shelf): not beside
    /// the stock written.
    #[serde(default)]
    pub withdrawn: i64,
    /// The product was deleted (or absent): the write creates it again, and every held
    /// unit counts on its shelf — also when another write revived it before this one
    /// applies.
    #[serde(default)]
    pub revives: bool,
}

impl WriteProduct {
    /// Its `Nats-Msg-Id`, from the write id: a retried request (same idempotency claim,
    /// same write id) or a re-run import row is deduplicated by JetStream and by the
    /// catalog pool's inbox. Publish with
    /// `OutgoingMessage::command(&cmd, cmd.message_id(), &cmd.tenant)`.
    pub fn message_id(&self) -> String {
        format!("{}:{}:{}", Self::SCHEMA, self.tenant, self.write_id)
    }
}

impl Message for WriteProduct {
    const SUBJECT: &'static str = subjects::CATALOG_WRITE;
    const SCHEMA: &'static str = "catalog.write";
    const VERSION: u16 = 1;
}

/// A product as stored, with its version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Product {
    pub sku: String,
    pub seller: String,
    #[serde(flatten)]
    pub fields: ProductFields,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Event: a product changed. Carries the whole product (or none: deleted), so a
/// consumer needs nothing else; `version` orders the changes of one SKU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProductChanged {
    pub tenant: String,
    pub sku: String,
    pub seller: String,
    pub version: i64,
    /// `None`: the product was deleted at `version`.
    pub product: Option<Product>,
    pub changed_at: DateTime<Utc>,
}

impl Message for ProductChanged {
    const SUBJECT: &'static str = subjects::CATALOG_PRODUCT_CHANGED;
    const SCHEMA: &'static str = "catalog.product-changed";
    const VERSION: u16 = 1;
}

#[cfg(test)]
mod tests;
