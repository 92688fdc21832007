//! A local nats-server child process with durable JetStream, for `souk dev` and tests.
//!
//! The server gets a config file with file storage under `dir`, `sync_interval: always`
//! (each write fsynced before it is acknowledged: the default 2-minute interval can
//! lose acknowledged writes on power loss) and a ports file, from which the port it
//! chose is read back — nothing is bound to a fixed port unless asked.

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};

use crate::{Error, Result};

/// Find the nats-server binary: `SOUK_NATS_SERVER_BIN`, else `.souk/bin/nats-server`
/// under `root` or any of its ancestors (where `scripts/prepare` installs it).
pub fn find_binary(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SOUK_NATS_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    root.ancestors().map(|d| d.join(".souk/bin/nats-server")).find(|p| p.exists())
}

/// Start nats-server with its store in `dir`, on `port` (or a free one), and wait until
/// it listens. Returns the child (killed when dropped) and its port.
pub async fn spawn(bin: &Path, dir: &Path, port: Option<u16>) -> Result<(Child, u16)> {
    let io = |e: std::io::Error| Error::Nats(format!("nats-server in {}: {e}", dir.display()));
    let ports_dir = dir.join("ports");
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).map_err(io)?;
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
    )
    .map_err(io)?;
    let log = std::fs::File::create(dir.join("nats-server.log")).map_err(io)?;
    let mut child = Command::new(bin)
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        // Its own process group: Ctrl-C in a terminal signals the whole foreground group,
        // and the server must outlive souk's drain (acks, relay, last publishes), then
        // be stopped by `stop`, not die with everyone else at the first signal.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Nats(format!("starting {}: {e}", bin.display())))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().map_err(io)? {
            return Err(Error::Nats(format!(
                "nats-server exited at start ({status}); see {}",
                dir.join("nats-server.log").display()
            )));
        }
        if let Some(port) = read_port(&ports_dir) {
            return Ok((child, port));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Nats("nats-server did not report its port within 30s".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The client port from the `<name>_<pid>.ports` file nats-server writes once it listens.
fn read_port(dir: &Path) -> Option<u16> {
    read_url(dir)?.rsplit(':').next()?.parse().ok()
}

/// The client URL (`nats://host:port`) a nats-server started by [`spawn`] in `dir`
/// reported, if it is listening: how other commands find a running `souk dev`.
pub fn running_url(dir: &Path) -> Option<String> {
    read_url(&dir.join("ports"))
}

fn read_url(ports_dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(ports_dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let ports: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok()?;
    Some(ports.get("nats")?.get(0)?.as_str()?.to_owned())
}

/// Stop a server started by [`spawn`]: SIGTERM, so it closes its store cleanly, then
/// SIGKILL if it has not exited within 10 s.
pub async fn stop(mut child: Child) {
    if let Some(pid) = child.id() {
        // Our own child, by pid; the `kill` command saves a libc dependency for one signal.
        let term = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        if term.is_ok() && tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
