//! The API document: valid OpenAPI 3.1, served as documented, and routed == documented.
//!
//! Routes are registered in one table (`ingress/src/routes.rs`), each line routing a
//! handler and documenting it. These tests hold the rest: every documented operation
//! is routed (a request to it reaches a handler, not the fallback or a 405), nothing
//! else is routed on a documented path (every other method is 405), and nothing adds
//! routes outside the table (a check of the crate's sources, the only way to list what
//! an axum router routes).

use axum::{body::Body, http::Request};
use serde_json::Value;
use std::collections::{BTreeSet, HashSet};

use crate::{env, send};

const METHODS: [&str; 7] = ["get", "put", "post", "delete", "options", "patch", "trace"];
const FALLBACK: &str = "https://souk.dev/problems/not-found-route";
const METHOD_NOT_ALLOWED: &str = "https://souk.dev/problems/method-not-allowed";

async fn served_document(router: axum::Router) -> anyhow::Result<Value> {
    let request = Request::get("/v1/openapi.json").body(Body::empty())?;
    let (status, content_type, body) = send(router, request).await?;
    anyhow::ensure!(status == 200, "GET /v1/openapi.json: {status} {body}");
    anyhow::ensure!(content_type == "application/json", "content type {content_type:?}");
    Ok(body)
}

