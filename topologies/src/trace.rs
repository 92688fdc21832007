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
    trace::{TraceContextExt as _, TracerProvider as _},
};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use souk_pipelines::headers;
use std::sync::{Arc, OnceLock};
use tracing::{Dispatch, dispatcher::WeakDispatch};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer,
    fmt::{
        self, FmtContext, FormatEvent, FormatFields, MakeWriter,
        format::{Format, Writer},
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

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

/// `delivery` carrying the current span's trace context instead of its own: a batch
/// handles it outside this (the handler's) span, and what the batch writes should
/// continue the handler's span, not the publisher's.
pub(crate) fn carrying_current(delivery: &crate::runtime::Delivery) -> crate::runtime::Delivery {
    let mut delivery = delivery.clone();
    inject_current(delivery.headers.get_or_insert_with(HeaderMap::new));
    delivery
}

/// Open a span `outbox` for an outbox row being written, child of the trace context in
/// `parent` (name/value pairs, as rows store them), and give that span's context to
/// store on the row: the relay's span continues the trace from it.
pub fn outbox_context(parent: &[(String, String)], subject: &str) -> Vec<(String, String)> {
    let span = tracing::info_span!("outbox", subject);
    let mut map = HeaderMap::new();
    for (k, v) in parent {
        map.insert(k.as_str(), v.as_str());
    }
    set_parent_from(&span, Some(&map));
    let own = span.in_scope(current_context_pairs);
    // Without a tracing layer the span has no context: keep the parent's.
    if own.is_empty() { parent.to_vec() } else { own }
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

/// Where spans go: an OTLP/HTTP collector (`http://host:4318`; spans are posted to
/// `/v1/traces` under it), or nowhere when unset.
#[derive(Debug, Clone, Default)]
pub struct TelemetryOptions {
    pub otlp_endpoint: Option<String>,
}

/// Spans held for export at most (unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise):
/// beyond it new spans are dropped, never buffered without bound or waited for.
pub const EXPORT_QUEUE: usize = 8192;

/// The OTLP exporter could not be set up (a malformed endpoint).
#[derive(Debug, thiserror::Error)]
#[error("OTLP exporter for {endpoint}: {source}")]
pub struct TelemetryError {
    endpoint: String,
    source: opentelemetry_otlp::ExporterBuildError,
}

/// The process's span pipeline. [`Telemetry::shutdown`] exports what is still queued:
/// call it once, last.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Export every span still queued (bounded by the SDK's export timeout) and stop.
    /// Blocking: the batch processor flushes on its own thread.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let result = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if let Ok(Err(e)) = result {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// The span pipeline: a batch exporter (its own thread, bounded queue) to the OTLP
/// endpoint when one is configured; otherwise spans only carry ids for propagation.
pub fn tracer_provider(options: &TelemetryOptions) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_otlp::{Protocol, WithExportConfig};
    use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor};
    let mut builder = SdkTracerProvider::builder()
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name("souk").build());
    if let Some(endpoint) = &options.otlp_endpoint {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/').trim_end_matches("/v1/traces"));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|source| TelemetryError { endpoint: endpoint.clone(), source })?;
        let mut config = BatchConfigBuilder::default(); // reads `OTEL_BSP_*`
        if std::env::var_os("OTEL_BSP_MAX_QUEUE_SIZE").is_none() {
            config = config.with_max_queue_size(EXPORT_QUEUE);
        }
        let config = config.build();
        builder = builder
            .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(config).build());
    }
    Ok(builder.build())
}

/// Install the global `tracing` subscriber: env-filtered (`RUST_LOG`, default `info`),
/// text or JSON lines on stderr (stdout stays for command output), each line inside a
/// traced span carrying its `trace_id`, with an OpenTelemetry layer so spans carry W3C
/// trace ids that propagate across NATS, exported over OTLP when configured.
pub fn install_subscriber(json: bool, options: &TelemetryOptions) -> Result<Telemetry, TelemetryError> {
    let provider = tracer_provider(options)?;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A subscriber is already installed (e.g. by a test harness): keep it.
    drop(subscriber(json, &provider, std::io::stderr).with(filter).try_init());
    Ok(Telemetry { provider })
}

