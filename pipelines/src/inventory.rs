//! Inventory: stock holds for orders. The order saga sends the commands (through its
//! outbox); the inventory pool answers each with one event the saga handles.
//!
//! Stock is conserved (DESIGN.md invariant 5): for every SKU, at every quiescent point,
//! initial = available + held + sold. A hold is all or nothing per order: either every
//! line of the order is held or none is.

use crate::{Message, subjects};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Units of one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockLine {
    pub sku: String,
    pub quantity: i64,
}

/// Command: hold `lines` for `order_id` until `hold_until` (all lines or none). Sending
/// it again for the same order changes nothing and answers the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveStock {
    pub tenant: String,
    pub order_id: Uuid,
    pub lines: Vec<StockLine>,
    /// The hold returns its units on its own after this (the order did not finish).
    pub hold_until: DateTime<Utc>,
}

impl Message for ReserveStock {
    const SUBJECT: &'static str = subjects::INVENTORY_RESERVE;
    const SCHEMA: &'static str = "inventory.reserve";
    const VERSION: u16 = 1;
}

/// Command: give back an order's units (a compensation). Idempotent: releasing a hold
/// already released, expired or never made answers `StockReleased { released: false }`.
/// Releasing a committed hold returns its sold units to stock (the order was cancelled
/// after its stock was committed, e.g. its capture failed for good).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStock {
    pub tenant: String,
    pub order_id: Uuid,
    pub reason: String,
}

impl Message for ReleaseStock {
    const SUBJECT: &'static str = subjects::INVENTORY_RELEASE;
    const SCHEMA: &'static str = "inventory.release";
    const VERSION: u16 = 1;
}

/// Command: the order is confirmed; its held units become sold. Idempotent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitStock {
    pub tenant: String,
    pub order_id: Uuid,
}

impl Message for CommitStock {
    const SUBJECT: &'static str = subjects::INVENTORY_COMMIT;
    const SCHEMA: &'static str = "inventory.commit";
    const VERSION: u16 = 1;
}

/// Event: every line of the order is held until `hold_until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReserved {
    pub tenant: String,
    pub order_id: Uuid,
    pub hold_until: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

impl Message for StockReserved {
    const SUBJECT: &'static str = subjects::INVENTORY_RESERVED;
    const SCHEMA: &'static str = "inventory.reserved";
    const VERSION: u16 = 1;
}

/// A line that could not be held.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortage {
    pub sku: String,
    pub requested: i64,
    /// Units available when the hold was tried (0 for an unknown or deleted SKU).
    pub available: i64,
}

/// Event: the order's hold was refused (nothing is held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockRejected {
    pub tenant: String,
    pub order_id: Uuid,
    pub shortages: Vec<Shortage>,
    pub at: DateTime<Utc>,
}

impl Message for StockRejected {
    const SUBJECT: &'static str = subjects::INVENTORY_REJECTED;
    const SCHEMA: &'static str = "inventory.rejected";
    const VERSION: u16 = 1;
}

/// Event: the order's units are back in stock — released on request, or the hold
/// expired (`expired`). `released` is false when there was nothing to give back (never
/// held, or already released or expired): the answer to a repeated release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockReleased {
    pub tenant: String,
    pub order_id: Uuid,
    pub expired: bool,
    pub released: bool,
    pub reason: String,
    pub at: DateTime<Utc>,
}

impl Message for StockReleased {
    const SUBJECT: &'static str = subjects::INVENTORY_RELEASED;
    const SCHEMA: &'static str = "inventory.released";
    const VERSION: u16 = 1;
}

/// Event: the answer to `CommitStock`. `committed` is false when the hold had already
/// expired or been released (the saga then compensates the payment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCommitted {
    pub tenant: String,
    pub order_id: Uuid,
    pub committed: bool,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

impl Message for StockCommitted {
    const SUBJECT: &'static str = subjects::INVENTORY_COMMITTED;
    const SCHEMA: &'static str = "inventory.committed";
    const VERSION: u16 = 1;
}
