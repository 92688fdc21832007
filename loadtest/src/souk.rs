//! The real souk stack, in process: the same `souk_cli::node::Node` that `souk dev`
//! runs (topology applied, worker pools, outbox relay, ingress on 127.0.0.1:0), and the two souk
//! measurements: how fast the ingress accepts orders (e) and how fast they become rows
//! in `orders` (f).

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use souk_cli::node::{Node, NodeOptions};
use souk_ingress::{Claims, IntakeOptions, Keys, Role};
use souk_stores::{
    postgres::{self as pg, PgOptions},
    search::tantivy::{TantivyOptions, TantivyStore},
};
use souk_topologies::{
    Topology,
    apply::{self, Mode},
};
use sqlx::{PgPool, postgres::PgPoolOptions};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    diag::{Diagnostics, Snapshot},
    http,
    load::{self, Plan, Tally},
    payload::{self, Sample},
};

/// The stream and consumer the orders pool drains; empty means every accepted order
/// has been handled (committed, then acked).
const CMD_STREAM: &str = "CMD";
const ORDERS_CONSUMER: &str = "orders-place";

/// How often `select count(*) from orders` is sampled. Also the resolution of "when
/// the last order was persisted"; cheap next to the work being measured.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Settings of the stack that `souk dev` reads from its config.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub pg_connections: u32,
    pub write_timeout: Duration,
    /// Run the worker pools and the outbox relay (false: the ingress alone).
    pub workers: bool,
    /// The ingress's catalog admission bound (`catalog-max-backlog`; zero: none).
    pub catalog_max_backlog: Duration,
    /// The tantivy store's options (its search threads).
    pub search: TantivyOptions,
}

/// A running stack.
pub struct Stack {
    pub addr: SocketAddr,
    /// One token per benchmark buyer.
    pub tokens: Arc<Vec<String>>,
    nats: async_nats::Client,
    pool: PgPool,
    cancel: CancellationToken,
    node: Option<Node>,
    /// The embedded search index of this run (removed with the stack).
    pub search: TantivyStore,
    _search_dir: tempfile::TempDir,
    /// The payment sandboxes the payments pools call (stopped with the stack).
    _payment_sandboxes: Vec<souk_sandbox::payments::PaymentSandbox>,
}

impl Stack {
    /// Start it against `nats_url` and the (migrated) database at `db_url`.
    pub async fn start(
        nats_url: &str,
        db_url: &str,
        topology: &Topology,
        options: &StackOptions,
        keys: Keys,
        tokens: Arc<Vec<String>>,
    ) -> anyhow::Result<Stack> {
        let nats = connect(nats_url, "souk").await?;
        let report = apply::apply(&async_nats::jetstream::new(nats.clone()), topology, Mode::Apply).await?;
        // Created by this run, or by its earlier souk phase: never someone else's.
        anyhow::ensure!(
            report
                .changes
                .iter()
                .all(|c| matches!(c.action, apply::Action::Created | apply::Action::Unchanged)),
            "the topology was applied to a server that had another one:\n{report}"
        );
        let mut pg_options = PgOptions::new(db_url);
        pg_options.max_connections = options.pg_connections;
        let pool = pg::connect(&pg_options)?;

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let search_dir = tempfile::tempdir()?;
        // Opened here rather than through `souk_cli::node::open_search`, to keep the
        // tantivy handle: the catalog benchmark waits for its merges before (s).
        let dir = search_dir.path().join("search");
        let search_options = options.search.clone();
        let search = tokio::task::spawn_blocking(move || TantivyStore::open(dir, search_options)).await??;
        // The payments pools call two local payment SANDBOXES (no latency, no faults).
        let (payment_sandboxes, specs) =
            souk_cli::node::start_payment_sandboxes(None, Default::default(), Duration::from_secs(3)).await?;
        let payments = souk_cli::node::payment_gateway(
            &specs,
            souk_workers::payments::RetryOptions::default(),
            pool.clone(),
        )?;
        let node = Node::start(NodeOptions {
            payments: Some(payments),
            nats: nats.clone(),
            pool: pool.clone(),
            database_url: db_url.to_owned(),
            topology: topology.clone(),
            write_timeout: options.write_timeout,
            ingress: Some((listener, keys)),
            intake: IntakeOptions::default(),
            catalog_max_backlog: options.catalog_max_backlog,
            // No per-principal limit: the benchmark's few buyers send far more than one
            // person would, and the limiter — not souk — would set the measured figures.
            rate_limit: None,
            pools: options.workers.then(Vec::new),
            relay: options.workers,
            jobs: None,
            metrics: None,
            search: Some(Arc::new(search.clone())),
            search_timeout: souk_ingress::search::SEARCH_TIMEOUT,
            public_tenant: souk_ingress::DEFAULT_PUBLIC_TENANT.into(),
            status_history: Default::default(),
            dashboard: None,
        })
        .await?;
        let cancel = node.cancel_token();
        Ok(Stack {
            addr,
            tokens,
            nats,
            pool,
            cancel,
            node: Some(node),
            search,
            _search_dir: search_dir,
            _payment_sandboxes: payment_sandboxes,
        })
    }

