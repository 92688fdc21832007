//! Payments: the payments pool's handlers (`payments.authorize`, `payments.settle`),
//! the [`PaymentProvider`] trait with adapters for two provider dialects
//! ([`AlphaProvider`], [`BetaProvider`]), and the [`Gateway`] that retries (backon,
//! full jitter, within a budget), breaks circuits per provider (failsafe) and fails
//! over — never moving money twice (see `gateway`'s docs). The ledger is in
//! `souk_stores::postgres::payments` (migration 0018).

mod alpha;
mod beta;
mod breaker;
mod gateway;
mod handler;
mod http;
mod provider;
mod retry;

pub use alpha::AlphaProvider;
pub use beta::BetaProvider;
pub use breaker::Breaker;
pub use gateway::{CALL_IN_FLIGHT, Decision, Gateway, GatewayError};
pub use handler::{Kind, PaymentsHandler};
pub use http::HttpOptions;
pub use provider::{CallError, Charge, PaymentProvider, Reply, Settle};
pub use retry::RetryOptions;

/// Handler name of the authorize pool in the topology.
pub const AUTHORIZE_HANDLER: &str = "payments.authorize";
/// The durable consumer of `souk.cmd.payments.authorize` (its inbox records' key).
pub const AUTHORIZE_CONSUMER: &str = "payments-authorize";
/// Handler name of the settle pool in the topology.
pub const SETTLE_HANDLER: &str = "payments.settle";
/// The durable consumer of `souk.cmd.payments.settle`.
pub const SETTLE_CONSUMER: &str = "payments-settle";

/// A provider's dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dialect {
    Alpha,
    Beta,
}

/// A provider adapter of `dialect`.
pub fn provider(
    dialect: Dialect,
    name: &str,
    options: HttpOptions,
) -> Result<std::sync::Arc<dyn PaymentProvider>, reqwest::Error> {
    Ok(match dialect {
        Dialect::Alpha => std::sync::Arc::new(AlphaProvider::new(name, options)?),
        Dialect::Beta => std::sync::Arc::new(BetaProvider::new(name, options)?),
    })
}

/// One provider to call: its name, dialect and HTTP settings.
#[derive(Debug, Clone)]
pub struct ProviderSpec {
    pub name: String,
    pub dialect: Dialect,
    pub http: HttpOptions,
}

/// The gateway over `specs` (primary first), writing its call log to `pool`.
pub fn gateway(
    specs: &[ProviderSpec],
    retry: RetryOptions,
    pool: sqlx::PgPool,
) -> Result<Gateway, reqwest::Error> {
    let providers =
        specs.iter().map(|s| provider(s.dialect, &s.name, s.http.clone())).collect::<Result<Vec<_>, _>>()?;
    Ok(Gateway::new(providers, retry, pool))
}
