//! The catalog pool's batches (`Deduplicated::handle_batch` over `WriteProductHandler`),
//! called directly with deliveries built here, so each test decides the order the
//! batcher hands them over in: writes of one SKU apply in stream order, concurrent
//! batches take SKU locks in one order, a bad write falls back to one by one, a
//! redelivered batch changes nothing, and an outage holds every delivery.

use async_nats::HeaderMap;
use souk_pipelines::{
    Message,
    catalog::{AttrValue, ProductChange, ProductFields, WriteProduct},
    encode, headers,
};
use souk_stores::postgres::{self as pg, products};
use souk_testkit::{TestDb, catalog::product, eventually};
use souk_topologies::runtime::{Delivery, ErrorClass, Handler, Outcome};
use souk_workers::{
    catalog::{WRITE_CONSUMER, WriteProductHandler},
    dedupe::Deduplicated,
};
use std::{collections::BTreeMap, time::Duration};

type Writes = Deduplicated<WriteProductHandler>;

async fn writes() -> anyhow::Result<(TestDb, Writes)> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    let handler = Deduplicated::new(db.pool.clone(), WRITE_CONSUMER, WriteProductHandler);
    Ok((db, handler))
}

/// A put of `sku` (seller s1, tenant t1) titled `title`, requested `at` seconds in.
fn put(sku: &str, title: &str, at: i64) -> WriteProduct {
    WriteProduct {
        write_id: uuid::Uuid::new_v4(),
        tenant: "t1".into(),
        seller: "s1".into(),
        sku: sku.into(),
        expected_version: None,
        change: ProductChange::Put { fields: mug(title) },
        actor: "u1".into(),
        requested_at: chrono::DateTime::from_timestamp(1_790_000_000 + at, 0).unwrap_or_default(),
        stock_basis: None,
    }
}

/// A valid mug (the category's required attributes) titled `title`.
fn mug(title: &str) -> ProductFields {
    let mut fields = product("any", "s1", 1, title).fields;
    fields.attributes = BTreeMap::from([
        ("capacity_ml".to_owned(), AttrValue::Int(350)),
        ("material".to_owned(), AttrValue::Text("ceramic".into())),
    ]);
    fields
}

/// `cmd` as delivered from stream sequence `seq`.
fn delivery(cmd: &WriteProduct, seq: u64) -> Delivery {
    raw(&encode(cmd), &cmd.message_id(), seq)
}

fn raw(payload: &[u8], message_id: &str, seq: u64) -> Delivery {
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEMA, WriteProduct::schema_header().as_str());
    Delivery {
        subject: WriteProduct::SUBJECT.into(),
        headers: Some(h),
        payload: payload.to_vec().into(),
        message_id: Some(message_id.into()),
        stream: "CMD".into(),
        stream_sequence: seq,
        attempt: 1,
        consumer: WRITE_CONSUMER.into(),
        stored_at: None,
    }
}

/// `(version, title)` of `sku`.
async fn stored(db: &TestDb, sku: &str) -> anyhow::Result<Option<(i64, String)>> {
    let p = products::get(&db.pool, "t1", sku).await?;
    Ok(p.map(|p| (p.product.version, p.product.fields.title)))
}

async fn events(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from outbox").fetch_one(&db.pool).await?)
}

fn all_acked(outcomes: &[Outcome]) -> bool {
    outcomes.iter().all(|o| *o == Outcome::Ack)
}

/// The batcher hands deliveries over in the order their tasks ran (tokio runs the newest
/// first), not in stream order. Applied as handed over, the import rows (one request
/// time) would leave the oldest content last, and the later-requested writes would make
/// the earlier ones "superseded".
#[tokio::test]
async fn a_batch_applies_the_writes_of_a_sku_in_stream_order_whatever_order_it_is_handed()
-> anyhow::Result<()> {
    let (db, writes) = writes().await?;
    // One import's rows (same request time), and three API writes requested in turn.
    let rows = [put("row", "first", 0), put("row", "second", 0), put("row", "third", 0)];
    let api = [put("api", "one", 1), put("api", "two", 2), put("api", "three", 3)];
    let mut batch: Vec<Delivery> =
        rows.iter().chain(&api).enumerate().map(|(i, c)| delivery(c, i as u64 + 1)).collect();
    batch.reverse();
    let outcomes = writes.handle_batch(&batch).await;
    assert!(all_acked(&outcomes), "{outcomes:?}");
    assert_eq!(stored(&db, "row").await?, Some((3, "third".into())), "the last row sent is the content");
    assert_eq!(stored(&db, "api").await?, Some((3, "three".into())), "none superseded: each applied");
    assert_eq!(events(&db).await?, 6, "one ProductChanged per write");
    Ok(())
}

