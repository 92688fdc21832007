//! Who may use the dashboard, and how a browser's POST is shown to be its own.
//!
//! - **Login**: `POST /ops/login` with the form field `token`, an `operator` JWT
//!   verified with the API's keys. The session is kept here, server side: the cookie
//!   (`souk_ops`, `HttpOnly`, `SameSite=Strict`, path `/ops`, `Secure` behind an HTTPS
//!   proxy) holds only 256 random bits naming it, never the token. It ends with the
//!   token's expiry (at most [`SESSION_MAX`]) or at logout. Scripts may send
//!   `Authorization: Bearer <operator JWT>` instead.
//! - **Refusals**: no principal → 401 (a browser's page GET is sent to the login page
//!   instead; a script, which does not ask for HTML, still gets 401); a principal
//!   without the `operator` role → 403.
//! - **Every POST** must come from the dashboard's own origin (`Sec-Fetch-Site`, when
//!   sent, is `same-origin`; `Origin`, when sent, names this host) and, past login,
//!   carry the CSRF token of its session in the form field `csrf` (rendered in a hidden
//!   field of every form). A bearer token's CSRF token is derived from it with a key
//!   of this process (HMAC), so a script reads it from any page it fetches. Actions
//!   then ask for a confirmation (see the pages).

use aws_lc_rs::{constant_time, hmac, rand};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Redirect, Response},
};
use souk_ingress::Role;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use crate::{form::Form, pages};

/// The session cookie's name.
pub const COOKIE: &str = "souk_ops";
/// Longest a session lasts, whatever its token's expiry.
pub const SESSION_MAX: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once; the oldest goes first beyond it.
const MAX_SESSIONS: usize = 10_000;
/// Largest form body accepted (a selection of dead letters by sequence fits easily).
pub const MAX_FORM_BYTES: usize = 256 * 1024;

/// The principal of a request that passed [`operator`].
#[derive(Debug, Clone)]
pub struct Operator {
    pub sub: String,
    /// What the `csrf` form field of its POSTs must hold.
    pub csrf: String,
    /// The session it came in with (a bearer token has none), and when its right to
    /// look ends (the session's, or the token's, expiry): see [`Sessions::still_valid`].
    session: Option<String>,
    until: u64,
}

#[derive(Debug, Clone)]
struct Session {
    sub: String,
    csrf: String,
    expires: u64,
}

/// The server-side sessions, and the key bearer tokens' CSRF tokens derive from.
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    bearer_csrf: hmac::Key,
}

impl Sessions {
    pub fn new() -> Sessions {
        Sessions { map: Mutex::default(), bearer_csrf: hmac::Key::new(hmac::HMAC_SHA256, &random_bytes()) }
    }

    fn open(&self, sub: &str, token_exp: u64) -> (String, u64) {
        let id = hex(&random_bytes());
        let now = now_secs();
        let expires = token_exp.min(now + SESSION_MAX.as_secs());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), Session { sub: sub.to_owned(), csrf: hex(&random_bytes()), expires });
        (id, expires.saturating_sub(now))
    }

    fn get(&self, id: &str) -> Option<Session> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id).filter(|s| s.expires > now_secs()).cloned()
    }

    fn close(&self, id: &str) {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Whether `op` may still see the dashboard: its session open (not logged out, not
    /// expired) or its bearer token unexpired. A long-lived response (the live event
    /// stream) asks at each refresh.
    pub(crate) fn still_valid(&self, op: &Operator) -> bool {
        let now = now_secs();
        op.until > now && op.session.as_deref().is_none_or(|id| self.get(id).is_some())
    }

    fn bearer_csrf(&self, token: &str) -> String {
        hex(&hmac::sign(&self.bearer_csrf, token.as_bytes()).as_ref()[..16])
    }
}

fn random_bytes() -> [u8; 32] {
    let mut b = [0u8; 32];
    // The system's generator; without it no session can be safe, so no dashboard.
    #[allow(clippy::expect_used)]
    rand::fill(&mut b).expect("the system random generator");
    b
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A browser asking for a page (it gets the login page rather than a bare 401).
fn wants_page(request: &Request) -> bool {
    request.method() == axum::http::Method::GET
        && request
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

fn refuse(status: StatusCode, why: &str) -> Response {
    let mut response = (status, pages::layout::bare("souk ops", why)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"souk-ops\""));
    }
    response
}

/// The guard of [`crate::Access::Operator`] routes: finds the principal (bearer token,
/// else session cookie) and lets only operators through.
pub(crate) async fn operator(
    State(state): State<Arc<crate::State>>,
    mut request: Request,
    next: Next,
) -> Response {
    let found = match bearer(request.headers()) {
        Some(token) => match state.keys.verify(token) {
            Ok(claims) if claims.has(Role::Operator) => Ok(Operator {
                sub: claims.sub,
                csrf: state.sessions.bearer_csrf(token),
                session: None,
                until: claims.exp,
            }),
            Ok(claims) => Err((StatusCode::FORBIDDEN, format!("{} is not an operator", claims.sub))),
            Err(e) => Err((StatusCode::UNAUTHORIZED, format!("bearer token refused: {e}"))),
        },
        None => match cookie(request.headers(), COOKIE).and_then(|id| Some((id, state.sessions.get(id)?))) {
            Some((id, s)) => {
                Ok(Operator { sub: s.sub, csrf: s.csrf, session: Some(id.to_owned()), until: s.expires })
            }
            None => Err((StatusCode::UNAUTHORIZED, "log in with an operator token".to_owned())),
        },
    };
    match found {
        Ok(op) => {
            request.extensions_mut().insert(op);
            next.run(request).await
        }
        Err((StatusCode::UNAUTHORIZED, _)) if wants_page(&request) => {
            Redirect::to("/ops/login").into_response()
        }
        Err((status, why)) => refuse(status, &why),
    }
}

/// Why a POST is not the dashboard's own, if it is not: a browser says where a request
/// comes from in `Sec-Fetch-Site` and `Origin`. `Sec-Fetch-Site`, when sent, decides:
/// the browser sets it and no page can, and it compares origins as the user's browser
/// saw them — behind a proxy that rewrites `Host` (nginx's default `proxy_set_header
/// Host $proxy_host`) the `Origin` is the public name while `Host` is the upstream's,
/// which made every POST, login included, a 403 (found in review). Without it (an
/// older browser), `Origin`, when sent, must name `Host` or `X-Forwarded-Host` (a
/// header no cross-site form can set).
fn cross_site(headers: &HeaderMap) -> Option<&'static str> {
    if let Some(site) = headers.get("sec-fetch-site") {
        return (site.as_bytes() != b"same-origin").then_some("cross-site request refused (Sec-Fetch-Site)");
    }
    let origin = headers.get(header::ORIGIN)?;
    let hosts: Vec<&str> = [header::HOST.as_str(), "x-forwarded-host"]
        .into_iter()
        .filter_map(|name| headers.get(name).and_then(|h| h.to_str().ok()))
        .collect();
    let same = origin.to_str().ok().and_then(|o| url::Url::parse(o).ok()).is_some_and(|o| {
        let authority = match o.port() {
            Some(port) => format!("{}:{port}", o.host_str().unwrap_or_default()),
            None => o.host_str().unwrap_or_default().to_owned(),
        };
        hosts.iter().any(|h| h.eq_ignore_ascii_case(&authority))
    });
    (!same).then_some("cross-site request refused (Origin)")
}

