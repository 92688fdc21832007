//! Order intake under failure: worker crashes, replays, poison, a database outage.

mod dead_lettered;
mod events;
mod index;
mod inventory;
mod inventory_batch;
mod outage;
mod payments;
mod saga;
mod saga_batch;
mod write_batch;

use async_nats::HeaderMap;
use futures::{FutureExt, StreamExt, future::BoxFuture};
use souk_pipelines::{
    Message, encode, headers,
    orders::{PlaceOrder, PricedLine},
};
use souk_testkit::{NatsServer, TestDb, eventually, test_topology};
use souk_topologies::{
    Topology,
    apply::Mode,
    publisher::{OutgoingMessage, Publisher},
    runtime::{Delivery, Handler, HandlerError, Outcome, Pool, Registry},
};
use souk_workers::orders::{PLACE_CONSUMER, PLACE_HANDLER, PlaceOrderHandler};
use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// Backends of this test's database waiting for a lock (the batch tests force a lock
/// order by holding a row and watching who queues behind it).
async fn lock_waiters(db: &TestDb) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "select count(*) from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'",
    )
    .fetch_one(&db.pool)
    .await?)
}

/// Two batches that meet the same rows in opposite orders, while `holder` keeps a lock
/// `first` needs: `first` starts and waits on it, then `second` starts and waits too,
/// then the lock goes and both finish. Their outcomes, `first`'s then `second`'s.
async fn crossed<T: Send + 'static>(
    db: &TestDb,
    holder: sqlx::Transaction<'_, sqlx::Postgres>,
    first: impl Future<Output = T> + Send + 'static,
    second: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<(T, T)> {
    let waiting = |n: i64| {
        eventually(Duration::from_secs(10), move || async move {
            (lock_waiters(db).await.ok()? == n).then_some(())
        })
    };
    let first = tokio::spawn(first);
    waiting(1).await?;
    let second = tokio::spawn(second);
    waiting(2).await?;
    holder.rollback().await?;
    Ok((first.await?, second.await?))
}

/// `payload` as `consumer` gets it from `stream` at `seq`, with its schema header and a
/// fresh message id (as an outbox sends each message): what the batch tests hand a
/// handler directly.
fn delivered(
    consumer: &str,
    subject: &str,
    schema: &str,
    payload: &[u8],
    stream: &str,
    seq: u64,
) -> Delivery {
    let mut h = HeaderMap::new();
    h.insert(headers::SCHEMA, schema);
    Delivery {
        subject: subject.into(),
        headers: Some(h),
        payload: payload.to_vec().into(),
        message_id: Some(uuid::Uuid::now_v7().to_string()),
        stream: stream.into(),
        stream_sequence: seq,
        attempt: 1,
        consumer: consumer.into(),
        stored_at: None,
    }
}

struct Env {
    _nats: NatsServer,
    db: TestDb,
    js: async_nats::jetstream::Context,
    publisher: Publisher,
    topology: Topology,
}

async fn env() -> anyhow::Result<Env> {
    env_batched(None).await
}

/// `max_batch`: override the shipped pool's `max-batch` (1 = one message at a time).
async fn env_batched(max_batch: Option<usize>) -> anyhow::Result<Env> {
    let mut topology = test_topology()?;
    // Abandon quickly when a test kills a pool.
    for p in &mut topology.pools {
        p.drain_timeout = Duration::from_millis(100);
        p.max_batch = max_batch.unwrap_or(p.max_batch);
    }
    env_with(topology).await
}

/// `topologies/marketplace.toml` as shipped.
async fn env_shipped() -> anyhow::Result<Env> {
    env_with(Topology::parse(include_str!("../../../topologies/marketplace.toml"))?).await
}

async fn env_with(topology: Topology) -> anyhow::Result<Env> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
    Ok(Env { _nats: nats, db, js, publisher: Publisher::new(client, Duration::from_secs(2)), topology })
}

