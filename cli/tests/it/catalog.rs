//! Product writes end to end on the shipped topology: ingress → `souk.cmd.catalog.write`
//! → pool `catalog` → Postgres (product, write outcome, outbox) → relay →
//! `ProductChanged` on EVT; and the public reads.

use serde_json::{Value, json};
use souk_ingress::{Claims, Role};
use souk_pipelines::{Message, catalog::ProductChanged};
use souk_testkit::{Stack, StackOptions, eventually, read_body};
use souk_topologies::publisher::Publisher;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);
/// The stack's public tenant: anonymous reads see these products.
const TENANT: &str = "dev";

fn seller_token(stack: &Stack, sub: &str, roles: &[Role], sellers: &[&str]) -> String {
    let claims = Claims::new(sub, TENANT, roles.to_vec(), Duration::from_secs(3600))
        .with_sellers(sellers.iter().map(|s| (*s).to_owned()).collect());
    stack.keys.mint(&claims)
}

/// A valid product body (also what the alerts test writes).
pub(crate) fn mug(title: &str) -> Value {
    json!({
        "title": title,
        "description": "Hand-glazed stoneware.",
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 330, "material": "stoneware", "dishwasher_safe": true},
        "price_minor": 1299,
        "currency": "EUR",
        "stock": 40,
        "images": ["https://cdn.example.com/mugs/1.jpg"]
    })
}

/// Send a product write; `body` `None` for a delete.
struct Write<'a> {
    method: reqwest::Method,
    seller: &'a str,
    sku: &'a str,
    key: &'a str,
    body: Option<Value>,
    if_match: Option<i64>,
}

async fn send(stack: &Stack, token: &str, w: Write<'_>) -> anyhow::Result<(u16, Value)> {
    let url = format!("{}/v1/sellers/{}/products/{}", stack.base, w.seller, w.sku);
    let mut r = stack.http.request(w.method, url).bearer_auth(token).header("idempotency-key", w.key);
    if let Some(body) = w.body {
        r = r.json(&body);
    }
    if let Some(v) = w.if_match {
        r = r.header("if-match", format!("\"{v}\""));
    }
    read_body(r.send().await?).await
}

fn put<'a>(seller: &'a str, sku: &'a str, key: &'a str, body: Value) -> Write<'a> {
    Write { method: reqwest::Method::PUT, seller, sku, key, body: Some(body), if_match: None }
}

/// The outcome of a write once decided (`applied` or `rejected`).
async fn decided(stack: &Stack, token: &str, write_id: &str) -> anyhow::Result<Value> {
    eventually(WAIT, || async {
        let (status, body) = stack.get(token, &format!("/v1/catalog/writes/{write_id}")).await?;
        anyhow::ensure!(status == 200, "write status {status}: {body}");
        Ok((body["status"] != "pending").then_some(body))
    })
    .await
}

/// Put and wait until applied; returns the version.
async fn put_applied(
    stack: &Stack,
    token: &str,
    seller: &str,
    sku: &str,
    key: &str,
    body: Value,
) -> anyhow::Result<i64> {
    let (status, accepted) = send(stack, token, put(seller, sku, key, body)).await?;
    anyhow::ensure!(status == 202, "{status}: {accepted}");
    let outcome = decided(stack, token, accepted["write_id"].as_str().unwrap_or_default()).await?;
    anyhow::ensure!(outcome["status"] == "applied", "{outcome}");
    outcome["version"].as_i64().ok_or_else(|| anyhow::anyhow!("no version: {outcome}"))
}

/// `(version, carries a product)` of every `ProductChanged` of `sku` on EVT, in order.
async fn product_events(stack: &Stack, sku: &str) -> anyhow::Result<Vec<(i64, bool)>> {
    stack.quiescent(WAIT).await?;
    let mut stream = stack.js.get_stream("EVT").await?;
    let last = stream.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else { continue };
        if msg.subject.as_str() != ProductChanged::SUBJECT {
            continue;
        }
        let schema = msg.headers.get(souk_pipelines::headers::SCHEMA).map(|v| v.as_str().to_owned());
        let event: ProductChanged = souk_pipelines::decode(schema.as_deref(), &msg.payload)?;
        if event.sku == sku {
            assert_eq!(
                event.product.as_ref().map(|p| p.version),
                event.product.as_ref().map(|_| event.version)
            );
            out.push((event.version, event.product.is_some()));
        }
    }
    Ok(out)
}

/// Commands ever stored in CMD (purges do not lower it).
async fn commands_stored(stack: &Stack) -> anyhow::Result<u64> {
    Ok(stack.js.get_stream("CMD").await?.info().await?.state.last_sequence)
}

