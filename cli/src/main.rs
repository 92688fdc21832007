//! # souk — the command line
//!
//! Thin by design: parse arguments and configuration, build components from the
//! library crates, run them until SIGINT/SIGTERM, drain, exit.
//! `souk dev` runs everything in one process; `souk ingress` and `souk worker` run the
//! parts separately for horizontal scale.

/// `println!` for command output that ends the process quietly (exit 0) when stdout is
/// closed, as in `souk status | head -1`. Rust ignores SIGPIPE, so a plain `println!`
/// panics there; the command has nothing left to do once its reader has gone.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

/// `print!` counterpart of [`out!`].
macro_rules! out_raw {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            $crate::stdout_failed(e);
        }
    }};
}

mod app;
mod commands;
mod config;
mod jobs;
mod operator;
mod sagas;
mod sandbox;
mod status_view;
mod trace;

/// Stdout failed: its reader is gone (exit quietly) or something is badly wrong.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("souk: writing to stdout: {e}");
    std::process::exit(1);
}

use clap::{Parser, Subcommand};

/// glibc's malloc took about a fifth of souk's CPU under load (perf); mimalloc is the
/// usual fix for allocation-heavy async servers.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

#[derive(Debug, Parser)]
#[command(name = "souk", version, about = "souk: a marketplace back end on NATS JetStream and Postgres")]
struct Cli {
    /// Configuration file (optional; env SOUK_* and flags override it).
    #[arg(long, global = true, default_value = "souk.toml", env = "SOUK_CONFIG")]
    config: PathBuf,
    /// State directory (dev JWT key, local nats-server store).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// HTTP listen address.
    #[arg(long, global = true)]
    http_addr: Option<SocketAddr>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run everything in one process: a local nats-server (unless SOUK_NATS_URL is
    /// set), migrations, topology, the HTTP ingress, every worker pool and the relay.
    Dev,
    /// Run the HTTP ingress (and the pools given with --pool: with the embedded search
    /// index, `--pool catalog-index` makes this process write the index and serve
    /// `/v1/search` from it).
    Ingress {
        /// A pool to run in this process too (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
    },
    /// Run worker pools (all unless --pool is given) and the outbox relay.
    Worker {
        /// A pool to run (repeatable).
        #[arg(long = "pool")]
        pools: Vec<String>,
        /// Do not run the outbox relay in this process.
        #[arg(long)]
        no_relay: bool,
    },
    /// Mint a DEVELOPMENT token, signed with the first configured jwt-keys key or the
    /// key `souk dev` generated in the data dir. Production tokens come from your
    /// identity provider.
    Token {
        #[arg(long)]
        sub: String,
        /// Role (repeatable): buyer, seller, support, admin, staff, operator.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// A seller id the token may act for (repeatable; with --role seller).
        #[arg(long = "seller")]
        sellers: Vec<String>,
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// Lifetime, e.g. 1h, 30m.
        #[arg(long, default_value = "24h")]
        ttl: humantime_serde::re::humantime::Duration,
    },
    /// Streams and consumers.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// Apply database migrations.
    Migrate,
    /// Pipeline status: streams, consumer lag and trend, dead letters, pools (live
    /// worker processes, throughput, errors, latency), outbox backlog.
    Status {
        /// Print JSON (with --watch: one document per line per refresh).
        #[arg(long)]
        json: bool,
        /// Refresh every SECONDS (default 2) until Ctrl-C.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<u64>,
    },
    /// The operators' dashboard alone (`souk dev` also serves it under /ops/ on its
    /// API address), over the `souk dev` of --data-dir, or SOUK_NATS_URL and the
    /// configured database. Log in with an operator token (`souk token --role operator`).
    Dashboard {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: SocketAddr,
    },
    /// Dead letters: list and show them with why they failed, redrive them once fixed,
    /// purge them. Redrives and purges are recorded in operator_actions.
    #[command(after_help = jobs::EXIT_CODES_HELP)]
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Pause, resume or scale a worker pool in every process running it (recorded in
    /// operator_actions); `souk status` shows each process's state.
    #[command(after_help = jobs::EXIT_CODES_HELP)]
    Pool {
        #[command(subcommand)]
        action: PoolAction,
    },
    /// Outbox rows the relay parked (they could not be published): list, requeue.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
    },
    /// Check the configuration and print it (secrets redacted).
    Config,
    /// Jobs for internal teams: submit, list, show, cancel and follow catalog imports
    /// and reindexes.
    #[command(after_help = jobs::EXIT_CODES_HELP)]
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Order sagas: list them (stuck ones too), show one with its steps, send its
    /// current step again, or stop it and compensate. Actions are recorded with who did
    /// them.
    #[command(after_help = SAGAS_EXIT_CODES_HELP)]
    Sagas {
        #[command(subcommand)]
        action: SagasAction,
    },
    /// Follow an order: everything souk did with it across pipelines, in time order —
    /// the request, each command and event with its stream sequence, each handling,
    /// outbox rows and when the relay published them, dead letters, the saga's steps,
    /// stock holds, payments and fulfilments.
    #[command(after_help = TRACE_EXIT_CODES_HELP)]
    Trace {
        /// An order id, or the trace id of the request that placed it.
        id: String,
        /// Print the trace as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Sandboxes of outside services (clearly labelled; no real money moves).
    Sandbox {
        #[command(subcommand)]
        what: SandboxWhat,
    },
    /// Generated data for demos and the benchmark.
    #[command(after_help = jobs::EXIT_CODES_HELP)]
    Seed {
        #[command(subcommand)]
        what: SeedWhat,
    },
}

#[derive(Debug, Subcommand)]
enum SandboxWhat {
    /// A payment-provider sandbox: tokens tok_ok, tok_soft_decline, tok_hard_decline,
    /// tok_slow, tok_insufficient_funds; dialects /alpha/v1 and /beta.
    Payments {
        /// Port on 127.0.0.1 (0: any free port, printed).
        #[arg(long)]
        port: u16,
        /// The label of this instance (e.g. primary, secondary).
        #[arg(long)]
        provider_name: String,
        /// A fault, key=value (repeatable): latency=50ms, hang-rate=0.01, error-rate=0.2,
        /// throttle-rate=0.1, reset-rate=0.05, lost-rate=0.05, hang=30s, slow=3s, seed=7.
        #[arg(long = "fault")]
        faults: Vec<String>,
        /// A file holding the API key clients must send (generated if missing; never printed).
        #[arg(long)]
        credentials: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum JobsAction {
    /// Submit a job; prints it (with its id).
    Submit {
        #[command(subcommand)]
        kind: SubmitKind,
    },
    /// The newest jobs, newest first.
    List {
        /// Only this tenant's jobs.
        #[arg(long)]
        tenant: Option<String>,
        /// How many (1 to 10,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One job: state, progress, refused rows by line.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job: a queued one at once, a running one between chunks.
    Cancel {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Draw the job's progress until it ends; the exit code says how it ended.
    Follow {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// Exit codes of `souk sagas`.
const TRACE_EXIT_CODES_HELP: &str = "Exit codes:
  0  ok
  1  some part of the trace could not be read (named on stderr), or an unexpected error
  2  bad usage
  3  no such order or trace
  5  Postgres or NATS unavailable (is `souk dev` running with this --data-dir?)";

const SAGAS_EXIT_CODES_HELP: &str = "Exit codes:
  0  ok
  1  an unexpected error
  2  bad usage, or the saga's state does not allow the action (e.g. retry of a cancelled saga)
  3  no such saga
  5  Postgres unavailable (is `souk dev` running with this --data-dir?)";

#[derive(Debug, Subcommand)]
enum SagasAction {
    /// The most recently changed sagas, newest first.
    List {
        /// Only sagas in this state (reserving, authorizing, committing, capturing,
        /// fulfilling, shipped, releasing, unwinding, voiding, cancelled, refunding, voiding_late).
        #[arg(long)]
        state: Option<String>,
        /// Only sagas past their deadline (the sweeper acts on them shortly).
        #[arg(long)]
        stuck: bool,
        /// How many (1 to 10,000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=10_000))]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One saga with each step and its time.
    Show {
        /// The order id.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Send the saga's current step again, with fresh attempts.
    Retry {
        /// The order id.
        id: String,
        /// An operator token (`souk token --role operator`): its subject is recorded as
        /// who did it (default: the local user).
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Stop the saga and compensate what it did (release stock, void the payment).
    Compensate {
        /// The order id.
        id: String,
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum SubmitKind {
    /// Import a seller's products from a file, validated row by row here first. JSONL:
    /// one object per line with `sku` and the product fields. CSV: a header row with
    /// sku,title,category,price_minor,currency,stock (required), description, images
    /// (URLs separated by |) and attr.<key> per attribute.
    CatalogImport {
        #[arg(long)]
        seller: String,
        #[arg(long)]
        file: PathBuf,
        /// jsonl or csv (default: from the file's extension).
        #[arg(long, value_parser = parse_format)]
        format: Option<souk_jobs::parse::Format>,
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
    /// Build a fresh search index from Postgres and swap it in.
    Reindex {
        #[arg(long, default_value = "dev")]
        tenant: String,
        #[arg(long)]
        json: bool,
    },
}

fn parse_format(s: &str) -> Result<souk_jobs::parse::Format, String> {
    match s {
        "jsonl" | "ndjson" => Ok(souk_jobs::parse::Format::Jsonl),
        "csv" => Ok(souk_jobs::parse::Format::Csv),
        _ => Err("jsonl or csv".into()),
    }
}

#[derive(Debug, Subcommand)]
enum SeedWhat {
    /// Publish generated products (the same for the same --seed) through the catalog's
    /// write commands, as API writes are.
    Catalog {
        #[arg(long, default_value_t = 1000)]
        products: usize,
        #[arg(long, default_value_t = 20)]
        sellers: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value = "dev")]
        tenant: String,
        /// Atomic batches of 500 in flight at once.
        #[arg(long, default_value_t = 4)]
        in_flight: usize,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum OutboxAction {
    /// List parked rows, oldest first, with their errors.
    Parked {
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Put parked rows back in line once their cause is fixed (an aggregate's, or all).
    Requeue {
        /// The aggregate (e.g. an order id) whose rows to requeue.
        #[arg(long, required_unless_present = "all")]
        aggregate: Option<String>,
        /// Requeue every parked row.
        #[arg(long, conflicts_with = "aggregate")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum DlqAction {
    /// List dead letters, oldest first: reason, attempts, first and last failure, trace id.
    List {
        #[command(flatten)]
        filter: operator::FilterArgs,
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One dead letter: its headers and its body (pretty-printed when JSON).
    Show {
        seq: u64,
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their original subjects as new messages (a new id, a
    /// `souk-redrives` count) and remove them from the DLQ.
    #[command(alias = "replay")]
    Redrive {
        /// DLQ sequence numbers (from `souk dlq list`).
        seqs: Vec<u64>,
        #[command(flatten)]
        filter: operator::FilterArgs,
        /// Every dead letter.
        #[arg(long)]
        all: bool,
        /// An operator token (`souk token --role operator`): its subject is recorded as
        /// who did it (default: the local user).
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Delete dead letters for good, after a confirmation (`--yes` for scripts).
    Purge {
        seqs: Vec<u64>,
        #[command(flatten)]
        filter: operator::FilterArgs,
        #[arg(long)]
        all: bool,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PoolAction {
    /// Stop fetching (in-flight messages finish; nothing is lost).
    Pause {
        pool: String,
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Fetch again.
    Resume {
        pool: String,
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Set the messages each process runs at once (1–10000).
    Scale {
        pool: String,
        concurrency: usize,
        #[arg(long, env = "SOUK_OPERATOR_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TopologyAction {
    /// Create or update streams and consumers; report drift.
    Apply {
        /// Only report drift; change nothing (exit code 2 when out of sync).
        #[arg(long)]
        check: bool,
    },
    /// Print the declared topology.
    Show,
}

async fn jobs_command(config: &config::Config, action: JobsAction) -> ExitCode {
    let result = match action {
        JobsAction::Submit { kind: SubmitKind::CatalogImport { seller, file, format, tenant, json } } => {
            jobs::submit_import(config, &tenant, &seller, &file, format, json).await
        }
        JobsAction::Submit { kind: SubmitKind::Reindex { tenant, json } } => {
            jobs::submit_reindex(config, &tenant, json).await
        }
        JobsAction::List { tenant, limit, json } => jobs::list(config, tenant.as_deref(), limit, json).await,
        JobsAction::Show { id, json } => jobs::show(config, &id, json).await,
        JobsAction::Cancel { id, json } => jobs::cancel(config, &id, json).await,
        JobsAction::Follow { id, json } => jobs::follow(config, &id, json).await,
    };
    exit(result)
}

async fn dlq_command(config: &config::Config, action: DlqAction) -> Result<ExitCode, jobs::Exit> {
    match action {
        DlqAction::List { filter, json, limit } => operator::dlq_list(config, &filter, json, limit).await,
        DlqAction::Show { seq, json } => operator::dlq_show(config, seq, json).await,
        DlqAction::Redrive { seqs, filter, all, token } => {
            operator::dlq_redrive(config, &seqs, &filter, all, token.as_deref()).await
        }
        DlqAction::Purge { seqs, filter, all, yes, token } => {
            operator::dlq_purge(config, &seqs, &filter, all, yes, token.as_deref()).await
        }
    }
}

/// The exit code of a jobs, seed, dlq or pool command; its error on stderr.
fn exit(result: Result<ExitCode, jobs::Exit>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(jobs::Exit(code, e)) => {
            eprintln!("souk: {e:#}");
            ExitCode::from(code)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = config::Overrides { data_dir: cli.data_dir.clone(), http_addr: cli.http_addr };
    let config = match config::Config::load(&cli.config, &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("souk: configuration error: {e}");
            return ExitCode::from(78);
        }
    };
    let result = match cli.command {
        Command::Dev => app::run(config, app::Role::Dev).await,
        Command::Ingress { pools } => app::run(config, app::Role::Ingress { pools }).await,
        Command::Worker { pools, no_relay } => {
            app::run(config, app::Role::Worker { pools, relay: !no_relay }).await
        }
        Command::Token { sub, roles, sellers, tenant, ttl } => {
            commands::token(&config, &sub, &roles, &sellers, &tenant, ttl.into())
        }
        Command::Topology { action: TopologyAction::Apply { check } } => {
            commands::topology_apply(&config, check).await
        }
        Command::Topology { action: TopologyAction::Show } => commands::topology_show(&config),
        Command::Migrate => commands::migrate(&config).await,
        Command::Status { json, watch } => {
            let watch = watch.map(|s| std::time::Duration::from_secs(s.max(1)));
            commands::status(&config, json, watch).await
        }
        Command::Dashboard { listen } => commands::dashboard(&config, listen).await,
        Command::Dlq { action } => return exit(dlq_command(&config, action).await),
        Command::Pool { action } => {
            use souk_topologies::control::Change;
            let (pool, change, token) = match action {
                PoolAction::Pause { pool, token } => (pool, Change::Pause, token),
                PoolAction::Resume { pool, token } => (pool, Change::Resume, token),
                PoolAction::Scale { pool, concurrency, token } => (pool, Change::Scale(concurrency), token),
            };
            return exit(operator::pool_change(&config, &pool, change, token.as_deref()).await);
        }
        Command::Outbox { action: OutboxAction::Parked { json, limit } } => {
            commands::outbox_parked(&config, json, limit).await
        }
        Command::Outbox { action: OutboxAction::Requeue { aggregate, .. } } => {
            commands::outbox_requeue(&config, aggregate.as_deref()).await
        }
        Command::Config => commands::config_check(&config),
        Command::Sandbox { what: SandboxWhat::Payments { port, provider_name, faults, credentials } } => {
            sandbox::payments(port, &provider_name, &faults, credentials.as_deref()).await
        }
        Command::Jobs { action } => return jobs_command(&config, action).await,
        Command::Sagas { action } => {
            return exit(match action {
                SagasAction::List { state, stuck, limit, json } => {
                    sagas::list(&config, state.as_deref(), stuck, limit, json).await
                }
                SagasAction::Show { id, json } => sagas::show(&config, &id, json).await,
                SagasAction::Retry { id, token } => sagas::act(&config, &id, false, token.as_deref()).await,
                SagasAction::Compensate { id, token } => {
                    sagas::act(&config, &id, true, token.as_deref()).await
                }
            });
        }
        Command::Trace { id, json } => return exit(trace::trace(&config, &id, json).await),
        Command::Seed { what: SeedWhat::Catalog { products, sellers, seed, tenant, in_flight, json } } => {
            let options = souk_jobs::seed::SeedOptions { tenant, products, sellers, seed, in_flight };
            return exit(jobs::seed_catalog(&config, options, json).await);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("souk: {e:#}");
            ExitCode::FAILURE
        }
    }
}
