//! Health, readiness and metrics.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;
use std::{sync::Arc, time::Duration};

use crate::AppState;

/// Liveness: the process answers.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Readiness: NATS connected, JetStream answering (a connected server can still have
/// JetStream disabled or unavailable, and then every order gets 503) and Postgres
/// answering, each checked with a short timeout.
pub async fn readyz(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let limit = Duration::from_secs(1);
    let nats_ok = state.nats.connection_state() == async_nats::connection::State::Connected;
    let js = async_nats::jetstream::new(state.nats.clone());
    let jetstream_ok = nats_ok && matches!(tokio::time::timeout(limit, js.query_account()).await, Ok(Ok(_)));
    let pg_ok =
        matches!(tokio::time::timeout(limit, sqlx::query("select 1").execute(&state.pool)).await, Ok(Ok(_)));
    let ready = nats_ok && jetstream_ok && pg_ok;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(json!({"nats": nats_ok, "jetstream": jetstream_ok, "postgres": pg_ok})))
}

/// Prometheus text exposition.
pub async fn metrics(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let body = state.metrics.as_ref().map(|h| h.render()).unwrap_or_default();
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
