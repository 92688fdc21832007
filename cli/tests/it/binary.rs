//! The `souk` binary itself: `souk dev` against this test's servers, then SIGTERM.

use souk_testkit::{NatsServer, TestDb, eventually, order_body};
use std::{process::Stdio, time::Duration};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

/// The API address `souk dev` prints in its banner (its stdout must be piped).
pub(crate) async fn api_address(child: &mut tokio::process::Child) -> anyhow::Result<String> {
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.trim().strip_prefix("API") {
                let address = rest.split_whitespace().next();
                return address.map(str::to_owned).ok_or_else(|| anyhow::anyhow!("no address in {line:?}"));
            }
        }
        anyhow::bail!("souk dev exited before printing its address")
    })
    .await?
}

/// `souk dev` on `data` with its own nats-server (no `SOUK_NATS_URL`), on the database
/// `database_url` names (`SOUK_DATABASE_URL`: as named, not one per data dir).
pub(super) fn souk_dev_with_own_nats(
    data: &std::path::Path,
    database_url: &str,
    stdout: Stdio,
) -> std::io::Result<tokio::process::Child> {
    souk(data)
        .args(["dev", "--http-addr", "127.0.0.1:0"])
        .env_remove("SOUK_NATS_URL")
        .env("SOUK_DATABASE_URL", database_url)
        .stdout(stdout)
        .stderr(Stdio::null())
        .spawn()
}

pub(crate) fn souk(data_dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_souk"));
    c.arg("--data-dir")
        .arg(data_dir)
        .env_remove("SOUK_CONFIG")
        .env("SOUK_LOG_JSON", "true")
        // Tests run six at a time on one shared Postgres (max_connections 100): a souk
        // process's default pool of 32 made two `souk dev`s and a crash test exhaust it.
        .env("SOUK_DATABASE_MAX_CONNECTIONS", "10")
        // Read by scripts/prepare and the test kit, not a config key: must not break it.
        .env("SOUK_PG_BIN_DIR", "/usr/lib/postgresql/15/bin")
        .kill_on_drop(true);
    c
}

