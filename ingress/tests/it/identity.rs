//! Tokens and the identities they carry (issue 8, items 8 and 12): what cannot be
//! stored, put in a header or trusted is refused at authentication with 401, and one
//! poisonous claim never fails the requests batched with it.

use axum::{body::Body, http::Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use souk_ingress::{Claims, Role};
use souk_stores::postgres::idempotency::{self, Claim};
use std::time::Duration;

use crate::{env, send};

const VALID: &str = r#"{"lines":[{"sku":"A-1","quantity":1}],"payment_token":"tok_ok"}"#;

fn post(token: &str, key: &str) -> anyhow::Result<Request<Body>> {
    Ok(Request::post("/v1/orders")
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {token}"))
        .header("idempotency-key", key)
        .body(Body::from(VALID))?)
}

/// Each of these once got through: NUL and 3,000-character subjects failed the shared
/// claim statement (503, retried for ever), a CR/LF tenant panicked the ingress when it
/// became a NATS header, and empty ones were accepted and dead-lettered later.
#[tokio::test]
async fn unusable_identities_get_401_and_touch_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    let cases = [
        ("NUL in sub", "u\0x", "t1"),
        ("3,000-character sub", &*"u".repeat(3000), "t1"),
        ("CR/LF in tenant", "u1", "t1\r\nsouk-tenant: t2"),
        ("LF in tenant", "u1", "t1\n"),
        ("tab in sub", "u\t1", "t1"),
        ("empty tenant", "u1", ""),
        ("empty sub", "", "t1"),
        ("blank tenant", "u1", "  "),
        ("129-byte tenant", "u1", &*"t".repeat(129)),
    ];
    for (name, sub, tenant) in cases {
        let token = env.keys.mint(&Claims::new(sub, tenant, vec![Role::Buyer], Duration::from_secs(60)));
        let (status, _, problem) = send(env.router(), post(&token, "k-1")?).await?;
        assert_eq!(status, 401, "{name}: {problem}");
        assert_eq!(problem["type"], "https://souk.dev/problems/unauthorized", "{name}");
        let read = Request::get(format!("/v1/orders/{}", uuid::Uuid::now_v7()))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())?;
        assert_eq!(send(env.router(), read).await?.0, 401, "{name}: reads too");
    }
    assert_eq!(env.keys_claimed().await?, 0);
    assert_eq!(env.commands_published().await?, 0);
    // The longest and widest identity that is accepted still goes all the way (its
    // tenant sells what the order asks for).
    let a1 = souk_testkit::catalog::for_sale("A-1", "seller-1", 100, 1_000);
    souk_testkit::catalog::seed(&env.db.pool, &"t".repeat(128), &[a1]).await?;
    let edge = env.keys.mint(&Claims::new(
        &"ü".repeat(64),
        &"t".repeat(128),
        vec![Role::Buyer],
        Duration::from_secs(60),
    ));
    assert_eq!(send(env.router(), post(&edge, "k-edge")?).await?.0, 202);
    Ok(())
}

/// The repro: 200 innocent orders in flight beside poisonous principals. Before, most
/// innocent orders got 503 because they shared a claim batch with a poison; now the
/// poison is refused at the door and every innocent order is accepted.
#[tokio::test]
async fn poisonous_principals_do_not_fail_innocent_orders() -> anyhow::Result<()> {
    let env = env().await?;
    let poison =
        |sub: &str| env.keys.mint(&Claims::new(sub, "t1", vec![Role::Buyer], Duration::from_secs(60)));
    let random: String = (0..94).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect();
    let (nul, long) = (poison("p\0"), poison(&random[..3000]));
    let innocent: Vec<String> = (0..20)
        .map(|i| {
            env.keys.mint(&Claims::new(&format!("u{i}"), "t1", vec![Role::Buyer], Duration::from_secs(60)))
        })
        .collect();
    let requests = (0..220).map(|i| {
        let (token, expect) = match i % 11 {
            0 => (nul.clone(), 401),
            5 => (long.clone(), 401),
            _ => (innocent[i % 20].clone(), 202),
        };
        let router = env.router();
        async move {
            let (status, _, body) = send(router, post(&token, &format!("k-{i}"))?).await?;
            anyhow::ensure!(status == expect, "request {i}: {status} {body}");
            anyhow::Ok(())
        }
    });
    for answer in futures::future::join_all(requests).await {
        answer?;
    }
    assert_eq!(env.keys_claimed().await?, 180);
    Ok(())
}

