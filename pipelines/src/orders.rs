//! Orders: the `PlaceOrder` command and the `OrderAccepted` event.

use crate::{Currency, Message, Money, MoneyError, subjects};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Most lines one order may have.
pub const MAX_LINES: usize = 100;
/// Largest quantity of one line.
pub const MAX_QUANTITY: i64 = 10_000;
/// Longest SKU.
pub const MAX_SKU_LEN: usize = 64;

/// One line as the client sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$"))]
    pub sku: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10_000))]
    pub quantity: i64,
    /// Price of one unit, in minor units of the order's currency.
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub unit_price_minor: i64,
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub currency: Currency,
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 100))]
    pub lines: Vec<OrderLine>,
}

/// A field that failed validation, with a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl PlaceOrderRequest {
    /// Check every business rule; returns all violations, not just the first.
    pub fn validate(&self) -> Result<Money, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut err =
            |field: String, message: &str| errors.push(FieldError { field, message: message.to_owned() });
        if self.lines.is_empty() {
            err("lines".into(), "an order needs at least one line");
        }
        if self.lines.len() > MAX_LINES {
            err("lines".into(), "too many lines (at most 100)");
        }
        let mut total = Some(Money { amount_minor: 0, currency: self.currency });
        for (i, line) in self.lines.iter().enumerate() {
            let sku_ok = !line.sku.is_empty()
                && line.sku.len() <= MAX_SKU_LEN
                && line.sku.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            if !sku_ok {
                err(format!("lines[{i}].sku"), "1-64 characters of A-Z a-z 0-9 - _ .");
            } else if crate::pan::looks_like_pan(&line.sku) {
                err(format!("lines[{i}].sku"), "looks like a card number: souk accepts payment tokens only");
            }
            if line.quantity <= 0 {
                err(format!("lines[{i}].quantity"), "must be a positive integer");
            } else if line.quantity > MAX_QUANTITY {
                err(format!("lines[{i}].quantity"), "must be at most 10000");
            }
            if line.unit_price_minor < 0 {
                err(format!("lines[{i}].unit_price_minor"), "must not be negative");
            }
            let unit = Money { amount_minor: line.unit_price_minor, currency: self.currency };
            total = total.and_then(|t| unit.times(line.quantity).and_then(|l| t.checked_add(l)).ok());
        }
        match (errors.is_empty(), total) {
            (true, Some(total)) => Ok(total),
            (true, None) => {
                Err(vec![FieldError { field: "lines".into(), message: MoneyError::Overflow.to_string() }])
            }
            (false, _) => Err(errors),
        }
    }
}

/// Command: place an order. Published by the ingress once the request is validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub currency: Currency,
    pub lines: Vec<OrderLine>,
    pub total_minor: i64,
    pub placed_at: DateTime<Utc>,
}

impl Message for PlaceOrder {
    const SUBJECT: &'static str = subjects::ORDERS_PLACE;
    const SCHEMA: &'static str = "orders.place";
    const VERSION: u16 = 1;
}

/// Event: the order is recorded with status `accepted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderAccepted {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub currency: Currency,
    pub total_minor: i64,
    pub accepted_at: DateTime<Utc>,
}

impl Message for OrderAccepted {
    const SUBJECT: &'static str = subjects::ORDERS_ACCEPTED;
    const SCHEMA: &'static str = "orders.accepted";
    const VERSION: u16 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, newer_version};

    fn request(lines: serde_json::Value) -> Result<PlaceOrderRequest, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"currency": "EUR", "lines": lines}))
    }

    #[test]
    fn valid_order_totals_in_minor_units() {
        let r = request(serde_json::json!([
            {"sku": "A-1", "quantity": 2, "unit_price_minor": 1250},
            {"sku": "B_2", "quantity": 1, "unit_price_minor": 99}
        ]))
        .expect("parses");
        assert_eq!(r.validate().map(|m| m.amount_minor), Ok(2599));
    }

    #[test]
    fn every_violation_is_reported() {
        let r = request(serde_json::json!([
            {"sku": "", "quantity": 0, "unit_price_minor": -1},
            {"sku": "ok", "quantity": 10001, "unit_price_minor": 1}
        ]))
        .expect("parses");
        let fields: Vec<_> = r.validate().expect_err("invalid").into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["lines[0].sku", "lines[0].quantity", "lines[0].unit_price_minor", "lines[1].quantity"]
        );
    }

    #[test]
    fn card_numbers_are_refused_wherever_text_is_accepted() {
        let r = request(
            serde_json::json!([{"sku": "4111-1111-1111-1111", "quantity": 1, "unit_price_minor": 1}]),
        )
        .expect("parses");
        let errors = r.validate().expect_err("a PAN");
        assert!(errors[0].message.contains("card number"));
        let ok = request(
            serde_json::json!([{"sku": "4111-1111-1111-1112", "quantity": 1, "unit_price_minor": 1}]),
        )
        .expect("parses");
        assert!(ok.validate().is_ok(), "fails the Luhn check: not a PAN");
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let r =
            request(serde_json::json!([{"sku": "A", "quantity": 10000, "unit_price_minor": i64::MAX / 2}]))
                .expect("parses");
        assert!(r.validate().is_err());
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let e = serde_json::from_value::<PlaceOrderRequest>(serde_json::json!({
            "currency": "EUR", "lines": [], "coupon": "FREE"
        }));
        assert!(e.is_err());
    }

    #[test]
    fn schema_versions_current_and_previous_only() {
        let cmd = OrderAccepted {
            order_id: Uuid::nil(),
            tenant: "t".into(),
            buyer_id: "b".into(),
            currency: "EUR".parse().expect("EUR"),
            total_minor: 1,
            accepted_at: Utc::now(),
        };
        let bytes = encode(&cmd);
        assert_eq!(decode::<OrderAccepted>(Some("orders.accepted/v1"), &bytes).ok(), Some(cmd));
        // Newer than this reader: not malformed, a later release reads it.
        let newer = decode::<OrderAccepted>(Some("orders.accepted/v2"), &bytes).expect_err("v2 is unknown");
        assert!(newer.is_newer_version(), "{newer}");
        assert_eq!(newer_version::<OrderAccepted>(Some("orders.accepted/v2")), Some(2));
        assert_eq!(newer_version::<OrderAccepted>(Some("orders.accepted/v1")), None);
        assert_eq!(newer_version::<OrderAccepted>(Some("orders.place/v9")), None, "another schema");
        // Everything else is fatal.
        for fatal in [Some("orders.place/v1"), Some("orders.accepted/v0"), Some("orders.accepted/vx"), None] {
            let e = decode::<OrderAccepted>(fatal, &bytes).expect_err("refused");
            assert!(!e.is_newer_version(), "{fatal:?}: {e}");
        }
        let garbage = decode::<OrderAccepted>(Some("orders.accepted/v1"), b"{not json").expect_err("garbage");
        assert!(!garbage.is_newer_version());
    }
}
