//! The baselines: tantivy in this process, no pipeline. The same documents indexed
//! straight into souk's tantivy store (the schema, analyzers and version checks the
//! indexer uses, large batches, one commit each), and the same queries run on it by as
//! many tasks as the HTTP phase has clients. What the pipeline and the HTTP search
//! add on top is the difference.

use futures::FutureExt;
use souk_stores::search::{
    IndexOp, SearchDoc, SearchStore,
    tantivy::{TantivyOptions, TantivyStore},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

use super::queries::Query;
use crate::load::{self, LabelledOp, Plan, Tally};

/// An index built from `docs` in batches of `batch`, and how long that took.
pub struct RawIndex {
    pub store: Arc<TantivyStore>,
    pub docs: u64,
    pub elapsed: Duration,
    /// Kept until the index is dropped.
    _dir: tempfile::TempDir,
}

/// Index `docs` into a fresh tantivy store, `batch` per commit.
pub async fn index(docs: Vec<SearchDoc>, batch: usize, options: TantivyOptions) -> anyhow::Result<RawIndex> {
    let dir = tempfile::Builder::new().prefix("souk-bench-tantivy-").tempdir()?;
    let store = Arc::new(TantivyStore::open(dir.path(), options)?);
    let count = docs.len() as u64;
    let started = Instant::now();
    let mut docs = docs.into_iter().map(IndexOp::Upsert).peekable();
    while docs.peek().is_some() {
        let ops: Vec<IndexOp> = docs.by_ref().take(batch.max(1)).collect();
        store.apply(ops).await?;
    }
    let elapsed = started.elapsed();
    // Searched once merged, as souk's index is in (s): merges still running would make
    // (q) search more, smaller segments while sharing the cores with the merging.
    store.wait_for_merges().await?;
    Ok(RawIndex { store, docs: count, elapsed, _dir: dir })
}

/// Run `queries` round robin on `store` per `plan`, tallied per kind too.
pub async fn search(store: Arc<TantivyStore>, queries: Arc<Vec<Query>>, plan: Plan) -> anyhow::Result<Tally> {
    let next = Arc::new(AtomicUsize::new(0));
    let op: LabelledOp = Arc::new(move || {
        let (store, queries) = (store.clone(), queries.clone());
        let i = next.fetch_add(1, Ordering::Relaxed) % queries.len().max(1);
        let kind = queries.get(i).map_or("", |q| q.kind);
        let search = async move {
            let query = queries.get(i).ok_or_else(|| "no queries".to_owned())?;
            store.search(&query.request).await.map(|_| 1).map_err(|_| "search failed".to_owned())
        };
        (kind, search.boxed())
    });
    load::run_labelled(plan, op).await
}
