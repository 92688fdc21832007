//! `GET /v1/search` at the edge: store failures are 503 problems, and public reads are
//! rate limited per client address. (Search answers themselves are tested end to end in
//! `cli/tests/it/search.rs`.)

use futures::{FutureExt, future::BoxFuture};
use souk_ingress::{ConnectionLimits, Ingress, IngressOptions, IntakeOptions, RateLimit, SearchOptions};
use souk_stores::search::{
    ApplyOutcome, IndexOp, Rebuild, SearchError, SearchRequest, SearchResults, SearchStore, StoreStats,
    StoredVersion,
};
use std::{num::NonZeroU32, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

use crate::env;

/// A store that is down (every call an outage) or hangs (never answers).
struct Broken {
    hangs: bool,
}

impl Broken {
    fn fail<'a, T: Send + 'a>(&self) -> BoxFuture<'a, Result<T, SearchError>> {
        match self.hangs {
            true => futures::future::pending().boxed(),
            false => async { Err(SearchError::Unavailable("index directory gone (test)".into())) }.boxed(),
        }
    }
}

impl SearchStore for Broken {
    fn apply(&self, _: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        self.fail()
    }
    fn search<'a>(&'a self, _: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        self.fail()
    }
    fn version<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        self.fail()
    }
    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        self.fail()
    }
    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        self.fail()
    }
}

/// Serve an ingress over `store` with `rate_limit` on a free port; its base URL.
async fn serve(
    env: &crate::Env,
    store: Option<Arc<dyn SearchStore>>,
    rate_limit: Option<RateLimit>,
    stop: &CancellationToken,
) -> anyhow::Result<String> {
    let ingress = Ingress::build(IngressOptions {
        keys: env.keys.clone(),
        pool: env.db.pool.clone(),
        nats: env.client.clone(),
        write_timeout: Duration::from_millis(1500),
        intake: IntakeOptions::default(),
        rate_limit,
        connections: ConnectionLimits::default(),
        search: store.map(SearchOptions::new),
        public_tenant: "t1".into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(ingress.serve(listener, stop.clone()));
    Ok(base)
}

async fn get(url: &str) -> anyhow::Result<(u16, Option<String>, String, serde_json::Value)> {
    let r = reqwest::get(url).await?;
    let status = r.status().as_u16();
    let retry = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let kind = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let body = r.json().await.unwrap_or_default();
    Ok((status, retry, kind, body))
}

/// A store that fails, or does not answer within the search deadline, is a 503
/// problem with `Retry-After`, never a 500 or a hung request; so is a process that
/// serves no index.
#[tokio::test]
async fn a_search_store_failure_is_a_503_problem() -> anyhow::Result<()> {
    let env = env().await?;
    let stop = CancellationToken::new();
    for (store, what) in [
        (Some(Arc::new(Broken { hangs: false }) as Arc<dyn SearchStore>), "down"),
        (Some(Arc::new(Broken { hangs: true }) as Arc<dyn SearchStore>), "hung"),
        (None, "not served here"),
    ] {
        let base = serve(&env, store, None, &stop).await?;
        let started = std::time::Instant::now();
        let (status, retry, kind, body) = get(&format!("{base}/v1/search?q=mug")).await?;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{what}: {body}");
        assert_eq!(kind, "application/problem+json", "{what}");
        assert_eq!(body["type"], "https://souk.dev/problems/unavailable", "{what}");
        assert!(started.elapsed() < souk_ingress::search::SEARCH_TIMEOUT + Duration::from_secs(2), "{what}");
        // Bad parameters are still named first: the client's fault, whatever the store.
        let (status, ..) = get(&format!("{base}/v1/search?per_page=0")).await?;
        assert_eq!(status, 400, "{what}");
    }
    stop.cancel();
    Ok(())
}

/// Searches without a token are read requests of their client address: over the read
/// limit, 429 with `Retry-After`, before the store is asked.
#[tokio::test]
async fn anonymous_searches_are_rate_limited_per_address() -> anyhow::Result<()> {
    let env = env().await?;
    let stop = CancellationToken::new();
    let one = NonZeroU32::MIN;
    let limit = RateLimit { per_second: one, burst: one, reads_per_second: one, reads_burst: one };
    let base = serve(&env, Some(Arc::new(Broken { hangs: false })), Some(limit), &stop).await?;
    let (first, ..) = get(&format!("{base}/v1/search")).await?;
    assert_eq!(first, 503, "the first read passes the limiter");
    let (second, retry, _, body) = get(&format!("{base}/v1/search")).await?;
    assert_eq!((second, retry.is_some()), (429, true), "{body}");
    stop.cancel();
    Ok(())
}
