//! # souk-sandbox — stand-ins for the outside services souk talks to
//!
//! Real HTTP servers, clearly labelled sandboxes (a banner, a `/` page, an
//! `x-sandbox: true` header and a `"sandbox": true` field in every answer), for
//! `souk dev` (so checkout works out of the box) and for tests (started on port 0, the
//! port read back). No real money, message or device is ever touched.
//!
//! - [`payments`]: a payment provider speaking two API dialects, with idempotency keys
//!   honoured like a real provider and fault injection (latency, hangs, 5xx,
//!   connection resets, "charged but the response was lost") from a seed.
//!
//! Later sandboxes (SMS, push) join this crate, one module each.

pub mod credentials;
pub mod payments;
