use souk_ingress::Role;
use souk_testkit::{Stack, catalog::for_sale, eventually, order_body};
use std::time::Duration;

async fn wait_persisted(stack: &Stack, token: &str, order_id: &str) -> anyhow::Result<serde_json::Value> {
    eventually(Duration::from_secs(15), || async {
        match stack.get(token, &format!("/v1/orders/{order_id}")).await {
            Ok((200, body)) if body["status"] != "pending" => Some(body),
            _ => None,
        }
    })
    .await
}

#[tokio::test]
async fn an_order_flows_from_http_to_postgres_and_its_event_to_jetstream() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (mug, tea) = (for_sale("MUG-1", "potter", 1299, 10), for_sale("TEA-9", "grocer", 450, 10));
    souk_testkit::catalog::seed(&stack.db.pool, "t1", &[mug, tea]).await?;
    let token = stack.token("alice", &[Role::Buyer]);
    let body = serde_json::json!({"lines": [
        {"sku": "MUG-1", "quantity": 2},
        {"sku": "TEA-9", "quantity": 1}
    ], "payment_token": "tok_ok"});
    let (status, accepted) = stack.place(&token, "key-1", &body).await?;
    assert_eq!(status, 202, "{accepted}");
    let order_id = accepted["order_id"].as_str().expect("order id").to_owned();
    assert_eq!(accepted["status_url"], format!("/v1/orders/{order_id}"));

    let order = wait_persisted(&stack, &token, &order_id).await?;
    assert_eq!(order["buyer_id"], "alice");
    assert_eq!(order["tenant"], "t1");
    assert_eq!(order["total_minor"], 2 * 1299 + 450);
    assert_eq!(order["currency"], "EUR");
    assert_eq!(order["lines"].as_array().map(Vec::len), Some(2));
    // Every pool runs: the order's saga reserves, authorizes, commits and captures.
    let order = eventually(Duration::from_secs(30), || async {
        match stack.get(&token, &format!("/v1/orders/{order_id}")).await {
            Ok((200, body)) if body["status"] != "accepted" => Some(body),
            _ => None,
        }
    })
    .await?;
    assert_eq!(
        (&order["status"], &order["reason"]),
        (&"confirmed".into(), &serde_json::Value::Null),
        "{order}"
    );

    // Its events reach the EVT stream through the outbox relay, each once.
    use souk_pipelines::subjects::{ORDERS_ACCEPTED, ORDERS_CANCELLED, ORDERS_CONFIRMED};
    let accepted = eventually(Duration::from_secs(10), || async {
        let found = crate::events::of_order(&stack, ORDERS_CONFIRMED, &order_id).await.ok()?;
        (!found.is_empty()).then_some(())?;
        crate::events::of_order(&stack, ORDERS_ACCEPTED, &order_id).await.ok()
    })
    .await?;
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert_eq!(accepted[0].schema.as_deref(), Some("orders.accepted/v1"));
    assert_eq!(accepted[0].body["total_minor"], 2 * 1299 + 450);
    stack.quiescent(Duration::from_secs(10)).await?;
    assert_eq!(crate::events::of_order(&stack, ORDERS_CONFIRMED, &order_id).await?.len(), 1);
    assert_eq!(crate::events::of_order(&stack, ORDERS_CANCELLED, &order_id).await?.len(), 0);
    // The relay marks rows published right after JetStream acknowledges them.
    eventually(Duration::from_secs(10), || async {
        (stack.count("select 1 from outbox where published_at is null").await.ok()? == 0).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn fifty_concurrent_posts_with_one_key_make_one_order() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.seed_skus(&["SKU-1"]).await?;
    let token = stack.token("bob", &[Role::Buyer]);
    let body = order_body("SKU-1", 3);
    let results = futures::future::join_all((0..50).map(|_| stack.place(&token, "same-key", &body))).await;
    let mut ids = std::collections::HashSet::new();
    for r in results {
        let (status, json) = r?;
        assert_eq!(status, 202, "{json}");
        ids.insert(json["order_id"].as_str().expect("id").to_owned());
    }
    assert_eq!(ids.len(), 1, "every response names the same order");
    let order_id = ids.into_iter().next().expect("one id");
    wait_persisted(&stack, &token, &order_id).await?;
    assert_eq!(stack.count("select 1 from orders").await?, 1);
    // The command is consumed: acked (after the commit) and so removed from CMD.
    eventually(Duration::from_secs(10), || async {
        (stack.stream_messages("CMD").await.ok()? == 0).then_some(())
    })
    .await?;

    // Same key, same body, later: same answer. Different body: 422, nothing new.
    let (status, again) = stack.place(&token, "same-key", &body).await?;
    assert_eq!((status, again["order_id"].as_str()), (202, Some(order_id.as_str())));
    let (status, problem) = stack.place(&token, "same-key", &order_body("SKU-1", 4)).await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["type"], "https://souk.dev/problems/idempotency-key-reused");
    // The same key from another buyer is another request.
    let carol = stack.token("carol", &[Role::Buyer]);
    let (status, other) = stack.place(&carol, "same-key", &body).await?;
    assert_eq!(status, 202);
    assert_ne!(other["order_id"].as_str(), Some(order_id.as_str()));
    // Once nothing is in flight: two orders, each accepted once and its saga ended once.
    stack.quiescent(Duration::from_secs(10)).await?;
    assert_eq!(stack.count("select 1 from orders").await?, 2);
    use souk_pipelines::subjects::{ORDERS_ACCEPTED, ORDERS_CANCELLED, ORDERS_CONFIRMED};
    for id in [order_id.as_str(), other["order_id"].as_str().expect("id")] {
        let accepted = crate::events::of_order(&stack, ORDERS_ACCEPTED, id).await?.len();
        let ended = crate::events::of_order(&stack, ORDERS_CONFIRMED, id).await?.len()
            + crate::events::of_order(&stack, ORDERS_CANCELLED, id).await?.len();
        assert_eq!((accepted, ended), (1, 1), "order {id}");
    }
    assert_eq!(crate::events::count(&stack, ORDERS_ACCEPTED).await?, 2);
    Ok(())
}

