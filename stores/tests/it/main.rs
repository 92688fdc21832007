//! The Postgres store against a real database (one per test).

mod carts;
mod deployment;
mod failures;
mod search;

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
    let pending = outbox.pending(10, &[]).await?;
    assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), [a, b]);
    assert_eq!(pending[0].headers, [("souk-schema".to_owned(), "x/v1".to_owned())]);
    open.rollback().await?;

    assert!(outbox.try_lease().await?, "marks are for the lease holder");
    outbox.mark_published(&[published(a)]).await?;
    assert_eq!(outbox.pending(10, &[]).await?.iter().map(|m| m.id).collect::<Vec<_>>(), [b]);
    // Where JetStream stored it is kept with the row (`souk trace` reads it back by it).
    let at: (Option<String>, Option<i64>) =
        sqlx::query_as("select stream, stream_seq from outbox where id = $1")
            .bind(a)
            .fetch_one(&db.pool)
            .await?;
    assert_eq!(at, (Some("EVT".to_owned()), Some(7)));
    // Published rows are kept (audit) until housekeeping removes old ones.
    assert_eq!(pg::housekeeping(&db.pool, Duration::from_secs(3600)).await?.deleted, 0);
    assert_eq!(pg::housekeeping(&db.pool, Duration::ZERO).await?.deleted, 1);
    Ok(())
}

/// Each insert notifies the relay; a round reads rows committed just before it and their
/// notifications arrive after. A notification for rows already read must not end the
/// relay's wait (it would run an empty round: ~5 read transactions per checkout before);
/// one for a row not read yet must.
#[tokio::test]
async fn the_relay_sleeps_through_notifications_for_rows_it_has_read() -> anyhow::Result<()> {
    let db = db().await?;
    let outbox = PgOutbox::new(db.pool.clone(), &db.url);
    outbox.wait_for_new(Duration::from_millis(1)).await; // listening from here on
    let a = enqueue(&db, "a").await?;
    assert_eq!(outbox.pending(10, &[]).await?.iter().map(|m| m.id).collect::<Vec<_>>(), [a]);
    // a's notification is waiting on the listener: it is for a row read.
    let wait = Duration::from_millis(300);
    let started = std::time::Instant::now();
    outbox.wait_for_new(wait).await;
    assert!(started.elapsed() >= wait, "woke after {:?} for a row already read", started.elapsed());

    let waiter = outbox.clone();
    let waiting = tokio::spawn(async move {
        let started = std::time::Instant::now();
        waiter.wait_for_new(Duration::from_secs(20)).await;
        started.elapsed()
    });
    enqueue(&db, "b").await?;
    let woke = waiting.await?;
    assert!(woke < Duration::from_secs(20), "a row not read yet did not wake the relay");
    Ok(())
}

/// The relay's mark is planned for the outbox as it is at each run: Postgres settles a
/// statement kept on the connection on a generic plan after five runs, and the plan it
/// settles on while the outbox is small (a sequential scan) is the one it would run once
/// the outbox holds thousands of rows (`PgOutbox::mark`). So after more marks than that
/// on one connection, no marking statement is kept there — and the rows are marked.
#[tokio::test]
async fn the_relays_mark_is_not_kept_on_its_connection_as_a_prepared_statement() -> anyhow::Result<()> {
    let db = db().await?;
    let one = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&db.url).await?;
    let outbox = PgOutbox::new(one.clone(), &db.url);
    assert!(outbox.try_lease().await?);
    for i in 0..8 {
        let id = enqueue(&db, &format!("a{i}")).await?;
        outbox.mark_published(&[published(id)]).await?;
    }
    assert!(outbox.pending(10, &[]).await?.is_empty(), "every row marked");
    // The text is bound, so this query is not a statement containing it.
    let kept: Vec<String> =
        sqlx::query_scalar("select statement from pg_prepared_statements where strpos(statement, $1) > 0")
            .bind("set published_at")
            .fetch_all(&one)
            .await?;
    assert!(kept.is_empty(), "kept on the connection: {kept:?}");
    Ok(())
}

