//! The "alpha" dialect adapter: `POST /alpha/v1/payments`, `Idempotency-Key`, Bearer
//! credentials, 201 for a new payment, 402 for a decline (`error.retryable` marks a
//! soft one), `GET /alpha/v1/idempotency/{key}` for the answer given a key.

use super::{
    http::{self, HttpOptions, text, unexpected},
    provider::{CallError, Charge, PaymentProvider, Reply, Settle},
};
use futures::{FutureExt, future::BoxFuture};
use reqwest::StatusCode;
use serde_json::{Value, json};
use souk_pipelines::payments::Operation;

/// A provider speaking the alpha dialect.
#[derive(Debug, Clone)]
pub struct AlphaProvider {
    name: String,
    options: HttpOptions,
    client: reqwest::Client,
}

impl AlphaProvider {
    pub fn new(name: impl Into<String>, options: HttpOptions) -> Result<Self, reqwest::Error> {
        Ok(AlphaProvider { name: name.into(), client: http::client(&options)?, options })
    }

    fn request(&self, method: reqwest::Method, path: &str, key: Option<&str>) -> reqwest::RequestBuilder {
        let mut r = self.client.request(method, format!("{}/alpha/v1{path}", self.options.base_url));
        if let Some(api_key) = &self.options.api_key {
            r = r.bearer_auth(api_key);
        }
        if let Some(key) = key {
            r = r.header("idempotency-key", key);
        }
        r
    }

    async fn call(&self, path: &str, key: &str, body: Value) -> Result<Reply, CallError> {
        let (status, body) =
            http::send(self.request(reqwest::Method::POST, path, Some(key)).json(&body)).await?;
        reply(status, &body)
    }
}

/// Read an answer of the alpha dialect.
fn reply(status: StatusCode, body: &Value) -> Result<Reply, CallError> {
    match status {
        s if s.is_success() && body.pointer("/payment/id").is_some() => {
            Ok(Reply::Approved { payment_id: text(body, "/payment/id") })
        }
        s if (s == StatusCode::PAYMENT_REQUIRED || s.is_success())
            && body.pointer("/error/code").is_some() =>
        {
            Ok(Reply::Declined {
                code: text(body, "/error/code"),
                message: text(body, "/error/message"),
                soft: body.pointer("/error/retryable").and_then(Value::as_bool).unwrap_or(false),
            })
        }
        s if s.is_client_error() => Err(CallError::Refused {
            status: s.as_u16(),
            code: text(body, "/error/code"),
            message: text(body, "/error/message"),
        }),
        s => Err(unexpected(s, body)),
    }
}

impl PaymentProvider for AlphaProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn authorize<'a>(&'a self, c: &'a Charge<'a>) -> BoxFuture<'a, Result<Reply, CallError>> {
        let body = json!({"token": c.token, "amount_minor": c.amount_minor, "currency": c.currency});
        self.call("/payments", c.key, body).boxed()
    }

    fn settle<'a>(&'a self, s: &'a Settle<'a>) -> BoxFuture<'a, Result<Reply, CallError>> {
        let (action, body) = match s.operation {
            Operation::Capture => ("capture", json!({"amount_minor": s.amount_minor})),
            Operation::Refund => ("refunds", json!({"amount_minor": s.amount_minor})),
            Operation::Void | Operation::Authorize => ("void", json!({})),
        };
        async move { self.call(&format!("/payments/{}/{action}", s.payment_id), s.key, body).await }.boxed()
    }

    fn status<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Reply>, CallError>> {
        async move {
            let (status, body) =
                http::send(self.request(reqwest::Method::GET, &format!("/idempotency/{key}"), None)).await?;
            match status {
                StatusCode::NOT_FOUND => Ok(None),
                _ => reply(status, &body).map(Some),
            }
        }
        .boxed()
    }

    fn health(&self) -> BoxFuture<'_, Result<(), CallError>> {
        async move {
            // Any answer to a lookup, even "unknown key", says the API is up.
            self.status("souk-health-check").await.map(|_| ())
        }
        .boxed()
    }
}
