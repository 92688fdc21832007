//! The saga seen from outside: `GET /v1/orders/{id}` shows its state, reason and
//! steps; `souk sagas` lists, shows, retries and compensates, recording who did it.

use souk_ingress::Role;
use souk_pipelines::{
    Message, encode, headers,
    inventory::{Shortage, StockRejected},
    orders::{PlaceOrder, PricedLine},
};
use souk_testkit::{Stack, TestDb, eventually};
use souk_topologies::{
    publisher::{OutgoingMessage, Publisher},
    runtime::{Delivery, Handler, Outcome},
};
use std::time::Duration;
use uuid::Uuid;

use crate::binary::souk;

fn payable_order(buyer: &str) -> PlaceOrder {
    PlaceOrder {
        order_id: Uuid::now_v7(),
        tenant: "t1".into(),
        buyer_id: buyer.into(),
        currency: "EUR".parse().expect("EUR"),
        lines: vec![PricedLine {
            sku: "MUG-1".into(),
            seller: "s1".into(),
            quantity: 2,
            unit_price_minor: 900,
        }],
        total_minor: 1800,
        payment_token: Some("tok_ok".into()),
        placed_at: chrono::Utc::now(),
        cart: None,
    }
}

fn message<M: Message>(m: &M) -> OutgoingMessage {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::SCHEMA, M::schema_header().as_str());
    h.insert(headers::TENANT, "t1");
    OutgoingMessage {
        subject: M::SUBJECT.into(),
        msg_id: Uuid::now_v7().to_string(),
        headers: h,
        payload: encode(m).into(),
    }
}

#[tokio::test]
async fn get_order_shows_the_saga_state_reason_and_each_step_with_its_time() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = stack.token("alice", &[Role::Buyer]);
    let publisher = Publisher::new(stack.client.clone(), Duration::from_secs(2));
    let cmd = payable_order("alice");
    publisher.publish(message(&cmd)).await?;
    let path = format!("/v1/orders/{}", cmd.order_id);
    let reserving = eventually(Duration::from_secs(20), || async {
        let (status, body) = stack.get(&token, &path).await?;
        anyhow::Ok((status == 200 && body["saga"]["state"] == "reserving").then_some(body))
    })
    .await?;
    assert_eq!(reserving["status"], "accepted");
    assert_eq!(reserving["saga"]["steps"][0]["step"], "reserve");
    assert!(reserving["saga"]["steps"][0]["started_at"].is_string(), "{reserving}");
    assert!(reserving["saga"]["steps"][0].get("finished_at").is_none(), "awaiting its reply: {reserving}");

    // The inventory pool's answer: no stock.
    let shortages = vec![Shortage { sku: "MUG-1".into(), requested: 2, available: 0 }];
    let rejected =
        StockRejected { tenant: "t1".into(), order_id: cmd.order_id, shortages, at: chrono::Utc::now() };
    publisher.publish(message(&rejected)).await?;
    let cancelled = eventually(Duration::from_secs(20), || async {
        let (status, body) = stack.get(&token, &path).await?;
        anyhow::Ok((status == 200 && body["status"] == "cancelled").then_some(body))
    })
    .await?;
    assert_eq!(cancelled["reason"], "out of stock: SKU MUG-1", "{cancelled}");
    assert_eq!(cancelled["saga"]["state"], "cancelled");
    assert_eq!(cancelled["saga"]["reason"], "out of stock: SKU MUG-1");
    // The buyer reads each step's outcome as a word; support reads the full log.
    let step = &cancelled["saga"]["steps"][0];
    assert_eq!((&step["step"], &step["outcome"]), (&"reserve".into(), &"rejected".into()));
    assert!(step["finished_at"].is_string(), "{cancelled}");
    let support = stack.token("sam", &[Role::Support]);
    let (status, read) = stack.get(&support, &path).await?;
    assert_eq!(status, 200);
    assert_eq!(read["saga"]["steps"][0]["outcome"], "rejected: out of stock: SKU MUG-1", "{read}");
    Ok(())
}

