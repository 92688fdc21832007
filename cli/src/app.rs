//! Long-running roles: `dev` (everything), `ingress`, `worker`.

use anyhow::{Context, bail};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use souk_cli::node::{Node, NodeOptions, builtin_topology};
use souk_ingress::{Claims, IntakeOptions, Keys, Role as AuthRole};
use souk_stores::postgres::{self as pg, PgOptions};
use souk_topologies::{
    Topology,
    apply::{self, Mode},
    local_server,
};
use std::{process::ExitCode, time::Duration};
use tokio::process::Child;

use crate::config::Config;

/// Which parts this process runs.
#[derive(Debug)]
pub enum Role {
    Dev,
    /// The ingress, and these pools (none if empty).
    Ingress {
        pools: Vec<String>,
    },
    Worker {
        pools: Vec<String>,
        relay: bool,
    },
}

pub async fn run(mut config: Config, role: Role) -> anyhow::Result<ExitCode> {
    // Caught from the very start: a signal during start-up then ends it cleanly once it
    // is done, instead of killing the process and orphaning the nats-server it started
    // (which runs in its own process group).
    let mut signals = Signals::install()?;
    let telemetry = souk_topologies::trace::install_subscriber(
        config.log_json,
        &souk_topologies::trace::TelemetryOptions { otlp_endpoint: config.otlp_endpoint.clone() },
    )?;
    // Before anything is started: a production process without configured keys must
    // not come up at all (it would accept no token, or one nobody can rotate).
    let keys = signing_keys(&config, matches!(role, Role::Dev))?;
    let metrics = install_metrics()?;
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data dir {}", config.data_dir.display()))?;
    let dev = matches!(role, Role::Dev);
    // One `souk dev` per data dir: a second would start a second nats-server on the
    // same store. Held (and released by the OS) for the life of the process.
    let _dev_lock = if dev { Some(lock_data_dir(&config)?) } else { None };
    // A data dir with its own nats-server is a deployment of its own: its database too.
    let private_database = dev && config.nats_url.is_none() && !config.database_named;
    if private_database {
        config.database_url = data_dir_database(&config)?;
    }

    // NATS: the configured server, or (dev) our own under the data dir.
    let mut local_nats: Option<Child> = None;
    let nats_url = match (&config.nats_url, dev) {
        (Some(url), _) => url.clone(),
        (None, true) => {
            let (child, url) = start_local_nats(&config).await?;
            local_nats = Some(child);
            url
        }
        (None, false) => bail!("set SOUK_NATS_URL (or nats-url in souk.toml) to the NATS server to use"),
    };
    let nats = connect_nats(&nats_url).await?;
    let topology = load_topology(&config)?;
    let pool = pg::connect(&pg_options(&config))?;
    if dev {
        pg::ensure_database(&config.database_url).await.with_context(|| {
            format!(
                "creating the database {} (the role needs CREATEDB; or name an existing one with SOUK_DATABASE_URL)",
                pg::redact(&config.database_url)
            )
        })?;
        pg::migrate(&pool).await.context("migrating the database")?;
        let report = apply::apply(&jetstream(&nats), &topology, Mode::Apply).await?;
        tracing::info!(in_sync = report.in_sync(), "topology applied\n{report}");
    }
    if !dev {
        let (needed, applied) =
            pg::schema_versions(&pool).await.context("reading the database's schema version")?;
        if applied.is_none_or(|v| v < needed) {
            bail!(
                "the database {} is at migration {} and this release needs {needed}: run `souk migrate` first",
                pg::redact(&config.database_url),
                applied.map_or_else(|| "none".to_owned(), |v| v.to_string())
            );
        }
    }
    claim_database(&config, &nats, &pool, &topology, private_database).await?;

    let (ingress, pools, relay) = match role {
        Role::Dev => (true, Some(Vec::new()), true),
        Role::Ingress { pools } => (true, (!pools.is_empty()).then_some(pools), false),
        Role::Worker { pools, relay } => (false, Some(pools), relay),
    };
    let ingress = match ingress {
        true => {
            let listener = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .with_context(|| format!("binding {}", config.http_addr))?;
            Some((listener, keys.clone()))
        }
        false => None,
    };
    // The search index. Embedded (tantivy): opened by the one process running the
    // indexer pool, which also serves search from it; an ingress without that pool
    // answers /v1/search with 503. OpenSearch: by every process that indexes or serves.
    let backend = config.search_backend();
    let indexes = souk_cli::node::runs_indexer(&topology, pools.as_deref());
    let serves = ingress.is_some() && matches!(backend, souk_cli::node::SearchBackend::OpenSearch(_));
    let search = match indexes || serves {
        true => Some(souk_cli::node::open_search(&backend).await?),
        false => None,
    };
    if ingress.is_some() && search.is_none() {
        tracing::warn!(
            "GET /v1/search answers 503 from this process: the embedded index is served by the process running \
             the catalog-index pool (`souk ingress --pool catalog-index`), or set search.opensearch-url"
        );
    }
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some((
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?,
            metrics,
        )),
        None => None,
    };
    let (payments, sandboxes) = match souk_cli::node::runs_payments(&topology, pools.as_deref()) {
        true => {
            check_payment_budget(&config, &topology)?;
            let (specs, sandboxes) = payment_providers(&config, dev).await?;
            let retry =
                souk_workers::payments::RetryOptions { budget: config.payments.budget, ..Default::default() };
            (Some(souk_cli::node::payment_gateway(&specs, retry, pool.clone())?), sandboxes)
        }
        false => (None, Vec::new()),
    };
    let sandbox_urls: Vec<String> = sandboxes.iter().map(|s| s.url()).collect();
    let node = Node::start(NodeOptions {
        nats: nats.clone(),
        pool,
        payments,
        database_url: config.database_url.clone(),
        topology,
        write_timeout: config.write_timeout,
        ingress,
        intake: IntakeOptions::default(),
        catalog_max_backlog: config.catalog_max_backlog,
        rate_limit: config.rate_limit(),
        jobs: pools.is_some().then(souk_jobs::Tuning::default),
        pools,
        relay,
        metrics: metrics_listener,
        search,
        search_timeout: souk_ingress::search::SEARCH_TIMEOUT,
        public_tenant: config.public_tenant.clone(),
        status_history: Default::default(),
        // `souk dev` serves the dashboard beside the API; `souk ingress` does not
        // (`souk dashboard` serves it alone, wherever operators reach it).
        dashboard: dev.then_some(souk_dashboard::DEFAULT_REFRESH),
    })
    .await?;
    if let (true, Some(addr)) = (dev, node.http_addr) {
        print_banner(&config, &addr.to_string(), &redact_nats(&nats_url), &keys, &sandbox_urls);
    }

    // Until a signal, or until the nats-server this process started dies under it:
    // without it nothing can be accepted or handled, so souk stops (non-zero) rather
    // than stay up answering 503 with nobody to restart the server.
    let server_died = match local_nats.as_mut() {
        Some(child) => tokio::select! {
            () = signals.wait() => None,
            status = child.wait() => Some(status),
        },
        None => {
            signals.wait().await;
            None
        }
    };
    if let Some(status) = &server_died {
        tracing::error!(?status, "the local nats-server exited; stopping");
    }
    tracing::info!("shutting down: draining in-flight work");
    node.stop().await;
    for sandbox in sandboxes {
        sandbox.stop().await;
    }
    // Push out buffered acks; a flush waits for a connection, so not for ever.
    let _ = tokio::time::timeout(Duration::from_secs(5), nats.flush()).await;
    if let Some(child) = local_nats {
        local_server::stop(child).await;
    }
    tracing::info!("stopped");
    // Last: the spans of the drain above are exported too.
    telemetry.shutdown().await;
    Ok(if server_died.is_some() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// The JWT keys of this process: the configured `jwt-keys`; for `souk dev` without any,
/// its development key in the data dir (generated on first start). Nothing else ever
/// generates a key.
pub fn signing_keys(config: &Config, dev: bool) -> anyhow::Result<Keys> {
    if !config.jwt_keys.is_empty() {
        let files: Vec<_> = config.jwt_keys.iter().map(|k| (k.kid.clone(), k.file.clone())).collect();
        return Keys::from_files(&files).context("loading jwt-keys");
    }
    if dev {
        return Keys::load_or_generate_dev(&config.dev_key_path()).context("the development JWT key");
    }
    bail!(
        "no JWT signing keys configured: set jwt-keys in souk.toml \
         (jwt-keys = [{{ kid = \"2026-11\", file = \"/etc/souk/jwt-2026-11.key\" }}]) or SOUK_JWT_KEYS; \
         only `souk dev` generates a development key"
    )
}

fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
    Ok(PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)?
        .set_buckets_for_metric(Matcher::Suffix("_size".into()), &sizes)?
        .install_recorder()?)
}

