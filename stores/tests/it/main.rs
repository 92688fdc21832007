//! The Postgres store against a real database (one per test).

use souk_pipelines::outbox::Outbox;
use souk_stores::postgres::{
    self as pg,
    idempotency::{self, Claim},
    outbox::{self, NewMessage, PgOutbox},
};
use souk_testkit::TestDb;
use std::time::Duration;
use uuid::Uuid;

async fn db() -> anyhow::Result<TestDb> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    pg::migrate(&db.pool).await?; // idempotent
    Ok(db)
}

fn claim(principal: &str, key: &str, hash: &[u8]) -> Claim {
    Claim {
        tenant: "t".into(),
        principal: principal.into(),
        key: key.into(),
        request_hash: hash.to_vec(),
        order_id: Uuid::now_v7(),
    }
}

#[tokio::test]
async fn the_first_claim_of_a_key_wins_and_fixes_its_order() -> anyhow::Result<()> {
    let db = db().await?;
    let first = claim("u", "k", b"A");
    let records =
        idempotency::claim(&db.pool, &[first.clone(), claim("u", "k", b"B"), claim("v", "k", b"B")]).await?;
    assert!(records[0].fresh && !records[1].fresh && records[2].fresh);
    assert_eq!(records[0].order_id, first.order_id);
    assert_eq!(records[1].order_id, first.order_id, "a repeat in the same batch shares the record");
    assert_eq!(records[1].request_hash, b"A", "and is compared against the winner's body");
    assert_ne!(records[2].order_id, first.order_id, "keys are scoped per principal");

    let later = idempotency::claim(&db.pool, &[claim("u", "k", b"A")]).await?;
    assert!(!later[0].fresh);
    assert_eq!(later[0].order_id, first.order_id);
    assert_eq!(idempotency::owner_of(&db.pool, first.order_id).await?, Some(("t".into(), "u".into())));
    Ok(())
}

#[tokio::test]
async fn concurrent_claims_of_one_key_agree_on_one_winner() -> anyhow::Result<()> {
    let db = db().await?;
    let results = futures::future::join_all((0..20).map(|i| {
        let pool = db.pool.clone();
        async move { idempotency::claim(&pool, &[claim("u", "race", &[i])]).await }
    }))
    .await;
    let records: Vec<_> = results.into_iter().collect::<Result<Vec<_>, _>>()?.into_iter().flatten().collect();
    assert_eq!(records.iter().filter(|r| r.fresh).count(), 1);
    assert!(records.windows(2).all(|w| w[0].order_id == w[1].order_id));
    Ok(())
}

async fn enqueue(db: &TestDb, aggregate: &str) -> anyhow::Result<Uuid> {
    let mut tx = db.pool.begin().await?;
    let id = outbox::enqueue(
        &mut tx,
        NewMessage {
            aggregate_id: aggregate.into(),
            subject: "souk.evt.test.x".into(),
            headers: vec![("souk-schema".into(), "x/v1".into())],
            payload: aggregate.as_bytes().to_vec(),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

#[tokio::test]
async fn the_outbox_yields_committed_rows_in_order_until_published() -> anyhow::Result<()> {
    let db = db().await?;
    let outbox = PgOutbox::new(db.pool.clone(), &db.url);
    let a = enqueue(&db, "a").await?;
    let b = enqueue(&db, "b").await?;
    // An uncommitted row is invisible.
    let mut open = db.pool.begin().await?;
    outbox::enqueue(
        &mut open,
        NewMessage { aggregate_id: "c".into(), subject: "s".into(), headers: vec![], payload: vec![] },
    )
    .await?;
    let pending = outbox.pending(10).await?;
    assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(pending[0].headers, [("souk-schema".to_owned(), "x/v1".to_owned())]);
    open.rollback().await?;

    outbox.mark_published(&[a]).await?;
    assert_eq!(outbox.pending(10).await?.iter().map(|m| m.id).collect::<Vec<_>>(), [b]);
    // Published rows are kept (audit) until housekeeping removes old ones.
    assert_eq!(pg::housekeeping(&db.pool, Duration::from_secs(3600)).await?, 0);
    assert_eq!(pg::housekeeping(&db.pool, Duration::ZERO).await?, 1);
    Ok(())
}

#[tokio::test]
async fn only_one_relay_holds_the_lease_until_it_lets_go() -> anyhow::Result<()> {
    let db = db().await?;
    let first = PgOutbox::new(db.pool.clone(), &db.url);
    let second = PgOutbox::new(db.pool.clone(), &db.url);
    assert!(first.try_lease().await?);
    assert!(first.try_lease().await?, "held leases stay held");
    assert!(!second.try_lease().await?);
    drop(first); // its lease connection closes with it
    souk_testkit::eventually(Duration::from_secs(10), || async {
        anyhow::Ok(second.try_lease().await?.then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_notification_wakes_the_relay_before_its_poll_interval() -> anyhow::Result<()> {
    let db = db().await?;
    let outbox = PgOutbox::new(db.pool.clone(), &db.url);
    outbox.wait_for_new(Duration::from_millis(1)).await; // connects LISTEN
    let waiter = tokio::spawn({
        let outbox = outbox.clone();
        async move {
            let started = std::time::Instant::now();
            outbox.wait_for_new(Duration::from_secs(30)).await;
            started.elapsed()
        }
    });
    enqueue(&db, "a").await?;
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter).await??;
    assert!(waited < Duration::from_secs(10));
    Ok(())
}
