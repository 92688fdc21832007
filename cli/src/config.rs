//! Configuration: one typed tree, layered defaults → `souk.toml` → `SOUK_*` env
//! (plus the conventional `DATABASE_URL`) → command-line flags. Keys are kebab-case and
//! unknown keys are rejected, so a typo fails at start with a clear message.

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};
use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// `SOUK_*` variables read by other parts (scripts, tests, a command's own arguments:
/// `SOUK_OPERATOR_TOKEN` is the operator commands' `--token`), not by the config tree.
const NOT_CONFIG: &[&str] =
    &["nats_server_bin", "test_database_url", "pg_bin_dir", "scylla_uri", "config", "operator_token"];

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Where souk keeps its state: the dev JWT key, the local nats-server's store.
    pub data_dir: PathBuf,
    /// Where the HTTP API listens.
    pub http_addr: SocketAddr,
    /// The internal listener serving `/metrics` (never served on the public API).
    pub metrics_addr: Option<SocketAddr>,
    /// JWT signing keys, `[{ kid = "...", file = "..." }]`: every one verifies, the
    /// first signs (`souk token`). `souk ingress` and `souk worker` refuse to start
    /// without; only `souk dev` generates a key (into its data dir) when none is set.
    pub jwt_keys: Vec<JwtKey>,
    /// An existing NATS server; unset, `souk dev` starts its own under the data dir.
    pub nats_url: Option<String>,
    /// Postgres, the system of record. From `DATABASE_URL` or the default, it names the
    /// server (and the base name) only for `souk dev` with its own nats-server: each
    /// data dir gets a database of its own (see [`Config::database_named`]).
    pub database_url: String,
    /// Whether `database-url` was given as souk's own setting (`SOUK_DATABASE_URL`, or
    /// `database-url` in the config file), not taken from the conventional
    /// `DATABASE_URL` or the default: then it is used as named, whatever the command.
    #[serde(skip)]
    pub database_named: bool,
    /// Connections per process.
    pub database_max_connections: u32,
    /// A topology file; unset, the built-in `topologies/marketplace.toml`.
    pub topology: Option<PathBuf>,
    /// Longest an order write waits for Postgres and JetStream before a 503.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Order writes per second per principal (tenant + subject) at the ingress; 0 turns
    /// the limit off.
    pub rate_limit_per_second: u32,
    /// Writes a principal may send at once above the sustained rate.
    pub rate_limit_burst: u32,
    /// Order reads per second per principal: a budget separate from writes.
    pub read_rate_limit_per_second: u32,
    /// Reads a principal may send at once above the sustained rate.
    pub read_rate_limit_burst: u32,
    /// The tenant of public product reads sent without a token (with one, the token's).
    pub public_tenant: String,
    /// Catalog writes are refused (503 + `Retry-After`) while the catalog pool's
    /// backlog would take longer than this to drain at its recent rate; `0s` never
    /// refuses. Freshness (202 → searchable) under saturation is about this plus the
    /// pipeline's own latency.
    #[serde(with = "humantime_serde")]
    pub catalog_max_backlog: Duration,
    /// Log JSON lines instead of text.
    pub log_json: bool,
    /// Export spans to this OTLP/HTTP collector (`http://host:4318`); unset, none leave.
    pub otlp_endpoint: Option<String>,
    /// The search index.
    pub search: SearchConfig,
    /// The payment providers.
    pub payments: PaymentsConfig,
}

/// The payment providers the payments pools call. Unset URLs: `souk dev` starts two
/// sandboxes (primary + secondary) so checkout works out of the box; `souk worker`
/// running a payments pool refuses to start without `primary-url`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PaymentsConfig {
    /// The primary provider (`http(s)://host:port`).
    pub primary_url: Option<String>,
    /// Its API dialect: `alpha` or `beta`.
    pub primary_dialect: souk_workers::payments::Dialect,
    /// The provider failed over to when the primary's breaker is open.
    pub secondary_url: Option<String>,
    pub secondary_dialect: souk_workers::payments::Dialect,
    /// A file holding the providers' API key (never printed); unset with configured
    /// providers, calls carry none. `souk dev`'s sandboxes use (and generate at first
    /// start) `<data-dir>/payments-sandbox.key`.
    pub credentials_file: Option<PathBuf>,
    /// Longest one provider call may take.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// Longest one payment command spends on providers (retries, failover included).
    #[serde(with = "humantime_serde")]
    pub budget: Duration,
}

