//! Per-request span (continuing the caller's W3C trace) and HTTP metrics, labelled by
//! route template (bounded), never by raw path.

use axum::{extract::MatchedPath, extract::Request, middleware::Next, response::Response};
use std::time::Instant;
use tracing::Instrument;

pub async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().to_string();
    let span = tracing::info_span!("http", %method, %route, status = tracing::field::Empty);
    {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        souk_topologies::trace::set_parent_from_w3c(&span, header("traceparent"), header("tracestate"));
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    let labels = [("method", method), ("route", route), ("status", status.to_string())];
    metrics::counter!("souk_http_requests_total", &labels).increment(1);
    metrics::histogram!("souk_http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}
