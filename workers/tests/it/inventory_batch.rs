//! The inventory pool's batches (`Deduplicated::handle_batch` over `InventoryHandler`),
//! called directly with deliveries built here: one order's commands apply in stream
//! order in one transaction, a bad command is refused alone and the others apply once,
//! a redelivered batch changes nothing, and concurrent batches take order locks and
//! stock rows in one order (no deadlock, whatever SKUs their orders meet).

use chrono::Utc;
use souk_pipelines::{
    Message, encode,
    inventory::{CommitStock, ReleaseStock, ReserveStock, StockLine},
};
use souk_stores::postgres::{self as pg, inventory as inv};
use souk_testkit::TestDb;
use souk_topologies::runtime::{Delivery, ErrorClass, Handler, Outcome};
use souk_workers::{
    dedupe::Deduplicated,
    inventory::{CONSUMER, InventoryHandler},
};
use std::sync::Arc;
use uuid::Uuid;

const TENANT: &str = "t1";

type Inventory = Deduplicated<InventoryHandler>;

/// A fresh database whose SKUs a and b have 10 units each.
async fn inventory() -> anyhow::Result<(TestDb, Inventory)> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    let mut tx = db.pool.begin().await?;
    for sku in ["a", "b"] {
        inv::set_available(&mut tx, TENANT, sku, 10, None, false).await?;
    }
    tx.commit().await?;
    let handler = Deduplicated::new(db.pool.clone(), CONSUMER, InventoryHandler);
    Ok((db, handler))
}

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn reserve(order: u128, skus: &[&str]) -> ReserveStock {
    ReserveStock {
        tenant: TENANT.into(),
        order_id: id(order),
        lines: skus.iter().map(|s| StockLine { sku: (*s).into(), quantity: 1 }).collect(),
        hold_until: Utc::now() + chrono::Duration::minutes(10),
    }
}

fn commit(order: u128) -> CommitStock {
    CommitStock { tenant: TENANT.into(), order_id: id(order) }
}

fn release(order: u128) -> ReleaseStock {
    ReleaseStock { tenant: TENANT.into(), order_id: id(order), reason: "cancelled".into() }
}

/// `cmd` as delivered from CMD at `seq`, under a fresh message id (as the saga's outbox
/// sends each command).
fn delivery<M: Message>(cmd: &M, seq: u64) -> Delivery {
    raw(M::SUBJECT, &M::schema_header(), &encode(cmd), seq)
}

fn raw(subject: &str, schema: &str, payload: &[u8], seq: u64) -> Delivery {
    crate::delivered(CONSUMER, subject, schema, payload, "CMD", seq)
}

/// (held, sold) of `sku`.
async fn counts(db: &TestDb, sku: &str) -> anyhow::Result<(i64, i64)> {
    let s = inv::stock(&db.pool, TENANT, sku).await?.ok_or_else(|| anyhow::anyhow!("no stock row {sku}"))?;
    anyhow::ensure!(s.on_hand + s.sold == 10, "stock not conserved for {sku}: {s:?}");
    Ok((s.held, s.sold))
}

async fn reservation(db: &TestDb, order: u128) -> anyhow::Result<Option<String>> {
    Ok(sqlx::query_scalar("select state from stock_reservations where tenant = $1 and order_id = $2")
        .bind(TENANT)
        .bind(id(order))
        .fetch_optional(&db.pool)
        .await?)
}

/// How many transactions wrote the reservations as they are now (each row's `xmin`).
async fn writers(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(distinct xmin::text) from stock_reservations")
        .fetch_one(&db.pool)
        .await?)
}

async fn answers(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from outbox").fetch_one(&db.pool).await?)
}

fn all_acked(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| *o == Outcome::Ack)
}

/// Handed over newest first: each order's reserve applies before its commit or release,
/// all in one transaction; delivered again, nothing moves and nothing is answered twice.
#[tokio::test]
async fn a_batch_applies_each_orders_commands_in_stream_order_in_one_transaction() -> anyhow::Result<()> {
    let (db, inventory) = inventory().await?;
    let mut batch = vec![
        delivery(&reserve(1, &["a"]), 1),
        delivery(&reserve(2, &["a", "b"]), 2),
        delivery(&commit(1), 3),
        delivery(&release(2), 4),
    ];
    batch.reverse();
    let outcomes = inventory.handle_batch(&batch).await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!(
        (reservation(&db, 1).await?, reservation(&db, 2).await?),
        (Some("committed".into()), Some("released".into()))
    );
    assert_eq!((counts(&db, "a").await?, counts(&db, "b").await?), ((0, 1), (0, 0)));
    assert_eq!((writers(&db).await?, answers(&db).await?), (1, 4), "one transaction, one answer per command");
    assert!(all_acked(&inventory.handle_batch(&batch).await));
    assert_eq!((counts(&db, "a").await?, counts(&db, "b").await?), ((0, 1), (0, 0)));
    assert_eq!((writers(&db).await?, answers(&db).await?), (1, 4));
    Ok(())
}