#[tokio::test]
async fn a_batch_delivered_again_changes_nothing_and_a_message_twice_in_it_applies_once() -> anyhow::Result<()>
{
    let (db, writes) = writes().await?;
    let (a, b) = (put("a", "mug", 0), put("b", "cup", 0));
    // `a` twice: stored twice in the stream (a republish past the dedupe window).
    let batch = vec![delivery(&a, 1), delivery(&b, 2), delivery(&a, 3)];
    assert!(all_acked(&writes.handle_batch(&batch).await));
    assert_eq!((stored(&db, "a").await?, events(&db).await?), (Some((1, "mug".into())), 2));
    // Redelivered (its acks were lost): acked, nothing written.
    assert!(all_acked(&writes.handle_batch(&batch).await));
    assert_eq!((stored(&db, "a").await?, events(&db).await?), (Some((1, "mug".into())), 2));
    Ok(())
}

#[tokio::test]
async fn a_batch_holding_an_unreadable_write_applies_the_others_and_dead_letters_it() -> anyhow::Result<()> {
    let (db, writes) = writes().await?;
    let (a, b) = (put("a", "mug", 0), put("b", "cup", 0));
    let batch = vec![delivery(&a, 1), raw(b"{\"sku\": 7", "garbled", 2), delivery(&b, 3)];
    let outcomes = writes.handle_batch(&batch).await;
    assert_eq!((&outcomes[0], &outcomes[2]), (&Outcome::Ack, &Outcome::Ack), "{outcomes:?}");
    let refused = outcomes[1].error().map(|e| (e.class, e.code));
    assert_eq!(refused, Some((ErrorClass::Poison, "invalid_message")), "{outcomes:?}");
    assert_eq!((stored(&db, "a").await?.is_some(), stored(&db, "b").await?.is_some()), (true, true));
    assert_eq!(events(&db).await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_store_outage_holds_every_delivery_of_a_batch() -> anyhow::Result<()> {
    // A port nothing listens on (taken from the OS, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(&format!("postgres://souk@127.0.0.1:{port}/souk"))?;
    let writes = Deduplicated::new(pool, WRITE_CONSUMER, WriteProductHandler);
    let batch = vec![delivery(&put("a", "mug", 0), 1), delivery(&put("b", "cup", 0), 2)];
    let outcomes = writes.handle_batch(&batch).await;
    let classes: Vec<_> = outcomes.iter().map(|o| o.error().map(|e| e.class)).collect();
    assert_eq!(classes, vec![Some(ErrorClass::Dependency); 2], "held, not the messages' fault: {outcomes:?}");
    Ok(())
}

/// Waiters on the write lock of `sku` (tenant t1), as `products::lock` takes it.
async fn lock_waiters(db: &TestDb, sku: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from pg_locks
         where locktype = 'advisory' and objsubid = 2 and not granted
           and objid::bigint = (hashtext('t1/' || $1)::bigint & 4294967295)",
    )
    .bind(sku)
    .fetch_one(&db.pool)
    .await?)
}

