//! Fulfilment: once an order is confirmed, each of its sellers is asked to ship their
//! lines; an order whose sellers have all shipped is `shipped`.

use crate::{Message, subjects};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One line of a seller's part of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FulfilmentLine {
    pub sku: String,
    pub quantity: i64,
}

/// Command: ask `seller` to ship its lines of the order (one per seller per order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFulfilment {
    pub tenant: String,
    pub order_id: Uuid,
    pub seller: String,
    pub lines: Vec<FulfilmentLine>,
}

impl Message for RequestFulfilment {
    const SUBJECT: &'static str = subjects::FULFILMENT_REQUEST;
    const SCHEMA: &'static str = "fulfilment.request";
    const VERSION: u16 = 1;
}

/// Command: `seller` shipped its lines of the order (from `POST
/// /v1/sellers/{seller}/orders/{id}/ship`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarkShipped {
    pub tenant: String,
    pub order_id: Uuid,
    pub seller: String,
    /// Who marked it (the token's subject).
    pub actor: String,
    pub tracking: Option<String>,
    pub requested_at: DateTime<Utc>,
}

impl Message for MarkShipped {
    const SUBJECT: &'static str = subjects::FULFILMENT_SHIP;
    const SCHEMA: &'static str = "fulfilment.ship";
    const VERSION: u16 = 1;
}

/// Event: `seller` shipped its lines of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SellerShipped {
    pub tenant: String,
    pub order_id: Uuid,
    pub seller: String,
    pub at: DateTime<Utc>,
}

impl Message for SellerShipped {
    const SUBJECT: &'static str = subjects::FULFILMENT_SHIPPED;
    const SCHEMA: &'static str = "fulfilment.shipped";
    const VERSION: u16 = 1;
}