#[tokio::test]
async fn a_seller_cannot_touch_another_sellers_listing_even_with_a_bad_body() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    let buyer = seller_token(&stack, "bob", &[Role::Buyer], &["s2"]);
    for (token, body) in [
        (&alice, Some(mug("Mug"))),
        (&alice, Some(json!({"title": 5, "price_minor": "x"}))),
        (&alice, None),
        (&buyer, Some(mug("Mug"))),
    ] {
        for method in [reqwest::Method::PUT, reqwest::Method::PATCH, reqwest::Method::DELETE] {
            let w = Write {
                method: method.clone(),
                seller: "s2",
                sku: "MUG-1",
                key: "k1",
                body: body.clone(),
                if_match: None,
            };
            let (status, problem) = send(&stack, token, w).await?;
            assert_eq!(status, 403, "{method} {problem}");
            assert!(problem["errors"].is_null(), "decided before the body is looked at: {problem}");
        }
    }
    // No token: 401.
    let r = stack
        .http
        .put(format!("{}/v1/sellers/s2/products/MUG-1", stack.base))
        .json(&mug("Mug"))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert_eq!(commands_stored(&stack).await?, 0, "nothing published");
    assert_eq!(stack.count("select 1 from idempotency_keys").await?, 0, "nothing claimed");

    // The owner writes; an admin may act for any seller; the other seller cannot read
    // the write's outcome, nor take over the SKU.
    let carol = seller_token(&stack, "carol", &[Role::Seller], &["s2"]);
    assert_eq!(put_applied(&stack, &carol, "s2", "MUG-1", "k1", mug("Mug")).await?, 1);
    let admin = seller_token(&stack, "root", &[Role::Admin], &[]);
    assert_eq!(put_applied(&stack, &admin, "s2", "MUG-1", "k2", mug("Mug, by admin")).await?, 2);
    let (status, accepted) = send(&stack, &alice, put("s1", "MUG-1", "k3", mug("Stolen"))).await?;
    assert_eq!(status, 202, "the ingress does not know owners; the pool does");
    let write_id = accepted["write_id"].as_str().unwrap_or_default().to_owned();
    let outcome = decided(&stack, &alice, &write_id).await?;
    assert_eq!(outcome["status"], "rejected");
    assert!(outcome["reason"].as_str().is_some_and(|r| r.contains("another seller")), "{outcome}");
    let (status, _) = stack.get(&carol, &format!("/v1/catalog/writes/{write_id}")).await?;
    assert_eq!(status, 403, "s1's write is not s2's to read");
    // A write id is no order (found in review: its claim read as a pending order).
    let (status, _) = stack.get(&alice, &format!("/v1/orders/{write_id}")).await?;
    assert_eq!(status, 404, "a write is not an order");
    let (status, product) = stack.get(&carol, "/v1/products/MUG-1").await?;
    assert_eq!((status, &product["title"], &product["seller"]), (200, &json!("Mug, by admin"), &json!("s2")));
    Ok(())
}

#[tokio::test]
async fn bad_product_writes_get_problems_naming_every_bad_field_and_publish_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    let body = json!({
        "title": "Mug 4111 1111 1111 1111",
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 5000, "material": "paper", "handle": true},
        "price_minor": -1,
        "currency": "EURO",
        "stock": 10,
        "images": ["http://cdn.example.com/1.jpg"],
        "colour": "red"
    });
    let (status, problem) = send(&stack, &alice, put("s1", "MUG-1", "k1", body)).await?;
    assert_eq!(status, 422, "{problem}");
    let mut fields: Vec<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        [
            "attributes.capacity_ml",
            "attributes.handle",
            "attributes.material",
            "colour",
            "currency",
            "images[0]",
            "price_minor",
            "title"
        ]
    );
    let title = problem["errors"].as_array().into_iter().flatten().find(|e| e["field"] == "title");
    assert!(title.is_some_and(|e| e["message"].as_str().is_some_and(|m| m.contains("card number"))));
    // A patch that would break the category's schema, on the product as it is.
    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-2", "k2", mug("Mug")).await?, 1);
    let patch = |key, body| Write {
        method: reqwest::Method::PATCH,
        seller: "s1",
        sku: "MUG-2",
        key,
        body: Some(body),
        if_match: None,
    };
    let fields_of = |problem: &Value| -> Vec<String> {
        problem["errors"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["field"].as_str())
            .map(str::to_owned)
            .collect()
    };
    let (status, problem) = send(&stack, &alice, patch("k3", json!({"stock": -1, "colour": "red"}))).await?;
    assert_eq!(
        (status, fields_of(&problem)),
        (422, vec!["colour".to_owned(), "stock".to_owned()]),
        "{problem}"
    );
    let body = json!({"attributes": {"material": null, "capacity_ml": "big"}});
    let (status, problem) = send(&stack, &alice, patch("k3", body)).await?;
    assert_eq!(
        (status, fields_of(&problem)),
        (422, vec!["attributes.capacity_ml".to_owned(), "attributes.material".to_owned()]),
        "checked on the product it patches: {problem}"
    );

    let url = format!("{}/v1/sellers/s1/products/MUG-1", stack.base);
    let raw = |body: &'static str, ctype: &'static str| {
        stack
            .http
            .put(&url)
            .bearer_auth(&alice)
            .header("idempotency-key", "k9")
            .header("content-type", ctype)
            .body(body)
    };
    assert_eq!(raw("{not json", "application/json").send().await?.status(), 400);
    assert_eq!(raw("{}", "text/plain").send().await?.status(), 415);
    let big = "x".repeat(souk_ingress::MAX_BODY_BYTES + 1);
    let r = stack
        .http
        .put(&url)
        .bearer_auth(&alice)
        .header("idempotency-key", "k9")
        .json(&json!({"title": big}))
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    let no_key = stack.http.put(&url).bearer_auth(&alice).json(&mug("Mug")).send().await?;
    assert_eq!(no_key.status(), 400);
    let bad_if_match = stack
        .http
        .put(&url)
        .bearer_auth(&alice)
        .header("idempotency-key", "k9")
        .header("if-match", "W/\"1\"")
        .json(&mug("Mug"))
        .send()
        .await?;
    assert_eq!(bad_if_match.status(), 400);
    let (status, problem) = send(&stack, &alice, put("s1", "bad%20sku", "k9", mug("Mug"))).await?;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "sku");
    stack.quiescent(WAIT).await?;
    assert_eq!(stack.count("select 1 from catalog_writes").await?, 1, "only the valid write");
    Ok(())
}

