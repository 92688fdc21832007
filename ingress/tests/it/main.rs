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

/// Send one request; returns status, content type and body.
pub async fn send(
    router: Router,
    request: Request<Body>,
) -> anyhow::Result<(u16, String, serde_json::Value)> {
    let response = router.oneshot(request).await?;
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await?;
    Ok((status, content_type, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
}
