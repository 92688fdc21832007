//! A souk node: the long-running parts of one process, built from options and run
//! until cancelled — the HTTP ingress, worker pools, the outbox relay, housekeeping and
//! the pipeline gauges.
//! `souk dev`/`ingress`/`worker` start one; so do the end-to-end tests and the
//! benchmark, so all three run exactly the same wiring.

use futures::future::BoxFuture;
use metrics_exporter_prometheus::PrometheusHandle;
use souk_ingress::{
    ConnectionLimits, Ingress, IngressOptions, IntakeOptions, Keys, RateLimit, SearchOptions,
};
use souk_stores::{
    postgres::{self as pg, outbox::PgOutbox},
    search::{
        ApplyOutcome, IndexOp, Rebuild, SearchError, SearchRequest, SearchResults, SearchStore, StoreStats,
        StoredVersion,
        tantivy::{TantivyOptions, TantivyStore},
    },
};
use souk_topologies::{
    Topology,
    publisher::Publisher,
    relay::{Relay, RelayOptions},
    runtime::Runtime,
};
use sqlx::PgPool;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// How often old inbox, outbox and idempotency rows are purged, and how old they must be.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(600);
/// How often the saga sweeper looks for sagas past their deadline (on the same loop:
/// one scheduler for the worker process's periodic work). Deadlines are tens of seconds,
/// so a few seconds late is nothing.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// How often the search index's lag gauges are refreshed from JetStream.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// What to run and with what.
pub struct NodeOptions {
    pub nats: async_nats::Client,
    pub pool: PgPool,
    /// For the relay's lease and LISTEN connections.
    pub database_url: String,
    pub topology: Topology,
    /// Longest a write (publish, order intake) waits before giving up.
    pub write_timeout: Duration,
    /// Serve the HTTP ingress on this listener with these keys.
    pub ingress: Option<(tokio::net::TcpListener, Keys)>,
    pub intake: IntakeOptions,
    /// Refuse catalog writes while the catalog pool's backlog would take longer than
    /// this to drain at its recent rate (`catalog-max-backlog`; zero: never refuse).
    /// [`DEFAULT_CATALOG_MAX_BACKLOG`] unless configured.
    pub catalog_max_backlog: Duration,
    /// Writes and reads per principal at the ingress; `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    /// Worker pools to run: `Some(vec![])` runs every pool, `None` none.
    pub pools: Option<Vec<String>>,
    pub relay: bool,
    /// Run a job worker (`souk jobs`: catalog imports, reindex) with this tuning.
    pub jobs: Option<souk_jobs::Tuning>,
    /// Serve `/metrics` of this handle on this (internal) listener.
    pub metrics: Option<(tokio::net::TcpListener, PrometheusHandle)>,
    /// The search index (see [`open_search`]): written by the `catalog-index` pool,
    /// read by `/v1/search`. Needed when either runs.
    pub search: Option<Arc<dyn SearchStore>>,
    /// Longest a search may take before a 503 ([`souk_ingress::search::SEARCH_TIMEOUT`]
    /// in production; test stacks wait longer).
    pub search_timeout: Duration,
    /// The tenant anonymous product reads read (`souk_ingress::DEFAULT_PUBLIC_TENANT`).
    pub public_tenant: String,
    /// The payment providers (see [`payment_gateway`]): needed when a payments pool runs.
    pub payments: Option<Arc<souk_workers::payments::Gateway>>,
    /// The pipeline status history's resolution and span (also how often the
    /// pipeline gauges are refreshed: once per resolution).
    pub status_history: souk_topologies::status::HistoryOptions,
    /// Serve the operators' dashboard under `/ops/` on the ingress's listener (with
    /// the ingress's keys), refreshing its live view this often.
    pub dashboard: Option<Duration>,
}

/// A running node.
#[derive(Debug)]
pub struct Node {
    cancel: CancellationToken,
    tasks: TaskTracker,
    /// Where the ingress listens, if it runs.
    pub http_addr: Option<SocketAddr>,
}

