//! Checkout end to end on a whole node (issue 10): carts and `POST /v1/checkout` over
//! HTTP, the order saga through every pool, real nats-server and Postgres, the payment
//! SANDBOXES as real HTTP servers. What a test asserts it reads from outside where it
//! can — `GET /v1/orders/{id}`, `GET /v1/products/{sku}`, the sellers' lists, the
//! sandboxes' status-by-key over HTTP — and checks against the books (stock rows, the
//! payments ledger, the sandboxes' own count of money moved per key).
//!
//! Here: the happy path and bad input; `failures` (each failure point, a worker killed
//! between every two steps), `race` (200 buyers for 50 units, expired holds), `chaos`.

mod chaos;
mod failures;
mod race;

use serde_json::{Value, json};
use souk_ingress::{Claims, Role};
use souk_pipelines::payments::{Operation, idempotency_key};
use souk_testkit::{Stack, eventually, read_body};
use std::time::Duration;
use uuid::Uuid;

pub(crate) const TENANT: &str = "t1";
/// How long one order may take to end its saga on a busy machine.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// A buyer's token.
pub(crate) fn buyer(stack: &Stack, name: &str) -> String {
    stack.token(name, &[Role::Buyer])
}

/// A token acting for `seller`.
pub(crate) fn seller(stack: &Stack, seller: &str) -> String {
    let claims = Claims::new(seller, TENANT, vec![Role::Seller], Duration::from_secs(3600))
        .with_sellers(vec![seller.to_owned()]);
    stack.keys.mint(&claims)
}

/// `PUT /v1/cart/items/{sku}`.
pub(crate) async fn put_item(
    stack: &Stack,
    token: &str,
    sku: &str,
    quantity: i64,
) -> anyhow::Result<(u16, Value)> {
    let r = stack
        .http
        .put(format!("{}/v1/cart/items/{sku}", stack.base))
        .bearer_auth(token)
        .json(&json!({"quantity": quantity}))
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    read_body(r).await
}

/// `POST /v1/checkout` under `key` with `body`: status, content type, body.
pub(crate) async fn checkout_raw(
    stack: &Stack,
    token: &str,
    key: &str,
    body: &Value,
) -> anyhow::Result<(u16, String, Value)> {
    let r = stack
        .http
        .post(format!("{}/v1/checkout", stack.base))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let content_type =
        r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let (status, body) = read_body(r).await?;
    Ok((status, content_type, body))
}

/// Fill `token`'s cart with `items` and check it out paying with `payment_token`:
/// the order id of the 202 (anything else fails).
pub(crate) async fn buy(
    stack: &Stack,
    token: &str,
    key: &str,
    items: &[(&str, i64)],
    payment_token: &str,
) -> anyhow::Result<Uuid> {
    for (sku, quantity) in items {
        let (status, cart) = put_item(stack, token, sku, *quantity).await?;
        anyhow::ensure!(status == 200, "PUT {sku}: {status} {cart}");
    }
    let (status, _, accepted) =
        checkout_raw(stack, token, key, &json!({"payment_token": payment_token})).await?;
    anyhow::ensure!(status == 202, "checkout: {status} {accepted}");
    Ok(accepted["order_id"].as_str().unwrap_or_default().parse()?)
}

/// `GET /v1/orders/{id}` (200, or an error).
pub(crate) async fn order(stack: &Stack, token: &str, id: Uuid) -> anyhow::Result<Value> {
    let (status, body) = stack.get(token, &format!("/v1/orders/{id}")).await?;
    anyhow::ensure!(status == 200, "GET order {id}: {status} {body}");
    Ok(body)
}

/// The order once its status is one of `statuses` (read over HTTP).
pub(crate) async fn order_reaches(
    stack: &Stack,
    token: &str,
    id: Uuid,
    statuses: &[&str],
    timeout: Duration,
) -> anyhow::Result<Value> {
    let last = std::sync::Mutex::new(Value::Null);
    eventually(timeout, || async {
        let body = order(stack, token, id).await?;
        let reached = statuses.iter().any(|s| body["status"] == *s);
        *last.lock().expect("lock") = body.clone();
        anyhow::Ok(reached.then_some(body))
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!("{e}: order {id} never {statuses:?}; last seen {}", last.lock().expect("lock"))
    })
}

