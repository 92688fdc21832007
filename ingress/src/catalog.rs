//! Product writes: `PUT`, `PATCH`, `DELETE /v1/sellers/{seller}/products/{sku}`, and
//! `GET /v1/catalog/writes/{write_id}` (what became of one).
//!
//! Checks run in this order, each before any work of the next: the token (401); the
//! role and the seller — a seller principal acting for `{seller}`, or an admin (403,
//! decided before the body is read, so another seller's listing leaks nothing of its
//! rules); the rate limit (429); the path, `Idempotency-Key` and `If-Match` headers
//! (400); the body (413, 415, 400, then 422 naming every bad field); `If-Match` against
//! the product in Postgres (412); the idempotency claim (422 for a key reused with
//! another request); then the `WriteProduct` goes through the order intake's group
//! committer and the answer (202) waits for its PubAck. The catalog pool checks
//! ownership and `If-Match` again when it applies the write — writes race — and records
//! a write that lost as rejected (`GET /v1/catalog/writes/{id}`).

use axum::{
    Json,
    body::Bytes,
    extract::rejection::BytesRejection,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use souk_pipelines::catalog::{
    FieldError, ProductChange, ProductFields, ProductPatch, WriteProduct, check_seller_id, check_sku,
};
use souk_stores::postgres::{idempotency, products};
use std::sync::Arc;
use uuid::Uuid;

use crate::{
    AppState, Problem,
    auth::{Claims, Principal, Role},
    intake::{IntakeError, request_hash},
    openapi::{self, IdempotencyKey},
};

/// The answer to an accepted write.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriteAccepted {
    pub sku: String,
    /// Fixed by the idempotency claim: a retry gets the same one.
    pub write_id: Uuid,
    /// Always `accepted`: stored by JetStream, to be applied by the catalog pool.
    pub status: String,
    /// Where to read the outcome.
    pub status_url: String,
}

/// What became of a write.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriteStatus {
    pub write_id: Uuid,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seller: Option<String>,
    /// `pending` (not applied yet), `applied`, `rejected`, or `failed` (its command was
    /// dead-lettered or lost; an operator's redrive may still apply it).
    pub status: String,
    /// The product's version this write made (`applied`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Why it was not applied (`rejected`, `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Create or replace a product
///
/// The body is the whole product; attributes are typed by its category (the category
/// schema shipped with souk). `If-Match: "<version>"` applies the write only to that
/// version of the product (412 otherwise). 202 once the write is stored by JetStream;
/// its outcome (applied at a version, or rejected with the reason) at `status_url`.
/// A seller token acts for the sellers it names; an admin for any seller.
#[utoipa::path(
    put,
    path = "/v1/sellers/{seller}/products/{sku}",
    operation_id = "put_product",
    tag = "catalog",
    security(("bearer" = [])),
    params(
        ("seller" = String, Path, description = "the seller id"),
        ("sku" = String, Path, description = "1-64 of A-Z a-z 0-9 - _ ."),
        ("If-Match" = Option<String>, Header, description = "the product's version as an ETag, e.g. \"7\""),
        IdempotencyKey,
    ),
    request_body(content = ProductFields, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the write is stored.", body = WriteAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 412, response = openapi::PreconditionFailed),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn put_product(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path((seller, sku)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = WriteRequest::admit(&state, &claims, &seller, &sku, &headers)?;
    let fields = ProductFields::from_json(&json_body(&headers, body)?)
        .map_err(|errors| invalid("the product is invalid", errors))?;
    let hash = canonical("put", &request, &fields);
    request.submit(&state, &claims, hash, ProductChange::Put { fields }).await
}

