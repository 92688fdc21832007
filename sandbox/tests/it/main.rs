//! The payment sandbox as a real server on a free port: tokens, idempotency, both
//! dialects, bad input, credentials and faults.

use serde_json::{Value, json};
use souk_sandbox::payments::{Faults, PaymentSandbox, SandboxOptions};

async fn sandbox(api_key: Option<&str>, faults: Faults) -> anyhow::Result<PaymentSandbox> {
    Ok(PaymentSandbox::start(SandboxOptions {
        api_key: api_key.map(str::to_owned),
        faults,
        ..SandboxOptions::local("test-provider")
    })
    .await?)
}

/// POST to the alpha dialect; status, the sandbox header and the body.
async fn alpha(
    s: &PaymentSandbox,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, Value)> {
    let mut r = reqwest::Client::new()
        .post(format!("{}/alpha/v1{path}", s.url()))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        r = r.header("idempotency-key", key);
    }
    read(r.send().await?).await
}

async fn beta(s: &PaymentSandbox, path: &str, key: &str, body: &str) -> anyhow::Result<(u16, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{}/beta{path}", s.url()))
        .header("x-request-key", key)
        .body(body.to_owned())
        .send()
        .await?;
    read(r).await
}

/// Status and body, checking the answer says it comes from a sandbox.
async fn read(r: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    assert_eq!(r.headers().get("x-sandbox").map(|v| v.as_bytes()), Some(&b"true"[..]), "x-sandbox header");
    let status = r.status().as_u16();
    let body: Value = r.json().await?;
    assert_eq!(body["sandbox"], json!(true), "sandbox field in {body}");
    Ok((status, body))
}

fn charge(token: &str) -> String {
    json!({"token": token, "amount_minor": 1000, "currency": "EUR"}).to_string()
}

