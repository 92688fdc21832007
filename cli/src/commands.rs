//! One-shot commands: token, topology, migrate, status, dlq, config; and `souk dashboard`.

use anyhow::{Context, bail};
use souk_ingress::{Claims, Role};
use souk_stores::postgres::{self as pg, outbox::PgOutbox};
use souk_topologies::{
    apply::{self, Mode},
    status,
};
use std::{process::ExitCode, time::Duration};

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

/// `souk status`: the engine's status model, as tables or JSON, once or every `watch`.
pub async fn status(config: &Config, json: bool, watch: Option<Duration>) -> anyhow::Result<ExitCode> {
    let topology = app::load_topology(config)?;
    let nats = app::connect_nats(&app::nats_url(config)?).await?;
    let js = app::jetstream(&nats);
    let database = app::operated_database(config)?;
    let outbox = PgOutbox::new(pg::connect(&app::pg_options(&database))?, &database.database_url);
    let colour =
        std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none();
    loop {
        let model = status::model::read(&js, &topology, Some(&outbox), true).await?;
        let indexes = souk_workers::catalog::lag::read(&js, &topology).await?;
        if json {
            // The model as `pipeline` (each consumer keeps `name`, `pending`,
            // `ack_pending`), and the outbox counts where scripts read them before.
            let v = serde_json::json!({
                "pipeline": model,
                "search_indexes": indexes,
                "outbox_pending": model.outbox.map(|o| o.unpublished),
                "outbox_parked": model.outbox.map(|o| o.parked),
            });
            match watch {
                // One JSON document per line, per refresh.
                Some(_) => out!("{}", serde_json::to_string(&v)?),
                None => out!("{}", serde_json::to_string_pretty(&v)?),
            }
        } else {
            if watch.is_some() && colour {
                out_raw!("\x1b[2J\x1b[H");
            }
            out_raw!("{}", crate::status_view::render(&model, &indexes, colour));
        }
        // The pipeline part is shown even when some part could not be read, but the
        // exit code says the status is incomplete (scripts and probes check it).
        let code = if model.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        for problem in &model.problems {
            eprintln!("status incomplete: {problem}");
        }
        let Some(every) = watch else { return Ok(code) };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(code),
            () = tokio::time::sleep(every) => {}
        }
        if !json && !colour {
            out!("");
        }
    }
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

/// Serve the operators' dashboard alone on `listen` until Ctrl-C. Tokens are verified
/// with the configured `jwt-keys`, else with the key of the `souk dev` of the data dir
/// (never generated here).
pub async fn dashboard(config: &Config, listen: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let topology = app::load_topology(config)?;
    let nats = app::connect_nats(&app::nats_url(config)?).await?;
    let database = app::operated_database(config)?;
    let pool = pg::connect(&app::pg_options(&database))?;
    if config.jwt_keys.is_empty() && !config.dev_key_path().exists() {
        bail!(
            "no key to verify operator tokens: configure jwt-keys, or start `souk dev` with the same --data-dir"
        );
    }
    let keys = app::signing_keys(config, config.jwt_keys.is_empty())?;
    let cancel = tokio_util::sync::CancellationToken::new();
    let actions = tokio_util::task::TaskTracker::new();
    let router = souk_dashboard::router(souk_dashboard::DashboardOptions {
        nats,
        pool,
        database_url: database.database_url.clone(),
        topology,
        keys,
        write_timeout: config.write_timeout,
        refresh: souk_dashboard::DEFAULT_REFRESH,
        cancel: cancel.clone(),
        actions: actions.clone(),
    });
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    out!(
        "souk dashboard: http://{}/ops/ (log in with a token from `souk token --sub you --role operator`)",
        listener.local_addr()?
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            cancel.cancel();
        })
        .await
        .context("serving the dashboard")?;
    souk_dashboard::finish_actions(&actions, souk_dashboard::ACTIONS_DRAIN).await;
    Ok(ExitCode::SUCCESS)
}
