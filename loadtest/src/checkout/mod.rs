//! # The checkout saga benchmark (`souk-loadtest checkout`)
//!
//! One run, one machine, its own nats-server and database:
//!
//! | | measurement | judged against |
//! |---|---|---|
//! | i | the settled stack with no load for `--idle`: CPU per second, paid by every phase whatever its rate | — |
//! | c | raw Postgres single-row INSERT, autocommit, `--pg-connections` connections (the orders benchmark's (c)) | — the ceiling one commit per step would allow; CPU per commit for the floor |
//! | j1, j2 | raw JetStream publishes to a copy of `CMD` (single, then atomic batches, the largest `--concurrency` in flight), each followed by a pull consumer taking and acking them all, `--floor-duration` each | — CPU per message for the floor |
//! | s | souk, closed loop at each `--concurrency`: every client puts `--lines` SKUs in its cart, `POST /v1/checkout` (`tok_ok`), and waits for its order's `OrderConfirmed` on `EVT`; checkouts/s = confirmed per second, latency from the POST to the event | Restate's runs/s (× ≥ 1.5) and p99 (below) at the same concurrency |
//! | s½ | the same, open loop (Poisson) at half the best rate of (s) | the latency a buyer sees while souk has headroom |
//! | r | Restate 1.7, the same saga shape (3 steps, fsync on), `run.sh` at the same concurrencies | — the peer |
//!
//! The whole saga runs in (s): ingress (cart, pricing, key claim, group commit) → orders
//! pool → reserve stock → authorize (the payment sandbox over HTTP, latency 0, no
//! faults) → commit stock → capture → `confirmed` → a fulfilment request per seller.
//! `--skus` products (stock 10⁹ each) over `--sellers` sellers, so stock rows do not
//! serialise the orders. CPU per checkout is the machine's busy time over the phase ÷ the
//! checkouts confirmed in it, split by process (this process — souk and the load
//! generator —, Postgres, nats-server), with souk's own handler time per pool and per
//! route beside it. Each phase starts from a quiescent pipeline, and its CPU window
//! closes when the pipeline is quiescent again, so a checkout's whole cost (its
//! fulfilment request too) is counted once. Beside it, the floor (see [`crate::floor`]):
//! the JetStream messages and Postgres transactions per checkout the servers counted ×
//! what one costs on them alone by (j) and (c), and that floor ÷ Restate's CPU per run
//! (`--no-floor` skips (j)). It reports; it never fails on a target.

mod report;
mod restate;
mod shop;

pub use report::CheckoutReport;

