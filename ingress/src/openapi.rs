//! The API document (OpenAPI 3.1) and what every route's documentation shares.
//!
//! The document is generated from the code: each handler carries `#[utoipa::path]`
//! and is registered in [`crate::routes`], which routes it and adds its path to the
//! document in one step. This module holds the document's frame ([`ApiDoc`]: info,
//! tags, the bearer security scheme, shared schemas), the problem+json responses
//! routes refer to by name (`response = openapi::Unauthorized`), the reusable
//! `Idempotency-Key` header parameter, and the handler serving the document at
//! `GET /v1/openapi.json`.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::sync::LazyLock;
use utoipa::{
    IntoParams, Modify, OpenApi, ToResponse,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::Problem;
use souk_pipelines::orders::FieldError;

/// Name of the security scheme: `security(("bearer" = []))` on a route that needs a
/// token (the attribute wants the literal).
pub const BEARER: &str = "bearer";

/// The frame of the document; [`crate::routes::table`] adds every path to it.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "souk",
        description = "The souk marketplace API. Writes answer 202 once JetStream has \
                       stored the command; every error is application/problem+json \
                       (RFC 9457) whose `type` names the problem."
    ),
    modifiers(&BearerJwt),
    components(
        schemas(Problem, FieldError),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            RequestTimeout,
            PreconditionFailed,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            RateLimited,
            Unavailable
        )
    ),
    tags(
        (name = "orders", description = "Place and read orders."),
        (name = "cart", description = "A buyer's cart, priced from the catalog, and its checkout into an order."),
        (name = "catalog", description = "Sellers write their products (202, applied by the catalog pool); anyone reads them."),
        (name = "probes", description = "Liveness and readiness."),
        (name = "search", description = "Search the catalog: text with typos, filters, facets, cursors."),
        (name = "meta", description = "This document."),
        (name = "jobs", description = "Jobs for internal teams (role staff): catalog imports and reindexes.")
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` scheme: HS256 JWTs from `souk token`.
struct BearerJwt;

impl Modify for BearerJwt {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A JWT signed by one of the deployment's keys (`souk token`); its \
                         roles decide what the caller may do.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The `Idempotency-Key` request header of a write: the same key with the same body
/// returns the same result; with another body, 422.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // a description for the document, never built
pub struct IdempotencyKey {
    /// Chosen by the client, 1–255 visible ASCII characters, given once.
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255, pattern = "^[!-~]+$")]
    key: String,
}

/// The `If-None-Match` request header of a cacheable read.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // a description for the document, never built
pub struct IfNoneMatch {
    /// ETags from earlier answers: 304 when one is current.
    #[param(rename = "If-None-Match", value_type = String, required = false)]
    etag: Option<String>,
}

// The problem responses routes share, by status. Each is `application/problem+json`
// with the `Problem` schema; its `type` names the precise problem.

/// The request is malformed (unparseable JSON, a missing, invalid or repeated header,
/// a bad path or query parameter).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct BadRequest(Problem);

/// No usable credentials: missing, expired, badly signed or unusable token.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer realm=\"souk\"`"))
)]
#[allow(dead_code)]
pub struct Unauthorized(Problem);

/// The caller is authenticated but its roles or claims do not allow this.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct Forbidden(Problem);

/// No such resource (resources of other tenants do not exist for the caller).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct NotFound(Problem);

/// The request (body upload included) took longer than the server allows.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct RequestTimeout(Problem);

/// `If-Match` does not match the resource's current version.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct PreconditionFailed(Problem);

/// The request conflicts with the current state: the catalog's prices make another
/// total than `expected_total_minor` (`price-changed`, with the current prices in
/// `current`), or the cart is full (`cart-full`).
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct Conflict(Problem);

/// The body is larger than the server accepts.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct PayloadTooLarge(Problem);

/// The body is not `application/json`.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct UnsupportedMediaType(Problem);

/// The body parses but is invalid; `errors` names every bad field. Also an
/// `Idempotency-Key` reused with another body.
#[derive(ToResponse)]
#[response(content_type = "application/problem+json")]
#[allow(dead_code)]
pub struct Unprocessable(Problem);

/// The caller is over its rate limit.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "seconds to wait"))
)]
#[allow(dead_code)]
pub struct RateLimited(Problem);

/// Not accepted now (a dependency did not answer in time); retrying is safe.
#[derive(ToResponse)]
#[response(
    content_type = "application/problem+json",
    headers(("Retry-After" = u64, description = "seconds to wait"))
)]
#[allow(dead_code)]
pub struct Unavailable(Problem);

/// The document as served: serialised once, with its ETag.
struct Served {
    body: bytes::Bytes,
    etag: HeaderValue,
}

static SERVED: LazyLock<Served> = LazyLock::new(|| {
    let body = crate::openapi_json();
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body.as_bytes());
    let hex: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let etag = HeaderValue::from_str(&format!("\"{hex}\"")).unwrap_or(HeaderValue::from_static("\"0\""));
    Served { body: body.into(), etag }
});

/// How long clients and caches may reuse the document without asking again. It changes
/// only with a deployment; after that, the ETag makes a revalidation cheap.
const MAX_AGE: &str = "public, max-age=300";

/// This document: every route of the API.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "get_openapi",
    tag = "meta",
    params(IfNoneMatch),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document.", body = Object, content_type = "application/json",
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 304, description = "The document has not changed since the given ETag.",
            headers(("ETag" = String), ("Cache-Control" = String))),
        (status = 408, response = RequestTimeout)
    )
)]
pub async fn document(headers: HeaderMap) -> Response {
    let served = &*SERVED;
    let unchanged = headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim() == "*" || tag.trim().trim_start_matches("W/") == served.etag);
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, served.body.clone()).into_response()
    };
    let h = response.headers_mut();
    if !unchanged {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    h.insert(header::ETAG, served.etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
    response
}