/// The database of `config`'s data dir: `DATABASE_URL`'s (or the default's) server and
/// database name, suffixed with a hash of the canonical data dir
/// ([`pg::database_for_dir`]). Used when a `souk dev` runs its own nats-server, and by
/// the commands that find that server through the data dir.
/// The database the operator commands (`status`, `outbox`) read: the one the `souk dev`
/// of the data dir uses (found through it) unless a NATS URL or a named database says
/// the deployment is another one.
pub fn operated_database(config: &Config) -> anyhow::Result<Config> {
    let mut config = config.clone();
    if config.nats_url.is_none() && !config.database_named {
        config.database_url = data_dir_database(&config)?;
    }
    Ok(config)
}

pub fn data_dir_database(config: &Config) -> anyhow::Result<String> {
    let dir = std::fs::canonicalize(&config.data_dir)
        .with_context(|| format!("data dir {}", config.data_dir.display()))?;
    Ok(pg::database_for_dir(&config.database_url, &dir))
}

/// Claim the database for this process's deployment, or refuse to run: a database
/// shared by two deployments (two JetStreams) has one outbox and one relay lease, so one
/// deployment's relay would publish the other's events into its own EVT, and the
/// other's event consumers would starve. `take_over` for a data dir's own database,
/// which no other deployment can use (the data dir is locked): its JetStream was
/// re-created (a wiped `nats/` directory), and what is in the outbox goes to the new one.
async fn claim_database(
    config: &Config,
    nats: &async_nats::Client,
    pool: &sqlx::PgPool,
    topology: &Topology,
    take_over: bool,
) -> anyhow::Result<()> {
    let replicas = topology.streams.iter().map(|s| s.replicas).max().unwrap_or(1);
    let id = souk_cli::node::deployment_id(&jetstream(nats), replicas).await?;
    let db = pg::redact(&config.database_url);
    let claim = pg::deployment::claim(pool, &id, take_over).await.with_context(|| {
        format!("claiming {db} for deployment {id} (are its migrations applied? `souk migrate`)")
    })?;
    match claim {
        pg::deployment::Claim::Claimed => {
            tracing::info!(deployment = %id, "database claimed for this deployment")
        }
        pg::deployment::Claim::Ours => {}
        pg::deployment::Claim::TakenOver { previous } => tracing::warn!(
            deployment = %id, %previous,
            "the data dir's JetStream is new (its store was removed); its database now belongs to it"
        ),
        pg::deployment::Claim::Foreign { owner, claimed_at } => bail!(
            "database {db} belongs to another souk deployment ({owner}, since {claimed_at}), not to the one \
             behind this NATS server ({id}): sharing it, one deployment's relay would publish the other's \
             events. Give this deployment its own database (SOUK_DATABASE_URL; a `souk dev` with its own \
             nats-server gets one per data dir unless SOUK_DATABASE_URL or database-url in souk.toml names \
             one). If deployment {owner} is gone for good, release the database: `delete from deployment;`"
        ),
    }
    Ok(())
}