#[tokio::test]
async fn souk_dev_serves_orders_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    let data = tempfile::tempdir()?;
    let mut child = souk(data.path())
        .args(["dev", "--http-addr", "127.0.0.1:0"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let api = api_address(&mut child).await?;
    assert!(api.starts_with("http://127.0.0.1:"), "{api}");
    souk_testkit::catalog::seed_skus(&db.pool, "dev", &["BIN-1"]).await?;

    // `souk token` signs with the key `souk dev` generated in the data dir.
    let token = souk(data.path()).args(["token", "--sub", "zoe", "--role", "buyer"]).output().await?;
    assert!(token.status.success());
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let key_mode = std::fs::metadata(data.path().join("jwt.key"))?;
    assert!(key_mode.len() >= 32);

    let http = reqwest::Client::new();
    let r = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "bin-1")
        .json(&order_body("BIN-1", 1))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    eventually(Duration::from_secs(15), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(&db.pool).await.ok()?;
        (n == 1).then_some(())
    })
    .await?;

    // A second `souk dev` on the same data dir refuses to start (it would start a second
    // nats-server on the same store), and says why.
    let second = souk(data.path())
        .args(["dev", "--http-addr", "127.0.0.1:0"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .output()
        .await?;
    assert!(!second.status.success());
    let stderr = String::from_utf8(second.stderr)?;
    assert!(stderr.contains("another `souk dev`"), "{stderr}");

    let pid = child.id().expect("running");
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn bad_configuration_and_arguments_get_clear_errors() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let bad = souk(data.path()).arg("config").env("SOUK_WRITE_TIMEOUT", "1h").output().await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("write-timeout"));
    let bad =
        souk(data.path()).arg("config").env("SOUK_OPENSEARCH_URL", "ftp://search:9200").output().await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("search.opensearch-url"));
    let file = data.path().join("souk.toml");
    let config_of = async |text: &str| -> anyhow::Result<std::process::Output> {
        std::fs::write(&file, text)?;
        Ok(souk(data.path()).args(["--config", file.to_str().unwrap_or_default(), "config"]).output().await?)
    };
    let bad = config_of("htp-addr = \"127.0.0.1:1\"\n").await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("htp-addr"));
    // One search configuration: `[search] opensearch-url` / `dir`; no `backend` key.
    let bad = config_of("[search]\nbackend = \"opensearch\"\n").await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("backend"));
    // The search threads: a count, shown as set.
    let bad = config_of("[search]\nthreads = 0\n").await?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("search.threads must be between 1 and 256"));
    let good = config_of("[search]\nthreads = 3\n").await?;
    assert!(good.status.success());
    assert!(String::from_utf8(good.stdout)?.contains("threads = 3"));
    let forever = souk(data.path())
        .args(["token", "--sub", "x", "--role", "buyer", "--ttl", "584542046090y"])
        .output()
        .await?;
    assert!(!forever.status.success());
    assert!(String::from_utf8(forever.stderr)?.contains("--ttl must be between"));
    let role = souk(data.path()).args(["token", "--sub", "x", "--role", "king"]).output().await?;
    assert!(!role.status.success());
    assert!(String::from_utf8(role.stderr)?.contains("unknown role"));
    // A list's length is a count: a negative one was sent to Postgres and failed as an
    // unexpected error (exit 1) instead of a usage error (review, twelfth session).
    for list in [&["sagas", "list"][..], &["jobs", "list"][..]] {
        for limit in ["--limit=-1", "--limit=0"] {
            let bad = souk(data.path()).args(list).arg(limit).output().await?;
            assert_eq!(bad.status.code(), Some(2), "{list:?} {limit}");
            assert!(String::from_utf8(bad.stderr)?.contains("not in 1..=10000"), "{list:?} {limit}");
        }
    }
    let sellerless =
        souk(data.path()).args(["token", "--sub", "x", "--role", "buyer", "--seller", "s1"]).output().await?;
    assert!(!sellerless.status.success());
    assert!(String::from_utf8(sellerless.stderr)?.contains("--seller needs --role seller"));
    let good = souk(data.path())
        .arg("config")
        .env("DATABASE_URL", "postgres://u:secret@h/db?password=secret2")
        .env("SOUK_NATS_URL", "nats://natsuser:secret3@127.0.0.1:1")
        .env("SOUK_OPENSEARCH_URL", "https://admin:secret5@search:9200")
        .output()
        .await?;
    assert!(good.status.success());
    let shown = String::from_utf8(good.stdout)?;
    assert!(shown.contains("u:***@h/db") && shown.contains("nats://***@127.0.0.1:1"), "{shown}");
    assert!(shown.contains("opensearch-url = \"https://***@search:9200\""), "{shown}");
    assert!(!shown.contains("secret"), "{shown}");
    // Nor does an error show them: a token in a NATS URL nobody listens at.
    let unreachable =
        souk(data.path()).arg("status").env("SOUK_NATS_URL", "nats://secret4@127.0.0.1:1").output().await?;
    assert!(!unreachable.status.success());
    let said = String::from_utf8(unreachable.stderr)?;
    assert!(said.contains("connecting to NATS") && !said.contains("secret4"), "{said}");
    Ok(())
}

/// `souk config | head -1`: the reader goes away; souk must stop quietly, not panic.
#[tokio::test]
async fn a_closed_stdout_ends_a_command_quietly() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (reader, writer) = std::io::pipe()?;
    drop(reader); // closed before souk writes a byte: its first write fails with EPIPE
    // spawn, not output(): output() would replace stdout with its own pipe.
    let child = souk(data.path()).arg("config").stdout(Stdio::from(writer)).stderr(Stdio::piped()).spawn()?;
    let closed = child.wait_with_output().await?;
    let stderr = String::from_utf8(closed.stderr)?;
    assert!(closed.status.success(), "{:?}: {stderr}", closed.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    Ok(())
}

