//! Orders priced from the catalog, and checkouts of a cart (issue 10, items 1 and 2):
//! what reaches JetStream is read back from the stream, so a test sees exactly the
//! `PlaceOrder` v2 a request caused — or that nothing was published.

use serde_json::json;
use souk_ingress::Role;
use souk_testkit::catalog::{for_sale, seed};

use crate::{Env, env};

/// Tenant t1 sells a mug (potter, 12.99 EUR, 5 in stock), tea (grocer, 8.49 EUR, 9 in
/// stock) and a hat in another currency (USD).
async fn shop() -> anyhow::Result<(Env, String)> {
    let env = env().await?;
    let mut hat = for_sale("HAT", "milliner", 2500, 3);
    hat.fields.currency = "USD".parse()?;
    seed(&env.db.pool, "t1", &[for_sale("MUG", "potter", 1299, 5), for_sale("TEA", "grocer", 849, 9), hat])
        .await?;
    let buyer = env.token(&[Role::Buyer]);
    Ok((env, buyer))
}

async fn delete_product(env: &Env, sku: &str) -> anyhow::Result<()> {
    use souk_stores::postgres::products;
    let mut tx = env.db.pool.begin().await?;
    let version = products::lock(&mut tx, "t1", sku).await?.map_or(1, |p| p.product.version + 1);
    products::mark_deleted(&mut tx, "t1", sku, version, chrono::Utc::now()).await?;
    tx.commit().await?;
    Ok(())
}

fn fields(problem: &serde_json::Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .map(String::from)
        .collect()
}

#[tokio::test]
async fn orders_are_priced_from_the_catalog_and_carry_each_lines_seller() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    let body = json!({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "TEA", "quantity": 1}], "payment_token": "tok_ok"});
    let (status, accepted) = env.call(&buyer, "POST", "/v1/orders", Some("k1"), Some(body)).await?;
    assert_eq!(status, 202, "{accepted}");
    let with_total = json!({"lines": [{"sku": "MUG", "quantity": 1}], "payment_token": "tok_ok",
                            "expected_total_minor": 1299, "expected_currency": "EUR"});
    assert_eq!(env.call(&buyer, "POST", "/v1/orders", Some("k2"), Some(with_total)).await?.0, 202);

    let orders = env.orders_published().await?;
    assert_eq!(orders.len(), 2);
    let order = &orders[0];
    assert_eq!(order.order_id.to_string(), accepted["order_id"].as_str().unwrap_or_default());
    assert_eq!((order.currency.code(), order.total_minor), ("EUR", 2 * 1299 + 849));
    let lines: Vec<_> = order
        .lines
        .iter()
        .map(|l| (l.sku.as_str(), l.seller.as_str(), l.quantity, l.unit_price_minor))
        .collect();
    assert_eq!(lines, [("MUG", "potter", 2, 1299), ("TEA", "grocer", 1, 849)]);
    assert_eq!(order.payment_token.as_deref(), Some("tok_ok"));
    assert_eq!(order.validate().map(|m| m.amount_minor), Ok(order.total_minor), "a consistent command");
    Ok(())
}

#[tokio::test]
async fn another_expected_total_is_409_with_the_current_prices_and_publishes_nothing() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    let body = json!({"lines": [{"sku": "MUG", "quantity": 2}, {"sku": "TEA", "quantity": 1}],
                      "payment_token": "tok_ok", "expected_total_minor": 2000, "expected_currency": "EUR"});
    let (status, problem) = env.call(&buyer, "POST", "/v1/orders", Some("k1"), Some(body)).await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["type"], "https://souk.dev/problems/price-changed");
    let current = &problem["current"];
    assert_eq!(current["total_minor"], 3447, "{problem}");
    assert_eq!(current["currency"], "EUR");
    assert_eq!(
        current["lines"][0],
        json!({"sku": "MUG", "seller": "potter", "quantity": 2, "unit_price_minor": 1299})
    );
    assert_eq!(current["lines"][1]["unit_price_minor"], 849);
    assert_eq!(env.commands_published().await?, 0);
    assert_eq!(env.keys_claimed().await?, 0);
    Ok(())
}

