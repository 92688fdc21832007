//! One run: set up the servers, run the phases in order, tear everything down.

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use souk_stores::postgres as pg;
use souk_topologies::{Topology, batcher::BatchOptions};
use sqlx::postgres::PgPoolOptions;
use std::{sync::Arc, time::Duration};

use crate::{
    Args, Arrivals, Phase, baselines, diag,
    env::{self, Database, Nats},
    load::{Mode, Plan},
    payload::Sample,
    report::{Measurement, Report, Setup},
    souk::{self, Stack, StackOptions},
};

/// Run every phase `args` asks for and return the report. The nats-server and the
/// database are removed whatever happens, Ctrl-C included.
pub async fn run(args: &Args) -> anyhow::Result<Report> {
    let metrics = diag::install()?;
    let sample = Sample::new()?;
    let topology = match &args.topology {
        Some(path) => Topology::load(path)?,
        None => Topology::parse(include_str!("../../topologies/marketplace.toml"))?,
    };
    let bin = env::nats_binary(args.nats_server.as_deref())?;
    let server_url = env::server_url(args);

    progress("starting nats-server and creating the database");
    let nats = Nats::start(&bin, args.store_dir.as_deref()).await?;
    let db = match Database::create(&server_url).await {
        Ok(db) => db,
        Err(e) => {
            nats.stop().await;
            return Err(e);
        }
    };
    let ctx = Ctx { args, sample: &sample, topology: &topology, nats: &nats, db: &db, metrics: &metrics };
    let setup = setup(&ctx, &bin, &server_url).await;
    let result = tokio::select! {
        r = phases(&ctx, setup) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    progress("cleaning up");
    let name = db.name.clone();
    if let Err(e) = db.drop().await {
        eprintln!("warning: could not drop database {name}: {e:#}");
    }
    nats.stop().await;
    result
}

struct Ctx<'a> {
    args: &'a Args,
    sample: &'a Sample,
    topology: &'a Topology,
    nats: &'a Nats,
    db: &'a Database,
    metrics: &'a PrometheusHandle,
}

impl Ctx<'_> {
    fn plan(&self, mode: Mode) -> Plan {
        Plan { mode, warmup: self.args.warmup, duration: self.args.duration, max_ops: self.args.max_requests }
    }

    /// The HTTP phases' load: open loop with `--rate`, else closed.
    fn http_mode(&self) -> Mode {
        match self.args.rate {
            Some(rate) => Mode::Open {
                rate,
                max_in_flight: self.args.concurrency,
                poisson: self.args.arrivals == Arrivals::Poisson,
            },
            None => Mode::Closed { concurrency: self.args.concurrency },
        }
    }

    fn batch_in_flight(&self) -> usize {
        // The ingress's group committer runs `IntakeOptions::default()`, whose publishes
        // use `BatchOptions::default()`: the same in-flight count makes (b) its ceiling.
        self.args.batch_in_flight.unwrap_or_else(|| BatchOptions::default().max_in_flight)
    }

    fn batch_size(&self) -> usize {
        self.args.batch_size.unwrap_or_else(|| {
            self.args
                .concurrency
                .div_ceil(self.batch_in_flight())
                .clamp(1, souk_topologies::publisher::MAX_ATOMIC_BATCH)
        })
    }

    fn runs(&self, phase: Phase) -> bool {
        self.args.phases.contains(&phase)
    }
}

/// The largest batch the ingress's group committer sends (`BatchOptions::default()`),
/// measured as (b′) whatever the concurrency: the ceiling of group commit.
const CEILING_BATCH: usize = 100;