/// A payment command's recorded answer and its provider attempts expire with the inbox;
/// the ledger of money moved stays.
#[tokio::test]
async fn housekeeping_expires_payment_answers_and_attempts_but_keeps_the_ledger() -> anyhow::Result<()> {
    let db = db().await?;
    let order = Uuid::now_v7();
    let key = format!("souk-{order}-authorize");
    sqlx::query(
        "insert into payment_results (idempotency_key, order_id, operation, succeeded, result)
         values ($1, $2, 'authorize', true, '{}')",
    )
    .bind(&key)
    .bind(order)
    .execute(&db.pool)
    .await?;
    pg::payments::attempt_started(&db.pool, &key, "alpha", "m1").await?;
    let mut conn = db.pool.acquire().await?;
    pg::payments::record_authorization(
        &mut conn,
        &pg::payments::NewAuthorization {
            order_id: order,
            tenant: "t",
            provider: "alpha",
            provider_payment_id: "pay_1",
            amount_minor: 100,
            currency: "EUR",
            idempotency_key: &key,
        },
    )
    .await?;
    drop(conn);
    let counts = || {
        sqlx::query_as::<_, (i64, i64, i64)>(
            "select (select count(*) from payment_results), (select count(*) from payment_attempts),
                    (select count(*) from payment_authorizations)",
        )
        .fetch_one(&db.pool)
    };
    assert_eq!(counts().await?, (1, 1, 1));
    assert_eq!(pg::housekeeping(&db.pool, Duration::from_secs(3600)).await?.deleted, 0, "young: kept");
    assert_eq!(pg::housekeeping(&db.pool, Duration::ZERO).await?.deleted, 2);
    assert_eq!(counts().await?, (0, 0, 1), "answers and attempts gone, the ledger stays");
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

/// A relay that lost its lease mid-round — its lease connection dropped and another
/// relay took the lease — cannot mark the rows it read: the mark fails and marks nothing,
/// and the new holder publishes (and marks) them.
#[tokio::test]
async fn a_relay_whose_lease_was_taken_over_mid_round_cannot_mark() -> anyhow::Result<()> {
    let db = db().await?;
    let old = PgOutbox::new(db.pool.clone(), &db.url);
    let new = PgOutbox::new(db.pool.clone(), &db.url);
    let a = enqueue(&db, "a").await?;
    assert!(old.try_lease().await?);
    let read = old.pending(10, &[]).await?;
    assert_eq!(read.iter().map(|m| m.id).collect::<Vec<_>>(), [a]);
    // Mid-round, the old holder's lease connection is cut (a partition, a killed
    // backend): the advisory lock goes with it, and the other relay takes the lease.
    take_the_lease_over(&db, &new).await?;

    assert!(old.mark_published(&[published(a)]).await.is_err(), "the old holder's mark is fenced off");
    assert_eq!(new.pending(10, &[]).await?.len(), 1, "and marked nothing");
    assert!(!old.try_lease().await?, "the old holder is a standby now");
    new.mark_published(&[published(a)]).await?;
    assert!(new.pending(10, &[]).await?.is_empty());
    Ok(())
}

/// A parked row leaves the line with every later row of its aggregate — also those
/// written after it was parked — and comes back, in order, when requeued.
#[tokio::test]
async fn a_parked_row_holds_back_its_aggregate_only_until_requeued() -> anyhow::Result<()> {
    let db = db().await?;
    let outbox = PgOutbox::new(db.pool.clone(), &db.url);
    let a1 = enqueue(&db, "a").await?;
    let b1 = enqueue(&db, "b").await?;
    let a2 = enqueue(&db, "a").await?;
    assert!(outbox.try_lease().await?, "parking is for the lease holder");
    assert_eq!(outbox.record_failure(a1, "no stream").await?, 1);
    assert_eq!(outbox.record_failure(a1, "no stream").await?, 2);
    assert_eq!(outbox.park(a1, "no stream takes subject x").await?, 2, "a1 and a2 behind it");
    let a3 = enqueue(&db, "a").await?;
    let b2 = enqueue(&db, "b").await?;
    let ids =
        |rows: Vec<souk_pipelines::outbox::OutboxMessage>| rows.into_iter().map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(ids(outbox.pending(10, &[]).await?), [b1, b2], "a3 waits behind the parked a1");
    let parked = outbox.parked(10).await?;
    assert_eq!(parked.iter().map(|p| p.id).collect::<Vec<_>>(), [a1, a2]);
    assert_eq!(parked[0].tries, 2);
    assert_eq!(parked[0].last_error.as_deref(), Some("no stream takes subject x"));
    assert_eq!(outbox.parked_count().await?, 2);

    assert_eq!(outbox.requeue(Some("a")).await?, 2);
    assert_eq!(ids(outbox.pending(10, &[]).await?), [a1, b1, a2, a3, b2]);
    assert_eq!(outbox.parked_count().await?, 0);
    Ok(())
}

/// A dead letter marks its order failed (writing the row if there is none), never an
/// order that got further; a later successful command accepts a failed order.
#[tokio::test]
async fn failed_orders_are_written_once_never_over_an_accepted_one_and_can_be_accepted() -> anyhow::Result<()>
{
    use souk_pipelines::orders::{PlaceOrder, PricedLine};
    use souk_stores::postgres::orders;
    let db = db().await?;
    let cmd = PlaceOrder {
        order_id: Uuid::now_v7(),
        tenant: "t".into(),
        buyer_id: "u".into(),
        currency: "EUR".parse().map_err(|e| anyhow::anyhow!("{e:?}"))?,
        lines: vec![PricedLine { sku: "A".into(), seller: "s1".into(), quantity: 1, unit_price_minor: 5 }],
        payment_token: None,
        total_minor: 5,
        placed_at: chrono::Utc::now(),
        cart: None,
    };
    let mut tx = db.pool.begin().await?;
    assert!(orders::mark_failed(&mut tx, &cmd, "first").await?);
    assert!(orders::mark_failed(&mut tx, &cmd, "second").await?);
    tx.commit().await?;
    let order = orders::get(&db.pool, cmd.order_id).await?.ok_or_else(|| anyhow::anyhow!("no row"))?;
    assert_eq!((order.status.as_str(), order.reason.as_deref()), ("failed", Some("second")));

    let mut tx = db.pool.begin().await?;
    assert!(
        orders::insert_accepted_many(&mut tx, &[(&cmd, None)]).await?.contains(&cmd.order_id),
        "accepted at last"
    );
    assert!(!orders::mark_failed(&mut tx, &cmd, "late dead letter").await?);
    assert!(orders::insert_accepted_many(&mut tx, &[(&cmd, None)]).await?.is_empty(), "accepted once");
    tx.commit().await?;
    let order = orders::get(&db.pool, cmd.order_id).await?.ok_or_else(|| anyhow::anyhow!("no row"))?;
    assert_eq!((order.status.as_str(), order.reason), ("accepted", None));
    Ok(())
}

/// An accepted order whose command was never handled (dropped by CMD's max-age, purged,
/// lost with a re-created stream) does not read `pending` until its claim expires and
/// then vanish: housekeeping writes it `failed` as lost before deleting the claim, and
/// leaves orders that have a row alone. A command that turns up after all still moves it
/// on to `accepted`.
#[tokio::test]
async fn an_order_whose_command_never_arrived_is_failed_as_lost_when_its_claim_expires() -> anyhow::Result<()>
{
    use souk_pipelines::orders::{PlaceOrder, PricedLine};
    use souk_stores::postgres::{idempotency, orders};
    let db = db().await?;
    let claim = |key: &str| idempotency::Claim {
        tenant: "t".into(),
        principal: "u".into(),
        key: key.into(),
        request_hash: vec![1],
        order_id: Uuid::now_v7(),
    };
    let (lost, handled, fresh) = (claim("lost"), claim("handled"), claim("fresh"));
    idempotency::claim(&db.pool, &[lost.clone(), handled.clone(), fresh.clone()]).await?;
    let cmd = |order_id| PlaceOrder {
        order_id,
        tenant: "t".into(),
        buyer_id: "u".into(),
        currency: "EUR".parse().expect("EUR"),
        lines: vec![PricedLine { sku: "A".into(), seller: "s1".into(), quantity: 1, unit_price_minor: 5 }],
        payment_token: None,
        total_minor: 5,
        placed_at: chrono::Utc::now(),
        cart: None,
    };
    let mut tx = db.pool.begin().await?;
    orders::insert_accepted_many(&mut tx, &[(&cmd(handled.order_id), None)]).await?;
    tx.commit().await?;
    sqlx::query("update idempotency_keys set created_at = now() - interval '8 days' where key <> 'fresh'")
        .execute(&db.pool)
        .await?;

    let done = pg::housekeeping(&db.pool, Duration::from_secs(7 * 24 * 3600)).await?;
    assert_eq!((done.lost, done.deleted), (1, 2), "one lost order; two expired claims");
    let status = |id| {
        let pool = db.pool.clone();
        async move {
            let o = orders::get(&pool, id).await?.ok_or_else(|| anyhow::anyhow!("no row for {id}"))?;
            anyhow::Ok((o.status, o.reason))
        }
    };
    assert_eq!(status(lost.order_id).await?, ("failed".into(), Some(pg::LOST_REASON.into())));
    assert_eq!(status(handled.order_id).await?, ("accepted".into(), None));
    assert!(orders::get(&db.pool, fresh.order_id).await?.is_none(), "a live claim is left alone");
    assert_eq!(
        pg::housekeeping(&db.pool, Duration::from_secs(7 * 24 * 3600)).await?,
        pg::Housekeeping::default()
    );

    let mut tx = db.pool.begin().await?;
    orders::insert_accepted_many(&mut tx, &[(&cmd(lost.order_id), None)]).await?;
    tx.commit().await?;
    assert_eq!(status(lost.order_id).await?, ("accepted".into(), None), "a late command still counts");
    Ok(())
}

/// A TCP proxy to Postgres that can go silent: once `cut`, it forwards nothing in either
/// direction but keeps both sockets open — a partition, or a relay host that died
/// without closing its connections, as the server sees it.
async fn silent_proxy(
    target: (String, u16),
) -> anyhow::Result<(u16, std::sync::Arc<std::sync::atomic::AtomicBool>)> {
    use std::sync::{Arc, atomic::AtomicBool};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let cut = Arc::new(AtomicBool::new(false));
    let accept_cut = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect((target.0.as_str(), target.1)).await else {
                return;
            };
            let cut = accept_cut.clone();
            tokio::spawn(async move {
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                let pump = |mut from: tokio::net::tcp::OwnedReadHalf,
                            mut to: tokio::net::tcp::OwnedWriteHalf,
                            cut: Arc<AtomicBool>| async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cut.load(std::sync::atomic::Ordering::SeqCst) {
                            continue; // swallowed: the other side never hears of it
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    // Keep the other side's socket open (no FIN): silence, not a close.
                    futures::future::pending::<()>().await;
                    drop(to);
                };
                tokio::join!(pump(cr, sw, cut.clone()), pump(sr, cw, cut));
            });
        }
    });
    Ok((port, cut))
}

