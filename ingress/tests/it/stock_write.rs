//! A seller's write of a product's stock carries what the stock row counted when it
//! was accepted (`StockBasis`), so the catalog pool counts the stock written beside the
//! units held then, whenever it applies it.

use souk_ingress::{Claims, Role};
use souk_pipelines::catalog::{AttrValue, StockBasis, WriteProduct};
use souk_testkit::catalog::{for_sale, seed};
use std::time::Duration;

use crate::env;

fn mug(stock: i64) -> serde_json::Value {
    serde_json::json!({
        "title": "Stoneware mug",
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 330, "material": "stoneware"},
        "price_minor": 1299,
        "currency": "EUR",
        "stock": stock
    })
}

#[tokio::test]
async fn a_stock_write_carries_the_held_and_sold_units_it_was_accepted_beside() -> anyhow::Result<()> {
    let env = env().await?;
    let mut stored = for_sale("MUG", "s1", 1299, 10);
    stored.fields.category = "home/kitchen/mugs".into();
    stored.fields.attributes = [
        ("capacity_ml".to_owned(), AttrValue::Int(330)),
        ("material".to_owned(), AttrValue::Text("stoneware".into())),
    ]
    .into();
    seed(&env.db.pool, "t1", &[stored]).await?;
    sqlx::query("update stock set held = 3, sold = 1, on_hand = 9 where sku = 'MUG'")
        .execute(&env.db.pool)
        .await?;
    let seller = env.keys.mint(
        &Claims::new("u-s1", "t1", vec![Role::Seller], Duration::from_secs(600))
            .with_sellers(vec!["s1".into()]),
    );
    let (status, body) =
        env.call(&seller, "PUT", "/v1/sellers/s1/products/MUG", Some("w1"), Some(mug(6))).await?;
    assert_eq!(status, 202, "{body}");
    let patch = serde_json::json!({"price_minor": 1399});
    let (status, body) =
        env.call(&seller, "PATCH", "/v1/sellers/s1/products/MUG", Some("w2"), Some(patch)).await?;
    assert_eq!(status, 202, "{body}");
    let writes: Vec<WriteProduct> = env
        .commands()
        .await?
        .into_iter()
        .map(|(_, schema, payload)| souk_pipelines::decode(Some(&schema), &payload))
        .collect::<Result<_, _>>()?;
    let bases: Vec<Option<StockBasis>> = writes.iter().map(|w| w.stock_basis).collect();
    assert_eq!(
        bases,
        [Some(StockBasis { held: 3, sold: 1, withdrawn: 0, revives: false }), None],
        "a patch without stock carries none"
    );
    Ok(())
}
