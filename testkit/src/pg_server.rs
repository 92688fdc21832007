//! A private Postgres server per test, for tests that crash and restart it.
//!
//! Most tests share the machine's Postgres (one database each, see [`crate::TestDb`]).
//! A test that kills Postgres cannot do that to a server other tests are using, so this
//! starts a throwaway cluster: `initdb` into a temporary directory, `postgres` on a
//! free port, trust authentication on 127.0.0.1 only. [`PgServer::crash`] is an
//! immediate shutdown (`pg_ctl stop -m immediate`: no checkpoint, crash recovery on
//! the next start), the closest a test gets to pulling the plug.
//!
//! The server binaries come from `SOUK_PG_BIN_DIR`, else the newest
//! `/usr/lib/postgresql/<version>/bin` (Debian's layout, which `scripts/prepare`
//! installs when no Postgres is reachable). Postgres refuses to run as root, so as
//! root every server command runs as the `postgres` user through `runuser`.

use anyhow::{Context, bail};
use sqlx::{Connection, PgConnection};
use std::{path::PathBuf, process::Stdio, time::Duration};
use tokio::process::{Child, Command};

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
fn bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("SOUK_PG_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no Postgres server binaries (initdb) under /usr/lib/postgresql: install postgresql, or set SOUK_PG_BIN_DIR",
    )
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A private Postgres server, removed (killed, its directory deleted) on drop.
pub struct PgServer {
    bin: PathBuf,
    as_postgres: bool,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl std::fmt::Debug for PgServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgServer").field("port", &self.port).finish()
    }
}

impl PgServer {
    /// `initdb` a fresh cluster and start it on a free port.
    pub async fn start() -> anyhow::Result<PgServer> {
        let bin = bin_dir()?;
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new().prefix("souk-pg-").tempdir()?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:").arg(dir.path())).await?;
        }
        let port = free_port()?;
        let mut server = PgServer { bin, as_postgres, dir, port, child: None };
        let data = server.data_dir();
        let mut init = server.command("initdb");
        run(init.arg("-D").arg(&data).args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]))
            .await?;
        server.spawn().await?;
        Ok(server)
    }

    /// The server's stderr (outside the data dir, so `initdb` finds that empty).
    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`, for [`crate::TestDb::create_on`].
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A server command, as the `postgres` user when we are root.
    fn std_command(&self, program: &str) -> std::process::Command {
        let path = self.bin.join(program);
        let mut c = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            std::process::Command::new(path)
        };
        c.stdin(Stdio::null());
        c
    }

    /// [`std_command`](Self::std_command) for tokio, killed if dropped.
    fn command(&self, program: &str) -> Command {
        let mut c = Command::from(self.std_command(program));
        c.kill_on_drop(true);
        c
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", self.dir.path().display()))
            // Durable as the real thing: crash recovery is what the tests exercise.
            .args(["-c", "fsync=on", "-c", "synchronous_commit=on", "-c", "max_connections=100"])
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?);
        let mut child = postgres.spawn().context("starting postgres")?;
        let log = || std::fs::read_to_string(self.log_path()).unwrap_or_default();
        // Ready when it accepts connections (recovery, if any, is done by then).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("postgres exited at start with {status}; its log:\n{}", log());
            }
            if let Ok(conn) = PgConnection::connect(&self.url()).await {
                conn.close().await.ok();
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("postgres did not accept connections within 30 s; its log:\n{}", log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.child = Some(child);
        Ok(())
    }

    /// Crash it: immediate shutdown, every connection cut, no checkpoint.
    pub async fn crash(&mut self) -> anyhow::Result<()> {
        let mut stop = self.command("pg_ctl");
        run(stop.arg("-D").arg(self.data_dir()).args(["stop", "-m", "immediate", "-w"])).await?;
        if let Some(mut child) = self.child.take() {
            child.wait().await?;
        }
        Ok(())
    }

    /// Start it again on the same port and data (after [`crash`](Self::crash)): crash
    /// recovery replays the WAL before it accepts connections.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        if self.child.is_some() {
            self.crash().await?;
        }
        self.spawn().await
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            // An immediate stop, so no postgres outlives its test (killing `runuser`
            // would not reach it).
            let _ = self
                .std_command("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["stop", "-m", "immediate"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

async fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command.stdout(Stdio::piped()).stderr(Stdio::piped()).output().await?;
    if !out.status.success() {
        bail!(
            "{:?} failed with {}: {}",
            command.as_std().get_program(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A port nothing listens on now (the OS's choice; the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
