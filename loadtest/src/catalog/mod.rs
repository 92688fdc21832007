//! # The catalog benchmark (`souk-loadtest catalog --products N`)
//!
//! One run, one machine, the same generated products everywhere:
//!
//! | | measurement | baseline it is judged against |
//! |---|---|---|
//! | r | raw tantivy indexing: the documents straight into souk's tantivy store in this process, `--raw-batch` per commit | — |
//! | q | the mixed query set on that index in this process, `--clients` tasks | — |
//! | w, p | every product `PUT` through the API (`--writers` in flight) until all are searchable: command → JetStream → catalog pool → Postgres → outbox → EVT → indexer → tantivy | p ÷ r ≥ 0.5 |
//! | fresh | beside (w): one product rewritten again and again, time from its 202 to a search finding the new title | p99 ≤ 1 s |
//! | s | the same query set through `GET /v1/search`, `--clients` HTTP clients | p99 ≤ 20 ms and ≤ 3 × q's p99 |
//! | j1, j2 | the floor's JetStream: raw publishes to a copy of `CMD` (single, then atomic batches, `--writers` in flight), each followed by a pull consumer taking and acking them all | — |
//! | c | the floor's Postgres: raw single-row commits, `--pg-connections` connections | — |
//!
//! with the CPU per document, product and query from `/proc` (the whole machine's busy
//! time over the phase ÷ its items). The raw phases run first, before the servers
//! start, so each baseline has the machine to itself; (j) and (c) run on souk's servers
//! before souk starts, for `--floor-duration` each (`--no-floor` skips them). Over (w)+(p)
//! the servers' own counters give the JetStream messages (`CMD` and `EVT`) and the
//! Postgres transactions (`xact_commit`) per product, and the report does the arithmetic
//! (see [`crate::floor`]): messages × (j)'s CPU per message + transactions × (c)'s CPU per
//! commit = the floor, beside (p)'s CPU per product and ÷ (r)'s CPU per document. The
//! run reports; it never fails on a target. Figures compare only within one run
//! (DESIGN.md §5).

mod pipeline;
mod products;
mod queries;
mod raw;
mod report;

pub use report::CatalogReport;

use anyhow::Context;
use souk_stores::{postgres as pg, search::tantivy::TantivyOptions};
use souk_topologies::Topology;
use sqlx::postgres::PgPoolOptions;
use std::{collections::BTreeSet, sync::Arc, time::Duration};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::{
    Args,
    cpu::Window,
    env::{self, Database, Nats},
    floor::{self, Work},
    load::{Mode, Plan},
    payload::TENANT,
    souk::{self, Stack, StackOptions},
};
use pipeline::Tokens;
use products::Listing;
use queries::Query;
use report::{Searching, Throughput};

/// `souk-loadtest catalog`: products through the pipeline, freshness, and search.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogArgs {
    /// Generated products written (and indexed raw).
    #[arg(long, default_value_t = 200_000)]
    pub products: usize,
    /// Sellers the products are spread over (a few list far more than most).
    #[arg(long, default_value_t = 50)]
    pub sellers: usize,
    /// Generator seed: the same seed makes the same products and queries.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Product writes in flight through the API.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Concurrent search clients (HTTP and in-process alike).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Measured time of each search phase.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    pub search_duration: Duration,
    /// Distinct queries in the mixed set.
    #[arg(long, default_value_t = 200)]
    pub queries: usize,
    /// After each search phase, each kind of query alone for this long (CPU per query
    /// per kind); 0 skips it.
    #[arg(long, default_value = "2s", value_parser = crate::parse_duration)]
    pub kind_duration: Duration,
    /// Only these kinds of query (text, typo, prefix, category, attribute, seller,
    /// price, facets), e.g. to profile one [default: all].
    #[arg(long, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// Only the in-process phases, (r) and (q): no servers (for profiling the store).
    #[arg(long)]
    pub raw_only: bool,
    /// Documents per commit when indexing raw.
    #[arg(long, default_value_t = 5_000)]
    pub raw_batch: usize,
    /// The ingress's catalog admission bound (souk's `catalog-max-backlog`): writes are
    /// refused while the catalog pool's backlog would take longer than this to drain;
    /// `0s` turns it off.
    #[arg(long, default_value = "500ms", value_parser = crate::parse_duration)]
    pub catalog_max_backlog: Duration,
    /// Threads the tantivy store runs queries on, in (q) and (s) alike (the store's
    /// `search_threads`); more than `--clients` runs every query at once, as the store
    /// did before it queued them [default: the store's, the cores].
    #[arg(long)]
    pub search_threads: Option<usize>,
    /// Skip the floor: the raw JetStream and Postgres phases run on souk's servers
    /// before souk, and the per-product arithmetic they give.
    #[arg(long)]
    pub no_floor: bool,
    /// Measured time of each floor phase (JetStream single publishes, atomic batches,
    /// Postgres commits), after `--warmup`.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    pub floor_duration: Duration,
    /// Longest wait for every written product to become searchable.
    #[arg(long, default_value = "900s", value_parser = crate::parse_duration)]
    pub index_timeout: Duration,
}

