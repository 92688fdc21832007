//! Catalog events for tests: products and `ProductChanged` events crafted directly, and
//! published to EVT as the relay would publish them (with the schema header and a
//! message id of the test's choosing).

use async_nats::HeaderMap;
use souk_pipelines::{
    Message,
    catalog::{AttrValue, Product, ProductChanged, ProductFields},
    encode, headers,
};
use souk_topologies::publisher::{OutgoingMessage, Publisher};
use std::collections::BTreeMap;

/// A product of `seller` in tenant-independent form, at `version`, titled `title`.
pub fn product(sku: &str, seller: &str, version: i64, title: &str) -> Product {
    let at = chrono::DateTime::from_timestamp(1_790_000_000 + version * 60, 0).unwrap_or_default();
    Product {
        sku: sku.into(),
        seller: seller.into(),
        fields: ProductFields {
            title: title.into(),
            description: format!("{title}, version {version}"),
            category: "home/kitchen/mugs".into(),
            attributes: BTreeMap::from([("color".to_owned(), AttrValue::Text("red".into()))]),
            price_minor: 1000 + version,
            currency: "EUR".parse().expect("EUR"),
            stock: 5,
            images: Vec::new(),
        },
        version,
        created_at: at,
        updated_at: at,
    }
}

/// The event of `product` (in tenant `t1`) changing, or of `sku` being deleted at
/// `version` when `product` is `None`.
pub fn changed(sku: &str, seller: &str, version: i64, product: Option<Product>) -> ProductChanged {
    ProductChanged {
        tenant: "t1".into(),
        sku: sku.into(),
        seller: seller.into(),
        version,
        changed_at: product.as_ref().map_or_else(chrono::Utc::now, |p| p.updated_at),
        product,
    }
}

/// Publish `event` to EVT under `msg_id`; returns once stored.
pub async fn publish(publisher: &Publisher, msg_id: &str, event: &ProductChanged) -> anyhow::Result<()> {
    publish_raw(publisher, msg_id, encode(event), &ProductChanged::schema_header()).await
}

/// Publish any payload on the product-changed subject with `schema` as its schema header.
pub async fn publish_raw(
    publisher: &Publisher,
    msg_id: &str,
    payload: Vec<u8>,
    schema: &str,
) -> anyhow::Result<()> {
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEMA, schema);
    publisher
        .publish(OutgoingMessage {
            subject: ProductChanged::SUBJECT.into(),
            msg_id: msg_id.into(),
            headers: h,
            payload: payload.into(),
        })
        .await?;
    Ok(())
}

/// `items` in a deterministic shuffled order (an LCG seeded with `seed`): out of order,
/// and the same order on every run.
pub fn shuffled<T>(mut items: Vec<T>, seed: u64) -> Vec<T> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    for i in (1..items.len()).rev() {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let j = (state >> 33) as usize % (i + 1);
        items.swap(i, j);
    }
    items
}

/// The event that makes the index hold `doc` (the store's document as a catalog
/// product at its version).
pub fn changed_of(doc: &souk_stores::search::SearchDoc) -> ProductChanged {
    let product = Product {
        sku: doc.sku.clone(),
        seller: doc.seller.clone(),
        fields: ProductFields {
            title: doc.title.clone(),
            description: doc.description.clone(),
            category: doc.category.clone(),
            attributes: doc.attributes.clone(),
            price_minor: doc.price_minor,
            currency: doc.currency,
            stock: doc.stock,
            images: Vec::new(),
        },
        version: doc.version,
        created_at: doc.updated_at,
        updated_at: doc.updated_at,
    };
    ProductChanged {
        tenant: doc.tenant.clone(),
        sku: doc.sku.clone(),
        seller: doc.seller.clone(),
        version: doc.version,
        changed_at: doc.updated_at,
        product: Some(product),
    }
}

/// A product for sale: `sku` of `seller` at `price_minor` EUR, `stock` units.
pub fn for_sale(sku: &str, seller: &str, price_minor: i64, stock: i64) -> Product {
    let mut p = product(sku, seller, 1, sku);
    p.fields.price_minor = price_minor;
    p.fields.stock = stock;
    p
}

/// Put `products` live in `tenant`'s catalog through the catalog store, in one
/// transaction as the catalog pool writes them (SKU lock, next version, on-hand stock): for tests
/// that order them without running the catalog pipeline.
pub async fn seed(pool: &sqlx::PgPool, tenant: &str, products: &[Product]) -> anyhow::Result<()> {
    use souk_stores::postgres::products as store;
    let mut tx = pool.begin().await?;
    for p in products {
        let version = store::lock(&mut tx, tenant, &p.sku).await?.map_or(1, |s| s.product.version + 1);
        store::put(&mut tx, tenant, &p.sku, &p.seller, &p.fields, version, chrono::Utc::now()).await?;
        // As the catalog pool does: a product's stock is its on-hand units, which the
        // inventory pool reserves from (without it every saga is "out of stock").
        souk_stores::postgres::inventory::set_available(&mut tx, tenant, &p.sku, p.fields.stock, None, false)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Put each of `skus` on sale in `tenant` (seller `seller-1`, 1299 EUR, 10,000 in
/// stock): what [`crate::order_body`] orders.
pub async fn seed_skus(pool: &sqlx::PgPool, tenant: &str, skus: &[&str]) -> anyhow::Result<()> {
    let products: Vec<Product> = skus.iter().map(|sku| for_sale(sku, "seller-1", 1299, 10_000)).collect();
    seed(pool, tenant, &products).await
}