/// A payable order placed through the real orders handler: its saga is `reserving`.
async fn placed(db: &TestDb) -> anyhow::Result<Uuid> {
    let cmd = payable_order("bob");
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::SCHEMA, PlaceOrder::schema_header().as_str());
    let delivery = Delivery {
        subject: PlaceOrder::SUBJECT.into(),
        headers: Some(h),
        payload: encode(&cmd).into(),
        message_id: Some(format!("orders.place:t1:{}", cmd.order_id)),
        stream: "CMD".into(),
        stream_sequence: 1,
        attempt: 1,
        consumer: souk_workers::orders::PLACE_CONSUMER.into(),
        stored_at: None,
    };
    let handler =
        souk_workers::orders::PlaceOrderHandler::new(db.pool.clone(), souk_workers::orders::PLACE_CONSUMER);
    assert_eq!(handler.handle(&delivery).await, Outcome::Ack);
    Ok(cmd.order_id)
}

#[tokio::test]
async fn souk_sagas_lists_shows_retries_and_compensates_recording_who_did_it() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let id = placed(&db).await?;
    let data = tempfile::tempdir()?;
    let run = |args: &[&str]| {
        let mut c = souk(data.path());
        c.args(args).env_remove("SOUK_NATS_URL").env("SOUK_DATABASE_URL", &db.url).env("USER", "ops-anna");
        c.output()
    };
    let text = |o: &std::process::Output| {
        format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
    };

    let out = run(&["sagas", "list", "--state", "reserving", "--json"]).await?;
    assert!(out.status.success(), "{}", text(&out));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(listed[0]["order_id"], id.to_string());
    let out = run(&["sagas", "list", "--stuck"]).await?;
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no sagas", "its deadline is ahead");
    let out = run(&["sagas", "show", &id.to_string()]).await?;
    assert!(
        out.status.success() && text(&out).contains("reserve") && text(&out).contains("awaiting reply"),
        "{}",
        text(&out)
    );

    let out = run(&["sagas", "retry", &id.to_string()]).await?;
    assert!(out.status.success(), "{}", text(&out));
    // With an operator token (as `souk dlq` and `souk pool` take one) and no USER, as
    // under `kubectl exec`: the token's subject is recorded (found in review: these
    // commands took no token and recorded `cli:unknown`).
    souk_ingress::Keys::load_or_generate_dev(&data.path().join("jwt.key"))?;
    let token = run(&["token", "--sub", "grace", "--role", "operator"]).await?;
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let mut c = souk(data.path());
    c.args(["sagas", "compensate", &id.to_string()])
        .env_remove("SOUK_NATS_URL")
        .env_remove("USER")
        .env("SOUK_DATABASE_URL", &db.url)
        .env("SOUK_OPERATOR_TOKEN", &token);
    let out = c.output().await?;
    assert!(out.status.success(), "{}", text(&out));
    let out = run(&["sagas", "show", &id.to_string(), "--json"]).await?;
    let saga: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!((&saga["state"], &saga["reason"]), (&"releasing".into(), &"cancelled by souk support".into()));
    let actions: Vec<(String, String, String)> =
        sqlx::query_as("select actor, action, target from operator_actions order by id")
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(
        actions,
        [
            ("cli:ops-anna".into(), "saga.retry".into(), id.to_string()),
            ("grace".into(), "saga.compensate".into(), id.to_string())
        ]
    );
    let releases: i64 =
        sqlx::query_scalar("select count(*) from outbox where subject = 'souk.cmd.inventory.release'")
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(releases, 1, "the compensation goes out through the outbox");

    // Clear errors, nothing recorded.
    let refused = run(&["sagas", "compensate", &id.to_string()]).await?;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("already compensating (releasing)"), "{}", text(&refused));
    let missing = run(&["sagas", "retry", &Uuid::now_v7().to_string()]).await?;
    assert_eq!(missing.status.code(), Some(3), "{}", text(&missing));
    let bad = run(&["sagas", "show", "not-an-id"]).await?;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let bad_state = run(&["sagas", "list", "--state", "limbo"]).await?;
    assert_eq!(bad_state.status.code(), Some(2), "{}", text(&bad_state));
    let n: i64 = sqlx::query_scalar("select count(*) from operator_actions").fetch_one(&db.pool).await?;
    assert_eq!(n, 2);
    Ok(())
}
