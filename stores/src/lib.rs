//! # souk-stores — sinks and repositories
//!
//! [`postgres`] is the system of record: orders, the inbox (messages already handled),
//! the transactional outbox (implementing [`souk_pipelines::outbox::Outbox`] for the
//! relay) and the ingress idempotency keys. Schema changes are sqlx migrations in
//! `stores/migrations`, applied by `souk migrate` (and by `souk dev` at start).
//!
//! [`search`] is the search index behind one trait ([`search::SearchStore`]): tantivy
//! embedded by default, OpenSearch in production, one conformance suite for both. The
//! wide-column timeline sink joins here as `widecolumn/`.

//!
//! [`operate`] is operators' actions over the engine (dead-letter redrive and purge, pool
//! controls), each recorded in `operator_actions`: the CLI and the dashboard call it.

pub mod operate;
pub mod postgres;
pub mod search;
