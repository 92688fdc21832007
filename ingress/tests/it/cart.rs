//! The buyer's cart: put, update, remove, read at current prices with warnings, and
//! every bad request refused with its problem.

use serde_json::json;
use souk_ingress::Role;
use souk_testkit::catalog::{for_sale, seed};

use crate::env;

#[tokio::test]
async fn a_cart_is_put_updated_removed_and_read_at_current_prices() -> anyhow::Result<()> {
    let env = env().await?;
    seed(&env.db.pool, "t1", &[for_sale("MUG", "potter", 1299, 5), for_sale("TEA", "grocer", 849, 9)])
        .await?;
    let buyer = env.token(&[Role::Buyer]);
    let put = |sku: &'static str, quantity: i64| env.put_item(&buyer, sku, quantity);
    let (status, cart) = put("MUG", 2).await?;
    assert_eq!(status, 200, "{cart}");
    assert_eq!((cart["total_minor"].as_i64(), cart["currency"].as_str()), (Some(2598), Some("EUR")));
    let (_, cart) = put("TEA", 1).await?;
    assert_eq!(cart["total_minor"], 2598 + 849);
    let (_, cart) = put("MUG", 3).await?;
    assert_eq!(cart["total_minor"], 3 * 1299 + 849, "a put replaces the quantity");
    assert_eq!(
        cart["items"][0],
        json!({"sku": "MUG", "quantity": 3, "available": true, "seller": "potter", "title": "MUG",
               "unit_price_minor": 1299, "currency": "EUR", "stock": 5, "line_total_minor": 3897})
    );
    let (status, cart) = env.call(&buyer, "DELETE", "/v1/cart/items/TEA", None, None).await?;
    assert_eq!((status, cart["items"].as_array().map(Vec::len)), (200, Some(1)), "{cart}");
    assert_eq!(env.call(&buyer, "DELETE", "/v1/cart/items/TEA", None, None).await?.0, 200, "idempotent");
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!((cart["total_minor"].as_i64(), cart["warnings"].clone()), (Some(3897), json!([])), "{cart}");

    // Another buyer has a cart of its own.
    let other = env.keys.mint(&souk_ingress::Claims::new(
        "u2",
        "t1",
        vec![Role::Buyer],
        std::time::Duration::from_secs(60),
    ));
    let (_, theirs) = env.call(&other, "GET", "/v1/cart", None, None).await?;
    assert_eq!(theirs["items"], json!([]));

    // The catalog changes under the cart: a new price and less stock are warned of, and
    // a deleted product is shown unavailable and left out of the total.
    put("TEA", 2).await?;
    seed(&env.db.pool, "t1", &[for_sale("MUG", "potter", 1500, 2)]).await?;
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    let kinds: Vec<_> = cart["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| (w["sku"].clone(), w["kind"].clone()))
        .collect();
    assert_eq!(
        kinds,
        [(json!("MUG"), json!("price-changed")), (json!("MUG"), json!("over-stock"))],
        "{cart}"
    );
    assert_eq!(cart["total_minor"], 3 * 1500 + 2 * 849);
    {
        use souk_stores::postgres::products;
        let mut tx = env.db.pool.begin().await?;
        products::lock(&mut tx, "t1", "TEA").await?;
        products::mark_deleted(&mut tx, "t1", "TEA", 2, chrono::Utc::now()).await?;
        tx.commit().await?;
    }
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"][1], json!({"sku": "TEA", "quantity": 2, "available": false}), "{cart}");
    assert!(cart["warnings"].as_array().into_iter().flatten().any(|w| w["kind"] == "unavailable"), "{cart}");
    assert_eq!(cart["total_minor"], 3 * 1500);
    Ok(())
}

#[tokio::test]
async fn bad_cart_requests_get_problems_and_change_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    seed(&env.db.pool, "t1", &[for_sale("MUG", "potter", 1299, 5)]).await?;
    let buyer = env.token(&[Role::Buyer]);
    let cases = [
        ("NOPE", json!({"quantity": 1}), 422, "validation", "sku"),
        ("MUG", json!({"quantity": 0}), 422, "validation", "quantity"),
        ("MUG", json!({"quantity": 10_001}), 422, "validation", "quantity"),
        ("MUG", json!({"quantity": 6}), 422, "validation", "quantity"),
        ("MUG", json!({"quantity": 1, "unit_price_minor": 1}), 400, "unknown-field", "unit_price_minor"),
        ("MUG", json!({"quantity": "1"}), 422, "invalid-body", ""),
        ("4111111111111111", json!({"quantity": 1}), 400, "invalid-path", "sku"),
        ("4111-1111-1111-1111", json!({"quantity": 1}), 400, "invalid-path", "sku"),
    ];
    for (sku, body, status, kind, field) in cases {
        let (got, problem) =
            env.call(&buyer, "PUT", &format!("/v1/cart/items/{sku}"), None, Some(body.clone())).await?;
        assert_eq!(got, status, "{sku} {body}: {problem}");
        assert_eq!(problem["type"], format!("https://souk.dev/problems/{kind}"), "{sku} {body}");
        assert_eq!(problem["errors"][0]["field"].as_str().unwrap_or_default(), field, "{problem}");
    }
    let seller = env.token(&[Role::Seller]);
    assert_eq!(env.call(&seller, "GET", "/v1/cart", None, None).await?.0, 403);
    assert_eq!(
        env.call(&seller, "PUT", "/v1/cart/items/MUG", None, Some(json!({"quantity": 1}))).await?.0,
        403
    );
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"], json!([]), "nothing was put: {cart}");
    Ok(())
}

#[tokio::test]
async fn a_cart_holds_at_most_max_lines_skus() -> anyhow::Result<()> {
    let env = env().await?;
    let max = souk_pipelines::orders::MAX_LINES;
    let products: Vec<_> = (0..=max).map(|i| for_sale(&format!("P-{i:03}"), "s", 100, 10)).collect();
    seed(&env.db.pool, "t1", &products).await?;
    let buyer = env.token(&[Role::Buyer]);
    let put = |i: usize, quantity: i64| {
        let (env, buyer) = (&env, &buyer);
        async move { env.put_item(buyer, &format!("P-{i:03}"), quantity).await }
    };
    for i in 0..max {
        assert_eq!(put(i, 1).await?.0, 200, "item {i}");
    }
    let (status, problem) = put(max, 1).await?;
    assert_eq!(
        (status, problem["type"].as_str()),
        (409, Some("https://souk.dev/problems/cart-full")),
        "{problem}"
    );
    assert_eq!(put(0, 2).await?.0, 200, "a line already in a full cart can change");
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"].as_array().map(Vec::len), Some(max));
    Ok(())
}