impl Env {
    fn start(
        &self,
        handler: impl Handler,
    ) -> impl std::future::Future<Output = anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)>> + '_
    {
        let mut registry = Registry::default();
        registry.register(PLACE_HANDLER, handler);
        async move {
            let pool = Pool::build(&self.publisher, &self.topology, "orders", &registry).await?;
            let cancel = CancellationToken::new();
            Ok((cancel.clone(), tokio::spawn(pool.run(cancel))))
        }
    }

    async fn send(&self, msg_id: &str, cmd: &PlaceOrder) -> anyhow::Result<()> {
        self.send_raw(msg_id, encode(cmd), PlaceOrder::schema_header()).await
    }

    async fn send_raw(&self, msg_id: &str, payload: Vec<u8>, schema: String) -> anyhow::Result<()> {
        let mut h = HeaderMap::new();
        h.insert(headers::SCHEMA, schema.as_str());
        self.publisher
            .publish(OutgoingMessage {
                subject: PlaceOrder::SUBJECT.into(),
                msg_id: msg_id.into(),
                headers: h,
                payload: payload.into(),
            })
            .await?;
        Ok(())
    }

    /// Rows in `table`; an error when it cannot be read (never a stand-in count).
    async fn count(&self, table: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from {table}")))
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// Messages in DLQ; an error when it cannot be read (not "0 dead letters").
    async fn dead_letters(&self) -> anyhow::Result<u64> {
        Ok(self.js.get_stream("DLQ").await?.get_info().await?.state.messages)
    }

    /// Whether the orders consumer has nothing pending and nothing unacknowledged.
    async fn idle(&self) -> anyhow::Result<bool> {
        Ok(souk_testkit::drained(&self.js, "CMD", PLACE_CONSUMER).await?.is_some())
    }
}

fn command() -> PlaceOrder {
    PlaceOrder {
        order_id: uuid::Uuid::now_v7(),
        tenant: "t1".into(),
        buyer_id: "u1".into(),
        currency: "EUR".parse().expect("EUR"),
        lines: vec![PricedLine { sku: "A".into(), seller: "s1".into(), quantity: 2, unit_price_minor: 500 }],
        payment_token: Some("tok_ok".into()),
        total_minor: 1000,
        placed_at: chrono::Utc::now(),
        cart: None,
    }
}

/// Commits through the real handler, then "dies" before the runtime can ack.
struct DiesAfterCommit {
    inner: PlaceOrderHandler,
    commits: Arc<AtomicU32>,
}

impl Handler for DiesAfterCommit {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let outcome = self.inner.handle(d).await;
            assert_eq!(outcome, Outcome::Ack);
            self.commits.fetch_add(1, Ordering::SeqCst);
            futures::future::pending::<Outcome>().await
        }
        .boxed()
    }
}

/// Counts deliveries, delegating to the real handler.
struct Counting {
    inner: PlaceOrderHandler,
    attempts: Arc<AtomicU32>,
    probes: Arc<AtomicU32>,
}

impl Handler for Counting {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.handle(d)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.inner.probe()
    }
}

#[tokio::test]
async fn a_worker_killed_between_commit_and_ack_leaves_one_order_and_one_event() -> anyhow::Result<()> {
    let env = env().await?;
    let cmd = command();
    env.send("place-1", &cmd).await?;

    let commits = Arc::new(AtomicU32::new(0));
    let dying = DiesAfterCommit {
        inner: PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER),
        commits: commits.clone(),
    };
    let (kill, first) = env.start(dying).await?;
    eventually(Duration::from_secs(10), || async { (commits.load(Ordering::SeqCst) == 1).then_some(()) })
        .await?;
    kill.cancel(); // drain deadline passes; the message is abandoned unacked
    first.await?;
    assert_eq!(env.count("orders").await?, 1, "the commit happened");

    let attempts = Arc::new(AtomicU32::new(0));
    let healthy = Counting {
        inner: PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER),
        attempts: attempts.clone(),
        probes: Arc::default(),
    };
    let (stop, second) = env.start(healthy).await?;
    // Redelivered after the ack wait, recognised by the inbox, acked.
    eventually(Duration::from_secs(15), || async {
        anyhow::Ok((attempts.load(Ordering::SeqCst) >= 1 && env.idle().await?).then_some(()))
    })
    .await?;
    stop.cancel();
    second.await?;
    assert_eq!(env.count("orders").await?, 1);
    assert_eq!(env.count("outbox").await?, 2, "one OrderAccepted, one ReserveStock");
    assert_eq!(env.count("sagas").await?, 1);
    assert_eq!(env.count("inbox").await?, 1);
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_replay_with_a_new_message_id_changes_nothing() -> anyhow::Result<()> {
    for max_batch in [1, 64] {
        replay(max_batch).await?;
    }
    Ok(())
}

