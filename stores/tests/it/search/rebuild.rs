//! Rebuild and swap while searching: no query fails, writes during the rebuild are kept,
//! results after the swap equal those before.

use super::{Harness, conformance, delete, req, skus, text, upsert};
use souk_stores::search::{IndexOp, SearchError, SearchRequest, SearchStore, fixture};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

conformance!(a_rebuild_swaps_in_while_searches_keep_answering, an_abandoned_rebuild_changes_nothing);

fn queries() -> Vec<SearchRequest> {
    let mut by_price = req();
    by_price.sort = souk_stores::search::Sort::PriceAsc;
    let mut kitchen = text("mug");
    kitchen.category = Some("home/kitchen".into());
    vec![req(), by_price, kitchen, text("walnut"), text("bluetoth")]
}

async fn a_rebuild_swaps_in_while_searches_keep_answering(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let before: Vec<_> = {
        let mut out = Vec::new();
        for q in queries() {
            out.push(skus(&store.search(&q).await?));
        }
        out
    };
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (store, stop, answered) = (store.clone(), stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                for q in queries() {
                    let r = store.search(&q).await?;
                    anyhow::ensure!(r.total > 0, "an empty answer during the rebuild");
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            }
            anyhow::Ok(())
        }));
    }
    let rebuild = store.begin_rebuild().await?;
    assert!(matches!(store.begin_rebuild().await, Err(SearchError::RebuildRunning)));
    assert!(store.stats().await?.rebuilding);
    // Live writes during the rebuild: newer than what the rebuild reads.
    store.apply(vec![upsert("KET-001", 5, 4242), delete("RUG-003", 5)]).await?;
    // The rebuild feeds the catalog as of its read: older versions, so stale there.
    let (a, b): (Vec<IndexOp>, Vec<IndexOp>) = fixture::ops().into_iter().partition(|op| op.sku() < "M");
    let first = rebuild.apply(a).await?;
    let second = rebuild.apply(b).await?;
    assert_eq!(first.stale + second.stale, 2, "the live writes won in the new index");
    rebuild.finish().await?;
    assert!(!store.stats().await?.rebuilding);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await??;
    }
    assert!(answered.load(Ordering::Relaxed) > 0);
    // After the swap: the same answers, plus the live writes.
    let kettle = store.search(&text("electric kettle")).await?;
    assert_eq!(kettle.hits[0].price_minor, 4242);
    assert_eq!(store.search(&req()).await?.total, 37);
    store.apply(vec![upsert("RUG-003", 6, 25000), upsert("KET-001", 6, 3999)]).await?;
    for (q, expected) in queries().iter().zip(before) {
        assert_eq!(skus(&store.search(q).await?), expected, "{q:?}");
    }
    // Writes after the swap go to the new index, and survive a restart.
    drop(store);
    let store = h.open().await?;
    assert_eq!(store.search(&req()).await?.total, 38);
    assert_eq!(store.apply(vec![upsert("KET-001", 5, 1)]).await?.stale, 1);
    if let Harness::Tantivy { dir, .. } = h {
        let indexes = std::fs::read_dir(dir.path().join("search"))?
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
            .count();
        assert_eq!(indexes, 1, "the old index is removed");
    }
    Ok(())
}

async fn an_abandoned_rebuild_changes_nothing(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let rebuild = store.begin_rebuild().await?;
    rebuild.apply(vec![upsert("KET-001", 9, 9)]).await?;
    rebuild.abort().await?;
    assert_eq!(store.search(&req()).await?.total, 38);
    assert_eq!(store.version(fixture::TENANT, "KET-001").await?.map(|v| v.version), Some(1));
    // A new one may start, and dropping it abandons it too.
    drop(store.begin_rebuild().await?);
    let again = store.begin_rebuild().await?;
    again.abort().await?;
    Ok(())
}

/// tantivy only: a swap that fails before `CURRENT` names the new index (here: its
/// temporary file cannot be created) leaves the live index as it was, and the rebuild
/// is over — not left running, which made every later `apply` write to an orphan index
/// and every later reindex fail with `RebuildRunning` until a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_swap_ends_the_rebuild_and_a_new_one_can_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let root = dir.path().join("search");
    let open = || {
        souk_stores::search::tantivy::TantivyStore::open(
            &root,
            souk_stores::search::tantivy::TantivyOptions::default(),
        )
    };
    let store = open()?;
    store.apply(fixture::ops()).await?;
    let live = store.live_dir();
    let rebuild = store.begin_rebuild().await?;
    rebuild.apply(vec![upsert("KET-001", 9, 9)]).await?;
    // `CURRENT.tmp` as a directory: the pointer cannot be written.
    std::fs::create_dir(root.join("CURRENT.tmp"))?;
    let err = rebuild.finish().await.expect_err("the pointer cannot be written");
    assert!(err.is_outage(), "{err}");
    std::fs::remove_dir(root.join("CURRENT.tmp"))?;
    assert_eq!(store.live_dir(), live, "the live index stays");
    assert!(!store.stats().await?.rebuilding, "the failed rebuild is over");
    let indexes = std::fs::read_dir(&root)?.filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir())).count();
    assert_eq!(indexes, 1, "the failed rebuild's index is removed");
    assert_eq!(store.version(fixture::TENANT, "KET-001").await?.map(|v| v.version), Some(1));
    // A new rebuild starts and swaps in.
    let again = store.begin_rebuild().await?;
    again.apply(fixture::ops()).await?;
    again.finish().await?;
    assert_ne!(store.live_dir(), live);
    assert_eq!(store.search(&req()).await?.total, 38);
    drop(store);
    assert_eq!(open()?.search(&req()).await?.total, 38, "and survives a restart");
    Ok(())
}

/// tantivy only: a client paging while a rebuild swaps in (and the old index directory
/// is removed) pages to the end of its snapshot without a duplicate or a gap; a new
/// query sees the new index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_across_a_rebuild_swap_has_no_duplicates_or_gaps() -> anyhow::Result<()> {
    let h = Harness::tantivy()?;
    let store = h.with_fixture().await?;
    let mut by_price = req();
    by_price.sort = souk_stores::search::Sort::PriceAsc;
    let expected = skus(
        &store
            .search(&{
                let mut all = by_price.clone();
                all.per_page = 100;
                all
            })
            .await?,
    );
    let mut request = by_price.clone();
    request.per_page = 4;
    let first = store.search(&request).await?;
    let mut seen = skus(&first);
    // The rebuild drops half the catalog and adds a product: a new query sees that.
    let rebuild = store.begin_rebuild().await?;
    let keep: Vec<IndexOp> =
        fixture::ops().into_iter().filter(|op| op.tenant() == fixture::TENANT && op.sku() < "M").collect();
    let kept = keep.len();
    rebuild.apply(keep).await?;
    let mut new = super::doc("MUG-005");
    new.sku = "ZZZ-001".into();
    rebuild.apply(vec![IndexOp::Upsert(new)]).await?;
    rebuild.finish().await?;
    request.cursor = first.next_cursor;
    while let Some(cursor) = request.cursor.take() {
        request.cursor = Some(cursor);
        let page = store.search(&request).await?;
        seen.extend(skus(&page));
        request.cursor = page.next_cursor;
    }
    assert_eq!(seen, expected, "the old snapshot, whole and once");
    assert_eq!(store.search(&req()).await?.total as usize, kept + 1, "a new query sees the new index");
    Ok(())
}
