//! Pricing an order from the catalog: each requested (SKU, quantity) gets the unit
//! price, currency and seller of the tenant's live product, or an error naming its line.
//! The client never sets a price. Pure: the caller reads the listings (the ingress
//! from Postgres `products`) and hands them in.

use crate::{
    Currency, Money,
    orders::{FieldError, PricedLine},
};
use serde::Serialize;

/// What pricing needs of a live product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub seller: String,
    pub unit_price_minor: i64,
    pub currency: Currency,
    /// Units a buyer may order now.
    pub stock: i64,
}

/// An order priced from the catalog: one currency, every line with its seller and
/// current unit price, and the total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PricedOrder {
    pub currency: Currency,
    pub lines: Vec<PricedLine>,
    pub total_minor: i64,
}

/// Price `requested` (checked already: see `orders::check_requested_lines`) from
/// `listing` (`None`: no live product of that SKU). Every line that cannot be ordered
/// is named `<list>[i].<field>`: an unknown or deleted SKU, a quantity over the stock,
/// a currency other than the first priced line's (one order has one currency).
pub fn price<'a>(
    list: &str,
    requested: &[(&str, i64)],
    listing: impl Fn(&str) -> Option<&'a Listing>,
) -> Result<PricedOrder, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut lines = Vec::with_capacity(requested.len());
    let mut currency: Option<Currency> = None;
    for (i, &(sku, quantity)) in requested.iter().enumerate() {
        let Some(found) = listing(sku) else {
            errors.push(FieldError::new(
                format!("{list}[{i}].sku"),
                format!("no product {sku} is for sale (unknown or deleted)"),
            ));
            continue;
        };
        let order_currency = *currency.get_or_insert(found.currency);
        if found.currency != order_currency {
            errors.push(FieldError::new(
                format!("{list}[{i}].sku"),
                format!(
                    "{sku} is priced in {}, the order's earlier lines in {}: one order has one currency",
                    found.currency.code(),
                    order_currency.code()
                ),
            ));
        }
        if quantity > found.stock {
            errors.push(FieldError::new(
                format!("{list}[{i}].quantity"),
                format!("only {} of {sku} in stock", found.stock.max(0)),
            ));
        }
        lines.push(PricedLine {
            sku: sku.to_owned(),
            seller: found.seller.clone(),
            quantity,
            unit_price_minor: found.unit_price_minor,
        });
    }
    let Some(currency) = currency.filter(|_| errors.is_empty()) else { return Err(errors) };
    let total = lines.iter().try_fold(Money { amount_minor: 0, currency }, |total, line| {
        Money { amount_minor: line.unit_price_minor, currency }.times(line.quantity)?.checked_add(total)
    });
    match total {
        Ok(total) => Ok(PricedOrder { currency, lines, total_minor: total.amount_minor }),
        Err(e) => Err(vec![FieldError::new(list, e.to_string())]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn listing(seller: &str, price: i64, currency: &str, stock: i64) -> Listing {
        Listing {
            seller: seller.into(),
            unit_price_minor: price,
            currency: currency.parse().expect("currency"),
            stock,
        }
    }

    #[test]
    fn lines_take_the_catalogs_price_and_seller() {
        let catalog = HashMap::from([
            ("MUG", listing("potter", 1299, "EUR", 5)),
            ("TEA", listing("grocer", 849, "EUR", 9)),
        ]);
        let priced = price("lines", &[("MUG", 2), ("TEA", 1)], |s| catalog.get(s)).expect("priced");
        assert_eq!(priced.total_minor, 2 * 1299 + 849);
        assert_eq!(priced.currency.code(), "EUR");
        let sellers: Vec<_> = priced.lines.iter().map(|l| l.seller.as_str()).collect();
        assert_eq!(sellers, ["potter", "grocer"]);
    }

    #[test]
    fn every_line_that_cannot_be_ordered_is_named() {
        let catalog =
            HashMap::from([("EUR-1", listing("s", 100, "EUR", 1)), ("USD-1", listing("s", 100, "USD", 100))]);
        let errors = price("lines", &[("EUR-1", 2), ("GONE", 1), ("USD-1", 1)], |s| catalog.get(s))
            .expect_err("invalid");
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["lines[0].quantity", "lines[1].sku", "lines[2].sku"], "{errors:?}");
        assert!(errors[2].message.contains("one currency"), "{errors:?}");
    }

    #[test]
    fn an_overflowing_total_is_an_error_not_a_wrap() {
        let catalog = HashMap::from([("BIG", listing("s", i64::MAX / 2, "EUR", 10_000))]);
        assert!(price("lines", &[("BIG", 3)], |s| catalog.get(s)).is_err());
    }
}
