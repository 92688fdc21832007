//! W3C trace context in NATS headers, and the process-wide tracing setup.
//!
//! The ingress injects the current span's context into every message it publishes;
//! the runtime extracts it and makes it the parent of the handler span; the outbox
//! stores it so the relay's messages continue the same trace. One trace therefore spans
//! HTTP → JetStream → every worker → every sink.

use async_nats::HeaderMap;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapPropagator},
    trace::TracerProvider as _,
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use souk_pipelines::headers;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Write the current span's trace context (if any) into `headers`.
pub fn inject_current(headers: &mut HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// The current span's trace context as `(name, value)` pairs, for storing in an outbox.
pub fn current_context_pairs() -> Vec<(String, String)> {
    let mut map = HeaderMap::new();
    inject_current(&mut map);
    map.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.as_str().to_owned()))).collect()
}

/// Make the trace context carried in `headers` the parent of `span`.
pub fn set_parent_from(span: &tracing::Span, headers: Option<&HeaderMap>) {
    if let Some(headers) = headers {
        let cx: Context = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        // Fails only when no OpenTelemetry layer is installed; then there is nothing to link.
        let _ = span.set_parent(cx);
    }
}

/// The trace id in a `traceparent` value (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(headers: Option<&HeaderMap>) -> Option<String> {
    let tp = headers?.get(headers::TRACEPARENT)?.as_str();
    let id = tp.split('-').nth(1)?;
    (id.len() == 32).then(|| id.to_owned())
}

/// Install the global `tracing` subscriber: env-filtered (`RUST_LOG`, default `info`),
/// text or JSON lines on stderr (stdout stays for command output), with an OpenTelemetry layer so spans carry W3C trace ids that
/// propagate across NATS. Returns the provider; keep it alive for the process.
pub fn install_subscriber(json: bool) -> SdkTracerProvider {
    let provider = SdkTracerProvider::builder().build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("souk"));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if json {
        registry
            .with(
                tracing_subscriber::fmt::layer().json().with_current_span(true).with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)).try_init()
    };
    // A subscriber is already installed (e.g. by a test harness): keep it.
    drop(result);
    provider
}

/// Make a W3C `traceparent` (and `tracestate`) received elsewhere, e.g. in HTTP
/// headers, the parent of `span`.
pub fn set_parent_from_w3c(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let mut map = HeaderMap::new();
    map.insert(headers::TRACEPARENT, traceparent);
    if let Some(state) = tracestate {
        map.insert(headers::TRACESTATE, state);
    }
    set_parent_from(span, Some(&map));
}