    /// Put the products the sample orders on sale (see [`Sample::seed_catalog`]):
    /// before any order is sent.
    pub async fn seed_catalog(&self) -> anyhow::Result<()> {
        Sample::seed_catalog(&self.pool).await
    }

    /// Drain and stop, as `souk dev` does on SIGTERM (bounded: pools drain for at most
    /// their drain timeout).
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let Some(node) = self.node.take() else { return };
        if tokio::time::timeout(Duration::from_secs(30), node.wait()).await.is_err() {
            eprintln!("souk did not drain within 30s; stopping anyway");
        }
        self.nats.flush().await.ok();
        self.pool.close().await;
    }
}

impl Drop for Stack {
    /// A run that fails or is interrupted half-way still stops souk's tasks.
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Keys for the run's JWTs, from 32 random bytes that are never written anywhere.
pub fn keys() -> Keys {
    let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    Keys::from_secret(&[a.as_bytes().as_slice(), b.as_bytes().as_slice()].concat())
}

/// One buyer token per benchmark buyer, valid for `ttl` (longer than the run).
pub fn tokens(keys: &Keys, ttl: Duration) -> Vec<String> {
    (0..payload::BUYERS as u64)
        .map(|n| {
            let claims = Claims::new(&payload::buyer(n), payload::TENANT, vec![Role::Buyer], ttl);
            keys.mint(&claims)
        })
        .collect()
}

/// (e) and (f) of one run.
#[derive(Debug)]
pub struct SoukRun {
    pub ingress: Tally,
    pub persisted: Persisted,
    pub diagnostics: Diagnostics,
}

/// How accepted orders became rows.
#[derive(Debug, Clone, Serialize)]
pub struct Persisted {
    /// Rows added to `orders` by the measured load.
    pub orders: u64,
    /// Of those, how many were already there when the load stopped.
    pub during_load: u64,
    /// `orders` ÷ (last row persisted − first request accepted), per second.
    pub rate_per_s: f64,
    /// From the last answer of the load to the last row persisted.
    pub drain_s: f64,
    /// False if the backlog was still not empty after `--drain-timeout`.
    pub drained: bool,
    /// Rows in `orders` (since the measured load began) once a second.
    pub timeline: Vec<u64>,
}

/// Warm up, then load the ingress per `plan` while watching `orders` fill, then wait for
/// the backlog to drain.
pub async fn measure(
    stack: &Stack,
    db_url: &str,
    sample: &Sample,
    plan: Plan,
    drain_timeout: Duration,
    metrics: &PrometheusHandle,
) -> anyhow::Result<SoukRun> {
    let op = place_orders(stack, sample, &plan)?;
    // The observer has its own connection: it must not take one from souk's pool.
    let observer = PgPoolOptions::new().max_connections(1).connect(db_url).await?;
    let js = async_nats::jetstream::new(stack.nats.clone());

    // Warm up as a separate run, and let its backlog drain, so the measured load starts
    // from an empty queue with connections open and counts only its own orders.
    if !plan.warmup.is_zero() {
        let warmup = Plan { duration: plan.warmup, warmup: Duration::ZERO, max_ops: None, ..plan };
        load::run(warmup, op.clone()).await?;
        if !wait_drained(&js, drain_timeout).await? {
            eprintln!("warning: the warm-up backlog did not drain; (f) will count some of its orders");
        }
    }
    let before = Snapshot::take(metrics);
    let base = count(&observer).await?;

    let samples = Arc::new(Mutex::new(vec![(Instant::now(), base)]));
    let stop_polling = CancellationToken::new();
    let poller = tokio::spawn(poll(observer.clone(), samples.clone(), stop_polling.clone()));

    let measured = Plan { warmup: Duration::ZERO, ..plan };
    let ingress = load::run(measured, op).await;
    let load_end = Instant::now();
    let during_load = count(&observer).await.unwrap_or(base).saturating_sub(base);
    let drained = match &ingress {
        Ok(_) => wait_drained(&js, drain_timeout).await?,
        Err(_) => false,
    };
    stop_polling.cancel();
    poller.await.ok();
    let ingress = ingress?;
    let last = count(&observer).await?;
    observer.close().await;
    let after = Snapshot::take(metrics);

    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    // The row count reached its final value at the first sample showing it.
    let last_persisted = samples.iter().find(|(_, n)| *n >= last).map_or_else(Instant::now, |(t, _)| *t);
    let orders = last.saturating_sub(base);
    let first_accept = ingress.first_ok.unwrap_or(ingress.start);
    let busy = last_persisted.saturating_duration_since(first_accept).as_secs_f64();
    let persisted = Persisted {
        orders,
        during_load,
        rate_per_s: if busy > 0.0 { orders as f64 / busy } else { 0.0 },
        drain_s: last_persisted.saturating_duration_since(load_end).as_secs_f64(),
        drained,
        timeline: per_second(&samples, base),
    };
    Ok(SoukRun { ingress, persisted, diagnostics: Diagnostics::between(&before, &after) })
}

/// `POST /v1/orders` to `stack`, with as many client connections as `plan` has requests
/// in flight.
fn place_orders(stack: &Stack, sample: &Sample, plan: &Plan) -> anyhow::Result<load::Op> {
    let connections = match plan.mode {
        load::Mode::Closed { concurrency } => concurrency,
        load::Mode::Open { max_in_flight, .. } => max_in_flight,
    };
    Ok(http::place_order(
        http::client(connections)?,
        format!("http://{}/v1/orders", stack.addr),
        stack.tokens.clone(),
        sample.body.clone(),
    ))
}

/// (e₀) Load the ingress of a stack started without workers, after a warm-up; the
/// commands it accepts stay in CMD.
pub async fn measure_ingress_alone(stack: &Stack, sample: &Sample, plan: Plan) -> anyhow::Result<Tally> {
    let op = place_orders(stack, sample, &plan)?;
    load::run(plan, op).await
}

async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let connect =
        async_nats::ConnectOptions::new().name(name).connection_timeout(Duration::from_secs(3)).connect(url);
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .context("connecting to NATS timed out")?
        .with_context(|| format!("connecting to NATS at {url}"))
}