#[tokio::test]
async fn lines_that_cannot_be_ordered_are_each_named_and_nothing_is_published() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    seed(&env.db.pool, "t1", &[for_sale("GONE", "potter", 100, 10)]).await?;
    delete_product(&env, "GONE").await?;
    let body = json!({"lines": [
        {"sku": "MUG", "quantity": 6},
        {"sku": "GONE", "quantity": 1},
        {"sku": "HAT", "quantity": 1},
        {"sku": "NOPE", "quantity": 1},
        {"sku": "TEA", "quantity": 1}
    ], "payment_token": "tok_ok"});
    let (status, problem) = env.call(&buyer, "POST", "/v1/orders", Some("k1"), Some(body)).await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "https://souk.dev/problems/validation");
    assert_eq!(
        fields(&problem),
        ["lines[0].quantity", "lines[1].sku", "lines[2].sku", "lines[3].sku"],
        "{problem}"
    );
    let messages: Vec<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["message"].as_str()).collect();
    assert!(messages[0].contains("only 5"), "{messages:?}");
    assert!(messages[2].contains("one currency"), "{messages:?}");
    assert_eq!(env.commands_published().await?, 0);
    assert_eq!(env.keys_claimed().await?, 0);
    Ok(())
}

/// Review (twelfth session): the expected total was compared as a number alone, so a
/// product repriced from 1299 EUR to 1299 USD passed a buyer's check of "1299" and the
/// order was charged in dollars. A total is a sum in one currency.
#[tokio::test]
async fn an_expected_total_in_another_currency_is_409_and_publishes_nothing() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    assert_eq!(env.put_item(&buyer, "MUG", 1).await?.0, 200);
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!((cart["total_minor"].as_i64(), cart["currency"].as_str()), (Some(1299), Some("EUR")));
    let mut dollars = for_sale("MUG", "potter", 1299, 5);
    dollars.fields.currency = "USD".parse()?;
    seed(&env.db.pool, "t1", &[dollars]).await?;

    let seen = json!({"payment_token": "tok_ok", "expected_total_minor": 1299, "expected_currency": "EUR"});
    let (status, problem) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(seen)).await?;
    assert_eq!((status, problem["type"].as_str()), (409, Some("https://souk.dev/problems/price-changed")));
    assert_eq!(
        (problem["current"]["total_minor"].as_i64(), problem["current"]["currency"].as_str()),
        (Some(1299), Some("USD"))
    );
    let lines = json!([{"sku": "MUG", "quantity": 1}]);
    let order = json!({"lines": lines, "payment_token": "tok_ok", "expected_currency": "EUR"});
    let (status, problem) = env.call(&buyer, "POST", "/v1/orders", Some("o1"), Some(order)).await?;
    assert_eq!((status, problem["type"].as_str()), (409, Some("https://souk.dev/problems/price-changed")));
    // A total without its currency says nothing: refused before anything is read.
    let bare = json!({"payment_token": "tok_ok", "expected_total_minor": 1299});
    let (status, problem) = env.call(&buyer, "POST", "/v1/checkout", Some("c2"), Some(bare)).await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(fields(&problem), ["expected_currency"], "{problem}");
    assert_eq!(env.commands_published().await?, 0);

    // What the buyer sees now goes through.
    let now = json!({"payment_token": "tok_ok", "expected_total_minor": 1299, "expected_currency": "USD"});
    let (status, accepted) = env.call(&buyer, "POST", "/v1/checkout", Some("c3"), Some(now)).await?;
    assert_eq!(status, 202, "{accepted}");
    let orders = env.orders_published().await?;
    assert_eq!((orders.len(), orders[0].currency.code()), (1, "USD"));
    Ok(())
}

