//! The two API dialects the sandbox speaks, as two real providers would: different
//! paths, field names, headers, status codes and error shapes for the same operations.
//!
//! | | alpha (`/alpha/v1`) | beta (`/beta`) |
//! |---|---|---|
//! | credentials | `Authorization: Bearer <key>` | `X-Api-Key: <key>` |
//! | idempotency | `Idempotency-Key` | `X-Request-Key` |
//! | authorize | `POST /payments` `{token, amount_minor, currency}` → 201 | `POST /charges` `{source, amount, currency_code}` → 200 |
//! | capture / void / refund | `POST /payments/{id}/capture` `/void` `/refunds` | `POST /charges/{ref}/captures` `/cancels` `/refunds` |
//! | status by key | `GET /idempotency/{key}` (404 unknown) | `GET /requests/{key}` (404 unknown) |
//! | declined | 402 `{error: {code, retryable}}` | 200 `{result: "refused", refusal_reason}` |
//! | key reused with another request | 422 | 409 |
//! | unavailable (fault; nothing processed) | 503 | 503 |

use super::book::{Answer, Operation, PaymentView, Refusal, Request};
use axum::{
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};

/// An API dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Alpha,
    Beta,
}

/// A request refused before it was processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Problem { status, code, message: message.into() }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlphaAuthorize {
    token: String,
    amount_minor: i64,
    currency: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AlphaAmount {
    amount_minor: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BetaCharge {
    source: String,
    amount: i64,
    currency_code: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BetaAmount {
    amount: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl Dialect {
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Alpha => "alpha",
            Dialect::Beta => "beta",
        }
    }

    /// The header carrying the idempotency key.
    pub fn idempotency_header(self) -> &'static str {
        match self {
            Dialect::Alpha => "idempotency-key",
            Dialect::Beta => "x-request-key",
        }
    }

    /// Whether `headers` carry `key` the way this dialect sends credentials.
    pub fn authenticated(self, headers: &HeaderMap, key: &str) -> bool {
        let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
        match self {
            Dialect::Alpha => value("authorization").and_then(|v| v.strip_prefix("Bearer ")) == Some(key),
            Dialect::Beta => value("x-api-key") == Some(key),
        }
    }

    /// The request in `body` (JSON) for `operation` on `payment_id`.
    pub fn parse(
        self,
        operation: Operation,
        payment_id: Option<String>,
        body: &[u8],
    ) -> Result<Request, Problem> {
        let value: Value = match body.iter().all(u8::is_ascii_whitespace) {
            true => json!({}),
            false => serde_json::from_slice(body).map_err(|e| {
                Problem::new(StatusCode::BAD_REQUEST, "malformed_json", format!("malformed JSON: {e}"))
            })?,
        };
        refuse_card_numbers(&value)?;
        if payment_id.as_deref().is_some_and(souk_pipelines::pan::looks_like_pan) {
            return Err(card_number());
        }
        let invalid = |e: serde_json::Error| {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", e.to_string())
        };
        let (token, amount, currency) = match (self, operation) {
            (Dialect::Alpha, Operation::Authorize) => {
                let b: AlphaAuthorize = serde_json::from_value(value).map_err(invalid)?;
                (Some(b.token), b.amount_minor, Some(b.currency))
            }
            (Dialect::Beta, Operation::Authorize) => {
                let b: BetaCharge = serde_json::from_value(value).map_err(invalid)?;
                (Some(b.source), b.amount, Some(b.currency_code))
            }
            (_, Operation::Void) => {
                let _: Empty = serde_json::from_value(value).map_err(invalid)?;
                (None, 0, None)
            }
            (Dialect::Alpha, _) => {
                (None, serde_json::from_value::<AlphaAmount>(value).map_err(invalid)?.amount_minor, None)
            }
            (Dialect::Beta, _) => {
                (None, serde_json::from_value::<BetaAmount>(value).map_err(invalid)?.amount, None)
            }
        };
        if let Some(token) = &token
            && !super::TOKENS.contains(&token.as_str())
        {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_token",
                format!("unknown payment token; the sandbox knows {}", super::TOKENS.join(", ")),
            ));
        }
        if operation != Operation::Void && !(1..=1_000_000_000_000).contains(&amount) {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_amount",
                "the amount must be a positive number of minor units",
            ));
        }
        if let Some(c) = &currency
            && !(c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()))
        {
            return Err(Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_currency",
                "the currency must be an ISO 4217 code",
            ));
        }
        Ok(Request { operation, token, payment_id, amount_minor: amount, currency })
    }

    /// The answer to a processed request.
    pub fn answer(self, operation: Operation, answer: &Answer) -> Response {
        let (status, body) = match (self, answer) {
            (Dialect::Alpha, Answer::Approved(p)) => {
                let status = match operation {
                    Operation::Authorize | Operation::Refund => StatusCode::CREATED,
                    _ => StatusCode::OK,
                };
                (status, json!({"operation": operation, "payment": p}))
            }
            (Dialect::Alpha, Answer::Declined { code, message, soft }) => (
                StatusCode::PAYMENT_REQUIRED,
                json!({"error": {"type": "card_error", "code": code, "message": message, "retryable": soft}}),
            ),
            (Dialect::Beta, Answer::Approved(p)) => (
                StatusCode::OK,
                json!({"result": "approved", "action": beta_action(operation), "charge": beta_charge(p)}),
            ),
            (Dialect::Beta, Answer::Declined { code, .. }) => (
                StatusCode::OK,
                json!({"result": "refused", "action": beta_action(operation), "refusal_reason": beta_reason(code)}),
            ),
        };
        sandboxed(status, body)
    }

    /// The answer stored under a key, for a status query.
    pub fn lookup(self, found: Option<(Operation, Answer)>) -> Response {
        match found {
            Some((operation, answer)) => {
                let mut response = self.answer(operation, &answer);
                *response.status_mut() = StatusCode::OK;
                response
            }
            None => self.problem(&Problem::new(
                StatusCode::NOT_FOUND,
                "unknown_key",
                "no request with this key was processed",
            )),
        }
    }

    /// A refusal of the book.
    pub fn refusal(self, refusal: &Refusal) -> Response {
        let problem = match refusal {
            Refusal::UnknownPayment => {
                Problem::new(StatusCode::NOT_FOUND, "unknown_payment", refusal.to_string())
            }
            Refusal::InvalidState(_) => {
                Problem::new(StatusCode::CONFLICT, "invalid_state", refusal.to_string())
            }
            Refusal::Amount(_) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_amount", refusal.to_string())
            }
            Refusal::KeyReused => {
                let status = match self {
                    Dialect::Alpha => StatusCode::UNPROCESSABLE_ENTITY,
                    Dialect::Beta => StatusCode::CONFLICT,
                };
                Problem::new(status, "idempotency_key_reused", refusal.to_string())
            }
        };
        self.problem(&problem)
    }

    /// A request refused before processing.
    pub fn problem(self, p: &Problem) -> Response {
        let body = match self {
            Dialect::Alpha => {
                json!({"error": {"type": "invalid_request_error", "code": p.code, "message": p.message}})
            }
            Dialect::Beta => {
                json!({"result": "error", "error_code": p.code.to_ascii_uppercase(), "detail": p.message})
            }
        };
        sandboxed(p.status, body)
    }
}

