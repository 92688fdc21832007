//! A whole souk node for end-to-end tests: its own nats-server and database, the
//! topology applied, and the same [`Node`] wiring `souk dev` runs.

use anyhow::Context;
use async_nats::jetstream;
use souk_cli::node::{Node, NodeOptions, SearchBackend};
use souk_ingress::{Claims, IntakeOptions, Keys, Role};
use souk_stores::search::SearchStore;
use souk_topologies::{Topology, apply::Mode};
use std::{sync::Arc, time::Duration};

use crate::{NatsServer, TestDb};

/// The shipped topology (`topologies/marketplace.toml`), as `souk` loads it.
pub fn shipped_topology() -> anyhow::Result<Topology> {
    Ok(Topology::parse(include_str!("../../topologies/marketplace.toml"))?)
}

/// The shipped topology with timers shortened for tests, set on the typed values (so a
/// change to the shipped file cannot make the shortening silently miss): every
/// consumer's ack wait is 2 s and its backoff as many steps as shipped, from 50 ms
/// doubling; every pool drains for at most 5 s. Everything else is as shipped.
pub fn test_topology() -> anyhow::Result<Topology> {
    test_topology_acking(TEST_ACK_WAIT)
}

/// The ack wait of [`test_topology`]'s consumers.
pub const TEST_ACK_WAIT: Duration = Duration::from_secs(2);

/// [`test_topology`] with another ack wait.
pub fn test_topology_acking(ack_wait: Duration) -> anyhow::Result<Topology> {
    let mut topology = shipped_topology()?;
    for c in &mut topology.consumers {
        c.ack_wait = ack_wait;
        c.backoff = (0..c.backoff.len()).map(|i| Duration::from_millis(50 << i)).collect();
    }
    for p in &mut topology.pools {
        p.drain_timeout = Duration::from_secs(5);
    }
    Ok(topology)
}

/// [`test_topology_acking`] as a topology file's text, for the `souk` processes a test starts
/// beside a stack (`SOUK_TOPOLOGY`): their timers must be the ones the stack's
/// consumers were made with. A worker reading the shipped file sends progress acks every
/// 20 s against the stack's 2 s ack wait, and JetStream redelivers everything it is
/// still handling — to the next worker, again and again, until a delivery arrives past
/// max-deliver (found by the chaos test once its workers ran as processes).
pub fn test_topology_toml(ack_wait: Duration) -> anyhow::Result<String> {
    // The shipped file with the timers of the typed topology written over it: what is
    // shortened, and how, is said once (`test_topology_acking`).
    let topology = test_topology_acking(ack_wait)?;
    let mut doc: toml::Table = include_str!("../../topologies/marketplace.toml").parse()?;
    let ms = |d: Duration| toml::Value::from(format!("{}ms", d.as_millis()));
    let named = |doc: &mut toml::Table, key: &str| -> Vec<(String, toml::Table)> {
        let tables = doc.get_mut(key).and_then(|v| v.as_array_mut()).map(std::mem::take).unwrap_or_default();
        tables
            .into_iter()
            .filter_map(|v| v.as_table().cloned())
            .map(|t| (t.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_owned(), t))
            .collect()
    };
    let mut consumers = Vec::new();
    for (name, mut c) in named(&mut doc, "consumer") {
        let typed = topology.consumer(&name).ok_or_else(|| anyhow::anyhow!("no consumer {name}"))?;
        c.insert("ack-wait".into(), ms(typed.ack_wait));
        if !typed.backoff.is_empty() {
            c.insert("backoff".into(), typed.backoff.iter().map(|d| ms(*d)).collect::<Vec<_>>().into());
        }
        consumers.push(toml::Value::Table(c));
    }
    let mut pools = Vec::new();
    for (name, mut p) in named(&mut doc, "pool") {
        let typed = topology.pool(&name).ok_or_else(|| anyhow::anyhow!("no pool {name}"))?;
        p.insert("drain-timeout".into(), ms(typed.drain_timeout));
        pools.push(toml::Value::Table(p));
    }
    doc.insert("consumer".into(), consumers.into());
    doc.insert("pool".into(), pools.into());
    let text = toml::to_string(&doc)?;
    anyhow::ensure!(Topology::parse(&text)? == topology, "not the test topology");
    Ok(text)
}

