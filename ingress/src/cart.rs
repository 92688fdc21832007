//! The buyer's cart: `GET /v1/cart`, `PUT /v1/cart/items/{sku}` and `DELETE
//! /v1/cart/items/{sku}` (kept in Postgres, `stores::postgres::carts`).
//!
//! The cart stores SKUs and quantities (and the price the buyer saw); every read prices
//! it again from the catalog, and warns about lines whose product went away, whose
//! price changed since they were put, or that ask for more than the stock. A put is
//! checked against the catalog (a live product, within its stock) and the cart holds
//! at most `MAX_LINES` SKUs. Every answer is the cart as `GET /v1/cart` shows it.

use axum::{
    Json,
    body::Bytes,
    extract::rejection::BytesRejection,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use souk_pipelines::{
    Currency,
    catalog::check_sku,
    orders::{FieldError, MAX_LINES, check_quantity},
};
use souk_stores::postgres::{carts, products};
use std::{collections::HashMap, sync::Arc};
use utoipa::ToSchema;

use crate::{
    AppState, Claims, Problem,
    auth::{Principal, Role},
    catalog::unavailable,
    openapi,
    request_body::{self, Shape},
};

/// A cart as the buyer sees it: its lines at the catalog's current prices.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cart {
    /// By SKU; checkout problems name a line by its place here (`items[i].sku`).
    pub items: Vec<CartLine>,
    /// The currency of the lines that can be ordered; absent when there are none, or
    /// when they are priced in more than one currency (see `warnings`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// What those lines cost now, in minor units; absent with `currency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_minor: Option<i64>,
    /// What a checkout would refuse or what changed since the lines were put.
    pub warnings: Vec<CartWarning>,
}

/// One line of a cart. The product's fields are absent when it is no longer for sale.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartLine {
    pub sku: String,
    pub quantity: i64,
    /// Whether the product is for sale (a deleted or unknown product is not).
    pub available: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seller: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The current price of one unit, in minor units of `currency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit_price_minor: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<Currency>,
    /// Units in stock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line_total_minor: Option<i64>,
}

/// Something about a line the buyer should know before checking out.
#[derive(Debug, Serialize, ToSchema)]
pub struct CartWarning {
    pub sku: String,
    pub kind: WarningKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WarningKind {
    /// The product was deleted (or never existed): a checkout refuses the line.
    Unavailable,
    /// The price is not the one the line was put at.
    PriceChanged,
    /// The line asks for more than the stock: a checkout refuses it.
    OverStock,
    /// The line's currency differs from the cart's first line: a checkout refuses it.
    OtherCurrency,
}

/// The body of `PUT /v1/cart/items/{sku}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutItem {
    #[schema(minimum = 1, maximum = 10_000)]
    pub quantity: i64,
}

const PUT_SHAPE: Shape = Shape { fields: &["quantity"], lists: &[] };

/// Read the cart
///
/// The buyer's cart at the catalog's current prices, with warnings for lines whose
/// product went away, whose price changed since they were put, that ask for more than
/// the stock or that are in another currency.
#[utoipa::path(
    get,
    path = "/v1/cart",
    operation_id = "get_cart",
    tag = "cart",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The cart.", body = Cart),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn get_cart(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
) -> Result<Response, Problem> {
    buyer(&claims)?;
    state.check_read(&claims)?;
    Ok(Json(view(&state, &claims).await?).into_response())
}

/// Put an item in the cart
///
/// Sets the quantity of `sku` in the cart (adding the line, or replacing its quantity).
/// The SKU must be a live product of the catalog and the quantity within its stock
/// (422 naming the field otherwise); a cart holds at most 100 SKUs (409 `cart-full`).
#[utoipa::path(
    put,
    path = "/v1/cart/items/{sku}",
    operation_id = "put_cart_item",
    tag = "cart",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "the product's SKU")),
    request_body(content = PutItem, content_type = "application/json"),
    responses(
        (status = 200, description = "The cart after the change.", body = Cart),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 409, response = openapi::Conflict),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn put_item(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path(sku): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    buyer(&claims)?;
    state.check_write(&claims)?;
    path_sku(&sku)?;
    let request: PutItem = request_body::read(&headers, body, &PUT_SHAPE)?;
    check_quantity(request.quantity).map_err(|message| invalid("quantity", message))?;
    let mut live = crate::pricing::live_products(&state, &claims.tenant, std::slice::from_ref(&sku)).await?;
    let Some(product) = live.remove(&sku).map(|p| p.product) else {
        return Err(invalid("sku", &format!("no product {sku} is for sale (unknown or deleted)")));
    };
    if request.quantity > product.fields.stock {
        return Err(invalid("quantity", &format!("only {} of {sku} in stock", product.fields.stock)));
    }
    let price = (product.fields.price_minor, product.fields.currency);
    let put =
        carts::put_item(&state.pool, &claims.tenant, &claims.sub, &sku, request.quantity, price, MAX_LINES)
            .await
            .map_err(|e| unavailable(&state, e))?;
    if put == carts::Put::Full {
        return Err(Problem::new(StatusCode::CONFLICT, "cart-full", "Cart full")
            .detail(format!("a cart holds at most {MAX_LINES} SKUs: remove one first")));
    }
    Ok(Json(view(&state, &claims).await?).into_response())
}

