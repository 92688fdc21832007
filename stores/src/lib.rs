//! # souk-stores — sinks and repositories
//!
//! [`postgres`] is the system of record: orders, the inbox (messages already handled),
//! the transactional outbox (implementing [`souk_pipelines::outbox::Outbox`] for the
//! relay) and the ingress idempotency keys. Schema changes are sqlx migrations in
//! `stores/migrations`, applied by `souk migrate` (and by `souk dev` at start).
//!
//! The wide-column timeline sink and the search index join here as `widecolumn/` and
//! `search/`, each with a shared conformance suite.

pub mod postgres;