/// The order's saga state (from `GET /v1/orders/{id}`).
pub(crate) async fn saga_state(stack: &Stack, token: &str, id: Uuid) -> anyhow::Result<String> {
    Ok(order(stack, token, id).await?["saga"]["state"].as_str().unwrap_or_default().to_owned())
}

/// A product's `stock` as buyers see it: the units still available to buy.
pub(crate) async fn product_stock(stack: &Stack, token: &str, sku: &str) -> anyhow::Result<i64> {
    let (status, body) = stack.get(token, &format!("/v1/products/{sku}")).await?;
    anyhow::ensure!(status == 200, "GET product {sku}: {status} {body}");
    body["stock"].as_i64().ok_or_else(|| anyhow::anyhow!("no stock in {body}"))
}

/// A SKU's stock row: (on hand, held, sold). Conservation: on hand + sold is what the
/// seller put up (available + held + sold, available = on hand − held).
pub(crate) async fn units(stack: &Stack, sku: &str) -> anyhow::Result<(i64, i64, i64)> {
    Ok(sqlx::query_as("select on_hand, held, sold from stock where tenant = $1 and sku = $2")
        .bind(TENANT)
        .bind(sku)
        .fetch_one(&stack.db.pool)
        .await?)
}

/// What the payments ledger holds for an order: (authorizations, captures, voids,
/// refunds), and the provider of its authorization.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ledger {
    pub authorized: i64,
    pub captured: i64,
    pub voided: i64,
    pub refunded: i64,
    pub provider: Option<String>,
}

pub(crate) async fn ledger(stack: &Stack, id: Uuid) -> anyhow::Result<Ledger> {
    let (authorized, captured, voided, refunded, provider): (i64, i64, i64, i64, Option<String>) =
        sqlx::query_as(
            "select (select count(*) from payment_authorizations where order_id = $1),
                    (select coalesce(sum(amount_minor), 0)::bigint from payment_captures where order_id = $1),
                    (select count(*) from payment_voids where order_id = $1),
                    (select coalesce(sum(amount_minor), 0)::bigint from payment_refunds where order_id = $1),
                    (select provider from payment_authorizations where order_id = $1)",
        )
        .bind(id)
        .fetch_one(&stack.db.pool)
        .await?;
    Ok(Ledger { authorized, captured, voided, refunded, provider })
}

/// How many times money moved under the order's `operation` key, at every sandbox
/// (the sandboxes' own books: an honest provider moves money once per key).
pub(crate) fn moved(stack: &Stack, id: Uuid, operation: Operation) -> u32 {
    let key = idempotency_key(id, operation);
    stack.payment_sandboxes.iter().map(|s| s.effects(&key)).sum()
}

/// Ask sandbox `i` (0: primary, alpha dialect; 1: secondary, beta) over HTTP what it
/// answered under the order's `operation` key: `None` when it processed no such request.
pub(crate) async fn sandbox_answer(
    stack: &Stack,
    i: usize,
    id: Uuid,
    operation: Operation,
) -> anyhow::Result<Option<Value>> {
    let key = idempotency_key(id, operation);
    let path = match i {
        0 => format!("/alpha/v1/idempotency/{key}"),
        _ => format!("/beta/requests/{key}"),
    };
    let r = stack.http.get(format!("{}{path}", stack.payment_sandboxes[i].url())).send().await?;
    anyhow::ensure!(r.headers().get("x-sandbox").is_some(), "not a sandbox answering");
    let (status, body) = read_body(r).await?;
    match status {
        200 => Ok(Some(body)),
        404 => Ok(None),
        _ => anyhow::bail!("status by key {key} at sandbox {i}: {status} {body}"),
    }
}

/// A seller's listed orders (`GET /v1/sellers/{s}/orders`).
pub(crate) async fn seller_orders(stack: &Stack, s: &str) -> anyhow::Result<Vec<Value>> {
    let (status, body) = stack.get(&seller(stack, s), &format!("/v1/sellers/{s}/orders")).await?;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(body["items"].as_array().cloned().unwrap_or_default())
}

