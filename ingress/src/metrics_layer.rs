//! Per-request span (continuing the caller's W3C trace) and HTTP metrics. Every label
//! is bounded: the route template (never the raw path), the method among the standard
//! ones (any other name a client makes up is `other`), the status code.

use axum::{extract::MatchedPath, extract::Request, http::Method, middleware::Next, response::Response};
use std::time::Instant;
use tracing::Instrument;

pub async fn observe(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(request.method());
    let span = tracing::info_span!("http", %method, %route, status = tracing::field::Empty);
    {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        let tracestate = header("tracestate").filter(|state| carriable(state));
        souk_topologies::trace::set_parent_from_w3c(&span, header("traceparent"), tracestate);
    }
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    span.record("status", status);
    let labels = [("method", method.to_owned()), ("route", route), ("status", status.to_string())];
    metrics::counter!("souk_http_requests_total", &labels).increment(1);
    metrics::histogram!("souk_http_request_duration_seconds", &labels[..2])
        .record(started.elapsed().as_secs_f64());
    response
}

/// Whether a caller's `tracestate` may travel on: it is free text a client writes, and
/// the trace context rides on every command and event the request causes (JetStream,
/// the outbox's rows, dead letters, OTLP) — so one holding a card number is dropped
/// whole, as the body's free text is refused (review: `tracestate: pan=4111…` was
/// stored in CMD and the outbox). Over W3C's 512 characters it is dropped too (the
/// spec lets a receiver drop what it cannot carry; nothing of souk's reads it).
fn carriable(tracestate: &str) -> bool {
    const MAX: usize = 512;
    if tracestate.len() > MAX {
        return false;
    }
    if souk_pipelines::pan::looks_like_pan(tracestate) {
        tracing::warn!("a caller's tracestate held what looks like a card number: not carried");
        return false;
    }
    true
}

/// The method as a metrics label: a client can send any token as a method (2,000 made-up
/// ones grew `/metrics` to 10 MB, never shrinking), so only the standard ones are kept.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}
