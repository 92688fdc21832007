//! What both adapters share: one reqwest client per provider with a timeout on every
//! call, and the reading of transport failures and status codes into [`CallError`]s.

use super::provider::CallError;
use reqwest::StatusCode;
use serde_json::Value;
use std::time::Duration;

/// A provider's HTTP settings.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// `http://host:port` of the provider.
    pub base_url: String,
    /// The API key; `None` for a sandbox without credentials (tests).
    pub api_key: Option<String>,
    /// Longest one call may take, connection included.
    pub timeout: Duration,
}

pub(crate) fn client(options: &HttpOptions) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(options.timeout)
        .connect_timeout(options.timeout.min(Duration::from_secs(2)))
        .build()
}

/// Send `request`; the status and the JSON body. A connection error before the request
/// was sent is `NotProcessed`, as are a 503 (both dialects' providers answer 503 before
/// processing) and a 429 or 425 (rate limited, too early: refused before processing); a
/// timeout, a reset mid-request, a 408, any other 5xx or an unreadable body are
/// `Ambiguous`. Other 4xx are the dialect's to read: a refusal of the request itself.
///
/// (Review, eleventh session: a 429 was read as the provider refusing the request — a
/// decline recorded as the key's answer, so a void throttled after an outage was never
/// sent again and the authorization stayed held.)
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<(StatusCode, Value), CallError> {
    let response = request.send().await.map_err(transport)?;
    let status = response.status();
    match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS | StatusCode::TOO_EARLY => {
            return Err(CallError::NotProcessed(format!("{status}: not processed")));
        }
        StatusCode::REQUEST_TIMEOUT => return Err(CallError::Ambiguous(format!("{status}"))),
        _ => {}
    }
    if status.is_server_error() {
        return Err(CallError::Ambiguous(format!("{status}")));
    }
    let body = response.bytes().await.map_err(transport)?;
    let json = match body.is_empty() {
        true => Value::Null,
        false => serde_json::from_slice(&body)
            .map_err(|e| CallError::Ambiguous(format!("{status} with an unreadable body: {e}")))?,
    };
    Ok((status, json))
}

fn transport(e: reqwest::Error) -> CallError {
    if e.is_connect() {
        CallError::NotProcessed(format!("cannot connect: {e}"))
    } else if e.is_timeout() {
        CallError::Ambiguous("timed out".into())
    } else {
        CallError::Ambiguous(format!("transport: {e}"))
    }
}

/// A string at `pointer` in `v`, or empty.
pub(crate) fn text(v: &Value, pointer: &str) -> String {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default().to_owned()
}

/// An answer that does not match the dialect: the call's outcome is unknown.
pub(crate) fn unexpected(status: StatusCode, body: &Value) -> CallError {
    CallError::Ambiguous(format!("unexpected answer {status}: {}", truncate(&body.to_string(), 200)))
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