/// `POST /v1/sellers/{s}/orders/{id}/ship`.
pub(crate) async fn ship(stack: &Stack, s: &str, id: Uuid) -> anyhow::Result<(u16, Value)> {
    let r = stack
        .http
        .post(format!("{}/v1/sellers/{s}/orders/{id}/ship", stack.base))
        .bearer_auth(seller(stack, s))
        .send()
        .await?;
    read_body(r).await
}

/// A `souk worker` process (the real binary) running every pool but `without`, on the
/// stack's nats-server and database, paying at the stack's sandboxes.
pub(crate) fn souk_worker(
    stack: &Stack,
    data: &std::path::Path,
    keys: &str,
    without: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    // The timers the stack's consumers were made with (a 2 s ack wait, not 60 s).
    let ack_wait = stack.topology.consumers.first().map_or(souk_testkit::TEST_ACK_WAIT, |c| c.ack_wait);
    let topology = souk_testkit::test_topology_toml(ack_wait)?;
    anyhow::ensure!(
        souk_topologies::spec::Topology::parse(&topology)? == stack.topology,
        "the stack's topology"
    );
    let file = data.join("topology.toml");
    std::fs::write(&file, topology)?;
    let mut worker = crate::binary::souk(data);
    worker
        .args(["worker", "--no-relay"])
        .env("SOUK_TOPOLOGY", &file)
        .env("SOUK_NATS_URL", stack.nats.url())
        .env("DATABASE_URL", &stack.db.url)
        .env("SOUK_JWT_KEYS", keys)
        .env("SOUK_PAYMENTS_PRIMARY_URL", stack.payment_sandboxes[0].url())
        .env("SOUK_PAYMENTS_SECONDARY_URL", stack.payment_sandboxes[1].url())
        // The stack's own payments pools' timers (`test_payment_retry`, 1 s calls).
        .env("SOUK_PAYMENTS_BUDGET", "3s")
        .env("SOUK_PAYMENTS_CALL_TIMEOUT", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Where a run is being debugged: each worker's log in a file of its own there.
    if let Ok(dir) = std::env::var("TEST_WORKER_LOGS") {
        let f = std::fs::File::create(format!("{dir}/worker-{}.log", uuid::Uuid::now_v7()))?;
        worker.stderr(f.try_clone()?).stdout(f);
    }
    // The search index is the stack's (one writer): the worker leaves the indexer to it.
    let mut skipped = without.to_vec();
    skipped.push("catalog-index");
    for pool in pools_but(stack, &skipped) {
        worker.args(["--pool", pool]);
    }
    Ok(worker.spawn()?)
}

/// The names of the topology's pools, less `without`.
pub(crate) fn pools_but<'a>(stack: &'a Stack, without: &[&str]) -> Vec<&'a str> {
    stack.topology.pools.iter().map(|p| p.name.as_str()).filter(|p| !without.contains(p)).collect()
}