/// The [`test_topology`] for a test that runs only `pools`: the other pools are gone,
/// and so are the consumers on streams that keep what was handled (EVT, DLQ) that none of
/// `pools` drains. A test that runs the inventory pool alone has nothing reading the
/// saga's consumer on EVT, which would collect every inventory event as pending work
/// and keep the test from ever being [`crate::quiescent`]; without it, quiescence
/// means what it should: everything the running pools take is handled. Consumers on
/// purge-acked streams (CMD) all stay — the loader requires every subject there to be
/// taken, and a command no running pool handles is work left undone, which quiescence
/// must report.
pub fn test_topology_running(pools: &[&str]) -> anyhow::Result<Topology> {
    let mut topology = test_topology()?;
    for name in pools {
        anyhow::ensure!(topology.pool(name).is_some(), "no pool {name} in the topology");
    }
    topology.pools.retain(|p| pools.contains(&p.name.as_str()));
    let drained: Vec<String> = topology.pools.iter().map(|p| p.consumer.clone()).collect();
    let purged: Vec<String> =
        topology.streams.iter().filter(|s| s.purge_acked).map(|s| s.name.clone()).collect();
    topology.consumers.retain(|c| purged.contains(&c.stream) || drained.contains(&c.name));
    Ok(topology)
}

/// Payment retries for tests: a 3 s budget, breakers opening after 3 failures for 1 s.
pub fn test_payment_retry() -> souk_workers::payments::RetryOptions {
    souk_workers::payments::RetryOptions {
        budget: Duration::from_secs(3),
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(200),
        breaker_failures: 3,
        breaker_open_for: Duration::from_secs(1),
    }
}

/// The tenant of the stack's public reads (anonymous product reads and searches).
pub const PUBLIC_TENANT: &str = souk_ingress::DEFAULT_PUBLIC_TENANT;

/// Job workers for tests: chunks of 100 rows, and a worker silent for 2 s is dead (a
/// heartbeat a second), so a killed worker's job resumes within seconds.
pub fn test_job_tuning() -> souk_jobs::Tuning {
    souk_jobs::Tuning {
        chunk: 100,
        heartbeat: Duration::from_secs(1),
        missed_heartbeats: 2,
        ..souk_jobs::Tuning::default()
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub ingress: bool,
    pub pools: bool,
    pub relay: bool,
    pub write_timeout: Duration,
    /// The ingress's per-principal limit (the shipped default unless changed).
    pub rate_limit: Option<souk_ingress::RateLimit>,
    /// Postgres server for the stack's database (admin URL); the shared test server
    /// when `None`.
    pub postgres: Option<String>,
    /// Run a job worker in the node (with pools), tuned like this.
    pub jobs: Option<souk_jobs::Tuning>,
    /// The ingress's search deadline: 10 s, not the shipped 1 s — a test's node shares
    /// two cores with the other tests' nodes, and tests assert that no query fails, not
    /// how fast a starved process answers (the deadline itself is tested in the ingress).
    pub search_timeout: Duration,
    /// Serve the operators' dashboard under `/ops/` (refreshing its live view this often).
    pub dashboard: Option<Duration>,
    /// The ingress's catalog admission bound (`catalog-max-backlog`; the shipped default
    /// unless changed).
    pub catalog_max_backlog: Duration,
    /// Every consumer's ack wait ([`TEST_ACK_WAIT`] unless changed).
    pub ack_wait: Duration,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            ingress: true,
            pools: true,
            relay: true,
            write_timeout: Duration::from_millis(1500),
            rate_limit: Some(souk_cli::node::default_rate_limit()),
            postgres: None,
            jobs: Some(test_job_tuning()),
            search_timeout: Duration::from_secs(10),
            dashboard: None,
            catalog_max_backlog: souk_cli::node::DEFAULT_CATALOG_MAX_BACKLOG,
            ack_wait: TEST_ACK_WAIT,
        }
    }
}