#[tokio::test]
async fn a_checkout_turns_the_cart_into_one_order_and_a_replay_is_that_order() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    for (sku, quantity) in [("MUG", 2), ("TEA", 1)] {
        assert_eq!(env.put_item(&buyer, sku, quantity).await?.0, 200);
    }
    let pay = json!({"payment_token": "tok_ok", "expected_total_minor": 3447, "expected_currency": "EUR"});
    let (status, accepted) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay.clone())).await?;
    assert_eq!(status, 202, "{accepted}");
    let order_id = accepted["order_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(accepted["status_url"], format!("/v1/orders/{order_id}"));
    assert_eq!(accepted["status"], "accepted");

    let orders = env.orders_published().await?;
    assert_eq!(orders.len(), 1);
    let lines: Vec<_> = orders[0]
        .lines
        .iter()
        .map(|l| (l.sku.as_str(), l.seller.as_str(), l.quantity, l.unit_price_minor))
        .collect();
    assert_eq!(lines, [("MUG", "potter", 2, 1299), ("TEA", "grocer", 1, 849)]);
    assert_eq!((orders[0].order_id.to_string(), orders[0].total_minor), (order_id.clone(), 3447));
    assert_eq!(orders[0].payment_token.as_deref(), Some("tok_ok"));
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"], json!([]), "the cart is emptied: {cart}");

    // The same key again: the same order, nothing more published.
    let (status, again) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay.clone())).await?;
    assert_eq!((status, again["order_id"].as_str()), (202, Some(order_id.as_str())), "{again}");
    // With another token, or once the cart holds something else: another request.
    let other_token =
        json!({"payment_token": "tok_other", "expected_total_minor": 3447, "expected_currency": "EUR"});
    let (status, problem) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(other_token)).await?;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("https://souk.dev/problems/idempotency-key-reused"))
    );
    assert_eq!(
        env.call(&buyer, "PUT", "/v1/cart/items/TEA", None, Some(json!({"quantity": 3}))).await?.0,
        200
    );
    let (status, problem) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay)).await?;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("https://souk.dev/problems/idempotency-key-reused")),
        "{problem}"
    );
    assert_eq!(env.commands_published().await?, 1, "one order, whatever was retried");
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"][0]["quantity"], 3, "a refused checkout leaves the cart as it was: {cart}");
    Ok(())
}

/// Found in review: two checkouts of one cart under two keys at once (a double tap, web
/// and phone) each read the cart and each placed an order — one cart, two orders, two
/// charges. Now one holds the cart and the other is 409 `checkout-in-progress`; a
/// refused checkout gives the cart up at once.
#[tokio::test]
async fn two_checkouts_of_one_cart_under_two_keys_make_one_order() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    assert_eq!(env.put_item(&buyer, "MUG", 1).await?.0, 200);
    // Both requests wait behind the cart's row lock, then go one after the other.
    let mut lock = env.db.pool.begin().await?;
    sqlx::query("select 1 from carts for update").execute(&mut *lock).await?;
    let pay = json!({"payment_token": "tok_ok"});
    let checkout = |key: &'static str| {
        let (env, buyer, pay) = (&env, &buyer, pay.clone());
        async move { env.call(buyer, "POST", "/v1/checkout", Some(key), Some(pay)).await }
    };
    let both = async { tokio::join!(checkout("tap-1"), checkout("tap-2")) };
    let release = async {
        souk_testkit::eventually(std::time::Duration::from_secs(20), || async {
            let waiting: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
            )
            .fetch_one(&env.db.pool)
            .await?;
            anyhow::Ok((waiting >= 2).then_some(()))
        })
        .await?;
        lock.commit().await?;
        anyhow::Ok(())
    };
    let ((first, second), released) = tokio::join!(both, release);
    released?;
    let mut statuses =
        [first?, second?].map(|(status, body)| (status, body["type"].as_str().map(String::from)));
    statuses.sort();
    assert_eq!(
        statuses,
        [(202, None), (409, Some("https://souk.dev/problems/checkout-in-progress".into()))],
        "one order, the other told why"
    );
    assert_eq!(env.orders_published().await?.len(), 1, "one cart, one order");

    // A checkout refused (another total) gives the cart up: the next key goes on.
    assert_eq!(env.put_item(&buyer, "TEA", 1).await?.0, 200);
    let over = json!({"payment_token": "tok_ok", "expected_total_minor": 1, "expected_currency": "EUR"});
    let (status, _) = env.call(&buyer, "POST", "/v1/checkout", Some("wrong-total"), Some(over)).await?;
    assert_eq!(status, 409, "another total");
    let (status, body) = env.call(&buyer, "POST", "/v1/checkout", Some("right"), Some(pay.clone())).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(env.orders_published().await?.len(), 2);
    // Its retry (the answer was lost) is the same order, and leaves the cart free: the
    // buyer's next cart checks out under a new key (the retry held it: review).
    let (status, again) = env.call(&buyer, "POST", "/v1/checkout", Some("right"), Some(pay.clone())).await?;
    assert_eq!((status, &again["order_id"]), (202, &body["order_id"]), "{again}");
    assert_eq!(env.put_item(&buyer, "MUG", 1).await?.0, 200);
    let (status, next) = env.call(&buyer, "POST", "/v1/checkout", Some("next"), Some(pay)).await?;
    assert_eq!(status, 202, "{next}");
    assert_eq!(env.orders_published().await?.len(), 3);
    Ok(())
}

