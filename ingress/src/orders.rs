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
    intake::{Accepted, IntakeError, NewOrder, request_hash},
    openapi::{self, IdempotencyKey},
    pricing,
    request_body::{self, Shape},
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
/// Lines name a SKU and a quantity only: each line's price, currency and seller come
/// from the catalog (the tenant's live product), never from the client — a price field
/// is an unknown field (400). Lines that cannot be ordered (unknown or deleted SKU,
/// more than the stock, a SKU twice, another currency than the other lines) are 422,
/// each named (`lines[i].sku`). With `expected_total_minor` and `expected_currency`,
/// another total or currency is 409 with the current prices (`current`). 202 once
/// JetStream has stored the command. Retry with the same `Idempotency-Key` after a 503
/// or a lost answer: a retry never creates a second order.
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
        (status = 409, response = openapi::Conflict),
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
    let request: PlaceOrderRequest = request_body::read(&request_headers, body, &ORDER_SHAPE)?;
    request
        .validate()
        .map_err(|errors| Problem::unprocessable("validation", "the order is invalid").errors(errors))?;
    // Canonical body: the parsed request re-serialised, so formatting never matters.
    let hash = request_hash(&serde_json::to_vec(&request).unwrap_or_default());
    let requested: Vec<(&str, i64)> = request.lines.iter().map(|l| (l.sku.as_str(), l.quantity)).collect();
    let priced = pricing::price(&state, &claims.tenant, "lines", &requested).await.and_then(|priced| {
        pricing::check_expected(priced, request.expected_total_minor, request.expected_currency)
    });
    let priced = match priced {
        Ok(priced) => priced,
        Err(problem) => {
            return stored_replay(&state, &claims, key, &hash, problem).await.map(accepted_response);
        }
    };
    let order = NewOrder { priced, payment_token: request.payment_token, cart: None };
    let accepted =
        state.intake.place(&claims, key, hash, &order).await.map_err(|e| intake_problem(&state, e))?;
    Ok(accepted_response(accepted))
}

/// The fields an order body may have.
const ORDER_SHAPE: Shape = Shape {
    fields: &["lines", "payment_token", "expected_total_minor", "expected_currency"],
    lists: &[("lines", &["sku", "quantity"])],
};

/// A request the catalog refuses now (`problem`) may repeat one accepted earlier under
/// its key, when the catalog allowed it: a product deleted or repriced since must not
/// turn the retry of an accepted order into an error. When the key's claim has this
/// request's hash and its order is stored, the answer is that order's again (it needs
/// no publish: it was handled). A key claimed by another request is 422 (as it would
/// be at the claim); otherwise `problem`. (A retry whose first attempt is still in
/// flight, published but not yet handled, gets `problem`; its order stands.)
pub(crate) async fn stored_replay(
    state: &AppState,
    claims: &crate::Claims,
    key: &str,
    hash: &[u8],
    problem: Problem,
) -> Result<Accepted, Problem> {
    if problem.status >= 500 {
        return Err(problem);
    }
    let unavailable = |e| crate::catalog::unavailable(state, e);
    let Some(record) =
        idempotency::existing(&state.pool, &claims.tenant, &claims.sub, key).await.map_err(unavailable)?
    else {
        return Err(problem);
    };
    if record.request_hash != hash {
        // The key names another request: that is the first thing wrong with this one.
        return Err(intake_problem(state, IntakeError::KeyReused));
    }
    if orders::get(&state.pool, record.order_id).await.map_err(unavailable)?.is_none() {
        return Err(problem);
    }
    Ok(Accepted { order_id: record.order_id, replay: true })
}