impl Node {
    /// Start every part `options` asks for.
    pub async fn start(options: NodeOptions) -> souk_topologies::Result<Node> {
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let publisher = Publisher::new(options.nats.clone(), options.write_timeout);
        if let Some(only) = &options.pools {
            let dependencies = souk_workers::Dependencies {
                search: options.search.clone(),
                payments: options.payments.clone(),
            };
            let registry = souk_workers::registry_with(options.pool.clone(), &dependencies);
            // Failed attempts and each dead letter's place are recorded, so `souk trace`
            // shows every attempt and reads each dead letter by sequence.
            let failures = Arc::new(souk_stores::postgres::follow::PgJournal(options.pool.clone()));
            let runtime =
                Runtime::build(&publisher, &options.topology, &registry, only).await?.failure_log(failures);
            tasks.spawn(runtime.run(cancel.clone()));
            tasks.spawn(housekeeping(
                options.pool.clone(),
                publisher.jetstream().clone(),
                options.topology.clone(),
                cancel.clone(),
            ));
            // Stock holds past their time go back to stock wherever the inventory pool
            // runs (sweepers in several processes never expire one hold twice).
            if runs_handler(&options.topology, Some(only), souk_workers::inventory::HANDLER) {
                let expiry = souk_workers::inventory::ExpiryOptions::default();
                tasks.spawn(souk_workers::inventory::expiry::run(
                    options.pool.clone(),
                    expiry,
                    cancel.clone(),
                ));
            }
        }
        if let Some(tuning) = options.jobs {
            let jobs = souk_jobs::WorkerOptions {
                pool: options.pool.clone(),
                publisher: publisher.clone(),
                search: options.search.clone(),
                tuning,
            };
            tasks.spawn(souk_jobs::run(jobs, cancel.clone()));
        }
        if options.relay {
            let outbox = PgOutbox::new(options.pool.clone(), &options.database_url);
            tasks.spawn(Relay::new(outbox, publisher.clone(), RelayOptions::default()).run(cancel.clone()));
        }
        // Every process keeps the pipeline gauges and takes part in keeping the status
        // history (each slot is stored once, whoever stores it).
        let outbox_stats: Arc<dyn souk_pipelines::outbox::OutboxStats> =
            Arc::new(PgOutbox::new(options.pool.clone(), &options.database_url));
        tasks.spawn(souk_topologies::status::keep(
            publisher.jetstream().clone(),
            options.topology.clone(),
            Some(outbox_stats),
            options.status_history,
            cancel.clone(),
        ));
        tasks.spawn(souk_workers::catalog::lag::export_gauges(
            publisher.jetstream().clone(),
            options.topology.clone(),
            STATUS_EVERY,
            cancel.clone(),
        ));
        let mut http_addr = None;
        if let Some((listener, keys)) = options.ingress {
            http_addr = listener.local_addr().ok();
            let actions = tokio_util::task::TaskTracker::new();
            let dashboard = options.dashboard.map(|refresh| {
                souk_dashboard::router(souk_dashboard::DashboardOptions {
                    nats: options.nats.clone(),
                    pool: options.pool.clone(),
                    database_url: options.database_url.clone(),
                    topology: options.topology.clone(),
                    keys: keys.clone(),
                    write_timeout: options.write_timeout,
                    refresh,
                    cancel: cancel.clone(),
                    actions: actions.clone(),
                })
            });
            let mut ingress = Ingress::build(IngressOptions {
                keys,
                pool: options.pool.clone(),
                nats: options.nats.clone(),
                write_timeout: options.write_timeout,
                intake: with_catalog_backlog(
                    options.intake.clone(),
                    &options.topology,
                    options.catalog_max_backlog,
                ),
                rate_limit: options.rate_limit,
                connections: ConnectionLimits::default(),
                search: options
                    .search
                    .clone()
                    .map(|store| SearchOptions { store, timeout: options.search_timeout }),
                public_tenant: options.public_tenant.clone(),
            });
            if let Some(routes) = dashboard {
                ingress = ingress.with_routes(routes);
            }
            let stop = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = ingress.serve(listener, stop).await {
                    tracing::error!(error = %e, "ingress stopped");
                }
                // Operators' actions outlive the requests that started them.
                souk_dashboard::finish_actions(&actions, souk_dashboard::ACTIONS_DRAIN).await;
            });
        }
        if let Some((listener, handle)) = options.metrics {
            let stop = cancel.clone();
            tasks.spawn(async move {
                if let Err(e) = souk_ingress::serve_internal(listener, handle, stop).await {
                    tracing::error!(error = %e, "metrics listener stopped");
                }
            });
        }
        tasks.close();
        Ok(Node { cancel, tasks, http_addr })
    }

    /// A token that stops this node when cancelled.
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stop: the ingress finishes in-flight requests, pools drain in-flight handlers,
    /// the relay finishes its round. Returns when everything has stopped.
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tasks.wait().await;
    }

    /// Wait until the node stops (after its cancel token fires).
    pub async fn wait(&self) {
        self.tasks.wait().await;
    }
}