impl Default for PaymentsConfig {
    fn default() -> Self {
        PaymentsConfig {
            primary_url: None,
            primary_dialect: souk_workers::payments::Dialect::Alpha,
            secondary_url: None,
            secondary_dialect: souk_workers::payments::Dialect::Beta,
            credentials_file: None,
            call_timeout: Duration::from_secs(3),
            budget: Duration::from_secs(8),
        }
    }
}

impl PaymentsConfig {
    fn validate(&self) -> Result<(), String> {
        for (key, url) in [("primary-url", &self.primary_url), ("secondary-url", &self.secondary_url)] {
            if let Some(url) = url
                && !url.starts_with("http://")
                && !url.starts_with("https://")
            {
                return Err(format!("payments.{key} must be an http:// or https:// URL"));
            }
        }
        if self.secondary_url.is_some() && self.primary_url.is_none() {
            return Err("payments.secondary-url needs payments.primary-url".into());
        }
        if self.call_timeout < Duration::from_millis(100) || self.call_timeout > Duration::from_secs(10) {
            return Err("payments.call-timeout must be between 100ms and 10s".into());
        }
        if self.budget < self.call_timeout || self.budget > Duration::from_secs(20) {
            return Err("payments.budget must be at least payments.call-timeout and at most 20s".into());
        }
        if let Some(file) = &self.credentials_file
            && !file.is_file()
        {
            return Err(format!("payments.credentials-file {} is not a readable file", file.display()));
        }
        Ok(())
    }
}

/// Where the search index lives: embedded tantivy under the data dir unless an
/// OpenSearch cluster is named (`[search] opensearch-url`, or `SOUK_OPENSEARCH_URL`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct SearchConfig {
    /// An OpenSearch cluster (`https://user:pass@host:9200`); unset, tantivy.
    pub opensearch_url: Option<String>,
    /// The tantivy index directory; unset, `<data-dir>/search`. One process opens it
    /// (the one running the `catalog-index` pool: it indexes and serves `/v1/search`;
    /// a lock file refuses a second; see ARCHITECTURE.md, "One process per embedded
    /// (tantivy) index"). Ignored with `opensearch-url`.
    pub dir: Option<PathBuf>,
    /// Threads the tantivy index runs queries on: the most that run at once, the rest
    /// wait their turn (see ARCHITECTURE.md, "Search cost"); unset, the cores. Ignored
    /// with `opensearch-url` (OpenSearch has its own search thread pool).
    pub threads: Option<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".souk/dev"),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_addr: None,
            jwt_keys: Vec::new(),
            nats_url: None,
            database_url: "postgres://postgres@127.0.0.1:5432/souk".into(),
            database_named: false,
            database_max_connections: 32,
            topology: None,
            write_timeout: Duration::from_millis(1500),
            rate_limit_per_second: souk_cli::node::DEFAULT_RATE_PER_SECOND,
            rate_limit_burst: souk_cli::node::DEFAULT_RATE_BURST,
            read_rate_limit_per_second: souk_cli::node::DEFAULT_READ_RATE_PER_SECOND,
            read_rate_limit_burst: souk_cli::node::DEFAULT_READ_RATE_BURST,
            public_tenant: souk_ingress::DEFAULT_PUBLIC_TENANT.into(),
            catalog_max_backlog: souk_cli::node::DEFAULT_CATALOG_MAX_BACKLOG,
            log_json: false,
            otlp_endpoint: None,
            search: SearchConfig::default(),
            payments: PaymentsConfig::default(),
        }
    }
}

/// One JWT key: its id (the `kid` tokens name) and the file holding its secret (at
/// least 32 bytes; a final newline is ignored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct JwtKey {
    pub kid: String,
    pub file: PathBuf,
}

/// Values given on the command line (they win over everything else).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
}

