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

/// Longest payment token (`tok_` and up to 64 characters).
pub const MAX_TOKEN_LEN: usize = 4 + 64;

/// One line as the client sends it: what to buy and how many. The price, currency and
/// seller come from the catalog when the order is placed, never from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._-]+$"))]
    pub sku: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 10_000))]
    pub quantity: i64,
}

/// The body of `POST /v1/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    /// One line per SKU (a SKU given twice is refused: put the whole quantity on one line).
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 100))]
    pub lines: Vec<OrderLine>,
    /// The payment provider's token to pay with: `tok_` and 1-64 of A-Z a-z 0-9 _
    /// (never a card number).
    #[cfg_attr(feature = "openapi", schema(pattern = "^tok_[A-Za-z0-9_]{1,64}$", example = "tok_ok"))]
    pub payment_token: String,
    /// The total the client expects, in minor units of `expected_currency` (required
    /// with it): when the catalog's prices make another total, the order is refused
    /// (409) with the current prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0))]
    pub expected_total_minor: Option<i64>,
    /// The currency the client expects the order in: when the catalog prices it in
    /// another, the order is refused (409) with the current prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_currency: Option<Currency>,
}

/// A field that failed validation, with a message for the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { field: field.into(), message: message.into() }
    }
}

impl PlaceOrderRequest {
    /// Check every rule that needs no catalog; returns all violations, not just the
    /// first, each naming its field (`lines[i].sku`, `payment_token` …).
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors =
            check_requested_lines("lines", self.lines.iter().map(|l| (l.sku.as_str(), l.quantity)));
        check_checkout_fields(
            &self.payment_token,
            self.expected_total_minor,
            self.expected_currency,
            &mut errors,
        );
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }
}

/// Check the payment token and expected total of an order or a checkout, adding each
/// violation to `errors`. A total is a sum in one currency: `expected_total_minor`
/// comes with `expected_currency` (review: compared alone, a product repriced from
/// 1299 JPY to 1299 USD passed a buyer's check of "1299" and was charged in dollars).
pub fn check_checkout_fields(
    payment_token: &str,
    expected_total_minor: Option<i64>,
    expected_currency: Option<Currency>,
    errors: &mut Vec<FieldError>,
) {
    if let Err(message) = check_payment_token(payment_token) {
        errors.push(FieldError::new("payment_token", message));
    }
    if expected_total_minor.is_some_and(|t| t < 0) {
        errors.push(FieldError::new("expected_total_minor", "must not be negative"));
    }
    if expected_total_minor.is_some() && expected_currency.is_none() {
        errors.push(FieldError::new(
            "expected_currency",
            "required with expected_total_minor: a total is a sum in one currency (as GET /v1/cart shows it)",
        ));
    }
}

/// A payment token: `tok_` and 1-64 of A-Z a-z 0-9 _, holding no card number.
pub fn check_payment_token(token: &str) -> Result<(), &'static str> {
    let body = token.strip_prefix("tok_").unwrap_or_default();
    let shaped = !body.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    // Checked first: a card number pasted into the field is named as such, whatever its shape.
    if crate::pan::looks_like_pan(token) {
        Err("looks like a card number: souk accepts payment tokens only")
    } else if !shaped {
        Err("a payment token: tok_ and 1-64 characters of A-Z a-z 0-9 _")
    } else {
        Ok(())
    }
}

/// Check requested lines given as (sku, quantity) — their count, each SKU's form (no
/// card numbers), each quantity's range, and that no SKU is given twice — naming each
/// bad line `<list>[i].<field>`.
pub fn check_requested_lines<'a>(
    list: &str,
    lines: impl ExactSizeIterator<Item = (&'a str, i64)>,
) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if lines.len() == 0 {
        errors.push(FieldError::new(list, "an order needs at least one line"));
    }
    if lines.len() > MAX_LINES {
        errors.push(FieldError::new(list, format!("too many lines (at most {MAX_LINES})")));
    }
    let mut first_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, (sku, quantity)) in lines.enumerate() {
        if let Err(message) = crate::catalog::check_sku(sku) {
            errors.push(FieldError::new(format!("{list}[{i}].sku"), message));
        } else if let Some(first) = first_of.get(sku) {
            // Refused, not merged: a merge would make the line numbers of every later
            // error, and of the order, differ from what the client sent.
            errors.push(FieldError::new(
                format!("{list}[{i}].sku"),
                format!("{sku} is already on {list}[{first}]: put the whole quantity on one line"),
            ));
        } else {
            first_of.insert(sku, i);
        }
        if let Err(message) = check_quantity(quantity) {
            errors.push(FieldError::new(format!("{list}[{i}].quantity"), message));
        }
    }
    errors
}

