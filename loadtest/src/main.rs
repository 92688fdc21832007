//! # souk-loadtest — souk's throughput, as ratios against this machine's own ceilings
//!
//! One command, one run, one machine: it starts its own nats-server (file storage,
//! `sync_interval: always`, the durable profile) and creates its own Postgres database,
//! then measures, each for the same duration, with the same ~400-byte order and the
//! same concurrency:
//!
//! | | measurement | why it is the baseline |
//! |---|---|---|
//! | a | raw JetStream single publishes (publish, await PubAck) | what the ingress would reach publishing each order alone: one fsync per message |
//! | b | raw JetStream atomic batches (souk's `Publisher::publish_atomic`) with as many messages in flight as (a) and (e) have requests, and (b′) batches of 100 | the ceiling of group commit at the same concurrency: one fsync per batch; (b′) at the group committer's largest batch
//! | c | raw Postgres single-row INSERT, autocommit, as many connections as souk's pool | what the orders pool could reach if a handler cost one commit |
//! | d | a no-op axum handler answering 202, same client and requests as (e) | the cost of HTTP and of the load generator itself |
//! | e | souk's ingress, `POST /v1/orders` (real stack, wired as `souk dev`) | the figure being judged: 202s per second, latency |
//! | f | rows appearing in `orders` while (e) runs and until the backlog drains | the figure being judged: orders persisted per second |
//! | e₀ | the same ingress with no worker pools and no relay (runs last; its commands are left unhandled) | a diagnostic: what the intake stage reaches when it has the machine to itself, as each baseline does |
//! | e½ | souk again on a fresh stack, open loop (Poisson) at half the rate (e) reached | the latency a client sees while souk has headroom |
//!
//! and prints the figures the project targets — CPU per order through the whole pipeline
//! (e) ≤ 250 µs (the machine's busy CPU time over the phase ÷ its orders) and
//! (f)÷(c) ≥ 0.5 — plus the p99 accept latency at half saturation (e½), CPU per request of
//! (e0) and (d), and the throughput ratios (e)÷(a), (e)÷(b), (e)÷(d) as reported figures:
//! on two cores shared by the load generator and every server those ratios measure the
//! machine (the raw baselines are bound by serial fsyncs, souk by CPU). It reports;
//! it never fails on a target. Figures are only ever compared within one run: an
//! absolute rate from another machine, disk or day means little (DESIGN.md §5).
//!
//! (b) keeps as many batches in flight as the ingress's group committer may
//! (`BatchOptions::default().max_in_flight`, 2), each of `concurrency ÷ 2` messages, so
//! it has as many messages in flight as the HTTP phases have requests (the issue's "at
//! the same concurrency"); (b′) repeats it with batches of 100, the committer's largest.
//! `--batch-size` and `--batch-in-flight` show it at other shapes. (c) uses `--pg-connections`
//! connections, the size of souk's pool, and a table made `like orders` (same columns,
//! checks and indexes).
//!
//! The load generator runs in the same process as souk and the baselines, so it takes
//! CPU from every phase alike; (d) shows how much. Closed loop by default (`--concurrency`
//! tasks, each sending its next request when answered); `--rate` switches the HTTP
//! phases to open loop (scheduled arrivals, latency counted from the scheduled time,
//! `--concurrency` in flight at most). Every loop stops by itself (duration, `--max-requests`,
//! per-operation timeout); only 127.0.0.1 is used; the nats-server and the database are
//! removed at the end, also after an error or Ctrl-C.

mod baselines;
mod bench;
mod catalog;
mod checkout;
mod cpu;
mod diag;
mod env;
mod floor;
mod holds;
mod http;
mod load;
mod ops;
mod payload;
mod report;
mod souk;

use clap::{Parser, Subcommand, ValueEnum};

/// glibc's malloc took about a fifth of souk's CPU under load (perf); mimalloc is the
/// usual fix for allocation-heavy async servers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::{path::PathBuf, process::ExitCode, time::Duration};