/// The subscriber `install_subscriber` installs (without its filter), writing to
/// `writer`: tests install it with their own writer.
pub fn subscriber<W>(
    json: bool,
    provider: &SdkTracerProvider,
    writer: W,
) -> impl tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("souk"));
    let dispatch = DispatchCell::default();
    let fmt = if json {
        let format = fmt::format().json().with_current_span(true);
        fmt::layer()
            .json()
            .event_format(TraceIdFormat { inner: format, json, dispatch: dispatch.clone() })
            .with_writer(writer)
            .boxed()
    } else {
        let format = fmt::format();
        fmt::layer()
            .event_format(TraceIdFormat { inner: format, json, dispatch: dispatch.clone() })
            .with_writer(writer)
            .boxed()
    };
    tracing_subscriber::registry().with(otel).with(fmt).with(dispatch)
}

/// Holds the dispatcher the subscriber was installed as: the log formatter needs it to
/// read a span's OpenTelemetry context (`tracing`'s own lookup of the current
/// dispatcher returns none while an event is being dispatched under a scoped one).
#[derive(Clone, Default)]
struct DispatchCell(Arc<OnceLock<WeakDispatch>>);

impl<S: tracing::Subscriber> Layer<S> for DispatchCell {
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.0.set(subscriber.downgrade());
    }
}

/// A log line formatter adding the `trace_id` of the event's span: the first field of
/// a JSON line, the last of a text line.
struct TraceIdFormat<F, T> {
    inner: Format<F, T>,
    json: bool,
    dispatch: DispatchCell,
}

impl<S, N, F, T> FormatEvent<S, N> for TraceIdFormat<F, T>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> FormatFields<'w> + 'static,
    Format<F, T>: FormatEvent<S, N> + Clone,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let trace_id = ctx.parent_span().and_then(|span| {
            let dispatch = self.dispatch.0.get()?.upgrade()?;
            let cx = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let span_context = cx.span().span_context().clone();
            span_context.is_valid().then(|| span_context.trace_id())
        });
        let Some(trace_id) = trace_id else { return self.inner.format_event(ctx, writer, event) };
        // Formatted aside to place the field; the writer's colours carried over.
        let mut line = String::new();
        let inner = self.inner.clone().with_ansi(writer.has_ansi_escapes());
        inner.format_event(ctx, Writer::new(&mut line), event)?;
        if self.json && line.starts_with('{') {
            writer.write_str(&format!("{{\"trace_id\":\"{trace_id}\",{}", &line[1..]))
        } else {
            let body = line.strip_suffix('\n').unwrap_or(&line);
            writeln!(writer, "{body} trace_id={trace_id}")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'w> MakeWriter<'w> for Captured {
        type Writer = Captured;
        fn make_writer(&'w self) -> Captured {
            self.clone()
        }
    }

    /// A line logged in a message's span (parented from its headers, as the runtime's
    /// handler span is), then one outside any span, through the subscriber souk installs.
    fn lines(json: bool) -> Vec<String> {
        let provider = tracer_provider(&TelemetryOptions::default()).expect("no exporter to build");
        let out = Captured::default();
        // Scoped, not global: the formatter must find the context without the global
        // dispatcher (and must not be handed `Dispatch::none` while dispatching).
        tracing::subscriber::with_default(subscriber(json, &provider, out.clone()), || {
            let mut h = HeaderMap::new();
            h.insert(headers::TRACEPARENT, format!("00-{TRACE_ID}-00f067aa0ba902b7-01").as_str());
            let span = tracing::info_span!("handle", pool = "orders");
            set_parent_from(&span, Some(&h));
            span.in_scope(|| tracing::info!(order = 7, "handled"));
            tracing::info!("outside any span");
        });
        let bytes = out.0.lock().expect("not poisoned").clone();
        String::from_utf8(bytes).expect("utf-8").lines().map(str::to_owned).collect()
    }

    #[test]
    fn json_log_lines_of_a_message_carry_its_trace_id() {
        let lines = lines(true);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let inside: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
        assert_eq!(inside["trace_id"], TRACE_ID, "{inside}");
        assert_eq!(inside["fields"]["message"], "handled", "{inside}");
        assert_eq!(inside["span"]["pool"], "orders", "{inside}");
        let outside: serde_json::Value = serde_json::from_str(&lines[1]).expect("a JSON line");
        assert!(outside.get("trace_id").is_none(), "{outside}");
    }

    #[test]
    fn text_log_lines_of_a_message_carry_its_trace_id() {
        let lines = lines(false);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].contains("handled") && lines[0].ends_with(&format!(" trace_id={TRACE_ID}")),
            "{lines:?}"
        );
        assert!(!lines[1].contains("trace_id"), "{lines:?}");
    }
}
