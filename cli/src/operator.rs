//! `souk dlq …` and `souk pool …`: operators' commands. Thin: arguments in, a call to
//! `souk_stores::operate` (which records each action in `operator_actions`), a report out.
//! Like `souk status`, they find a running `souk dev` by `--data-dir`.

use anyhow::{Context, anyhow};
use souk_ingress::Role;
use souk_stores::operate::{self, Actor};
use souk_stores::postgres as pg;
use souk_topologies::{
    control::{Change, Controls},
    dead_letters::{self, Filter, Selection},
    publisher::Publisher,
};
use std::{process::ExitCode, time::SystemTime};

use crate::{
    app,
    config::Config,
    jobs::{Exit, exit},
};

type Result<T> = std::result::Result<T, Exit>;

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit(exit::USAGE, e.into())
}

fn unavailable(e: impl Into<anyhow::Error>) -> Exit {
    Exit(exit::UNAVAILABLE, e.into())
}

fn failed(e: operate::Error) -> Exit {
    match e {
        operate::Error::Input(_) => Exit(exit::USAGE, e.into()),
        operate::Error::Db(_) => Exit(exit::UNAVAILABLE, e.into()),
        e => Exit(exit::FAILED, e.into()),
    }
}

/// The dead-letter filter options, as given.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FilterArgs {
    /// Only dead letters of this consumer.
    #[arg(long)]
    pub consumer: Option<String>,
    /// Only those whose error contains this text (case-insensitive).
    #[arg(long)]
    pub error: Option<String>,
    /// Dead-lettered at or after: RFC 3339 (2026-05-01T10:00:00Z) or a time ago (2h, 30m).
    #[arg(long)]
    pub since: Option<String>,
    /// Dead-lettered at or before: RFC 3339 or a time ago.
    #[arg(long)]
    pub until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Result<Filter> {
        Ok(Filter {
            consumer: self.consumer.clone(),
            error: self.error.clone(),
            since: self.since.as_deref().map(parse_time).transpose().map_err(usage)?,
            until: self.until.as_deref().map(parse_time).transpose().map_err(usage)?,
        })
    }
}

/// RFC 3339, or a duration meaning that long ago.
fn parse_time(s: &str) -> anyhow::Result<SystemTime> {
    operate::parse_time(s).map_err(|e| anyhow!(e))
}

/// The selection of a redrive or purge: sequences, a filter, or `--all` (one of them).
fn selection(seqs: &[u64], filter: &FilterArgs, all: bool) -> Result<Selection> {
    let filter = filter.filter()?;
    match (seqs.is_empty(), filter.is_empty(), all) {
        (false, true, false) => Ok(Selection::Seqs(seqs.to_vec())),
        (true, false, false) => Ok(Selection::Matching(filter)),
        (true, true, true) => Ok(Selection::All),
        (true, true, false) => Err(usage(anyhow!(
            "name dead letters: SEQ…, filters (--consumer, --error, --since, --until) or --all"
        ))),
        _ => Err(usage(anyhow!("give sequences, filters or --all: one of them"))),
    }
}

/// Who acts: the operator token's subject (checked: signature, expiry, role operator
/// or admin), else the local user.
pub(crate) fn actor(config: &Config, token: Option<&str>) -> Result<Actor> {
    let Some(token) = token else { return Ok(Actor::local()) };
    let keys = match config.jwt_keys.is_empty() {
        false => app::signing_keys(config, false),
        true if config.dev_key_path().exists() => app::signing_keys(config, true),
        true => Err(anyhow!("--token given but no key to verify it: configure jwt-keys")),
    }
    .map_err(usage)?;
    let claims = keys.verify(token).map_err(|e| usage(anyhow!("--token: {e}")))?;
    if !claims.has(Role::Operator) && !claims.has(Role::Admin) {
        return Err(usage(anyhow!("--token: {} is not an operator (role operator or admin)", claims.sub)));
    }
    Ok(Actor(claims.sub))
}

async fn nats(config: &Config) -> Result<async_nats::Client> {
    app::connect_nats(&app::nats_url(config).map_err(unavailable)?).await.map_err(unavailable)
}

async fn database(config: &Config) -> Result<sqlx::PgPool> {
    let config = app::operated_database(config).map_err(unavailable)?;
    let pool = pg::connect(&app::pg_options(&config)).map_err(unavailable)?;
    pool.acquire().await.map_err(|e| {
        unavailable(
            anyhow::Error::new(e).context(format!("Postgres at {}", pg::redact(&config.database_url))),
        )
    })?;
    Ok(pool)
}

