//! Trace context and metrics.

use axum::{body::Body, http::Request};
use souk_ingress::Role;

use crate::{env, send};

#[tokio::test]
async fn the_callers_trace_continues_into_the_published_command() -> anyhow::Result<()> {
    // Each nextest test is its own process: installing the global subscriber is local.
    let _telemetry = souk_topologies::trace::install_subscriber(false, &Default::default())?;
    let env = env().await?;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let request = Request::post("/v1/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
        .header("idempotency-key", "k-trace")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .body(Body::from(r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok"}"#))?;
    let (status, _, body) = send(env.router(), request).await?;
    assert_eq!(status, 202, "{body}");
    let msg = env.js.get_stream("CMD").await?.get_raw_message(1).await?;
    let traceparent = msg.headers.get("traceparent").map(|v| v.as_str().to_owned()).unwrap_or_default();
    assert!(traceparent.starts_with(&format!("00-{trace_id}-")), "got {traceparent:?}");
    assert!(!traceparent.contains("b7ad6b7169203331"), "a child span, not the caller's span");
    assert_eq!(msg.headers.get("souk-schema").map(|v| v.as_str()), Some("orders.place/v2"));
    assert_eq!(msg.headers.get("souk-tenant").map(|v| v.as_str()), Some("t1"));
    Ok(())
}

/// A caller's `tracestate` is free text that rides on every command and event the
/// request causes: one holding a card number is not carried (review: it was stored in
/// CMD and, through the orders pool, in the outbox); one without is.
#[tokio::test]
async fn a_callers_tracestate_holding_a_card_number_is_not_carried() -> anyhow::Result<()> {
    let _telemetry = souk_topologies::trace::install_subscriber(false, &Default::default())?;
    let env = env().await?;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    for (key, tracestate) in [("k-pan", "vendor=abc,pan=4111111111111111"), ("k-plain", "vendor=abc")] {
        let request = Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
            .header("idempotency-key", key)
            .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
            .header("tracestate", tracestate)
            .body(Body::from(r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok"}"#))?;
        let (status, _, body) = send(env.router(), request).await?;
        assert_eq!(status, 202, "{body}");
    }
    let stream = env.js.get_stream("CMD").await?;
    let with_pan = stream.get_raw_message(1).await?;
    for (name, values) in with_pan.headers.iter() {
        for value in values {
            assert!(
                !souk_pipelines::pan::looks_like_pan(value.as_str()),
                "header {name} carries a card number: {value:?}"
            );
        }
    }
    let plain = stream.get_raw_message(2).await?;
    assert_eq!(plain.headers.get("tracestate").map(|v| v.as_str()), Some("vendor=abc"), "carried");
    Ok(())
}

#[tokio::test]
async fn metrics_count_requests_and_outcomes() -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
    let env = env().await?;
    let request = Request::post("/v1/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
        .header("idempotency-key", "k-metrics")
        .body(Body::from(r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok"}"#))?;
    assert_eq!(send(env.router(), request).await?.0, 202);
    let text = handle.render();
    assert!(text.contains(r#"souk_ingress_orders_total{outcome="accepted"} 1"#), "{text}");
    assert!(
        text.contains(r#"souk_http_requests_total{method="POST",route="/v1/orders",status="202"} 1"#),
        "{text}"
    );
    assert!(text.contains("souk_publisher_messages_total"), "{text}");
    Ok(())
}
