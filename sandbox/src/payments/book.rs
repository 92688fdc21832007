//! The sandbox provider's books: its payments, and the answer it gave each idempotency
//! key. Pure state, changed under one lock by the server; no I/O.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a request asks of the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Authorize,
    Capture,
    Void,
    Refund,
}

/// One request, as the book sees it whatever its dialect: what an idempotency key is
/// compared against (the same key must come with the same request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub operation: Operation,
    /// Authorize: the payment token.
    pub token: Option<String>,
    /// Capture, void, refund: the payment.
    pub payment_id: Option<String>,
    /// Authorize, capture, refund (0 for a void).
    pub amount_minor: i64,
    /// Authorize.
    pub currency: Option<String>,
}

/// A payment as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PaymentView {
    pub id: String,
    /// `authorized`, `captured`, `voided`, `refunded` (in full) or `partially_refunded`.
    pub status: &'static str,
    pub amount_minor: i64,
    pub captured_minor: i64,
    pub refunded_minor: i64,
    pub currency: String,
}

/// The provider's answer to a request it processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved(PaymentView),
    /// `soft`: the issuer asks to try again later (not stored under the key).
    Declined {
        code: &'static str,
        message: &'static str,
        soft: bool,
    },
}

/// A request the provider did not process (4xx; nothing stored under the key).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no such payment")]
    UnknownPayment,
    #[error("{0}")]
    InvalidState(String),
    #[error("{0}")]
    Amount(String),
    #[error("this idempotency key was used with another request")]
    KeyReused,
}

#[derive(Debug, Clone)]
struct Payment {
    token: String,
    currency: String,
    authorized: i64,
    captured: i64,
    refunded: i64,
    voided: bool,
}

impl Payment {
    fn view(&self, id: &str) -> PaymentView {
        let status = match (self.voided, self.captured, self.refunded) {
            (true, _, _) => "voided",
            (false, 0, _) => "authorized",
            (false, c, r) if r == c => "refunded",
            (false, _, 0) => "captured",
            _ => "partially_refunded",
        };
        PaymentView {
            id: id.to_owned(),
            status,
            amount_minor: self.authorized,
            captured_minor: self.captured,
            refunded_minor: self.refunded,
            currency: self.currency.clone(),
        }
    }
}

/// Payments, and the answers stored per idempotency key.
#[derive(Debug, Default)]
pub struct Book {
    payments: HashMap<String, Payment>,
    answers: HashMap<String, (Request, Answer)>,
    /// How many times money moved (an operation approved and applied) per key.
    effects: HashMap<String, u32>,
}

impl Book {
    /// Process `request` under `key`: the stored answer if the key has one (`true`: a
    /// replay), else apply it.
    pub fn execute(&mut self, key: &str, request: Request) -> Result<(Answer, bool), Refusal> {
        if let Some((stored, answer)) = self.answers.get(key) {
            return match *stored == request {
                true => Ok((answer.clone(), true)),
                false => Err(Refusal::KeyReused),
            };
        }
        let answer = self.apply(&request)?;
        let store = match &answer {
            Answer::Approved(_) => {
                *self.effects.entry(key.to_owned()).or_default() += 1;
                true
            }
            Answer::Declined { soft, .. } => !soft,
        };
        if store {
            self.answers.insert(key.to_owned(), (request, answer.clone()));
        }
        Ok((answer, false))
    }

    /// The answer stored under `key`, with its operation.
    pub fn answer(&self, key: &str) -> Option<(Operation, Answer)> {
        self.answers.get(key).map(|(r, a)| (r.operation, a.clone()))
    }

    /// How many times money moved under `key` (an honest provider: at most once).
    pub fn effects(&self, key: &str) -> u32 {
        self.effects.get(key).copied().unwrap_or(0)
    }

    /// Every key under which money moved, with how many times (what a test compares
    /// with the keys it expects: money moved under no other).
    pub fn moved_keys(&self) -> HashMap<String, u32> {
        self.effects.clone()
    }

    /// Every payment, as the provider reports it (what a test sums: money the provider
    /// holds, by its own books).
    pub fn payments(&self) -> Vec<PaymentView> {
        self.payments.iter().map(|(id, p)| p.view(id)).collect()
    }

    /// The token a payment was authorized with.
    pub fn token_of(&self, payment_id: &str) -> Option<&str> {
        self.payments.get(payment_id).map(|p| p.token.as_str())
    }

    fn apply(&mut self, r: &Request) -> Result<Answer, Refusal> {
        if r.operation == Operation::Authorize {
            let token = r.token.clone().unwrap_or_default();
            let declined = |code, message, soft| Ok(Answer::Declined { code, message, soft });
            return match token.as_str() {
                "tok_soft_decline" => declined("try_again_later", "the issuer asks to try again later", true),
                "tok_hard_decline" => declined("card_declined", "the card was declined", false),
                "tok_insufficient_funds" => declined("insufficient_funds", "insufficient funds", false),
                _ => {
                    // Hyphenated: a simple (32 hex) id can hold a run of 13+ decimal digits that
                    // passes Luhn, which the card-number check would refuse when it comes back.
                    let id = format!("pay_{}", uuid::Uuid::new_v4());
                    let payment = Payment {
                        token,
                        currency: r.currency.clone().unwrap_or_default(),
                        authorized: r.amount_minor,
                        captured: 0,
                        refunded: 0,
                        voided: false,
                    };
                    let view = payment.view(&id);
                    self.payments.insert(id, payment);
                    Ok(Answer::Approved(view))
                }
            };
        }
        let id = r.payment_id.clone().unwrap_or_default();
        let p = self.payments.get_mut(&id).ok_or(Refusal::UnknownPayment)?;
        match r.operation {
            Operation::Authorize => return unreachable_authorize(),
            Operation::Capture => {
                if p.voided || p.captured > 0 {
                    return Err(Refusal::InvalidState(format!("payment is {}", p.view(&id).status)));
                }
                if r.amount_minor > p.authorized {
                    return Err(Refusal::Amount(format!(
                        "capture of {} exceeds the authorized {}",
                        r.amount_minor, p.authorized
                    )));
                }
                p.captured = r.amount_minor;
            }
            Operation::Void => {
                if p.voided || p.captured > 0 {
                    return Err(Refusal::InvalidState(format!("payment is {}", p.view(&id).status)));
                }
                p.voided = true;
            }
            Operation::Refund => {
                if p.captured == 0 {
                    return Err(Refusal::InvalidState(format!("payment is {}", p.view(&id).status)));
                }
                if p.refunded + r.amount_minor > p.captured {
                    return Err(Refusal::Amount(format!(
                        "refund of {} exceeds what is left of the capture ({})",
                        r.amount_minor,
                        p.captured - p.refunded
                    )));
                }
                p.refunded += r.amount_minor;
            }
        }
        Ok(Answer::Approved(p.view(&id)))
    }
}

/// Authorizations return before the payment lookup.
fn unreachable_authorize() -> Result<Answer, Refusal> {
    Err(Refusal::InvalidState("authorize has no payment yet".into()))
}
