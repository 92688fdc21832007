//! A private Postgres database per test.

use sqlx::{ConnectOptions, PgPool, postgres::PgConnectOptions};
use std::str::FromStr;

/// The server tests create their databases on: `SOUK_TEST_DATABASE_URL`, else
/// `DATABASE_URL`, else the local default.
fn admin_url() -> String {
    std::env::var("SOUK_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh, empty database, dropped when this value is dropped.
pub struct TestDb {
    /// Connection URL of the test database.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
    name: String,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb").field("name", &self.name).finish()
    }
}

impl TestDb {
    /// Create `souk_test_<random>` on the shared test server.
    pub async fn create() -> anyhow::Result<Self> {
        Self::create_on(&admin_url()).await
    }

    /// Create `souk_test_<random>` on the server `admin_url` points at (for example a
    /// [`crate::PgServer`]).
    pub async fn create_on(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("souk_test_{}", uuid::Uuid::new_v4().simple());
        let options = PgConnectOptions::from_str(admin_url)?.database(&name);
        let url = options.to_url_lossy().to_string();
        souk_stores::postgres::ensure_database(&url).await?;
        let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect_with(options).await?;
        Ok(TestDb { url, pool, name })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let url = self.url.clone();
        // Drop runs outside async context; use a short-lived runtime on its own thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            rt.block_on(souk_stores::postgres::drop_database(&url)).ok()
        })
        .join();
    }
}
