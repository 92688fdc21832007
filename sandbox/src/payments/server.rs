//! The sandbox's HTTP server: routes of both dialects, the admin endpoint, the `/`
//! page, and an accept loop of its own (hyper, not `axum::serve`) so that a request
//! can end its connection without an answer — the reset and lost-answer faults.

use super::{
    book::{Book, Operation},
    dialect::{Dialect, Problem, sandboxed},
    faults::{Fault, Faults},
};
use axum::{
    Extension, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use serde_json::json;
use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How to start a payment sandbox.
#[derive(Debug, Clone)]
pub struct SandboxOptions {
    /// Where to listen (port 0: any free port; read it back with [`PaymentSandbox::addr`]).
    pub addr: SocketAddr,
    /// The label of this instance (`primary`, `secondary`): in the `x-sandbox-provider`
    /// header of every answer and on its `/` page.
    pub provider_name: String,
    /// Required credentials; `None` takes every request (tests).
    pub api_key: Option<String>,
    pub faults: Faults,
}

impl SandboxOptions {
    /// A sandbox on a free port of 127.0.0.1 without credentials or faults.
    pub fn local(provider_name: &str) -> Self {
        SandboxOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            provider_name: provider_name.into(),
            api_key: None,
            faults: Faults::default(),
        }
    }
}

struct Shared {
    name: String,
    api_key: Option<String>,
    book: Mutex<Book>,
    faults: Mutex<(Faults, fastrand::Rng)>,
    /// API requests received (admin and `/` excluded).
    requests: AtomicU64,
    cancel: CancellationToken,
}

/// Ends the request's connection without an answer.
#[derive(Clone)]
struct Kill(Arc<Notify>);

/// A running payment sandbox.
pub struct PaymentSandbox {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PaymentSandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PaymentSandbox").field("addr", &self.addr).field("name", &self.shared.name).finish()
    }
}