/// A command that cannot be applied, after good ones in the batch's order, rolls the
/// batch back; the good ones are then applied one by one — once: the stock they hold
/// is held once — and only the bad ones are refused. Redelivered, nothing changes.
#[tokio::test]
async fn a_bad_command_in_a_batch_is_refused_alone_and_the_others_apply_once() -> anyhow::Result<()> {
    let (db, inventory) = inventory().await?;
    let batch = vec![
        delivery(&reserve(1, &["a"]), 1),
        delivery(&reserve(2, &["a", "b"]), 2),
        // No lines (its order sorts last: applied after the good ones).
        delivery(&reserve(9, &[]), 3),
        raw(ReserveStock::SUBJECT, &ReserveStock::schema_header(), b"{\"tenant\": \"t1\", \"order_id\": ", 4),
    ];
    let outcomes = inventory.handle_batch(&batch).await;
    assert_eq!((&outcomes[0], &outcomes[1]), (&Outcome::Ack, &Outcome::Ack), "{outcomes:?}");
    for bad in &outcomes[2..] {
        assert_eq!(bad.error().map(|e| e.class), Some(ErrorClass::Poison), "{outcomes:?}");
    }
    assert_eq!((counts(&db, "a").await?, counts(&db, "b").await?), ((2, 0), (1, 0)));
    assert_eq!((reservation(&db, 9).await?, answers(&db).await?), (None, 2));
    let again = inventory.handle_batch(&batch).await;
    assert_eq!((&again[0], &again[1]), (&Outcome::Ack, &Outcome::Ack), "{again:?}");
    assert_eq!((counts(&db, "a").await?, counts(&db, "b").await?), ((2, 0), (1, 0)));
    assert_eq!(answers(&db).await?, 2);
    Ok(())
}

/// Two batches whose orders meet SKUs a and b in opposite orders would deadlock if each
/// locked stock rows as it applied its orders (Postgres breaks it after a second and the
/// loser falls back to one transaction per command): each takes its orders' locks, then
/// every stock row it needs in SKU order, before applying anything. Forced here by
/// holding b's row while they start: Y (orders 1: b, 2: a) takes a and waits for b; X
/// (orders 3: a, 4: b) then waits for a, holding no stock row.
#[tokio::test]
async fn concurrent_batches_take_order_locks_and_stock_rows_in_one_order() -> anyhow::Result<()> {
    let (db, inventory) = inventory().await?;
    let inventory = Arc::new(inventory);
    let mut holder = db.pool.begin().await?;
    sqlx::query("select 1 from stock where tenant = $1 and sku = 'b' for update")
        .bind(TENANT)
        .execute(&mut *holder)
        .await?;
    let y = vec![delivery(&reserve(1, &["b"]), 1), delivery(&reserve(2, &["a"]), 2)];
    let x = vec![delivery(&reserve(3, &["a"]), 3), delivery(&reserve(4, &["b"]), 4)];
    let run = |batch: Vec<Delivery>| {
        let inventory = inventory.clone();
        async move { inventory.handle_batch(&batch).await }
    };
    let (y, x) = crate::crossed(&db, holder, run(y), run(x)).await?;
    assert!(all_acked(&y) && all_acked(&x), "{y:?} {x:?}");
    assert_eq!(writers(&db).await?, 2, "one transaction per batch, none broken by a deadlock");
    assert_eq!((counts(&db, "a").await?, counts(&db, "b").await?), ((2, 0), (2, 0)));
    Ok(())
}

/// An order's lines are read back in byte order, the order every stock lock is taken
/// in (`lock_many` and `reserve` sort by bytes), whatever the database's collation: on
/// a cluster created with an en_US locale (managed services, the postgres image) `order
/// by sku` put "a" before "B", and a commit locking in that order could deadlock with a
/// reserve locking "B" first (found in review). The column gets such a collation here.
#[tokio::test]
async fn an_orders_lines_come_back_in_byte_order_whatever_the_collation() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    sqlx::query(r#"alter table stock_holds alter column sku type text collate "en-US-x-icu""#)
        .execute(&db.pool)
        .await?;
    let lines: Vec<StockLine> =
        ["a", "B"].iter().map(|s| StockLine { sku: (*s).into(), quantity: 1 }).collect();
    let mut tx = db.pool.begin().await?;
    inv::record(&mut tx, TENANT, id(1), Utc::now() + chrono::Duration::minutes(10), &lines, None).await?;
    let read = inv::reservation(&mut tx, TENANT, id(1)).await?.ok_or_else(|| anyhow::anyhow!("none"))?;
    let skus: Vec<&str> = read.lines.iter().map(|l| l.sku.as_str()).collect();
    assert_eq!(skus, ["B", "a"], "byte order");
    Ok(())
}
