//! The ingress router against a real nats-server and Postgres, without workers: what
//! reaches JetStream is exactly what a request caused.

mod bad_input;
mod cart;
mod checkout;
mod edge;
mod identity;
mod observability;
mod openapi;
mod order_read;
mod search;
mod stock_write;

use axum::{Router, body::Body, http::Request};
use souk_ingress::{Claims, ConnectionLimits, Ingress, IngressOptions, IntakeOptions, Keys, Role};
use souk_testkit::{NatsServer, TestDb, catalog::for_sale, test_topology};
use souk_topologies::apply::Mode;
use std::{net::SocketAddr, time::Duration};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

pub struct Env {
    pub nats: NatsServer,
    pub db: TestDb,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub keys: Keys,
    router: Router,
    ingress: Option<Ingress>,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub async fn env() -> anyhow::Result<Env> {
    env_with(None, ConnectionLimits::default()).await
}

pub async fn env_with(
    rate_limit: Option<souk_ingress::RateLimit>,
    connections: ConnectionLimits,
) -> anyhow::Result<Env> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    souk_topologies::apply::apply(&js, &test_topology()?, Mode::Apply).await?;
    // What the tests order: tenant t1's catalog, as the catalog store writes it.
    souk_testkit::catalog::seed(
        &db.pool,
        "t1",
        &[for_sale("A", "seller-1", 100, 1_000), for_sale("A-1", "seller-1", 100, 1_000)],
    )
    .await?;
    let keys = Keys::from_secret(&[42u8; 32]);
    let ingress = Ingress::build(IngressOptions {
        keys: keys.clone(),
        pool: db.pool.clone(),
        nats: client.clone(),
        write_timeout: Duration::from_millis(1500),
        intake: IntakeOptions::default(),
        rate_limit,
        connections,
        search: None,
        public_tenant: "t1".into(),
    });
    let router = ingress.router();
    Ok(Env { nats, db, client, js, keys, router, ingress: Some(ingress), stop: CancellationToken::new() })
}

impl Env {
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Serve the ingress on a socket (127.0.0.1, a free port) until the env is dropped.
    pub async fn listen(&mut self) -> anyhow::Result<SocketAddr> {
        let ingress = self.ingress.take().ok_or_else(|| anyhow::anyhow!("already listening"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(ingress.serve(listener, self.stop.clone()));
        Ok(addr)
    }

    pub fn token(&self, roles: &[Role]) -> String {
        self.keys.mint(&Claims::new("u1", "t1", roles.to_vec(), Duration::from_secs(600)))
    }

    pub async fn commands_published(&self) -> anyhow::Result<u64> {
        Ok(self.js.get_stream("CMD").await?.get_info().await?.state.messages)
    }

    /// Every command in CMD, in order: (subject, schema header, payload).
    pub async fn commands(&self) -> anyhow::Result<Vec<(String, String, bytes::Bytes)>> {
        let stream = self.js.get_stream("CMD").await?;
        let last = stream.get_info().await?.state.last_sequence;
        let mut out = Vec::new();
        for seq in 1..=last {
            let m = stream.get_raw_message(seq).await?;
            let schema = m.headers.get("souk-schema").map(|v| v.as_str().to_owned()).unwrap_or_default();
            out.push((m.subject.to_string(), schema, m.payload));
        }
        Ok(out)
    }

    /// Every `PlaceOrder` in CMD, in order (an error if one does not decode).
    pub async fn orders_published(&self) -> anyhow::Result<Vec<souk_pipelines::orders::PlaceOrder>> {
        let mut orders = Vec::new();
        for (subject, schema, payload) in self.commands().await? {
            if subject == souk_pipelines::subjects::ORDERS_PLACE {
                orders.push(souk_pipelines::decode(Some(&schema), &payload)?);
            }
        }
        Ok(orders)
    }

    /// Send `method path` as `token`'s caller with an optional JSON body and key.
    pub async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let mut request =
            Request::builder().method(method).uri(path).header("authorization", format!("Bearer {token}"));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let request = match body {
            Some(body) => {
                request.header("content-type", "application/json").body(Body::from(body.to_string()))?
            }
            None => request.body(Body::empty())?,
        };
        let (status, _, body) = send(self.router(), request).await?;
        Ok((status, body))
    }

    /// `PUT /v1/cart/items/{sku}` with `{"quantity": quantity}`.
    pub async fn put_item(
        &self,
        token: &str,
        sku: &str,
        quantity: i64,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let path = format!("/v1/cart/items/{sku}");
        self.call(token, "PUT", &path, None, Some(serde_json::json!({"quantity": quantity}))).await
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

/// `GET path` over a raw socket (`Connection: close`); returns the status and body.
pub async fn raw_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut socket = tokio::net::TcpStream::connect(addr).await?;
    socket
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: souk\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(30), socket.read_to_string(&mut response)).await??;
    parse_response(&response)
}

/// Status and body of a raw HTTP/1.1 response.
pub fn parse_response(response: &str) -> anyhow::Result<(u16, String)> {
    let status = response
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("not an HTTP response: {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}
