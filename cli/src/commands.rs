//! One-shot commands: token, topology, migrate, status, dlq, config.

use anyhow::{Context, bail};
use souk_ingress::{Claims, Role};
use souk_stores::postgres::{self as pg, outbox::PgOutbox};
use souk_topologies::{
    apply::{self, Mode},
    runtime::BreakerState,
    status,
};
use std::{process::ExitCode, time::Duration};

/// How long `souk status` waits for worker processes to report their pools.
const POOL_STATUS_WAIT: Duration = Duration::from_millis(500);

use crate::{app, config::Config};

/// Longest life `souk token` mints.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(366 * 24 * 3600);

pub fn token(
    config: &Config,
    sub: &str,
    roles: &[String],
    sellers: &[String],
    tenant: &str,
    ttl: Duration,
) -> anyhow::Result<ExitCode> {
    let roles = roles
        .iter()
        .map(|r| {
            serde_json::from_value::<Role>(serde_json::Value::String(r.clone())).with_context(|| {
                format!("unknown role {r:?}: use buyer, seller, support, admin, staff or operator")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let claims = Claims::new(sub, tenant, Vec::new(), ttl).with_sellers(sellers.to_vec());
    if let Err(why) = claims.check_identity() {
        bail!(
            "--sub, --tenant and --seller must be 1-{} characters without control characters (at most {} sellers): {why}",
            souk_ingress::auth::MAX_CLAIM_LEN,
            souk_ingress::auth::MAX_SELLERS
        );
    }
    if !sellers.is_empty() && !roles.contains(&Role::Seller) {
        bail!("--seller needs --role seller (an admin acts for every seller without one)");
    }
    // A dev token; a longer life is a mistake (and a huge one would overflow the expiry).
    if ttl.is_zero() || ttl > MAX_TOKEN_TTL {
        bail!(
            "--ttl must be between 1s and {}",
            humantime_serde::re::humantime::format_duration(MAX_TOKEN_TTL)
        );
    }
    // The configured keys, or the one `souk dev` generated: never a new one (a token
    // signed with a key nobody verifies with is no use).
    let keys = match config.jwt_keys.is_empty() {
        false => app::signing_keys(config, false)?,
        true if config.dev_key_path().exists() => app::signing_keys(config, true)?,
        true => bail!(
            "no signing key: configure jwt-keys, or start `souk dev` once with this --data-dir (it generates its development key)"
        ),
    };
    eprintln!(
        "souk token: a DEVELOPMENT token, signed with key {:?}; production tokens come from your identity provider",
        keys.kids().first().copied().unwrap_or_default()
    );
    out!("{}", keys.mint(&Claims::new(sub, tenant, roles, ttl).with_sellers(sellers.to_vec())));
    Ok(ExitCode::SUCCESS)
}

pub async fn topology_apply(config: &Config, check: bool) -> anyhow::Result<ExitCode> {
    let topology = app::load_topology(config)?;
    let nats = app::connect_nats(&app::nats_url(config)?).await?;
    let mode = if check { Mode::Check } else { Mode::Apply };
    let report = apply::apply(&app::jetstream(&nats), &topology, mode).await?;
    out_raw!("{report}");
    Ok(if check && !report.in_sync() { ExitCode::from(2) } else { ExitCode::SUCCESS })
}

pub fn topology_show(config: &Config) -> anyhow::Result<ExitCode> {
    let t = app::load_topology(config)?;
    for s in &t.streams {
        out!(
            "stream {:<4} subjects={:?} retention={:?} purge-acked={} discard={:?} storage={:?} max-age={:?} max-bytes={} dup-window={:?} replicas={} atomic={}",
            s.name,
            s.subjects,
            s.retention,
            s.purge_acked,
            s.discard,
            s.storage,
            s.max_age,
            s.max_bytes,
            s.duplicate_window,
            s.replicas,
            s.allow_atomic
        );
    }
    for c in &t.consumers {
        out!(
            "consumer {} on {} filter={:?} ack-wait={:?} max-deliver={} backoff={:?} max-ack-pending={}",
            c.name,
            c.stream,
            c.filter_subjects,
            c.ack_wait,
            c.max_deliver,
            c.backoff,
            c.max_ack_pending
        );
    }
    for p in &t.pools {
        out!(
            "pool {} consumer={} handler={} concurrency={} fetch-batch={} handler-timeout={:?} drain-timeout={:?}",
            p.name,
            p.consumer,
            p.handler,
            p.concurrency,
            p.fetch_batch,
            p.handler_timeout,
            p.drain_timeout
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn migrate(config: &Config) -> anyhow::Result<ExitCode> {
    pg::ensure_database(&config.database_url).await?;
    pg::migrate(&pg::connect(&app::pg_options(config))?).await?;
    out!("migrations applied to {}", pg::redact(&config.database_url));
    Ok(ExitCode::SUCCESS)
}

pub async fn status(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let topology = app::load_topology(config)?;
    let nats = app::connect_nats(&app::nats_url(config)?).await?;
    let mut pipeline = status::read(&app::jetstream(&nats), &topology).await?;
    let indexes = souk_workers::catalog::lag::read(&app::jetstream(&nats), &topology).await?;
    // Breakers live in the worker processes: whichever answer within the wait.
    match status::read_pools(&nats, POOL_STATUS_WAIT).await {
        Ok(pools) => pipeline.set_pools(pools),
        Err(e) => eprintln!("pools: cannot ask the worker processes: {e}"),
    }
    // What operators set (paused, concurrency), also for pools no process runs now.
    let controls = match souk_topologies::control::Controls::existing(&app::jetstream(&nats)).await {
        Ok(Some(c)) => c.all().await?,
        Ok(None) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let pool = pg::connect(&app::pg_options(&app::operated_database(config)?))?;
    let outbox: Result<(i64, i64), sqlx::Error> = sqlx::query_as(
        "select count(*) filter (where parked_at is null), count(*) filter (where parked_at is not null)
         from outbox where published_at is null",
    )
    .fetch_one(&pool)
    .await;
    // The pipeline part is still shown when Postgres cannot be read, but the exit code
    // says the status is incomplete (scripts and probes check it).
    let code = if outbox.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if let Err(e) = &outbox {
        eprintln!("outbox: cannot read Postgres: {e}");
    }
    let (outbox_pending, outbox_parked) = (outbox.as_ref().ok().map(|o| o.0), outbox.ok().map(|o| o.1));
    if json {
        let v = serde_json::json!({
            "pipeline": pipeline,
            "search_indexes": indexes,
            "outbox_pending": outbox_pending,
            "outbox_parked": outbox_parked,
            "pool_controls": controls
                .iter()
                .map(|(name, settings)| serde_json::json!({ "pool": name, "settings": settings }))
                .collect::<Vec<_>>(),
        });
        out!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(code);
    }
    out!("{:<10} {:>12} {:>14} {:>12}", "STREAM", "MESSAGES", "BYTES", "LAST SEQ");
    for s in &pipeline.streams {
        out!("{:<10} {:>12} {:>14} {:>12}", s.name, s.messages, s.bytes, s.last_seq);
    }
    out!(
        "\n{:<18} {:<6} {:>10} {:>12} {:>12} {:>8}  {}",
        "CONSUMER",
        "STREAM",
        "LAG",
        "ACK PENDING",
        "REDELIVERED",
        "WAITING",
        "BREAKER"
    );
    for c in &pipeline.consumers {
        out!(
            "{:<18} {:<6} {:>10} {:>12} {:>12} {:>8}  {}",
            c.name,
            c.stream,
            c.pending,
            c.ack_pending,
            c.redelivered,
            c.waiting,
            c.breaker.map_or("- (no worker answered)", |b| b.as_str())
        );
    }
    if !pipeline.pools.is_empty() {
        out!(
            "\n{:<22} {:<8} {:>11} {:>9}  {}",
            "POOL (per process)",
            "STATE",
            "CONCURRENCY",
            "IN FLIGHT",
            "BREAKER"
        );
    }
    for p in &pipeline.pools {
        out!(
            "{:<22} {:<8} {:>11} {:>9}  {}",
            p.name,
            p.activity.as_str(),
            p.concurrency,
            p.in_flight,
            p.breaker
        );
    }
    for (name, settings) in &controls {
        out!(
            "pool {name}: {}{} (set by {} at {})",
            if settings.paused { "paused" } else { "running" },
            settings.concurrency.map(|n| format!(", concurrency {n}")).unwrap_or_default(),
            settings.changed_by,
            settings.changed_at
        );
    }
    for p in pipeline.pools.iter().filter(|p| p.breaker != BreakerState::Closed) {
        out!(
            "pool {}: breaker {}: {}",
            p.name,
            p.breaker,
            p.last_error.as_deref().unwrap_or("unknown error")
        );
    }
    if !indexes.is_empty() {
        out!("\n{:<10} {:<18} {:>12} {:>12}", "INDEX", "CONSUMER", "LAG EVENTS", "LAG SECONDS");
        for i in &indexes {
            out!("{:<10} {:<18} {:>12} {:>12.1}", i.index, i.consumer, i.events, i.seconds);
        }
    }
    match outbox_pending {
        Some(n) => out!("\noutbox: {n} unpublished, {} parked", outbox_parked.unwrap_or(0)),
        None => out!("\noutbox: unknown (Postgres unreachable)"),
    }
    Ok(code)
}

pub async fn outbox_parked(config: &Config, json: bool, limit: usize) -> anyhow::Result<ExitCode> {
    let config = app::operated_database(config)?;
    let outbox = PgOutbox::new(pg::connect(&app::pg_options(&config))?, &config.database_url);
    let parked = outbox.parked(i64::try_from(limit).unwrap_or(i64::MAX)).await?;
    if json {
        out!("{}", serde_json::to_string_pretty(&parked)?);
        return Ok(ExitCode::SUCCESS);
    }
    if parked.is_empty() {
        out!("no parked outbox rows");
    }
    for p in &parked {
        out!(
            "#{} {} aggregate={} subject={} tries={} id={}\n    {}",
            p.seq,
            p.parked_at,
            p.aggregate_id,
            p.subject,
            p.tries,
            p.id,
            p.last_error.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn outbox_requeue(config: &Config, aggregate: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = app::operated_database(config)?;
    let outbox = PgOutbox::new(pg::connect(&app::pg_options(&config))?, &config.database_url);
    let n = outbox.requeue(aggregate).await?;
    out!("{n} outbox rows requeued");
    Ok(ExitCode::SUCCESS)
}

pub fn config_check(config: &Config) -> anyhow::Result<ExitCode> {
    app::load_topology(config)?;
    let mut shown = config.clone();
    shown.database_url = pg::redact(&shown.database_url);
    shown.nats_url = shown.nats_url.as_deref().map(app::redact_nats);
    shown.otlp_endpoint = shown.otlp_endpoint.as_deref().map(app::redact_nats);
    shown.search.opensearch_url = shown.search.opensearch_url.as_deref().map(app::redact_nats);
    shown.payments.primary_url = shown.payments.primary_url.as_deref().map(app::redact_nats);
    shown.payments.secondary_url = shown.payments.secondary_url.as_deref().map(app::redact_nats);
    out_raw!("{}", toml::to_string(&shown)?);
    out!("# configuration and topology are valid");
    Ok(ExitCode::SUCCESS)
}
