//! The one route table. [`build`] makes the router from it, giving each route the
//! guards its [`Access`] asks for, and the tests walk the same table: a route cannot
//! be served without being listed here, nor listed without its guards.

use axum::{
    Router,
    http::Method,
    middleware::{from_fn, from_fn_with_state},
    routing::{MethodRouter, get, post},
};
use std::sync::Arc;

use crate::{State, auth, pages};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone (the login page). A POST is still refused cross-site.
    Public,
    /// A principal with the `operator` role; a POST also needs same-origin, the CSRF
    /// token of the session (or bearer token) and, where it acts, a confirmation.
    Operator,
}

/// One route of the dashboard.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    /// The axum path (`{seq}`: a path parameter).
    pub path: &'static str,
    pub access: Access,
}

const fn route(method: Method, path: &'static str, access: Access) -> Route {
    Route { method, path, access }
}

/// Every route of the dashboard.
pub const ROUTES: &[Route] = &[
    route(Method::GET, "/ops/login", Access::Public),
    route(Method::POST, "/ops/login", Access::Public),
    route(Method::POST, "/ops/logout", Access::Operator),
    route(Method::GET, "/ops", Access::Operator),
    route(Method::GET, "/ops/", Access::Operator),
    route(Method::GET, "/ops/events", Access::Operator),
    route(Method::GET, "/ops/status.json", Access::Operator),
    route(Method::GET, "/ops/dlq", Access::Operator),
    route(Method::GET, "/ops/dlq/{seq}", Access::Operator),
    route(Method::POST, "/ops/dlq/redrive", Access::Operator),
    route(Method::POST, "/ops/dlq/purge", Access::Operator),
    route(Method::POST, "/ops/pools/{pool}", Access::Operator),
    route(Method::GET, "/ops/actions", Access::Operator),
    route(Method::GET, "/ops/trace", Access::Operator),
];

/// The handler of a listed route. A route listed without one fails every build (and so
/// every test), never silently.
fn handler(r: &Route) -> MethodRouter<Arc<State>> {
    let is_get = r.method == Method::GET;
    match (is_get, r.path) {
        (true, "/ops/login") => get(auth::login_page),
        (false, "/ops/login") => post(auth::login),
        (false, "/ops/logout") => post(auth::logout),
        (true, "/ops" | "/ops/") => get(pages::overview::page),
        (true, "/ops/events") => get(pages::overview::events),
        (true, "/ops/status.json") => get(pages::overview::json),
        (true, "/ops/dlq") => get(pages::dlq::list),
        (true, "/ops/dlq/{seq}") => get(pages::dlq::show),
        (false, "/ops/dlq/redrive") => post(pages::dlq::redrive),
        (false, "/ops/dlq/purge") => post(pages::dlq::purge),
        (false, "/ops/pools/{pool}") => post(pages::pools::change),
        (true, "/ops/actions") => get(pages::actions::page),
        (true, "/ops/trace") => get(pages::trace::page),
        _ => panic!("dashboard route {} {} has no handler", r.method, r.path),
    }
}

pub(crate) fn build(state: Arc<State>) -> Router {
    let mut router = Router::new();
    for r in ROUTES {
        let guarded = match (r.access, r.method == Method::GET) {
            (Access::Public, true) => handler(r),
            (Access::Public, false) => handler(r).layer(from_fn(auth::same_origin)),
            (Access::Operator, true) => handler(r).layer(from_fn_with_state(state.clone(), auth::operator)),
            // The outer layer runs first: who it is, then whether the POST is theirs.
            (Access::Operator, false) => {
                handler(r).layer(from_fn(auth::csrf)).layer(from_fn_with_state(state.clone(), auth::operator))
            }
        };
        router = router.route(r.path, guarded);
    }
    router.with_state(state)
}