#[tokio::test]
async fn a_resubmitted_write_is_applied_once_and_another_body_under_its_key_is_refused() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    let first = send(&stack, &alice, put("s1", "MUG-1", "k1", mug("Mug"))).await?;
    let again = send(&stack, &alice, put("s1", "MUG-1", "k1", mug("Mug"))).await?;
    assert_eq!(first.0, 202);
    assert_eq!(first, again, "same key, same body: same write");
    let write_id = first.1["write_id"].as_str().unwrap_or_default();
    assert_eq!(decided(&stack, &alice, write_id).await?["version"], 1);
    // Also after it was applied.
    assert_eq!(send(&stack, &alice, put("s1", "MUG-1", "k1", mug("Mug"))).await?, first);
    // A conditional write retried after it was applied finds the version moved on: it
    // gets its 202 again, not a 412.
    let conditional = || {
        let mut w = put("s1", "MUG-1", "k5", mug("Mug v2"));
        w.if_match = Some(1);
        w
    };
    let (status, accepted) = send(&stack, &alice, conditional()).await?;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(
        decided(&stack, &alice, accepted["write_id"].as_str().unwrap_or_default()).await?["version"],
        2
    );
    assert_eq!(send(&stack, &alice, conditional()).await?, (202, accepted));
    let (status, problem) = send(&stack, &alice, put("s1", "MUG-1", "k1", mug("Another mug"))).await?;
    assert_eq!(status, 422, "{problem}");
    assert!(problem["type"].as_str().is_some_and(|t| t.ends_with("idempotency-key-reused")));
    let (status, _) = send(&stack, &alice, put("s1", "MUG-2", "k1", mug("Mug"))).await?;
    assert_eq!(status, 422, "the same key for another SKU is another request");
    assert_eq!(product_events(&stack, "MUG-1").await?, [(1, true), (2, true)], "one version, one event each");
    assert_eq!(stack.count("select 1 from catalog_writes").await?, 2);
    Ok(())
}

#[tokio::test]
async fn if_match_conflicts_get_412_and_a_lost_race_is_recorded_rejected() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions { pools: false, ..Default::default() }).await?;
    let publisher = Publisher::new(stack.client.clone(), Duration::from_millis(1500));
    let (worker, task) = crate::support::start_worker(
        &publisher,
        &stack.topology,
        &stack.db.url,
        Some(stack.search.clone()),
        None,
    )?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-1", "k1", mug("Mug")).await?, 1);
    let mut stale = put("s1", "MUG-1", "k2", mug("Mug v5"));
    stale.if_match = Some(5);
    let (status, problem) = send(&stack, &alice, stale).await?;
    assert_eq!(status, 412, "{problem}");
    let mut missing = put("s1", "MUG-9", "k2", mug("Mug"));
    missing.if_match = Some(1);
    assert_eq!(send(&stack, &alice, missing).await?.0, 412, "no product has version 1");

    // Two writes with the same If-Match both pass the ingress (no worker runs); the
    // pool applies one and rejects the other.
    worker.cancel();
    task.await?;
    let mut ids = Vec::new();
    for (key, title) in [("k3", "Mug A"), ("k4", "Mug B")] {
        let mut w = put("s1", "MUG-1", key, mug(title));
        w.if_match = Some(1);
        let (status, accepted) = send(&stack, &alice, w).await?;
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["write_id"].as_str().unwrap_or_default().to_owned());
    }
    let (worker, task) = crate::support::start_worker(
        &publisher,
        &stack.topology,
        &stack.db.url,
        Some(stack.search.clone()),
        None,
    )?;
    let mut outcomes = Vec::new();
    for id in &ids {
        outcomes.push(decided(&stack, &alice, id).await?);
    }
    let applied: Vec<_> = outcomes.iter().filter(|o| o["status"] == "applied").collect();
    let rejected: Vec<_> = outcomes.iter().filter(|o| o["status"] == "rejected").collect();
    assert_eq!((applied.len(), rejected.len()), (1, 1), "{outcomes:?}");
    assert_eq!(applied[0]["version"], 2);
    assert!(rejected[0]["reason"].as_str().is_some_and(|r| r.contains("version conflict")), "{outcomes:?}");
    assert_eq!(product_events(&stack, "MUG-1").await?, [(1, true), (2, true)], "bumped once");
    worker.cancel();
    task.await?;
    Ok(())
}

