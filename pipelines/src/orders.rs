//! Orders: the `PlaceOrder` command, and the events of an order's life: `OrderAccepted`,
//! then `OrderConfirmed` or `OrderCancelled`, then `OrderShipped`.

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
        validate_lines(
            self.currency,
            self.lines.iter().map(|l| (l.sku.as_str(), l.quantity, l.unit_price_minor)),
        )
    }
}

/// Check lines given as (sku, quantity, unit price); returns their total or every
/// violation, each naming its line (`lines[i].field`).
pub fn validate_lines<'a>(
    currency: Currency,
    lines: impl ExactSizeIterator<Item = (&'a str, i64, i64)>,
) -> Result<Money, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err =
        |field: String, message: &str| errors.push(FieldError { field, message: message.to_owned() });
    if lines.len() == 0 {
        err("lines".into(), "an order needs at least one line");
    }
    if lines.len() > MAX_LINES {
        err("lines".into(), "too many lines (at most 100)");
    }
    let mut total = Some(Money { amount_minor: 0, currency });
    for (i, (sku, quantity, unit_price_minor)) in lines.enumerate() {
        let sku_ok = !sku.is_empty()
            && sku.len() <= MAX_SKU_LEN
            && sku.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !sku_ok {
            err(format!("lines[{i}].sku"), "1-64 characters of A-Z a-z 0-9 - _ .");
        } else if crate::pan::looks_like_pan(sku) {
            err(format!("lines[{i}].sku"), "looks like a card number: souk accepts payment tokens only");
        }
        if quantity <= 0 {
            err(format!("lines[{i}].quantity"), "must be a positive integer");
        } else if quantity > MAX_QUANTITY {
            err(format!("lines[{i}].quantity"), "must be at most 10000");
        }
        if unit_price_minor < 0 {
            err(format!("lines[{i}].unit_price_minor"), "must not be negative");
        }
        let unit = Money { amount_minor: unit_price_minor, currency };
        total = total.and_then(|t| unit.times(quantity).and_then(|l| t.checked_add(l)).ok());
    }
    match (errors.is_empty(), total) {
        (true, Some(total)) => Ok(total),
        (true, None) => {
            Err(vec![FieldError { field: "lines".into(), message: MoneyError::Overflow.to_string() }])
        }
        (false, _) => Err(errors),
    }
}

impl PricedLine {
    /// A line priced by the client (the version-1 order API), with no seller.
    pub fn client_priced(line: &OrderLine) -> Self {
        PricedLine {
            sku: line.sku.clone(),
            seller: String::new(),
            quantity: line.quantity,
            unit_price_minor: line.unit_price_minor,
        }
    }
}

/// One line of a placed order, priced from the catalog at checkout (never by the
/// client): the SKU, the seller that lists it, and the unit price when the order was
/// placed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PricedLine {
    pub sku: String,
    /// Empty in a version-1 command (placed before orders were priced from the catalog).
    #[serde(default)]
    pub seller: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
}

/// Command: place an order. Published by the ingress once the request is validated and
/// priced; starts the order's saga.
///
/// Version 2 adds each line's `seller` and the `payment_token`; a version-1 command
/// (neither) still decodes, with an empty seller and no token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceOrder {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub currency: Currency,
    pub lines: Vec<PricedLine>,
    pub total_minor: i64,
    /// The provider token to pay with (`tok_…`, never a card number).
    #[serde(default)]
    pub payment_token: Option<String>,
    pub placed_at: DateTime<Utc>,
}

impl PlaceOrder {
    /// Check the command is internally consistent: valid lines whose total is `total_minor`.
    pub fn validate(&self) -> Result<Money, Vec<FieldError>> {
        let total = validate_lines(
            self.currency,
            self.lines.iter().map(|l| (l.sku.as_str(), l.quantity, l.unit_price_minor)),
        )?;
        if total.amount_minor != self.total_minor {
            return Err(vec![FieldError {
                field: "total_minor".into(),
                message: format!("total {} does not match lines ({})", self.total_minor, total.amount_minor),
            }]);
        }
        Ok(total)
    }
}

impl Message for PlaceOrder {
    const SUBJECT: &'static str = subjects::ORDERS_PLACE;
    const SCHEMA: &'static str = "orders.place";
    const VERSION: u16 = 2;
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

/// Event: every step succeeded up to capture: the stock is sold and the payment
/// captured; fulfilment is requested from each seller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderConfirmed {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub currency: Currency,
    pub total_minor: i64,
    pub confirmed_at: DateTime<Utc>,
}

impl Message for OrderConfirmed {
    const SUBJECT: &'static str = subjects::ORDERS_CONFIRMED;
    const SCHEMA: &'static str = "orders.confirmed";
    const VERSION: u16 = 1;
}

/// Event: the order will not happen; every compensation is done. `reason` is written
/// for the buyer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderCancelled {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub reason: String,
    pub cancelled_at: DateTime<Utc>,
}

impl Message for OrderCancelled {
    const SUBJECT: &'static str = subjects::ORDERS_CANCELLED;
    const SCHEMA: &'static str = "orders.cancelled";
    const VERSION: u16 = 1;
}

/// Event: every seller of the order has shipped its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderShipped {
    pub order_id: Uuid,
    pub tenant: String,
    pub buyer_id: String,
    pub shipped_at: DateTime<Utc>,
}

impl Message for OrderShipped {
    const SUBJECT: &'static str = subjects::ORDERS_SHIPPED;
    const SCHEMA: &'static str = "orders.shipped";
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
    fn a_version_1_place_order_still_decodes_without_sellers_or_token() {
        let v1 = serde_json::json!({
            "order_id": Uuid::nil(), "tenant": "t", "buyer_id": "b", "currency": "EUR",
            "lines": [{"sku": "A", "quantity": 2, "unit_price_minor": 5}],
            "total_minor": 10, "placed_at": "2026-01-01T00:00:00Z"
        });
        let bytes = serde_json::to_vec(&v1).expect("json");
        let cmd = decode::<PlaceOrder>(Some("orders.place/v1"), &bytes).expect("v1 is read");
        assert_eq!((cmd.lines[0].seller.as_str(), cmd.payment_token.as_deref()), ("", None));
        assert_eq!(cmd.validate().map(|m| m.amount_minor), Ok(10));
        let mut wrong = cmd.clone();
        wrong.total_minor = 11;
        assert_eq!(wrong.validate().expect_err("mismatch")[0].field, "total_minor");
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
