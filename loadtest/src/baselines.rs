//! The baselines: what this machine's JetStream, Postgres and HTTP stack do with nothing
//! of souk in between. Each is the ceiling (or floor) one souk figure is divided by.

use anyhow::Context;
use async_nats::{HeaderMap, jetstream};
use axum::{Router, http::StatusCode, routing::post};
use futures::FutureExt;
use souk_pipelines::headers;
use souk_topologies::{
    Topology,
    apply::stream_config,
    publisher::{OutgoingMessage, Publisher},
};
use sqlx::postgres::PgPoolOptions;
use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use crate::{
    http,
    load::{self, OP_TIMEOUT, Op, Plan, Tally},
    payload::{self, Sample},
};

/// The benchmark stream and its subject (outside `souk.>`, so souk never sees it).
pub(crate) const STREAM: &str = "BENCH";
const SUBJECT: &str = "bench.orders.place";

/// A stream configured exactly like souk's `CMD` (file storage, retention, discard,
/// duplicate window, `allow_atomic`), under another name, so the raw publishes pay
/// what the ingress's publishes pay.
pub async fn create_stream(client: &async_nats::Client, topology: &Topology) -> anyhow::Result<()> {
    let cmd = topology
        .streams
        .iter()
        .find(|s| s.name == "CMD")
        .context("the topology has no CMD stream to copy")?;
    let mut config = stream_config(cmd);
    config.name = STREAM.into();
    config.subjects = vec![SUBJECT.into()];
    jetstream::new(client.clone()).create_stream(config).await.context("creating the BENCH stream")?;
    Ok(())
}

/// Remove the benchmark stream (and its disk space) before souk runs.
pub async fn delete_stream(client: &async_nats::Client) -> anyhow::Result<()> {
    jetstream::new(client.clone()).delete_stream(STREAM).await.context("deleting the BENCH stream")?;
    Ok(())
}

/// (a) One message per publish, each waiting for its PubAck, from `plan`'s concurrency.
pub async fn raw_single(client: &async_nats::Client, sample: &Sample, plan: Plan) -> anyhow::Result<Tally> {
    let js = jetstream::ContextBuilder::new().timeout(OP_TIMEOUT).build(client.clone());
    let (payload, ids) = (sample.command.clone(), MessageIds::new());
    let op: Op = Arc::new(move || {
        let (js, payload, id) = (js.clone(), payload.clone(), ids.next());
        async move {
            let ack = js
                .publish_with_headers(SUBJECT, command_headers(&id), payload)
                .await
                .map_err(|e| format!("publish {:?}", e.kind()))?;
            ack.await.map_err(|e| format!("ack {:?}", e.kind()))?;
            Ok(1)
        }
        .boxed()
    });
    load::run(plan, op).await
}

/// (b) Atomic batches of `batch` messages through souk's own [`Publisher::publish_atomic`]
/// (one PubAck, one fsync per batch), `plan`'s concurrency counting batches in flight.
pub async fn raw_atomic(
    client: &async_nats::Client,
    sample: &Sample,
    plan: Plan,
    batch: usize,
) -> anyhow::Result<Tally> {
    let publisher = Publisher::new(client.clone(), OP_TIMEOUT);
    let (payload, ids) = (sample.command.clone(), MessageIds::new());
    let op: Op = Arc::new(move || {
        let messages: Vec<_> = (0..batch)
            .map(|_| {
                let msg_id = ids.next();
                OutgoingMessage {
                    subject: SUBJECT.into(),
                    headers: command_headers(&msg_id),
                    msg_id,
                    payload: payload.clone(),
                }
            })
            .collect();
        let publisher = publisher.clone();
        async move {
            publisher.publish_atomic(&messages).await.map_err(|e| match e {
                souk_topologies::Error::JetStream { code, .. } => format!("jetstream {code}"),
                souk_topologies::Error::AckTimeout(_) => "timeout".into(),
                _ => "nats".into(),
            })?;
            Ok(messages.len() as u64)
        }
        .boxed()
    });
    load::run(plan, op).await
}