/// The guard of public POSTs (login): same origin only.
pub(crate) async fn same_origin(request: Request, next: Next) -> Response {
    match cross_site(request.headers()) {
        Some(why) => refuse(StatusCode::FORBIDDEN, why),
        None => next.run(request).await,
    }
}

/// The guard of operators' POSTs (after [`operator`]): same origin, and the form's
/// `csrf` field is the principal's CSRF token. The form is read here and handed on.
pub(crate) async fn csrf(request: Request, next: Next) -> Response {
    if let Some(why) = cross_site(request.headers()) {
        return refuse(StatusCode::FORBIDDEN, why);
    }
    let Some(op) = request.extensions().get::<Operator>().cloned() else {
        return refuse(StatusCode::UNAUTHORIZED, "log in with an operator token");
    };
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
        return refuse(StatusCode::PAYLOAD_TOO_LARGE, "form too large");
    };
    let form = Form::parse(&bytes);
    let matches = form.get("csrf").is_some_and(|given| {
        constant_time::verify_slices_are_equal(given.as_bytes(), op.csrf.as_bytes()).is_ok()
    });
    if !matches {
        return refuse(StatusCode::FORBIDDEN, "missing or wrong CSRF token: reload the page and try again");
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

pub(crate) async fn login_page() -> Response {
    pages::layout::login(None).into_response()
}

pub(crate) async fn login(
    State(state): State<Arc<crate::State>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form = Form::parse(&body);
    let token = form.get("token").unwrap_or_default().trim();
    let claims = match state.keys.verify(token) {
        Ok(c) => c,
        Err(e) => {
            return (StatusCode::UNAUTHORIZED, pages::layout::login(Some(&format!("token refused: {e}"))))
                .into_response();
        }
    };
    if !claims.has(Role::Operator) {
        let why =
            format!("{} is not an operator: the dashboard needs a token with role operator", claims.sub);
        return (StatusCode::FORBIDDEN, pages::layout::login(Some(&why))).into_response();
    }
    let (id, max_age) = state.sessions.open(&claims.sub, claims.exp);
    let https = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
    let cookie = format!(
        "{COOKIE}={id}; Path=/ops; HttpOnly; SameSite=Strict; Max-Age={max_age}{}",
        if https { "; Secure" } else { "" }
    );
    tracing::info!(operator = %claims.sub, "dashboard login");
    let mut response = Redirect::to("/ops/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

pub(crate) async fn logout(State(state): State<Arc<crate::State>>, headers: HeaderMap) -> Response {
    if let Some(id) = cookie(&headers, COOKIE) {
        state.sessions.close(id);
    }
    let mut response = Redirect::to("/ops/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("souk_ops=; Path=/ops; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    response
}
