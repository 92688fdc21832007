//! Health and readiness on the public listener; `/metrics` on the internal one.

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use crate::AppState;

/// How long a readiness answer is reused: probes (and anyone else) may call `/readyz`
/// as often as they like; NATS and Postgres see at most one check per interval.
pub const READINESS_TTL: Duration = Duration::from_secs(1);

/// Liveness: the process answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// Liveness
///
/// The process answers; nothing else is checked.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "probes", responses(
    (status = 200, description = "Alive.", body = Health),
    (status = 408, response = crate::openapi::RequestTimeout),
))]
pub async fn healthz() -> impl IntoResponse {
    Json(Health { status: "ok" })
}

/// Whether each dependency answered the last check.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    nats: bool,
    jetstream: bool,
    postgres: bool,
}

/// The last readiness check and when it finished.
#[derive(Debug, Default)]
pub(crate) struct ReadinessCache(tokio::sync::Mutex<Option<(Instant, Readiness)>>);

impl ReadinessCache {
    /// The cached answer if fresh; otherwise one check, shared by everyone waiting
    /// (the lock is held across it, so a burst makes one check, not one each).
    async fn get(&self, state: &AppState) -> Readiness {
        let mut cached = self.0.lock().await;
        if let Some((at, readiness)) = *cached
            && at.elapsed() < READINESS_TTL
        {
            return readiness;
        }
        let readiness = check(state).await;
        *cached = Some((Instant::now(), readiness));
        readiness
    }
}

/// NATS connected, JetStream answering (a connected server can still have JetStream
/// disabled or unavailable, and then every order gets 503) and Postgres answering,
/// each checked with a short timeout.
async fn check(state: &AppState) -> Readiness {
    let limit = Duration::from_secs(1);
    metrics::counter!("souk_ingress_readiness_checks_total").increment(1);
    let nats = state.nats.connection_state() == async_nats::connection::State::Connected;
    let js = async_nats::jetstream::new(state.nats.clone());
    let jetstream = nats && matches!(tokio::time::timeout(limit, js.query_account()).await, Ok(Ok(_)));
    let postgres =
        matches!(tokio::time::timeout(limit, sqlx::query("select 1").execute(&state.pool)).await, Ok(Ok(_)));
    Readiness { nats, jetstream, postgres }
}

/// Readiness
///
/// NATS, JetStream and Postgres answered a check at most a second old (checks are
/// shared: a burst of probes makes one).
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "probes", responses(
    (status = 200, description = "Ready.", body = Readiness),
    (status = 408, response = crate::openapi::RequestTimeout),
    (status = 503, description = "Not ready: the false fields say why.", body = Readiness),
))]
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let r = state.readiness.get(&state).await;
    let ready = r.nats && r.jetstream && r.postgres;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(r))
}

/// The internal listener's routes: Prometheus text at `/metrics`, and `/healthz`. Not
/// on the public listener: metrics tell an outsider about load, errors and tenants'
/// traffic, and rendering them is not free.
pub fn internal_router(metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = metrics.render();
                std::future::ready(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body))
            }),
        )
        .route("/healthz", get(healthz))
}