/// A crash between the PubAck and the emptying leaves the order placed and the cart
/// full (made here by undoing the emptying); the retry under the key is the same order
/// and empties the cart.
#[tokio::test]
async fn a_cart_left_full_after_its_order_was_placed_is_emptied_by_the_retry() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    let put = |sku: &'static str, quantity: i64| env.put_item(&buyer, sku, quantity);
    assert_eq!(put("MUG", 1).await?.0, 200);
    let pay = json!({"payment_token": "tok_ok"});
    let (status, accepted) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay.clone())).await?;
    assert_eq!(status, 202, "{accepted}");
    // Undo the emptying: as if the process died right after the PubAck.
    sqlx::query("delete from cart_checkouts").execute(&env.db.pool).await?;
    assert_eq!(put("MUG", 1).await?.0, 200);

    let (status, again) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay)).await?;
    assert_eq!((status, &again["order_id"]), (202, &accepted["order_id"]), "{again}");
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"], json!([]), "{cart}");
    assert_eq!(env.orders_published().await?.len(), 1, "the re-publish was deduplicated");
    Ok(())
}

/// Review (tenth session): a 503 once the command may be stored holds the cart for the
/// key's retry; that retry refused (the buyer changed the cart meanwhile: another cart
/// under the key) gave the hold up, and a checkout under a new key ordered the same
/// items again.
#[tokio::test]
async fn a_refused_retry_keeps_the_hold_of_a_cart_whose_order_may_be_stored() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    assert_eq!(env.put_item(&buyer, "MUG", 1).await?.0, 200);
    let pay = json!({"payment_token": "tok_ok"});
    let (status, _) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay.clone())).await?;
    assert_eq!(status, 202);
    // As a 503 after the PubAck leaves it: the order stored, the cart full and held.
    sqlx::query("delete from cart_checkouts").execute(&env.db.pool).await?;
    assert_eq!(env.put_item(&buyer, "MUG", 1).await?.0, 200);
    sqlx::query("update carts set checkout_key = 'c1', checkout_until = now() + interval '5 minutes'")
        .execute(&env.db.pool)
        .await?;
    assert_eq!(env.put_item(&buyer, "TEA", 1).await?.0, 200);
    let (status, body) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay.clone())).await?;
    assert_eq!(
        (status, body["type"].as_str()),
        (422, Some("https://souk.dev/problems/idempotency-key-reused"))
    );
    let (status, body) = env.call(&buyer, "POST", "/v1/checkout", Some("c2"), Some(pay.clone())).await?;
    assert_eq!(status, 409, "the cart is still held for c1's order: {body}");
    assert_eq!(env.orders_published().await?.len(), 1, "the mug ordered once");
    // A refusal of a checkout that held nothing before still gives the cart up.
    sqlx::query("update carts set checkout_key = null, checkout_until = null").execute(&env.db.pool).await?;
    let over = json!({"payment_token": "tok_ok", "expected_total_minor": 1, "expected_currency": "EUR"});
    assert_eq!(env.call(&buyer, "POST", "/v1/checkout", Some("c3"), Some(over)).await?.0, 409);
    let (status, body) = env.call(&buyer, "POST", "/v1/checkout", Some("c4"), Some(pay)).await?;
    assert_eq!(status, 202, "{body}");
    Ok(())
}

