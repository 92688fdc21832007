//! Sellers' orders and product stock end to end on a whole node: fulfilment requests
//! published onto CMD as the saga's outbox would, the seller's list and ship over HTTP,
//! `SellerShipped` on EVT; a product's `stock` with units held.

use serde_json::{Value, json};
use souk_ingress::{Claims, Role};
use souk_pipelines::{
    fulfilment::{FulfilmentLine, RequestFulfilment},
    inventory::{ReserveStock, StockLine},
};
use souk_testkit::{Stack, eventually, read_body};
use souk_topologies::publisher::{OutgoingMessage, Publisher};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
const TENANT: &str = "t1";

fn seller_token(stack: &Stack, sub: &str, sellers: &[&str]) -> String {
    let claims = Claims::new(sub, TENANT, vec![Role::Seller], Duration::from_secs(3600))
        .with_sellers(sellers.iter().map(|s| (*s).to_owned()).collect());
    stack.keys.mint(&claims)
}

async fn send_command<M: souk_pipelines::Message>(stack: &Stack, cmd: &M) -> anyhow::Result<()> {
    let publisher = Publisher::new(stack.client.clone(), Duration::from_secs(5));
    publisher.publish(OutgoingMessage::command(cmd, Uuid::now_v7().to_string(), TENANT)).await?;
    Ok(())
}

async fn request(stack: &Stack, order_id: Uuid, seller: &str, sku: &str) -> anyhow::Result<()> {
    let lines = vec![FulfilmentLine { sku: sku.into(), quantity: 2 }];
    send_command(stack, &RequestFulfilment { tenant: TENANT.into(), order_id, seller: seller.into(), lines })
        .await
}

/// A request body and its content type, if any.
type Body<'a> = Option<(&'a str, Vec<u8>)>;

async fn ship(
    stack: &Stack,
    token: &str,
    path: &str,
    body: Body<'_>,
    key: Option<&str>,
) -> anyhow::Result<(u16, Value)> {
    let mut r = stack.http.post(format!("{}{path}", stack.base)).bearer_auth(token);
    if let Some((content_type, bytes)) = body {
        r = r.header("content-type", content_type).body(bytes);
    }
    if let Some(key) = key {
        r = r.header("idempotency-key", key);
    }
    read_body(r.send().await?).await
}