/// A JSON answer with `"sandbox": true` in it.
pub(crate) fn sandboxed(status: StatusCode, mut body: Value) -> Response {
    if let Some(o) = body.as_object_mut() {
        o.insert("sandbox".into(), Value::Bool(true));
    }
    (status, axum::Json(body)).into_response()
}

fn card_number() -> Problem {
    Problem::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "card_number_refused",
        "this looks like a card number: the sandbox takes payment tokens (tok_…) only",
    )
}

/// Refuse a body holding a card number anywhere (a string or a bare number).
fn refuse_card_numbers(value: &Value) -> Result<(), Problem> {
    let pan = match value {
        Value::String(s) => souk_pipelines::pan::looks_like_pan(s),
        Value::Number(n) => souk_pipelines::pan::looks_like_pan(&n.to_string()),
        Value::Array(items) => return items.iter().try_for_each(refuse_card_numbers),
        Value::Object(fields) => {
            return fields.iter().try_for_each(|(k, v)| match souk_pipelines::pan::looks_like_pan(k) {
                true => Err(card_number()),
                false => refuse_card_numbers(v),
            });
        }
        Value::Bool(_) | Value::Null => false,
    };
    match pan {
        true => Err(card_number()),
        false => Ok(()),
    }
}

fn beta_action(operation: Operation) -> &'static str {
    match operation {
        Operation::Authorize => "charge",
        Operation::Capture => "capture",
        Operation::Void => "cancel",
        Operation::Refund => "refund",
    }
}

fn beta_reason(code: &str) -> &'static str {
    match code {
        "try_again_later" => "RETRY_LATER",
        "insufficient_funds" => "NOT_ENOUGH_BALANCE",
        _ => "DO_NOT_HONOR",
    }
}

fn beta_charge(p: &PaymentView) -> Value {
    json!({
        "charge_ref": p.id,
        "state": p.status.to_ascii_uppercase(),
        "amount": p.amount_minor,
        "captured": p.captured_minor,
        "refunded": p.refunded_minor,
        "currency_code": p.currency,
    })
}