/// Write a line even when stdout is gone (`| head`): an action must not stop halfway.
fn line(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

pub async fn dlq_list(config: &Config, filter: &FilterArgs, json: bool, limit: usize) -> Result<ExitCode> {
    let filter = filter.filter()?;
    let nats = nats(config).await?;
    let letters = dead_letters::list_filtered(&app::jetstream(&nats), &filter, limit)
        .await
        .map_err(|e| Exit(exit::FAILED, e.into()))?;
    if json {
        out!("{}", serde_json::to_string_pretty(&letters).map_err(|e| Exit(exit::FAILED, e.into()))?);
        return Ok(ExitCode::SUCCESS);
    }
    if letters.is_empty() {
        out!("no dead letters");
    }
    for d in &letters {
        out!(
            "#{} consumer={} subject={} attempts={} redrives={} trace={} bytes={}\n    first failure {}, last {}\n    {}",
            d.seq,
            d.consumer,
            d.subject,
            d.attempts,
            d.redrives,
            d.trace_id,
            d.payload_bytes,
            d.first_failure,
            d.last_failure,
            d.error
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn dlq_show(config: &Config, seq: u64, json: bool) -> Result<ExitCode> {
    let nats = nats(config).await?;
    let d = dead_letters::show(&app::jetstream(&nats), seq).await.map_err(|e| failed(e.into()))?;
    let fail = |e: serde_json::Error| Exit(exit::FAILED, e.into());
    if json {
        out!("{}", serde_json::to_string_pretty(&d).map_err(fail)?);
        return Ok(ExitCode::SUCCESS);
    }
    let l = &d.letter;
    out!("dead letter #{} of consumer {} (subject {})", l.seq, l.consumer, l.subject);
    out!("attempts {}, redrives {}, trace {}", l.attempts, l.redrives, l.trace_id);
    out!("first failure {}, last {}", l.first_failure, l.last_failure);
    out!("error: {}\n\nheaders:", l.error);
    for (name, value) in &d.headers {
        out!("  {name}: {value}");
    }
    out!("\nbody ({} bytes):", l.payload_bytes);
    match (&d.body_json, &d.body_text) {
        (Some(v), _) => out!("{}", serde_json::to_string_pretty(v).map_err(fail)?),
        (None, Some(text)) => out!("{text}"),
        (None, None) => {}
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn dlq_redrive(
    config: &Config,
    seqs: &[u64],
    filter: &FilterArgs,
    all: bool,
    token: Option<&str>,
) -> Result<ExitCode> {
    let selection = selection(seqs, filter, all)?;
    let actor = actor(config, token)?;
    let nats = nats(config).await?;
    let db = database(config).await?;
    let publisher = Publisher::new(nats.clone(), config.write_timeout);
    let report = operate::redrive(&publisher, &db, &actor, &selection).await.map_err(failed)?;
    for r in &report.redriven {
        line(&format!(
            "#{} redriven to {} as {} seq {} (redrive {}{})",
            r.seq,
            r.subject,
            r.stream,
            r.stream_seq,
            r.redrives,
            if r.duplicate { ", already stored by an earlier try" } else { "" }
        ));
    }
    for (seq, e) in &report.failed {
        eprintln!("#{seq} not redriven (kept in the DLQ): {e}");
    }
    line(&format!(
        "{} redriven, {} failed; recorded as operator action {} by {}",
        report.redriven.len(),
        report.failed.len(),
        report.action_id,
        actor.0
    ));
    Ok(if report.failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

pub async fn dlq_purge(
    config: &Config,
    seqs: &[u64],
    filter: &FilterArgs,
    all: bool,
    yes: bool,
    token: Option<&str>,
) -> Result<ExitCode> {
    let selection = selection(seqs, filter, all)?;
    let actor = actor(config, token)?;
    let nats = nats(config).await?;
    let js = app::jetstream(&nats);
    let db = database(config).await?;
    let letters = operate::purge_preview(&js, &selection).await.map_err(failed)?;
    if letters.is_empty() {
        line("no dead letters match; nothing purged");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes && !confirm(&letters)? {
        eprintln!("souk: not confirmed; nothing purged");
        return Ok(ExitCode::from(exit::FAILED));
    }
    let report = operate::purge(&js, &db, &actor, &selection, &letters).await.map_err(failed)?;
    line(&format!(
        "{} purged, {} already gone; recorded as operator action {} by {}",
        report.purged.deleted.len(),
        report.purged.gone.len(),
        report.action_id,
        actor.0
    ));
    match &report.purged.error {
        Some(e) => {
            eprintln!("souk: purge stopped: {e}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Ask on the terminal; anything but y/yes (or no answer) is no.
fn confirm(letters: &[dead_letters::DeadLetter]) -> Result<bool> {
    let shown: Vec<String> =
        letters.iter().take(20).map(|d| format!("#{} ({})", d.seq, d.consumer)).collect();
    eprint!(
        "purge {} dead letter(s): {}{}? They cannot be recovered. [y/N] ",
        letters.len(),
        shown.join(", "),
        if letters.len() > 20 { ", …" } else { "" }
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).context("reading the confirmation").map_err(usage)?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

pub async fn pool_change(
    config: &Config,
    pool: &str,
    change: Change,
    token: Option<&str>,
) -> Result<ExitCode> {
    let topology = app::load_topology(config).map_err(usage)?;
    let actor = actor(config, token)?;
    let nats = nats(config).await?;
    let db = database(config).await?;
    let replicas = topology.streams.iter().map(|s| s.replicas).max().unwrap_or(1);
    let controls = Controls::open(&app::jetstream(&nats), replicas).await.map_err(unavailable)?;
    let (before, after) =
        operate::change_pool(&controls, &topology, &db, &actor, pool, change).await.map_err(failed)?;
    let show = |s: &souk_topologies::control::PoolSettings| {
        format!(
            "{}, concurrency {}",
            if s.paused { "paused" } else { "running" },
            s.concurrency.map_or_else(|| "as in the topology".to_owned(), |n| n.to_string())
        )
    };
    line(&format!("pool {pool}: {} (was {}); by {}", show(&after), show(&before), actor.0));
    line("every process running it follows within a pull (≤ 5 s); `souk status` shows each one's state");
    Ok(ExitCode::SUCCESS)
}