/// The relay holding the lease loses its lease connection silently (its host dies, a
/// partition): Postgres sees an idle session, not a closed one, and keeps its advisory
/// lock until TCP keepalive gives up on it — two hours by default. Another relay must
/// take the lease over well before that, or the outbox waits for those hours.
#[tokio::test]
async fn a_lease_whose_connection_went_silent_is_taken_over() -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, postgres::PgConnectOptions};
    use std::str::FromStr;
    let db = db().await?;
    let direct = PgConnectOptions::from_str(&db.url)?;
    let (port, cut) = silent_proxy((direct.get_host().to_owned(), direct.get_port())).await?;
    let via_proxy = direct.clone().host("127.0.0.1").port(port).to_url_lossy().to_string();
    let old = PgOutbox::new(db.pool.clone(), &via_proxy);
    let new = PgOutbox::new(db.pool.clone(), &db.url);
    assert!(old.try_lease().await?);
    assert!(!new.try_lease().await?);
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    souk_testkit::eventually(Duration::from_secs(150), || async {
        new.try_lease().await.ok().filter(|&l| l)
    })
    .await?;
    let a = enqueue(&db, "a").await?;
    assert!(old.mark_published(&[published(a)]).await.is_err(), "the silent holder's marks are fenced off");
    new.mark_published(&[published(a)]).await?;
    Ok(())
}