#[tokio::test]
async fn reads_are_scoped_to_the_buyer_and_tenant() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.seed_skus(&["A"]).await?;
    let alice = stack.token("alice", &[Role::Buyer]);
    let (_, accepted) = stack.place(&alice, "k", &order_body("A", 1)).await?;
    let order_id = accepted["order_id"].as_str().expect("id").to_owned();
    wait_persisted(&stack, &alice, &order_id).await?;
    let path = format!("/v1/orders/{order_id}");

    let mallory = stack.token("mallory", &[Role::Buyer]);
    assert_eq!(stack.get(&mallory, &path).await?.0, 403);
    let support = stack.token("sam", &[Role::Support]);
    assert_eq!(stack.get(&support, &path).await?.0, 200);
    let other_tenant = stack.keys.mint(&souk_ingress::Claims::new(
        "alice",
        "t2",
        vec![Role::Admin],
        Duration::from_secs(60),
    ));
    assert_eq!(stack.get(&other_tenant, &path).await?.0, 404, "other tenants see nothing");
    let (status, problem) = stack.get(&alice, &format!("/v1/orders/{}", uuid::Uuid::now_v7())).await?;
    assert_eq!(status, 404);
    assert_eq!(problem["status"], 404);
    assert_eq!(stack.get(&alice, "/v1/orders/not-a-uuid").await?.0, 400);
    let anonymous = stack.http.get(format!("{}{path}", stack.base)).send().await?;
    assert_eq!(anonymous.status().as_u16(), 401);
    Ok(())
}

#[tokio::test]
async fn probes_and_metrics_answer() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ready = stack.http.get(format!("{}/readyz", stack.base)).send().await?;
    assert_eq!(ready.status().as_u16(), 200);
    let checks: serde_json::Value = ready.json().await?;
    assert_eq!(checks, serde_json::json!({"nats": true, "jetstream": true, "postgres": true}));
    let health = stack.http.get(format!("{}/healthz", stack.base)).send().await?;
    assert_eq!(health.status().as_u16(), 200);
    let missing = stack.http.get(format!("{}/nope", stack.base)).send().await?;
    assert_eq!(missing.status().as_u16(), 404);
    assert_eq!(
        missing.headers().get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    Ok(())
}

