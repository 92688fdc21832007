//! `POST /v1/jobs`, `GET /v1/jobs`, `GET /v1/jobs/{id}`: jobs for internal teams (role
//! `staff`, or `admin`), the HTTP twin of `souk jobs`. Submission goes through the same
//! parser, validation and `souk_jobs::submit` as the CLI; a job is its tenant's (other
//! tenants' jobs do not exist for the caller).

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use souk_jobs::{
    Job, Submission,
    parse::{self, Format},
    record,
};
use souk_pipelines::orders::FieldError;
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::{
    AppState, Problem,
    auth::{Claims, Principal, Role},
    openapi,
};

/// Largest `POST /v1/jobs` body: 16 MiB (the CLI takes files up to
/// `souk_jobs::parse::MAX_FILE_BYTES`).
pub const MAX_JOB_BODY_BYTES: usize = 16 << 20;

/// What to run.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobRequest {
    /// Import a seller's products from a file's text (JSONL or CSV, as for
    /// `souk jobs submit catalog-import`).
    CatalogImport {
        seller: String,
        #[schema(value_type = String)]
        format: Format,
        /// The file's text.
        content: String,
    },
    /// Build a fresh search index from Postgres and swap it in.
    Reindex {},
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// At most this many jobs (1-1000, default 50), newest first.
    limit: Option<i64>,
}

fn staff(claims: &Claims) -> Result<(), Problem> {
    if claims.has(Role::Staff) || claims.has(Role::Admin) {
        return Ok(());
    }
    Err(Problem::forbidden("jobs need the staff role"))
}

fn store_error(e: souk_jobs::Error) -> Problem {
    tracing::warn!(error = %e, "jobs store");
    Problem::unavailable("the job store is unavailable; retry")
}

fn field(field: &str, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

/// Submit a job
///
/// A catalog import's file is validated row by row first: a file that cannot be read
/// as a whole is refused (400, naming why); rows that are wrong on their own are
/// reported in the job's `errors` by line, and the others are imported.
#[utoipa::path(
    post,
    path = "/v1/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    security(("bearer" = [])),
    request_body(content = JobRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued.", body = Job,
            headers(("Location" = String, description = "the job's URL"))),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 413, response = openapi::PayloadTooLarge),
        (status = 415, response = openapi::UnsupportedMediaType),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    request_headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    staff(&claims)?;
    state.check_write(&claims)?;
    crate::problem::require_json(&request_headers)?;
    let body = axum::body::to_bytes(body, MAX_JOB_BODY_BYTES).await.map_err(|_| {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "body-too-large", "Body too large").detail(format!(
            "job requests are limited to {MAX_JOB_BODY_BYTES} bytes; submit larger files with `souk jobs submit`"
        ))
    })?;
    let request: JobRequest =
        serde_json::from_slice(&body).map_err(|e| Problem::bad_request("invalid-body", e.to_string()))?;
    let submission = match request {
        JobRequest::Reindex {} => Submission::Reindex,
        JobRequest::CatalogImport { seller, format, content } => {
            let mut errors = Vec::new();
            if let Err(why) = souk_pipelines::catalog::check_seller_id(&seller) {
                errors.push(field("seller", why));
            }
            let parsed = match parse::parse(content.as_bytes(), format) {
                Ok(p) if p.rows.is_empty() => {
                    errors.push(field("content", format!("no valid rows ({} refused)", p.errors.len())));
                    None
                }
                Ok(p) => Some(p),
                Err(e) => {
                    errors.push(field("content", e.to_string()));
                    None
                }
            };
            match parsed {
                Some(parsed) if errors.is_empty() => Submission::CatalogImport { seller, parsed },
                _ => {
                    return Err(
                        Problem::bad_request("invalid-job", "the job cannot be submitted").errors(errors)
                    );
                }
            }
        }
    };
    let job =
        souk_jobs::submit(&state.pool, &claims.tenant, &claims.sub, submission).await.map_err(store_error)?;
    let job = record::get_with_errors(&state.pool, Some(&claims.tenant), job.id)
        .await
        .map_err(store_error)?
        .unwrap_or(job);
    let location = format!("/v1/jobs/{}", job.id);
    let mut response = (StatusCode::ACCEPTED, Json(job)).into_response();
    if let Ok(v) = location.parse() {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// List jobs
///
/// The caller's tenant's newest jobs, newest first (without their row errors).
#[utoipa::path(
    get,
    path = "/v1/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "Jobs, newest first.", body = Vec<Job>),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 403, response = openapi::Forbidden),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Principal(claims): Principal,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Job>>, Problem> {
    staff(&claims)?;
    state.check_read(&claims)?;
    let Query(query) = query.map_err(|e| Problem::bad_request("invalid-query", e.body_text()))?;
    let limit = query.limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(
            Problem::bad_request("invalid-query", "limit: 1-1000").errors(vec![field("limit", "1-1000")])
        );
    }
    Ok(Json(record::list(&state.pool, Some(&claims.tenant), limit).await.map_err(store_error)?))
}

/// Read a job
///
/// State (`queued`, `running`, `done`, `failed`, `cancelled`), progress, and the rows
/// refused at submission by line.
#[utoipa::path(
    get,
    path = "/v1/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "the job's id")),
    responses(
        (status = 200, description = "The job.", body = Job),
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
    id: Result<Path<Uuid>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Job>, Problem> {
    staff(&claims)?;
    state.check_read(&claims)?;
    let Path(id) = id.map_err(|_| Problem::bad_request("invalid-path", "id: not a job id (a UUID)"))?;
    record::get_with_errors(&state.pool, Some(&claims.tenant), id)
        .await
        .map_err(store_error)?
        .map(Json)
        .ok_or_else(|| Problem::new(StatusCode::NOT_FOUND, "not-found", "No such job"))
}