impl PaymentSandbox {
    /// Bind and serve until [`stop`](Self::stop).
    pub async fn start(options: SandboxOptions) -> std::io::Result<PaymentSandbox> {
        options.faults.validate().map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind(options.addr).await?;
        let addr = listener.local_addr()?;
        let rng = fastrand::Rng::with_seed(options.faults.seed);
        let shared = Arc::new(Shared {
            name: options.provider_name,
            api_key: options.api_key,
            book: Mutex::default(),
            faults: Mutex::new((options.faults, rng)),
            requests: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        let task = tokio::spawn(accept(listener, router(shared.clone()), shared.cancel.clone()));
        tracing::info!(provider = %shared.name, %addr, "payment SANDBOX listening (no real money moves)");
        Ok(PaymentSandbox { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replace the faults (as `PUT /admin/faults` does).
    pub fn set_faults(&self, faults: Faults) -> Result<(), String> {
        set_faults(&self.shared, faults)
    }

    /// How many times money moved under `key` at this provider (0 or 1 for an honest one).
    pub fn effects(&self, key: &str) -> u32 {
        lock(&self.shared.book).effects(key)
    }

    /// Every key under which money moved at this provider, with how many times.
    pub fn moved_keys(&self) -> std::collections::HashMap<String, u32> {
        lock(&self.shared.book).moved_keys()
    }

    /// Every payment in this provider's books.
    pub fn payments(&self) -> Vec<super::book::PaymentView> {
        lock(&self.shared.book).payments()
    }

    /// API requests received so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Stop: stop accepting, end every connection (clients see the provider gone).
    pub async fn stop(self) {
        self.shared.cancel.cancel();
        let _ = self.task.await;
    }

    /// Until stopped by a cancelled `token`.
    pub async fn run_until(self, token: CancellationToken) {
        token.cancelled().await;
        self.stop().await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind: keep serving.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn set_faults(shared: &Shared, faults: Faults) -> Result<(), String> {
    faults.validate()?;
    let mut guard = lock(&shared.faults);
    let reseed = guard.0.seed != faults.seed;
    if reseed {
        guard.1 = fastrand::Rng::with_seed(faults.seed);
    }
    guard.0 = faults;
    Ok(())
}

fn router(shared: Arc<Shared>) -> Router {
    use Dialect::{Alpha, Beta};
    use Operation::{Authorize, Capture, Refund, Void};
    let op = |d: Dialect, o: Operation| {
        move |s: State<Arc<Shared>>, k: Extension<Kill>, h: HeaderMap, b: Bytes| {
            operate(s, k, h, d, o, None, b)
        }
    };
    let op_on = |d: Dialect, o: Operation| {
        move |s: State<Arc<Shared>>, k: Extension<Kill>, Path(id): Path<String>, h: HeaderMap, b: Bytes| {
            operate(s, k, h, d, o, Some(id), b)
        }
    };
    let lookup =
        |d: Dialect| move |s: State<Arc<Shared>>, h: HeaderMap, Path(key): Path<String>| status(s, h, d, key);
    Router::new()
        .route("/", get(front_page))
        .route("/alpha/v1/payments", post(op(Alpha, Authorize)))
        .route("/alpha/v1/payments/{id}/capture", post(op_on(Alpha, Capture)))
        .route("/alpha/v1/payments/{id}/void", post(op_on(Alpha, Void)))
        .route("/alpha/v1/payments/{id}/refunds", post(op_on(Alpha, Refund)))
        .route("/alpha/v1/idempotency/{key}", get(lookup(Alpha)))
        .route("/beta/charges", post(op(Beta, Authorize)))
        .route("/beta/charges/{id}/captures", post(op_on(Beta, Capture)))
        .route("/beta/charges/{id}/cancels", post(op_on(Beta, Void)))
        .route("/beta/charges/{id}/refunds", post(op_on(Beta, Refund)))
        .route("/beta/requests/{key}", get(lookup(Beta)))
        .route("/admin/faults", get(get_faults).put(put_faults))
        .fallback(|| async {
            sandboxed(
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "not_found", "message": "no such route; see /"}}),
            )
        })
        .layer(middleware::from_fn_with_state(shared.clone(), label))
        .with_state(shared)
}

/// Every answer says it comes from a sandbox, and which.
async fn label(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert("x-sandbox", HeaderValue::from_static("true"));
    if let Ok(name) = HeaderValue::from_str(&shared.name) {
        headers.insert("x-sandbox-provider", name);
    }
    response
}

async fn front_page(State(shared): State<Arc<Shared>>) -> Html<String> {
    Html(format!(
        "<!doctype html><title>souk payment SANDBOX</title>\
         <h1>souk payment provider SANDBOX — {name}</h1>\
         <p><strong>This is a sandbox.</strong> No real card is charged and no real money moves. \
         Card numbers are refused: use a payment token.</p>\
         <p>Tokens: {tokens}.</p>\
         <p>Dialects: <code>/alpha/v1/payments</code> (Idempotency-Key, Bearer key) and \
         <code>/beta/charges</code> (X-Request-Key, X-Api-Key). Faults: <code>GET/PUT /admin/faults</code>.</p>",
        name = html_escape(&shared.name),
        tokens = super::TOKENS.join(", "),
    ))
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn authenticated(shared: &Shared, headers: &HeaderMap, dialect: Dialect) -> Result<(), Problem> {
    match &shared.api_key {
        Some(key) if !dialect.authenticated(headers, key) => {
            Err(Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "missing or wrong API credentials"))
        }
        _ => Ok(()),
    }
}

/// The idempotency key of a request: present, printable, at most 255 bytes, no card number.
fn idempotency_key(headers: &HeaderMap, dialect: Dialect) -> Result<String, Problem> {
    let name = dialect.idempotency_header();
    let key = headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty() && k.len() <= 255)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "missing_idempotency_key",
                format!("the {name} header (1–255 characters) is required"),
            )
        })?;
    if souk_pipelines::pan::looks_like_pan(key) {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "card_number_refused",
            "card numbers are refused",
        ));
    }
    Ok(key.to_owned())
}

/// Draw this request's fault and apply what comes before processing; `Err`: the answer
/// already decided (503), or the connection ended.
async fn before(
    shared: &Shared,
    kill: &Kill,
    dialect: Dialect,
    moves_money: bool,
) -> Result<Fault, Response> {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let (latency, hang, fault) = {
        let mut guard = lock(&shared.faults);
        let (faults, rng) = &mut *guard;
        (faults.latency, faults.hang, faults.draw(rng, moves_money))
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let unavailable = || {
        dialect.problem(&Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "sandbox fault: service unavailable (the request was not processed)",
        ))
    };
    match fault {
        Fault::Hang => {
            tokio::select! {
                () = tokio::time::sleep(hang) => {}
                () = shared.cancel.cancelled() => {}
            }
            Err(unavailable())
        }
        Fault::Unavailable => Err(unavailable()),
        Fault::Throttled => Err(dialect.problem(&Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "sandbox fault: too many requests (the request was not processed)",
        ))),
        Fault::Reset if moves_money => Err(drop_connection(kill).await),
        // A status query is not reset (nothing listens to its `Kill`: ending it here
        // left it pending until the client gave up, a hang the fault table does not
        // have — and a client that cannot learn the status must hold, not fail over).
        Fault::Reset => Ok(Fault::None),
        Fault::None | Fault::Lost => Ok(fault),
    }
}