impl Config {
    /// Load from `file` (if it exists), the environment and `overrides`.
    pub fn load(file: &std::path::Path, overrides: &Overrides) -> Result<Config, Box<figment::Error>> {
        let souk_env = || {
            Env::prefixed("SOUK_")
                .filter(|k| !NOT_CONFIG.contains(&k.as_str().to_ascii_lowercase().as_str()))
                .map(|k| match k.as_str().to_ascii_lowercase().replace('_', "-").as_str() {
                    // The one nested key read from the environment, by the name the
                    // OpenSearch tests use too.
                    "opensearch-url" => "search.opensearch-url".into(),
                    // SOUK_PAYMENTS_PRIMARY_URL → payments.primary-url, and so on.
                    other if other.starts_with("payments-") => format!("payments.{}", &other[9..]).into(),
                    other => other.to_owned().into(),
                })
        };
        let mut config: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(file))
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database-url".into()))
            .merge(souk_env())
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        // Named by souk's own settings if they alone give the URL in effect (the file's
        // value is overridden by DATABASE_URL, so it only counts when it wins).
        let named: Option<String> =
            Figment::from(Toml::file(file)).merge(souk_env()).extract_inner("database-url").ok();
        config.database_named = named.as_deref() == Some(config.database_url.as_str());
        config.validate().map_err(|e| Box::new(figment::Error::from(e)))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.database_max_connections == 0 {
            return Err("database-max-connections must be positive".into());
        }
        if self.write_timeout < Duration::from_millis(100) || self.write_timeout > Duration::from_secs(30) {
            return Err("write-timeout must be between 100ms and 30s".into());
        }
        if !self.database_url.starts_with("postgres://") && !self.database_url.starts_with("postgresql://") {
            return Err("database-url must be a postgres:// URL".into());
        }
        if self.rate_limit_per_second > 0 && self.read_rate_limit_per_second == 0 {
            return Err("read-rate-limit-per-second must be positive (rate-limit-per-second = 0 turns both limits off)".into());
        }
        if !self.catalog_max_backlog.is_zero()
            && (self.catalog_max_backlog < Duration::from_millis(50)
                || self.catalog_max_backlog > Duration::from_secs(600))
        {
            return Err("catalog-max-backlog must be 0s (no bound) or between 50ms and 10m".into());
        }
        if self.search.threads.is_some_and(|t| t == 0 || t > 256) {
            return Err("search.threads must be between 1 and 256".into());
        }
        if let Some(url) = &self.search.opensearch_url
            && !url.starts_with("http://")
            && !url.starts_with("https://")
        {
            return Err("search.opensearch-url must be an http:// or https:// URL".into());
        }
        self.payments.validate()?;
        if self.otlp_endpoint.as_deref().is_some_and(|e| !e.starts_with("http://")) {
            // The exporter is built without a TLS client: an https:// collector would
            // fail every export, silently.
            return Err("otlp-endpoint must be an http:// URL (OTLP/HTTP, no TLS)".into());
        }
        Ok(())
    }

    /// The ingress rate limits (writes and reads), if on.
    pub fn rate_limit(&self) -> Option<souk_ingress::RateLimit> {
        use std::num::NonZeroU32;
        let per_second = NonZeroU32::new(self.rate_limit_per_second)?;
        let burst = NonZeroU32::new(self.rate_limit_burst).unwrap_or(per_second);
        let reads_per_second = NonZeroU32::new(self.read_rate_limit_per_second)?;
        let reads_burst = NonZeroU32::new(self.read_rate_limit_burst).unwrap_or(reads_per_second);
        Some(souk_ingress::RateLimit { per_second, burst, reads_per_second, reads_burst })
    }

    /// Where the search index is.
    pub fn search_backend(&self) -> souk_cli::node::SearchBackend {
        match &self.search.opensearch_url {
            Some(url) => souk_cli::node::SearchBackend::OpenSearch(url.clone()),
            None => souk_cli::node::SearchBackend::Tantivy {
                dir: self.search.dir.clone().unwrap_or_else(|| self.data_dir.join("search")),
                threads: self.search.threads,
            },
        }
    }

    /// The API key of `souk dev`'s payment sandboxes (generated at first start).
    pub fn sandbox_key_path(&self) -> PathBuf {
        self.data_dir.join("payments-sandbox.key")
    }

    /// The key `souk dev` generates when no `jwt-keys` are configured.
    pub fn dev_key_path(&self) -> PathBuf {
        self.data_dir.join("jwt.key")
    }
}
