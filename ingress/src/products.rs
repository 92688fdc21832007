//! Public product reads: `GET /v1/products/{sku}` and `GET /v1/sellers/{seller}/products`.
//!
//! No token needed. The tenant read is the token's when a token is sent (it must then
//! be valid: a bad token is 401, never silently anonymous), else the configured public
//! tenant (`public-tenant`, default `dev`, like `souk token`'s default). Deleted
//! products are 404. A product carries its version as a strong ETag; `If-None-Match`
//! with it is 304, and answers may be cached briefly by anyone (`Cache-Control:
//! public`, `Vary: Authorization`, since the tenant can come from the token).
//! Anonymous reads have no per-principal rate limit (there is no principal); they are
//! meant to be served from a cache in front, which the headers allow.

use axum::{
    Json,
    extract::{FromRequestParts, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use souk_pipelines::catalog::{FieldError, Product, check_seller_id, check_sku};
use souk_stores::postgres::{inventory, products};
use std::sync::Arc;

use crate::{
    AppState, Problem,
    auth::{Claims, Principal},
    catalog::unavailable,
    openapi::{self, IfNoneMatch},
};

/// How long anyone may reuse a product answer without asking again. Short: a price or
/// stock change should show within seconds; the ETag makes revalidating cheap.
const CACHE_CONTROL: &str = "public, max-age=5";
/// Default and largest page of a seller listing.
pub const DEFAULT_PER_PAGE: i64 = 20;
pub const MAX_PER_PAGE: i64 = 100;

/// The caller, if a token was sent (also the caller of `GET /v1/search`).
pub struct MaybePrincipal(pub Option<Claims>);

impl FromRequestParts<Arc<AppState>> for MaybePrincipal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        if !parts.headers.contains_key(header::AUTHORIZATION) {
            return Ok(MaybePrincipal(None));
        }
        Principal::from_request_parts(parts, state)
            .await
            .map(|Principal(claims)| MaybePrincipal(Some(claims)))
    }
}

impl MaybePrincipal {
    /// The tenant to read, after the caller's read budget (if it is a principal).
    fn tenant(&self, state: &AppState) -> Result<String, Problem> {
        match &self.0 {
            Some(claims) => {
                state.check_read(claims)?;
                Ok(claims.tenant.clone())
            }
            None => Ok(state.public_tenant.clone()),
        }
    }
}

fn not_found() -> Problem {
    Problem::not_found("no such product")
}

/// Read a product
///
/// Public: no token needed (with one, the token's tenant is read; without, the
/// deployment's public tenant). `ETag` is the product's version; send it back in
/// `If-None-Match` for a 304 (while its stock has not moved either). `stock` is the
/// units available to buy now: units held for checkouts in progress are excluded.
/// Deleted products are 404.
#[utoipa::path(
    get,
    path = "/v1/products/{sku}",
    operation_id = "get_product",
    tag = "catalog",
    params(("sku" = String, Path, description = "the product's SKU"), IfNoneMatch),
    responses(
        (status = 200, description = "The product.", body = Product,
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "Not modified since the given ETag.",
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 404, response = openapi::NotFound),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn get_product(
    State(state): State<Arc<AppState>>,
    caller: MaybePrincipal,
    Path(sku): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let tenant = caller.tenant(&state)?;
    if check_sku(&sku).is_err() {
        // No product can have this SKU.
        return Err(not_found());
    }
    let (stored, stock) = tokio::try_join!(
        products::get(&state.pool, &tenant, &sku),
        inventory::stock(&state.pool, &tenant, &sku)
    )
    .map_err(|e| unavailable(&state, e))?;
    let mut product = stored.filter(|s| !s.is_deleted()).ok_or_else(not_found)?.product;
    // `stock` is what can be bought now: held units excluded. It moves without the
    // product's version (holds, sales), so the version ETag may answer 304 only while
    // the stock has not moved since that version was written (a product write sets
    // both in one transaction: equal times).
    let stock_moved = stock.is_some_and(|s| s.updated_at > product.updated_at);
    if let Some(stock) = stock {
        product.fields.stock = stock.available();
    }
    let etag = HeaderValue::from_str(&format!("\"{}\"", product.version)).map_err(|_| not_found())?;
    let unchanged = !stock_moved
        && headers
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == etag);
    let mut response =
        if unchanged { StatusCode::NOT_MODIFIED.into_response() } else { Json(product).into_response() };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    h.insert(header::VARY, HeaderValue::from_static("Authorization"));
    Ok(response)
}

