//! The saga pool's batches (`Deduplicated::handle_batch` over `SagaReplies`), called
//! directly with deliveries built here, so each test decides the order the batcher
//! hands them over in: one order's replies apply in stream order in one transaction, a
//! bad reply is refused alone, a redelivered batch changes nothing, and concurrent
//! batches lock saga rows in one order.

use souk_pipelines::{Message, encode, headers, orders::PlaceOrder, payments::Operation};
use souk_stores::postgres as pg;
use souk_testkit::TestDb;
use souk_topologies::runtime::{Delivery, ErrorClass, Handler, Outcome};
use souk_workers::{
    dedupe::Deduplicated,
    orders::{PLACE_CONSUMER, PlaceOrderHandler, saga},
};
use std::sync::Arc;
use uuid::Uuid;

use crate::saga::{order, payment, replies};

type Replies = Deduplicated<saga::SagaReplies>;

async fn replies_handler() -> anyhow::Result<(TestDb, Replies)> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    let handler = Deduplicated::new(db.pool.clone(), saga::CONSUMER, saga::SagaReplies);
    Ok((db, handler))
}

/// `message` as delivered from `stream` at `seq` under a fresh message id.
fn delivery<M: Message>(message: &M, stream: &str, seq: u64) -> Delivery {
    raw(M::SUBJECT, &M::schema_header(), &encode(message), stream, seq)
}

fn raw(subject: &str, schema: &str, payload: &[u8], stream: &str, seq: u64) -> Delivery {
    let mut d = crate::delivered(saga::CONSUMER, subject, schema, payload, stream, seq);
    if let Some(h) = d.headers.as_mut() {
        h.insert(headers::TENANT, "t1");
    }
    d
}

/// Place `cmd` as the orders pool does: its order and saga (`reserving`).
async fn place(db: &TestDb, cmd: &PlaceOrder) -> anyhow::Result<()> {
    let handler = PlaceOrderHandler::new(db.pool.clone(), PLACE_CONSUMER);
    let outcome = handler.handle(&delivery(cmd, "CMD", 1)).await;
    anyhow::ensure!(outcome == Outcome::Ack, "placing {}: {outcome:?}", cmd.order_id);
    Ok(())
}

/// A payable order whose id is `id` (ids decide the lock order).
fn order_with_id(id: u128) -> PlaceOrder {
    PlaceOrder { order_id: Uuid::from_u128(id), ..order(&[("mug", "s1", 1, 1200)]) }
}

async fn state(db: &TestDb, order_id: Uuid) -> anyhow::Result<String> {
    Ok(sqlx::query_scalar("select state from sagas where order_id = $1")
        .bind(order_id)
        .fetch_one(&db.pool)
        .await?)
}

/// How many transactions wrote the step log as it is now (each row's `xmin`): every
/// reply applied writes to it, even one the saga ignores (a note).
async fn step_writers(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(distinct xmin::text) from saga_steps").fetch_one(&db.pool).await?)
}

/// Commands and events the saga wrote to the outbox for `order_id`: subjects in order.
async fn outbox(db: &TestDb, order_id: Uuid) -> anyhow::Result<Vec<String>> {
    Ok(sqlx::query_scalar("select subject from outbox where aggregate_id = $1 order by id")
        .bind(order_id.to_string())
        .fetch_all(&db.pool)
        .await?)
}

fn all_acked(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| *o == Outcome::Ack)
}

/// Two orders' replies handed over newest first: each order's apply in stream order
/// (reserved, then authorized), all in one transaction; delivered again, nothing changes.
#[tokio::test]
async fn a_batch_applies_each_orders_replies_in_stream_order_in_one_transaction() -> anyhow::Result<()> {
    let (db, handler) = replies_handler().await?;
    let (a, b) = (order_with_id(2), order_with_id(1));
    place(&db, &a).await?;
    place(&db, &b).await?;
    let mut batch = vec![
        delivery(&replies::reserved(&a), "EVT", 1),
        delivery(&replies::reserved(&b), "EVT", 2),
        delivery(&payment(&a, Operation::Authorize, None), "EVT", 3),
    ];
    batch.reverse();
    let outcomes = handler.handle_batch(&batch).await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!(state(&db, a.order_id).await?, "committing");
    assert_eq!(state(&db, b.order_id).await?, "authorizing");
    assert_eq!(step_writers(&db).await?, 1, "one transaction for the batch");
    let sent_a = outbox(&db, a.order_id).await?;
    assert_eq!(sent_a.last().map(String::as_str), Some(souk_pipelines::subjects::INVENTORY_COMMIT));
    // Redelivered (acks lost): acked, nothing written.
    assert!(all_acked(&handler.handle_batch(&batch).await));
    assert_eq!(outbox(&db, a.order_id).await?, sent_a);
    assert_eq!(state(&db, a.order_id).await?, "committing");
    assert_eq!(step_writers(&db).await?, 1);
    Ok(())
}