#[tokio::test]
async fn a_multi_seller_checkout_is_confirmed_charged_once_and_shipped_by_each_seller() -> anyhow::Result<()>
{
    use souk_testkit::catalog::{for_sale, seed};
    let stack = Stack::start().await?;
    let products = [
        for_sale("MUG", "potter", 1299, 10),
        for_sale("TEA", "grocer", 849, 20),
        for_sale("HAT", "milliner", 2500, 3),
    ];
    seed(&stack.db.pool, TENANT, &products).await?;
    let alice = buyer(&stack, "alice");
    let items = [("MUG", 2), ("TEA", 3), ("HAT", 1)];
    let total = 2 * 1299 + 3 * 849 + 2500;
    let id = buy(&stack, &alice, "c1", &items, "tok_ok").await?;

    let confirmed = order_reaches(&stack, &alice, id, &["confirmed"], WAIT).await?;
    assert_eq!(confirmed["saga"]["state"], "fulfilling", "{confirmed}");
    // Stock: what buyers see, and the books (on hand + sold = what was put up).
    for ((sku, quantity), initial) in items.iter().zip([10, 20, 3]) {
        assert_eq!(product_stock(&stack, &alice, sku).await?, initial - quantity, "{sku}");
        assert_eq!(
            units(&stack, sku).await?,
            (initial - quantity, 0, *quantity),
            "{sku}: on hand, held, sold"
        );
    }
    // Money: one authorization and one capture of the total, at the primary, asked over
    // HTTP; nothing at the secondary; the sandboxes moved money once per key.
    let auth = sandbox_answer(&stack, 0, id, Operation::Authorize).await?;
    let auth = auth.ok_or_else(|| anyhow::anyhow!("the primary has no authorization"))?;
    assert_eq!(auth["payment"]["amount_minor"], total, "{auth}");
    let capture = sandbox_answer(&stack, 0, id, Operation::Capture).await?;
    let capture = capture.ok_or_else(|| anyhow::anyhow!("the primary has no capture"))?;
    assert_eq!(capture["payment"]["captured_minor"], total, "{capture}");
    assert_eq!(sandbox_answer(&stack, 1, id, Operation::Authorize).await?, None, "nothing at the secondary");
    let moves: Vec<u32> = [Operation::Authorize, Operation::Capture, Operation::Void, Operation::Refund]
        .map(|o| moved(&stack, id, o))
        .into();
    assert_eq!(moves, [1, 1, 0, 0], "authorize, capture, void, refund at the sandboxes");
    let books = ledger(&stack, id).await?;
    let expected =
        Ledger { authorized: 1, captured: total, voided: 0, refunded: 0, provider: Some("primary".into()) };
    assert_eq!(books, expected);

    // One fulfilment request per seller, each listing its own lines; shipped once all ship.
    for (s, sku, quantity) in [("potter", "MUG", 2), ("grocer", "TEA", 3), ("milliner", "HAT", 1)] {
        let listed = eventually(WAIT, || async {
            let items = seller_orders(&stack, s).await?;
            anyhow::Ok(items.into_iter().find(|o| o["order_id"] == id.to_string().as_str()))
        })
        .await?;
        assert_eq!(listed["lines"], json!([{"sku": sku, "quantity": quantity}]), "{s}: {listed}");
        assert_eq!(listed["status"], "requested");
        assert_eq!(seller_orders(&stack, s).await?.len(), 1, "{s}: one request");
    }
    let requests = stack.count(&format!("select 1 from fulfilments where order_id = '{id}'")).await?;
    assert_eq!(requests, 3, "one request per seller");
    for (i, s) in ["potter", "grocer", "milliner"].into_iter().enumerate() {
        let (status, body) = ship(&stack, s, id).await?;
        assert_eq!(status, 202, "{s}: {body}");
        if i < 2 {
            // Not every seller has shipped: still confirmed once this ship is handled.
            eventually(WAIT, || async {
                let n = stack
                    .count(&format!(
                        "select 1 from fulfilments where order_id = '{id}' and status = 'shipped'"
                    ))
                    .await?;
                anyhow::Ok((n == i as i64 + 1).then_some(()))
            })
            .await?;
            stack.quiescent(WAIT).await?;
            assert_eq!(order(&stack, &alice, id).await?["status"], "confirmed", "after {s} shipped");
        }
    }
    order_reaches(&stack, &alice, id, &["shipped"], WAIT).await?;
    stack.quiescent(WAIT).await?;
    let events = crate::events::all(&stack).await?;
    let of = |subject: &str| {
        events
            .iter()
            .filter(|e| e.subject == subject && e.body["order_id"] == id.to_string().as_str())
            .count()
    };
    assert_eq!(of(souk_pipelines::subjects::ORDERS_CONFIRMED), 1);
    assert_eq!(of(souk_pipelines::subjects::ORDERS_SHIPPED), 1);
    assert_eq!(stack.stream_messages("DLQ").await?, 0, "nothing dead-lettered");
    Ok(())
}

