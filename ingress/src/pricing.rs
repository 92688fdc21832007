//! Orders and checkouts are priced here, from the tenant's live products in Postgres
//! (`souk_pipelines::pricing` decides; this reads the catalog and makes the problems).

use souk_pipelines::{
    Currency,
    pricing::{self, Listing, PricedOrder},
};
use souk_stores::postgres::products;
use std::collections::HashMap;

use crate::{AppState, Problem, catalog::unavailable};

/// Price `requested` (sku, quantity), whose lines the client knows as `<list>[i]`:
/// 422 `validation` naming every line that cannot be ordered (unknown or deleted SKU,
/// over the stock, another currency), 503 when the catalog cannot be read.
pub(crate) async fn price(
    state: &AppState,
    tenant: &str,
    list: &str,
    requested: &[(&str, i64)],
) -> Result<PricedOrder, Problem> {
    let skus: Vec<String> = requested.iter().map(|(sku, _)| (*sku).to_owned()).collect();
    price_from(&live_products(state, tenant, &skus).await?, list, requested)
}

/// [`price`] from products already read ([`live`]).
pub(crate) fn price_from(
    live: &HashMap<String, products::StoredProduct>,
    list: &str,
    requested: &[(&str, i64)],
) -> Result<PricedOrder, Problem> {
    let listings: HashMap<&str, Listing> =
        live.iter().map(|(sku, p)| (sku.as_str(), listing(&p.product))).collect();
    pricing::price(list, requested, |sku| listings.get(sku)).map_err(|errors| {
        Problem::unprocessable("validation", "some lines cannot be ordered as they are").errors(errors)
    })
}

/// The tenant's live (not deleted) products among `skus`, by SKU, each with `stock` set
/// to the units available to buy now: on hand less the units held for orders not yet
/// complete (a product the inventory has no row for keeps its catalog stock). One query.
pub(crate) async fn live_products(
    state: &AppState,
    tenant: &str,
    skus: &[String],
) -> Result<HashMap<String, products::StoredProduct>, Problem> {
    let stored = products::get_many_with_available(&state.pool, tenant, skus)
        .await
        .map_err(|e| unavailable(state, e))?;
    Ok(live(stored))
}

/// The live products among `stored`, by SKU, with `stock` as [`live_products`] sets it.
pub(crate) fn live(stored: Vec<products::WithAvailable>) -> HashMap<String, products::StoredProduct> {
    stored
        .into_iter()
        .filter(|(p, _)| !p.is_deleted())
        .map(|(mut p, available)| {
            if let Some(units) = available {
                p.product.fields.stock = units;
            }
            (p.product.sku.clone(), p)
        })
        .collect()
}

/// What pricing needs of a catalog product.
pub(crate) fn listing(product: &souk_pipelines::catalog::Product) -> Listing {
    Listing {
        seller: product.seller.clone(),
        unit_price_minor: product.fields.price_minor,
        currency: product.fields.currency,
        stock: product.fields.stock,
    }
}

/// 409 `price-changed`, with the current prices of every line and the total, when the
/// client expected another total or another currency.
pub(crate) fn check_expected(
    priced: PricedOrder,
    expected_total_minor: Option<i64>,
    expected_currency: Option<Currency>,
) -> Result<PricedOrder, Problem> {
    let total_differs = expected_total_minor.is_some_and(|t| t != priced.total_minor);
    let currency_differs = expected_currency.is_some_and(|c| c != priced.currency);
    if !(total_differs || currency_differs) {
        return Ok(priced);
    }
    let expected = match (expected_total_minor, expected_currency) {
        (Some(total), Some(currency)) => format!("{total} {}", currency.code()),
        (Some(total), None) => total.to_string(),
        (None, Some(currency)) => format!("a total in {}", currency.code()),
        (None, None) => String::new(),
    };
    Err(Problem::new(axum::http::StatusCode::CONFLICT, "price-changed", "Prices changed")
        .detail(format!(
            "the current prices make a total of {} {} minor units, not {expected}; \
             `current` holds every line's price: send the order again with that total and currency",
            priced.total_minor,
            priced.currency.code()
        ))
        .current(priced))
}
