//! The HTTP client side, identical for the no-op baseline and the souk ingress: same
//! client, same headers, same body, a fresh `Idempotency-Key` per request.

use bytes::Bytes;
use futures::FutureExt;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use crate::load::{OP_TIMEOUT, Op};

/// A client holding up to `connections` keep-alive connections (one per concurrent
/// request, so no request waits for a connection or pays for a handshake).
pub fn client(connections: usize) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        // Only 127.0.0.1 is ever called; an HTTP(S)_PROXY in the environment must not divert it.
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(connections)
        .timeout(OP_TIMEOUT)
        .build()?)
}

/// `POST url` with `body`, one bearer token per buyer (chosen round robin). Succeeds on
/// 202; any other answer counts under its status code.
pub fn place_order(client: reqwest::Client, url: String, tokens: Arc<Vec<String>>, body: Bytes) -> Op {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let next = Arc::new(AtomicU64::new(0));
    Arc::new(move || {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let token = tokens.get(n as usize % tokens.len().max(1)).cloned().unwrap_or_default();
        let request = client
            .post(&url)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header("idempotency-key", format!("bench-{run}-{n}"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone());
        async move {
            let response = request.send().await.map_err(classify)?;
            let status = response.status();
            // Read the body so the connection goes back to the pool.
            response.bytes().await.map_err(classify)?;
            if status == reqwest::StatusCode::ACCEPTED { Ok(1) } else { Err(status.as_u16().to_string()) }
        }
        .boxed()
    })
}

fn classify(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}