#[tokio::test]
async fn tokens_answer_as_documented_in_both_dialects() -> anyhow::Result<()> {
    let s = sandbox(None, Faults::default()).await?;
    let (status, body) = alpha(&s, "/payments", Some("k-ok"), &charge("tok_ok")).await?;
    assert_eq!((status, body["payment"]["status"].as_str()), (201, Some("authorized")));
    let (status, body) = alpha(&s, "/payments", Some("k-hard"), &charge("tok_hard_decline")).await?;
    assert_eq!(
        (status, body["error"]["code"].as_str(), body["error"]["retryable"].as_bool()),
        (402, Some("card_declined"), Some(false))
    );
    let (status, body) = alpha(&s, "/payments", Some("k-funds"), &charge("tok_insufficient_funds")).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (402, Some("insufficient_funds")));
    let (status, body) = alpha(&s, "/payments", Some("k-soft"), &charge("tok_soft_decline")).await?;
    assert_eq!((status, body["error"]["retryable"].as_bool()), (402, Some(true)));
    let beta_charge = json!({"source": "tok_ok", "amount": 500, "currency_code": "USD"}).to_string();
    let (status, body) = beta(&s, "/charges", "b-ok", &beta_charge).await?;
    assert_eq!((status, body["result"].as_str()), (200, Some("approved")));
    let id = body["charge"]["charge_ref"].as_str().unwrap_or_default().to_owned();
    let (status, body) = beta(&s, &format!("/charges/{id}/captures"), "b-cap", r#"{"amount": 500}"#).await?;
    assert_eq!((status, body["charge"]["state"].as_str()), (200, Some("CAPTURED")));
    let (status, body) = beta(&s, &format!("/charges/{id}/refunds"), "b-ref", r#"{"amount": 501}"#).await?;
    assert_eq!(
        (status, body["error_code"].as_str()),
        (422, Some("INVALID_AMOUNT")),
        "refund above the capture"
    );
    let soft = json!({"source": "tok_soft_decline", "amount": 500, "currency_code": "USD"}).to_string();
    let (status, body) = beta(&s, "/charges", "b-soft", &soft).await?;
    assert_eq!((status, body["refusal_reason"].as_str()), (200, Some("RETRY_LATER")));
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_gets_its_first_answer_and_refuses_another_request() -> anyhow::Result<()> {
    let s = sandbox(None, Faults::default()).await?;
    let (_, first) = alpha(&s, "/payments", Some("same"), &charge("tok_ok")).await?;
    let (status, again) = alpha(&s, "/payments", Some("same"), &charge("tok_ok")).await?;
    assert_eq!((status, &again["payment"]["id"]), (201, &first["payment"]["id"]));
    assert_eq!(s.effects("same"), 1, "charged once");
    let other = json!({"token": "tok_ok", "amount_minor": 999, "currency": "EUR"}).to_string();
    let (status, body) = alpha(&s, "/payments", Some("same"), &other).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("idempotency_key_reused")));
    let beta_charge =
        |amount: i64| json!({"source": "tok_ok", "amount": amount, "currency_code": "EUR"}).to_string();
    beta(&s, "/charges", "b-same", &beta_charge(1)).await?;
    let (status, _) = beta(&s, "/charges", "b-same", &beta_charge(2)).await?;
    assert_eq!(status, 409, "beta answers a reused key with 409");
    let lookup = reqwest::get(format!("{}/alpha/v1/idempotency/same", s.url())).await?;
    let (status, body) = read(lookup).await?;
    assert_eq!((status, &body["payment"]["id"]), (200, &first["payment"]["id"]));
    let (status, _) = read(reqwest::get(format!("{}/beta/requests/never-used", s.url())).await?).await?;
    assert_eq!(status, 404);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_card_numbers_are_refused() -> anyhow::Result<()> {
    let s = sandbox(None, Faults::default()).await?;
    let cases = [
        ("{not json", Some("k1"), 400, "malformed_json"),
        (
            r#"{"token": "4111 1111 1111 1111", "amount_minor": 1, "currency": "EUR"}"#,
            Some("k2"),
            422,
            "card_number_refused",
        ),
        (
            r#"{"token": "tok_ok", "amount_minor": 4111111111111111, "currency": "EUR"}"#,
            Some("k3"),
            422,
            "card_number_refused",
        ),
        (r#"{"token": "tok_nope", "amount_minor": 1, "currency": "EUR"}"#, Some("k4"), 422, "invalid_token"),
        (r#"{"token": "tok_ok", "amount_minor": 0, "currency": "EUR"}"#, Some("k5"), 422, "invalid_amount"),
        (
            r#"{"token": "tok_ok", "amount_minor": 1, "currency": "euro"}"#,
            Some("k6"),
            422,
            "invalid_currency",
        ),
        (
            r#"{"token": "tok_ok", "amount_minor": 1, "currency": "EUR", "card": "x"}"#,
            Some("k7"),
            422,
            "invalid_request",
        ),
        (&charge("tok_ok"), None, 400, "missing_idempotency_key"),
        (&charge("tok_ok"), Some("5500-0000-0000-0004"), 422, "card_number_refused"),
    ];
    for (body, key, status, code) in cases {
        let (got, answer) = alpha(&s, "/payments", key, body).await?;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body} / {key:?}");
    }
    assert_eq!(s.requests(), 0, "nothing refused reached processing");
    // A merchant key whose UUID digit groups chain into a Luhn-valid run is a key, not a
    // card number (souk's keys are `souk-<order uuid>-<step>`).
    let uuid_key = "souk-41111111-1111-7118-8111-111111111111-authorize";
    assert!(souk_pipelines::pan::looks_like_pan("41111111-1111-7118"), "the case this guards");
    let (got, _) = alpha(&s, "/payments", Some(uuid_key), &charge("tok_ok")).await?;
    assert!(got < 400, "a key containing digit groups is accepted: {got}");
    let (status, body) =
        alpha(&s, "/payments/pay_missing/capture", Some("k8"), r#"{"amount_minor": 1}"#).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("unknown_payment")));
    let (status, body) = beta(
        &s,
        "/charges",
        "b1",
        r#"{"source": "tok_ok", "amount": 1, "currency_code": "EUR", "pan": "4111111111111111"}"#,
    )
    .await?;
    assert_eq!((status, body["error_code"].as_str()), (422, Some("CARD_NUMBER_REFUSED")));
    Ok(())
}

#[tokio::test]
async fn credentials_are_required_when_set() -> anyhow::Result<()> {
    let s = sandbox(Some("k3y-k3y-k3y-k3y-k3y"), Faults::default()).await?;
    let (status, _) = alpha(&s, "/payments", Some("k"), &charge("tok_ok")).await?;
    assert_eq!(status, 401);
    let r = reqwest::Client::new()
        .post(format!("{}/alpha/v1/payments", s.url()))
        .bearer_auth("k3y-k3y-k3y-k3y-k3y")
        .header("idempotency-key", "k")
        .body(charge("tok_ok"))
        .send()
        .await?;
    assert_eq!(read(r).await?.0, 201);
    let faults = reqwest::Client::new().put(format!("{}/admin/faults", s.url())).body("{}").send().await?;
    assert_eq!(read(faults).await?.0, 401, "the admin endpoint too");
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("sandbox.key");
    let key = souk_sandbox::credentials::load_or_generate(&path)?;
    assert_eq!(souk_sandbox::credentials::load_or_generate(&path)?, key, "generated once");
    Ok(())
}

#[tokio::test]
async fn faults_reset_connections_and_lose_answers_of_processed_charges() -> anyhow::Result<()> {
    let s = sandbox(None, Faults { reset_rate: 1.0, ..Faults::default() }).await?;
    let reset = reqwest::Client::new()
        .post(format!("{}/alpha/v1/payments", s.url()))
        .header("idempotency-key", "r1")
        .body(charge("tok_ok"))
        .send()
        .await;
    assert!(reset.is_err(), "reset: {reset:?}");
    assert_eq!(s.effects("r1"), 0, "a reset comes before processing");
    // Changed at run time through the admin endpoint.
    let put = reqwest::Client::new()
        .put(format!("{}/admin/faults", s.url()))
        .body(r#"{"lost-rate": 1.0, "seed": 5}"#)
        .send()
        .await?;
    assert_eq!(read(put).await?.0, 200);
    let lost = reqwest::Client::new()
        .post(format!("{}/alpha/v1/payments", s.url()))
        .header("idempotency-key", "l1")
        .body(charge("tok_ok"))
        .send()
        .await;
    assert!(lost.is_err(), "lost answer: {lost:?}");
    assert_eq!(s.effects("l1"), 1, "charged, answer lost");
    let (status, body) = read(reqwest::get(format!("{}/alpha/v1/idempotency/l1", s.url())).await?).await?;
    assert_eq!((status, body["payment"]["status"].as_str()), (200, Some("authorized")), "found by key");
    let bad = reqwest::Client::new()
        .put(format!("{}/admin/faults", s.url()))
        .body(r#"{"error-rate": 3}"#)
        .send()
        .await?;
    let (status, body) = read(bad).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_faults")));
    let page = reqwest::get(s.url()).await?.text().await?;
    assert!(page.contains("SANDBOX") && page.contains("tok_soft_decline"), "{page}");
    Ok(())
}