/// Where the search index lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SearchBackend {
    /// An embedded tantivy index in `dir`, queries run on `threads` threads (`None`: as
    /// many as the cores).
    Tantivy { dir: std::path::PathBuf, threads: Option<usize> },
    /// An OpenSearch cluster at this URL.
    OpenSearch(String),
}

/// Whether a process running `pools` of `topology` runs a payments pool (and so needs
/// payment providers).
pub fn runs_payments(topology: &Topology, pools: Option<&[String]>) -> bool {
    use souk_workers::payments::{AUTHORIZE_HANDLER, SETTLE_HANDLER};
    let Some(only) = pools else { return false };
    topology.pools.iter().any(|p| {
        (p.handler == AUTHORIZE_HANDLER || p.handler == SETTLE_HANDLER)
            && (only.is_empty() || only.contains(&p.name))
    })
}

/// The payments pools' gateway over `specs` (primary first).
pub fn payment_gateway(
    specs: &[souk_workers::payments::ProviderSpec],
    retry: souk_workers::payments::RetryOptions,
    pool: PgPool,
) -> anyhow::Result<Arc<souk_workers::payments::Gateway>> {
    Ok(Arc::new(souk_workers::payments::gateway(specs, retry, pool)?))
}

/// Two payment SANDBOXES on free local ports — `primary` (alpha dialect) and `secondary`
/// (beta) — with `api_key`, and the provider specs to call them: what `souk dev`, the
/// test stack and the benchmark use when no real provider is configured.
pub async fn start_payment_sandboxes(
    api_key: Option<String>,
    faults: souk_sandbox::payments::Faults,
    call_timeout: Duration,
) -> anyhow::Result<(Vec<souk_sandbox::payments::PaymentSandbox>, Vec<souk_workers::payments::ProviderSpec>)>
{
    use souk_sandbox::payments::{PaymentSandbox, SandboxOptions};
    use souk_workers::payments::{Dialect, HttpOptions, ProviderSpec};
    let mut sandboxes = Vec::new();
    let mut specs = Vec::new();
    for (name, dialect) in [("primary", Dialect::Alpha), ("secondary", Dialect::Beta)] {
        let sandbox = PaymentSandbox::start(SandboxOptions {
            api_key: api_key.clone(),
            faults: faults.clone(),
            ..SandboxOptions::local(name)
        })
        .await?;
        specs.push(ProviderSpec {
            name: name.into(),
            dialect,
            http: HttpOptions { base_url: sandbox.url(), api_key: api_key.clone(), timeout: call_timeout },
        });
        sandboxes.push(sandbox);
    }
    Ok((sandboxes, specs))
}

/// The prefix of souk's OpenSearch alias and indexes (`souk-products`).
pub const OPENSEARCH_PREFIX: &str = "souk";

/// Whether a process running `pools` (`Some(vec![])`: all; `None`: none) of `topology`
/// runs a `catalog.index` pool, i.e. writes the search index.
pub fn runs_indexer(topology: &Topology, pools: Option<&[String]>) -> bool {
    runs_handler(topology, pools, souk_workers::catalog::INDEX_HANDLER)
}

/// Whether a process running `pools` (as for [`runs_indexer`]) runs a pool of `handler`.
pub fn runs_handler(topology: &Topology, pools: Option<&[String]>, handler: &str) -> bool {
    let Some(only) = pools else { return false };
    topology.pools.iter().any(|p| p.handler == handler && (only.is_empty() || only.contains(&p.name)))
}

/// Open the search index.
///
/// tantivy: ONE process opens an index directory — the one running the
/// `catalog-index` pool, which writes it and also serves `/v1/search` from it
/// (tantivy allows one writer per index, a rebuild swaps the live index inside that
/// process, and search cursors pin snapshots in its memory). A lock file in the
/// directory enforces it: a second process fails here, naming the directory and the
/// holder. OpenSearch has no such limit: every process that needs it connects.
pub async fn open_search(backend: &SearchBackend) -> anyhow::Result<Arc<dyn SearchStore>> {
    use anyhow::Context;
    match backend {
        SearchBackend::Tantivy { dir, threads } => {
            let dir = dir.clone();
            let options = TantivyOptions::default().with_search_threads(*threads);
            let store = tokio::task::spawn_blocking(move || -> anyhow::Result<LockedTantivy> {
                std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
                let lock = lock_index_dir(&dir)?;
                let store = TantivyStore::open(&dir, options)
                    .with_context(|| format!("opening the search index {}", dir.display()))?;
                Ok(LockedTantivy { store, _lock: lock })
            })
            .await??;
            Ok(Arc::new(store))
        }
        SearchBackend::OpenSearch(url) => {
            use souk_stores::search::opensearch::{OpenSearchOptions, OpenSearchStore};
            let store = OpenSearchStore::connect(OpenSearchOptions::new(url, OPENSEARCH_PREFIX))
                .await
                .context("connecting to OpenSearch (search.opensearch-url)")?;
            Ok(Arc::new(store))
        }
    }
}