#[tokio::test]
async fn one_trace_spans_http_the_command_the_worker_and_the_event() -> anyhow::Result<()> {
    // Each nextest test is its own process: the global subscriber is this test's alone.
    let _telemetry = souk_topologies::trace::install_subscriber(false, &Default::default())?;
    let stack = Stack::start().await?;
    stack.seed_skus(&["T-1"]).await?;
    let token = stack.token("tess", &[Role::Buyer]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let r = stack
        .http
        .post(format!("{}/v1/orders", stack.base))
        .bearer_auth(&token)
        .header("idempotency-key", "traced")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .json(&order_body("T-1", 1))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    eventually(Duration::from_secs(10), || async {
        (stack.stream_messages("EVT").await.ok()? >= 1).then_some(())
    })
    .await?;
    let event = stack.js.get_stream("EVT").await?.get_raw_message(1).await?;
    assert_eq!(event.subject.as_str(), souk_pipelines::subjects::ORDERS_ACCEPTED);
    let traceparent = event.headers.get("traceparent").map(|v| v.as_str().to_owned()).unwrap_or_default();
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")), "event traceparent {traceparent:?}");
    Ok(())
}

#[tokio::test]
async fn a_running_node_exports_pipeline_gauges_from_jetstream() -> anyhow::Result<()> {
    // Each nextest test is its own process: this recorder is this test's alone.
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let _stack = Stack::start().await?;
    let text = eventually(Duration::from_secs(10), || async {
        let text = metrics.render();
        text.contains("souk_consumer_pending_messages").then_some(text)
    })
    .await?;
    assert!(text.contains(r#"souk_consumer_pending_messages{consumer="orders-place"} 0"#), "{text}");
    assert!(text.contains(r#"souk_stream_messages{stream="DLQ"} 0"#), "{text}");
    Ok(())
}

/// Idempotency keys are kept for a retention period (housekeeping), inbox records for as
/// long or a little longer. A key used again after its claim expired is a new request:
/// it must make a new order, not a command the inbox (or JetStream's dedupe window)
/// mistakes for the old one, leaving the new order "pending" for ever.
#[tokio::test]
async fn a_key_reused_after_its_claim_expired_makes_a_new_order() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.seed_skus(&["SKU-1", "SKU-2"]).await?;
    let token = stack.token("erin", &[Role::Buyer]);
    let (status, first) = stack.place(&token, "reused-key", &order_body("SKU-1", 1)).await?;
    assert_eq!(status, 202, "{first}");
    let first_id = first["order_id"].as_str().expect("order id").to_owned();
    wait_persisted(&stack, &token, &first_id).await?;
    // Housekeeping removed the claim; the inbox record is still there.
    sqlx::query("delete from idempotency_keys").execute(&stack.db.pool).await?;

    let (status, second) = stack.place(&token, "reused-key", &order_body("SKU-2", 2)).await?;
    assert_eq!(status, 202, "{second}");
    let second_id = second["order_id"].as_str().expect("order id").to_owned();
    assert_ne!(first_id, second_id);
    let order = wait_persisted(&stack, &token, &second_id).await?;
    assert_eq!(order["lines"][0]["sku"], "SKU-2");
    Ok(())
}

/// A client that trickles its body holds its connection only so long: it gets 408
/// problem+json after the write timeout plus the body allowance, and nothing is placed.
#[tokio::test]
async fn a_request_whose_body_never_finishes_gets_408() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = souk_testkit::Stack::start_with(souk_testkit::StackOptions {
        write_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await?;
    let token = stack.token("slow", &[Role::Buyer]);
    let addr = stack.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&addr).await?;
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\n\
         idempotency-key: slow-1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"curr"
    );
    socket.write_all(head.as_bytes()).await?;
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let limit = Duration::from_millis(300) + souk_ingress::BODY_ALLOWANCE + Duration::from_secs(10);
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await??;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.to_ascii_lowercase().contains("content-type: application/problem+json"), "{text}");
    assert!(started.elapsed() >= souk_ingress::BODY_ALLOWANCE, "not before the allowance");
    assert_eq!(stack.count("select 1 from idempotency_keys").await?, 0, "nothing claimed");
    Ok(())
}

/// Orders are priced on every attempt, but the retry of an order that was accepted and
/// stored is that order, whatever the catalog says now: here its product was deleted
/// since, which refuses the same body under a new key.
#[tokio::test]
async fn a_retry_of_a_stored_order_is_that_order_after_its_product_was_deleted() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.seed_skus(&["GONE-1"]).await?;
    let token = stack.token("gus", &[Role::Buyer]);
    let (status, first) = stack.place(&token, "k", &order_body("GONE-1", 1)).await?;
    assert_eq!(status, 202, "{first}");
    let order_id = first["order_id"].as_str().expect("order id").to_owned();
    wait_persisted(&stack, &token, &order_id).await?;
    {
        use souk_stores::postgres::products;
        let mut tx = stack.db.pool.begin().await?;
        products::lock(&mut tx, "t1", "GONE-1").await?;
        products::mark_deleted(&mut tx, "t1", "GONE-1", 2, chrono::Utc::now()).await?;
        tx.commit().await?;
    }
    let (status, again) = stack.place(&token, "k", &order_body("GONE-1", 1)).await?;
    assert_eq!((status, again["order_id"].as_str()), (202, Some(order_id.as_str())), "{again}");
    let (status, problem) = stack.place(&token, "k-new", &order_body("GONE-1", 1)).await?;
    assert_eq!(status, 422, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "lines[0].sku");
    Ok(())
}
