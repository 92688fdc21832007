//! Order intake under failure: worker crashes, replays, poison, a database outage.

use async_nats::HeaderMap;
use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message, encode, headers,
    orders::{OrderLine, PlaceOrder},
};
use souk_testkit::{NatsServer, TestDb, eventually, test_topology};
use souk_topologies::{
    Topology,
    apply::Mode,
    publisher::{OutgoingMessage, Publisher},
    runtime::{Delivery, Handler, Outcome, Pool, Registry},
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
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut topology = test_topology()?;
    // Abandon quickly when a test kills a pool.
    for p in &mut topology.pools {
        p.drain_timeout = Duration::from_millis(100);
        p.max_batch = max_batch.unwrap_or(p.max_batch);
    }
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
        let info = self.js.get_stream("CMD").await?.consumer_info(PLACE_CONSUMER).await?;
        Ok(info.num_pending == 0 && info.num_ack_pending == 0)
    }
}

fn command() -> PlaceOrder {
    PlaceOrder {
        order_id: uuid::Uuid::now_v7(),
        tenant: "t1".into(),
        buyer_id: "u1".into(),
        currency: "EUR".parse().expect("EUR"),
        lines: vec![OrderLine { sku: "A".into(), quantity: 2, unit_price_minor: 500 }],
        total_minor: 1000,
        placed_at: chrono::Utc::now(),
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
}

impl Handler for Counting {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        self.inner.handle(d)
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
    assert_eq!(env.count("outbox").await?, 1, "one OrderAccepted");
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
    assert_eq!(env.count("outbox").await?, 1);
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
    env.send_raw("future", encode(&command()), "orders.place/v9".into()).await?;
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
    let good = command();
    env.send("good", &good).await?;

    let (stop, run) = env.start(PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER)).await?;
    eventually(Duration::from_secs(10), || async {
        anyhow::Ok((env.dead_letters().await? == 5 && env.idle().await?).then_some(()))
    })
    .await?;
    stop.cancel();
    run.await?;
    assert_eq!(env.count("orders").await?, 1, "only the good order");
    assert_eq!(env.count("outbox").await?, 1);
    assert_eq!(env.count("inbox").await?, 1, "poison leaves no inbox record");
    Ok(())
}

#[tokio::test]
async fn a_database_outage_is_retried_not_dead_lettered() -> anyhow::Result<()> {
    let env = env().await?;
    let admin = sqlx::PgPool::connect(
        &std::env::var("SOUK_TEST_DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into()),
    )
    .await?;
    let db_name: String = sqlx::query_scalar("select current_database()").fetch_one(&env.db.pool).await?;
    let outage = |allow: bool| {
        let (admin, db_name) = (admin.clone(), db_name.clone());
        async move {
            sqlx::query(sqlx::AssertSqlSafe(format!("alter database {db_name} allow_connections {allow}")))
                .execute(&admin)
                .await?;
            if !allow {
                sqlx::query("select pg_terminate_backend(pid) from pg_stat_activity where datname = $1")
                    .bind(&db_name)
                    .execute(&admin)
                    .await?;
            }
            anyhow::Ok(())
        }
    };
    // A generous schedule so the outage fits in the retries.
    let mut env = env;
    for c in &mut env.topology.consumers {
        c.max_deliver = 20;
        c.backoff = vec![Duration::from_millis(100)];
    }
    outage(false).await?;
    env.send("during-outage", &command()).await?;
    let attempts = Arc::new(AtomicU32::new(0));
    let handler = Counting {
        inner: PlaceOrderHandler::new(env.db.pool.clone(), PLACE_CONSUMER),
        attempts: attempts.clone(),
    };
    let (stop, run) = env.start(handler).await?;
    eventually(Duration::from_secs(10), || async { (attempts.load(Ordering::SeqCst) >= 3).then_some(()) })
        .await?;
    outage(true).await?;
    eventually(Duration::from_secs(15), || async {
        anyhow::Ok((env.count("orders").await? == 1).then_some(()))
    })
    .await?;
    stop.cancel();
    run.await?;
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}
