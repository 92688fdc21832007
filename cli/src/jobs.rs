//! `souk jobs …` and `souk seed catalog`.
//!
//! The CLI talks to the deployment's Postgres directly (and, to seed, to its NATS), as
//! `souk status`, `dlq` and `outbox` do: it is the operators' tool inside the
//! deployment, needs no token, and calls the same library functions as `POST /v1/jobs`
//! (`souk_jobs::submit`), so both validate alike; and an import file goes to Postgres
//! in bulk statements instead of one HTTP body. Like `souk status`, it finds a running
//! `souk dev` by `--data-dir` (its database and its nats-server).

use anyhow::Context;
use souk_jobs::{
    Job, JobState, Submission,
    parse::{self, Format},
    record::{self, Cancelled},
    seed::{self, SeedOptions},
};
use souk_stores::postgres as pg;
use souk_topologies::publisher::Publisher;
use std::{path::Path, process::ExitCode, time::Duration};
use uuid::Uuid;

use crate::{app, config::Config};

/// Exit codes of `souk jobs` and `souk seed` (also in `souk jobs --help`).
pub mod exit {
    /// Done: the command did what it was asked (`follow`: the job ended `done`).
    pub const OK: u8 = 0;
    /// The job failed (`follow`), or an unexpected error.
    pub const FAILED: u8 = 1;
    /// Bad usage or input: unknown arguments, a file refused as a whole.
    pub const USAGE: u8 = 2;
    /// No such job.
    pub const NOT_FOUND: u8 = 3;
    /// The job was cancelled (`follow`).
    pub const CANCELLED: u8 = 4;
    /// Postgres or NATS could not be reached.
    pub const UNAVAILABLE: u8 = 5;
}

/// Help text listing the exit codes.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0  ok (follow: the job is done)
  1  the job failed (follow), or an unexpected error
  2  bad usage or input (a file refused as a whole: not UTF-8, wrong CSV columns, too large)
  3  no such job
  4  the job was cancelled (follow)
  5  Postgres or NATS unavailable (is `souk dev` running with this --data-dir?)";

/// An error with the exit code it means.
#[derive(Debug)]
pub struct Exit(pub u8, pub anyhow::Error);

pub(crate) type Result<T> = std::result::Result<T, Exit>;

pub(crate) fn unavailable(e: impl Into<anyhow::Error>) -> Exit {
    Exit(exit::UNAVAILABLE, e.into())
}

/// A `souk_jobs::Error` as an exit: a store that cannot be reached is "unavailable".
fn store_error(e: souk_jobs::Error) -> Exit {
    match &e {
        souk_jobs::Error::Db(sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_)) => {
            unavailable(e)
        }
        _ => Exit(exit::FAILED, e.into()),
    }
}

pub(crate) async fn database(config: &Config) -> Result<sqlx::PgPool> {
    let config = app::operated_database(config).map_err(unavailable)?;
    let pool = pg::connect(&app::pg_options(&config)).map_err(unavailable)?;
    // Fail now, with a clear message, rather than at the first query.
    pool.acquire().await.map_err(|e| {
        unavailable(
            anyhow::Error::new(e).context(format!("Postgres at {}", pg::redact(&config.database_url))),
        )
    })?;
    Ok(pool)
}

pub(crate) fn who() -> String {
    souk_stores::operate::Actor::local().0
}

fn print_job(job: &Job, json: bool) {
    if json {
        out!("{}", serde_json::to_string_pretty(job).unwrap_or_default());
        return;
    }
    let p = job.progress;
    out!(
        "{} {} {} rows {}/{} done, {} failed{}{}",
        job.id,
        job.kind,
        job.state,
        p.done,
        p.total,
        p.failed,
        job.seller.as_deref().map(|s| format!(" seller={s}")).unwrap_or_default(),
        job.error.as_deref().map(|e| format!(" error: {e}")).unwrap_or_default()
    );
}

/// `souk jobs submit catalog-import`.
pub async fn submit_import(
    config: &Config,
    tenant: &str,
    seller: &str,
    file: &Path,
    format: Option<Format>,
    json: bool,
) -> Result<ExitCode> {
    if let Err(why) = souk_pipelines::catalog::check_seller_id(seller) {
        return Err(Exit(exit::USAGE, anyhow::anyhow!("--seller: {why}")));
    }
    let format = format.or_else(|| Format::from_path(file)).ok_or_else(|| {
        Exit(
            exit::USAGE,
            anyhow::anyhow!(
                "cannot tell the format of {}: name it .jsonl or .csv, or pass --format",
                file.display()
            ),
        )
    })?;
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))
        .map_err(|e| Exit(exit::USAGE, e))?
        .len();
    if size > parse::MAX_FILE_BYTES as u64 {
        let e = parse::FileError::TooLarge { size: usize::try_from(size).unwrap_or(usize::MAX) };
        return Err(Exit(exit::USAGE, anyhow::Error::new(e).context(file.display().to_string())));
    }
    let bytes = std::fs::read(file)
        .with_context(|| format!("reading {}", file.display()))
        .map_err(|e| Exit(exit::USAGE, e))?;
    let parsed = parse::parse(&bytes, format)
        .map_err(|e| Exit(exit::USAGE, anyhow::Error::new(e).context(file.display().to_string())))?;
    for e in &parsed.errors {
        eprintln!("{}:{}: {}", file.display(), e.line, e.reason);
    }
    if parsed.rows.is_empty() {
        return Err(Exit(
            exit::USAGE,
            anyhow::anyhow!("no valid rows in {} ({} refused)", file.display(), parsed.errors.len()),
        ));
    }
    let pool = database(config).await?;
    let submission = Submission::CatalogImport { seller: seller.to_owned(), parsed };
    let job = souk_jobs::submit(&pool, tenant, &who(), submission).await.map_err(store_error)?;
    let job = record::get_with_errors(&pool, None, job.id).await.map_err(store_error)?.unwrap_or(job);
    print_job(&job, json);
    Ok(ExitCode::SUCCESS)
}