/// A NATS connection for the baselines (separate from souk's, as a client's would be).
pub async fn connect_bench(url: &str) -> anyhow::Result<async_nats::Client> {
    connect(url, "souk-loadtest").await
}

async fn count(pool: &PgPool) -> anyhow::Result<u64> {
    let n: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(pool).await?;
    Ok(u64::try_from(n)?)
}

async fn poll(pool: PgPool, samples: Arc<Mutex<Vec<(Instant, u64)>>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Ok(n) = count(&pool).await
            && let Ok(mut s) = samples.lock()
        {
            s.push((Instant::now(), n));
        }
    }
}

/// Wait until the orders consumer has nothing pending and nothing unacknowledged.
/// Returns false if that did not happen within `timeout`.
async fn wait_drained(js: &async_nats::jetstream::Context, timeout: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + timeout;
    let stream = js.get_stream(CMD_STREAM).await.context("reading stream CMD")?;
    loop {
        let info = stream.consumer_info(ORDERS_CONSUMER).await.context("reading consumer orders-place")?;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(POLL_EVERY / 2).await;
    }
}

/// Rows since `base` at each whole second after the first sample.
fn per_second(samples: &[(Instant, u64)], base: u64) -> Vec<u64> {
    let Some((t0, _)) = samples.first() else { return Vec::new() };
    let mut out = Vec::new();
    for (t, n) in samples {
        let second = t.saturating_duration_since(*t0).as_secs() as usize;
        if second >= out.len() {
            // A second without samples (a stalled poll) repeats the count before it.
            let previous = out.last().copied().unwrap_or(0);
            out.resize(second + 1, previous);
        }
        out[second] = n.saturating_sub(base);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One buyer sends five times its per-principal allowance (a 200 burst, then 100/s)
    /// as fast as the stack takes it: every order is accepted, so the benchmark measures
    /// souk, never the limiter.
    #[tokio::test]
    async fn souk_phases_are_not_limited_per_principal() -> anyhow::Result<()> {
        let (nats, db) = tokio::try_join!(souk_testkit::NatsServer::start(), souk_testkit::TestDb::create())?;
        pg::migrate(&db.pool).await?;
        let keys = keys();
        let one_buyer =
            Claims::new(&payload::buyer(0), payload::TENANT, vec![Role::Buyer], Duration::from_secs(600));
        let tokens = Arc::new(vec![keys.mint(&one_buyer)]);
        let options = StackOptions {
            pg_connections: 8,
            write_timeout: Duration::from_secs(5),
            workers: false,
            catalog_max_backlog: souk_cli::node::DEFAULT_CATALOG_MAX_BACKLOG,
            search: Default::default(),
        };
        let stack =
            Stack::start(&nats.url(), &db.url, &souk_testkit::test_topology()?, &options, keys, tokens)
                .await?;
        stack.seed_catalog().await?;
        let plan = Plan {
            mode: load::Mode::Closed { concurrency: 32 },
            warmup: Duration::ZERO,
            duration: Duration::from_secs(120),
            max_ops: Some(1000),
        };
        let tally = measure_ingress_alone(&stack, &payload::Sample::new()?, plan).await?;
        assert!(tally.errors.is_empty(), "errors: {:?}", tally.errors);
        assert_eq!(tally.ops, 1000);
        stack.stop().await;
        Ok(())
    }
}