/// A claim batch Postgres refuses because of one claim is retried without it: the
/// others get their records, the poison alone its error.
#[tokio::test]
async fn a_claim_batch_refused_for_one_claim_retries_the_others() -> anyhow::Result<()> {
    let env = env().await?;
    let claim = |principal: &str, key: &str| Claim {
        tenant: "t1".into(),
        principal: principal.into(),
        key: key.into(),
        request_hash: vec![1, 2, 3],
        order_id: uuid::Uuid::now_v7(),
    };
    let mut batch: Vec<Claim> = (0..30).map(|i| claim(&format!("u{i}"), "k")).collect();
    batch.insert(7, claim("nul\0", "k"));
    // Random, so that Postgres cannot compress it under the index's row size limit.
    let long: String =
        (0..94).map(|_| uuid::Uuid::new_v4().simple().to_string()).collect::<String>()[..3000].into();
    batch.insert(20, claim(&long, "k"));
    batch.push(claim("u3", "k")); // a repeat of a key in the batch: shares its record
    assert!(
        idempotency::claim(&env.db.pool, &batch).await.is_err(),
        "the premise: one statement fails for all"
    );

    let records = idempotency::claim_isolating(&env.db.pool, &batch).await?;
    assert_eq!(records.len(), batch.len());
    for (i, (c, r)) in batch.iter().zip(&records).enumerate() {
        let poison = c.principal.contains('\0') || c.principal.len() > 100;
        assert_eq!(r.is_err(), poison, "claim {i}");
    }
    let u3: Vec<_> = batch.iter().zip(&records).filter(|(c, _)| c.principal == "u3").collect();
    let (first, repeat) = (
        u3[0].1.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?,
        u3[1].1.as_ref().map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    assert_eq!(first.order_id, repeat.order_id, "one key, one order");
    assert!(first.fresh != repeat.fresh, "exactly one of them created the record");
    assert_eq!(env.keys_claimed().await?, 30);
    Ok(())
}

fn token_with(header: &Header, claims: &Claims) -> anyhow::Result<String> {
    Ok(jsonwebtoken::encode(header, claims, &EncodingKey::from_secret(&[42u8; 32]))?)
}

/// Signed with the right key, and still refused: not valid yet, a critical header
/// parameter we do not understand, no key id, an unknown key id.
#[tokio::test]
async fn tokens_not_yet_valid_or_with_unknown_critical_parameters_are_refused() -> anyhow::Result<()> {
    let env = env().await?;
    let claims = Claims::new("u1", "t1", vec![Role::Buyer], Duration::from_secs(3600));
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("default".into());
    // The control: this header and key make a good token.
    assert_eq!(send(env.router(), post(&token_with(&header, &claims)?, "k-ok")?).await?.0, 202);

    let mut future = claims.clone();
    future.nbf = Some(jsonwebtoken::get_current_timestamp() + 600);
    let mut crit = header.clone();
    crit.crit = Some(vec!["x-souk-unknown".into()]);
    crit.extras.insert("x-souk-unknown", "must be understood");
    let mut no_kid = header.clone();
    no_kid.kid = None;
    let mut other_kid = header.clone();
    other_kid.kid = Some("someone-else".into());
    let cases = [
        ("nbf in the future", token_with(&header, &future)?),
        ("unknown crit parameter", token_with(&crit, &claims)?),
        ("no kid", token_with(&no_kid, &claims)?),
        ("unknown kid", token_with(&other_kid, &claims)?),
    ];
    for (name, token) in cases {
        let (status, _, problem) = send(env.router(), post(&token, "k-bad")?).await?;
        assert_eq!(status, 401, "{name}: {problem}");
    }
    let mut past = claims;
    past.nbf = Some(jsonwebtoken::get_current_timestamp() - 60);
    assert_eq!(send(env.router(), post(&token_with(&header, &past)?, "k-past")?).await?.0, 202, "nbf passed");
    assert_eq!(env.commands_published().await?, 2);
    Ok(())
}