/// Query parameters of a seller listing.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // a description for the document; the handler reads the raw pairs
pub struct ListQuery {
    /// Products per page, 1-100 (default 20).
    per_page: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A page of a seller's products.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProductPage {
    pub items: Vec<Product>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// List a seller's products
///
/// Public, like product reads. In SKU order, `per_page` at a time (at most 100);
/// `cursor` continues after the previous page (keyset: no duplicates or gaps while
/// products change). Deleted products are left out.
#[utoipa::path(
    get,
    path = "/v1/sellers/{seller}/products",
    operation_id = "list_seller_products",
    tag = "catalog",
    params(("seller" = String, Path, description = "the seller id"), ListQuery),
    responses(
        (status = 200, description = "A page of products.", body = ProductPage),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn list_seller_products(
    State(state): State<Arc<AppState>>,
    caller: MaybePrincipal,
    Path(seller): Path<String>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let tenant = caller.tenant(&state)?;
    let pairs = query.map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?.0;
    let mut errors = Vec::new();
    if check_seller_id(&seller).is_err() {
        errors.push(FieldError {
            field: "seller".into(),
            message: "a seller id has 1-128 bytes and no control characters".into(),
        });
    }
    let (per_page, cursor) =
        page_query(&pairs, |value| check_sku(value).is_ok().then(|| value.to_owned()), &mut errors);
    if !errors.is_empty() {
        return Err(Problem::bad_request("invalid-query", "bad query parameters").errors(errors));
    }
    // One more than the page: whether there is a next page, without a count.
    let mut items = products::list_by_seller(&state.pool, &tenant, &seller, cursor.as_deref(), per_page + 1)
        .await
        .map_err(|e| unavailable(&state, e))?;
    let next_cursor = if items.len() as i64 > per_page {
        items.truncate(per_page as usize);
        items.last().map(|p| p.sku.clone())
    } else {
        None
    };
    // Stock as on a product read: what can be bought now.
    let skus: Vec<String> = items.iter().map(|p| p.sku.clone()).collect();
    let available =
        inventory::available_many(&state.pool, &tenant, &skus).await.map_err(|e| unavailable(&state, e))?;
    for p in &mut items {
        if let Some(n) = available.get(&p.sku) {
            p.fields.stock = *n;
        }
    }
    let mut response = Json(ProductPage { items, next_cursor }).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHE_CONTROL));
    h.insert(header::VARY, HeaderValue::from_static("Authorization"));
    Ok(response)
}

/// `per_page` and `cursor` of a keyset-paged listing, each given at most once (nothing
/// else is taken); every bad parameter is added to `errors`. `decode` reads a cursor
/// this API returned (`None`: not one).
pub(crate) fn page_query<C>(
    pairs: &[(String, String)],
    decode: impl Fn(&str) -> Option<C>,
    errors: &mut Vec<FieldError>,
) -> (i64, Option<C>) {
    let mut bad =
        |field: &str, message: &str| errors.push(FieldError { field: field.into(), message: message.into() });
    let (mut per_page, mut cursor, mut seen) = (DEFAULT_PER_PAGE, None, Vec::new());
    for (name, value) in pairs {
        if seen.contains(&name) {
            bad(name, "given more than once");
            continue;
        }
        seen.push(name);
        match name.as_str() {
            "per_page" => match value.parse::<i64>() {
                Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => per_page = n,
                _ => bad("per_page", "must be an integer from 1 to 100"),
            },
            "cursor" => match decode(value) {
                Some(after) => cursor = Some(after),
                None => bad("cursor", "not a cursor this API returned"),
            },
            _ => bad(name, "unknown parameter (per_page, cursor)"),
        }
    }
    (per_page, cursor)
}