async fn shipped_events(stack: &Stack, order_id: Uuid) -> anyhow::Result<usize> {
    let stream = stack.js.get_stream("EVT").await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut n = 0;
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await?;
        let e: Value = serde_json::from_slice(&m.payload)?;
        if m.subject.as_str() == "souk.evt.fulfilment.shipped"
            && e["order_id"] == order_id.to_string().as_str()
        {
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::test]
async fn a_fulfilment_request_is_listed_for_its_seller_shipped_and_announced_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let s1 = seller_token(&stack, "seller-1", &["s1"]);
    let s2 = seller_token(&stack, "seller-2", &["s2"]);
    let (first, second) = (Uuid::now_v7(), Uuid::now_v7());
    request(&stack, first, "s1", "MUG-1").await?;
    // Requests are dated when the pool records them: the second after the first.
    eventually(WAIT, || async {
        let (_, body) = stack.get(&s1, "/v1/sellers/s1/orders").await?;
        anyhow::Ok(body["items"].as_array().is_some_and(|i| i.len() == 1).then_some(()))
    })
    .await?;
    request(&stack, second, "s1", "TEA-9").await?;
    request(&stack, second, "s2", "CUP-3").await?;

    // Newest first, one per page, the cursor leading to the older one.
    let page = eventually(WAIT, || async {
        let (status, body) = stack.get(&s1, "/v1/sellers/s1/orders?per_page=1").await?;
        anyhow::ensure!(status == 200, "{status} {body}");
        anyhow::Ok(body["next_cursor"].is_string().then_some(body))
    })
    .await?;
    assert_eq!(page["items"][0]["order_id"], second.to_string().as_str());
    assert_eq!(page["items"][0]["status"], "requested");
    assert_eq!(page["items"][0]["lines"], json!([{"sku": "TEA-9", "quantity": 2}]));
    assert!(page["items"][0]["requested_at"].is_string());
    let cursor = page["next_cursor"].as_str().unwrap_or_default();
    let (status, next) = stack.get(&s1, &format!("/v1/sellers/s1/orders?per_page=1&cursor={cursor}")).await?;
    assert_eq!(status, 200, "{next}");
    assert_eq!(next["items"][0]["order_id"], first.to_string().as_str());
    assert!(next["next_cursor"].is_null(), "the last page");

    // Another seller: 403 for the list and the ship, decided before any body.
    let (status, body) = stack.get(&s2, "/v1/sellers/s1/orders").await?;
    assert_eq!(status, 403, "{body}");
    let path = format!("/v1/sellers/s1/orders/{first}/ship");
    let (status, body) =
        ship(&stack, &s2, &path, Some(("application/json", b"{broken".to_vec())), None).await?;
    assert_eq!(status, 403, "{body}");

    let body = serde_json::to_vec(&json!({"tracking": "TRK-123"}))?;
    let (status, accepted) =
        ship(&stack, &s1, &path, Some(("application/json", body.clone())), Some("k1")).await?;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["status"], "accepted");
    eventually(WAIT, || async { anyhow::Ok((shipped_events(&stack, first).await? == 1).then_some(())) })
        .await?;
    let (_, listed) = stack.get(&s1, "/v1/sellers/s1/orders").await?;
    let shipped = listed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["order_id"] == first.to_string().as_str());
    let shipped = shipped.cloned().unwrap_or_default();
    assert_eq!(
        (shipped["status"].as_str(), shipped["tracking"].as_str()),
        (Some("shipped"), Some("TRK-123"))
    );
    assert!(shipped["shipped_at"].is_string());

    // Shipping again: 202, nothing new (with or without a body or key).
    let (status, again) = ship(&stack, &s1, &path, None, None).await?;
    assert_eq!((status, again["status"].as_str()), (202, Some("shipped")), "{again}");
    let (status, again) =
        ship(&stack, &s1, &path, Some(("application/json", body.clone())), Some("k1")).await?;
    assert_eq!((status, again["status"].as_str()), (202, Some("shipped")), "the same key and body: {again}");
    // The key with another body for the part it shipped: 422, as before it shipped
    // (it was a 202 once the part had shipped: found in review).
    let changed = serde_json::to_vec(&json!({"tracking": "TRK-999"}))?;
    let (status, reused) = ship(&stack, &s1, &path, Some(("application/json", changed)), Some("k1")).await?;
    assert_eq!(status, 422, "{reused}");
    // The same key with another request: 422.
    let other = format!("/v1/sellers/s1/orders/{second}/ship");
    let (status, reused) = ship(&stack, &s1, &other, Some(("application/json", body)), Some("k1")).await?;
    assert_eq!(status, 422, "{reused}");
    stack.quiescent(WAIT).await?;
    assert_eq!(shipped_events(&stack, first).await?, 1, "announced once");
    Ok(())
}