/// Change a product's price, currency, stock or attributes
///
/// Only the fields sent change; an attribute set to `null` is removed. The patched
/// product must still satisfy its category's schema. A patch of a missing or deleted
/// product is accepted and then rejected by the catalog pool (see `status_url`).
#[utoipa::path(
    patch,
    path = "/v1/sellers/{seller}/products/{sku}",
    operation_id = "patch_product",
    tag = "catalog",
    security(("bearer" = [])),
    params(
        ("seller" = String, Path, description = "the seller id"),
        ("sku" = String, Path, description = "1-64 of A-Z a-z 0-9 - _ ."),
        ("If-Match" = Option<String>, Header, description = "the product's version as an ETag, e.g. \"7\""),
        IdempotencyKey,
    ),
    request_body(content = ProductPatch, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the write is stored.", body = WriteAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 412, response = openapi::PreconditionFailed),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn patch_product(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path((seller, sku)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, Problem> {
    let request = WriteRequest::admit(&state, &claims, &seller, &sku, &headers)?;
    let patch = ProductPatch::from_json(&json_body(&headers, body)?)
        .map_err(|errors| invalid("the patch is invalid", errors))?;
    // The schema check of the patched product, on the product as it is now (the
    // catalog pool checks again on the product the patch lands on).
    let stored =
        products::get(&state.pool, &claims.tenant, &request.sku).await.map_err(|e| unavailable(&state, e))?;
    if let Some(stored) = stored.filter(|s| !s.is_deleted() && s.product.seller == request.seller) {
        patch
            .apply_to(&stored.product.fields)
            .validate()
            .map_err(|errors| invalid("the patched product would be invalid", errors))?;
    }
    let hash = canonical("patch", &request, &patch);
    request.submit(&state, &claims, hash, ProductChange::Patch { patch }).await
}