/// One reply that cannot be applied (another tenant's, or unreadable) rolls the batch
/// back; its other replies are applied one by one and only the bad ones are refused.
#[tokio::test]
async fn a_bad_reply_in_a_batch_is_refused_alone() -> anyhow::Result<()> {
    let (db, handler) = replies_handler().await?;
    let (a, b) = (order_with_id(1), order_with_id(2));
    place(&db, &a).await?;
    place(&db, &b).await?;
    let mut foreign = replies::reserved(&b);
    foreign.tenant = "t2".into();
    let batch = vec![
        delivery(&replies::reserved(&a), "EVT", 1),
        delivery(&foreign, "EVT", 2),
        raw(
            souk_pipelines::subjects::INVENTORY_RESERVED,
            &souk_pipelines::inventory::StockReserved::schema_header(),
            b"{\"order_id\": 7",
            "EVT",
            3,
        ),
        delivery(&replies::reserved(&b), "EVT", 4),
    ];
    let outcomes = handler.handle_batch(&batch).await;
    assert_eq!((&outcomes[0], &outcomes[3]), (&Outcome::Ack, &Outcome::Ack), "{outcomes:?}");
    for bad in [&outcomes[1], &outcomes[2]] {
        assert_eq!(bad.error().map(|e| e.class), Some(ErrorClass::Poison), "{outcomes:?}");
    }
    assert_eq!(
        (state(&db, a.order_id).await?, state(&db, b.order_id).await?),
        ("authorizing".into(), "authorizing".into())
    );
    Ok(())
}

/// Two batches meeting orders a < b in opposite stream orders would deadlock if each
/// locked saga rows in stream order (Postgres breaks it after a second and the loser
/// falls back to one transaction per reply): both lock a first. Forced here by holding
/// b's saga row while they start: Y (b, then a in the stream) takes a and waits for b;
/// X (a, then b) waits for a. Each batch still commits in one transaction.
#[tokio::test]
async fn concurrent_batches_lock_saga_rows_in_one_order() -> anyhow::Result<()> {
    let (db, handler) = replies_handler().await?;
    let handler = Arc::new(handler);
    let (a, b) = (order_with_id(1), order_with_id(2));
    place(&db, &a).await?;
    place(&db, &b).await?;
    let mut holder = db.pool.begin().await?;
    sqlx::query("select 1 from sagas where order_id = $1 for update")
        .bind(b.order_id)
        .execute(&mut *holder)
        .await?;
    // Each reply applies to its saga whichever comes first: the second of an order is
    // recorded as ignored (the saga moved on), which changes the row all the same.
    let y = vec![delivery(&replies::reserved(&b), "EVT", 1), delivery(&replies::reserved(&a), "EVT", 2)];
    let x = vec![delivery(&replies::reserved(&a), "EVT", 3), delivery(&replies::reserved(&b), "EVT", 4)];
    let run = |batch: Vec<Delivery>| {
        let handler = handler.clone();
        async move { handler.handle_batch(&batch).await }
    };
    let (y, x) = crate::crossed(&db, holder, run(y), run(x)).await?;
    assert!(all_acked(&y) && all_acked(&x), "{y:?} {x:?}");
    // Y's transitions and X's notes (the replies came again): two transactions, none
    // rolled back by a deadlock and applied one by one.
    assert_eq!(step_writers(&db).await?, 2, "one transaction per batch");
    assert_eq!(
        (state(&db, a.order_id).await?, state(&db, b.order_id).await?),
        ("authorizing".into(), "authorizing".into())
    );
    Ok(())
}
