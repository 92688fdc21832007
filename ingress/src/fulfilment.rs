//! Sellers' orders: `GET /v1/sellers/{seller}/orders` (what each seller has to ship)
//! and `POST /v1/sellers/{seller}/orders/{order_id}/ship`.
//!
//! Both need a token acting for `{seller}` (a seller token naming it, or an admin):
//! another seller is 403, decided before the body is read. Shipping is once per order
//! and seller, so it is idempotent without a key: shipping a part already shipped is
//! 202 again (`status: shipped`, nothing published), and a ship in flight stores one
//! command (its message id is the order and seller's). An `Idempotency-Key`, when sent,
//! is claimed like other writes' (the same key with another request is 422).

use axum::{
    Json,
    body::Bytes,
    extract::{FromRequest, Path, Query, Request, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use souk_pipelines::{
    catalog::{FieldError, check_seller_id, check_text},
    fulfilment::MarkShipped,
};
use souk_stores::postgres::{
    fulfilments::{self, After, Fulfilment},
    idempotency,
};
use std::sync::Arc;
use uuid::Uuid;

use crate::{
    AppState, Problem,
    auth::{Claims, Principal},
    catalog::unavailable,
    intake::{IntakeError, request_hash},
    openapi::{self, IdempotencyKey},
};

/// Longest tracking reference accepted.
pub const MAX_TRACKING_CHARS: usize = 128;

/// A page of a seller's orders, newest request first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SellerOrderPage {
    pub items: Vec<Fulfilment>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// The body of a ship (optional).
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ShipRequest {
    /// The carrier's tracking reference, 1-128 characters.
    #[schema(min_length = 1, max_length = 128)]
    pub tracking: Option<String>,
}

/// The answer to a ship.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ShipAccepted {
    pub order_id: Uuid,
    pub seller: String,
    /// `accepted` (stored by JetStream, to be applied by the fulfilment pool) or
    /// `shipped` (it was shipped already: nothing new happens).
    pub status: String,
    /// Where the seller's orders are listed.
    pub status_url: String,
}

/// Query parameters of the seller's orders.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // a description for the document; the handler reads the raw pairs
pub struct OrdersQuery {
    /// Orders per page, 1-100 (default 20).
    per_page: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// 403 unless `claims` act for `seller` (decided before anything else is read).
fn admit(claims: &Claims, seller: &str) -> Result<(), Problem> {
    if !claims.may_act_for(seller) {
        return Err(Problem::forbidden("this token does not act for this seller"));
    }
    Ok(())
}

fn bad_seller(seller: &str) -> Option<FieldError> {
    check_seller_id(seller).err().map(|why| FieldError { field: "seller".into(), message: why.into() })
}

/// A cursor: the last item's request time (µs since the epoch) and order id.
fn encode_cursor(f: &Fulfilment) -> String {
    format!("{}_{}", f.requested_at.timestamp_micros(), f.order_id.simple())
}

/// A cursor souk wrote: its time is after the epoch (one outside Postgres's range,
/// which chrono reads, made the listing's query fail: a 503 for a bad input).
fn decode_cursor(raw: &str) -> Option<After> {
    let (micros, id) = raw.split_once('_')?;
    let micros: i64 = micros.parse().ok().filter(|m| *m >= 0)?;
    let requested_at = DateTime::<Utc>::from_timestamp_micros(micros)?;
    Some(After { requested_at, order_id: Uuid::parse_str(id).ok()? })
}

/// List a seller's orders
///
/// What the seller has to ship (and has shipped): per order, its id, the seller's
/// lines, the status (`requested`, `shipped`), when it was requested and shipped, and
/// the tracking reference. Newest request first, `per_page` at a time (at most 100);
/// `cursor` continues after the previous page (keyset: no duplicates or gaps while new
/// requests arrive). For a seller token naming the seller, or an admin.
#[utoipa::path(
    get,
    path = "/v1/sellers/{seller}/orders",
    operation_id = "list_seller_orders",
    tag = "fulfilment",
    security(("bearer" = [])),
    params(("seller" = String, Path, description = "the seller id"), OrdersQuery),
    responses(
        (status = 200, description = "A page of the seller's orders.", body = SellerOrderPage),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn list_seller_orders(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path(seller): Path<String>,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    admit(&claims, &seller)?;
    state.check_read(&claims)?;
    let pairs = query.map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?.0;
    let mut errors: Vec<FieldError> = bad_seller(&seller).into_iter().collect();
    let (per_page, cursor) = crate::products::page_query(&pairs, decode_cursor, &mut errors);
    if !errors.is_empty() {
        return Err(Problem::bad_request("invalid-query", "bad query parameters").errors(errors));
    }
    // One more than the page: whether there is a next page, without a count.
    let mut items = fulfilments::list(&state.pool, &claims.tenant, &seller, cursor, per_page + 1)
        .await
        .map_err(|e| unavailable(&state, e))?;
    let next_cursor = if items.len() as i64 > per_page {
        items.truncate(per_page as usize);
        items.last().map(encode_cursor)
    } else {
        None
    };
    Ok(Json(SellerOrderPage { items, next_cursor }).into_response())
}

/// Mark a seller's part of an order shipped
///
/// 202 once JetStream has stored the command; the fulfilment pool then marks it
/// shipped and announces it (`SellerShipped`; the order is `shipped` once all its
/// sellers have shipped). Shipping again is 202 with `status: shipped` and changes
/// nothing (the first tracking reference stays). The body is optional: `{"tracking":
/// "…"}`. 404 when the order asked nothing of this seller.
#[utoipa::path(
    post,
    path = "/v1/sellers/{seller}/orders/{order_id}/ship",
    operation_id = "ship_seller_order",
    tag = "fulfilment",
    security(("bearer" = [])),
    params(
        ("seller" = String, Path, description = "the seller id"),
        ("order_id" = Uuid, Path, description = "the order id"),
        IdempotencyKey,
    ),
    request_body(content = Option<ShipRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted (or shipped already).", body = ShipAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 408, response = openapi::RequestTimeout),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn ship(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path((seller, order_id)): Path<(String, String)>,
    request: Request,
) -> Result<Response, Problem> {
    admit(&claims, &seller)?;
    state.check_write(&claims)?;
    let mut errors: Vec<FieldError> = bad_seller(&seller).into_iter().collect();
    let order_id = Uuid::parse_str(&order_id).ok();
    if order_id.is_none() {
        errors.push(FieldError { field: "order_id".into(), message: "order ids are UUIDs".into() });
    }
    let (Some(order_id), true) = (order_id, errors.is_empty()) else {
        return Err(Problem::bad_request("invalid-path", "the seller or order id is invalid").errors(errors));
    };
    let headers = request.headers().clone();
    let key = match headers.contains_key("idempotency-key") {
        true => Some(crate::orders::idempotency_key(&headers)?.to_owned()),
        false => None,
    };
    // Only now is the body read.
    let body = Bytes::from_request(request, &state).await;
    let body = ship_body(&headers, body)?;

    let part = fulfilments::get(&state.pool, &claims.tenant, &seller, order_id)
        .await
        .map_err(|e| unavailable(&state, e))?
        .ok_or_else(|| Problem::not_found("this order asked nothing of this seller"))?;
    let status_url = format!("/v1/sellers/{seller}/orders");
    let hash = request_hash(&serde_json::to_vec(&(&seller, order_id, &body)).unwrap_or_default());
    if part.is_shipped() {
        // Shipping twice ships once — but a key names one request, shipped or not.
        if let Some(key) = &key {
            let claimed = format!("{}{key}", idempotency::FULFILMENT_SHIP_PREFIX);
            let record = idempotency::existing(&state.pool, &claims.tenant, &claims.sub, &claimed)
                .await
                .map_err(|e| unavailable(&state, e))?;
            if record.is_some_and(|r| r.request_hash != hash) {
                return Err(key_reused());
            }
        }
        metrics::counter!("souk_ingress_ships_total", "outcome" => "shipped_already").increment(1);
        let body = ShipAccepted { order_id, seller, status: "shipped".into(), status_url };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    }
    let cmd = MarkShipped {
        tenant: claims.tenant.clone(),
        order_id,
        seller: seller.clone(),
        actor: claims.sub.clone(),
        tracking: body.tracking,
        requested_at: Utc::now(),
    };
    let replay = state.intake.mark_shipped(&claims, key.as_deref(), hash, &cmd).await.map_err(|e| match e {
        IntakeError::KeyReused => key_reused(),
        IntakeError::Unavailable(detail) | IntakeError::NotClaimed(detail) => {
            if let Some(held_back) = state.unavailable_log.admit() {
                tracing::warn!(error = %detail, held_back, "ship not accepted (503); similar lines held back for a second");
            }
            metrics::counter!("souk_ingress_ships_total", "outcome" => "unavailable").increment(1);
            Problem::unavailable("the ship could not be confirmed; retry (shipping twice ships once)")
        }
    })?;
    let outcome = if replay { "replayed" } else { "accepted" };
    metrics::counter!("souk_ingress_ships_total", "outcome" => outcome).increment(1);
    let body = ShipAccepted { order_id, seller, status: "accepted".into(), status_url };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// The optional body: empty, or `{"tracking": "…"}` as JSON (415 otherwise, 413 over
/// the limit, 400 unparseable, 422 for a bad tracking reference).
fn ship_body(
    headers: &HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<ShipRequest, Problem> {
    let body = crate::problem::body_bytes(body)?;
    if body.is_empty() && !headers.contains_key(header::CONTENT_TYPE) {
        return Ok(ShipRequest::default());
    }
    crate::problem::require_json(headers)?;
    let request: ShipRequest = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::unprocessable("invalid-body", e.to_string()),
        _ => Problem::bad_request("malformed-json", e.to_string()),
    })?;
    if let Some(tracking) = &request.tracking {
        let why = if tracking.trim().is_empty() {
            Some("must not be blank")
        } else if tracking.chars().count() > MAX_TRACKING_CHARS {
            Some("at most 128 characters")
        } else {
            check_text(tracking).err()
        };
        if let Some(why) = why {
            return Err(Problem::unprocessable("validation", "the ship is invalid")
                .errors(vec![FieldError { field: "tracking".into(), message: why.into() }]));
        }
    }
    Ok(request)
}

fn key_reused() -> Problem {
    metrics::counter!("souk_ingress_ships_total", "outcome" => "key_reused").increment(1);
    Problem::unprocessable(
        "idempotency-key-reused",
        "this Idempotency-Key was already used with a different request",
    )
}