/// A relay that lost its lease mid-round cannot park rows either. It used to: a row it
/// parked while the new holder published it ended published *and* parked, which holds
/// back every later row of its aggregate for good — `requeue` only takes unpublished
/// rows, so not even an operator could put the aggregate back in line.
#[tokio::test]
async fn a_relay_whose_lease_was_taken_over_cannot_park() -> anyhow::Result<()> {
    let db = db().await?;
    let old = PgOutbox::new(db.pool.clone(), &db.url);
    let new = PgOutbox::new(db.pool.clone(), &db.url);
    let a1 = enqueue(&db, "a").await?;
    let a2 = enqueue(&db, "a").await?;
    assert!(old.try_lease().await?);
    take_the_lease_over(&db, &new).await?;
    // Mid-round, the old holder gives up on a1 while the new one publishes it.
    let parked_by_old = old.park(a1, "no stream takes subject souk.evt.test.x").await;
    new.mark_published(&[published(a1)]).await?;
    assert!(parked_by_old.is_err(), "the old holder's park is fenced off");
    let pending: Vec<_> = new.pending(10, &[]).await?.into_iter().map(|m| m.id).collect();
    assert_eq!(pending, [a2], "a2 is not held back behind a row the old holder parked");
    assert!(new.parked(10).await?.is_empty());
    Ok(())
}