#[tokio::test]
async fn bad_ships_and_listings_get_clear_problems_and_publish_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let s1 = seller_token(&stack, "seller-1", &["s1"]);
    let order = Uuid::now_v7();
    request(&stack, order, "s1", "MUG-1").await?;
    eventually(WAIT, || async {
        let (_, body) = stack.get(&s1, "/v1/sellers/s1/orders").await?;
        anyhow::Ok(body["items"].as_array().is_some_and(|i| i.len() == 1).then_some(()))
    })
    .await?;
    let path = format!("/v1/sellers/s1/orders/{order}/ship");
    let json = |v: Value| Some(("application/json", serde_json::to_vec(&v).unwrap_or_default()));
    let cases: Vec<(String, Body, u16, &str)> = vec![
        (path.clone(), Some(("application/json", b"{\"tracking\": ".to_vec())), 400, "malformed-json"),
        (path.clone(), Some(("text/plain", b"TRK".to_vec())), 415, "unsupported-media-type"),
        (path.clone(), Some(("application/json", vec![b' '; 70 * 1024])), 413, "body-too-large"),
        (path.clone(), json(json!({"tracking": "4111 1111 1111 1111"})), 422, "validation"),
        (path.clone(), json(json!({"tracking": "x".repeat(129)})), 422, "validation"),
        (path.clone(), json(json!({"tracking": " "})), 422, "validation"),
        (path.clone(), json(json!({"tracking": "T", "carrier": "x"})), 422, "invalid-body"),
        (format!("/v1/sellers/s1/orders/{}/ship", Uuid::now_v7()), None, 404, "not-found"),
        ("/v1/sellers/s1/orders/not-a-uuid/ship".into(), None, 400, "invalid-path"),
    ];
    for (path, body, expected, kind) in cases {
        let (status, problem) = ship(&stack, &s1, &path, body, None).await?;
        assert_eq!(status, expected, "{path}: {problem}");
        assert!(problem["type"].as_str().is_some_and(|t| t.ends_with(kind)), "{path}: {problem}");
    }
    // A cursor chrono reads but Postgres cannot (its timestamps end at 4713 BC) was a 503.
    let out_of_range = "cursor=-300000000000000000_00000000000000000000000000000000";
    for query in
        ["per_page=0", "per_page=x", "cursor=nope", out_of_range, "color=red", "per_page=1&per_page=2"]
    {
        let (status, problem) = stack.get(&s1, &format!("/v1/sellers/s1/orders?{query}")).await?;
        assert_eq!(status, 400, "{query}: {problem}");
    }
    stack.quiescent(WAIT).await?;
    let ships: i64 = stack.count("select 1 from fulfilments where status = 'shipped'").await?;
    assert_eq!(ships, 0, "nothing shipped");
    let cmd = stack.js.get_stream("CMD").await?.get_info().await?.state;
    assert_eq!(cmd.last_sequence, 1, "only the request was ever stored on CMD");
    Ok(())
}

#[tokio::test]
async fn a_products_stock_is_what_can_be_bought_held_units_excluded() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let s1 = seller_token(&stack, "seller-1", &["s1"]);
    let mug = json!({
        "title": "Mug", "description": "Stoneware.", "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 330, "material": "stoneware", "dishwasher_safe": true},
        "price_minor": 1299, "currency": "EUR", "stock": 5, "images": []
    });
    let r = stack
        .http
        .put(format!("{}/v1/sellers/s1/products/MUG-1", stack.base))
        .bearer_auth(&s1)
        .header("idempotency-key", "put-1")
        .json(&mug)
        .send()
        .await?;
    let (status, body) = read_body(r).await?;
    assert_eq!(status, 202, "{body}");
    let buyer = stack.token("alice", &[Role::Buyer]);
    let stock = || async {
        let (status, body) = stack.get(&buyer, "/v1/products/MUG-1").await?;
        anyhow::Ok((status == 200).then(|| body["stock"].as_i64()).flatten())
    };
    assert_eq!(eventually(WAIT, stock).await?, 5);
    let before =
        stack.http.get(format!("{}/v1/products/MUG-1", stack.base)).bearer_auth(&buyer).send().await?;
    let etag = before.headers().get("etag").cloned().ok_or_else(|| anyhow::anyhow!("no ETag"))?;

    let hold = ReserveStock {
        tenant: TENANT.into(),
        order_id: Uuid::now_v7(),
        lines: vec![StockLine { sku: "MUG-1".into(), quantity: 2 }],
        hold_until: chrono::Utc::now() + chrono::Duration::hours(1),
    };
    send_command(&stack, &hold).await?;
    eventually(WAIT, || async { anyhow::Ok((stock().await? == Some(3)).then_some(())) }).await?;
    // The version did not change, the stock did: no 304 for the old copy.
    let r = stack
        .http
        .get(format!("{}/v1/products/MUG-1", stack.base))
        .bearer_auth(&buyer)
        .header("if-none-match", etag)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200, "a copy with stock 5 is stale");
    Ok(())
}