/// A quantity of one line: 1 to [`MAX_QUANTITY`].
pub fn check_quantity(quantity: i64) -> Result<(), &'static str> {
    if quantity <= 0 {
        Err("must be a positive integer")
    } else if quantity > MAX_QUANTITY {
        Err("must be at most 10000")
    } else {
        Ok(())
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
        if let Err(message) = crate::catalog::check_sku(sku) {
            err(format!("lines[{i}].sku"), message);
        }
        if let Err(message) = check_quantity(quantity) {
            err(format!("lines[{i}].quantity"), message);
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
/// (neither) still decodes, with an empty seller and no token. `cart` is optional and
/// ignored by readers that predate it (no version change: it only adds an emptying
/// that the ingress also does).
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
    /// The cart lines a checkout ordered, as it read them: the orders pool empties
    /// them with the order's row, so a cart the ingress could not empty after the
    /// PubAck (it died, or its emptying failed) is emptied all the same. `None` for
    /// `POST /v1/orders`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart: Option<CheckedOutCart>,
}

/// The cart lines a checkout took, under the checkout's `Idempotency-Key` (whose claim
/// of the cart ends with the emptying).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckedOutCart {
    pub key: String,
    pub lines: Vec<CartLine>,
}

/// One cart line as a checkout read it: a line changed after (another quantity, or
/// removed and put back: a later `put_at`) is not what was ordered and stays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub sku: String,
    pub quantity: i64,
    pub put_at: DateTime<Utc>,
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

/// `Nats-Msg-Id` of an order command: the order id the key's claim fixed. Every retry
/// under one claim carries the same id (JetStream and the worker's inbox deduplicate
/// it), and a key used again after its claim expired gets a new order and so a new id,
/// which neither JetStream nor the inbox can mistake for the old command. (`souk trace`
/// finds the command's handling by it.)
pub fn place_message_id(tenant: &str, order_id: uuid::Uuid) -> String {
    format!("orders.place:{tenant}:{order_id}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, newer_version};

    fn request(lines: serde_json::Value) -> Result<PlaceOrderRequest, serde_json::Error> {
        serde_json::from_value(serde_json::json!({"lines": lines, "payment_token": "tok_ok"}))
    }

    fn fields(r: &PlaceOrderRequest) -> Vec<String> {
        r.validate().err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_valid_request_carries_skus_and_quantities_only() {
        let r = request(serde_json::json!([{"sku": "A-1", "quantity": 2}, {"sku": "B_2", "quantity": 1}]))
            .expect("parses");
        assert_eq!(r.validate(), Ok(()));
        let priced = request(serde_json::json!([{"sku": "A", "quantity": 1, "unit_price_minor": 1}]));
        assert!(priced.is_err(), "a client cannot set a price");
    }

    #[test]
    fn every_violation_is_reported() {
        let r = request(serde_json::json!([
            {"sku": "", "quantity": 0},
            {"sku": "ok", "quantity": 10001},
            {"sku": "ok", "quantity": 1}
        ]))
        .expect("parses");
        assert_eq!(fields(&r), ["lines[0].sku", "lines[0].quantity", "lines[1].quantity", "lines[2].sku"]);
        let none = request(serde_json::json!([])).expect("parses");
        assert_eq!(fields(&none), ["lines"]);
    }

    #[test]
    fn payment_tokens_are_shaped_and_never_card_numbers() {
        let mut r = request(serde_json::json!([{"sku": "A", "quantity": 1}])).expect("parses");
        for (token, ok) in [
            ("tok_ok", true),
            ("tok_soft_decline", true),
            (&*format!("tok_{}", "a".repeat(64)), true),
            (&*format!("tok_{}", "a".repeat(65)), false),
            ("tok_", false),
            ("ok", false),
            ("tok_a-b", false),
            ("tok_4111_1111_1111_1111", false),
        ] {
            r.payment_token = token.into();
            assert_eq!(r.validate().is_ok(), ok, "{token}");
        }
        r.payment_token = "tok_4111111111111111".into();
        assert!(r.validate().expect_err("a PAN")[0].message.contains("card number"));
        r.payment_token = "tok_ok".into();
        r.expected_total_minor = Some(-1);
        r.expected_currency = Some("EUR".parse().expect("EUR"));
        assert_eq!(fields(&r), ["expected_total_minor"]);
        // A total is a sum in one currency.
        (r.expected_total_minor, r.expected_currency) = (Some(100), None);
        assert_eq!(fields(&r), ["expected_currency"]);
        (r.expected_total_minor, r.expected_currency) = (None, Some("EUR".parse().expect("EUR")));
        assert!(r.validate().is_ok(), "a currency alone is taken");
    }

    #[test]
    fn card_numbers_are_refused_wherever_text_is_accepted() {
        let r = request(serde_json::json!([{"sku": "4111-1111-1111-1111", "quantity": 1}])).expect("parses");
        let errors = r.validate().expect_err("a PAN");
        assert!(errors[0].message.contains("card number"));
        let ok = request(serde_json::json!([{"sku": "4111-1111-1111-1112", "quantity": 1}])).expect("parses");
        assert!(ok.validate().is_ok(), "fails the Luhn check: not a PAN");
    }

    #[test]
    fn overflow_is_an_error_not_a_wrap() {
        let line = |price| PricedLine {
            sku: "A".into(),
            seller: "s".into(),
            quantity: 10_000,
            unit_price_minor: price,
        };
        let total = validate_lines(
            "EUR".parse().expect("EUR"),
            [line(i64::MAX / 2)].iter().map(|l| (l.sku.as_str(), l.quantity, l.unit_price_minor)),
        );
        assert!(total.is_err());
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
            "lines": [], "payment_token": "tok_ok", "coupon": "FREE"
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
