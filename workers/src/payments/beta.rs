//! The "beta" dialect adapter: `POST /beta/charges`, `X-Request-Key`, `X-Api-Key`,
//! every processed answer a 200 whose `result` says `approved` or `refused`
//! (`RETRY_LATER` is a soft refusal), `GET /beta/requests/{key}` for the answer given a key.

use super::{
    http::{self, HttpOptions, text, unexpected},
    provider::{CallError, Charge, PaymentProvider, Reply, Settle},
};
use futures::{FutureExt, future::BoxFuture};
use reqwest::StatusCode;
use serde_json::{Value, json};
use souk_pipelines::payments::Operation;

/// A provider speaking the beta dialect.
#[derive(Debug, Clone)]
pub struct BetaProvider {
    name: String,
    options: HttpOptions,
    client: reqwest::Client,
}

impl BetaProvider {
    pub fn new(name: impl Into<String>, options: HttpOptions) -> Result<Self, reqwest::Error> {
        Ok(BetaProvider { name: name.into(), client: http::client(&options)?, options })
    }

    fn request(&self, method: reqwest::Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, format!("{}/beta{path}", self.options.base_url));
        if let Some(api_key) = &self.options.api_key {
            r = r.header("x-api-key", api_key);
        }
        if let Some(key) = key {
            r = r.header("x-request-key", key);
        }
        r
    }

    async fn call(&self, path: &str, key: &str, body: Value) -> Result<Reply, CallError> {
        let (status, body) =
            http::send(self.request(reqwest::Method::POST, path, Some(key)).json(&body)).await?;
        reply(status, &body)
    }
}

/// Read an answer of the beta dialect.
fn reply(status: StatusCode, body: &Value) -> Result<Reply, CallError> {
    match (status, body.get("result").and_then(Value::as_str)) {
        (StatusCode::OK, Some("approved")) => {
            Ok(Reply::Approved { payment_id: text(body, "/charge/charge_ref") })
        }
        (StatusCode::OK, Some("refused")) => {
            let code = text(body, "/refusal_reason");
            Ok(Reply::Declined { soft: code == "RETRY_LATER", message: format!("refused: {code}"), code })
        }
        (s, _) if s.is_client_error() => Err(CallError::Refused {
            status: s.as_u16(),
            code: text(body, "/error_code"),
            message: text(body, "/detail"),
        }),
        (s, _) => Err(unexpected(s, body)),
    }
}

impl PaymentProvider for BetaProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn authorize<'a>(&'a self, c: &'a Charge<'a>) -> BoxFuture<'a, Result<Reply, CallError>> {
        let body = json!({"source": c.token, "amount": c.amount_minor, "currency_code": c.currency});
        self.call("/charges", c.key, body).boxed()
    }

    fn settle<'a>(&'a self, s: &'a Settle<'a>) -> BoxFuture<'a, Result<Reply, CallError>> {
        let (action, body) = match s.operation {
            Operation::Capture => ("captures", json!({"amount": s.amount_minor})),
            Operation::Refund => ("refunds", json!({"amount": s.amount_minor})),
            Operation::Void | Operation::Authorize => ("cancels", json!({})),
        };
        async move { self.call(&format!("/charges/{}/{action}", s.payment_id), s.key, body).await }.boxed()
    }

    fn status<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Reply>, CallError>> {
        async move {
            let (status, body) =
                http::send(self.request(reqwest::Method::GET, &format!("/requests/{key}"), None)).await?;
            match status {
                StatusCode::NOT_FOUND => Ok(None),
                _ => reply(status, &body).map(Some),
            }
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), CallError>> {
        async move { self.status("souk-health-check").await.map(|_| ()) }.boxed()
    }
}