/// A running stack.
pub struct Stack {
    pub nats: NatsServer,
    pub db: TestDb,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub topology: Topology,
    pub keys: Keys,
    pub http: reqwest::Client,
    /// `http://127.0.0.1:<port>` when the ingress runs.
    pub base: String,
    /// The node's search index: tantivy in [`Stack::search_dir`], opened the way `souk
    /// dev` opens it (the writer: the stack's node runs the indexer pool), kept across
    /// node restarts as a process keeps it.
    pub search: Arc<dyn SearchStore>,
    pub search_dir: tempfile::TempDir,
    /// The payment SANDBOXES the payments pools call: `primary` (alpha dialect) and
    /// `secondary` (beta), as `souk dev` starts them.
    pub payment_sandboxes: Vec<souk_sandbox::payments::PaymentSandbox>,
    pub payments: Arc<souk_workers::payments::Gateway>,
    node: Option<Node>,
    options: StackOptions,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack").field("base", &self.base).finish_non_exhaustive()
    }
}

impl Stack {
    pub async fn start() -> anyhow::Result<Stack> {
        Stack::start_with(StackOptions::default()).await
    }

    pub async fn start_with(options: StackOptions) -> anyhow::Result<Stack> {
        let db = async {
            match &options.postgres {
                Some(url) => TestDb::create_on(url).await,
                None => TestDb::create().await,
            }
        };
        let (nats, db) = tokio::try_join!(NatsServer::start(), db)?;
        souk_stores::postgres::migrate(&db.pool).await?;
        let client = nats.client().await?;
        let js = jetstream::new(client.clone());
        let topology = test_topology_acking(options.ack_wait)?;
        souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
        let search_dir = tempfile::tempdir()?;
        let search = souk_cli::node::open_search(&SearchBackend::Tantivy {
            dir: search_dir.path().join("search"),
            threads: None,
        })
        .await?;
        let (payment_sandboxes, specs) =
            souk_cli::node::start_payment_sandboxes(None, Default::default(), Duration::from_secs(1)).await?;
        let payments = souk_cli::node::payment_gateway(&specs, test_payment_retry(), db.pool.clone())?;
        let mut stack = Stack {
            payment_sandboxes,
            payments,
            nats,
            db,
            client,
            js,
            topology,
            keys: Keys::from_secret(uuid::Uuid::new_v4().as_bytes().repeat(2).as_slice()),
            http: reqwest::Client::new(),
            base: String::new(),
            search,
            search_dir,
            node: None,
            options,
        };
        stack.start_node().await?;
        Ok(stack)
    }

    /// Start (or restart) the node with the stack's options.
    pub async fn start_node(&mut self) -> anyhow::Result<()> {
        let o = self.options.clone();
        let ingress = match o.ingress {
            true => Some((tokio::net::TcpListener::bind("127.0.0.1:0").await?, self.keys.clone())),
            false => None,
        };
        let node = Node::start(NodeOptions {
            nats: self.client.clone(),
            pool: self.db.pool.clone(),
            database_url: self.db.url.clone(),
            topology: self.topology.clone(),
            write_timeout: o.write_timeout,
            ingress,
            intake: IntakeOptions::default(),
            catalog_max_backlog: o.catalog_max_backlog,
            rate_limit: o.rate_limit,
            jobs: if o.pools { o.jobs.clone() } else { None },
            pools: o.pools.then(Vec::new),
            relay: o.relay,
            metrics: None,
            search: Some(self.search.clone()),
            search_timeout: o.search_timeout,
            public_tenant: PUBLIC_TENANT.into(),
            payments: Some(self.payments.clone()),
            status_history: Default::default(),
            dashboard: o.dashboard,
        })
        .await?;
        if let Some(addr) = node.http_addr {
            self.base = format!("http://{addr}");
        }
        self.node = Some(node);
        Ok(())
    }