/// Checkouts the ingress must refuse that only a whole node can produce: units sold by
/// another buyer's saga, a SKU its seller deleted through the API while it sat in a
/// cart, a card number as the Idempotency-Key or as a field's name. Each is a clear
/// problem+json 4xx, and nothing is published. (Empty carts, card numbers as tokens,
/// unknown fields, replayed keys with another cart: `ingress/tests/it/checkout.rs`.)
#[tokio::test]
async fn checkouts_the_node_must_refuse_get_problems_and_publish_nothing() -> anyhow::Result<()> {
    use souk_testkit::catalog::{for_sale, seed};
    let stack = Stack::start().await?;
    seed(&stack.db.pool, TENANT, &[for_sale("MUG", "potter", 1299, 5), for_sale("SPOON", "potter", 300, 10)])
        .await?;
    let (alice, bob) = (buyer(&stack, "alice"), buyer(&stack, "bob"));
    // Alice's cart holds 3 mugs and a spoon; Bob buys 4 of the 5 mugs first.
    assert_eq!(put_item(&stack, &alice, "MUG", 3).await?.0, 200);
    assert_eq!(put_item(&stack, &alice, "SPOON", 1).await?.0, 200);
    let bobs = buy(&stack, &bob, "b1", &[("MUG", 4)], "tok_ok").await?;
    order_reaches(&stack, &bob, bobs, &["confirmed"], WAIT).await?;
    // The seller deletes the spoon through the API.
    let r = stack
        .http
        .delete(format!("{}/v1/sellers/potter/products/SPOON", stack.base))
        .bearer_auth(seller(&stack, "potter"))
        .header("idempotency-key", "del-1")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    eventually(WAIT, || async {
        anyhow::Ok((stack.get(&alice, "/v1/products/SPOON").await?.0 == 404).then_some(()))
    })
    .await?;
    stack.quiescent(WAIT).await?;
    let published = |stack: &Stack| {
        let js = stack.js.clone();
        async move { anyhow::Ok(js.get_stream("CMD").await?.get_info().await?.state.last_sequence) }
    };
    let before = published(&stack).await?;

    let pay = json!({"payment_token": "tok_ok"});
    let (status, kind, problem) = checkout_raw(&stack, &alice, "a1", &pay).await?;
    assert_eq!((status, kind.as_str()), (422, "application/problem+json"), "{problem}");
    let named: Vec<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(named, ["items[0].quantity", "items[1].sku"], "{problem}");
    assert!(problem.to_string().contains("only 1"), "the units left are named: {problem}");

    // A card number, as the key or as a field's name: refused, and never echoed back.
    assert_eq!(
        stack
            .http
            .delete(format!("{}/v1/cart/items/SPOON", stack.base))
            .bearer_auth(&alice)
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    assert_eq!(put_item(&stack, &alice, "MUG", 1).await?.0, 200);
    for (key, body) in [
        ("4111111111111111", pay.clone()),
        ("4111-1111-1111-1111", pay.clone()),
        ("a2", json!({"payment_token": "tok_ok", "4111111111111111": true})),
        ("a3", json!({"payment_token": 4111111111111111_u64})),
    ] {
        let (status, kind, problem) = checkout_raw(&stack, &alice, key, &body).await?;
        assert!((400..500).contains(&status), "{key} {body}: {status} {problem}");
        // Refused for what it carries — not for a cart held by an earlier refusal,
        // which would answer 409 without the check ever running (test audit).
        assert_ne!(status, 409, "{key} {body}: {problem}");
        assert_eq!(kind, "application/problem+json", "{key} {body}");
        let text = problem.to_string();
        assert!(
            !text.contains("4111111111111111") && !text.contains("4111-1111"),
            "a card number echoed: {text}"
        );
    }
    let stored = stack.count("select 1 from idempotency_keys where key ~ '^[0-9 -]{13,}$'").await?;
    assert_eq!(stored, 0, "a card number was stored as a key");

    stack.quiescent(WAIT).await?;
    assert_eq!(published(&stack).await?, before, "nothing published on any 4xx");
    let (_, cart) = stack.get(&alice, "/v1/cart").await?;
    assert_eq!(cart["items"].as_array().map(Vec::len), Some(1), "the cart is as it was: {cart}");
    Ok(())
}
