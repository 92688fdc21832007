//! Traces leave the process: `souk dev` with `SOUK_OTLP_ENDPOINT` exports its spans to an
//! OTLP/HTTP receiver this test serves, one order making one trace from the HTTP request
//! to the relay's publish of its event; and its log lines carry the trace id.

use axum::{body::Bytes, http::StatusCode, routing::post};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use souk_testkit::{NatsServer, TestDb, eventually, order_body};
use std::{
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
};

use crate::binary::{api_address, souk};

/// One span as the receiver got it (ids in hex).
#[derive(Debug, Clone)]
struct Received {
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
}

/// An OTLP/HTTP (protobuf) trace receiver on a free port.
#[derive(Clone, Default)]
struct Collector(Arc<Mutex<Vec<Received>>>);

impl Collector {
    async fn start() -> anyhow::Result<(String, Collector)> {
        let collector = Collector::default();
        let spans = collector.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| {
                let spans = spans.clone();
                async move {
                    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    spans.record(request);
                    (StatusCode::OK, ExportTraceServiceResponse::default().encode_to_vec())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((url, collector))
    }

    fn record(&self, request: ExportTraceServiceRequest) {
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let spans = request.resource_spans.into_iter().flat_map(|r| r.scope_spans).flat_map(|s| s.spans);
        let mut all = self.0.lock().expect("not poisoned");
        all.extend(spans.map(|s| Received {
            name: s.name,
            trace_id: hex(&s.trace_id),
            span_id: hex(&s.span_id),
            parent: hex(&s.parent_span_id),
        }));
    }

    fn of_trace(&self, trace_id: &str) -> Vec<Received> {
        self.0.lock().expect("not poisoned").iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    fn trace_ids_of(&self, name: &str) -> Vec<String> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.trace_id.clone())
            .collect()
    }
}

/// The order's path, each span the child of the one before.
const PATH: [&str; 5] = ["http", "publish", "handle", "outbox", "relay.publish"];

/// The spans of `trace` form the order's path, each the parent of the next, the first a
/// child of `root` (the caller's span; empty: none). `None` while spans are missing.
///
/// The order's saga continues in the same trace (each step's command is handled under
/// the relay's publish of the row that sent it), so a trace holds more than one handle,
/// outbox and relay.publish span. The path is followed from the root: one request, one
/// publish of its command, one handling of that command; each outbox row that handling
/// wrote is published once, and the path follows the first.
fn chain(spans: &[Received], root: &str) -> Option<Vec<Received>> {
    let children = |parent: &str, name: &str| -> Vec<Received> {
        spans.iter().filter(|s| s.name == name && s.parent == parent).cloned().collect()
    };
    let https: Vec<Received> = spans.iter().filter(|s| s.name == PATH[0]).cloned().collect();
    assert!(https.len() <= 1, "one http span per order: {spans:#?}");
    let mut path = vec![https.first()?.clone()];
    assert_eq!(path[0].parent, root, "{path:#?}");
    for name in &PATH[1..3] {
        let found = children(&path[path.len() - 1].span_id, name);
        assert!(found.len() <= 1, "one {name} span per order: {spans:#?}");
        path.push(found.first()?.clone());
    }
    let rows = children(&path[2].span_id, PATH[3]);
    let mut published = Vec::new();
    for row in &rows {
        let relayed = children(&row.span_id, PATH[4]);
        assert!(relayed.len() <= 1, "each outbox row is published once: {spans:#?}");
        published.push((row.clone(), relayed.first()?.clone()));
    }
    let (row, relayed) = published.into_iter().next()?;
    path.extend([row, relayed]);
    for pair in path.windows(2) {
        assert_eq!(
            pair[1].parent, pair[0].span_id,
            "{} is a child of {}: {path:#?}",
            pair[1].name, pair[0].name
        );
    }
    Some(path)
}

#[tokio::test]
async fn one_order_is_one_exported_trace_from_request_to_relay() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    let (otlp, collector) = Collector::start().await?;
    let data = tempfile::tempdir()?;
    let mut child = souk(data.path())
        .args(["dev", "--http-addr", "127.0.0.1:0"])
        .env("SOUK_NATS_URL", nats.url())
        .env("DATABASE_URL", &db.url)
        .env("SOUK_OTLP_ENDPOINT", &otlp)
        // The request's own line ("order command stored") is at debug.
        .env("RUST_LOG", "info,souk_ingress=debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
    let lines = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            lines.lock().expect("not poisoned").push(line);
        }
    });
    let api = api_address(&mut child).await?;
    souk_testkit::catalog::seed_skus(&db.pool, "dev", &["TRACE-1", "TRACE-2"]).await?;
    let token = souk(data.path()).args(["token", "--sub", "zoe", "--role", "buyer"]).output().await?;
    anyhow::ensure!(token.status.success(), "souk token: {}", String::from_utf8_lossy(&token.stderr));
    let token = String::from_utf8(token.stdout)?.trim().to_owned();
    let http = reqwest::Client::new();

    // A caller that traces: the order continues its trace.
    let (trace_id, caller_span) = ("5e1f0c2d3b4a59687766554433221100", "00f067aa0ba902b7");
    let r = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "trace-1")
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .json(&order_body("TRACE-1", 1))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    // Exported while running (the batch exporter's schedule), not only at exit.
    eventually(Duration::from_secs(30), || async { chain(&collector.of_trace(trace_id), caller_span) })
        .await?;
    // The request's log line carries the trace id.
    let line = log
        .lock()
        .expect("not poisoned")
        .iter()
        .find(|l| l.contains("order command stored"))
        .cloned()
        .unwrap_or_default();
    let line: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| anyhow::anyhow!("{e}: {line:?}"))?;
    assert_eq!(line["trace_id"], trace_id, "{line}");

    // A caller that does not trace: souk starts the trace. Its spans are still queued
    // (the exporter sends every 5 s) when souk is told to stop: the stop flushes them.
    let r = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(&token)
        .header("idempotency-key", "trace-2")
        .json(&order_body("TRACE-2", 1))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    // Both orders' sagas done (every pool runs in `souk dev`) and every row they wrote
    // published: the second order's spans have all been made.
    eventually(Duration::from_secs(30), || async {
        let confirmed: i64 = sqlx::query_scalar("select count(*) from orders where status = 'confirmed'")
            .fetch_one(&db.pool)
            .await
            .ok()?;
        let unpublished: i64 = sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&db.pool)
            .await
            .ok()?;
        (confirmed == 2 && unpublished == 0).then_some(())
    })
    .await?;
    let pid = child.id().expect("running");
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "exit status {status}");
    let second: Vec<String> = collector.trace_ids_of("http").into_iter().filter(|t| t != trace_id).collect();
    assert_eq!(second.len(), 1, "one more request, one more trace: {second:?}");
    assert!(chain(&collector.of_trace(&second[0]), "").is_some(), "{:#?}", collector.of_trace(&second[0]));
    Ok(())
}

#[tokio::test]
async fn an_otlp_endpoint_that_cannot_work_is_refused_at_start() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    for endpoint in ["https://collector:4318", "collector:4318"] {
        let bad = souk(data.path()).arg("config").env("SOUK_OTLP_ENDPOINT", endpoint).output().await?;
        assert!(!bad.status.success(), "{endpoint} accepted");
        let stderr = String::from_utf8(bad.stderr)?;
        assert!(stderr.contains("otlp-endpoint must be an http:// URL"), "{stderr}");
    }
    let good = souk(data.path())
        .arg("config")
        .env("SOUK_OTLP_ENDPOINT", "http://otel:secret@collector:4318")
        .output()
        .await?;
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    let shown = String::from_utf8(good.stdout)?;
    assert!(shown.contains("collector:4318") && !shown.contains("secret"), "{shown}");
    Ok(())
}