/// End the connection without an answer (the accept loop resets it).
async fn drop_connection(kill: &Kill) -> Response {
    kill.0.notify_one();
    futures::future::pending::<Response>().await
}

#[allow(clippy::too_many_arguments)]
async fn operate(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<Kill>,
    headers: HeaderMap,
    dialect: Dialect,
    operation: Operation,
    payment_id: Option<String>,
    body: Bytes,
) -> Response {
    if let Err(p) = authenticated(&shared, &headers, dialect) {
        return dialect.problem(&p);
    }
    let (key, request) = match idempotency_key(&headers, dialect)
        .and_then(|key| Ok((key, dialect.parse(operation, payment_id, &body)?)))
    {
        Ok(parsed) => parsed,
        Err(p) => return dialect.problem(&p),
    };
    let fault = match before(&shared, &kill, dialect, true).await {
        Ok(fault) => fault,
        Err(response) => return response,
    };
    let (result, slow) = {
        let mut book = lock(&shared.book);
        let token = request
            .token
            .clone()
            .or_else(|| request.payment_id.as_deref().and_then(|id| book.token_of(id)).map(str::to_owned));
        (book.execute(&key, request), token.as_deref() == Some("tok_slow"))
    };
    let (answer, replayed) = match result {
        Ok(done) => done,
        Err(refusal) => return dialect.refusal(&refusal),
    };
    tracing::info!(provider = %shared.name, dialect = dialect.as_str(), ?operation, replayed, "sandbox request processed");
    if slow && !replayed {
        let delay = lock(&shared.faults).0.slow;
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shared.cancel.cancelled() => {}
        }
    }
    if fault == Fault::Lost {
        return drop_connection(&kill).await;
    }
    dialect.answer(operation, &answer)
}

async fn status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    dialect: Dialect,
    key: String,
) -> Response {
    if let Err(p) = authenticated(&shared, &headers, dialect) {
        return dialect.problem(&p);
    }
    if souk_pipelines::pan::looks_like_pan(&key) {
        return dialect.problem(&Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "card_number_refused",
            "card numbers are refused",
        ));
    }
    // Status queries see latency, hangs and 503s, but not resets (no Kill here) or lost answers.
    let kill = Kill(Arc::new(Notify::new()));
    if let Err(response) = before(&shared, &kill, dialect, false).await {
        return response;
    }
    let found = lock(&shared.book).answer(&key);
    dialect.lookup(found)
}

fn admin_authenticated(shared: &Shared, headers: &HeaderMap) -> Result<(), Problem> {
    match &shared.api_key {
        Some(key)
            if !Dialect::Alpha.authenticated(headers, key) && !Dialect::Beta.authenticated(headers, key) =>
        {
            Err(Problem::new(StatusCode::UNAUTHORIZED, "unauthenticated", "missing or wrong API credentials"))
        }
        _ => Ok(()),
    }
}

async fn get_faults(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(p) = admin_authenticated(&shared, &headers) {
        return Dialect::Alpha.problem(&p);
    }
    let faults = lock(&shared.faults).0.clone();
    sandboxed(StatusCode::OK, serde_json::to_value(faults).unwrap_or_default())
}

async fn put_faults(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(p) = admin_authenticated(&shared, &headers) {
        return Dialect::Alpha.problem(&p);
    }
    let problem =
        |status, code, message: String| Dialect::Alpha.problem(&Problem::new(status, code, message));
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_faults", e.to_string()),
    };
    match set_faults(&shared, faults.clone()) {
        Ok(()) => {
            tracing::info!(provider = %shared.name, ?faults, "sandbox faults changed");
            sandboxed(StatusCode::OK, serde_json::to_value(faults).unwrap_or_default())
        }
        Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, "invalid_faults", e),
    }
}

async fn accept(listener: tokio::net::TcpListener, router: Router, cancel: CancellationToken) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox: accepting a connection failed");
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                    }
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let kill = Kill(Arc::new(Notify::new()));
        let service = tower::ServiceExt::map_request(router.clone(), {
            let kill = kill.clone();
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(kill.clone());
                request
            }
        });
        let mut connection = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let cancel = cancel.clone();
        tasks.spawn(async move {
            let reset = tokio::select! {
                _ = &mut connection => false,
                () = kill.0.notified() => true,
                () = cancel.cancelled() => false,
            };
            if reset {
                // A reset (RST), as a crashed provider or a middlebox would leave it.
                let _ = connection.into_parts().io.into_inner().set_zero_linger();
            }
        });
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        Dialect::Alpha.problem(&self)
    }
}