/// Review (twelfth session): a checkout whose key could not be claimed published
/// nothing, yet kept the cart's hold as if its order might be stored: the buyer, who
/// changed the cart and tried again under a new key, was told "checkout in progress"
/// for five minutes.
#[tokio::test]
async fn a_checkout_whose_key_could_not_be_claimed_gives_the_cart_up() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    assert_eq!(env.put_item(&buyer, "MUG", 1).await?.0, 200);
    sqlx::query(
        "create function refuse_claims() returns trigger language plpgsql
         as $$ begin raise exception 'the key store refuses'; end $$",
    )
    .execute(&env.db.pool)
    .await?;
    sqlx::query(
        "create trigger refuse_claims before insert on idempotency_keys
         for each row execute function refuse_claims()",
    )
    .execute(&env.db.pool)
    .await?;
    let pay = json!({"payment_token": "tok_ok"});
    let (status, body) = env.call(&buyer, "POST", "/v1/checkout", Some("c1"), Some(pay.clone())).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(env.commands_published().await?, 0);
    sqlx::query("drop trigger refuse_claims on idempotency_keys").execute(&env.db.pool).await?;

    assert_eq!(env.put_item(&buyer, "TEA", 1).await?.0, 200);
    let (status, body) = env.call(&buyer, "POST", "/v1/checkout", Some("c2"), Some(pay)).await?;
    assert_eq!(status, 202, "nothing held the cart: {body}");
    let orders = env.orders_published().await?;
    let skus: Vec<&str> = orders[0].lines.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!((orders.len(), skus), (1, vec!["MUG", "TEA"]));
    Ok(())
}

#[tokio::test]
async fn bad_checkouts_get_problems_and_publish_nothing() -> anyhow::Result<()> {
    let (env, buyer) = shop().await?;
    let checkout = |key: Option<&'static str>, body: serde_json::Value| {
        let buyer = buyer.clone();
        let env = &env;
        async move { env.call(&buyer, "POST", "/v1/checkout", key, Some(body)).await }
    };
    let pay = json!({"payment_token": "tok_ok"});
    let (status, problem) = checkout(Some("c1"), pay.clone()).await?;
    assert_eq!(
        (status, problem["type"].as_str()),
        (422, Some("https://souk.dev/problems/empty-cart")),
        "{problem}"
    );

    seed(&env.db.pool, "t1", &[for_sale("GONE", "potter", 100, 10)]).await?;
    for (sku, quantity) in [("GONE", 1), ("HAT", 1), ("MUG", 5)] {
        assert_eq!(env.put_item(&buyer, sku, quantity).await?.0, 200);
    }
    delete_product(&env, "GONE").await?;
    seed(&env.db.pool, "t1", &[for_sale("MUG", "potter", 1299, 4)]).await?;
    let cases = [
        (
            Some("c2"),
            pay.clone(),
            422,
            "validation",
            vec!["items[0].sku", "items[2].sku", "items[2].quantity"],
        ),
        (None, pay.clone(), 400, "idempotency-key-missing", vec![]),
        (
            Some("c2"),
            json!({"payment_token": "tok_ok", "unit_price_minor": 1}),
            400,
            "unknown-field",
            vec!["unit_price_minor"],
        ),
        (Some("c2"), json!({"payment_token": "4111111111111111"}), 422, "validation", vec!["payment_token"]),
        (
            Some("c2"),
            json!({"payment_token": "tok_5500_0000_0000_0004"}),
            422,
            "validation",
            vec!["payment_token"],
        ),
        (Some("c2"), json!({}), 422, "invalid-body", vec![]),
    ];
    for (key, body, status, kind, named) in cases {
        let (got, problem) = checkout(key, body.clone()).await?;
        assert_eq!(got, status, "{body}: {problem}");
        assert_eq!(problem["type"], format!("https://souk.dev/problems/{kind}"), "{body}");
        assert_eq!(fields(&problem), named, "{body}: {problem}");
    }
    // Lines that can be ordered, at a total the buyer did not expect: 409 with prices.
    for sku in ["GONE", "HAT"] {
        assert_eq!(env.call(&buyer, "DELETE", &format!("/v1/cart/items/{sku}"), None, None).await?.0, 200);
    }
    assert_eq!(
        env.call(&buyer, "PUT", "/v1/cart/items/MUG", None, Some(json!({"quantity": 4}))).await?.0,
        200
    );
    let (status, problem) = checkout(
        Some("c3"),
        json!({"payment_token": "tok_ok", "expected_total_minor": 1, "expected_currency": "EUR"}),
    )
    .await?;
    assert_eq!(status, 409, "{problem}");
    assert_eq!(problem["current"]["total_minor"], 4 * 1299);

    assert_eq!(env.commands_published().await?, 0, "nothing published on any 4xx");
    assert_eq!(env.keys_claimed().await?, 0);
    let (_, cart) = env.call(&buyer, "GET", "/v1/cart", None, None).await?;
    assert_eq!(cart["items"].as_array().map(Vec::len), Some(1), "the cart is untouched: {cart}");
    Ok(())
}