/// A catalog write's claim (keys `catalog.write <key>`) has no order: when it expires,
/// housekeeping deletes it and writes no lost order; old write outcomes go too.
#[tokio::test]
async fn an_expired_catalog_write_claim_makes_no_lost_order() -> anyhow::Result<()> {
    use souk_stores::postgres::{idempotency, products};
    let db = db().await?;
    let claim = idempotency::Claim {
        tenant: "t".into(),
        principal: "u".into(),
        key: format!("{}k1", idempotency::CATALOG_WRITE_PREFIX),
        request_hash: vec![1],
        order_id: Uuid::now_v7(),
    };
    idempotency::claim(&db.pool, std::slice::from_ref(&claim)).await?;
    let mut tx = db.pool.begin().await?;
    let outcome = products::Outcome::Rejected { reason: "version conflict".into() };
    products::record_outcome(&mut tx, "t", claim.order_id, "s1", "MUG-1", "u", &outcome).await?;
    tx.commit().await?;
    assert_eq!(
        products::write_outcome(&db.pool, "t", claim.order_id).await?.map(|w| w.outcome),
        Some(outcome)
    );
    sqlx::query("update idempotency_keys set created_at = now() - interval '8 days'")
        .execute(&db.pool)
        .await?;
    sqlx::query("update catalog_writes set decided_at = now() - interval '8 days'").execute(&db.pool).await?;
    let done = pg::housekeeping(&db.pool, Duration::from_secs(7 * 24 * 3600)).await?;
    assert_eq!((done.lost, done.deleted), (0, 2), "the claim and the outcome, no order");
    let orders: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(&db.pool).await?;
    assert_eq!(orders, 0);
    Ok(())
}