/// Two batches meeting SKUs a and b in opposite stream orders would deadlock if each
/// locked in stream order (one holds a and waits for b, the other the reverse): both
/// take a first. Forced here by holding b's lock while they start: batch Y (b, then a in
/// the stream) takes a and waits for b; batch X (a, then b) then waits for a — not
/// holding a while waiting for b behind Y.
#[tokio::test]
async fn concurrent_batches_take_sku_locks_in_one_order() -> anyhow::Result<()> {
    let (db, writes) = writes().await?;
    let writes = std::sync::Arc::new(writes);
    let mut holder = db.pool.begin().await?;
    products::lock(&mut holder, "t1", "b").await?;
    let y = vec![delivery(&put("b", "y", 0), 3), delivery(&put("a", "y", 0), 4)];
    let x = vec![delivery(&put("a", "x", 0), 1), delivery(&put("b", "x", 0), 2)];
    let run = |batch: Vec<Delivery>| {
        let writes = writes.clone();
        tokio::spawn(async move { writes.handle_batch(&batch).await })
    };
    let y = run(y);
    eventually(Duration::from_secs(10), || async { (lock_waiters(&db, "b").await.ok()? == 1).then_some(()) })
        .await?;
    let x = run(x);
    eventually(Duration::from_secs(10), || async { (lock_waiters(&db, "a").await.ok()? == 1).then_some(()) })
        .await?;
    assert_eq!(lock_waiters(&db, "b").await?, 1, "X holds nothing while it waits");
    holder.rollback().await?;
    let (y, x) = (y.await?, x.await?);
    assert!(all_acked(&y) && all_acked(&x), "{y:?} {x:?}");
    assert_eq!(
        (stored(&db, "a").await?.map(|s| s.0), stored(&db, "b").await?.map(|s| s.0)),
        (Some(2), Some(2))
    );
    Ok(())
}

