//! Every bad request gets its 4xx problem+json, and nothing is claimed or published.

use axum::{body::Body, http::Request};
use souk_ingress::{Claims, Keys, Role};
use std::time::Duration;

use crate::{env, send};

const VALID: &str = r#"{"lines":[{"sku":"A-1","quantity":1}],"payment_token":"tok_ok"}"#;

struct Case {
    name: &'static str,
    token: Option<String>,
    key: Option<String>,
    content_type: &'static str,
    body: String,
    status: u16,
    problem: &'static str,
}

#[tokio::test]
async fn bad_order_requests_get_problems_and_publish_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    let buyer = Some(env.token(&[Role::Buyer]));
    let key = Some("k-1".to_owned());
    let now = jsonwebtoken::get_current_timestamp();
    let mut expired = Claims::new("u1", "t1", vec![Role::Buyer], Duration::from_secs(1));
    (expired.iat, expired.exp) = (now - 3600, now - 600);
    let forged = Keys::from_secret(&[1u8; 32]).mint(&Claims::new(
        "u1",
        "t1",
        vec![Role::Buyer],
        Duration::from_secs(60),
    ));
    let case = |name, token: &Option<String>, key: &Option<String>, body: &str, status, problem| Case {
        name,
        token: token.clone(),
        key: key.clone(),
        content_type: "application/json",
        body: body.to_owned(),
        status,
        problem,
    };
    let line = |json: &str| format!(r#"{{"lines":[{json}],"payment_token":"tok_ok"}}"#);
    let token = |t: &str| format!(r#"{{"lines":[{{"sku":"A","quantity":1}}],"payment_token":"{t}"}}"#);
    let mut cases = vec![
        case("malformed json", &buyer, &key, r#"{"lines":["#, 400, "malformed-json"),
        case("not json at all", &buyer, &key, "currency=EUR", 400, "malformed-json"),
        case(
            "a key twice",
            &buyer,
            &key,
            r#"{"lines":[],"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok"}"#,
            400,
            "malformed-json",
        ),
        case("missing key", &buyer, &None, VALID, 400, "idempotency-key-missing"),
        case("empty key", &buyer, &Some(String::new()), VALID, 400, "idempotency-key-invalid"),
        case("oversize key", &buyer, &Some("k".repeat(256)), VALID, 400, "idempotency-key-invalid"),
        case("key with spaces", &buyer, &Some("a b".into()), VALID, 400, "idempotency-key-invalid"),
        case(
            "oversize body",
            &buyer,
            &key,
            &format!("{}{}", " ".repeat(70_000), VALID),
            413,
            "body-too-large",
        ),
        case(
            "unknown field",
            &buyer,
            &key,
            r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok","coupon":"FREE"}"#,
            400,
            "unknown-field",
        ),
        case(
            "the client sets a price",
            &buyer,
            &key,
            &line(r#"{"sku":"A","quantity":1,"unit_price_minor":1}"#),
            400,
            "unknown-field",
        ),
        case(
            "the client sets the currency",
            &buyer,
            &key,
            r#"{"currency":"EUR","lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok"}"#,
            400,
            "unknown-field",
        ),
        case("zero quantity", &buyer, &key, &line(r#"{"sku":"A","quantity":0}"#), 422, "validation"),
        case("negative quantity", &buyer, &key, &line(r#"{"sku":"A","quantity":-2}"#), 422, "validation"),
        case(
            "quantity over the limit",
            &buyer,
            &key,
            &line(r#"{"sku":"A","quantity":10001}"#),
            422,
            "validation",
        ),
        case(
            "quantity over the stock",
            &buyer,
            &key,
            &line(r#"{"sku":"A","quantity":1001}"#),
            422,
            "validation",
        ),
        case(
            "fractional quantity",
            &buyer,
            &key,
            &line(r#"{"sku":"A","quantity":1.5}"#),
            422,
            "invalid-body",
        ),
        case("no lines", &buyer, &key, r#"{"lines":[],"payment_token":"tok_ok"}"#, 422, "validation"),
        case("unknown sku", &buyer, &key, &line(r#"{"sku":"NOPE","quantity":1}"#), 422, "validation"),
        case(
            "a sku twice",
            &buyer,
            &key,
            &line(r#"{"sku":"A","quantity":1},{"sku":"A","quantity":2}"#),
            422,
            "validation",
        ),
        case(
            "card number as sku",
            &buyer,
            &key,
            &line(r#"{"sku":"4111111111111111","quantity":1}"#),
            422,
            "validation",
        ),
        case(
            "missing payment token",
            &buyer,
            &key,
            r#"{"lines":[{"sku":"A","quantity":1}]}"#,
            422,
            "invalid-body",
        ),
        case("not a payment token", &buyer, &key, &token("card"), 422, "validation"),
        case("card number as token", &buyer, &key, &token("4111 1111 1111 1111"), 422, "validation"),
        case("card number in a token", &buyer, &key, &token("tok_4111111111111111"), 422, "validation"),
        case(
            "negative expected total",
            &buyer,
            &key,
            r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok","expected_total_minor":-1,"expected_currency":"EUR"}"#,
            422,
            "validation",
        ),
        case(
            "another expected total",
            &buyer,
            &key,
            r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok","expected_total_minor":99,"expected_currency":"EUR"}"#,
            409,
            "price-changed",
        ),
        case(
            "expected total without its currency",
            &buyer,
            &key,
            r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok","expected_total_minor":99}"#,
            422,
            "validation",
        ),
        case(
            "another expected currency",
            &buyer,
            &key,
            r#"{"lines":[{"sku":"A","quantity":1}],"payment_token":"tok_ok","expected_currency":"JPY"}"#,
            409,
            "price-changed",
        ),
        case("missing token", &None, &key, VALID, 401, "unauthorized"),
        case("garbage token", &Some("not.a.jwt".into()), &key, VALID, 401, "unauthorized"),
        case("expired token", &Some(env.keys.mint(&expired)), &key, VALID, 401, "unauthorized"),
        case("forged token", &Some(forged), &key, VALID, 401, "unauthorized"),
        case("wrong role", &Some(env.token(&[Role::Seller])), &key, VALID, 403, "forbidden"),
    ];
    let mut wrong_type = case("wrong content type", &buyer, &key, VALID, 415, "unsupported-media-type");
    wrong_type.content_type = "text/plain";
    cases.push(wrong_type);

    for c in cases {
        let mut request = Request::post("/v1/orders").header("content-type", c.content_type);
        if let Some(t) = &c.token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        if let Some(k) = &c.key {
            request = request.header("idempotency-key", k);
        }
        let (status, content_type, problem) = send(env.router(), request.body(Body::from(c.body))?).await?;
        assert_eq!(status, c.status, "{}: {problem}", c.name);
        assert_eq!(content_type, "application/problem+json", "{}", c.name);
        assert_eq!(
            problem["type"],
            format!("https://souk.dev/problems/{}", c.problem),
            "{}: {problem}",
            c.name
        );
        assert_eq!(problem["status"], c.status, "{}", c.name);
    }
    assert_eq!(env.commands_published().await?, 0, "no bad request published anything");
    assert_eq!(env.keys_claimed().await?, 0, "no bad request claimed a key");

    // Errors axum makes itself get the same shape: a wrong method (keeping `Allow`), an
    // undecodable path.
    let request = Request::get("/v1/orders").body(Body::empty())?;
    let response = tower::ServiceExt::oneshot(env.router(), request).await?;
    assert_eq!(response.headers().get("allow").map(|v| v.to_str().unwrap_or("")), Some("POST"));
    let (status, content_type, problem) =
        send(env.router(), Request::get("/v1/orders").body(Body::empty())?).await?;
    assert_eq!((status, content_type.as_str()), (405, "application/problem+json"), "{problem}");
    assert_eq!(problem["type"], "https://souk.dev/problems/method-not-allowed");
    let request = Request::get("/v1/orders/%FF")
        .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
        .body(Body::empty())?;
    let (status, content_type, problem) = send(env.router(), request).await?;
    assert_eq!((status, content_type.as_str()), (400, "application/problem+json"), "{problem}");
    assert_eq!(problem["status"], 400);

    // Validation errors name every offending field.
    let request = Request::post("/v1/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
        .header("idempotency-key", "k-2")
        .body(Body::from(
            r#"{"lines":[{"sku":"","quantity":0},{"sku":"A","quantity":1,"discount":5}],"payment_token":"x"}"#,
        ))?;
    let (status, _, problem) = send(env.router(), request).await?;
    assert_eq!(status, 400, "unknown fields are named first: {problem}");
    let fields: Vec<_> =
        problem["errors"].as_array().into_iter().flatten().map(|e| e["field"].clone()).collect();
    assert_eq!(fields, ["lines[1].discount"]);
    let request = Request::post("/v1/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
        .header("idempotency-key", "k-2")
        .body(Body::from(
            r#"{"lines":[{"sku":"","quantity":0},{"sku":"A","quantity":10001}],"payment_token":"x"}"#,
        ))?;
    let (_, _, problem) = send(env.router(), request).await?;
    let fields: Vec<_> =
        problem["errors"].as_array().into_iter().flatten().map(|e| e["field"].clone()).collect();
    assert_eq!(fields, ["lines[0].sku", "lines[0].quantity", "lines[1].quantity", "payment_token"]);

    // And a good request after all that is accepted (the matrix did not break anything).
    let request = Request::post("/v1/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", env.token(&[Role::Buyer])))
        .header("idempotency-key", "k-good")
        .body(Body::from(VALID))?;
    let (status, _, body) = send(env.router(), request).await?;
    assert_eq!(status, 202, "{body}");
    assert_eq!(env.commands_published().await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_principal_over_its_rate_limit_gets_429_and_others_do_not() -> anyhow::Result<()> {
    let one = std::num::NonZeroU32::MIN;
    let limit = souk_ingress::RateLimit {
        per_second: one,
        burst: one.saturating_add(1),
        reads_per_second: one,
        reads_burst: one.saturating_add(1),
    };
    let env = crate::env_with(Some(limit), souk_ingress::ConnectionLimits::default()).await?;
    let post = |sub: &str, key: &str| {
        let token = env.keys.mint(&Claims::new(sub, "t1", vec![Role::Buyer], Duration::from_secs(60)));
        Request::post("/v1/orders")
            .header("content-type", "application/json")
            .header("authorization", format!("Bearer {token}"))
            .header("idempotency-key", key)
            .body(Body::from(VALID))
    };
    assert_eq!(send(env.router(), post("greedy", "a")?).await?.0, 202);
    assert_eq!(send(env.router(), post("greedy", "b")?).await?.0, 202);
    let response = tower::ServiceExt::oneshot(env.router(), post("greedy", "c")?).await?;
    assert_eq!(response.status().as_u16(), 429);
    assert_eq!(response.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    assert_eq!(send(env.router(), post("patient", "a")?).await?.0, 202, "others are not limited");
    assert_eq!(env.commands_published().await?, 3, "the limited request published nothing");
    assert_eq!(env.keys_claimed().await?, 3);

    // Reads have a budget of their own: the greedy writer can still read, twice (the
    // burst), and then is limited on reads too, while others are not.
    let get = |sub: &str| {
        let token = env.keys.mint(&Claims::new(sub, "t1", vec![Role::Buyer], Duration::from_secs(60)));
        Request::get(format!("/v1/orders/{}", uuid::Uuid::now_v7()))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
    };
    assert_eq!(send(env.router(), get("greedy")?).await?.0, 404);
    assert_eq!(send(env.router(), get("greedy")?).await?.0, 404);
    let (status, _, problem) = send(env.router(), get("greedy")?).await?;
    assert_eq!(status, 429, "{problem}");
    assert_eq!(send(env.router(), get("patient")?).await?.0, 404, "others are not limited");
    Ok(())
}
