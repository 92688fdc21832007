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
//!
//! Helpers here never turn a failed read into a plausible value (0 dead letters, an
//! empty body): they return the error, and [`eventually`] reports the last one when it
//! gives up. Crash tests assert exact counts once the system is [`quiescent`]; a test
//! waiting for one consumer to finish waits until it is [`drained`].

pub mod catalog;
mod db;
mod drained;
mod nats;
mod pg_server;
mod quiescent;
mod stack;

pub use db::TestDb;
pub use drained::drained;
pub use nats::{NatsServer, nats_server_bin};
pub use pg_server::PgServer;
pub use quiescent::quiescent;
pub use stack::{
    PUBLIC_TENANT, Stack, StackOptions, TEST_ACK_WAIT, order_body, read_body, shipped_topology,
    test_job_tuning, test_payment_retry, test_topology, test_topology_acking, test_topology_running,
    test_topology_toml,
};

/// What an [`eventually`] check answers: `Option<T>` (`None`: not yet), or
/// `anyhow::Result<Option<T>>` when reading the state can fail.
pub trait Check {
    /// What the check yields once it holds.
    type Value;
    /// As a result: `Err` when reading the state failed.
    fn into_result(self) -> anyhow::Result<Option<Self::Value>>;
}

impl<T> Check for Option<T> {
    type Value = T;
    fn into_result(self) -> anyhow::Result<Option<T>> {
        Ok(self)
    }
}

impl<T> Check for anyhow::Result<Option<T>> {
    type Value = T;
    fn into_result(self) -> anyhow::Result<Option<T>> {
        self
    }
}

/// Wait until `check` yields a value, polling every 20 ms, for at most `timeout`.
/// Tests use this instead of sleeps: it returns as soon as the condition holds.
///
/// A check that fails (`Err`) is polled again — a server a test restarts is down for a
/// while — but the last error is part of the timeout's message, so a check that could
/// never read anything fails with the reason instead of a bare "not met".
pub async fn eventually<F, Fut>(
    timeout: std::time::Duration,
    mut check: F,
) -> anyhow::Result<<Fut::Output as Check>::Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future,
    Fut::Output: Check,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last_error = match check().await.into_result() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("condition not met within {timeout:?}; the last check failed")),
                None => anyhow::anyhow!("condition not met within {timeout:?}"),
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