/// (c) One `orders`-shaped row per autocommit INSERT (one WAL flush each, shared only by
/// Postgres's own group commit), from `connections` tasks over `connections` connections.
pub async fn raw_postgres(db_url: &str, sample: &Sample, plan: Plan) -> anyhow::Result<Tally> {
    let load::Mode::Closed { concurrency } = plan.mode else {
        anyhow::bail!("the Postgres baseline is closed-loop only");
    };
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(concurrency)?)
        .acquire_timeout(OP_TIMEOUT)
        .connect(db_url)
        .await?;
    // Same columns, defaults, checks and indexes as `orders`: the same row width and
    // the same index maintenance per insert.
    sqlx::query("create table bench_orders (like orders including all)").execute(&pool).await?;
    let sample = sample.clone();
    let lines = serde_json::to_value(&sample.priced.lines)?;
    let counter = Arc::new(AtomicU64::new(0));
    let insert_pool = pool.clone();
    let op: Op = Arc::new(move || {
        let cmd =
            sample.command(uuid::Uuid::now_v7(), &payload::buyer(counter.fetch_add(1, Ordering::Relaxed)));
        let (pool, lines) = (insert_pool.clone(), lines.clone());
        async move {
            sqlx::query(
                "insert into bench_orders (order_id, tenant, buyer_id, status, currency, total_minor, lines, placed_at)
                 values ($1, $2, $3, 'accepted', $4, $5, $6, $7)
                 on conflict (order_id) do nothing",
            )
            .bind(cmd.order_id)
            .bind(&cmd.tenant)
            .bind(&cmd.buyer_id)
            .bind(cmd.currency.code())
            .bind(cmd.total_minor)
            .bind(lines)
            .bind(cmd.placed_at)
            .execute(&pool)
            .await
            .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
                Some(code) => format!("sqlstate {code}"),
                None => "postgres".into(),
            })?;
            Ok(1)
        }
        .boxed()
    });
    let tally = load::run(plan, op).await;
    sqlx::query("drop table if exists bench_orders").execute(&pool).await.ok();
    pool.close().await;
    tally
}

/// (d) An axum server whose `POST /v1/orders` answers 202 at once, hit by the same
/// client, headers and body as the souk ingress: the cost of HTTP itself on this
/// machine (and of the load generator, which shares its CPUs).
pub async fn noop_http(
    sample: &Sample,
    plan: Plan,
    connections: usize,
    tokens: Arc<Vec<String>>,
) -> anyhow::Result<Tally> {
    let app = Router::new().route(
        "/v1/orders",
        // A body the size of souk's answer, so the client does the same reading.
        post(|| async {
            (
                StatusCode::ACCEPTED,
                [("content-type", "application/json")],
                r#"{"order_id":"00000000-0000-0000-0000-000000000000","status":"accepted","status_url":"/v1/orders/00000000-0000-0000-0000-000000000000"}"#,
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let shutdown = stop.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await
    });
    // The no-op server ignores the tokens; they are sent so the requests are byte for
    // byte the ones souk gets.
    let op = http::place_order(
        http::client(connections)?,
        format!("http://{addr}/v1/orders"),
        tokens,
        sample.body.clone(),
    );
    let tally = load::run(plan, op).await;
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    tally
}

/// Headers of a command as the ingress sets them, plus `Nats-Msg-Id`.
fn command_headers(msg_id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(headers::MSG_ID, msg_id);
    h.insert(headers::SCHEMA, Sample::schema().as_str());
    h.insert(headers::TENANT, payload::TENANT);
    h.insert(headers::CAUSATION_ID, msg_id);
    h
}

/// Unique message ids, so every publish is a new message to the dedupe window (as
/// every order is), never a duplicate.
#[derive(Clone)]
struct MessageIds {
    run: String,
    next: Arc<AtomicU64>,
}

impl MessageIds {
    fn new() -> Self {
        MessageIds { run: uuid::Uuid::new_v4().simple().to_string(), next: Arc::default() }
    }

    fn next(&self) -> String {
        format!("bench:{}:{}", self.run, self.next.fetch_add(1, Ordering::Relaxed))
    }
}
