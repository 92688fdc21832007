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

/// The part of a run's `Idempotency-Key`s that tells this run's keys from another's:
/// a hyphenated UUID. The ingress refuses a key holding a card number (13–19 digits
/// passing Luhn, alone or with digit groups joined by dashes) and reads a hyphenated
/// UUID as an identifier; the 32 bare hex digits of `simple()` hold such a run of
/// digits in about one run in five hundred, which made every request of that run a 422.
pub fn key_run() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// `POST url` with `body`, one bearer token per buyer (chosen round robin). Succeeds on
/// 202; any other answer counts under its status code.
pub fn place_order(client: reqwest::Client, url: String, tokens: Arc<Vec<String>>, body: Bytes) -> Op {
    let run = key_run();
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key a run makes passes the ingress's card-number check (a run's keys are
    /// all refused when its UUID does not: one run in about five hundred before).
    #[test]
    fn run_keys_never_look_like_a_card_number() {
        for _ in 0..20_000 {
            let run = key_run();
            for key in [format!("bench-{run}-0"), format!("bench-{run}-4321987"), format!("probe-{run}-12")] {
                assert!(!souk_pipelines::pan::looks_like_pan(&key), "{key} reads as a card number");
            }
        }
    }
}