/// Lock `<dir>/souk.lock` for this process, or say who holds it.
fn lock_index_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    crate::pid_lock::lock(&dir.join("souk.lock"))?.map_err(|holder| {
        anyhow::anyhow!(
            "the search index {} is open in another process (pid {holder}): one process per index runs the \
             catalog-index pool and serves search from it; give this one another search.dir, or use OpenSearch",
            dir.display(),
        )
    })
}

/// A tantivy store and the lock that makes this process its only user (released when
/// the store is dropped, or by the OS when the process dies).
struct LockedTantivy {
    store: TantivyStore,
    _lock: std::fs::File,
}

impl SearchStore for LockedTantivy {
    fn backend(&self) -> &'static str {
        "tantivy"
    }

    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        self.store.apply(ops)
    }

    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        self.store.search(request)
    }

    fn version<'a>(
        &'a self,
        tenant: &'a str,
        sku: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        self.store.version(tenant, sku)
    }

    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        self.store.begin_rebuild()
    }

    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        self.store.stats()
    }
}

/// Records of dead letters the DLQ stream no longer holds by its own doing (limits, age,
/// a purge of the whole stream, re-creation) go: the stream's first sequence and
/// creation time say which (see `pg::follow::forget_dropped_dead_letters`). DLQ keeps
/// dead letters until purged and has no max-age in the shipped topology, so reading its
/// config would miss every other way it drops them.
async fn forget_dropped_dead_letters(pool: &PgPool, js: &async_nats::jetstream::Context) {
    let stream = souk_topologies::dead_letters::STREAM;
    let info = match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| (i.state.first_sequence, i.created)).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let (first_seq, created) = match info {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "housekeeping: reading stream {stream}");
            return;
        }
    };
    let created = chrono::DateTime::from_timestamp_nanos(
        i64::try_from(created.unix_timestamp_nanos()).unwrap_or(i64::MAX),
    );
    match pg::follow::forget_dropped_dead_letters(pool, stream, first_seq, created).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(records = n, "housekeeping: records of dead letters {stream} dropped"),
        Err(e) => tracing::warn!(error = %e, "housekeeping: dead-letter records"),
    }
}

