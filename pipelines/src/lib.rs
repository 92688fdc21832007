//! # souk-pipelines — the contracts every layer shares
//!
//! Subjects, header names, schema identifiers, the message envelope, the commands and
//! events of each domain, money, and the [`outbox::Outbox`] trait that joins the
//! Postgres store to the relay in `souk-topologies`.
//!
//! This crate does no I/O. Everything here is plain data plus validation, so that the
//! ingress, the workers and the tests agree on one definition of every message.

pub mod catalog;
pub mod categories;
pub mod envelope;
pub mod follow;
pub mod fulfilment;
pub mod headers;
pub mod inventory;
pub mod money;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod orders;
pub mod outbox;
pub mod pan;
pub mod payments;
pub mod pricing;
pub mod subjects;

pub use envelope::{DecodeError, Message, decode, encode, newer_version};
pub use money::{Currency, Money, MoneyError};
