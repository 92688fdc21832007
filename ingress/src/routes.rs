//! The one table of public routes.
//!
//! Every route is a handler carrying `#[utoipa::path(...)]`, registered below with
//! `routes!`: one line routes it and adds it to the API document, so what is routed
//! and what is documented cannot drift. Nothing else in this crate adds routes to the
//! public router (`tests/it/openapi.rs` checks the sources for it, and sends a request
//! to every documented operation). How to add one: `/work/wt/brief/OPENAPI.md` and
//! ARCHITECTURE.md.

use axum::Router;
use std::sync::Arc;
use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, cart, catalog, checkout, fulfilment, jobs, orders, probes, problem, products, search};

/// Every public route with its documentation. One `routes!` per path: the handlers in
/// one `routes!` must share their path (they become the methods of that path).
fn table() -> OpenApiRouter<Arc<AppState>> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(orders::place))
        .routes(routes!(orders::get))
        // cart and checkout
        .routes(routes!(cart::get_cart))
        .routes(routes!(cart::put_item, cart::delete_item))
        .routes(routes!(checkout::checkout))
        // catalog
        .routes(routes!(catalog::put_product, catalog::patch_product, catalog::delete_product))
        .routes(routes!(catalog::get_write))
        .routes(routes!(products::get_product))
        .routes(routes!(products::list_seller_products))
        .routes(routes!(probes::healthz))
        .routes(routes!(probes::readyz))
        .routes(routes!(crate::openapi::document))
        // search
        .routes(routes!(search::search))
        // fulfilment: sellers' orders
        .routes(routes!(fulfilment::list_seller_orders))
        .routes(routes!(fulfilment::ship))
        // jobs for internal teams
        .routes(routes!(jobs::submit, jobs::list))
        .routes(routes!(jobs::get))
}

/// The public router: the table, and a fallback whose problem type (`not-found-route`)
/// tells "no such route" apart from "no such resource".
pub(crate) fn router() -> Router<Arc<AppState>> {
    let (router, _) = table().split_for_parts();
    router.fallback(problem::not_found)
}

/// The API document of every public route (served at `GET /v1/openapi.json`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    table().into_openapi()
}

/// The API's router with `other`'s routes beside it on the same listener: the
/// operators' dashboard (`/ops/`), whose HTML pages are not the public API (so not in
/// the OpenAPI document) and which lists its own routes in its own table
/// (`souk_dashboard::routes::ROUTES`, walked by its tests). `other` keeps its own layers.
pub(crate) fn beside(api: Router, other: Router) -> Router {
    api.merge(other)
}