async fn replay(max_batch: usize) -> anyhow::Result<()> {
    let env = env_batched(Some(max_batch)).await?;
    let cmd = command();
    env.send("first", &cmd).await?;
    env.send("replayed-after-the-dedupe-window", &cmd).await?;
    env.send("first", &cmd).await?; // inside the window: JetStream drops it
    let (stop, run) = env.start(PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER)).await?;
    eventually(Duration::from_secs(10), || async { anyhow::Ok(env.idle().await?.then_some(())) }).await?;
    stop.cancel();
    run.await?;
    assert_eq!(env.count("orders").await?, 1);
    assert_eq!(env.count("outbox").await?, 2, "OrderAccepted and ReserveStock, once");
    Ok(())
}

#[tokio::test]
async fn poison_commands_are_dead_lettered_and_write_nothing() -> anyhow::Result<()> {
    for max_batch in [1, 64] {
        poison(max_batch).await?;
    }
    Ok(())
}

async fn poison(max_batch: usize) -> anyhow::Result<()> {
    let env = env_batched(Some(max_batch)).await?;
    env.send_raw("garbage", b"{not json".to_vec(), PlaceOrder::schema_header()).await?;
    let mut wrong_total = command();
    wrong_total.total_minor = 1;
    env.send("wrong-total", &wrong_total).await?;
    let mut bad_line = command();
    bad_line.lines[0].quantity = 0;
    bad_line.total_minor = 0;
    env.send("bad-line", &bad_line).await?;
    // Passes every check but Postgres refuses it (NUL in text): in a batch, the batch
    // fails and its messages are retried one by one, so only this one is lost to the DLQ.
    let mut refused = command();
    refused.buyer_id = "u\u{0}1".into();
    env.send("refused-by-postgres", &refused).await?;
    // Either party missing is enough to refuse it.
    let mut no_tenant = command();
    no_tenant.tenant = String::new();
    env.send("no-tenant", &no_tenant).await?;
    let mut no_buyer = command();
    no_buyer.buyer_id = String::new();
    env.send("no-buyer", &no_buyer).await?;
    let good = command();
    env.send("good", &good).await?;

    let (stop, run) = env.start(PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER)).await?;
    eventually(Duration::from_secs(10), || async {
        anyhow::Ok((env.dead_letters().await? == 6 && env.idle().await?).then_some(()))
    })
    .await?;
    stop.cancel();
    run.await?;
    // Poison is dead-lettered on its first delivery, never retried: retries are for
    // failures a later attempt may not meet.
    let dlq = env.js.get_stream("DLQ").await?;
    for seq in 1..=6 {
        let letter = dlq.get_raw_message(seq).await?;
        let header = |name| letter.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        assert_eq!(
            header(souk_pipelines::headers::DLQ_ATTEMPTS),
            "1",
            "{}",
            header(souk_pipelines::headers::DLQ_ERROR)
        );
    }
    assert_eq!(env.count("orders").await?, 1, "only the good order");
    assert_eq!(env.count("outbox").await?, 2, "OrderAccepted and ReserveStock of the good order");
    assert_eq!(env.count("inbox").await?, 1, "poison leaves no inbox record");
    Ok(())
}

/// Set `setting` on database `db_name` from an admin connection (`alter database
/// <db> <setting>`), then, with `end_sessions`, end every session of it: sessions keep
/// what they started with, and a database closed to connections keeps those it has.
async fn alter_database(
    admin: &sqlx::PgPool,
    db_name: &str,
    setting: &str,
    end_sessions: bool,
) -> anyhow::Result<()> {
    sqlx::query(sqlx::AssertSqlSafe(format!("alter database {db_name} {setting}"))).execute(admin).await?;
    if end_sessions {
        sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
            .bind(db_name)
            .execute(admin)
            .await?;
    }
    Ok(())
}

