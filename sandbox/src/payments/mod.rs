//! The payment-provider sandbox: `souk sandbox payments --port P --provider-name N`.
//!
//! Payment tokens only — `tok_ok`, `tok_soft_decline`, `tok_hard_decline`, `tok_slow`
//! (approved, the answer delayed), `tok_insufficient_funds`; any other token is invalid
//! and anything that looks like a card number is refused (422) and never logged.
//! Operations: authorize, capture, void, refund, and the answer given to an
//! idempotency key (GET). Two dialects are served side by side, as two real providers
//! would speak them (see [`dialect`]): `/alpha/v1/…` and `/beta/…`.
//!
//! Idempotency keys are honoured like a real provider: the same key with the same
//! request gets the stored answer (the money moves once); the same key with another
//! request is refused (alpha 422, beta 409). Soft declines and refusals are not stored
//! (a retry with the same key may pass); approvals and hard declines are.
//!
//! Faults ([`Faults`]) are set at start and at run time (`PUT /admin/faults`), drawn
//! from a seeded generator so a run is reproducible. A 503 is always answered BEFORE
//! the request is processed (documented contract: a 503 moved no money); a hang, a
//! reset or a lost response leave the client not knowing — it must ask by key.

mod book;
pub mod dialect;
mod faults;
mod server;

pub use book::{Answer, Operation, PaymentView};
pub use faults::Faults;
pub use server::{PaymentSandbox, SandboxOptions};

/// The payment tokens the sandbox knows.
pub const TOKENS: &[&str] =
    &["tok_ok", "tok_soft_decline", "tok_hard_decline", "tok_slow", "tok_insufficient_funds"];