/// Delete a product
///
/// A soft delete: the product is gone from reads and search, kept for past orders; a
/// later `PUT` revives it with a higher version. Deleting a missing product is
/// accepted and then rejected by the catalog pool (see `status_url`).
#[utoipa::path(
    delete,
    path = "/v1/sellers/{seller}/products/{sku}",
    operation_id = "delete_product",
    tag = "catalog",
    security(("bearer" = [])),
    params(
        ("seller" = String, Path, description = "the seller id"),
        ("sku" = String, Path, description = "1-64 of A-Z a-z 0-9 - _ ."),
        ("If-Match" = Option<String>, Header, description = "the product's version as an ETag, e.g. \"7\""),
        IdempotencyKey,
    ),
    responses(
        (status = 202, description = "Accepted: the delete is stored.", body = WriteAccepted),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 412, response = openapi::PreconditionFailed),
        (status = 422, response = openapi::Unprocessable),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn delete_product(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path((seller, sku)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let request = WriteRequest::admit(&state, &claims, &seller, &sku, &headers)?;
    let hash = canonical("delete", &request, &());
    request.submit(&state, &claims, hash, ProductChange::Delete).await
}

/// A write request past the checks that need no body.
struct WriteRequest {
    seller: String,
    sku: String,
    key: String,
    expected_version: Option<i64>,
}

impl WriteRequest {
    /// Role and seller (403), rate limit (429), path and headers (400).
    fn admit(
        state: &AppState,
        claims: &Claims,
        seller: &str,
        sku: &str,
        headers: &HeaderMap,
    ) -> Result<WriteRequest, Problem> {
        if !claims.has(Role::Seller) && !claims.has(Role::Admin) {
            return Err(Problem::forbidden("writing products needs the seller or admin role"));
        }
        if !claims.may_act_for(seller) {
            return Err(Problem::forbidden("this token does not act for this seller"));
        }
        state.check_write(claims)?;
        let mut errors = Vec::new();
        if let Err(why) = check_seller_id(seller) {
            errors.push(FieldError { field: "seller".into(), message: why.into() });
        }
        if let Err(why) = check_sku(sku) {
            errors.push(FieldError { field: "sku".into(), message: why.into() });
        }
        if !errors.is_empty() {
            return Err(Problem::bad_request("invalid-path", "the seller or SKU is invalid").errors(errors));
        }
        let key = crate::orders::idempotency_key(headers)?.to_owned();
        let expected_version = if_match(headers)?;
        Ok(WriteRequest { seller: seller.to_owned(), sku: sku.to_owned(), key, expected_version })
    }

    /// `If-Match` against Postgres (412), then claim and publish (202).
    async fn submit(
        self,
        state: &AppState,
        claims: &Claims,
        hash: Vec<u8>,
        change: ProductChange,
    ) -> Result<Response, Problem> {
        if let Some(expected) = self.expected_version {
            let stored = products::get(&state.pool, &claims.tenant, &self.sku)
                .await
                .map_err(|e| unavailable(state, e))?;
            let current = stored.filter(|s| !s.is_deleted()).map(|s| s.product.version);
            if current != Some(expected) && !self.replays_a_claim(state, claims, &hash).await? {
                metrics::counter!("souk_ingress_catalog_writes_total", "outcome" => "precondition_failed")
                    .increment(1);
                return Err(Problem::new(
                    StatusCode::PRECONDITION_FAILED,
                    "precondition-failed",
                    "Precondition failed",
                )
                .detail(match current {
                    Some(v) => {
                        format!("If-Match \"{expected}\" does not match the product's version \"{v}\"")
                    }
                    None => format!("If-Match \"{expected}\": the product does not exist"),
                }));
            }
        }
        if let Some(gate) = &state.catalog_backlog
            && let Err(refusal) = gate.admit_within(crate::backlog::ADMIT_WAIT).await
        {
            metrics::counter!("souk_ingress_catalog_writes_total", "outcome" => "backlog").increment(1);
            return Err(Problem::unavailable(refusal.detail()));
        }
        // A write of the stock counts it beside the units held now (and sold since by
        // the time it applies): `StockBasis`.
        let stock_basis = match change.states_stock() {
            true => Some(
                souk_stores::postgres::inventory::basis(&state.pool, &claims.tenant, &self.sku)
                    .await
                    .map_err(|e| unavailable(state, e))?,
            ),
            false => None,
        };
        let (tenant, actor, seller, sku) =
            (claims.tenant.clone(), claims.sub.clone(), self.seller.clone(), self.sku.clone());
        let expected_version = self.expected_version;
        let accepted = state
            .intake
            .write_product(claims, &self.key, hash, move |write_id| WriteProduct {
                write_id,
                tenant,
                seller,
                sku,
                expected_version,
                change,
                actor,
                requested_at: chrono::Utc::now(),
                stock_basis,
            })
            .await
            .map_err(|e| match e {
                IntakeError::KeyReused => {
                    metrics::counter!("souk_ingress_catalog_writes_total", "outcome" => "key_reused").increment(1);
                    Problem::unprocessable(
                        "idempotency-key-reused",
                        "this Idempotency-Key was already used with a different request",
                    )
                }
                IntakeError::Unavailable(detail) | IntakeError::NotClaimed(detail) => {
                    if let Some(held_back) = state.unavailable_log.admit() {
                        tracing::warn!(error = %detail, held_back, "catalog write not accepted (503); similar lines held back for a second");
                    }
                    metrics::counter!("souk_ingress_catalog_writes_total", "outcome" => "unavailable").increment(1);
                    Problem::unavailable(
                        "the write could not be confirmed; retry with the same Idempotency-Key \
                         (a retry never applies it twice)",
                    )
                }
            })?;
        let outcome = if accepted.replay { "replayed" } else { "accepted" };
        metrics::counter!("souk_ingress_catalog_writes_total", "outcome" => outcome).increment(1);
        let status_url = format!("/v1/catalog/writes/{}", accepted.write_id);
        let body = WriteAccepted {
            sku: self.sku,
            write_id: accepted.write_id,
            status: "accepted".into(),
            status_url,
        };
        let mut response = (StatusCode::ACCEPTED, Json(&body)).into_response();
        if let Ok(v) = body.status_url.parse() {
            response.headers_mut().insert(header::LOCATION, v);
        }
        Ok(response)
    }

    /// Whether this request repeats one already accepted under its key (same request):
    /// a retry after the write was applied finds the version moved on, and must get its
    /// 202 again, not a 412. The claim goes through the intake as usual afterwards.
    async fn replays_a_claim(&self, state: &AppState, claims: &Claims, hash: &[u8]) -> Result<bool, Problem> {
        let key = format!("{}{}", idempotency::CATALOG_WRITE_PREFIX, self.key);
        let stored = idempotency::existing(&state.pool, &claims.tenant, &claims.sub, &key)
            .await
            .map_err(|e| unavailable(state, e))?;
        Ok(stored.is_some_and(|record| record.request_hash == hash))
    }
}

/// `If-Match: "<version>"` (a strong ETag of a positive version; weak tags cannot match).
fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Problem> {
    let Some(raw) = crate::problem::single_header(headers, header::IF_MATCH)? else { return Ok(None) };
    raw.to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix('"')?.strip_suffix('"')?.parse::<i64>().ok())
        .filter(|v| *v >= 1)
        .map(Some)
        .ok_or_else(|| {
            Problem::bad_request(
                "if-match-invalid",
                "If-Match must be one product version as an ETag, e.g. \"7\"",
            )
        })
}

