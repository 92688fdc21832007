//! The HTTP edge against slow and abusive clients (issue 8, items 7 and 12): raw
//! sockets and bursts against the real listener.

use axum::{
    body::Body,
    http::{Method, Request},
};
use souk_ingress::{Claims, ConnectionLimits, Role};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{env, env_with, parse_response, raw_get, send};

const VALID: &str = r#"{"lines":[{"sku":"A-1","quantity":1}],"payment_token":"tok_ok"}"#;

/// A client that starts a request and never finishes its headers is disconnected after
/// the shipped header-read timeout; with `axum::serve` it held its socket for ever.
#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() -> anyhow::Result<()> {
    let mut env = env().await?;
    let addr = env.listen().await?;
    let mut slow = tokio::net::TcpStream::connect(addr).await?;
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: souk\r\nx-slow: 1").await?;
    let started = Instant::now();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(60), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the slow client still holds its socket after {:?}", started.elapsed());
    // The server closed it (with a 408 or nothing at all); it never answered the request.
    let text = String::from_utf8_lossy(&rest);
    assert!(!text.contains("200 OK"), "{text}");
    assert!(started.elapsed() >= ConnectionLimits::default().header_read_timeout / 2);
    // Meanwhile, other clients are served.
    assert_eq!(raw_get(addr, "/healthz").await?.0, 200);
    Ok(())
}

/// Connections beyond the cap are answered 503 and closed at once; when one closes, a
/// new one is served again.
#[tokio::test]
async fn connections_over_the_cap_get_503_and_are_closed() -> anyhow::Result<()> {
    let cap = 4;
    let limits = ConnectionLimits { max_connections: cap, ..ConnectionLimits::default() };
    let mut env = env_with(None, limits).await?;
    let addr = env.listen().await?;
    // `cap` keep-alive connections, each served once, so each surely holds its place.
    let mut held = Vec::new();
    for _ in 0..cap {
        let mut c = tokio::net::TcpStream::connect(addr).await?;
        c.write_all(b"GET /healthz HTTP/1.1\r\nhost: souk\r\n\r\n").await?;
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await??;
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        held.push(c);
    }
    let mut extra = tokio::net::TcpStream::connect(addr).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), extra.read_to_string(&mut answer))
        .await
        .map_err(|_| anyhow::anyhow!("the connection over the cap was neither answered nor closed"))??;
    let (status, body) = parse_response(&answer)?;
    assert_eq!(status, 503, "{answer}");
    assert!(body.contains("https://souk.dev/problems/unavailable"), "{body}");

    drop(held.pop());
    let served = souk_testkit::eventually(Duration::from_secs(10), || async {
        raw_get(addr, "/healthz").await.ok().filter(|(status, _)| *status == 200)
    })
    .await;
    assert!(served.is_ok(), "a place freed by a closed connection is taken again");
    Ok(())
}

/// A client that sends requests and never reads the answers (pipelined, so the server
/// keeps writing until both socket buffers are full) leaves the server blocked in a
/// write: the header-read timeout does not apply there, so the connection — and its
/// place under the cap — was held for ever. Enough such clients lock everyone out.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_disconnected() -> anyhow::Result<()> {
    // One place, so that the held one is visible; the timers are the shipped ones.
    let limits = ConnectionLimits { max_connections: 1, ..ConnectionLimits::default() };
    let mut env = env_with(None, limits).await?;
    let addr = env.listen().await?;
    let (unread, mut write) = tokio::net::TcpStream::connect(addr).await?.into_split();
    // Far more answers than the kernel buffers of both ends hold.
    let requests = b"GET /healthz HTTP/1.1\r\nhost: souk\r\n\r\n".repeat(100_000);
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&requests).await;
        write // kept open: no FIN
    });
    let served = souk_testkit::eventually(Duration::from_secs(90), || async {
        raw_get(addr, "/healthz").await.ok().filter(|(status, _)| *status == 200)
    })
    .await;
    assert!(served.is_ok(), "a client that never reads keeps its connection (and the only place) for ever");
    drop(unread);
    writer.abort();
    Ok(())
}

