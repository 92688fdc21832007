//! The search store conformance suite: every behaviour is one generic body, run against
//! tantivy (a tempdir) always and against OpenSearch when `SOUK_OPENSEARCH_URL` is set
//! (the OpenSearch variants are ignored otherwise; `scripts/test` runs them with
//! `--run-ignored` when the variable is set). Each OpenSearch test uses its own index
//! prefix, so tests never share state.

mod concurrency;
mod paging;
mod queries;
mod rebuild;
mod versions;

use souk_stores::search::fixture;
use souk_stores::search::opensearch::{OpenSearchOptions, OpenSearchStore};
use souk_stores::search::tantivy::{TantivyOptions, TantivyStore};
use souk_stores::search::{IndexOp, SearchRequest, SearchResults, SearchStore};
use std::sync::Arc;

/// Where a test's store lives, so it can be opened again (a restart).
pub enum Harness {
    Tantivy { dir: tempfile::TempDir, options: TantivyOptions },
    OpenSearch { url: String, prefix: String },
}

impl Harness {
    pub fn tantivy() -> anyhow::Result<Harness> {
        Self::tantivy_with(TantivyOptions::default())
    }

    pub fn tantivy_with(options: TantivyOptions) -> anyhow::Result<Harness> {
        Ok(Harness::Tantivy { dir: tempfile::tempdir()?, options })
    }

    pub fn opensearch(test: &str) -> anyhow::Result<Harness> {
        let url = std::env::var("SOUK_OPENSEARCH_URL")
            .map_err(|_| anyhow::anyhow!("SOUK_OPENSEARCH_URL is not set"))?;
        let prefix = format!("souk-test-{}-{}", test.replace('_', "-"), uuid::Uuid::now_v7().simple());
        Ok(Harness::OpenSearch { url, prefix })
    }

    /// Opens the store (again).
    pub async fn open(&self) -> anyhow::Result<Arc<dyn SearchStore>> {
        Ok(match self {
            Harness::Tantivy { dir, options } => {
                Arc::new(TantivyStore::open(dir.path().join("search"), options.clone())?)
            }
            Harness::OpenSearch { url, prefix } => {
                Arc::new(OpenSearchStore::connect(OpenSearchOptions::new(url, prefix)).await?)
            }
        })
    }

    /// Opens the store with the fixture catalog indexed.
    pub async fn with_fixture(&self) -> anyhow::Result<Arc<dyn SearchStore>> {
        let store = self.open().await?;
        let outcome = store.apply(fixture::ops()).await?;
        assert_eq!(outcome.applied, fixture::catalog().len());
        Ok(store)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Harness::OpenSearch { url, prefix } = self {
            // Best effort: remove the test's indexes.
            let (url, prefix) = (url.clone(), prefix.clone());
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(rt) = rt {
                    let _ = rt.block_on(OpenSearchStore::delete_all(&url, &prefix));
                }
            })
            .join();
        }
    }
}

/// Runs a generic body against tantivy and (ignored unless configured) OpenSearch.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tantivy() -> anyhow::Result<()> {
                super::$name(&crate::search::Harness::tantivy()?).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[ignore = "needs OpenSearch: set SOUK_OPENSEARCH_URL (it cannot run on this machine)"]
            async fn opensearch() -> anyhow::Result<()> {
                super::$name(&crate::search::Harness::opensearch(stringify!($name))?).await
            }
        }
    )*};
}
pub(crate) use conformance;

/// A query of the fixture tenant, one big page.
pub fn req() -> SearchRequest {
    let mut r = SearchRequest::new(fixture::TENANT);
    r.per_page = 100;
    r
}

pub fn text(q: &str) -> SearchRequest {
    let mut r = req();
    r.q = Some(q.into());
    r
}

pub fn skus(results: &SearchResults) -> Vec<String> {
    results.hits.iter().map(|h| h.sku.clone()).collect()
}

/// The skus, sorted (for answers whose order is not the point).
pub fn sorted(results: &SearchResults) -> Vec<String> {
    let mut s = skus(results);
    s.sort();
    s
}

pub fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The fixture document `sku` of the fixture tenant.
pub fn doc(sku: &str) -> souk_stores::search::SearchDoc {
    fixture::catalog()
        .into_iter()
        .find(|d| d.tenant == fixture::TENANT && d.sku == sku)
        .expect("a fixture sku")
}

/// An upsert of `sku` at `version` with `price`.
pub fn upsert(sku: &str, version: i64, price: i64) -> IndexOp {
    let mut d = doc(sku);
    d.version = version;
    d.price_minor = price;
    IndexOp::Upsert(d)
}

pub fn delete(sku: &str, version: i64) -> IndexOp {
    IndexOp::Delete { tenant: fixture::TENANT.into(), sku: sku.into(), version }
}