#[tokio::test]
async fn the_api_document_is_valid_openapi_3_1_and_served_cached() -> anyhow::Result<()> {
    let env = env().await?;
    let doc = served_document(env.router()).await?;
    assert_eq!(doc, serde_json::to_value(souk_ingress::openapi())?, "served = generated");

    let version = doc["openapi"].as_str().unwrap_or_default();
    assert!(version.starts_with("3.1."), "openapi is {version:?}, not 3.1.x");
    for field in ["title", "version"] {
        assert!(doc["info"][field].is_string(), "info.{field} missing");
    }
    let mut problems = Vec::new();
    check_refs(&doc, &doc, "#", &mut problems);
    let schemes: HashSet<&String> =
        doc["components"]["securitySchemes"].as_object().map(|m| m.keys().collect()).unwrap_or_default();
    let tags: HashSet<&str> =
        doc["tags"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    let mut operation_ids = HashSet::new();
    for (path, item, method, op) in operations(&doc) {
        let at = format!("{} {path}", method.to_uppercase());
        match op["operationId"].as_str() {
            Some(id) if operation_ids.insert(id.to_owned()) => {}
            Some(id) => problems.push(format!("{at}: operationId {id:?} used twice")),
            None => problems.push(format!("{at}: no operationId")),
        }
        if op["summary"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("{at}: no summary (the first line of the handler's doc comment)"));
        }
        for tag in op["tags"].as_array().into_iter().flatten() {
            if !tag.as_str().is_some_and(|t| tags.contains(t)) {
                problems.push(format!("{at}: tag {tag} is not declared in ApiDoc's tags"));
            }
        }
        // Path templates and path parameters name each other exactly.
        let templated: BTreeSet<String> = path_params(path);
        let declared: BTreeSet<String> = parameters(&doc, item, op)
            .filter(|p| p["in"] == "path")
            .inspect(|p| {
                if p["required"] != true {
                    problems.push(format!("{at}: path parameter {} is not required", p["name"]));
                }
            })
            .filter_map(|p| p["name"].as_str().map(str::to_owned))
            .collect();
        if templated != declared {
            problems.push(format!("{at}: path names {templated:?}, parameters declare {declared:?}"));
        }
        let responses = op["responses"].as_object().cloned().unwrap_or_default();
        if !responses.keys().any(|status| status.starts_with('2') || status.starts_with('3')) {
            problems.push(format!("{at}: no success response"));
        }
        for (status, response) in &responses {
            if status.parse::<u16>().is_err() {
                problems.push(format!("{at}: response status {status:?} is not a code"));
            }
            let response = resolve(&doc, response);
            if response["description"].as_str().is_none_or(str::is_empty) {
                problems.push(format!("{at} {status}: no description"));
            }
            if status.starts_with('4') || status.starts_with('5') {
                let problem = &response["content"]["application/problem+json"]["schema"]["$ref"];
                if problem != "#/components/schemas/Problem" && !(path == "/readyz" && status == "503") {
                    problems.push(format!("{at} {status}: not an application/problem+json Problem"));
                }
            }
        }
        for requirement in op["security"].as_array().into_iter().flatten() {
            for scheme in requirement.as_object().into_iter().flat_map(|r| r.keys()) {
                if !schemes.contains(scheme) {
                    problems.push(format!("{at}: security scheme {scheme:?} is not defined"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "the API document is not valid:\n{}", problems.join("\n"));

    // Cached: an ETag and a max-age, and a revalidation with the ETag is a 304.
    let response =
        tower::ServiceExt::oneshot(env.router(), Request::get("/v1/openapi.json").body(Body::empty())?)
            .await?;
    let etag = response.headers().get("etag").cloned().expect("an ETag");
    let cache = response.headers().get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(cache.contains("public") && cache.contains("max-age="), "Cache-Control {cache:?}");
    let revalidate =
        Request::get("/v1/openapi.json").header("if-none-match", etag.clone()).body(Body::empty())?;
    let (status, _, body) = send(env.router(), revalidate).await?;
    assert_eq!((status, body), (304, Value::Null));
    let stale = Request::get("/v1/openapi.json").header("if-none-match", "\"stale\"").body(Body::empty())?;
    assert_eq!(send(env.router(), stale).await?.0, 200);
    Ok(())
}

#[tokio::test]
async fn every_documented_operation_is_routed_and_nothing_else_is() -> anyhow::Result<()> {
    let env = env().await?;
    let doc = served_document(env.router()).await?;
    let mut problems = Vec::new();
    let paths = doc["paths"].as_object().cloned().unwrap_or_default();
    assert!(paths.len() >= 5, "too few paths documented: {:?}", paths.keys());
    for (path, item) in &paths {
        let uri = sample_uri(&doc, path, item);
        for method in METHODS {
            let request =
                Request::builder().method(method.to_uppercase().as_str()).uri(&uri).body(Body::empty())?;
            let (status, _, body) = send(env.router(), request).await?;
            let at = format!("{} {path} (as {uri})", method.to_uppercase());
            let Some(op) = item.get(method) else {
                // Not documented: routed only if it reaches something but the 405.
                if status != 405 || body["type"] != METHOD_NOT_ALLOWED {
                    problems.push(format!("{at}: not documented, but answered {status} {body}"));
                }
                continue;
            };
            if status == 405 || (status == 404 && body["type"] == FALLBACK) {
                problems.push(format!("{at}: documented, but not routed ({status} {body})"));
                continue;
            }
            if op["responses"].get(status.to_string()).is_none() {
                problems.push(format!("{at}: answered {status}, which is not documented ({body})"));
            }
            // Without credentials: a route documented as needing a token refuses (401),
            // a public one does not ask.
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            if secured != (status == 401) {
                problems
                    .push(format!("{at}: security documented {secured}, answered {status} without a token"));
            }
        }
    }
    // And the fallback is told apart from a missing resource.
    let request = Request::get("/v1/no-such-route").body(Body::empty())?;
    let (status, _, body) = send(env.router(), request).await?;
    assert_eq!((status, body["type"].as_str()), (404, Some(FALLBACK)), "{body}");
    assert!(problems.is_empty(), "routed != documented:\n{}", problems.join("\n"));
    Ok(())
}

/// The public router is built in `routes.rs` only: anything else that adds routes,
/// nests or merges routers, or sets a fallback fails here. (axum cannot list what a
/// router routes, so this is read from the sources.) `probes::internal_router`, the
/// internal `/metrics` listener's router, is the one exception: not the public API.
#[test]
fn routes_are_added_in_the_route_table_only() -> anyhow::Result<()> {
    const ROUTING: [&str; 9] = [
        ".route(",
        ".routes(",
        ".route_service(",
        ".nest(",
        ".nest_service(",
        ".merge(",
        ".fallback(",
        "Router::new(",
        "OpenApiRouter::",
    ];
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    let mut files = vec![src.clone()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(
                std::fs::read_dir(&path)?.map(|e| e.map(|e| e.path())).collect::<Result<Vec<_>, _>>()?,
            );
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("routes.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let mut in_internal_router = false;
        for (n, line) in text.lines().enumerate() {
            if path.ends_with("probes.rs") && line.starts_with("pub fn internal_router(") {
                in_internal_router = true;
            }
            if in_internal_router {
                in_internal_router = line != "}";
                continue;
            }
            let code = line.split("//").next().unwrap_or_default();
            if ROUTING.iter().any(|r| code.contains(r)) {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "routes must be registered in ingress/src/routes.rs with routes!(handler) (see OPENAPI.md), \
         so that they are documented; found routing elsewhere:\n{}",
        offenders.join("\n")
    );
    Ok(())
}

/// Every operation: (path, path item, method, operation).
fn operations(doc: &Value) -> impl Iterator<Item = (&str, &Value, &'static str, &Value)> {
    doc["paths"].as_object().into_iter().flatten().flat_map(|(path, item)| {
        METHODS
            .into_iter()
            .chain(["head"])
            .filter_map(move |m| item.get(m).map(|op| (path.as_str(), item, m, op)))
    })
}

/// The parameters of an operation: the path item's and its own, references resolved.
fn parameters<'a>(doc: &'a Value, item: &'a Value, op: &'a Value) -> impl Iterator<Item = &'a Value> {
    let of = |v: &'a Value| v["parameters"].as_array().into_iter().flatten().map(|p| resolve(doc, p));
    of(item).chain(of(op))
}

/// `{name}` segments of a path template.
fn path_params(path: &str) -> BTreeSet<String> {
    path.split('{').skip(1).filter_map(|s| s.split_once('}')).map(|(name, _)| name.to_owned()).collect()
}

/// A concrete URI for a path template: each parameter gets a value of its schema's type.
fn sample_uri(doc: &Value, path: &str, item: &Value) -> String {
    let mut uri = path.to_owned();
    let ops = METHODS.iter().filter_map(|m| item.get(*m));
    for p in ops.flat_map(|op| parameters(doc, item, op)).filter(|p| p["in"] == "path") {
        let schema = resolve(doc, &p["schema"]);
        let value = match (schema["format"].as_str(), schema["type"].as_str()) {
            (Some("uuid"), _) => "0193b5c6-7d0e-7000-8000-000000000001",
            (_, Some("integer" | "number")) => "1",
            _ => "x1",
        };
        uri = uri.replace(&format!("{{{}}}", p["name"].as_str().unwrap_or_default()), value);
    }
    uri
}

/// `value`, or what its `$ref` points at.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value["$ref"].as_str().and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).unwrap_or(&Value::Null),
        None => value,
    }
}

/// Every `$ref` in the document points inside it, at something.
fn check_refs(doc: &Value, value: &Value, at: &str, problems: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(target) = map.get("$ref") {
                let ok = target
                    .as_str()
                    .and_then(|r| r.strip_prefix('#'))
                    .is_some_and(|pointer| doc.pointer(pointer).is_some());
                if !ok {
                    problems.push(format!("{at}: $ref {target} does not resolve"));
                }
            }
            for (key, child) in map {
                check_refs(doc, child, &format!("{at}/{key}"), problems);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                check_refs(doc, child, &format!("{at}/{i}"), problems);
            }
        }
        _ => {}
    }
}