/// A catalog write claim that expires with no outcome is a write accepted (202) and never
/// handled (its command dropped by CMD's max-age, purged, lost with a re-created stream):
/// housekeeping records it `failed`, readable by its sender, instead of letting it read
/// `pending` for ever and then vanish.
#[tokio::test]
async fn an_expired_catalog_write_claim_with_no_outcome_reads_failed_as_lost() -> anyhow::Result<()> {
    use souk_stores::postgres::{idempotency, products};
    let db = db().await?;
    let claim = idempotency::Claim {
        tenant: "t".into(),
        principal: "u".into(),
        key: format!("{}k1", idempotency::CATALOG_WRITE_PREFIX),
        request_hash: vec![1],
        order_id: Uuid::now_v7(),
    };
    idempotency::claim(&db.pool, std::slice::from_ref(&claim)).await?;
    sqlx::query("update idempotency_keys set created_at = now() - interval '8 days'")
        .execute(&db.pool)
        .await?;
    let done = pg::housekeeping(&db.pool, Duration::from_secs(7 * 24 * 3600)).await?;
    assert_eq!((done.lost, done.deleted), (1, 1), "one lost write, its claim deleted");
    let record = products::write_outcome(&db.pool, "t", claim.order_id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no outcome for a lost write"))?;
    assert_eq!(record.actor, "u");
    assert_eq!(record.outcome, products::Outcome::Failed { reason: pg::LOST_REASON.into() });
    let orders: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(&db.pool).await?;
    assert_eq!(orders, 0, "a catalog claim makes no order");
    Ok(())
}

/// `id` as the relay marks it: stored at EVT sequence 7.
fn published(id: uuid::Uuid) -> souk_pipelines::outbox::Published {
    souk_pipelines::outbox::Published { id, stream: "EVT".into(), stream_seq: 7 }
}

/// A relay that lost the lease stops listening: it no longer waits for notifications,
/// and an unread LISTEN connection makes Postgres keep every outbox notification for
/// it — the notification queue fills (8 GB, days at a busy shop) and then every
/// transaction that writes the outbox fails at commit (found in review).
#[tokio::test]
async fn a_relay_that_lost_its_lease_stops_listening() -> anyhow::Result<()> {
    let db = db().await?;
    let old = PgOutbox::new(db.pool.clone(), &db.url);
    let new = PgOutbox::new(db.pool.clone(), &db.url);
    assert!(old.try_lease().await?);
    old.wait_for_new(Duration::from_millis(1)).await;
    let listening = || async {
        anyhow::Ok(
            sqlx::query_scalar::<_, i64>(
                "select count(*) from pg_stat_activity
                 where datname = current_database() and query ilike 'listen%'",
            )
            .fetch_one(&db.pool)
            .await?,
        )
    };
    assert_eq!(listening().await?, 1, "the holder listens");
    take_the_lease_over(&db, &new).await?;
    // The old holder finds the lease gone (each try bounded by the lease check's time).
    souk_testkit::eventually(Duration::from_secs(30), || async {
        anyhow::Ok(matches!(old.try_lease().await, Ok(false)).then_some(()))
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        anyhow::Ok((listening().await? == 0).then_some(()))
    })
    .await?;
    Ok(())
}

/// The lease holder's lease connection is cut (a partition, a killed backend): the
/// advisory lock goes with it, and `new` takes the lease.
async fn take_the_lease_over(db: &TestDb, new: &PgOutbox) -> anyhow::Result<()> {
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_stat_activity
         where application_name = $1 and datname = current_database()",
    )
    .bind(outbox::LEASE_APPLICATION_NAME)
    .execute(&db.pool)
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || async { new.try_lease().await.ok().filter(|&l| l) })
        .await?;
    Ok(())
}