async fn setup(ctx: &Ctx<'_>, bin: &std::path::Path, server_url: &str) -> Setup {
    let version = tokio::process::Command::new(bin)
        .arg("--version")
        .output()
        .await
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    Setup {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        load: ctx.http_mode().describe(),
        duration_s: ctx.args.duration.as_secs_f64(),
        warmup_s: ctx.args.warmup.as_secs_f64(),
        concurrency: ctx.args.concurrency,
        pg_connections: ctx.args.pg_connections,
        batch_size: ctx.batch_size(),
        batch_in_flight: ctx.batch_in_flight(),
        command_bytes: ctx.sample.command.len(),
        body_bytes: ctx.sample.body.len(),
        write_timeout_ms: ctx.args.write_timeout.as_millis(),
        nats_server: format!("{} {version}", bin.display()),
        nats_store: ctx.nats.store_dir().display().to_string(),
        postgres: env::redact(server_url),
    }
}

async fn phases(ctx: &Ctx<'_>, setup: Setup) -> anyhow::Result<Report> {
    let args = ctx.args;
    let mut report = Report::new(setup);
    {
        let pool = PgPoolOptions::new().max_connections(1).connect(&ctx.db.url).await?;
        pg::migrate(&pool).await.context("migrating the benchmark database")?;
        pool.close().await;
    }
    let keys = souk::keys();
    // Every phase, its warm-up and the drain, twice over, and an hour to spare: no
    // token expires mid-run, however long the run.
    let per_phase = args.warmup + args.duration;
    let ttl = per_phase * 10 + args.drain_timeout * 2 + Duration::from_secs(3600);
    let tokens = Arc::new(souk::tokens(&keys, ttl));

    if ctx.runs(Phase::Single) || ctx.runs(Phase::Atomic) {
        let client = souk::connect_bench(&ctx.nats.url).await?;
        baselines::create_stream(&client, ctx.topology).await?;
        if ctx.runs(Phase::Single) {
            progress("(a) raw JetStream single publishes");
            let cpu = crate::cpu::Window::open();
            let mode = Mode::Closed { concurrency: args.concurrency };
            let t = baselines::raw_single(&client, ctx.sample, ctx.plan(mode)).await?;
            report.push(
                Measurement::new("raw_single", "(a) raw JetStream publish", "msg", "publish", &t),
                cpu.close(),
            );
        }
        if ctx.runs(Phase::Atomic) {
            progress("(b) raw JetStream atomic batches");
            let cpu = crate::cpu::Window::open();
            let batch_size = ctx.batch_size();
            anyhow::ensure!(
                (1..=souk_topologies::publisher::MAX_ATOMIC_BATCH).contains(&batch_size),
                "--batch-size must be 1..={}",
                souk_topologies::publisher::MAX_ATOMIC_BATCH
            );
            let mode = Mode::Closed { concurrency: ctx.batch_in_flight() };
            let t = baselines::raw_atomic(&client, ctx.sample, ctx.plan(mode), batch_size).await?;
            report.push(
                Measurement::new("raw_atomic", "(b) raw JetStream atomic batch", "msg", "batch", &t),
                cpu.close(),
            );
            if batch_size != CEILING_BATCH {
                progress("(b') raw JetStream atomic batches of 100");
                let cpu = crate::cpu::Window::open();
                let t = baselines::raw_atomic(&client, ctx.sample, ctx.plan(mode), CEILING_BATCH).await?;
                report.push(
                    Measurement::new("raw_atomic_100", "(b') raw atomic, batches of 100", "msg", "batch", &t),
                    cpu.close(),
                );
            }
        }
        // Free its disk space and file handles before souk runs on the same server.
        baselines::delete_stream(&client).await?;
        client.flush().await.ok();
    }
    if ctx.runs(Phase::Postgres) {
        progress("(c) raw Postgres single-row commits");
        let cpu = crate::cpu::Window::open();
        let concurrency = usize::try_from(args.pg_connections)?;
        let t =
            baselines::raw_postgres(&ctx.db.url, ctx.sample, ctx.plan(Mode::Closed { concurrency })).await?;
        report.push(
            Measurement::new("raw_postgres", "(c) raw Postgres insert+commit", "row", "insert", &t),
            cpu.close(),
        );
    }
    if ctx.runs(Phase::Noop) {
        progress("(d) no-op HTTP");
        let cpu = crate::cpu::Window::open();
        let t = baselines::noop_http(ctx.sample, ctx.plan(ctx.http_mode()), args.concurrency, tokens.clone())
            .await?;
        report.push(
            Measurement::new("noop_http", "(d) no-op HTTP (axum, 202)", "req", "request", &t),
            cpu.close(),
        );
    }
    if ctx.runs(Phase::Souk) {
        let run = souk_phase(ctx, &keys, &tokens, ctx.http_mode()).await?;
        let (measurement, usage) = run.0;
        report.push(measurement, usage);
        report.persisted = Some(run.1.persisted);
        report.diagnostics = Some(run.1.diagnostics);
    }
    // (e½): the same pipeline, open loop at half the rate (e) reached: the latency a
    // client sees when souk has headroom. Only after a closed-loop (e).
    let half = report.measurements.iter().find(|m| m.key == "souk_ingress").map(|m| m.rate_per_s / 2.0);
    if let Some(rate) = half.filter(|_| ctx.runs(Phase::SoukHalf) && args.rate.is_none()) {
        let mode = Mode::Open { rate, max_in_flight: args.concurrency.max(1024), poisson: true };
        let ((mut measurement, usage), _) = souk_phase(ctx, &keys, &tokens, mode).await?;
        measurement.key = "souk_half";
        measurement.name = "(e½) souk, open loop at half of (e)";
        report.push(measurement, usage);
    }
    // Last: the commands it accepts are never handled.
    if ctx.runs(Phase::IngressAlone) {
        progress("(e0) souk ingress alone: no pools, no relay");
        let cpu = crate::cpu::Window::open();
        let options = StackOptions {
            pg_connections: args.pg_connections,
            write_timeout: args.write_timeout,
            workers: false,
            catalog_max_backlog: souk_cli::node::DEFAULT_CATALOG_MAX_BACKLOG,
            search: Default::default(),
        };
        let stack = Stack::start(&ctx.nats.url, &ctx.db.url, ctx.topology, &options, keys, tokens).await?;
        stack.seed_catalog().await?;
        let t = souk::measure_ingress_alone(&stack, ctx.sample, ctx.plan(ctx.http_mode())).await;
        let usage = cpu.close();
        stack.stop().await;
        report.push(
            Measurement::new("souk_ingress_alone", "(e0) ingress alone, no workers", "req", "request", &t?),
            usage,
        );
    }
    report.finish();
    Ok(report)
}

