//! A private nats-server per test.

use anyhow::Context;
use souk_topologies::local_server;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use tokio::process::Child;

/// The nats-server binary: `SOUK_NATS_SERVER_BIN`, else `.souk/bin/nats-server` in the
/// workspace (where `scripts/prepare` installs it).
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    local_server::find_binary(Path::new(env!("CARGO_MANIFEST_DIR")))
        .context("nats-server 2.15.x not found: run scripts/prepare (or set SOUK_NATS_SERVER_BIN)")
}

async fn spawn(dir: &Path, port: Option<u16>) -> anyhow::Result<(Child, u16)> {
    Ok(local_server::spawn(&nats_server_bin()?, dir, port).await?)
}

/// A running nats-server with JetStream, owned by one test.
pub struct NatsServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer").field("port", &self.port).finish()
    }
}

impl NatsServer {
    /// Start a server on a free port with an empty store.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let (child, port) = spawn(dir.path(), None).await?;
        Ok(NatsServer { child: Some(child), dir, port })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client connected to this server (retrying while it is down).
    pub async fn client(&self) -> anyhow::Result<async_nats::Client> {
        Ok(async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.url())
            .await?)
    }

    /// Kill the server with SIGKILL: no clean shutdown, no flush.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Start the server again on the same port and store (after [`kill`](Self::kill)).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        let (child, _) = spawn(self.dir.path(), Some(self.port)).await?;
        self.child = Some(child);
        Ok(())
    }
}