/// The worker process's periodic work: the saga sweeper every [`SWEEP_EVERY`],
/// housekeeping every [`HOUSEKEEPING_EVERY`]. Every worker process runs it; both are
/// safe to run in several at once (the sweeper skips sagas another holds, housekeeping
/// deletes idempotently).
async fn housekeeping(
    pool: PgPool,
    js: async_nats::jetstream::Context,
    topology: Topology,
    stop: CancellationToken,
) {
    let mut last_housekeeping: Option<tokio::time::Instant> = None;
    loop {
        if last_housekeeping.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
            last_housekeeping = Some(tokio::time::Instant::now());
            forget_dropped_dead_letters(&pool, &js).await;
            match pg::housekeeping(&pool, RETENTION).await {
                Ok(done) => {
                    if done.lost > 0 {
                        // Accepted orders whose commands were never handled: worth a look.
                        tracing::error!(orders = done.lost, "housekeeping: orders lost, marked failed");
                        metrics::counter!("souk_housekeeping_lost_orders_total").increment(done.lost);
                    }
                    if done.deleted > 0 {
                        tracing::info!(deleted = done.deleted, "housekeeping");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "housekeeping failed"),
            }
        }
        match sweep_sagas(&pool, &js, &topology, chrono::Utc::now()).await {
            Ok(s) if s.resent + s.compensated > 0 => {
                tracing::warn!(
                    resent = s.resent,
                    compensated = s.compensated,
                    "saga sweeper: sagas past their deadline"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "saga sweep failed"),
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// One sweep of the sagas past their deadline (see `saga::sweep`), told which pools
/// handle nothing now — every live process running one has it paused or its breaker
/// open, by their heartbeats — so a saga waiting on one is postponed instead of re-sent
/// and given up. When the heartbeats cannot be read the sweep goes on without them.
pub async fn sweep_sagas(
    pool: &PgPool,
    js: &async_nats::jetstream::Context,
    topology: &Topology,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<souk_workers::orders::saga::Swept, souk_stores::postgres::Error> {
    use souk_workers::orders::saga;
    let stalled = match souk_topologies::status::read_pools(&js.client()).await {
        Ok(live) => stalled_pools(topology, &live),
        Err(e) => {
            tracing::warn!(error = %e, "saga sweeper: pool status unreadable; sweeping without it");
            saga::Stalled::default()
        }
    };
    saga::sweep(pool, now, saga::sweeper::SWEEP_BATCH, &stalled).await
}

/// The pools of `topology` that live processes run but none is handling messages of
/// now: each paused or holding its deliveries behind an open breaker (`live`: every
/// live process's pools). A pool no live process runs is not counted: "no heartbeat"
/// is also what a clock skewed against the NATS server's, or a heartbeat bucket that
/// cannot be read, looks like, and a saga must not wait for ever on a misreading
/// (review, eleventh session) — such sagas are swept as before.
fn stalled_pools(
    topology: &Topology,
    live: &[souk_topologies::status::PoolStatus],
) -> souk_workers::orders::saga::Stalled {
    use souk_topologies::runtime::BreakerState;
    let mut stalled = souk_workers::orders::saga::Stalled::default();
    for pool in &topology.pools {
        let mut running = live.iter().filter(|p| p.name == pool.name).peekable();
        if running.peek().is_none() {
            continue;
        }
        let handling =
            running.any(|p| p.breaker != BreakerState::Open && !p.controls.is_some_and(|c| c.paused));
        if handling {
            continue;
        }
        if pool.handler == souk_workers::orders::saga::HANDLER {
            stalled.replies = true;
        }
        if let Some(consumer) = topology.consumer(&pool.consumer) {
            stalled.commands.extend(consumer.filter_subjects.iter().cloned());
        }
    }
    stalled
}

/// The JetStream key-value bucket holding the deployment's id.
pub const DEPLOYMENT_BUCKET: &str = "souk-deployment";

/// This deployment's id: generated once and kept in its JetStream (key `id` of
/// [`DEPLOYMENT_BUCKET`], created with `replicas` replicas if missing), so every process
/// of one deployment reads the same id, for as long as its JetStream lives — through
/// restarts and re-created streams. A database is claimed with it
/// (`souk_stores::postgres::deployment`), so one database serves one deployment.
pub async fn deployment_id(
    js: &async_nats::jetstream::Context,
    replicas: usize,
) -> souk_topologies::Result<String> {
    use async_nats::jetstream::kv;
    let failed = |e: &dyn std::fmt::Display| souk_topologies::Error::Nats(format!("deployment id: {e}"));
    let bucket = match js.get_key_value(DEPLOYMENT_BUCKET).await {
        Ok(bucket) => bucket,
        // Identical configs make concurrent creates agree (JetStream's create is idempotent).
        Err(_) => js
            .create_key_value(kv::Config {
                bucket: DEPLOYMENT_BUCKET.into(),
                description: "souk: this deployment's id, which its database is claimed with".into(),
                history: 1,
                num_replicas: replicas.max(1),
                storage: async_nats::jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| failed(&e))?,
    };
    let fresh = uuid::Uuid::new_v4().to_string();
    match bucket.create("id", fresh.clone().into()).await {
        Ok(_) => Ok(fresh),
        Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
            let id = bucket.get("id").await.map_err(|e| failed(&e))?.ok_or_else(|| failed(&"missing"))?;
            String::from_utf8(id.to_vec()).map_err(|e| failed(&e))
        }
        Err(e) => Err(failed(&e)),
    }
}

/// The built-in marketplace topology (`topologies/marketplace.toml`).
pub fn builtin_topology() -> souk_topologies::Result<Topology> {
    Topology::parse(include_str!("../../topologies/marketplace.toml"))
}

/// The ingress's default per-principal write limit: 100/s sustained, bursts of 200 —
/// far above what a person or a well-behaved client sends, low enough that one
/// runaway client cannot take the ingress from everyone else.
pub const DEFAULT_RATE_PER_SECOND: u32 = 100;
pub const DEFAULT_RATE_BURST: u32 = 200;

/// The default per-principal read limit, a budget of its own: a client polling its
/// orders' status does not use up its writes, and cannot flood Postgres with reads.
pub const DEFAULT_READ_RATE_PER_SECOND: u32 = 200;
pub const DEFAULT_READ_RATE_BURST: u32 = 400;

/// The default write and read limits as a [`RateLimit`].
pub fn default_rate_limit() -> RateLimit {
    let n = |v| std::num::NonZeroU32::new(v).unwrap_or(std::num::NonZeroU32::MIN);
    RateLimit {
        per_second: n(DEFAULT_RATE_PER_SECOND),
        burst: n(DEFAULT_RATE_BURST),
        reads_per_second: n(DEFAULT_READ_RATE_PER_SECOND),
        reads_burst: n(DEFAULT_READ_RATE_BURST),
    }
}

/// How long a backlog of catalog writes may take to drain (at the catalog pool's
/// recent rate) before the ingress refuses new ones (503): a write's 202 → searchable
/// time is that wait plus the pool's batch, the relay and the indexer's batch and commit
/// (~0.3–0.5 s under saturation on 2 cores), so half a second of backlog keeps it near
/// a second instead of growing with the backlog (22 s in the benchmark without a bound).
/// See ARCHITECTURE.md, "Catalog writes", and docs/performance.md.
pub const DEFAULT_CATALOG_MAX_BACKLOG: Duration = Duration::from_millis(500);

/// `intake` with the catalog backlog bound set from the topology's catalog write pool
/// (unless set already, `max_drain` is zero, or the topology has none).
fn with_catalog_backlog(
    mut intake: IntakeOptions,
    topology: &Topology,
    max_drain: Duration,
) -> IntakeOptions {
    if intake.catalog_backlog.is_none() && !max_drain.is_zero() {
        let pool = topology.pools.iter().find(|p| p.handler == "catalog.write");
        let consumer = pool.and_then(|p| topology.consumers.iter().find(|c| c.name == p.consumer));
        intake.catalog_backlog = consumer.map(|c| souk_ingress::BacklogLimit {
            stream: c.stream.clone(),
            consumer: c.name.clone(),
            max_drain,
        });
    }
    intake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_process_running_the_indexer_pool_is_the_one_that_opens_the_index()
    -> Result<(), Box<dyn std::error::Error>> {
        let t = builtin_topology()?;
        let pools = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert!(runs_indexer(&t, Some(&[])), "every pool (souk dev, souk worker)");
        assert!(runs_indexer(&t, Some(&pools(&["catalog-index"]))), "souk ingress --pool catalog-index");
        assert!(!runs_indexer(&t, Some(&pools(&["orders", "catalog"]))));
        assert!(!runs_indexer(&t, None), "souk ingress");
        Ok(())
    }

    /// A pool is stalled when every live process running it has it paused or its breaker
    /// open; a pool with no heartbeat at all is not (second review, eleventh session: no
    /// heartbeat is also a skewed clock or an unreadable bucket, and every saga then
    /// waited for ever).
    #[test]
    fn a_pool_stalls_its_sagas_only_when_every_live_process_holds_it()
    -> Result<(), Box<dyn std::error::Error>> {
        use souk_topologies::{
            runtime::{Activity, BreakerState},
            status::{PoolStatus, heartbeat::PoolControls},
        };
        let t = builtin_topology()?;
        let beat = |name: &str, paused: bool, breaker: BreakerState| PoolStatus {
            name: name.into(),
            consumer: name.into(),
            breaker,
            last_error: None,
            in_flight: 0,
            waiting: 0,
            controls: Some(PoolControls { paused, activity: Activity::Running, concurrency: 1 }),
        };
        let reserving = souk_workers::orders::saga::State::Reserving;
        assert_eq!(stalled_pools(&t, &[]), souk_workers::orders::saga::Stalled::default(), "no heartbeats");
        let paused = stalled_pools(&t, &[beat("inventory", true, BreakerState::Closed)]);
        assert!(paused.holds(reserving) && !paused.replies);
        let open = stalled_pools(&t, &[beat("orders-saga", false, BreakerState::Open)]);
        assert!(open.replies);
        let one_of_two =
            [beat("inventory", true, BreakerState::Closed), beat("inventory", false, BreakerState::Closed)];
        assert!(!stalled_pools(&t, &one_of_two).holds(reserving), "another process handles it");
        Ok(())
    }
}