#[tokio::test]
async fn a_deleted_product_is_gone_from_reads_kept_in_postgres_and_revived_by_a_put() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-1", "k1", mug("Mug")).await?, 1);
    let delete = |key| Write {
        method: reqwest::Method::DELETE,
        seller: "s1",
        sku: "MUG-1",
        key,
        body: None,
        if_match: None,
    };
    let (status, accepted) = send(&stack, &alice, delete("k2")).await?;
    assert_eq!(status, 202);
    assert_eq!(
        decided(&stack, &alice, accepted["write_id"].as_str().unwrap_or_default()).await?["version"],
        2
    );
    assert_eq!(stack.get(&alice, "/v1/products/MUG-1").await?.0, 404);
    let (_, page) = stack.get(&alice, "/v1/sellers/s1/products").await?;
    assert_eq!(page["items"], json!([]));
    assert_eq!(
        stack.count("select 1 from products where sku = 'MUG-1' and deleted_at is not null").await?,
        1
    );
    // A delete or a patch of a deleted product is rejected, and changes nothing.
    let (_, again) = send(&stack, &alice, delete("k3")).await?;
    let outcome = decided(&stack, &alice, again["write_id"].as_str().unwrap_or_default()).await?;
    assert!(outcome["reason"].as_str().is_some_and(|r| r.contains("missing or deleted")), "{outcome}");
    // A put revives it, with a higher version.
    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-1", "k4", mug("Mug again")).await?, 3);
    let (status, product) = stack.get(&alice, "/v1/products/MUG-1").await?;
    assert_eq!((status, &product["version"], &product["title"]), (200, &json!(3), &json!("Mug again")));
    assert_eq!(product_events(&stack, "MUG-1").await?, [(1, true), (2, false), (3, true)]);
    Ok(())
}

#[tokio::test]
async fn a_patch_of_a_missing_product_is_rejected_and_a_patch_of_a_live_one_applies() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    let patch = |sku, key, body| Write {
        method: reqwest::Method::PATCH,
        seller: "s1",
        sku,
        key,
        body: Some(body),
        if_match: None,
    };
    let (status, accepted) = send(&stack, &alice, patch("NOPE", "k1", json!({"stock": 3}))).await?;
    assert_eq!(status, 202, "{accepted}");
    let outcome = decided(&stack, &alice, accepted["write_id"].as_str().unwrap_or_default()).await?;
    assert_eq!(outcome["status"], "rejected");
    assert!(outcome["reason"].as_str().is_some_and(|r| r.contains("missing")), "{outcome}");
    assert_eq!(stack.count("select 1 from products").await?, 0);

    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-1", "k2", mug("Mug")).await?, 1);
    let (status, accepted) = send(
        &stack,
        &alice,
        patch("MUG-1", "k3", json!({"price_minor": 999, "attributes": {"dishwasher_safe": null}})),
    )
    .await?;
    assert_eq!(status, 202);
    assert_eq!(
        decided(&stack, &alice, accepted["write_id"].as_str().unwrap_or_default()).await?["version"],
        2
    );
    let (_, product) = stack.get(&alice, "/v1/products/MUG-1").await?;
    assert_eq!(product["price_minor"], 999);
    assert_eq!(product["attributes"], json!({"capacity_ml": 330, "material": "stoneware"}));
    assert_eq!(product_events(&stack, "NOPE").await?, [], "a rejected write emits nothing");
    Ok(())
}

#[tokio::test]
async fn product_reads_are_public_with_etags_and_304() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-1", "k1", mug("Mug")).await?, 1);
    let url = format!("{}/v1/products/MUG-1", stack.base);
    let r = stack.http.get(&url).send().await?;
    assert_eq!(r.status(), 200, "no token needed: the public tenant");
    assert_eq!(r.headers()["etag"], "\"1\"");
    assert!(r.headers()["cache-control"].to_str()?.starts_with("public, max-age="));
    let r = stack.http.get(&url).header("if-none-match", "\"1\"").send().await?;
    assert_eq!(r.status(), 304);
    assert_eq!(put_applied(&stack, &alice, "s1", "MUG-1", "k2", mug("Mug 2")).await?, 2);
    let r = stack.http.get(&url).header("if-none-match", "\"1\"").send().await?;
    assert_eq!((r.status().as_u16(), r.headers()["etag"].to_str()?), (200, "\"2\""));
    // A token reads its own tenant; a bad token is refused, not read as anonymous.
    let (status, _) = stack.get(&stack.token("u1", &[Role::Buyer]), "/v1/products/MUG-1").await?;
    assert_eq!(status, 404, "tenant t1 has no such product");
    assert_eq!(stack.get("not-a-token", "/v1/products/MUG-1").await?.0, 401);
    assert_eq!(stack.http.get(format!("{}/v1/products/NOPE", stack.base)).send().await?.status(), 404);
    Ok(())
}

