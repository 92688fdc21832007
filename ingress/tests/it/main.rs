//! The ingress router against a real nats-server and Postgres, without workers: what
//! reaches JetStream is exactly what a request caused.

mod bad_input;
mod observability;

use axum::{Router, body::Body, http::Request};
use souk_ingress::{Claims, Ingress, IngressOptions, IntakeOptions, Keys, Role};
use souk_testkit::{NatsServer, TestDb, test_topology};
use souk_topologies::apply::Mode;
use std::time::Duration;
use tower::ServiceExt;

pub struct Env {
    pub _nats: NatsServer,
    pub db: TestDb,
    pub js: async_nats::jetstream::Context,
    pub keys: Keys,
    pub ingress: Ingress,
}

pub async fn env(metrics: Option<metrics_exporter_prometheus::PrometheusHandle>) -> anyhow::Result<Env> {
    env_limited(metrics, None).await
}

pub async fn env_limited(
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    rate_limit: Option<souk_ingress::RateLimit>,
) -> anyhow::Result<Env> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    souk_topologies::apply::apply(&js, &test_topology()?, Mode::Apply).await?;
    let keys = Keys::from_secret(&[42u8; 32]);
    let ingress = Ingress::build(IngressOptions {
        keys: keys.clone(),
        pool: db.pool.clone(),
        nats: client,
        write_timeout: Duration::from_millis(1500),
        intake: IntakeOptions::default(),
        rate_limit,
        metrics,
    });
    Ok(Env { _nats: nats, db, js, keys, ingress })
}

impl Env {
    pub fn router(&self) -> Router {
        self.ingress.router()
    }

    pub fn token(&self, roles: &[Role]) -> String {
        self.keys.mint(&Claims::new("u1", "t1", roles.to_vec(), Duration::from_secs(600)))
    }

    pub async fn commands_published(&self) -> anyhow::Result<u64> {
        Ok(self.js.get_stream("CMD").await?.get_info().await?.state.messages)
    }

    pub async fn keys_claimed(&self) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar("select count(*) from idempotency_keys").fetch_one(&self.db.pool).await?)
    }
}

/// Send one request; returns status, content type (empty when there is none) and body:
/// `Null` when empty, parsed for a JSON content type (an error if it does not parse: a
/// broken body must not read as "no such field"), the text otherwise.
pub async fn send(
    router: Router,
    request: Request<Body>,
) -> anyhow::Result<(u16, String, serde_json::Value)> {
    let response = router.oneshot(request).await?;
    let status = response.status().as_u16();
    let content_type = match response.headers().get("content-type") {
        Some(v) => v.to_str()?.to_owned(),
        None => String::new(),
    };
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else if content_type.starts_with("application/json")
        || content_type.starts_with("application/problem+json")
    {
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "a {status} response's JSON body does not parse ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })?
    } else {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    Ok((status, content_type, body))
}