pub fn pg_options(config: &Config) -> PgOptions {
    let mut options = PgOptions::new(&config.database_url);
    options.max_connections = config.database_max_connections;
    options
}

pub fn load_topology(config: &Config) -> anyhow::Result<Topology> {
    Ok(match &config.topology {
        Some(path) => Topology::load(path)?,
        None => builtin_topology()?,
    })
}

pub fn jetstream(client: &async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::new(client.clone())
}

/// The NATS URL: configured, or the one a `souk dev` in the same data dir is using.
pub fn nats_url(config: &Config) -> anyhow::Result<String> {
    if let Some(url) = &config.nats_url {
        return Ok(url.clone());
    }
    local_server::running_url(&config.data_dir.join("nats"))
        .context("no NATS server: set SOUK_NATS_URL, or start `souk dev` with the same --data-dir")
}

pub async fn connect_nats(url: &str) -> anyhow::Result<async_nats::Client> {
    let connect = async_nats::ConnectOptions::new()
        .name("souk")
        .connection_timeout(Duration::from_secs(3))
        .connect(url);
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .context("connecting to NATS timed out")?
        .with_context(|| format!("connecting to NATS at {}", redact_nats(url)))
}

/// A NATS URL fit to print: its user info (`user:password@` or a bare token `token@`)
/// hidden.
pub fn redact_nats(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Lock `<data dir>/dev.lock`, or say which process holds it.
fn lock_data_dir(config: &Config) -> anyhow::Result<std::fs::File> {
    souk_cli::pid_lock::lock(&config.data_dir.join("dev.lock"))?.map_err(|holder| {
        anyhow::anyhow!(
            "another `souk dev` (pid {holder}) is running with data dir {}; stop it, or give this one its own --data-dir and --http-addr",
            config.data_dir.display()
        )
    })
}

async fn start_local_nats(config: &Config) -> anyhow::Result<(Child, String)> {
    let cwd = std::env::current_dir()?;
    let bin = local_server::find_binary(&cwd)
        .or_else(|| local_server::find_binary(&std::fs::canonicalize(&config.data_dir).ok()?))
        .context(
            "nats-server 2.15.x not found: run scripts/dev (it installs it), or set SOUK_NATS_SERVER_BIN",
        )?;
    let dir = config.data_dir.join("nats");
    std::fs::create_dir_all(&dir)?;
    let (child, port) = local_server::spawn(&bin, &dir, None).await?;
    Ok((child, format!("nats://127.0.0.1:{port}")))
}

/// SIGINT (Ctrl-C) and SIGTERM, listened for from the moment they are installed.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Until either arrives (or has arrived since `install`).
    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

/// The payment providers to call: the configured ones, or (`souk dev` without any) two
/// sandboxes started here, with a key generated into the data dir (never printed).
async fn payment_providers(
    config: &Config,
    dev: bool,
) -> anyhow::Result<(Vec<souk_workers::payments::ProviderSpec>, Vec<souk_sandbox::payments::PaymentSandbox>)>
{
    use souk_workers::payments::{HttpOptions, ProviderSpec};
    let p = &config.payments;
    let Some(primary) = &p.primary_url else {
        if !dev {
            bail!(
                "this process runs a payments pool but no payment provider is configured: set [payments] \
                 primary-url (and secondary-url) in souk.toml, or SOUK_PAYMENTS_PRIMARY_URL"
            );
        }
        let key = souk_sandbox::credentials::load_or_generate(&config.sandbox_key_path())
            .with_context(|| format!("the payment sandboxes' key {}", config.sandbox_key_path().display()))?;
        let (sandboxes, specs) =
            souk_cli::node::start_payment_sandboxes(Some(key), Default::default(), p.call_timeout).await?;
        return Ok((specs, sandboxes));
    };
    let api_key = match &p.credentials_file {
        Some(file) => Some(
            souk_sandbox::credentials::load(file)
                .with_context(|| format!("payments.credentials-file {}", file.display()))?,
        ),
        None => None,
    };
    let spec = |name: &str, url: &str, dialect| ProviderSpec {
        name: name.into(),
        dialect,
        http: HttpOptions {
            base_url: url.trim_end_matches('/').into(),
            api_key: api_key.clone(),
            timeout: p.call_timeout,
        },
    };
    let mut specs = vec![spec("primary", primary, p.primary_dialect)];
    if let Some(secondary) = &p.secondary_url {
        specs.push(spec("secondary", secondary, p.secondary_dialect));
    }
    Ok((specs, Vec::new()))
}

/// A payments handler must end before its pool's handler timeout, or the runtime takes
/// it for stuck and retries the command (counting toward max-deliver). Its worst case,
/// with two providers: the budget (the first check's status queries and every retry
/// inside it), then a failover begun just before the deadline — the primary's status
/// query, the secondary's call and its status query — and the give-up's status query of
/// both providers: budget + 5 call timeouts. (It said 3: review found the failover and
/// give-up paths; the allowed 20 s budget with 3 s calls could run past the shipped
/// 30 s.)
///
/// Its consumer's ack wait should be at least 1.5 × the payments' call-in-flight
/// window: a delivery that died mid-call is redelivered an ack wait after its last
/// progress ack (sent every third of it), so its call's log line is then older than the
/// window. With a shorter one (tests), the redelivery waits for that line to age first:
/// slower, not unsafe — a warning.
fn check_payment_budget(config: &Config, topology: &Topology) -> anyhow::Result<()> {
    use souk_workers::payments::{AUTHORIZE_HANDLER, CALL_IN_FLIGHT, SETTLE_HANDLER};
    let needed = payment_handler_worst_case(config);
    for pool in
        topology.pools.iter().filter(|p| p.handler == AUTHORIZE_HANDLER || p.handler == SETTLE_HANDLER)
    {
        if pool.handler_timeout <= needed {
            bail!(
                "pool {}: handler-timeout {:?} must exceed payments.budget + 5 × payments.call-timeout ({needed:?})",
                pool.name,
                pool.handler_timeout
            );
        }
        let ack_wait = topology.consumer(&pool.consumer).map(|c| c.ack_wait).unwrap_or_default();
        if ack_wait * 2 < CALL_IN_FLIGHT * 3 {
            tracing::warn!(
                consumer = %pool.consumer,
                ?ack_wait,
                "an ack-wait under {:?} (1.5 × the payments' call-in-flight window) makes a command whose \
                 worker died mid-call wait up to {CALL_IN_FLIGHT:?} when it is redelivered",
                CALL_IN_FLIGHT * 3 / 2
            );
        }
    }
    Ok(())
}

fn payment_handler_worst_case(config: &Config) -> Duration {
    config.payments.budget + config.payments.call_timeout * 5
}

fn print_banner(config: &Config, addr: &str, nats_url: &str, keys: &Keys, sandboxes: &[String]) {
    let token =
        keys.mint(&Claims::new("dev-buyer", "dev", vec![AuthRole::Buyer], Duration::from_secs(24 * 3600)));
    let api = format!("http://{addr}");
    // A server keeps running if nobody reads its banner (stdout closed): no `out!` here.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stdout().lock(),
        "\nsouk is running (Ctrl-C to stop)\n\
         \x20 API       {api}   (/healthz, /readyz; /metrics on metrics-addr when set)\n\
         \x20 NATS      {nats_url}   (JetStream, file store, sync_interval always)\n\
         \x20 Postgres  {db}\n\
         \x20 Data dir  {data}\n\
         \x20 Payments  {payments}\n\n\
         Place an order of a SKU in the catalog (`souk seed catalog`, or a seller's PUT as in\n\
         the README; prices come from the catalog) — dev token for buyer dev-buyer, valid 24h:\n\n\
         curl -sS -X POST {api}/v1/orders \\\n\
         \x20 -H 'Authorization: Bearer {token}' \\\n\
         \x20 -H \"Idempotency-Key: order-$(date +%s%N)\" \\\n\
         \x20 -H 'Content-Type: application/json' \\\n\
         \x20 -d '{{\"lines\":[{{\"sku\":\"MUG-1\",\"quantity\":2}}],\"payment_token\":\"tok_ok\"}}'\n\n\
         Then follow its status_url with the same Authorization header:\n\
         \x20 curl -sS {api}/v1/orders/<order_id> -H 'Authorization: Bearer {token}'\n",
        db = pg::redact(&config.database_url),
        data = config.data_dir.display(),
        payments = match sandboxes {
            [] => "configured providers ([payments])".to_owned(),
            urls => format!("SANDBOX providers (no real money moves): {}", urls.join(", ")),
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_payment_pools_timeout_must_cover_failover_and_the_give_up_status_queries() {
        let topology = builtin_topology().expect("the built-in topology");
        let mut config = Config::default();
        assert!(check_payment_budget(&config, &topology).is_ok(), "the shipped settings pass");
        // Allowed one by one (budget ≤ 20 s, calls ≤ 10 s), but a handler could run
        // 20 + 5 × 3 = 35 s against the shipped 30 s (the old check asked for 29).
        config.payments.budget = Duration::from_secs(20);
        config.payments.call_timeout = Duration::from_secs(3);
        let refused = check_payment_budget(&config, &topology).expect_err("must be refused");
        assert!(refused.to_string().contains("handler-timeout"), "{refused}");
    }
}
