//! `GET /v1/search`: public product search.
//!
//! Public: with a bearer token the search runs in the token's tenant (an invalid token
//! is a 401, not an anonymous search); without one, in the configured public tenant.
//! Rate limited as a read (per principal, or per client address without a token).
//! Parameters are parsed strictly ([`params`]): one 400 names every bad one. A store
//! that fails, or does not answer within [`SearchOptions::timeout`] ([`SEARCH_TIMEOUT`] unless
//! set otherwise), is a 503 with `Retry-After`.

mod params;
mod response;

use axum::{
    Json,
    extract::{ConnectInfo, FromRequestParts, Query, State},
    http::request::Parts,
    response::{IntoResponse, Response},
};
use souk_pipelines::orders::FieldError;
use souk_stores::search::{AttrFilter, SearchError, SearchRequest, SearchStore};
use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::{AppState, Problem, openapi, products::MaybePrincipal};

pub use params::{MAX_PER_PAGE, SearchParams};

/// Longest a search may take before the caller gets a 503, by default: reads are
/// sub-second (the store answers in milliseconds), and a store slower than this is in
/// trouble — more waiting would only pile requests up.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(1);

/// What the ingress searches with.
#[derive(Clone)]
pub struct SearchOptions {
    pub store: Arc<dyn SearchStore>,
    /// Longest a search may take before the caller gets a 503 ([`SEARCH_TIMEOUT`] from
    /// [`SearchOptions::new`]). Test stacks share two cores with many others and set a
    /// longer one: what they check is that no query fails, not how fast a starved
    /// process answers.
    pub timeout: Duration,
}

impl SearchOptions {
    /// Searches in `store`, with the default deadline ([`SEARCH_TIMEOUT`]).
    pub fn new(store: Arc<dyn SearchStore>) -> SearchOptions {
        SearchOptions { store, timeout: SEARCH_TIMEOUT }
    }
}

impl std::fmt::Debug for SearchOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchOptions").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// Search products
///
/// Public: with a token, the token's tenant; without one, the public tenant. Every
/// bad parameter is named in one 400 problem. Also takes `attr.<key>=<value>` filters
/// (at most 16, one value per key; every one must hold).
#[utoipa::path(
    get,
    path = "/v1/search",
    operation_id = "search_products",
    tag = "search",
    params(params::SearchQuery),
    responses(
        (status = 200, description = "A page of hits with facets over the whole result.", body = response::Page),
        (status = 400, response = openapi::BadRequest),
        (status = 401, response = openapi::Unauthorized),
        (status = 408, response = openapi::RequestTimeout),
        (status = 429, response = openapi::RateLimited),
        (status = 503, response = openapi::Unavailable),
    )
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    MaybePrincipal(claims): MaybePrincipal,
    Peer(peer): Peer,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let tenant = match &claims {
        Some(c) => c.tenant.clone(),
        None => state.public_tenant.clone(),
    };
    if let Some(limiter) = &state.limiter {
        match (&claims, peer) {
            (Some(c), _) => limiter.check_read(c)?,
            (None, Some(addr)) => limiter.check_anonymous_read(&tenant, addr.ip())?,
            // In-process (router) tests: no address, no anonymous bucket to charge.
            (None, None) => {}
        }
    }
    let Query(pairs) =
        query.map_err(|e| Problem::bad_request("invalid-query", format!("unreadable query string: {e}")))?;
    let params = params::parse(&pairs).map_err(invalid)?;
    let request = request_of(tenant, params);
    // The store's own bounds (e.g. words in `q`), named the same way.
    let problems = request.problems();
    if !problems.is_empty() {
        return Err(invalid(
            problems
                .into_iter()
                .map(|(field, message)| FieldError { field: field.to_owned(), message })
                .collect(),
        ));
    }
    let Some(search) = &state.search else {
        return Err(Problem::unavailable("search is not served by this process"));
    };
    let started = std::time::Instant::now();
    let results = match tokio::time::timeout(search.timeout, search.store.search(&request)).await {
        Ok(Ok(results)) => results,
        Ok(Err(SearchError::BadCursor(why))) => {
            return Err(invalid(vec![FieldError { field: "cursor".into(), message: why.to_string() }]));
        }
        Ok(Err(SearchError::InvalidRequest { field, reason })) => {
            return Err(invalid(vec![FieldError { field: field.to_owned(), message: reason }]));
        }
        Ok(Err(e)) => return Err(unavailable(&state, &e)),
        Err(_) => {
            return Err(unavailable(
                &state,
                &SearchError::Unavailable(format!("no answer in {:?}", search.timeout)),
            ));
        }
    };
    metrics::histogram!("souk_search_query_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(response::Page::of(results)).into_response())
}

/// The client's address, as the server loop recorded it (none in router tests).
pub(crate) struct Peer(Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0)))
    }
}

fn request_of(tenant: String, p: SearchParams) -> SearchRequest {
    let mut r = SearchRequest::new(tenant);
    r.q = p.q;
    r.category = p.category;
    r.seller = p.seller;
    r.min_price = p.min_price;
    r.max_price = p.max_price;
    r.attributes = p.attributes.iter().map(|(k, v)| AttrFilter::parse(k, v)).collect();
    r.in_stock = p.in_stock;
    r.sort = p.sort;
    r.per_page = p.per_page;
    r.cursor = p.cursor;
    r
}

fn invalid(errors: Vec<FieldError>) -> Problem {
    let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    Problem::bad_request("invalid-search", format!("invalid search parameters: {}", names.join(", ")))
        .errors(errors)
}

fn unavailable(state: &AppState, e: &SearchError) -> Problem {
    metrics::counter!("souk_search_unavailable_total").increment(1);
    if let Some(held_back) = state.unavailable_log.admit() {
        tracing::warn!(error = %e, held_back, "search failed (503); similar lines held back for a second");
    }
    Problem::unavailable("search is unavailable right now; retry shortly")
}