/// A seller's write sets the units on hand only when it states a stock figure. A patch
/// of the price alone keeps the stored fields' stock — the seller's last figure, from
/// before any sale — and must not put it back on hand: that would sell the sold units
/// again (found in review: on hand 10 again after 3 of 10 were sold).
#[tokio::test]
async fn a_patch_without_stock_leaves_the_units_on_hand_as_sales_left_them() -> anyhow::Result<()> {
    use souk_pipelines::{
        catalog::ProductPatch,
        inventory::{CommitStock, ReserveStock, StockLine},
    };
    use souk_stores::postgres::inventory as inv;
    use souk_workers::inventory::{CONSUMER, InventoryHandler};

    let (db, writes) = writes().await?;
    let inventory = Deduplicated::new(db.pool.clone(), CONSUMER, InventoryHandler);
    let mut first = put("W", "mug", 0);
    if let ProductChange::Put { fields } = &mut first.change {
        fields.stock = 10;
    }
    assert_eq!(writes.handle(&delivery(&first, 1)).await, Outcome::Ack);
    let order = uuid::Uuid::now_v7();
    let reserve = ReserveStock {
        tenant: "t1".into(),
        order_id: order,
        lines: vec![StockLine { sku: "W".into(), quantity: 3 }],
        hold_until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    let commit = CommitStock { tenant: "t1".into(), order_id: order };
    for (i, (subject, schema, payload)) in [
        (ReserveStock::SUBJECT, ReserveStock::schema_header(), encode(&reserve)),
        (CommitStock::SUBJECT, CommitStock::schema_header(), encode(&commit)),
    ]
    .into_iter()
    .enumerate()
    {
        let d = crate::delivered(CONSUMER, subject, &schema, &payload, "CMD", 10 + i as u64);
        assert_eq!(inventory.handle(&d).await, Outcome::Ack);
    }
    let counts = |s: inv::Stock| (s.on_hand, s.held, s.sold);
    let sold = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!(counts(sold), (7, 0, 3));

    let price = WriteProduct {
        write_id: uuid::Uuid::new_v4(),
        change: ProductChange::Patch {
            patch: ProductPatch { price_minor: Some(999), ..ProductPatch::default() },
        },
        requested_at: first.requested_at + chrono::Duration::seconds(1),
        ..first.clone()
    };
    assert_eq!(writes.handle(&delivery(&price, 2)).await, Outcome::Ack);
    assert_eq!(stored(&db, "W").await?.map(|(v, _)| v), Some(2), "the patch applied");
    let after = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!(counts(after), (7, 0, 3), "sold units stay sold");

    // A patch that states stock still sets what is on hand.
    let restock = WriteProduct {
        write_id: uuid::Uuid::new_v4(),
        change: ProductChange::Patch { patch: ProductPatch { stock: Some(20), ..ProductPatch::default() } },
        requested_at: first.requested_at + chrono::Duration::seconds(2),
        ..first.clone()
    };
    assert_eq!(writes.handle(&delivery(&restock, 3)).await, Outcome::Ack);
    let after = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!(counts(after), (20, 0, 3));
    Ok(())
}

/// A seller who reads a product (its `stock`: units available, held ones excluded) and
/// writes it back — a new title, the stock as read — leaves the units for sale as they
/// were. Review (twelfth session): the write set the units on hand to the figure read,
/// taking the units held for checkouts off sale for good.
#[tokio::test]
async fn a_product_written_back_as_read_keeps_its_held_units_for_sale() -> anyhow::Result<()> {
    use souk_pipelines::{
        catalog::StockBasis,
        inventory::{ReserveStock, StockLine},
    };
    use souk_stores::postgres::inventory as inv;
    use souk_workers::inventory::{CONSUMER, InventoryHandler};

    let (db, writes) = writes().await?;
    let inventory = Deduplicated::new(db.pool.clone(), CONSUMER, InventoryHandler);
    let mut first = put("W", "mug", 0);
    if let ProductChange::Put { fields } = &mut first.change {
        fields.stock = 10;
    }
    assert_eq!(writes.handle(&delivery(&first, 1)).await, Outcome::Ack);
    let reserve = ReserveStock {
        tenant: "t1".into(),
        order_id: uuid::Uuid::now_v7(),
        lines: vec![StockLine { sku: "W".into(), quantity: 3 }],
        hold_until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    let d = crate::delivered(
        CONSUMER,
        ReserveStock::SUBJECT,
        &ReserveStock::schema_header(),
        &encode(&reserve),
        "CMD",
        10,
    );
    assert_eq!(inventory.handle(&d).await, Outcome::Ack);
    let read = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!(read.available(), 7, "what GET /v1/products/W shows");

    let mut again = put("W", "mug, renamed", 1);
    if let ProductChange::Put { fields } = &mut again.change {
        fields.stock = read.available();
    }
    again.stock_basis =
        Some(StockBasis { held: read.held, sold: read.sold, withdrawn: read.withdrawn, revives: false }); // as the ingress reads it
    assert_eq!(writes.handle(&delivery(&again, 2)).await, Outcome::Ack);
    assert_eq!(stored(&db, "W").await?.map(|(v, _)| v), Some(2), "the write applied");
    let after = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!((after.on_hand, after.held, after.available()), (10, 3, 7), "nothing taken off sale");
    Ok(())
}

/// Second review (twelfth session): the stock written is the units available when the
/// write was accepted, but it was counted beside the units held when it was applied —
/// a hold made in between (the write waiting in CMD) was counted twice, and a sale in
/// between came back: units for sale that no shelf held. A write carries the held and
/// sold units of its acceptance (`StockBasis`).
#[tokio::test]
async fn a_stock_write_racing_holds_and_sales_never_puts_units_on_sale_twice() -> anyhow::Result<()> {
    use souk_pipelines::{
        catalog::StockBasis,
        inventory::{CommitStock, ReserveStock, StockLine},
    };
    use souk_stores::postgres::inventory as inv;
    use souk_workers::inventory::{CONSUMER, InventoryHandler};

    let (db, writes) = writes().await?;
    let inventory = Deduplicated::new(db.pool.clone(), CONSUMER, InventoryHandler);
    let mut first = put("W", "mug", 0);
    if let ProductChange::Put { fields } = &mut first.change {
        fields.stock = 10;
    }
    assert_eq!(writes.handle(&delivery(&first, 1)).await, Outcome::Ack);
    let mut seq = 10;
    let mut send = async |subject: &str, schema: String, payload: Vec<u8>| {
        seq += 1;
        let d = crate::delivered(CONSUMER, subject, &schema, &payload, "CMD", seq);
        inventory.handle(&d).await
    };
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let reserve = |order_id, quantity| ReserveStock {
        tenant: "t1".into(),
        order_id,
        lines: vec![StockLine { sku: "W".into(), quantity }],
        hold_until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    let commit = |order_id| CommitStock { tenant: "t1".into(), order_id };
    assert_eq!(
        send(ReserveStock::SUBJECT, ReserveStock::schema_header(), encode(&reserve(a, 3))).await,
        Outcome::Ack
    );
    // The seller's write is accepted now: 7 available beside the 3 held.
    let basis = inv::basis(&db.pool, "t1", "W").await?;
    assert_eq!(basis, StockBasis { held: 3, sold: 0, withdrawn: 0, revives: false });
    // While it waits: another buyer holds 2, and the first order is sold.
    assert_eq!(
        send(ReserveStock::SUBJECT, ReserveStock::schema_header(), encode(&reserve(b, 2))).await,
        Outcome::Ack
    );
    assert_eq!(
        send(CommitStock::SUBJECT, CommitStock::schema_header(), encode(&commit(a))).await,
        Outcome::Ack
    );
    let mut write = put("W", "mug", 1);
    if let ProductChange::Put { fields } = &mut write.change {
        fields.stock = 7;
    }
    write.stock_basis = Some(basis);
    assert_eq!(writes.handle(&delivery(&write, 2)).await, Outcome::Ack);
    let s = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    // 10 on the shelf: 3 sold, 2 held, 5 left.
    assert_eq!((s.on_hand, s.held, s.sold, s.available()), (7, 2, 3, 5), "{s:?}");
    assert_eq!(
        send(CommitStock::SUBJECT, CommitStock::schema_header(), encode(&commit(b))).await,
        Outcome::Ack
    );
    let s = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!(s.on_hand + s.sold, 10, "every unit sellable or sold is on the shelf: {s:?}");
    Ok(())
}

/// Fourth review (twelfth session): two writes accepted while the product was deleted,
/// applied after the first had created it again — the second was no longer a revival at
/// apply, so it took the held units its basis read as withdrawn off its shelf again.
#[tokio::test]
async fn two_writes_accepted_while_a_product_was_deleted_both_count_its_held_units() -> anyhow::Result<()> {
    use souk_pipelines::inventory::{ReserveStock, StockLine};
    use souk_stores::postgres::inventory as inv;
    use souk_workers::inventory::{CONSUMER, InventoryHandler};

    let (db, writes) = writes().await?;
    let inventory = Deduplicated::new(db.pool.clone(), CONSUMER, InventoryHandler);
    let mut first = put("W", "mug", 0);
    if let ProductChange::Put { fields } = &mut first.change {
        fields.stock = 10;
    }
    assert_eq!(writes.handle(&delivery(&first, 1)).await, Outcome::Ack);
    let reserve = ReserveStock {
        tenant: "t1".into(),
        order_id: uuid::Uuid::now_v7(),
        lines: vec![StockLine { sku: "W".into(), quantity: 3 }],
        hold_until: chrono::Utc::now() + chrono::Duration::minutes(10),
    };
    let d = crate::delivered(
        CONSUMER,
        ReserveStock::SUBJECT,
        &ReserveStock::schema_header(),
        &encode(&reserve),
        "CMD",
        10,
    );
    assert_eq!(inventory.handle(&d).await, Outcome::Ack);
    let delete =
        WriteProduct { write_id: uuid::Uuid::new_v4(), change: ProductChange::Delete, ..put("W", "mug", 1) };
    assert_eq!(writes.handle(&delivery(&delete, 2)).await, Outcome::Ack);
    let basis = inv::basis(&db.pool, "t1", "W").await?;
    assert!(basis.revives && basis.withdrawn == 3, "{basis:?}");
    for (at, seq) in [(2, 3), (3, 4)] {
        let mut again = put("W", "mug", at);
        if let ProductChange::Put { fields } = &mut again.change {
            fields.stock = 5;
        }
        again.stock_basis = Some(basis);
        assert_eq!(writes.handle(&delivery(&again, seq)).await, Outcome::Ack);
    }
    let s = inv::stock(&db.pool, "t1", "W").await?.ok_or_else(|| anyhow::anyhow!("no stock row"))?;
    assert_eq!((s.on_hand, s.held, s.withdrawn, s.available()), (8, 3, 0, 5), "{s:?}");
    Ok(())
}