/// Remove an item from the cart
///
/// Takes `sku` out of the cart; removing a SKU that is not in it changes nothing.
#[utoipa::path(
    delete,
    path = "/v1/cart/items/{sku}",
    operation_id = "delete_cart_item",
    tag = "cart",
    security(("bearer" = [])),
    params(("sku" = String, Path, description = "the product's SKU")),
    responses(
        (status = 200, description = "The cart after the change.", body = Cart),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn delete_item(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path(sku): Path<String>,
) -> Result<Response, Problem> {
    buyer(&claims)?;
    state.check_write(&claims)?;
    path_sku(&sku)?;
    carts::remove_item(&state.pool, &claims.tenant, &claims.sub, &sku)
        .await
        .map_err(|e| unavailable(&state, e))?;
    Ok(Json(view(&state, &claims).await?).into_response())
}

fn buyer(claims: &Claims) -> Result<(), Problem> {
    match claims.has(Role::Buyer) {
        true => Ok(()),
        false => Err(Problem::forbidden("carts are for the buyer role")),
    }
}

/// 400 for a SKU no product can have (card numbers included).
fn path_sku(sku: &str) -> Result<(), Problem> {
    check_sku(sku).map_err(|message| {
        Problem::bad_request("invalid-path", "the SKU is invalid")
            .errors(vec![FieldError::new("sku", message)])
    })
}

fn invalid(field: &str, message: &str) -> Problem {
    Problem::unprocessable("validation", "the item cannot be put in the cart")
        .errors(vec![FieldError::new(field, message)])
}

/// `claims`' cart priced from the catalog now.
pub(crate) async fn view(state: &AppState, claims: &Claims) -> Result<Cart, Problem> {
    let (items, stored) = carts::items_with_products(&state.pool, &claims.tenant, &claims.sub)
        .await
        .map_err(|e| unavailable(state, e))?;
    Ok(price_view(items, &crate::pricing::live(stored)))
}

fn price_view(items: Vec<carts::CartItem>, live: &HashMap<String, products::StoredProduct>) -> Cart {
    let mut cart = Cart { items: Vec::new(), currency: None, total_minor: Some(0), warnings: Vec::new() };
    let mut warn = |sku: &str, kind, message: String| {
        cart.warnings.push(CartWarning { sku: sku.to_owned(), kind, message })
    };
    let mut lines = Vec::with_capacity(items.len());
    let mut total = Some(0i64);
    let mut currency = None;
    for item in items {
        let Some(product) = live.get(&item.sku).map(|p| &p.product) else {
            warn(&item.sku, WarningKind::Unavailable, format!("{} is no longer for sale", item.sku));
            lines.push(CartLine {
                sku: item.sku,
                quantity: item.quantity,
                available: false,
                seller: None,
                title: None,
                unit_price_minor: None,
                currency: None,
                stock: None,
                line_total_minor: None,
            });
            continue;
        };
        let f = &product.fields;
        if (f.price_minor, f.currency) != (item.seen_price_minor, item.seen_currency) {
            warn(
                &item.sku,
                WarningKind::PriceChanged,
                format!(
                    "the price changed from {} {} to {} {} since it was put in the cart",
                    item.seen_price_minor,
                    item.seen_currency.code(),
                    f.price_minor,
                    f.currency.code()
                ),
            );
        }
        if item.quantity > f.stock {
            warn(&item.sku, WarningKind::OverStock, format!("only {} of {} in stock", f.stock, item.sku));
        }
        let line_total = f.price_minor.checked_mul(item.quantity);
        match *currency.get_or_insert(f.currency) {
            c if c == f.currency => total = total.zip(line_total).and_then(|(t, l)| t.checked_add(l)),
            c => {
                warn(
                    &item.sku,
                    WarningKind::OtherCurrency,
                    format!("priced in {}, the cart's earlier lines in {}", f.currency.code(), c.code()),
                );
                total = None;
            }
        }
        lines.push(CartLine {
            sku: item.sku,
            quantity: item.quantity,
            available: true,
            seller: Some(product.seller.clone()),
            title: Some(f.title.clone()),
            unit_price_minor: Some(f.price_minor),
            currency: Some(f.currency),
            stock: Some(f.stock),
            line_total_minor: line_total,
        });
    }
    cart.items = lines;
    cart.currency = currency.filter(|_| total.is_some());
    cart.total_minor = total.filter(|_| cart.currency.is_some());
    cart
}
