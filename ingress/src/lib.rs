//! # souk-ingress — the HTTP API
//!
//! A thin axum front: authenticate (JWT bearer with roles), validate, enforce
//! idempotency, publish the command to JetStream and answer `202 Accepted` only once
//! JetStream has acknowledged it (DESIGN.md invariant 1). Concurrent requests share
//! Postgres round trips (idempotency claims) and JetStream atomic batches (group
//! commit), so one fsync serves many requests; a handful of requests go as single
//! publishes instead, which is faster below ~20 (see `souk_topologies::group_commit`).
//! Reads go to Postgres.
//! Every error is `application/problem+json`.
//!
//! Build with [`Ingress::build`], serve with [`Ingress::serve`] (or take
//! [`Ingress::router`] for in-process tests). The listener has a header-read timeout
//! and a connection cap ([`ConnectionLimits`]); `/metrics` is served on a separate,
//! internal listener ([`serve_internal`]), never on the public one.
//!
//! Every public route is registered in `routes.rs` (one table) from handlers that carry
//! `#[utoipa::path]`, so the OpenAPI 3.1 document ([`openapi`], served at
//! `GET /v1/openapi.json`) lists exactly what is routed.

pub mod auth;
mod backlog;
mod cart;
mod catalog;
mod checkout;
mod fulfilment;
mod intake;
mod jobs;
mod limits;
mod metrics_layer;
mod openapi;
mod orders;
mod pricing;
mod probes;
mod problem;
mod products;
mod request_body;
mod routes;
pub mod search;
mod server;
mod throttle;

pub use auth::{Claims, KeyError, Keys, Role};
pub use backlog::{BacklogLimit, MIN_BACKLOG};
pub use intake::IntakeOptions;
pub use limits::RateLimit;
pub use problem::Problem;
pub use routes::openapi;
pub use search::SearchOptions;
pub use server::ConnectionLimits;

use axum::{Router, extract::DefaultBodyLimit};
use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

/// Largest request body accepted (orders are small; this bounds memory per request).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Time a request gets to send its body, on top of the write timeout: a request taking
/// longer is answered 408.
pub const BODY_ALLOWANCE: Duration = Duration::from_secs(5);

/// Everything the ingress needs.
#[derive(Clone)]
pub struct IngressOptions {
    pub keys: Keys,
    pub pool: PgPool,
    pub nats: async_nats::Client,
    /// Longest a write waits for Postgres and JetStream before answering 503.
    pub write_timeout: Duration,
    pub intake: IntakeOptions,
    /// Writes and reads per principal (tenant + subject); `None` for no limit.
    pub rate_limit: Option<RateLimit>,
    /// Header-read timeout and connection cap of the listener.
    pub connections: ConnectionLimits,
    /// The search index for `GET /v1/search`; `None`: this process does not serve
    /// search (503).
    pub search: Option<SearchOptions>,
    /// The tenant public reads (no token) read: [`DEFAULT_PUBLIC_TENANT`] unless configured.
    pub public_tenant: String,
}

/// The tenant public product reads use when no token is sent, unless configured: the
/// one `souk token` mints for by default.
pub const DEFAULT_PUBLIC_TENANT: &str = "dev";

impl std::fmt::Debug for IngressOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressOptions").field("write_timeout", &self.write_timeout).finish_non_exhaustive()
    }
}

pub(crate) struct AppState {
    keys: Keys,
    pool: PgPool,
    nats: async_nats::Client,
    intake: intake::Intake,
    limiter: Option<limits::Limiter>,
    readiness: probes::ReadinessCache,
    /// The tenant of anonymous product reads.
    public_tenant: String,
    /// One "not accepted" line per second during a storm of 503s.
    unavailable_log: throttle::LogThrottle,
    search: Option<SearchOptions>,
    /// Catalog writes are refused while the catalog pool is this far behind.
    catalog_backlog: Option<backlog::Backlog>,
}

/// A built ingress: its router and the background batchers behind it.
pub struct Ingress {
    router: Router,
    background: TaskTracker,
    stop_background: CancellationToken,
    /// Longest one request may take (see `BODY_ALLOWANCE`).
    request_timeout: Duration,
    connections: ConnectionLimits,
}

impl std::fmt::Debug for Ingress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ingress").finish_non_exhaustive()
    }
}

impl Ingress {
    /// Build the router and start the batchers.
    pub fn build(options: IngressOptions) -> Ingress {
        let stop_background = CancellationToken::new();
        let (intake, background) = intake::Intake::spawn(
            options.pool.clone(),
            options.nats.clone(),
            options.intake.clone(),
            options.write_timeout,
            stop_background.clone(),
        );
        let limiter =
            options.rate_limit.map(|limit| limits::Limiter::spawn(limit, &background, &stop_background));
        let catalog_backlog =
            options.intake.catalog_backlog.clone().map(|limit| {
                backlog::Backlog::spawn(limit, options.nats.clone(), &background, &stop_background)
            });
        let state = Arc::new(AppState {
            keys: options.keys,
            pool: options.pool,
            nats: options.nats,
            intake,
            limiter,
            readiness: probes::ReadinessCache::default(),
            public_tenant: options.public_tenant,
            unavailable_log: throttle::LogThrottle::new(Duration::from_secs(1)),
            search: options.search,
            catalog_backlog,
        });
        // A request, body upload included, gets its write timeout plus time to send
        // the body: a client trickling a body must not hold a connection (or, at
        // shutdown, the drain) for ever.
        let request_timeout = options.write_timeout + BODY_ALLOWANCE;
        let router = routes::router()
            .layer(axum::middleware::from_fn(problem::framework_errors_as_problems))
            .layer(axum::middleware::from_fn(move |request, next| {
                problem::within(request_timeout, request, next)
            }))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            .layer(axum::middleware::from_fn(metrics_layer::observe))
            .with_state(state);
        Ingress { router, background, stop_background, request_timeout, connections: options.connections }
    }

    /// Serve `routes` too, beside the API on the same listener (the operators'
    /// dashboard under `/ops/`). They keep their own layers: the API's request
    /// timeout would cut the dashboard's live event stream.
    pub fn with_routes(mut self, routes: Router) -> Ingress {
        self.router = routes::beside(self.router, routes);
        self
    }

    /// The router, for in-process tests (`tower::ServiceExt::oneshot`).
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serve on `listener` until `cancel`; then finish in-flight requests and flush the
    /// batchers before returning.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(?addr, "ingress listening");
        // Graceful shutdown waits for every open request; none may take longer than the
        // request timeout, so past that (and a second) stop waiting.
        let grace = self.request_timeout + Duration::from_secs(1);
        let served = server::serve(listener, self.router.clone(), self.connections, cancel, grace).await;
        self.shutdown().await;
        served
    }

    /// Stop the batchers after answering what they hold.
    pub async fn shutdown(self) {
        self.stop_background.cancel();
        self.background.close();
        self.background.wait().await;
    }
}

/// The API document as served at `GET /v1/openapi.json` (pretty-printed JSON).
pub fn openapi_json() -> String {
    openapi().to_pretty_json().unwrap_or_default()
}

/// Serve `/metrics` (and `/healthz`) of `metrics` on `listener`, the internal listener,
/// until `cancel`.
pub async fn serve_internal(
    listener: tokio::net::TcpListener,
    metrics: PrometheusHandle,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    tracing::info!(addr = ?listener.local_addr().ok(), "metrics listening");
    let router = probes::internal_router(metrics);
    server::serve(listener, router, ConnectionLimits::default(), cancel, Duration::from_secs(1)).await
}
