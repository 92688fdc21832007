//! tantivy only: how many queries run at once.

use super::{req, skus, text};
use souk_stores::search::tantivy::{TantivyOptions, TantivyStore};
use souk_stores::search::{SearchRequest, SearchStore};
use std::sync::Arc;

/// Queries beyond `search_threads` wait their turn instead of sharing the cores:
/// however many arrive at once, no more than the limit ever run together, and every
/// one answers exactly as it does alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_beyond_the_concurrency_limit_wait_their_turn() -> anyhow::Result<()> {
    // Every query kind: match-all with facets, words, a filter, a sort.
    let mut filtered = req();
    filtered.category = Some("home".into());
    filtered.sort = souk_stores::search::Sort::PriceAsc;
    let queries = [req(), text("mug"), text("ceramik mug"), filtered];
    for limit in [1, 2] {
        let dir = tempfile::tempdir()?;
        let options = TantivyOptions { search_threads: limit, ..TantivyOptions::default() };
        let store = Arc::new(TantivyStore::open(dir.path(), options)?);
        store.apply(souk_stores::search::fixture::ops()).await?;
        let mut alone = Vec::new();
        for q in &queries {
            alone.push(answer(&store, q).await?);
        }
        let mut tasks = tokio::task::JoinSet::new();
        for round in 0..64 {
            for (i, q) in queries.iter().enumerate() {
                let (store, q) = (store.clone(), q.clone());
                tasks.spawn(async move { (i, round, answer(&store, &q).await) });
            }
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, round, got) = joined?;
            assert_eq!(got?, alone[i], "query {i} (round {round}) at limit {limit}");
        }
        let peak = store.peak_concurrent_searches();
        assert!((1..=limit).contains(&peak), "{peak} queries ran at once with a limit of {limit}");
    }
    Ok(())
}

/// What a comparison needs of an answer: the total and the hits in order.
async fn answer(store: &TantivyStore, q: &SearchRequest) -> anyhow::Result<(u64, Vec<String>)> {
    let r = store.search(q).await?;
    Ok((r.total, skus(&r)))
}