/// One run of the whole pipeline (e)+(f) on a fresh stack under `mode`.
async fn souk_phase(
    ctx: &Ctx<'_>,
    keys: &souk_ingress::Keys,
    tokens: &Arc<Vec<String>>,
    mode: Mode,
) -> anyhow::Result<((Measurement, Option<crate::cpu::Share>), souk::SoukRun)> {
    let args = ctx.args;
    progress(&format!("(e)+(f) souk, {}: starting the stack", mode.describe()));
    let options = StackOptions {
        pg_connections: args.pg_connections,
        write_timeout: args.write_timeout,
        workers: true,
        catalog_max_backlog: souk_cli::node::DEFAULT_CATALOG_MAX_BACKLOG,
        search: Default::default(),
    };
    let stack =
        Stack::start(&ctx.nats.url, &ctx.db.url, ctx.topology, &options, keys.clone(), tokens.clone())
            .await?;
    stack.seed_catalog().await?;
    progress("(e)+(f) souk: ingress load, then waiting for the backlog to drain");
    let cpu = crate::cpu::Window::open();
    let run =
        souk::measure(&stack, &ctx.db.url, ctx.sample, ctx.plan(mode), args.drain_timeout, ctx.metrics).await;
    let usage = cpu.close();
    stack.stop().await;
    let run = run?;
    let m = Measurement::new("souk_ingress", "(e) souk ingress accepted", "req", "request", &run.ingress);
    Ok(((m, usage), run))
}

fn progress(what: &str) {
    eprintln!("souk-loadtest: {what} …");
}