/// `/metrics` is not served to the public; the internal listener serves it.
#[tokio::test]
async fn metrics_are_served_on_the_internal_listener_only() -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let mut env = env().await?;
    let public = env.listen().await?;
    assert_eq!(raw_get(public, "/healthz").await?.0, 200);
    let (status, body) = raw_get(public, "/metrics").await?;
    assert_eq!(status, 404, "{body}");

    let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let internal_addr = internal.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    tokio::spawn(souk_ingress::serve_internal(internal, handle, stop));
    let (status, body) = raw_get(internal_addr, "/metrics").await?;
    assert_eq!(status, 200);
    assert!(body.contains("souk_http_requests_total"), "{body}");
    Ok(())
}

/// However many `/readyz` calls arrive at once, NATS sees one readiness check per
/// second at most (counted on the server: every check asks JetStream for its account
/// info on `$JS.API.INFO`).
#[tokio::test]
async fn a_burst_of_readiness_probes_makes_one_check() -> anyhow::Result<()> {
    let env = env().await?;
    let mut checks = env.client.subscribe("$JS.API.INFO").await?;
    env.client.flush().await?;
    let started = Instant::now();
    let probes = (0..200).map(|_| async {
        let (status, _, body) = send(env.router(), Request::get("/readyz").body(Body::empty())?).await?;
        anyhow::ensure!(status == 200, "{body}");
        anyhow::Ok(())
    });
    for probe in futures::future::join_all(probes).await {
        probe?;
    }
    let elapsed = started.elapsed();
    // The ingress publishes on this same connection, so a marker sent now arrives after
    // every check it sent.
    env.client.publish("$JS.API.INFO", "marker".into()).await?;
    let mut seen = 0u64;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut checks))
            .await?
            .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
        if msg.payload.as_ref() == b"marker" {
            break;
        }
        seen += 1;
    }
    assert!(seen >= 1, "the probes checked JetStream");
    assert!(seen <= elapsed.as_secs() + 1, "{seen} checks for 200 probes in {elapsed:?}");
    Ok(())
}

