//! A private nats-server per test.

use anyhow::{Context, bail};
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};

/// The nats-server binary: `SOUK_NATS_SERVER_BIN`, else `.souk/bin/nats-server` in the
/// workspace (where `scripts/prepare` installs it).
pub fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("SOUK_NATS_SERVER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.souk/bin/nats-server");
    if p.exists() {
        return Ok(p);
    }
    bail!("nats-server 2.15.x not found: run scripts/prepare (or set SOUK_NATS_SERVER_BIN)")
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

async fn spawn(dir: &Path, port: Option<u16>) -> anyhow::Result<(Child, u16)> {
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir)?;
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nports_file_dir: {ports:?}\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n",
            port = port.map_or(-1, i32::from),
            ports = ports_dir.display().to_string(),
            store = dir.join("jetstream").display().to_string(),
        ),
    )?;
    let bin = nats_server_bin()?;
    let mut child = Command::new(&bin)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    // The server writes <name>_<pid>.ports once it listens.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait()? {
            bail!("nats-server exited at start: {status}");
        }
        if let Some(port) = read_port(&ports_dir) {
            return Ok((child, port));
        }
        if tokio::time::Instant::now() > deadline {
            bail!("nats-server did not report its port within 20s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn read_port(dir: &Path) -> Option<u16> {
    let entry = std::fs::read_dir(dir).ok()?.flatten().find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let text = std::fs::read_to_string(entry.path()).ok()?;
    let ports: serde_json::Value = serde_json::from_str(&text).ok()?;
    let url = ports.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}