use anyhow::Context;
use hdrhistogram::Histogram;
use metrics_exporter_prometheus::PrometheusHandle;
use souk_stores::postgres as pg;
use souk_topologies::Topology;
use sqlx::postgres::PgPoolOptions;
use std::{path::PathBuf, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

use crate::{
    Args,
    cpu::Window,
    diag::{self, Snapshot},
    env::{self, Database, Nats},
    floor::{self, Work},
    load::{self, Mode, Plan, Tally},
    report::Latency,
    souk::{self, Stack, StackOptions},
};
use report::{PerCheckout, SoukPhase};
use shop::{Checkout, Confirmations, Outcomes};

/// `souk-loadtest checkout`: the checkout saga end to end, beside Restate.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckoutArgs {
    /// Closed-loop clients of each saturation phase (a list: one phase each).
    #[arg(long, value_delimiter = ',', default_value = "16,64")]
    pub concurrency: Vec<usize>,
    /// Measured time of each souk phase and of the Postgres baseline.
    #[arg(long, default_value = "20s", value_parser = crate::parse_duration)]
    pub duration: Duration,
    /// Products on sale (stock rows the reservations spread over).
    #[arg(long, default_value_t = 1_000)]
    pub skus: usize,
    /// Sellers the products are spread over (round robin).
    #[arg(long, default_value_t = 8)]
    pub sellers: usize,
    /// Cart lines per checkout (distinct SKUs; with several, usually several sellers).
    #[arg(long, default_value_t = 1)]
    pub lines: usize,
    /// Measure the settled stack doing nothing for this long first (0: skip).
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub idle: Duration,
    /// Skip the open-loop phase at half the saturation rate.
    #[arg(long)]
    pub no_half: bool,
    /// Longest wait for the pipeline to settle between phases.
    #[arg(long, default_value = "120s", value_parser = crate::parse_duration)]
    pub drain_timeout: Duration,
    /// The Restate peer's folder (its `run.sh`) [default: ../shared/peers/restate-bench
    /// above the workspace].
    #[arg(long)]
    pub restate: Option<PathBuf>,
    /// Where run.sh keeps its working copy when its folder is read-only
    /// (`RESTATE_BENCH_DIR`; run.sh's default: /tmp/restate-bench).
    #[arg(long)]
    pub restate_work: Option<PathBuf>,
    /// Saga runs per concurrency in the Restate peer (`N`).
    #[arg(long, default_value_t = 2_000)]
    pub restate_runs: u64,
    /// Do not run the Restate peer (the report says so).
    #[arg(long)]
    pub no_restate: bool,
    /// Skip the floor's JetStream phases (j1, j2), and so the per-checkout arithmetic.
    #[arg(long)]
    pub no_floor: bool,
    /// Measured time of each floor JetStream phase, after `--warmup`.
    #[arg(long, default_value = "3s", value_parser = crate::parse_duration)]
    pub floor_duration: Duration,
}