/// Run the catalog benchmark. The nats-server and the database are removed whatever
/// happens, Ctrl-C included.
pub async fn run(args: &Args, c: &CatalogArgs) -> anyhow::Result<CatalogReport> {
    anyhow::ensure!(
        c.products > 0 && c.sellers > 0 && c.writers > 0 && c.clients > 0 && c.queries > 0,
        "--products, --sellers, --writers, --clients and --queries must be positive"
    );
    let mut report = CatalogReport {
        products: c.products,
        sellers: c.sellers,
        seed: c.seed,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        catalog_max_backlog_ms: c.catalog_max_backlog.as_millis() as u64,
        search_threads: search_options(c).search_threads,
        ..CatalogReport::default()
    };
    progress(&format!("generating {} products for {} sellers", c.products, c.sellers));
    let listings: Arc<Vec<Listing>> =
        Arc::new((0..c.products).map(|i| products::listing(c.seed, c.sellers, i)).collect());
    let mut mix = queries::mix(&listings, c.queries, c.seed, TENANT);
    if !c.kinds.is_empty() {
        mix.retain(|q| c.kinds.iter().any(|k| k == q.kind));
        anyhow::ensure!(!mix.is_empty(), "no query of the kinds {:?}", c.kinds);
    }
    let queries = Arc::new(mix);
    for q in queries.iter() {
        *report.query_mix.entry(q.kind).or_default() += 1;
    }

    progress("(r) raw tantivy indexing");
    let now = chrono::Utc::now();
    let docs = listings.iter().map(|l| products::doc(l, TENANT, 1, now)).collect();
    let cpu = Window::open();
    let raw = raw::index(docs, c.raw_batch, search_options(c)).await?;
    let name = "(r) raw tantivy indexing, in process";
    report.raw_index = Some(Throughput::new(name, raw.docs, raw.elapsed.as_secs_f64(), cpu.close()));

    progress("(q) raw tantivy search (then each kind alone)");
    let cpu = Window::open();
    let tally = raw::search(raw.store.clone(), queries.clone(), search_plan(args, c)).await?;
    let mut searching = Searching::new("(q) raw tantivy search, in process", &tally, cpu.close());
    for (kind, alone) in kinds_alone(&queries, c) {
        let cpu = Window::open();
        let tally = raw::search(raw.store.clone(), alone, kind_plan(args, c)).await?;
        searching.alone(kind, &tally, cpu.close());
    }
    report.raw_search = Some(searching);
    if c.raw_only {
        report.finish();
        return Ok(report);
    }

    progress("starting nats-server and creating the database");
    let bin = env::nats_binary(args.nats_server.as_deref())?;
    let nats = Nats::start(&bin, args.store_dir.as_deref()).await?;
    let db = match Database::create(&env::server_url(args)).await {
        Ok(db) => db,
        Err(e) => {
            nats.stop().await;
            return Err(e);
        }
    };
    let souk = Souk { args, c, nats: &nats, db: &db, listings, queries, raw: &raw };
    let result = tokio::select! {
        r = souk.run(&mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    progress("cleaning up");
    let name = db.name.clone();
    if let Err(e) = db.drop().await {
        eprintln!("warning: could not drop database {name}: {e:#}");
    }
    nats.stop().await;
    // The figures measured before a failure still print, with the failure.
    if let Err(e) = result {
        report.error = Some(format!("{e:#}"));
    }
    report.finish();
    Ok(report)
}

/// Each kind's queries on their own, for `--kind-duration` runs (none if 0).
fn kinds_alone(queries: &[Query], c: &CatalogArgs) -> Vec<(&'static str, Arc<Vec<Query>>)> {
    if c.kind_duration.is_zero() {
        return Vec::new();
    }
    let kinds: BTreeSet<&'static str> = queries.iter().map(|q| q.kind).collect();
    kinds
        .into_iter()
        .map(|kind| (kind, Arc::new(queries.iter().filter(|q| q.kind == kind).cloned().collect())))
        .collect()
}

/// The tantivy store's options in both search phases.
fn search_options(c: &CatalogArgs) -> TantivyOptions {
    TantivyOptions::default().with_search_threads(c.search_threads)
}

fn kind_plan(args: &Args, c: &CatalogArgs) -> Plan {
    Plan { duration: c.kind_duration, ..search_plan(args, c) }
}

fn search_plan(args: &Args, c: &CatalogArgs) -> Plan {
    Plan {
        mode: Mode::Closed { concurrency: c.clients },
        warmup: args.warmup,
        duration: c.search_duration,
        max_ops: args.max_requests,
    }
}

/// The phases that run through souk.
struct Souk<'a> {
    args: &'a Args,
    c: &'a CatalogArgs,
    nats: &'a Nats,
    db: &'a Database,
    listings: Arc<Vec<Listing>>,
    queries: Arc<Vec<Query>>,
    raw: &'a raw::RawIndex,
}

impl Souk<'_> {
    async fn run(&self, report: &mut CatalogReport) -> anyhow::Result<()> {
        // One connection of the harness's own: migrations, then Postgres's counters.
        let observer = PgPoolOptions::new().max_connections(1).connect(&self.db.url).await?;
        pg::migrate(&observer).await.context("migrating the benchmark database")?;
        let result = self.phases(&observer, report).await;
        observer.close().await;
        result
    }

    async fn phases(&self, observer: &sqlx::PgPool, report: &mut CatalogReport) -> anyhow::Result<()> {
        let (args, c) = (self.args, self.c);
        let topology = match &args.topology {
            Some(path) => Topology::load(path)?,
            None => Topology::parse(include_str!("../../../topologies/marketplace.toml"))?,
        };
        let nats = souk::connect_bench(&self.nats.url).await?;
        if !c.no_floor {
            self.floor(&nats, &topology, observer, report).await?;
        }
        let keys = souk::keys();
        let ttl = c.index_timeout * 2 + c.search_duration * 4 + Duration::from_secs(3600);
        let sellers: BTreeSet<String> = self.listings.iter().map(|l| l.seller.clone()).collect();
        let sellers = sellers.into_iter().chain([pipeline::PROBE_SELLER.to_owned()]);
        let tokens = Arc::new(Tokens::mint(&keys, TENANT, sellers, ttl));
        let options = StackOptions {
            pg_connections: args.pg_connections,
            write_timeout: args.write_timeout,
            workers: true,
            catalog_max_backlog: c.catalog_max_backlog,
            search: search_options(c),
        };
        progress("(w)+(p) souk: starting the stack");
        let stack =
            Stack::start(&self.nats.url, &self.db.url, &topology, &options, keys, Arc::new(Vec::new()))
                .await?;
        let counters = Counters { pool: observer, js: async_nats::jetstream::new(nats) };
        let result = self.measure(&stack, &tokens, &counters, report).await;
        stack.stop().await;
        result
    }

    /// (j) and (c): what a message and a commit cost on these servers with nothing of
    /// souk in between, each phase `--floor-duration` after `--warmup`.
    async fn floor(
        &self,
        nats: &async_nats::Client,
        topology: &Topology,
        observer: &sqlx::PgPool,
        report: &mut CatalogReport,
    ) -> anyhow::Result<()> {
        let (args, c) = (self.args, self.c);
        let plan = |concurrency| Plan {
            mode: Mode::Closed { concurrency },
            warmup: args.warmup,
            duration: c.floor_duration,
            max_ops: args.max_requests,
        };
        report.floor_messages =
            floor::jetstream(nats, topology, c.writers, plan(c.writers), progress).await?;
        progress("(c) raw Postgres single-row commits");
        let connections = usize::try_from(args.pg_connections)?;
        report.floor_commits = Some(floor::postgres(&self.db.url, observer, plan(connections)).await?);
        Ok(())
    }

    async fn measure(
        &self,
        stack: &Stack,
        tokens: &Arc<Tokens>,
        counters: &Counters<'_>,
        report: &mut CatalogReport,
    ) -> anyhow::Result<()> {
        let c = self.c;
        let client = crate::http::client(c.writers + c.clients + 2)?;
        let addr = stack.addr;

        progress("(w)+(p) souk: writing every product, probing freshness beside");
        let work_before = Work::read(counters.pool, &counters.js).await?;
        let stop_probing = CancellationToken::new();
        let template = products::listing(c.seed.wrapping_add(1), 1, 0);
        let prober = tokio::spawn(pipeline::probe_freshness(
            client.clone(),
            addr,
            tokens.clone(),
            template,
            stop_probing.clone(),
        ));
        let cpu = Window::open();
        let started = Instant::now();
        let writes =
            pipeline::write_all(client.clone(), addr, self.listings.clone(), tokens.clone(), c.writers).await;
        stop_probing.cancel();
        let freshness = prober.await?;
        let writes = writes?;
        let freshness = freshness?;
        report.write_errors = writes.errors.clone();
        report.write_refusals = writes.refused;
        report.writes_retried = writes.retried;
        let written_s =
            writes.last_accepted.map_or(0.0, |t| t.saturating_duration_since(started).as_secs_f64());
        report.pipeline_writes =
            Some(Throughput::new("(w) product writes accepted (202)", writes.accepted, written_s, None));
        // Every accepted product, and the probe's one product if any probe was accepted.
        let probes_failed: u64 = freshness.failed.values().sum();
        let expected = writes.accepted + u64::from(freshness.probes > freshness.refused + probes_failed);
        report.freshness = Some(freshness);
        progress("(p) souk: waiting until every accepted product is searchable");
        let (searchable_at, count) =
            pipeline::wait_searchable(&client, addr, &tokens.buyer, expected, c.index_timeout).await?;
        let usage = cpu.close();
        report.searchable = count;
        // Messages and transactions per product, by the servers' own counters (the
        // freshness probe's few writes ride along, as they do in the CPU figure).
        tokio::time::sleep(floor::STATS_DELAY).await;
        let work_after = Work::read(counters.pool, &counters.js).await?;
        report.per_product = work_after.per(work_before, writes.accepted);
        let name = "(p) pipeline: PUT → searchable";
        // Nothing accepted: no pipeline figure (rather than a rate of zero).
        report.pipeline = searchable_at.filter(|_| writes.accepted > 0).map(|at| {
            Throughput::new(name, writes.accepted, at.saturating_duration_since(started).as_secs_f64(), usage)
        });
        if searchable_at.is_none() {
            eprintln!("warning: only {count} of {expected} products searchable after {:?}", c.index_timeout);
        }

        report.totals_differ = Some(
            pipeline::compare_totals(&client, addr, &tokens.buyer, &self.queries, self.raw.store.as_ref())
                .await?,
        );
        // As (q) does: the bulk load's background merges end before queries are timed.
        stack.search.wait_for_merges().await?;
        progress("(s) search through HTTP");
        let cpu = Window::open();
        let tally = pipeline::search(
            client.clone(),
            addr,
            tokens.buyer.clone(),
            self.queries.clone(),
            search_plan(self.args, c),
        )
        .await?;
        let mut searching = Searching::new("(s) search through HTTP", &tally, cpu.close());
        for (kind, alone) in kinds_alone(&self.queries, c) {
            progress(&format!("(s) search through HTTP: {kind} alone"));
            let cpu = Window::open();
            let plan = kind_plan(self.args, c);
            let tally = pipeline::search(client.clone(), addr, tokens.buyer.clone(), alone, plan).await?;
            searching.alone(kind, &tally, cpu.close());
        }
        report.http_search = Some(searching);
        Ok(())
    }
}

/// Where the servers' counters are read from.
struct Counters<'a> {
    pool: &'a sqlx::PgPool,
    js: async_nats::jetstream::Context,
}

fn progress(what: &str) {
    eprintln!("souk-loadtest catalog: {what} …");
}
