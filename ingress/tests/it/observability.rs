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