/// Run the checkout benchmark. The nats-server and the database are removed whatever
/// happens, Ctrl-C included; figures measured before a failure are kept.
pub async fn run(args: &Args, c: &CheckoutArgs) -> anyhow::Result<CheckoutReport> {
    anyhow::ensure!(
        c.skus > 0 && c.sellers > 0 && c.lines > 0 && c.lines <= c.skus,
        "--skus, --sellers and --lines must be positive, --lines at most --skus"
    );
    anyhow::ensure!(
        !c.concurrency.is_empty() && c.concurrency.iter().all(|n| *n > 0),
        "--concurrency must list positive numbers"
    );
    let metrics = diag::install()?;
    let mut report = CheckoutReport {
        skus: c.skus,
        sellers: c.sellers,
        lines: c.lines,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ..CheckoutReport::default()
    };
    progress("starting nats-server and creating the database");
    let bin = env::nats_binary(args.nats_server.as_deref())?;
    let nats = Nats::start(&bin, args.store_dir.as_deref()).await?;
    let db = match Database::create(&crate::env::server_url(args)).await {
        Ok(db) => db,
        Err(e) => {
            nats.stop().await;
            return Err(e);
        }
    };
    let run = Run { args, c, nats: &nats, db: &db, metrics: &metrics };
    let result = tokio::select! {
        r = run.souk(&mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    progress("cleaning up");
    let name = db.name.clone();
    if let Err(e) = db.drop().await {
        eprintln!("warning: could not drop database {name}: {e:#}");
    }
    nats.stop().await;
    if let Err(e) = result {
        report.error = Some(format!("{e:#}"));
    }
    // The peer runs last, once souk's servers are gone: each has the machine alike.
    if report.error.is_none() {
        tokio::select! {
            () = peer(c, &mut report) => {}
            _ = tokio::signal::ctrl_c() => report.error = Some("interrupted".into()),
        }
    }
    report.finish();
    Ok(report)
}

struct Run<'a> {
    args: &'a Args,
    c: &'a CheckoutArgs,
    nats: &'a Nats,
    db: &'a Database,
    metrics: &'a PrometheusHandle,
}

impl Run<'_> {
    async fn souk(&self, report: &mut CheckoutReport) -> anyhow::Result<()> {
        let (args, c) = (self.args, self.c);
        let pool = PgPoolOptions::new().max_connections(1).connect(&self.db.url).await?;
        pg::migrate(&pool).await.context("migrating the benchmark database")?;

        progress("(c) raw Postgres single-row commits");
        let plan = Plan {
            mode: Mode::Closed { concurrency: usize::try_from(args.pg_connections)? },
            warmup: args.warmup,
            duration: c.duration,
            max_ops: args.max_requests,
        };
        report.postgres = Some(floor::postgres(&self.db.url, &pool, plan).await?);
        if !c.no_floor {
            let client = souk::connect_bench(&self.nats.url).await?;
            let topology = self.topology()?;
            let most = c.concurrency.iter().copied().max().unwrap_or(1);
            let plan = Plan { duration: c.floor_duration, ..plan };
            report.jetstream_floor = floor::jetstream(&client, &topology, most, plan, progress).await?;
        }

        progress(&format!("seeding {} products of {} sellers", c.skus, c.sellers));
        shop::seed(&pool, c.skus, c.sellers).await?;
        let topology = self.topology()?;
        let keys = souk::keys();
        let most = c.concurrency.iter().copied().max().unwrap_or(1);
        // Open loop: room for 4× the largest closed loop in flight, one buyer (cart) each.
        let half_in_flight = most * 4;
        let ttl = (c.duration + args.warmup + c.drain_timeout) * 20 + Duration::from_secs(3600);
        let buyers = shop::buyers(&keys, half_in_flight, ttl);
        let options = StackOptions {
            pg_connections: args.pg_connections,
            write_timeout: args.write_timeout,
            workers: true,
            catalog_max_backlog: souk_cli::node::DEFAULT_CATALOG_MAX_BACKLOG,
            search: Default::default(),
        };
        progress("starting the souk stack (as `souk dev`: every pool, the relay, two payment sandboxes)");
        let stack =
            Stack::start(&self.nats.url, &self.db.url, &topology, &options, keys, Arc::new(Vec::new()))
                .await?;
        let result = self.phases(&stack, &pool, buyers, report).await;
        stack.stop().await;
        pool.close().await;
        result
    }

    fn topology(&self) -> anyhow::Result<Topology> {
        match &self.args.topology {
            Some(path) => Ok(Topology::load(path)?),
            None => Ok(Topology::parse(include_str!("../../../topologies/marketplace.toml"))?),
        }
    }

    async fn phases(
        &self,
        stack: &Stack,
        pool: &sqlx::PgPool,
        buyers: Vec<shop::Buyer>,
        report: &mut CheckoutReport,
    ) -> anyhow::Result<()> {
        let c = self.c;
        let client = souk::connect_bench(&self.nats.url).await?;
        let js = async_nats::jetstream::new(client.clone());
        let outcomes = Arc::new(Outcomes::default());
        let stop = CancellationToken::new();
        let listener = shop::listen(&js, outcomes.clone(), stop.clone()).await?;
        let http = crate::http::client(buyers.len() + 2)?;
        let checkout = |confirmed: Confirmations| {
            Checkout {
                client: http.clone(),
                base: format!("http://{}", stack.addr),
                skus: c.skus,
                lines: c.lines,
                outcomes: outcomes.clone(),
            }
            .op(buyers.clone(), confirmed)
        };
        let phase = Phase { run: self, js: &js, outbox: pool, outcomes: &outcomes };
        let result = async {
            // What the settled stack costs doing nothing (heartbeats, purges, sweeps,
            // long polls): a cost every phase pays per second, whatever its rate.
            if !c.idle.is_zero() {
                progress(&format!("(i) the settled stack, idle for {:?}", c.idle));
                phase.settle().await?;
                let cpu = Window::open();
                tokio::time::sleep(c.idle).await;
                report.idle = cpu.close().map(|cpu| report::Idle::new(cpu, c.idle));
            }
            for &n in &c.concurrency {
                let mode = Mode::Closed { concurrency: n };
                let name = format!("closed loop, {n} concurrent");
                let s = phase.measure(name, mode, &checkout).await?;
                report.saturation.push(s);
            }
            let best = report.saturation.iter().map(|s| s.checkouts_per_s).fold(0.0, f64::max);
            if !c.no_half && best > 0.0 {
                let rate = best / 2.0;
                let mode = Mode::Open { rate, max_in_flight: buyers.len(), poisson: true };
                let name = format!("open loop, {rate:.0}/s (Poisson)");
                let mut s = phase.measure(name, mode, &checkout).await?;
                s.offered_per_s = Some(rate);
                report.half = Some(s);
            }
            anyhow::Ok(())
        }
        .await;
        stop.cancel();
        listener.await.ok();
        result
    }
}