/// With the store put in a failing state by `fail`, a command is handled once, then
/// held — not retried, not dead-lettered — while the breaker's probe keeps failing
/// (three probes: 0.5 + 1 + 2 s, well past the test topology's whole retry schedule of
/// max-deliver 5 over 50–400 ms); once `repair` runs, it is stored.
async fn a_command_is_held_while_the_store_fails(
    fail: (&str, bool),
    repair: (&str, bool),
    what: &str,
) -> anyhow::Result<()> {
    let env = env().await?;
    let admin = sqlx::PgPool::connect(
        &std::env::var("SOUK_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )
    .await?;
    let db_name: String = sqlx::query_scalar("select current_database()").fetch_one(&env.db.pool).await?;
    alter_database(&admin, &db_name, fail.0, fail.1).await?;
    env.send("while-failing", &command()).await?;
    let (attempts, probes) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let handler = Counting {
        inner: PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER),
        attempts: attempts.clone(),
        probes: probes.clone(),
    };
    let (stop, run) = env.start(handler).await?;
    eventually(Duration::from_secs(20), || async { (probes.load(Ordering::SeqCst) >= 3).then_some(()) })
        .await?;
    assert_eq!(attempts.load(Ordering::SeqCst), 1, "held, not retried, while {what}");
    assert_eq!(env.dead_letters().await?, 0);
    alter_database(&admin, &db_name, repair.0, repair.1).await?;
    eventually(Duration::from_secs(30), || async {
        anyhow::Ok((env.count("orders").await? == 1).then_some(()))
    })
    .await?;
    stop.cancel();
    run.await?;
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}

/// A database refusing connections is the store's failure: a dependency failure must
/// not spend the message's attempts.
#[tokio::test]
async fn a_database_outage_is_retried_not_dead_lettered() -> anyhow::Result<()> {
    a_command_is_held_while_the_store_fails(
        ("allow_connections false", true),
        ("allow_connections true", false),
        "the store is down",
    )
    .await
}

/// A read-only server (a standby, or a primary demoted in a failover) answers queries
/// but refuses writes: that is the store's state, not the message's fault. The probe
/// sees it too (a bare `select 1` would pass).
#[tokio::test]
async fn a_read_only_database_holds_commands_until_it_takes_writes_again() -> anyhow::Result<()> {
    a_command_is_held_while_the_store_fails(
        ("set default_transaction_read_only = on", true),
        ("reset default_transaction_read_only", true),
        "read-only",
    )
    .await
}

/// Delegates to the real handler, counting deliveries it handles.
struct Delegating(PlaceOrderHandler, Arc<AtomicU32>);

impl Handler for Delegating {
    fn too_new(&self, d: &Delivery) -> Option<String> {
        self.0.too_new(d)
    }
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.handle(d)
    }
}

/// Rolling deploys: a command written by a newer release (here `orders.place/v3`; this
/// release reads v1 and v2) is not malformed. It waits for the reader's upgrade — never
/// dead-lettered, not even once its delivery count is past max-deliver (deliveries by
/// readers that deferred it and have since been replaced) — while current commands flow.
#[tokio::test]
async fn a_command_of_a_newer_schema_waits_for_the_upgrade_instead_of_being_dead_lettered()
-> anyhow::Result<()> {
    let env = env_shipped().await?;
    let max_deliver = env.topology.consumers[0].max_deliver;
    env.send_raw("from-a-newer-release", encode(&command()), "orders.place/v3".into()).await?;
    // Earlier deliveries, by readers that are gone: the count is used up.
    let consumer: async_nats::jetstream::consumer::PullConsumer = env
        .js
        .get_stream("CMD")
        .await?
        .get_consumer(PLACE_CONSUMER)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for _ in 0..max_deliver {
        let mut batch = consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await?;
        let msg = batch
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("not delivered"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        msg.ack_with(async_nats::jetstream::AckKind::Nak(None)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    env.send("current", &command()).await?;

    let handled = Arc::new(AtomicU32::new(0));
    let handler = Delegating(PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER), handled.clone());
    let (stop, run) = env.start(handler).await?;
    let delivered = || async {
        let info = env.js.get_stream("CMD").await.ok()?.consumer_info(PLACE_CONSUMER).await.ok()?;
        // The newer one delivered once more, past max-deliver, and the current one.
        (info.delivered.consumer_sequence > max_deliver as u64 + 1).then_some(())
    };
    eventually(Duration::from_secs(10), delivered).await?;
    eventually(Duration::from_secs(10), || async {
        anyhow::Ok((env.count("orders").await? == 1).then_some(()))
    })
    .await?;
    // Stopping drains: every delivery is settled when the pool returns.
    stop.cancel();
    run.await?;

    // Read loudly: a NATS error must not pass for an empty DLQ.
    let dlq = env.js.get_stream("DLQ").await?.get_info().await?.state;
    assert_eq!(dlq.last_sequence, 0, "not dead-lettered");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "only the current command reached the handler");
    let info = env.js.get_stream("CMD").await?.consumer_info(PLACE_CONSUMER).await?;
    assert_eq!(info.ack_floor.stream_sequence, 0, "the newer command is neither acked nor terminated");
    assert_eq!(info.num_ack_pending, 1, "it waits for redelivery");
    assert_eq!(env.count("orders").await?, 1);
    Ok(())
}