/// Benchmark souk against raw JetStream, Postgres and HTTP baselines measured in the same run.
#[derive(Debug, Parser)]
#[command(name = "souk-loadtest", version)]
pub struct Args {
    /// What to benchmark: the order pipeline (no subcommand), the catalog, hold expiry
    /// or the checkout saga.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Measured time per phase: 10, 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured lead-in before each phase (connections open, batches reach steady size).
    #[arg(long, default_value = "1s", value_parser = parse_duration, global = true)]
    pub warmup: Duration,
    /// Requests or publishes in flight (closed loop: this many tasks; open loop: the cap).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Postgres connections: the raw-commit baseline's, and souk's pool (`souk dev`'s default).
    #[arg(long, default_value_t = 32, global = true)]
    pub pg_connections: u32,
    /// Messages per atomic batch in the raw atomic baseline [default: concurrency ÷
    /// batches in flight, so (b) has as many messages in flight as (a) and (e) — the
    /// issue's "at the same concurrency"; batches of 100 are also measured, as (b′)].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Atomic batches in flight in the raw atomic baseline [default: as many as the
    /// ingress's group committer allows, so (b) is the ceiling (e) is built on].
    #[arg(long)]
    pub batch_in_flight: Option<usize>,
    /// Open loop: offered requests per second in the HTTP phases (default: closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open-loop arrival process.
    #[arg(long, value_enum, default_value_t = Arrivals::Poisson)]
    pub arrivals: Arrivals,
    /// Stop a phase after this many measured operations.
    #[arg(long, global = true)]
    pub max_requests: Option<u64>,
    /// Longest wait for souk's backlog to drain once the load stops.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long the ingress waits for Postgres and JetStream before a 503 (`souk dev`'s default).
    #[arg(long, default_value = "1500ms", value_parser = parse_duration, global = true)]
    pub write_timeout: Duration,
    /// Postgres server; its database part is ignored (a fresh `souk_bench_*` one is
    /// created and dropped) [default: $SOUK_TEST_DATABASE_URL, $DATABASE_URL, or
    /// postgres://postgres@127.0.0.1:5432].
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// nats-server binary [default: $SOUK_NATS_SERVER_BIN or .souk/bin/nats-server].
    #[arg(long, global = true)]
    pub nats_server: Option<PathBuf>,
    /// Directory for the nats-server store (a temporary one is made inside it): put it
    /// on the disk whose fsyncs you mean to measure [default: the system temp dir].
    #[arg(long, global = true)]
    pub store_dir: Option<PathBuf>,
    /// Topology file [default: the built-in topologies/marketplace.toml].
    #[arg(long, global = true)]
    pub topology: Option<PathBuf>,
    /// Phases to run (ratios needing a skipped one show n/a).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "single,atomic,postgres,noop,souk,souk-half,ingress-alone"
    )]
    pub phases: Vec<Phase>,
    /// Print one JSON object instead of the table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Products through the whole pipeline beside raw tantivy indexing, freshness
    /// (202 → searchable), and search through HTTP beside the same queries in process.
    Catalog(catalog::CatalogArgs),
    /// Hold expiry: souk's deadline table swept beside JetStream message schedules
    /// (lateness and CPU per 10,000 holds).
    Holds(holds::HoldsArgs),
    /// The checkout saga end to end (cart → checkout → confirmed) at saturation and at
    /// half of it, beside the raw Postgres commit rate and the Restate peer.
    Checkout(checkout::CheckoutArgs),
    /// The operators' view under load: dashboard pages and the status model with many
    /// consumers and dead letters (render p99, CPU per status refresh).
    Ops(ops::OpsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Arrivals {
    /// Exponential gaps (independent clients).
    Poisson,
    /// Evenly spaced.
    Fixed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Phase {
    Single,
    Atomic,
    Postgres,
    Noop,
    Souk,
    /// (e½) souk again, open loop at half the rate (e) reached: latency with headroom.
    SoukHalf,
    /// (e₀) the ingress with no pools and no relay: what the intake stage alone reaches.
    IngressAlone,
}

/// A subcommand's report (its JSON, its table, whether the run failed; `None` for one
/// that printed as it went) printed as asked, as an exit code.
#[allow(clippy::type_complexity)]
fn finish(outcome: anyhow::Result<Option<(anyhow::Result<String>, String, bool)>>, json: bool) -> ExitCode {
    let printed = outcome.and_then(|report| {
        let Some((as_json, table, failed)) = report else { return Ok(false) };
        match json {
            true => println!("{}", as_json?),
            false => print!("{table}"),
        }
        Ok(failed)
    });
    match printed {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("souk-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `10`, `10s`, `1.5s`, `500ms`, `2m`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 =
        number.trim().parse().map_err(|_| format!("{s:?} is not a duration (10, 10s, 500ms, 2m)"))?;
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("{s:?}: {e}"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    // souk logs each refused request at warn; only errors by default, or the log drowns
    // the report. RUST_LOG=souk_ingress=warn shows why requests were refused.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "error".into()),
        )
        .init();
    match &args.command {
        Some(Command::Ops(o)) => return finish(ops::run(&args, o).await.map(|()| None), false),
        Some(Command::Holds(h)) => return finish(holds::run(&args, h).await.map(|()| None), false),
        Some(Command::Checkout(c)) => {
            let report = checkout::run(&args, c).await;
            return finish(report.map(|r| Some((r.json(), r.table(), r.error.is_some()))), args.json);
        }
        Some(Command::Catalog(c)) => {
            let report = catalog::run(&args, c).await;
            return finish(report.map(|r| Some((r.json(), r.table(), r.error.is_some()))), args.json);
        }
        None => {}
    }
    match bench::run(&args).await {
        Ok(report) => {
            if args.json {
                match report.json() {
                    Ok(j) => println!("{j}"),
                    Err(e) => {
                        eprintln!("souk-loadtest: {e:#}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("souk-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1").is_err());
    }
}
