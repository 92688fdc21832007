//! RFC 9457 problem details: every error the API returns.

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use souk_pipelines::orders::FieldError;

/// An error response (`application/problem+json`, RFC 9457).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `https://souk.dev/problems/<slug>`: what went wrong, stable for clients to match.
    #[serde(rename = "type")]
    #[schema(format = "uri", example = "https://souk.dev/problems/validation")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub detail: Option<String>,
    /// Field-level validation errors: every bad field, not just the first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(required = false)]
    pub errors: Vec<FieldError>,
    /// With `price-changed` (409): the order as the catalog prices it now — each
    /// line's seller and unit price, the currency and the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false)]
    // Boxed: the problem travels in every handler's `Err`, which should stay small.
    pub current: Option<Box<souk_pipelines::pricing::PricedOrder>>,
    /// Seconds (u32: plenty, and it keeps the problem — every handler's `Err` — small).
    #[serde(skip)]
    retry_after: Option<u32>,
    #[serde(skip)]
    www_authenticate: bool,
}

impl Problem {
    /// A problem with a stable type slug (`https://souk.dev/problems/<slug>`).
    pub fn new(status: StatusCode, slug: &str, title: &str) -> Self {
        Problem {
            kind: format!("https://souk.dev/problems/{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: None,
            errors: Vec::new(),
            current: None,
            retry_after: None,
            www_authenticate: false,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// The order as currently priced (see `current`).
    pub fn current(mut self, priced: souk_pipelines::pricing::PricedOrder) -> Self {
        self.current = Some(Box::new(priced));
        self
    }

    /// 401 with a `WWW-Authenticate: Bearer` challenge.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        let mut p =
            Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Authentication required").detail(detail);
        p.www_authenticate = true;
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed").detail(detail)
    }

    /// 404 for a resource that does not exist (or that the caller may not know of).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found").detail(detail)
    }

    pub fn bad_request(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, slug, "Bad request").detail(detail)
    }

    pub fn unprocessable(slug: &str, detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, slug, "Unprocessable request").detail(detail)
    }

    /// 429 with `Retry-After`: this principal is over its rate limit.
    pub fn too_many_requests(kind: &str, retry_after_secs: u64) -> Self {
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests")
            .detail(format!("too many {kind}s from this principal; retry after the Retry-After delay"));
        p.retry_after = Some(u32::try_from(retry_after_secs).unwrap_or(u32::MAX));
        p
    }

    /// 503 with `Retry-After`: the request was not accepted; try again.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service unavailable")
            .detail(detail);
        p.retry_after = Some(1);
        p
    }
}

impl Problem {
    /// A problem never repeats a card number (souk neither keeps nor sends one back): a
    /// field name, message or detail quoting what the client sent — an unknown field
    /// named by a card number, serde's message quoting a numeric one — is replaced,
    /// saying why.
    fn withhold_card_numbers(&mut self) {
        use souk_pipelines::pan::looks_like_pan;
        const WITHHELD: &str = "withheld: it would repeat what looks like a card number";
        if self.detail.as_deref().is_some_and(looks_like_pan) {
            self.detail = Some(WITHHELD.into());
        }
        for e in &mut self.errors {
            if looks_like_pan(&e.field) {
                e.field = "<card number>".into();
            }
            if looks_like_pan(&e.message) {
                e.message = WITHHELD.into();
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(mut self) -> Response {
        self.withhold_card_numbers();
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (status, body).into_response();
        let h = response.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.www_authenticate {
            h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"souk\""));
        }
        response
    }
}

/// The one value of header `name`, `None` when absent, 400 when repeated: with two
/// values, which one counts would be a guess (and a proxy in front guessing otherwise
/// is how one request is read as another).
pub fn single_header(
    headers: &axum::http::HeaderMap,
    name: header::HeaderName,
) -> Result<Option<&HeaderValue>, Problem> {
    let mut values = headers.get_all(&name).iter();
    let first = values.next();
    if values.next().is_some() {
        return Err(Problem::bad_request(
            "duplicate-header",
            format!("the {name} header is given more than once"),
        ));
    }
    Ok(first)
}

/// 415 unless the request says `Content-Type: application/json` (parameters allowed).
pub(crate) fn require_json(headers: &axum::http::HeaderMap) -> Result<(), Problem> {
    let is_json = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| {
        v.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
        )
        .detail("send Content-Type: application/json"));
    }
    Ok(())
}

/// The body read under the router's limit: 413 over [`crate::MAX_BODY_BYTES`], the
/// rejection's own status otherwise.
pub(crate) fn body_bytes(
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, Problem> {
    body.map_err(|rejection| match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => {
            Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "Body too large")
                .detail(format!("request bodies are limited to {} bytes", crate::MAX_BODY_BYTES))
        }
        status => Problem::new(status, "unreadable-body", "Unreadable body").detail(rejection.body_text()),
    })
}

/// Fallback for unknown routes. Its own type (`not-found-route`), so a client (and the
/// route test) can tell "no such route" from "no such resource".
pub async fn not_found() -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "not-found-route", "No such route")
        .detail("no such route; GET /v1/openapi.json lists every route")
}

/// Errors axum makes itself — 405 for a known path with the wrong method (with its
/// `Allow` header), 400 for a path it cannot decode — come as plain text or empty. This
/// gives them the problem+json shape every other error has, keeping status and headers.
pub async fn framework_errors_as_problems(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let slug = match status {
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::BAD_REQUEST => "bad-request",
        _ => "error",
    };
    let mut problem = Problem::new(status, slug, status.canonical_reason().unwrap_or("Error"));
    let detail = String::from_utf8_lossy(&text).trim().to_owned();
    if !detail.is_empty() {
        problem = problem.detail(detail);
    }
    let mut out = problem.into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().entry(name).or_insert(value.clone());
        }
    }
    out
}

/// Run a request with a deadline: past it, 408 problem+json (and the handler's work is
/// dropped; an order not yet handed to the group committer is not placed — one handed
/// to it may be, so the answer says to retry under the same `Idempotency-Key`).
pub async fn within(
    timeout: std::time::Duration,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Problem::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request timeout")
            .detail(format!(
                "the request took longer than {timeout:?}; send it again, with the same \
                 Idempotency-Key if it had one (what it wrote may be stored: a retry under the key never does it twice)"
            ))
            .into_response(),
    }
}