/// What every souk phase shares.
struct Phase<'a> {
    run: &'a Run<'a>,
    js: &'a async_nats::jetstream::Context,
    outbox: &'a sqlx::PgPool,
    outcomes: &'a Outcomes,
}

impl Phase<'_> {
    /// Warm up (unmeasured, then settled), then load souk per `mode` for `--duration`
    /// with the CPU window open from the first request until the pipeline settles.
    async fn measure(
        &self,
        name: String,
        mode: Mode,
        checkout: &dyn Fn(Confirmations) -> load::Op,
    ) -> anyhow::Result<SoukPhase> {
        let (args, c) = (self.run.args, self.run.c);
        progress(&format!("souk checkout, {name}"));
        if !args.warmup.is_zero() {
            let warmup = Plan { mode, warmup: Duration::ZERO, duration: args.warmup, max_ops: None };
            load::run(warmup, checkout(Confirmations::default())).await?;
        }
        self.settle().await?;
        self.outcomes.clear();
        let confirmed = Confirmations::default();
        let plan = Plan { mode, warmup: Duration::ZERO, duration: c.duration, max_ops: args.max_requests };
        let before = Snapshot::take(self.run.metrics);
        let work_before = Work::read(self.outbox, self.js).await?;
        let cpu = Window::open();
        let tally = load::run(plan, checkout(confirmed.clone())).await?;
        self.settle().await?;
        let usage = cpu.close();
        let after = Snapshot::take(self.run.metrics);
        let all = confirmed.lock().map(|c| c.clone()).unwrap_or_default();
        let mut s = summarise(name, mode, &tally, &all, usage, &before, &after)?;
        // Postgres publishes a backend's counters within a second or so of its commits.
        tokio::time::sleep(floor::STATS_DELAY).await;
        let work_after = Work::read(self.outbox, self.js).await?;
        if let Some(n) = work_after.per(work_before, s.cpu_checkouts) {
            s.transactions_per_checkout = Some(n.transactions);
            s.messages_per_checkout = Some(n.messages);
            s.writes_per_checkout = Some(n.writes);
        }
        Ok(s)
    }

    /// Wait until nothing is left to do: every consumer caught up with nothing
    /// unacknowledged and the outbox published, twice in a row.
    async fn settle(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + self.run.c.drain_timeout;
        let mut previous = None;
        loop {
            let now = quiet(self.js, self.outbox).await?;
            if now.0 && previous == Some(now.1) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "souk did not settle within {:?} (outbox and consumers still busy)",
                self.run.c.drain_timeout
            );
            previous = Some(now.1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// (idle, a fingerprint of the state): idle when no consumer of CMD or EVT has anything
/// pending or unacknowledged and no outbox row is unpublished.
async fn quiet(js: &async_nats::jetstream::Context, outbox: &sqlx::PgPool) -> anyhow::Result<(bool, u64)> {
    use futures::TryStreamExt;
    let mut idle = true;
    let mut fingerprint = 0u64;
    for name in ["CMD", "EVT"] {
        let stream = js.get_stream(name).await.with_context(|| format!("reading stream {name}"))?;
        fingerprint = fingerprint.wrapping_mul(31).wrapping_add(stream.cached_info().state.last_sequence);
        let infos: Vec<async_nats::jetstream::consumer::Info> = stream.consumers().try_collect().await?;
        for info in infos {
            idle &= info.num_pending == 0 && info.num_ack_pending == 0;
        }
    }
    let unpublished: i64 = sqlx::query_scalar("select count(*) from outbox where published_at is null")
        .fetch_one(outbox)
        .await?;
    Ok((idle && unpublished == 0, fingerprint))
}

fn summarise(
    name: String,
    mode: Mode,
    tally: &Tally,
    all: &[(tokio::time::Instant, u64)],
    cpu: Option<crate::cpu::Share>,
    before: &Snapshot,
    after: &Snapshot,
) -> anyhow::Result<SoukPhase> {
    // Latency of the checkouts the tally counted: confirmed inside its window.
    let end = tally.start + tally.elapsed;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    for (_, micros) in all.iter().filter(|(at, _)| *at >= tally.start && *at <= end) {
        latency.saturating_record(*micros);
    }
    // Every checkout confirmed while the CPU window was open: its work was counted.
    let cpu_checkouts = all.len() as u64;
    let pools = diag::timings(before, after, "souk_worker_handle_seconds", "pool");
    let routes = diag::timings(before, after, "souk_http_request_duration_seconds", "route");
    Ok(SoukPhase {
        name,
        concurrency: match mode {
            Mode::Closed { concurrency } => Some(concurrency),
            Mode::Open { .. } => None,
        },
        offered_per_s: None,
        confirmed: tally.ops,
        checkouts_per_s: tally.rate(),
        latency: Latency::of(&latency),
        errors: tally.errors.clone(),
        unsent: tally.unsent,
        cpu_checkouts,
        cpu,
        cpu_per_checkout: cpu.and_then(|c| PerCheckout::of(&c, cpu_checkouts)),
        pool_ms_per_checkout: SoukPhase::timings(&pools, cpu_checkouts),
        route_ms_per_checkout: SoukPhase::timings(&routes, cpu_checkouts),
        loadavg: loadavg(),
        transactions_per_checkout: None,
        messages_per_checkout: None,
        writes_per_checkout: None,
        floor: None,
    })
}

/// The 1, 5 and 15 minute load averages (other agents share this machine).
fn loadavg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let v: Vec<f64> = s.split_whitespace().take(3).filter_map(|x| x.parse().ok()).collect();
    Some([*v.first()?, *v.get(1)?, *v.get(2)?])
}

/// Run the Restate peer at souk's concurrencies, or say why not.
async fn peer(c: &CheckoutArgs, report: &mut CheckoutReport) {
    if c.no_restate {
        report.restate_skipped = Some("--no-restate".into());
        return;
    }
    // The checkout's `../shared`, or the nearest `shared/` above it (a worktree sits
    // deeper than the main checkout).
    let dir = c.restate.clone().unwrap_or_else(|| {
        let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        here.ancestors()
            .map(|a| a.join("shared/peers/restate-bench"))
            .find(|d| d.join("run.sh").is_file())
            .unwrap_or_else(|| here.join("../../shared/peers/restate-bench"))
    });
    if !dir.join("run.sh").is_file() {
        let why = format!("{} has no run.sh (pass --restate DIR, or --no-restate)", dir.display());
        eprintln!("souk-loadtest checkout: Restate peer skipped: {why}");
        report.restate_skipped = Some(why);
        return;
    }
    progress(&format!("(r) Restate peer: {}/run.sh, N={}", dir.display(), c.restate_runs));
    match restate::run(&dir, c.restate_work.as_deref(), c.restate_runs, &c.concurrency).await {
        Ok((runs, setup)) => {
            report.restate = runs;
            report.restate_setup = Some(setup).filter(|s| !s.is_empty());
        }
        Err(e) => {
            eprintln!("souk-loadtest checkout: Restate peer failed: {e:#}");
            report.restate_skipped = Some(format!("run.sh failed: {e:#}"));
        }
    }
}

fn progress(what: &str) {
    eprintln!("souk-loadtest checkout: {what} …");
}
