//! The servers a run measures against: its own nats-server child (durable profile:
//! file storage, `sync_interval: always`) and its own fresh Postgres database, both
//! removed at the end — also when the run fails (best effort).

use anyhow::Context;
use std::path::{Path, PathBuf};
use tokio::process::Child;

/// Where the Postgres server is when nothing says otherwise.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The Postgres server a run creates its database on: `--database-url`, else
/// `SOUK_TEST_DATABASE_URL`, else `DATABASE_URL`, else [`DEFAULT_DATABASE_URL`].
pub fn server_url(args: &crate::Args) -> String {
    args.database_url
        .clone()
        .or_else(|| std::env::var("SOUK_TEST_DATABASE_URL").ok())
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.into())
}

/// A nats-server child with its store in a temporary directory.
#[derive(Debug)]
pub struct Nats {
    /// Killed when dropped (a panic or early return still stops it).
    child: Child,
    pub url: String,
    /// Removed when dropped, after the child.
    dir: tempfile::TempDir,
}

impl Nats {
    /// Start `bin` with its store in a fresh directory under `parent` (the system temp
    /// directory by default: put it on the disk whose fsyncs you want to measure).
    pub async fn start(bin: &Path, parent: Option<&Path>) -> anyhow::Result<Nats> {
        let dir = match parent {
            Some(p) => tempfile::Builder::new().prefix("souk-bench-").tempdir_in(p),
            None => tempfile::Builder::new().prefix("souk-bench-").tempdir(),
        }
        .context("creating the nats-server store directory")?;
        let (child, port) = souk_topologies::local_server::spawn(bin, dir.path(), None).await?;
        Ok(Nats { child, url: format!("nats://127.0.0.1:{port}"), dir })
    }

    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Stop it as `souk dev` does: SIGTERM, then SIGKILL after 10 s.
    pub async fn stop(self) {
        souk_topologies::local_server::stop(self.child).await;
    }
}

/// The nats-server binary: `--nats-server`, else `SOUK_NATS_SERVER_BIN`, else
/// `.souk/bin/nats-server` above the working directory or this crate.
pub fn nats_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = flag {
        return Ok(p.to_path_buf());
    }
    let cwd = std::env::current_dir()?;
    souk_topologies::local_server::find_binary(&cwd)
        .or_else(|| souk_topologies::local_server::find_binary(Path::new(env!("CARGO_MANIFEST_DIR"))))
        .context("nats-server 2.15.x not found: pass --nats-server, set SOUK_NATS_SERVER_BIN, or run scripts/prepare")
}

/// A database created for this run.
#[derive(Debug)]
pub struct Database {
    pub name: String,
    /// URL of the run's database.
    pub url: String,
}

impl Database {
    /// Create `souk_bench_<uuid>` on the server of `server_url` (whatever database that
    /// URL names is not touched).
    pub async fn create(server_url: &str) -> anyhow::Result<Database> {
        let name = format!("souk_bench_{}", uuid::Uuid::new_v4().simple());
        let url = with_database(server_url, &name);
        souk_stores::postgres::ensure_database(&url)
            .await
            .with_context(|| format!("creating a database on Postgres at {}", redact(server_url)))?;
        Ok(Database { name, url })
    }

    /// Drop the database, disconnecting whatever still uses it.
    pub async fn drop(self) -> anyhow::Result<()> {
        Ok(souk_stores::postgres::drop_database(&self.url).await?)
    }
}

/// `url` with its database (the path) replaced by `name`; the query string is kept.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let authority_end = base[authority_start..].find('/').map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

pub use souk_stores::postgres::redact;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped_and_the_rest_kept() {
        assert_eq!(with_database("postgres://u@h:5432/souk", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            with_database("postgresql://u:p@h/db?sslmode=disable", "x"),
            "postgresql://u:p@h/x?sslmode=disable"
        );
    }
}