#[tokio::test]
async fn seller_listings_page_with_a_cursor_and_name_bad_parameters() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1", "s2"]);
    for (i, sku) in ["A-1", "A-2", "A-3", "A-4", "A-5"].iter().enumerate() {
        put_applied(&stack, &alice, "s1", sku, &format!("k{i}"), mug(&format!("Mug {sku}"))).await?;
    }
    put_applied(&stack, &alice, "s2", "B-1", "kb", mug("Other")).await?;
    let mut seen = Vec::new();
    let mut path = "/v1/sellers/s1/products?per_page=2".to_owned();
    loop {
        let r = stack.http.get(format!("{}{path}", stack.base)).send().await?;
        let (status, page) = read_body(r).await?;
        assert_eq!(status, 200, "{page}");
        seen.extend(
            page["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["sku"].as_str())
                .map(str::to_owned),
        );
        match page["next_cursor"].as_str() {
            Some(cursor) => path = format!("/v1/sellers/s1/products?per_page=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, ["A-1", "A-2", "A-3", "A-4", "A-5"], "no duplicates, no gaps");
    let r = stack
        .http
        .get(format!("{}/v1/sellers/s1/products?per_page=101&cursor=%00&sort=x", stack.base))
        .send()
        .await?;
    let (status, problem) = read_body(r).await?;
    assert_eq!(status, 400);
    let fields: Vec<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, ["per_page", "cursor", "sort"]);
    Ok(())
}

#[tokio::test]
async fn an_unreadable_catalog_command_is_dead_lettered_and_writes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(souk_pipelines::headers::SCHEMA, "catalog.write/v1");
    headers.insert(souk_pipelines::headers::MSG_ID, "garbage-1");
    stack
        .js
        .publish_with_headers(souk_pipelines::subjects::CATALOG_WRITE, headers, "{not json".into())
        .await?
        .await?;
    eventually(WAIT, || async {
        let dead = stack.js.get_stream("DLQ").await.ok()?.info().await.ok()?.state.messages;
        (dead == 1).then_some(())
    })
    .await?;
    let dlq = stack.js.get_stream("DLQ").await?.get_raw_message(1).await?;
    assert_eq!(dlq.subject.as_str(), "souk.dlq.catalog-write");
    assert_eq!(&dlq.payload[..], b"{not json", "the original body");
    stack.quiescent(WAIT).await?;
    assert_eq!(
        stack.count("select 1 from catalog_writes").await? + stack.count("select 1 from products").await?,
        0
    );
    Ok(())
}

/// The path imports and the seed take: a `WriteProduct` published with a `Publisher`.
/// The same write id published again under another message id (a replay past every
/// dedupe window) is applied once.
#[tokio::test]
async fn a_write_published_twice_under_different_message_ids_is_applied_once() -> anyhow::Result<()> {
    use souk_pipelines::catalog::{ProductChange, ProductFields, WriteProduct};
    use souk_topologies::publisher::OutgoingMessage;
    let stack = Stack::start().await?;
    let publisher = Publisher::new(stack.client.clone(), Duration::from_millis(1500));
    let fields = ProductFields::from_json(&mug("Imported mug")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let cmd = WriteProduct {
        write_id: uuid::Uuid::now_v7(),
        tenant: TENANT.into(),
        seller: "s1".into(),
        sku: "IMP-1".into(),
        expected_version: None,
        change: ProductChange::Put { fields },
        actor: "import-job".into(),
        requested_at: chrono::Utc::now(),
        stock_basis: None,
    };
    publisher.publish(OutgoingMessage::command(&cmd, cmd.message_id(), &cmd.tenant)).await?;
    publisher
        .publish(OutgoingMessage::command(&cmd, format!("replay:{}", cmd.message_id()), &cmd.tenant))
        .await?;
    stack.quiescent(WAIT).await?;
    assert_eq!(product_events(&stack, "IMP-1").await?, [(1, true)]);
    let admin = seller_token(&stack, "root", &[Role::Admin], &[]);
    let outcome = decided(&stack, &admin, &cmd.write_id.to_string()).await?;
    assert_eq!((&outcome["status"], &outcome["version"]), (&json!("applied"), &json!(1)));
    Ok(())
}

/// A write the catalog pool cannot apply (here a rule the store enforces refuses its
/// SKU) is dead-lettered; its status then reads `failed` with the reason — not
/// `pending` for ever, as orders read `failed` — and a redrive after the cause is fixed
/// applies it.
#[tokio::test]
async fn a_dead_lettered_catalog_write_reads_failed_and_a_redrive_applies_it() -> anyhow::Result<()> {
    use souk_topologies::dead_letters;
    let stack = Stack::start().await?;
    sqlx::raw_sql(
        r#"create function refuse_banned_sku() returns trigger language plpgsql as $$
           begin
               if new.sku = 'BANNED-1' then
                   raise exception 'BANNED-1 is not sold here' using errcode = 'check_violation';
               end if;
               return new;
           end $$;
           create trigger refuse_banned_sku before insert or update on products
               for each row execute function refuse_banned_sku();"#,
    )
    .execute(&stack.db.pool)
    .await?;
    let token = seller_token(&stack, "sam", &[Role::Seller], &["s1"]);
    let (status, accepted) = send(&stack, &token, put("s1", "BANNED-1", "b1", mug("Banned mug"))).await?;
    assert_eq!(status, 202, "{accepted}");
    let write_id = accepted["write_id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(put_applied(&stack, &token, "s1", "FINE-1", "f1", mug("Fine mug")).await?, 1);
    eventually(WAIT, || async { (stack.stream_messages("DLQ").await.ok()? == 1).then_some(()) }).await?;

    let failed = decided(&stack, &token, &write_id).await?;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!((&failed["sku"], &failed["seller"]), (&json!("BANNED-1"), &json!("s1")), "{failed}");
    assert!(failed["reason"].as_str().unwrap_or_default().contains("not sold here"), "{failed}");
    assert!(product_events(&stack, "BANNED-1").await?.is_empty());

    // The cause fixed, a redrive applies the write, once.
    sqlx::query("drop trigger refuse_banned_sku on products").execute(&stack.db.pool).await?;
    let letters = dead_letters::list(&stack.js, 10).await?;
    assert_eq!(letters.len(), 1, "marking the write failed consumed no dead letter");
    let publisher = Publisher::new(stack.client.clone(), Duration::from_secs(2));
    dead_letters::replay(&publisher, letters[0].seq).await?;
    eventually(WAIT, || async {
        let (status, body) = stack.get(&token, &format!("/v1/catalog/writes/{write_id}")).await.ok()?;
        (status == 200 && body["status"] == "applied").then_some(body)
    })
    .await?;
    assert_eq!(product_events(&stack, "BANNED-1").await?, [(1, true)]);
    Ok(())
}

/// Two writes of one SKU sent one after the other (the second after the first's 202)
/// must not end with the first: here the first fails once (a transient error, retried
/// after a backoff) while the second is applied. The retried first write is older than
/// what the product holds, so it is rejected as superseded, and the product keeps the
/// second.
#[tokio::test]
async fn a_retried_older_write_does_not_overwrite_a_later_one() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    // "Mug A" fails while the product does not hold "Mug B" yet.
    sqlx::raw_sql(
        r#"create function hold_a() returns trigger language plpgsql as $$
           begin
               if new.title = 'Mug A' and not exists
                   (select 1 from products where sku = new.sku and title = 'Mug B') then
                   raise exception 'try again' using errcode = 'serialization_failure';
               end if;
               return new;
           end $$;
           create trigger hold_a before insert or update on products
               for each row execute function hold_a();"#,
    )
    .execute(&stack.db.pool)
    .await?;
    let token = seller_token(&stack, "sam", &[Role::Seller], &["s1"]);
    let mut ids = Vec::new();
    for (key, title) in [("a", "Mug A"), ("b", "Mug B")] {
        let (status, accepted) = send(&stack, &token, put("s1", "MUG-1", key, mug(title))).await?;
        assert_eq!(status, 202, "{accepted}");
        ids.push(accepted["write_id"].as_str().unwrap_or_default().to_owned());
    }
    let first = decided(&stack, &token, &ids[0]).await?;
    let second = decided(&stack, &token, &ids[1]).await?;
    assert_eq!((&second["status"], &second["version"]), (&json!("applied"), &json!(1)), "{second}");
    assert_eq!(first["status"], "rejected", "{first}");
    assert!(first["reason"].as_str().unwrap_or_default().contains("superseded"), "{first}");
    let (status, product) = stack.get(&token, "/v1/products/MUG-1").await?;
    assert_eq!((status, &product["title"]), (200, &json!("Mug B")), "{product}");
    assert_eq!(product_events(&stack, "MUG-1").await?, [(1, true)]);
    Ok(())
}

/// A body with a key twice is ambiguous (a proxy or another parser may read the other
/// value): it is refused, as order bodies are, and nothing is published.
#[tokio::test]
async fn a_product_body_with_a_duplicate_key_is_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = seller_token(&stack, "sam", &[Role::Seller], &["s1"]);
    let body = mug("Mug").to_string();
    let doubled = body.replacen("\"price_minor\":1299", "\"price_minor\":1,\"price_minor\":1299", 1);
    let nested =
        body.replacen("\"material\":\"stoneware\"", "\"material\":\"glass\",\"material\":\"stoneware\"", 1);
    for (key, raw) in [("d1", doubled), ("d2", nested)] {
        assert_ne!(raw, body, "the test doubles a key");
        let response = stack
            .http
            .put(format!("{}/v1/sellers/s1/products/MUG-1", stack.base))
            .bearer_auth(&token)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(raw)
            .send()
            .await?;
        let (status, problem) = read_body(response).await?;
        assert_eq!(status, 400, "{problem}");
        assert!(problem["detail"].as_str().unwrap_or_default().contains("duplicate"), "{problem}");
    }
    assert_eq!(commands_stored(&stack).await?, 0);
    Ok(())
}

/// A deleted SKU still belongs to its seller: another seller can neither re-create it
/// nor patch or delete it, and its owner revives it at the next version.
#[tokio::test]
async fn a_deleted_sku_stays_its_sellers_and_another_cannot_recreate_it() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let carol = seller_token(&stack, "carol", &[Role::Seller], &["s2"]);
    let alice = seller_token(&stack, "alice", &[Role::Seller], &["s1"]);
    assert_eq!(put_applied(&stack, &carol, "s2", "MUG-1", "c1", mug("Mug")).await?, 1);
    let delete = Write {
        method: reqwest::Method::DELETE,
        seller: "s2",
        sku: "MUG-1",
        key: "c2",
        body: None,
        if_match: None,
    };
    let (status, accepted) = send(&stack, &carol, delete).await?;
    assert_eq!(status, 202, "{accepted}");
    let deleted = decided(&stack, &carol, accepted["write_id"].as_str().unwrap_or_default()).await?;
    assert_eq!((&deleted["status"], &deleted["version"]), (&json!("applied"), &json!(2)));
    let patch = json!({"price_minor": 1});
    for w in [
        put("s1", "MUG-1", "a1", mug("Taken")),
        Write {
            method: reqwest::Method::PATCH,
            seller: "s1",
            sku: "MUG-1",
            key: "a2",
            body: Some(patch),
            if_match: None,
        },
        Write {
            method: reqwest::Method::DELETE,
            seller: "s1",
            sku: "MUG-1",
            key: "a3",
            body: None,
            if_match: None,
        },
    ] {
        let (status, accepted) = send(&stack, &alice, w).await?;
        assert_eq!(status, 202, "{accepted}");
        let outcome = decided(&stack, &alice, accepted["write_id"].as_str().unwrap_or_default()).await?;
        assert_eq!(outcome["status"], "rejected", "{outcome}");
        assert!(outcome["reason"].as_str().is_some_and(|r| r.contains("another seller")), "{outcome}");
    }
    assert_eq!(put_applied(&stack, &carol, "s2", "MUG-1", "c3", mug("Mug again")).await?, 3);
    let (status, product) = stack.get(&carol, "/v1/products/MUG-1").await?;
    assert_eq!(
        (status, &product["seller"], &product["version"]),
        (200, &json!("s2"), &json!(3)),
        "{product}"
    );
    assert_eq!(product_events(&stack, "MUG-1").await?, [(1, true), (2, false), (3, true)]);
    Ok(())
}

