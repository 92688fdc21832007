//! Payments: the commands the order saga sends the payments pool and the events it
//! answers with. Card data never enters souk: a payment is a provider token (`tok_…`).
//!
//! Money moves at most once (DESIGN.md invariant 4): every command carries an
//! `idempotency_key` derived from the saga step (see [`idempotency_key`]); the payments
//! pool sends it on every provider call for that step, whichever attempt or provider.

use crate::{Currency, Message, subjects};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a payment command does at the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Authorize,
    Capture,
    Void,
    Refund,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Authorize => "authorize",
            Operation::Capture => "capture",
            Operation::Void => "void",
            Operation::Refund => "refund",
        }
    }
}

/// The provider idempotency key of one saga step: the same for every retry, redelivery
/// and failover of that step, different for every step.
pub fn idempotency_key(order_id: Uuid, operation: Operation) -> String {
    format!("souk-{order_id}-{}", operation.as_str())
}

/// Command: authorize `amount_minor` on `payment_token` for the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizePayment {
    pub tenant: String,
    pub order_id: Uuid,
    pub amount_minor: i64,
    pub currency: Currency,
    /// A provider token (`tok_…`), never a card number.
    pub payment_token: String,
    pub idempotency_key: String,
}

impl Message for AuthorizePayment {
    const SUBJECT: &'static str = subjects::PAYMENTS_AUTHORIZE;
    const SCHEMA: &'static str = "payments.authorize";
    const VERSION: u16 = 1;
}

/// Command: capture, void or refund the order's authorization (at the provider that
/// authorized it: the ledger knows which).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlePayment {
    pub tenant: String,
    pub order_id: Uuid,
    /// `Capture`, `Void` or `Refund` (never `Authorize`).
    pub operation: Operation,
    pub amount_minor: i64,
    pub currency: Currency,
    pub idempotency_key: String,
}

impl Message for SettlePayment {
    const SUBJECT: &'static str = subjects::PAYMENTS_SETTLE;
    const SCHEMA: &'static str = "payments.settle";
    const VERSION: u16 = 1;
}

/// The decline code of a capture or void the ledger refuses because the payment is
/// captured already: for a void, the saga reads it as the capture (and refunds).
pub const ALREADY_CAPTURED: &str = "already_captured";

/// Why a payment operation did not succeed, as the saga needs to decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PaymentFailure {
    /// The provider said no for good (hard decline, insufficient funds): compensate now.
    Declined { code: String, message: String },
    /// Retries exhausted within the budget, every provider failing: compensate.
    Exhausted { attempts: u32, last_error: String },
}

/// Event: the outcome of one payment command. Published once per command (the same
/// answer again on a redelivered command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResult {
    pub tenant: String,
    pub order_id: Uuid,
    pub operation: Operation,
    /// `None`: it succeeded.
    pub failure: Option<PaymentFailure>,
    /// The provider that answered (after a failover, the secondary), and its id for
    /// the payment.
    pub provider: Option<String>,
    pub provider_payment_id: Option<String>,
    pub amount_minor: i64,
    pub currency: Currency,
    pub at: DateTime<Utc>,
}

impl Message for PaymentResult {
    const SUBJECT: &'static str = subjects::PAYMENTS_RESULT;
    const SCHEMA: &'static str = "payments.result";
    const VERSION: u16 = 1;
}
