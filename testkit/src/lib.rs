//! # souk-testkit — real servers for tests, one per test
//!
//! [`NatsServer`] starts a real nats-server 2.15.x with JetStream (file storage in a
//! temp dir, `sync_interval: always`) on a free port it reads back from the server's
//! ports file — nothing listens on a fixed port — and can be killed and restarted on
//! the same store. [`TestDb`] creates a fresh Postgres database per test and drops it
//! afterwards. Both find their servers the way `scripts/prepare` left them (see
//! `SOUK_NATS_SERVER_BIN` and `SOUK_TEST_DATABASE_URL`). [`Stack`] puts a whole souk
//! node (ingress, pools, relay) on top of both, wired exactly as `souk dev` wires it.
//! [`PgServer`] is a whole private Postgres server, for the tests that crash it.

mod db;
mod nats;
mod pg_server;
mod stack;

pub use db::TestDb;
pub use nats::{NatsServer, nats_server_bin};
pub use pg_server::PgServer;
pub use stack::{Stack, StackOptions, order_body, test_topology};

/// Wait until `check` returns `Some`, polling every 20 ms, for at most `timeout`.
/// Tests use this instead of sleeps: it returns as soon as the condition holds.
pub async fn eventually<T, F, Fut>(timeout: std::time::Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