/// Admission control: while the catalog pool is far behind — here stalled (not running),
/// so its measured rate is 0 and the bound is `MIN_BACKLOG` writes — a write is refused
/// with 503 (publishing nothing) instead of being accepted behind a backlog that would
/// make it searchable only much later; once the backlog drains, writes are accepted again.
#[tokio::test]
async fn a_catalog_write_behind_a_full_backlog_is_refused_until_it_drains() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions { pools: false, ..Default::default() }).await?;
    let token = seller_token(&stack, "sam", &[Role::Seller], &["s1"]);
    // A backlog the catalog pool has not taken (its pool is not running).
    let backlog = souk_ingress::MIN_BACKLOG + 1;
    let mut acks = Vec::new();
    for i in 0..backlog {
        acks.push(stack.js.publish("souk.cmd.catalog.write", format!("backlog {i}").into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    let (status, problem) = eventually(WAIT, || async {
        let before = commands_stored(&stack).await?;
        let (status, problem) = send(&stack, &token, put("s1", "MUG-B", "k-backlog", mug("Behind"))).await?;
        anyhow::ensure!(
            commands_stored(&stack).await? == before || status == 202,
            "a refused write published"
        );
        anyhow::Ok((status == 503).then_some((status, problem)))
    })
    .await?;
    assert_eq!(status, 503);
    let detail = problem["detail"].as_str().unwrap_or_default();
    // The backlog as last read: ours, and this request's own earlier tries that were
    // accepted before the backlog was read.
    let behind: u64 = detail
        .strip_prefix("the catalog is ")
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(behind >= backlog && detail.contains("writes behind"), "{problem}");

    // Drained (here: the backlog removed from the stream), writes are accepted again.
    stack.js.get_stream("CMD").await?.purge().filter("souk.cmd.catalog.write").await?;
    let accepted = eventually(WAIT, || async {
        let (status, body) = send(&stack, &token, put("s1", "MUG-C", "k-after", mug("After"))).await?;
        anyhow::Ok((status == 202).then_some(body))
    })
    .await?;
    assert_eq!(accepted["sku"], "MUG-C");
    Ok(())
}

/// Stand in for the catalog pool at a slow, steady pace: take and acknowledge `per_tick`
/// writes from its consumer every 100 ms, until the task is aborted.
fn drain_slowly(stack: &Stack, per_tick: usize) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    use async_nats::jetstream::consumer::pull;
    use futures::StreamExt;
    let js = stack.js.clone();
    tokio::spawn(async move {
        let consumer: async_nats::jetstream::consumer::Consumer<pull::Config> = js
            .get_stream("CMD")
            .await?
            .get_consumer("catalog-write")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            let mut batch = consumer
                .fetch()
                .max_messages(per_tick)
                .expires(Duration::from_millis(50))
                .messages()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            while let Some(message) = batch.next().await {
                message
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
    })
}

/// `n` writes the catalog pool has not applied yet (bodies it would dead-letter; only
/// their number matters here).
async fn publish_backlog(stack: &Stack, n: u64) -> anyhow::Result<()> {
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(stack.js.publish("souk.cmd.catalog.write", format!("backlog {i}").into()).await?);
    }
    for ack in acks {
        ack.await?;
    }
    Ok(())
}

/// The bound is time: 2,000 writes behind a pool applying ~250/s is ~8 s of work, over
/// a `catalog-max-backlog` of 1 s — refused, and the refusal names the measured rate and
/// the drain time.
#[tokio::test]
async fn a_catalog_write_is_refused_while_the_backlog_would_take_longer_than_the_bound_to_drain()
-> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        pools: false,
        catalog_max_backlog: Duration::from_secs(1),
        ..Default::default()
    })
    .await?;
    let token = seller_token(&stack, "sam", &[Role::Seller], &["s1"]);
    publish_backlog(&stack, 2_000).await?;
    let pool = drain_slowly(&stack, 25);
    // Writes sent before the gate's first read of the backlog may pass (at most the
    // minimum); from the first refusal on, the gate has seen it.
    let refusal = async {
        let write = || send(&stack, &token, put("s1", "MUG-T", "k-time", mug("Behind")));
        eventually(WAIT, || async { anyhow::Ok((write().await?.0 == 503).then_some(())) }).await?;
        // Refused at first with no rate measured (the minimum); then by the measured rate.
        let accepted = std::sync::atomic::AtomicU32::new(0);
        let detail = eventually(WAIT, || async {
            let (status, problem) = write().await?;
            if status == 202 {
                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            let detail = problem["detail"].as_str().unwrap_or_default().to_owned();
            anyhow::Ok(detail.contains("writes/s it applies").then_some(detail))
        })
        .await?;
        let accepted = accepted.into_inner();
        anyhow::ensure!(accepted == 0, "{accepted} writes accepted behind ~8 s of work");
        anyhow::Ok(detail)
    }
    .await;
    pool.abort();
    let detail = refusal?;
    assert!(detail.contains("the bound is 1.0 s"), "{detail}");
    let seconds: f64 = detail
        .split("about ")
        .nth(1)
        .and_then(|d| d.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(seconds > 1.0, "{detail}");
    Ok(())
}

/// ... and a backlog is admitted under a bound it drains within: 20 times the minimum
/// every pool is allowed behind (where a stalled pool stops), at ~250/s, is seconds of
/// work, well under a `catalog-max-backlog` of 10 minutes.
#[tokio::test]
async fn a_backlog_that_drains_within_the_bound_admits_writes() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions {
        pools: false,
        catalog_max_backlog: Duration::from_secs(600),
        ..Default::default()
    })
    .await?;
    let token = seller_token(&stack, "sam", &[Role::Seller], &["s1"]);
    let backlog = 20 * souk_ingress::MIN_BACKLOG;
    publish_backlog(&stack, backlog).await?;
    let pool = drain_slowly(&stack, 25);
    let accepted = eventually(WAIT, || async {
        let (status, body) = send(&stack, &token, put("s1", "MUG-W", "k-within", mug("Within"))).await?;
        anyhow::ensure!(status == 202 || status == 503, "{status} {body}");
        Ok((status == 202).then_some(body))
    })
    .await;
    pool.abort();
    assert_eq!(accepted?["sku"], "MUG-W");
    // Accepted behind the backlog, not after it drained.
    let info = stack.js.get_stream("CMD").await?.consumer_info("catalog-write").await?;
    assert!(info.num_pending + info.num_ack_pending as u64 > souk_ingress::MIN_BACKLOG, "{info:?}");
    Ok(())
}
