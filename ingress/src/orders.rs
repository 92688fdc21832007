//! `POST /v1/orders` and `GET /v1/orders/{id}`.

use axum::{
    Json,
    body::Bytes,
    extract::rejection::BytesRejection,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use souk_pipelines::orders::PlaceOrderRequest;
use souk_stores::postgres::{
    idempotency, orders,
    sagas::{self, SagaView},
};
use std::sync::Arc;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::{
    AppState, Problem,
    auth::{Principal, Role},
    intake::IntakeError,
    openapi::{self, IdempotencyKey},
};

/// Longest idempotency key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// The answer to an accepted order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderAccepted {
    pub order_id: Uuid,
    pub status: AcceptedStatus,
    /// Where to read the order: `/v1/orders/{order_id}`.
    pub status_url: String,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AcceptedStatus {
    Accepted,
}

/// An order whose command is accepted but not yet handled.
#[derive(Debug, Serialize, ToSchema)]
pub struct PendingOrder {
    pub order_id: Uuid,
    pub status: PendingStatus,
}

#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PendingStatus {
    Pending,
}

/// `GET /v1/orders/{order_id}`: the stored order, or pending.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum OrderState {
    Stored(Box<StoredOrder>),
    Pending(PendingOrder),
}

/// A stored order and its saga: where it is, why it was cancelled, and each step with
/// its time.
#[derive(Debug, Serialize, ToSchema)]
pub struct StoredOrder {
    #[serde(flatten)]
    pub order: orders::Order,
    /// Absent for orders that never started one (`failed` at intake).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saga: Option<SagaView>,
}

/// Place an order
///
/// 202 once JetStream has stored the command. Retry with the same `Idempotency-Key`
/// after a 503 or a lost answer: a retry never creates a second order.
#[utoipa::path(
    post,
    path = "/v1/orders",
    operation_id = "place_order",
    tag = "orders",
    security(("bearer" = [])),
    params(IdempotencyKey),
    request_body(content = PlaceOrderRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the command is stored.", body = OrderAccepted,
            headers(("Location" = String, description = "the order's status URL"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn place(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    request_headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    if !claims.has(Role::Buyer) {
        return Err(Problem::forbidden("placing orders needs the buyer role"));
    }
    state.check_write(&claims)?;
    let key = idempotency_key(&request_headers)?;
    crate::problem::require_json(&request_headers)?;
    let body = crate::problem::body_bytes(body)?;
    let request: PlaceOrderRequest = serde_json::from_slice(&body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::unprocessable("invalid-body", e.to_string()),
        _ => Problem::bad_request("malformed-json", e.to_string()),
    })?;
    let total = request
        .validate()
        .map_err(|errors| Problem::unprocessable("validation", "the order is invalid").errors(errors))?;

    let accepted =
        state.intake.place(&claims, key, &request, total.amount_minor).await.map_err(|e| match e {
            IntakeError::KeyReused => {
                metrics::counter!("souk_ingress_orders_total", "outcome" => "key_reused").increment(1);
                Problem::unprocessable(
                    "idempotency-key-reused",
                    "this Idempotency-Key was already used with a different request body",
                )
            }
            IntakeError::Unavailable(detail) => {
                if let Some(held_back) = state.unavailable_log.admit() {
                    tracing::warn!(error = %detail, held_back, "order not accepted (503); similar lines held back for a second");
                }
                metrics::counter!("souk_ingress_orders_total", "outcome" => "unavailable").increment(1);
                Problem::unavailable(
                    "the order could not be confirmed; retry with the same Idempotency-Key \
                     (a retry never creates a second order)",
                )
            }
        })?;
    let outcome = if accepted.replay { "replayed" } else { "accepted" };
    metrics::counter!("souk_ingress_orders_total", "outcome" => outcome).increment(1);
    let status_url = format!("/v1/orders/{}", accepted.order_id);
    let body = OrderAccepted {
        order_id: accepted.order_id,
        status: AcceptedStatus::Accepted,
        status_url: status_url.clone(),
    };
    let mut response = (StatusCode::ACCEPTED, Json(body)).into_response();
    if let Ok(v) = status_url.parse() {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

pub(crate) fn idempotency_key(h: &HeaderMap) -> Result<&str, Problem> {
    let raw = crate::problem::single_header(h, header::HeaderName::from_static("idempotency-key"))?
        .ok_or_else(|| {
            Problem::bad_request("idempotency-key-missing", "the Idempotency-Key header is required")
        })?;
    let key = raw.to_str().map_err(|_| {
        Problem::bad_request("idempotency-key-invalid", "Idempotency-Key must be visible ASCII")
    })?;
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Problem::bad_request(
            "idempotency-key-invalid",
            format!("Idempotency-Key must be 1-{MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    Ok(key)
}

/// Read an order
///
/// Its stored state — `accepted` while its saga runs, then `confirmed` (paid, with its
/// sellers), `shipped` (every seller shipped) or `cancelled` with the `reason` for the
/// buyer; `failed` with the `reason` when its command was dead-lettered (a redrive that
/// succeeds moves it on) — or `pending` while the command is in flight. `saga` shows
/// where the saga is and each step with its time. Buyers read their own orders; `support` and
/// `admin` read any order of their tenant.
#[utoipa::path(
    get,
    path = "/v1/orders/{order_id}",
    operation_id = "get_order",
    tag = "orders",
    security(("bearer" = [])),
    params(("order_id" = Uuid, Path, description = "the id from the 202 answer")),
    responses(
        (status = 200, description = "The order.", body = OrderState),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn get(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path(order_id): Path<String>,
) -> Result<Response, Problem> {
    state.check_read(&claims)?;
    let order_id = Uuid::parse_str(&order_id)
        .map_err(|_| Problem::bad_request("invalid-order-id", "order ids are UUIDs"))?;
    let not_found = || Problem::not_found("no such order");
    let unavailable = |e: souk_stores::postgres::Error| {
        if let Some(held_back) = state.unavailable_log.admit() {
            tracing::warn!(error = %e, held_back, "order read failed (503); similar lines held back for a second");
        }
        Problem::unavailable("orders cannot be read right now")
    };
    let may_read = |tenant: &str, owner: &str| {
        if tenant != claims.tenant {
            // Other tenants' orders do not exist, as far as this caller can tell.
            return Err(not_found());
        }
        if owner != claims.sub && !claims.has(Role::Admin) && !claims.has(Role::Support) {
            return Err(Problem::forbidden("this order belongs to another buyer"));
        }
        Ok(())
    };
    // Both lookups run whatever the first one finds: a 404 for another tenant's order
    // must cost what a 404 for no order costs, or the answer's timing tells which ids
    // exist (measured: ~450 µs against ~660 µs when only the second path read twice).
    let (order, owner) =
        tokio::try_join!(orders::get(&state.pool, order_id), idempotency::owner_of(&state.pool, order_id))
            .map_err(unavailable)?;
    if let Some(order) = order {
        may_read(&order.tenant, &order.buyer_id)?;
        let saga = sagas::view(&state.pool, order_id).await.map_err(unavailable)?;
        return Ok(Json(OrderState::Stored(Box::new(StoredOrder { order, saga }))).into_response());
    }
    match owner {
        Some((tenant, owner)) => {
            may_read(&tenant, &owner)?;
            let pending = PendingOrder { order_id, status: PendingStatus::Pending };
            Ok(Json(OrderState::Pending(pending)).into_response())
        }
        None => Err(not_found()),
    }
}
