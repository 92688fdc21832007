//! The alerting shipped for operators' own Prometheus and Grafana: the rules pass
//! `promtool check rules`, and every metric the rules and the Grafana dashboard name is
//! one a running souk exports — scraped from `souk dev`'s `/metrics` after an order went
//! through, not parsed from the code.

use super::binary::{api_address, souk};
use souk_testkit::{NatsServer, TestDb, eventually, order_body};
use std::{collections::BTreeSet, path::PathBuf, process::Stdio, time::Duration};
use tokio::process::Command;

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// Every `souk_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("souk_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The sample names of a Prometheus text exposition (`name{labels} value`).
fn exported(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn alert_rules_pass_promtool_and_every_metric_they_and_the_dashboard_name_is_exported()
-> anyhow::Result<()> {
    let rules = deploy("prometheus/alerts.yml");
    let check =
        Command::new("promtool").arg("check").arg("rules").arg(&rules).output().await.map_err(|e| {
            anyhow::anyhow!("promtool: {e} (scripts/prepare installs it: Debian's prometheus package)")
        })?;
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The rules' own cases (deploy/prometheus/alerts_test.yml): which series page.
    let cases = Command::new("promtool")
        .arg("test")
        .arg("rules")
        .arg(deploy("prometheus/alerts_test.yml"))
        .output()
        .await?;
    assert!(
        cases.status.success(),
        "{}{}",
        String::from_utf8_lossy(&cases.stdout),
        String::from_utf8_lossy(&cases.stderr)
    );
    let rules_text = std::fs::read_to_string(&rules)?;
    let grafana_text = std::fs::read_to_string(deploy("grafana/souk.json"))?;
    let grafana: serde_json::Value = serde_json::from_str(&grafana_text)?;
    let panels = grafana["panels"].as_array().map_or(0, Vec::len);
    assert!(panels >= 10, "{panels} panels");
    let named: BTreeSet<String> =
        metric_names(&rules_text).into_iter().chain(metric_names(&grafana_text)).collect();
    for expected in [
        "souk_consumer_pending_messages",
        "souk_dlq_messages",
        "souk_outbox_oldest_unpublished_seconds",
        "souk_pool_live_processes",
        "souk_worker_messages_total",
        "souk_sink_writes_total",
        "souk_worker_waiting_messages",
        "souk_payments_breaker_state",
    ] {
        assert!(metric_names(&rules_text).contains(expected), "the rules use {expected}");
    }

    // A running souk with load: one order placed and handled.
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    let data = tempfile::tempdir()?;
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let mut dev = souk(data.path())
        .args(["dev", "--http-addr", "127.0.0.1:0"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SOUK_METRICS_ADDR", metrics_addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let api = api_address(&mut dev).await?;
    // Orders are priced from the catalog: the SKU must be on sale first.
    souk_testkit::catalog::seed_skus(&db.pool, "dev", &["ALERT-1"]).await?;
    let token = souk(data.path()).args(["token", "--sub", "ops", "--role", "buyer"]).output().await?;
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let http = reqwest::Client::new();
    let placed = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "alerts-1")
        .json(&order_body("ALERT-1", 1))
        .send()
        .await?;
    assert_eq!(placed.status().as_u16(), 202);
    // A product written through the API reaches the search index: the sink metrics.
    let seller = souk(data.path())
        .args(["token", "--sub", "ops-seller", "--role", "seller", "--seller", "S1"])
        .output()
        .await?;
    let seller = String::from_utf8(seller.stdout)?.trim().to_owned();
    let product = crate::catalog::mug("Alert mug");
    let written = http
        .put(format!("{api}/v1/sellers/S1/products/ALERT-MUG"))
        .bearer_auth(&seller)
        .header("idempotency-key", "alerts-product-1")
        .json(&product)
        .send()
        .await?;
    assert_eq!(written.status().as_u16(), 202, "{}", written.text().await?);
    // A search runs on the search threads: their queue metrics.
    let searched = http.get(format!("{api}/v1/search?q=mug")).send().await?;
    assert_eq!(searched.status().as_u16(), 200, "{}", searched.text().await?);
    // The gauges refresh every 10 s: wait for the heartbeat to count, and the order's
    // handling to show.
    let scraped = eventually(Duration::from_secs(60), || async {
        let text = http.get(format!("http://{metrics_addr}/metrics")).send().await?.text().await?;
        let ready = text.contains(r#"souk_pool_live_processes{pool="orders"} 1"#)
            && text.contains("souk_worker_messages_total{")
            && text.contains(r#"souk_sink_items_total{sink="search"} 1"#)
            && text.contains("souk_http_request_duration_seconds_bucket{")
            && text.contains("souk_search_queue_seconds")
            && text.contains("souk_search_queued");
        anyhow::Ok(ready.then_some(text))
    })
    .await?;
    let exported = exported(&scraped);
    let missing: Vec<&String> = named.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(missing.is_empty(), "named in alerts.yml or souk.json but not exported: {missing:?}\n{scraped}");

    let pid = dev.id().expect("running");
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(30), dev.wait()).await??;
    assert!(status.success(), "exit status {status}");
    Ok(())
}