/// `souk jobs submit reindex`.
pub async fn submit_reindex(config: &Config, tenant: &str, json: bool) -> Result<ExitCode> {
    let pool = database(config).await?;
    let job = souk_jobs::submit(&pool, tenant, &who(), Submission::Reindex).await.map_err(store_error)?;
    print_job(&job, json);
    Ok(ExitCode::SUCCESS)
}

pub async fn list(config: &Config, tenant: Option<&str>, limit: i64, json: bool) -> Result<ExitCode> {
    let pool = database(config).await?;
    let jobs = record::list(&pool, tenant, limit.clamp(1, 1000)).await.map_err(store_error)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&jobs).unwrap_or_default());
    } else if jobs.is_empty() {
        out!("no jobs");
    }
    if !json {
        for job in &jobs {
            print_job(job, false);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn find(pool: &sqlx::PgPool, id: &str) -> Result<Job> {
    let not_found = || Exit(exit::NOT_FOUND, anyhow::anyhow!("no job {id}"));
    let id = Uuid::parse_str(id).map_err(|_| not_found())?;
    record::get_with_errors(pool, None, id).await.map_err(store_error)?.ok_or_else(not_found)
}

pub async fn show(config: &Config, id: &str, json: bool) -> Result<ExitCode> {
    let pool = database(config).await?;
    let job = find(&pool, id).await?;
    print_job(&job, json);
    if !json {
        for e in &job.errors {
            out!("  line {}: {}", e.line, e.reason);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(config: &Config, id: &str, json: bool) -> Result<ExitCode> {
    let pool = database(config).await?;
    let job = find(&pool, id).await?;
    let what = record::cancel(&pool, None, job.id).await.map_err(store_error)?;
    let job = find(&pool, id).await?;
    match (what, json) {
        (_, true) => print_job(&job, true),
        (Cancelled::Now, false) => out!("{} cancelled", job.id),
        (Cancelled::Requested, false) => out!("{} stops at its next chunk", job.id),
        (Cancelled::AlreadyFinal(state), false) => out!("{} had already ended: {state}", job.id),
        (Cancelled::NotFound, false) => return Err(Exit(exit::NOT_FOUND, anyhow::anyhow!("no job {id}"))),
    }
    Ok(ExitCode::SUCCESS)
}

/// Draw progress until the job ends; the exit code says how it ended.
pub async fn follow(config: &Config, id: &str, json: bool) -> Result<ExitCode> {
    use indicatif::{ProgressBar, ProgressStyle};
    let pool = database(config).await?;
    let mut job = find(&pool, id).await?;
    let bar = ProgressBar::new(u64::try_from(job.progress.total).unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{msg:10} [{bar:40}] {pos}/{len} rows  {per_sec}  ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // Rows already done before we started watching do not count toward the rate.
    bar.set_position(rows(&job));
    bar.reset_elapsed();
    let mut unreachable_since = None;
    while !job.state.is_final() {
        tokio::time::sleep(Duration::from_millis(200)).await;
        match record::get(&pool, None, job.id).await {
            Ok(Some(j)) => {
                job = j;
                unreachable_since = None;
            }
            Ok(None) => return Err(Exit(exit::NOT_FOUND, anyhow::anyhow!("job {id} vanished"))),
            // A blip is waited out; a lasting outage ends the command.
            Err(e) => {
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(30) {
                    return Err(store_error(e));
                }
            }
        }
        bar.set_length(u64::try_from(job.progress.total).unwrap_or(0));
        bar.set_position(rows(&job));
        bar.set_message(job.state.to_string());
    }
    bar.finish_and_clear();
    let job = find(&pool, id).await?;
    print_job(&job, json);
    Ok(ExitCode::from(match job.state {
        JobState::Done => exit::OK,
        JobState::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    }))
}

fn rows(job: &Job) -> u64 {
    u64::try_from(job.progress.done + job.progress.failed).unwrap_or(0)
}

/// `souk seed catalog`.
pub async fn seed_catalog(config: &Config, options: SeedOptions, json: bool) -> Result<ExitCode> {
    if options.products == 0 || options.sellers == 0 {
        return Err(Exit(exit::USAGE, anyhow::anyhow!("--products and --sellers must be at least 1")));
    }
    let url = app::nats_url(config).map_err(unavailable)?;
    let nats = app::connect_nats(&url).await.map_err(unavailable)?;
    let publisher = Publisher::new(nats.clone(), config.write_timeout);
    let bar = indicatif::ProgressBar::new(options.products as u64);
    let started = std::time::Instant::now();
    let stored = seed::publish(&publisher, &options, |n| bar.set_position(n as u64))
        .await
        .map_err(|e| if e.is_permanent() { Exit(exit::FAILED, e.into()) } else { unavailable(e) })?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if json {
        let v = serde_json::json!({"products": stored, "sellers": options.sellers, "seed": options.seed,
            "tenant": options.tenant, "seconds": seconds});
        out!("{v}");
    } else {
        out!(
            "{stored} products of {} sellers published to tenant {} (seed {}) in {seconds:.1}s",
            options.sellers,
            options.tenant,
            options.seed
        );
    }
    let _ = nats.flush().await;
    Ok(ExitCode::SUCCESS)
}
