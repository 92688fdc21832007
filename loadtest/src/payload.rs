//! The order every phase sends: one realistic `POST /v1/orders` body, the catalog
//! products it orders (seeded before the souk phases: the ingress prices orders from
//! the catalog), and the `PlaceOrder` command the ingress makes of it (what the raw
//! baselines publish and insert, so every phase moves the same bytes).

use bytes::Bytes;
use souk_pipelines::{
    Message, encode,
    orders::{OrderLine, PlaceOrder, PlaceOrderRequest},
    pricing::{self, Listing, PricedOrder},
};
use std::collections::HashMap;
use uuid::Uuid;

/// Tenant of every benchmark order.
pub const TENANT: &str = "bench";

/// Distinct buyers the orders are spread over, so the `(tenant, buyer_id, created_at)`
/// index sees many keys, as it would in production, instead of one hot leaf page.
pub const BUYERS: usize = 100;

/// The buyer of the `n`th request or row.
pub fn buyer(n: u64) -> String {
    format!("bench-buyer-{}", n % BUYERS as u64)
}

/// The products the sample orders: (SKU, seller, unit price in EUR minor units). Two
/// sellers, as a marketplace order often has.
pub const PRODUCTS: [(&str, &str, i64); 2] =
    [("MUG-STONEWARE-330ML-BLUE", "bench-potter", 1299), ("TEA-EARLGREY-LOOSE-250G", "bench-grocer", 849)];

/// Stock of each product: more than any run orders of one line (the ingress checks a
/// line's quantity against it; nothing in the benchmark decrements it).
pub const STOCK: i64 = 1_000_000_000;

/// The order, in both forms.
#[derive(Debug, Clone)]
pub struct Sample {
    pub request: PlaceOrderRequest,
    /// The HTTP body.
    pub body: Bytes,
    /// The order as the catalog prices it.
    pub priced: PricedOrder,
    /// A `PlaceOrder` command as the ingress publishes it.
    pub command: Bytes,
}

impl Sample {
    pub fn new() -> anyhow::Result<Sample> {
        let request = PlaceOrderRequest {
            lines: vec![
                OrderLine { sku: PRODUCTS[0].0.into(), quantity: 2 },
                OrderLine { sku: PRODUCTS[1].0.into(), quantity: 1 },
            ],
            payment_token: "tok_ok".into(),
            expected_total_minor: None,
            expected_currency: None,
        };
        request.validate().map_err(|e| anyhow::anyhow!("the sample order is invalid: {e:?}"))?;
        let listings: HashMap<&str, Listing> = PRODUCTS
            .iter()
            .map(|&(sku, seller, price)| {
                let currency = "EUR".parse().expect("EUR");
                (sku, Listing { seller: seller.into(), unit_price_minor: price, currency, stock: STOCK })
            })
            .collect();
        let requested: Vec<(&str, i64)> =
            request.lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
        let priced = pricing::price("lines", &requested, |sku| listings.get(sku))
            .map_err(|e| anyhow::anyhow!("the sample order cannot be priced: {e:?}"))?;
        let body = Bytes::from(serde_json::to_vec(&request)?);
        let mut sample = Sample { request, body, priced, command: Bytes::new() };
        sample.command = Bytes::from(encode(&sample.command(Uuid::now_v7(), &buyer(0))));
        Ok(sample)
    }

    /// The command for one order.
    pub fn command(&self, order_id: Uuid, buyer_id: &str) -> PlaceOrder {
        PlaceOrder {
            order_id,
            tenant: TENANT.into(),
            buyer_id: buyer_id.into(),
            currency: self.priced.currency,
            lines: self.priced.lines.clone(),
            total_minor: self.priced.total_minor,
            payment_token: Some(self.request.payment_token.clone()),
            placed_at: chrono::Utc::now(),
            cart: None,
        }
    }

    /// Put [`PRODUCTS`] on sale in the benchmark's tenant, directly through the catalog
    /// store (as the catalog pool writes a product; not through the catalog pipeline,
    /// whose work is not what the orders phases measure).
    pub async fn seed_catalog(pool: &sqlx::PgPool) -> anyhow::Result<()> {
        use souk_stores::postgres::products;
        let mut tx = pool.begin().await?;
        for (sku, seller, price) in PRODUCTS {
            let fields = souk_pipelines::catalog::ProductFields {
                title: sku.to_lowercase().replace('-', " "),
                description: format!("{sku}, sold by {seller}"),
                category: "home/kitchen/mugs".into(),
                attributes: Default::default(),
                price_minor: price,
                currency: "EUR".parse()?,
                stock: STOCK,
                images: Vec::new(),
            };
            let version = products::lock(&mut tx, TENANT, sku).await?.map_or(1, |p| p.product.version + 1);
            products::put(&mut tx, TENANT, sku, seller, &fields, version, chrono::Utc::now()).await?;
            // As the catalog pool does: the product's stock is its units available, which
            // the saga's reservation takes from (without a stock row every order ends
            // cancelled, out of stock, after the reserve step).
            souk_stores::postgres::inventory::set_available(&mut tx, TENANT, sku, STOCK, None, false).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The `souk-schema` header value of the command.
    pub fn schema() -> String {
        PlaceOrder::schema_header()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_is_valid_and_about_400_bytes() {
        let s = Sample::new().expect("sample");
        // v2 carries each line's seller and the payment token (v1: ~300 bytes).
        assert!((300..=500).contains(&s.command.len()), "command is {} bytes", s.command.len());
        let parsed: PlaceOrderRequest = serde_json::from_slice(&s.body).expect("body parses");
        assert_eq!(parsed.validate(), Ok(()));
        assert_eq!(s.priced.total_minor, 2 * 1299 + 849);
        let sellers: Vec<_> = s.priced.lines.iter().map(|l| l.seller.as_str()).collect();
        assert_eq!(sellers, ["bench-potter", "bench-grocer"]);
    }

    /// The orders benchmark's products can be reserved: each has its stock on hand,
    /// as a product written through the catalog pool has.
    #[tokio::test]
    async fn seeded_products_have_their_stock_on_hand() -> anyhow::Result<()> {
        let db = souk_testkit::TestDb::create().await?;
        souk_stores::postgres::migrate(&db.pool).await?;
        Sample::seed_catalog(&db.pool).await?;
        for (sku, _, _) in PRODUCTS {
            let stock = souk_stores::postgres::inventory::stock(&db.pool, TENANT, sku).await?;
            assert_eq!(stock.map(|s| s.on_hand), Some(STOCK), "{sku}");
        }
        Ok(())
    }
}