/// The body as JSON: 415 unless `application/json`, 413 over the limit, 400 unparseable.
fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, Problem> {
    crate::problem::require_json(headers)?;
    let body = crate::problem::body_bytes(body)?;
    // Strict: a key twice is refused (another parser could read the other value).
    souk_pipelines::catalog::parse_json(&body)
        .map_err(|e| Problem::bad_request("malformed-json", e.to_string()))
}

fn invalid(detail: &str, errors: Vec<FieldError>) -> Problem {
    Problem::unprocessable("validation", detail).errors(errors)
}

/// The request as its idempotency claim compares it: what it does, where, under which
/// precondition. The same key sent to another SKU or with another `If-Match` is
/// another request (422).
fn canonical(op: &str, request: &WriteRequest, body: &impl Serialize) -> Vec<u8> {
    let form = (op, &request.seller, &request.sku, request.expected_version, body);
    request_hash(&serde_json::to_vec(&form).unwrap_or_default())
}

pub(crate) fn unavailable(state: &AppState, e: souk_stores::postgres::Error) -> Problem {
    if let Some(held_back) = state.unavailable_log.admit() {
        tracing::warn!(error = %e, held_back, "catalog read failed (503); similar lines held back for a second");
    }
    Problem::unavailable("the catalog cannot be read right now")
}

/// Read a catalog write's outcome
///
/// `pending` until the catalog pool has applied it, then `applied` with the product's
/// version or `rejected` with the reason (version conflict, SKU owned by another
/// seller, patch or delete of a missing product, invalid after a patch); `failed` with
/// the reason when its command was dead-lettered or never handled (lost), never
/// `pending` for ever. Readable by
/// the principal that sent it, by sellers it was written for, and by admins.
#[utoipa::path(
    get,
    path = "/v1/catalog/writes/{write_id}",
    operation_id = "get_catalog_write",
    tag = "catalog",
    security(("bearer" = [])),
    params(("write_id" = Uuid, Path, description = "the id from the 202 answer")),
    responses(
        (status = 200, description = "The write's outcome.", body = WriteStatus),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 404, response = openapi::NotFound),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn get_write(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    Path(write_id): Path<String>,
) -> Result<Response, Problem> {
    state.check_read(&claims)?;
    let write_id = Uuid::parse_str(&write_id)
        .map_err(|_| Problem::bad_request("invalid-write-id", "write ids are UUIDs"))?;
    let not_found = || Problem::not_found("no such write");
    let (outcome, owner) = tokio::try_join!(
        products::write_outcome(&state.pool, &claims.tenant, write_id),
        idempotency::owner_of(&state.pool, write_id)
    )
    .map_err(|e| unavailable(&state, e))?;
    let sent_it = owner
        .as_ref()
        .is_some_and(|(tenant, principal)| *tenant == claims.tenant && *principal == claims.sub);
    if let Some(record) = outcome {
        if !(sent_it || record.actor == claims.sub || claims.may_act_for(&record.seller)) {
            return Err(Problem::forbidden("this write belongs to another seller"));
        }
        let (status, version, reason) = match record.outcome {
            products::Outcome::Applied { version } => ("applied", Some(version), None),
            products::Outcome::Rejected { reason } => ("rejected", None, Some(reason)),
            products::Outcome::Failed { reason } => ("failed", None, Some(reason)),
        };
        // A write lost with an unreadable command is known by its claim only.
        let known = |s: String| Some(s).filter(|s| !s.is_empty());
        return Ok(Json(WriteStatus {
            write_id,
            sku: known(record.sku),
            seller: known(record.seller),
            status: status.into(),
            version,
            reason,
        })
        .into_response());
    }
    match owner {
        Some((tenant, _)) if tenant == claims.tenant => {
            if !(sent_it || claims.has(Role::Admin)) {
                return Err(Problem::forbidden("this write was sent by another principal"));
            }
            Ok(Json(WriteStatus {
                write_id,
                sku: None,
                seller: None,
                status: "pending".into(),
                version: None,
                reason: None,
            })
            .into_response())
        }
        _ => Err(not_found()),
    }
}