/// The problem for an order the intake did not accept.
pub(crate) fn intake_problem(state: &AppState, e: IntakeError) -> Problem {
    match e {
        IntakeError::KeyReused => {
            metrics::counter!("souk_ingress_orders_total", "outcome" => "key_reused").increment(1);
            Problem::unprocessable(
                "idempotency-key-reused",
                "this Idempotency-Key was already used with a different request body",
            )
        }
        IntakeError::Unavailable(detail) | IntakeError::NotClaimed(detail) => {
            if let Some(held_back) = state.unavailable_log.admit() {
                tracing::warn!(error = %detail, held_back, "order not accepted (503); similar lines held back for a second");
            }
            metrics::counter!("souk_ingress_orders_total", "outcome" => "unavailable").increment(1);
            Problem::unavailable(
                "the order could not be confirmed; retry with the same Idempotency-Key \
                 (a retry never creates a second order)",
            )
        }
    }
}

/// 202 with the order id and its status URL (also in `Location`).
pub(crate) fn accepted_response(accepted: Accepted) -> Response {
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
    response
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
    // The key is stored with its claim (and may be logged): a card number pasted there
    // would be kept in plain text, which souk never does.
    if souk_pipelines::pan::looks_like_pan(key) {
        return Err(Problem::unprocessable("validation", "the request is invalid").errors(vec![
            souk_pipelines::orders::FieldError::new(
                "Idempotency-Key",
                "looks like a card number: use a key of your own, such as a UUID",
            ),
        ]));
    }
    Ok(key)
}

/// Read an order
///
/// Its stored state — `accepted` while its saga runs, then `confirmed` (paid, with its
/// sellers), `shipped` (every seller shipped) or `cancelled` with the `reason` for the
/// buyer; `failed` when its command was dead-lettered (nothing charged; a redrive that
/// succeeds moves it on; `support` and `admin` read the error as its `reason`) — or
/// `pending` while the command is in flight. `saga` shows
/// where the saga is and each step with its time (a buyer sees each step's outcome as a
/// word — `ok`, `declined`, `failed` …; `support` and `admin` the full log, with the
/// providers' errors and who acted). Buyers read their own orders; `support` and
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
    // The order and its saga are read in one snapshot: read apart, a reply committed
    // between the two made one answer say `accepted` beside a saga already `fulfilling`
    // (review, twelfth session).
    let snapshot = async {
        let mut tx = souk_stores::postgres::begin_snapshot(&state.pool).await?;
        let order = orders::get(&mut *tx, order_id).await?;
        Ok((tx, order))
    };
    let ((mut tx, order), owner) =
        tokio::try_join!(snapshot, idempotency::owner_of(&state.pool, order_id)).map_err(unavailable)?;
    if let Some(mut order) = order {
        may_read(&order.tenant, &order.buyer_id)?;
        let mut saga = sagas::view_on(&mut tx, order_id).await.map_err(unavailable)?;
        drop(tx); // read only: rolled back
        if !claims.has(Role::Admin) && !claims.has(Role::Support) {
            saga = saga.map(for_buyer);
            if order.status == "failed" {
                // A failed order's reason is its dead-lettered command's last error — a
                // database's or a handler's words, for support (review: a buyer read a
                // trigger's SQL error). No saga ran: nothing was charged.
                order.reason = Some(FAILED_FOR_BUYER.to_owned());
            }
        }
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

/// What a buyer reads of a `failed` order (support reads the error itself).
const FAILED_FOR_BUYER: &str =
    "the order could not be processed and nothing was charged; support has been told";

/// The saga as its buyer sees it: each step's outcome by its first word (`ok`,
/// `declined`, `failed`, `refused`, `ignored` …) and an operator's action as such. The
/// rest — provider names, their errors and URLs, operators' names — is for `support`
/// and `admin` (found in review: a buyer read `alpha: … http://10.…` and `by cli:…`).
fn for_buyer(mut saga: SagaView) -> SagaView {
    for step in &mut saga.steps {
        step.outcome = step.outcome.take().map(|outcome| {
            let word: String = outcome.chars().take_while(char::is_ascii_alphabetic).collect();
            match word.as_str() {
                "by" => "changed by support".to_owned(),
                "" => "recorded".to_owned(),
                _ => word,
            }
        });
    }
    saga
}