/// Made-up method names (and 8 KB ones) all count under one `other` label: the
/// exposition does not grow with them.
#[tokio::test]
async fn made_up_methods_share_one_metrics_label() -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let env = env().await?;
    let mut methods: Vec<String> = (0..200).map(|i| format!("MADEUP{i}")).collect();
    methods.push("L".repeat(8 * 1024));
    for (i, method) in methods.iter().enumerate() {
        let path = if i % 2 == 0 { "/v1/orders" } else { "/no-such-route" };
        let request = Request::builder().method(Method::from_bytes(method.as_bytes())?).uri(path);
        send(env.router(), request.body(Body::empty())?).await?;
    }
    let text = handle.render();
    assert!(!text.contains("MADEUP"), "a client-made method became a label");
    assert!(!text.contains("LLLL"), "a client-made method became a label");
    assert!(text.contains(r#"method="other""#), "{text}");
    assert!(text.len() < 32 * 1024, "the exposition grew to {} bytes", text.len());
    Ok(())
}

/// Two `Authorization` or two `Idempotency-Key` headers are refused: which one counts
/// would be a guess.
#[tokio::test]
async fn duplicate_credential_and_key_headers_are_refused() -> anyhow::Result<()> {
    let env = env().await?;
    let (a, b) = (
        env.token(&[Role::Buyer]),
        env.keys.mint(&Claims::new("u2", "t1", vec![Role::Buyer], Duration::from_secs(60))),
    );
    let requests = [
        Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {a}"))
            .header("authorization", format!("Bearer {b}"))
            .header("idempotency-key", "k-1")
            .body(Body::from(VALID))?,
        Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {a}"))
            .header("idempotency-key", "k-1")
            .header("idempotency-key", "k-2")
            .body(Body::from(VALID))?,
        Request::get(format!("/v1/orders/{}", uuid::Uuid::now_v7()))
            .header("authorization", format!("Bearer {a}"))
            .header("authorization", format!("Bearer {b}"))
            .body(Body::empty())?,
    ];
    for request in requests {
        let (status, content_type, problem) = send(env.router(), request).await?;
        assert_eq!((status, content_type.as_str()), (400, "application/problem+json"), "{problem}");
        assert_eq!(problem["type"], "https://souk.dev/problems/duplicate-header");
    }
    assert_eq!(env.keys_claimed().await?, 0);
    assert_eq!(env.commands_published().await?, 0);
    Ok(())
}

/// A 404 for another tenant's existing order does the same work as a 404 for an order
/// that does not exist: the same statements, counted from sqlx's own statement log.
/// (The first answered after one read, the second after two: measurably faster.)
#[tokio::test]
async fn another_tenants_order_and_no_order_cost_the_same_404() -> anyhow::Result<()> {
    let log = Capture::install("sqlx::query=debug");
    let env = env().await?;
    let theirs = uuid::Uuid::now_v7();
    sqlx::query(
        "insert into orders (order_id, tenant, buyer_id, status, currency, total_minor, lines, placed_at)
         values ($1, 't2', 'u9', 'accepted', 'EUR', 100, '[]', now())",
    )
    .bind(theirs)
    .execute(&env.db.pool)
    .await?;
    let token = env.token(&[Role::Buyer]);
    let mut statements = Vec::new();
    let mut bodies = Vec::new();
    for id in [theirs, uuid::Uuid::now_v7()] {
        log.take();
        let request = Request::get(format!("/v1/orders/{id}"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())?;
        let (status, _, body) = send(env.router(), request).await?;
        assert_eq!(status, 404, "{body}");
        bodies.push(body);
        let mut issued: Vec<String> =
            log.take().lines().filter(|l| l.contains("sqlx::query")).map(statement_of).collect();
        issued.sort();
        statements.push(issued);
    }
    assert_eq!(bodies[0], bodies[1], "the two 404s must not differ");
    assert!(!statements[1].is_empty(), "statements are captured");
    assert_eq!(statements[0], statements[1], "both 404s must run the same statements");
    Ok(())
}

/// The statement text of one captured sqlx log line (without timings).
fn statement_of(line: &str) -> String {
    let from = line.find("summary=").unwrap_or(0);
    let text = &line[from..];
    text.split(" rows_affected").next().unwrap_or(text).to_owned()
}

/// While JetStream is down, a storm of 503s logs one summary line a second, not one
/// line per request.
#[tokio::test]
async fn a_storm_of_503s_is_logged_as_a_summary() -> anyhow::Result<()> {
    let log = Capture::install("souk_ingress=warn");
    let mut env = env().await?;
    env.nats.kill().await?;
    let token = env.token(&[Role::Buyer]);
    let started = Instant::now();
    let posts = (0..100).map(|i| {
        let request = Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", format!("storm-{i}"))
            .body(Body::from(VALID));
        let router = env.router();
        async move { send(router, request?).await }
    });
    for answer in futures::future::join_all(posts).await {
        assert_eq!(answer?.0, 503);
    }
    let elapsed = started.elapsed();
    let text = log.take();
    let lines = text.lines().filter(|l| l.contains("order not accepted")).count() as u64;
    assert!(lines >= 1, "the outage is logged: {text}");
    assert!(lines <= elapsed.as_secs() + 1, "{lines} lines for 100 refusals in {elapsed:?}:\n{text}");
    Ok(())
}

/// Log lines written by this test process, filtered by `directives`.
#[derive(Clone)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl Capture {
    pub fn install(directives: &str) -> Capture {
        let capture = Capture(Arc::default());
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(directives))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        // Each nextest test is its own process: the global default is this test's.
        let _ = tracing::subscriber::set_global_default(subscriber);
        capture
    }

    /// What was written since the last call.
    pub fn take(&self) -> String {
        let bytes = self.0.lock().map(|mut b| std::mem::take(&mut *b)).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut b) = self.0.lock() {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Shutdown drains: a request whose handler is running when the server is told to stop
/// (here: reading its body, as `100 Continue` shows) is still answered, and stored.
#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered() -> anyhow::Result<()> {
    let mut env = env().await?;
    let addr = env.listen().await?;
    let token = env.token(&[Role::Buyer]);
    let mut c = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: souk\r\nauthorization: Bearer {token}\r\n\
         idempotency-key: drain-1\r\ncontent-type: application/json\r\nexpect: 100-continue\r\n\
         content-length: {}\r\n\r\n",
        VALID.len()
    );
    c.write_all(head.as_bytes()).await?;
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), c.read(&mut buf)).await??;
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"), "no 100 Continue");
    env.stop.cancel();
    c.write_all(VALID.as_bytes()).await?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), c.read_to_string(&mut answer)).await??;
    let (status, body) = crate::parse_response(&answer)?;
    assert_eq!(status, 202, "{answer}");
    assert!(body.contains("order_id"), "{body}");
    assert_eq!(env.commands_published().await?, 1);
    Ok(())
}