    /// A worker process beside the stack's node, wired as `souk worker` runs one: the
    /// topology's `pools` (every pool when empty) with the saga sweeper and the stock
    /// hold expiry, on a Postgres connection pool of its own, no ingress, no relay (the
    /// node's runs). For tests whose node runs no pools (`pools: false`) and that decide
    /// when work happens: start one late, stop one mid-saga ([`Node::stop`] drains),
    /// run two side by side, or run all but one pool so a saga waits at that step.
    pub async fn start_worker(&self, pools: &[&str]) -> anyhow::Result<Node> {
        use souk_stores::postgres::{PgOptions, connect};
        Ok(Node::start(NodeOptions {
            nats: self.client.clone(),
            pool: connect(&PgOptions::new(&self.db.url))?,
            database_url: self.db.url.clone(),
            topology: self.topology.clone(),
            write_timeout: self.options.write_timeout,
            ingress: None,
            intake: IntakeOptions::default(),
            catalog_max_backlog: self.options.catalog_max_backlog,
            rate_limit: None,
            jobs: None,
            pools: Some(pools.iter().map(|p| (*p).to_owned()).collect()),
            relay: false,
            metrics: None,
            search: Some(self.search.clone()),
            search_timeout: self.options.search_timeout,
            public_tenant: PUBLIC_TENANT.into(),
            payments: Some(self.payments.clone()),
            status_history: Default::default(),
            dashboard: None,
        })
        .await?)
    }

    /// Stop the node gracefully (drain).
    pub async fn stop_node(&mut self) {
        if let Some(node) = self.node.take() {
            node.stop().await;
        }
    }

    /// A token for `sub` in tenant `t1`.
    pub fn token(&self, sub: &str, roles: &[Role]) -> String {
        self.keys.mint(&Claims::new(sub, "t1", roles.to_vec(), Duration::from_secs(3600)))
    }

    /// Put `skus` on sale in tenant `t1` (see [`crate::catalog::seed_skus`]).
    pub async fn seed_skus(&self, skus: &[&str]) -> anyhow::Result<()> {
        crate::catalog::seed_skus(&self.db.pool, "t1", skus).await
    }

    /// POST /v1/orders; returns status and JSON body.
    pub async fn place(
        &self,
        token: &str,
        key: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self
            .http
            .post(format!("{}/v1/orders", self.base))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await?;
        read_body(r).await
    }

    /// GET a path with a token; returns status and body (see [`read_body`]).
    pub async fn get(&self, token: &str, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
        read_body(self.http.get(format!("{}{path}", self.base)).bearer_auth(token).send().await?).await
    }

    /// Wait until the node has nothing left to do (see [`crate::quiescent`]): every
    /// consumer caught up and, when the relay runs, the outbox published.
    pub async fn quiescent(&self, timeout: Duration) -> anyhow::Result<()> {
        crate::quiescent(&self.js, self.options.relay.then_some(&self.db.pool), timeout).await
    }

    /// `select count(*)` of a query's rows.
    pub async fn count(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(format!("select count(*) from ({sql}) q")))
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// Messages in a stream.
    pub async fn stream_messages(&self, stream: &str) -> anyhow::Result<u64> {
        Ok(self.js.get_stream(stream).await?.get_info().await?.state.messages)
    }
}

/// A response's status and body: `Null` when empty, the parsed JSON for a JSON content
/// type (an error when it does not parse: a test must not read a broken body as
/// "no field there"), the text otherwise.
pub async fn read_body(r: reqwest::Response) -> anyhow::Result<(u16, serde_json::Value)> {
    let status = r.status().as_u16();
    let json = r
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json") || t.starts_with("application/problem+json"));
    let bytes = r.bytes().await?;
    let value = if bytes.is_empty() {
        serde_json::Value::Null
    } else if json {
        serde_json::from_slice(&bytes).with_context(|| {
            format!("a {status} response's JSON body does not parse: {}", String::from_utf8_lossy(&bytes))
        })?
    } else {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok((status, value))
}

/// A valid order body: `quantity` of `sku`, paid with `tok_ok`. Its SKU must be for
/// sale in the buyer's tenant ([`Stack::seed_skus`], [`crate::catalog::seed_skus`]).
pub fn order_body(sku: &str, quantity: i64) -> serde_json::Value {
    serde_json::json!({"lines": [{"sku": sku, "quantity": quantity}], "payment_token": "tok_ok"})
}
