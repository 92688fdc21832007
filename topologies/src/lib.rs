//! # souk-topologies — the pipeline engine
//!
//! A topology file ([`spec::Topology`]) declares JetStream streams, durable pull
//! consumers and the worker pools that drain them. This crate turns that declaration
//! into running infrastructure:
//!
//! - [`apply`] creates or updates streams and consumers idempotently and reports drift;
//! - [`runtime`] runs pools: fetches in batches, runs [`runtime::Handler`]s with bounded
//!   concurrency, maps outcomes to ack / nak-with-delay / dead letter, sends progress
//!   acks for long handlers, and drains on shutdown;
//! - [`publisher`] publishes with a `Nats-Msg-Id` and waits for the PubAck, one message
//!   at a time or as JetStream atomic batches; [`group_commit`] coalesces concurrent
//!   callers into those batches (over the generic [`batcher`]);
//! - [`purge`] removes acknowledged commands in bulk (`purge-acked` streams);
//! - [`relay`] drains a transactional [`souk_pipelines::outbox::Outbox`] into JetStream;
//! - [`status`] reads streams and consumer lag back from JetStream;
//! - [`dead_letters`] lists dead letters and replays them to their original subject;
//! - [`follow`] follows one order through every pipeline (`souk trace`);
//! - [`trace`] carries W3C trace context in message headers.
//!
//! It knows nothing of marketplaces, nor of Postgres.

pub mod apply;
pub mod batcher;
pub mod control;
pub mod dead_letters;
pub mod error;
pub mod follow;
pub mod group_commit;
pub mod local_server;
pub mod publisher;
pub mod purge;
pub mod relay;
pub mod runtime;
pub mod spec;
pub mod status;
pub mod trace;

pub use error::{Error, Result};
pub use spec::Topology;