#[tokio::test]
async fn topology_apply_check_status_and_migrate_from_the_command_line() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    let data = tempfile::tempdir()?;
    let run = |args: &'static [&'static str]| {
        let mut c = souk(data.path());
        c.args(args).env("SOUK_NATS_URL", nats.url()).env("DATABASE_URL", &db.url);
        async move { c.output().await }
    };
    let check = run(&["topology", "apply", "--check"]).await?;
    assert_eq!(check.status.code(), Some(2), "out of sync before apply");
    assert!(String::from_utf8(check.stdout)?.contains("stream CMD: missing"));
    let apply = run(&["topology", "apply"]).await?;
    assert!(apply.status.success());
    assert!(String::from_utf8(apply.stdout)?.contains("consumer orders-place: created"));
    let check = run(&["topology", "apply", "--check"]).await?;
    assert_eq!(check.status.code(), Some(0), "in sync after apply");

    let migrate = run(&["migrate"]).await?;
    assert!(migrate.status.success(), "{}", String::from_utf8_lossy(&migrate.stderr));
    let status = run(&["status", "--json"]).await?;
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let json: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    // Each consumer keeps `name`, `pending` and `ack_pending` (scripts read them).
    let consumer = &json["pipeline"]["consumers"][0];
    assert_eq!(consumer["name"], "orders-place");
    assert_eq!(
        (consumer["pending"].as_u64(), consumer["ack_pending"].as_u64()),
        (Some(0), Some(0)),
        "{json}"
    );
    assert_eq!(consumer["dead_letters"], 0);
    // Every pool of the topology, with no live worker yet; the outbox from Postgres.
    let orders = json["pipeline"]["pools"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "orders"));
    assert_eq!(orders.map(|p| &p["live_processes"]), Some(&serde_json::json!(0)), "{json}");
    assert_eq!(json["pipeline"]["outbox"]["unpublished"], 0, "{json}");
    assert_eq!(json["pipeline"]["problems"], serde_json::json!([]), "{json}");
    assert_eq!(json["outbox_pending"], 0);
    assert_eq!(json["outbox_parked"], 0);
    // The search index's lag, per index: nothing behind yet.
    assert_eq!(
        json["search_indexes"],
        serde_json::json!([{"index": "products", "consumer": "catalog-index", "events": 0, "seconds": 0.0}])
    );
    // Postgres unreachable: the pipeline is still shown, but the exit code says the
    // status is incomplete.
    let partial = souk(data.path())
        .args(["status"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")
        .output()
        .await?;
    assert_eq!(partial.status.code(), Some(1));
    let shown = String::from_utf8(partial.stdout)?;
    assert!(shown.contains("orders-place") && shown.contains("outbox: unknown"), "{shown}");
    assert!(shown.contains("INDEX") && shown.lines().any(|l| l.starts_with("products ")), "{shown}");
    // A dead letter as the runtime writes it; list it, replay it to its subject.
    let client = nats.client().await?;
    let mut h = async_nats::HeaderMap::new();
    h.insert("souk-dlq-consumer", "orders-place");
    h.insert("souk-dlq-subject", "souk.cmd.orders.place");
    h.insert("souk-dlq-attempts", "5");
    h.insert("souk-dlq-error", "boom");
    h.insert("souk-schema", "orders.place/v1");
    for _ in 0..3 {
        async_nats::jetstream::new(client.clone())
            .publish_with_headers("souk.dlq.orders-place", h.clone(), "{}".into())
            .await?
            .await?;
    }
    let list = run(&["dlq", "list", "--json"]).await?;
    let letters: serde_json::Value = serde_json::from_slice(&list.stdout)?;
    assert_eq!(letters[0]["error"], "boom");
    assert_eq!(letters[0]["subject"], "souk.cmd.orders.place");
    // `souk dlq replay --all | head -1`: a closed stdout must not stop the replay halfway.
    let (reader, writer) = std::io::pipe()?;
    drop(reader);
    let replay = souk(data.path())
        .args(["dlq", "replay", "--all"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .spawn()?
        .wait_with_output()
        .await?;
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let list = run(&["dlq", "list"]).await?;
    assert!(String::from_utf8(list.stdout)?.contains("no dead letters"), "all three replayed");
    let replayed = async_nats::jetstream::new(client.clone()).get_stream("CMD").await?.get_info().await?;
    assert_eq!(replayed.state.messages, 3);
    let cmd = async_nats::jetstream::new(client).get_stream("CMD").await?.get_raw_message(1).await?;
    assert_eq!(cmd.subject.as_str(), "souk.cmd.orders.place");
    assert_eq!(cmd.headers.get("souk-schema").map(|v| v.as_str()), Some("orders.place/v1"));
    assert!(cmd.headers.get("souk-dlq-error").is_none(), "dead-letter metadata is not replayed");

    let show = run(&["topology", "show"]).await?;
    assert!(String::from_utf8(show.stdout)?.contains("pool orders consumer=orders-place"));
    Ok(())
}

#[tokio::test]
async fn souk_worker_runs_the_pools_and_serves_metrics_on_its_own_address() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    souk_topologies::apply::apply(&js, &souk_testkit::test_topology()?, souk_topologies::apply::Mode::Apply)
        .await?;
    // A free port for the metrics listener (the worker has no API to report it on).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let data = tempfile::tempdir()?;
    let keys = jwt_keys(data.path(), &[("k1", &[1u8; 32])])?;
    // Its payments pools need a provider: a worker without one refuses to start.
    let refused = souk(data.path())
        .arg("worker")
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SOUK_JWT_KEYS", &keys)
        .output();
    let refused = tokio::time::timeout(Duration::from_secs(60), refused).await??;
    assert!(!refused.status.success());
    let said = String::from_utf8(refused.stderr)?;
    assert!(said.contains("no payment provider is configured"), "{said}");
    let provider = souk_sandbox::payments::PaymentSandbox::start(
        souk_sandbox::payments::SandboxOptions::local("worker-test"),
    )
    .await?;
    let mut worker = souk(data.path())
        .arg("worker")
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SOUK_METRICS_ADDR", addr.to_string())
        .env("SOUK_JWT_KEYS", &keys)
        .env("SOUK_PAYMENTS_PRIMARY_URL", provider.url())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let http = reqwest::Client::new();
    let text = eventually(Duration::from_secs(30), || async {
        let r = http.get(format!("http://{addr}/metrics")).send().await.ok()?;
        let text = r.text().await.ok()?;
        (text.contains("souk_consumer_pending_messages")
            && text.contains("souk_worker_pool_breaker_state")
            && text.contains("souk_search_index_lag_seconds"))
        .then_some(text)
    })
    .await?;
    assert!(text.contains(r#"consumer="orders-place""#), "{text}");
    // The search index's lag, with the other pipeline gauges.
    assert!(text.contains(r#"souk_search_index_lag_events{index="products"} 0"#), "{text}");
    assert!(text.contains(r#"souk_search_index_lag_seconds{index="products"} 0"#), "{text}");
    assert!(text.contains(r#"souk_worker_pool_breaker_state{pool="orders"} 0"#), "closed: {text}");
    // `souk status` reads the running worker's heartbeat (its first is put as it starts).
    let json = eventually(Duration::from_secs(10), || async {
        let status = souk(data.path())
            .args(["status", "--json"])
            .env("SOUK_NATS_URL", nats.url())
            .env("DATABASE_URL", &db.url)
            .output()
            .await?;
        let json: serde_json::Value = serde_json::from_slice(&status.stdout)?;
        let live =
            json["pipeline"]["pools"].as_array().is_some_and(|p| p.iter().any(|p| p["live_processes"] == 1));
        anyhow::Ok(live.then_some(json))
    })
    .await?;
    assert_eq!(json["pipeline"]["consumers"][0]["breaker"], "closed", "{json}");
    let pools = json["pipeline"]["pools"].as_array().cloned().unwrap_or_default();
    assert!(pools.iter().any(|p| p["name"] == "orders" && p["breaker"] == "closed"), "{json}");
    // Seen through its heartbeat: one live process, this worker.
    let orders = pools.iter().find(|p| p["name"] == "orders").cloned().unwrap_or_default();
    assert_eq!(orders["live_processes"], 1, "{json}");
    assert_eq!(orders["processes"][0]["pid"], worker.id().expect("running"), "{json}");
    // Every pool, the search indexer's too (its index under the data dir).
    assert!(pools.iter().any(|p| p["name"] == "catalog-index"), "{json}");
    let pid = worker.id().expect("running");
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await??;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

/// Pids of nats-server processes whose command line mentions `dir`. Panics when /proc
/// cannot be listed: "none found" must mean none runs, not that nothing was read.
pub(super) fn nats_servers_under(dir: &std::path::Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .expect("listing /proc")
        // A process that exits while listed is skipped, as one that never ran.
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("nats-server") && c.contains(&needle)
            })
        })
        .collect()
}

/// Ctrl-C while `souk dev` is still starting (its own nats-server already up, in a
/// process group of its own) ends it cleanly once start-up is done: the server is
/// stopped, not orphaned.
#[tokio::test]
async fn ctrl_c_during_start_up_stops_souk_dev_and_its_nats_server() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let mut child = souk_dev_with_own_nats(data.path(), &db.url, Stdio::null())?;
    let server =
        eventually(Duration::from_secs(30), || async { nats_servers_under(data.path()).first().copied() })
            .await?;
    let pid = child.id().expect("running");
    Command::new("kill").args(["-INT", &pid.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    assert!(status.success(), "exit status {status}");
    assert!(!std::path::Path::new(&format!("/proc/{server}")).exists(), "nats-server {server} left running");
    Ok(())
}

/// If the nats-server `souk dev` started dies under it, souk stops with a failure
/// rather than stay up answering 503 with nobody to restart the server.
#[tokio::test]
async fn souk_dev_stops_with_a_failure_when_its_nats_server_dies() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let mut child = souk_dev_with_own_nats(data.path(), &db.url, Stdio::piped())?;
    api_address(&mut child).await?;
    let server = *nats_servers_under(data.path()).first().expect("its nats-server runs");
    Command::new("kill").args(["-KILL", &server.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait()).await??;
    assert!(!status.success(), "exit status {status}");
    Ok(())
}

/// Key files under `dir` for `(kid, secret)` pairs, as the `SOUK_JWT_KEYS` value naming
/// them (first signs).
pub(crate) fn jwt_keys(dir: &std::path::Path, keys: &[(&str, &[u8])]) -> anyhow::Result<String> {
    let mut entries = Vec::new();
    for (kid, secret) in keys {
        let file = dir.join(format!("{kid}.key"));
        std::fs::write(&file, secret)?;
        entries.push(format!("{{kid = \"{kid}\", file = \"{}\"}}", file.display()));
    }
    Ok(format!("[{}]", entries.join(", ")))
}

/// A migrated database and a NATS server with the topology applied.
async fn servers() -> anyhow::Result<(NatsServer, TestDb)> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    souk_topologies::apply::apply(&js, &souk_testkit::test_topology()?, souk_topologies::apply::Mode::Apply)
        .await?;
    Ok((nats, db))
}

/// `souk ingress` and `souk worker` without configured keys stop at once, saying what
/// to configure, and generate nothing; only `souk dev` makes a key. (Before, both
/// generated a key into the data dir and ran.)
#[tokio::test]
async fn production_processes_refuse_to_start_without_signing_keys() -> anyhow::Result<()> {
    let (nats, db) = servers().await?;
    let data = tempfile::tempdir()?;
    for role in ["ingress", "worker"] {
        let run = souk(data.path())
            .args([role, "--http-addr", "127.0.0.1:0"])
            .env("SOUK_NATS_URL", nats.url())
            .env("DATABASE_URL", &db.url)
            .env_remove("SOUK_JWT_KEYS")
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| anyhow::anyhow!("souk {role} started without signing keys"))??;
        assert!(!out.status.success(), "souk {role}");
        let said = String::from_utf8(out.stderr)?;
        assert!(said.contains("no JWT signing keys configured") && said.contains("jwt-keys"), "{said}");
    }
    assert!(!data.path().join("jwt.key").exists(), "no key was generated");
    // Nor does `souk token` make one up: it would sign with a key nobody verifies.
    let token = souk(data.path()).args(["token", "--sub", "zoe", "--role", "buyer"]).output().await?;
    assert!(!token.status.success());
    assert!(String::from_utf8(token.stderr)?.contains("no signing key"));
    assert!(!data.path().join("jwt.key").exists(), "no key was generated");
    Ok(())
}

/// Rotation without downtime: `souk ingress` with two keys accepts tokens of both (and
/// of no other); `souk token` signs with the first and says it is for development.
/// `/metrics` is not on the public API.
#[tokio::test]
async fn souk_ingress_verifies_tokens_of_every_configured_key() -> anyhow::Result<()> {
    let (nats, db) = servers().await?;
    let data = tempfile::tempdir()?;
    let keys = jwt_keys(data.path(), &[("k2", &[2u8; 32]), ("k1", &[1u8; 32])])?;
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let _ingress = souk(data.path())
        .args(["ingress", "--http-addr", &addr.to_string()])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SOUK_JWT_KEYS", &keys)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let http = reqwest::Client::new();
    let api = format!("http://{addr}");
    eventually(Duration::from_secs(30), || async {
        let r = http.get(format!("{api}/healthz")).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await?;
    assert_eq!(http.get(format!("{api}/metrics")).send().await?.status().as_u16(), 404);
    souk_testkit::catalog::seed_skus(&db.pool, "dev", &["ROT-1"]).await?;

    let minted = souk(data.path())
        .args(["token", "--sub", "zoe", "--role", "buyer"])
        .env("SOUK_JWT_KEYS", &keys)
        .output()
        .await?;
    assert!(minted.status.success());
    assert!(String::from_utf8(minted.stderr)?.contains("DEVELOPMENT token"));
    let by_souk_token = String::from_utf8(minted.stdout)?.trim().to_owned();
    let key = |kid: &str, byte: u8| souk_ingress::Keys::new(vec![(kid.to_owned(), vec![byte; 32])]);
    let claims =
        souk_ingress::Claims::new("zoe", "dev", vec![souk_ingress::Role::Buyer], Duration::from_secs(60));
    let cases = [
        ("souk token (k2)", by_souk_token, 202),
        ("old key k1", key("k1", 1)?.mint(&claims), 202),
        ("new key k2", key("k2", 2)?.mint(&claims), 202),
        ("unknown key k3", key("k3", 3)?.mint(&claims), 401),
        ("k1's id, k3's secret", key("k1", 3)?.mint(&claims), 401),
    ];
    for (i, (name, token, status)) in cases.into_iter().enumerate() {
        let r = http
            .post(format!("{api}/v1/orders"))
            .bearer_auth(&token)
            .header("idempotency-key", format!("rot-{i}"))
            .json(&order_body("ROT-1", 1))
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), status, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn souk_sandbox_payments_serves_a_labelled_sandbox_and_keeps_its_key_to_itself() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let key_file = data.path().join("sandbox.key");
    let mut child = souk(data.path())
        .args(["sandbox", "payments", "--port", "0", "--provider-name", "cli-test", "--fault", "latency=1ms"])
        .arg("--credentials")
        .arg(&key_file)
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stdout.take().expect("stdout piped")).lines();
    let mut banner = String::new();
    let url = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await??
            .ok_or_else(|| anyhow::anyhow!("no URL in the banner: {banner}"))?;
        banner.push_str(&line);
        if let Some(url) = line.trim().strip_prefix("URL") {
            break url.split_whitespace().next().unwrap_or_default().to_owned();
        }
    };
    let key = std::fs::read_to_string(&key_file)?;
    assert!(banner.contains("SANDBOX") && !banner.contains(key.trim()), "{banner}");
    let page = reqwest::get(&url).await?;
    assert_eq!(page.headers().get("x-sandbox-provider").map(|v| v.as_bytes()), Some(&b"cli-test"[..]));
    assert!(page.text().await?.contains("SANDBOX"));
    let unauthenticated = reqwest::Client::new().post(format!("{url}/alpha/v1/payments")).send().await?;
    assert_eq!(unauthenticated.status(), 401);
    let pid = child.id().expect("running");
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

#[tokio::test]
async fn bad_payment_settings_and_sandbox_flags_get_clear_errors() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    /// Arguments, environment, and what the error must name.
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 4] = [
        (&["config"], &[("SOUK_PAYMENTS_PRIMARY_URL", "ftp://pay:1")], "payments.primary-url"),
        (&["config"], &[("SOUK_PAYMENTS_SECONDARY_URL", "http://pay:2")], "needs payments.primary-url"),
        (&["config"], &[("SOUK_PAYMENTS_BUDGET", "1m")], "payments.budget"),
        (
            &["sandbox", "payments", "--port", "0", "--provider-name", "p", "--fault", "error-rate=2"],
            &[],
            "error-rate",
        ),
    ];
    for (args, env, expected) in cases {
        let out = souk(data.path()).args(args).envs(env.iter().copied()).output().await?;
        assert!(!out.status.success(), "{args:?} {env:?}");
        let said = String::from_utf8(out.stderr)?;
        assert!(said.contains(expected), "{args:?} {env:?}: {said}");
    }
    let shown = souk(data.path())
        .arg("config")
        .env("SOUK_PAYMENTS_PRIMARY_URL", "https://user:secret6@pay.example")
        .output()
        .await?;
    assert!(shown.status.success());
    let shown = String::from_utf8(shown.stdout)?;
    assert!(shown.contains("[payments]") && !shown.contains("secret6"), "{shown}");
    Ok(())
}

/// `catalog-max-backlog` (the catalog admission bound) is a setting like the others:
/// its default, `SOUK_CATALOG_MAX_BACKLOG`, `0s` to turn it off, and a clear error for
/// a value out of range.
#[tokio::test]
async fn the_catalog_admission_bound_is_a_setting() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let shown = |env: Option<&'static str>| {
        let mut command = souk(data.path());
        command.arg("config");
        if let Some(value) = env {
            command.env("SOUK_CATALOG_MAX_BACKLOG", value);
        }
        command.output()
    };
    for (env, expected) in [(None, "500ms"), (Some("2s"), "2s"), (Some("0s"), "0s")] {
        let out = shown(env).await?;
        assert!(out.status.success(), "{env:?}: {}", String::from_utf8_lossy(&out.stderr));
        let config = String::from_utf8(out.stdout)?;
        assert!(config.contains(&format!("catalog-max-backlog = \"{expected}\"")), "{env:?}: {config}");
    }
    for bad in ["10ms", "1h"] {
        let out = shown(Some(bad)).await?;
        assert!(!out.status.success(), "{bad}");
        assert!(String::from_utf8(out.stderr)?.contains("catalog-max-backlog must be"), "{bad}");
    }
    Ok(())
}

/// `souk ingress` and `souk worker` do not migrate, and refuse to start on a database
/// older than their release, naming `souk migrate` — rather than run handlers that
/// write states, call functions or rely on constraints the schema does not have yet,
/// where each failure reads as a bad message and is dead-lettered (found in review:
/// a `refunding` saga or an authorize call on an unmigrated database).
#[tokio::test]
async fn production_processes_refuse_a_database_their_release_has_not_migrated() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    let data = tempfile::tempdir()?;
    let keys = jwt_keys(data.path(), &[("k1", &[1u8; 32])])?;
    for role in ["ingress", "worker"] {
        let run = souk(data.path())
            .args([role, "--http-addr", "127.0.0.1:0"])
            .env("SOUK_NATS_URL", nats.url())
            .env("DATABASE_URL", &db.url)
            .env("SOUK_JWT_KEYS", &keys)
            .env("SOUK_PAYMENTS_PRIMARY_URL", "http://127.0.0.1:9")
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| anyhow::anyhow!("souk {role} started on an unmigrated database"))??;
        assert!(!out.status.success(), "souk {role}");
        let said = String::from_utf8(out.stderr)?;
        assert!(said.contains("is at migration none") && said.contains("souk migrate"), "{said}");
    }
    // One migration behind: refused the same way.
    souk_stores::postgres::migrate(&db.pool).await?;
    let (needed, applied) = souk_stores::postgres::schema_versions(&db.pool).await?;
    assert_eq!(applied, Some(needed));
    sqlx::query("delete from _sqlx_migrations where version = $1").bind(needed).execute(&db.pool).await?;
    let out = souk(data.path())
        .args(["worker", "--http-addr", "127.0.0.1:0"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SOUK_JWT_KEYS", &keys)
        .env("SOUK_PAYMENTS_PRIMARY_URL", "http://127.0.0.1:9")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await??;
    assert!(!out.status.success());
    let said = String::from_utf8(out.stderr)?;
    assert!(said.contains(&format!("this release needs {needed}")), "{said}");
    Ok(())
}
