//! Cursor pagination: no duplicates or gaps while the index changes; bad cursors.

use super::{Harness, conformance, delete, doc, req, skus, text, upsert};
use souk_stores::search::tantivy::TantivyOptions;
use souk_stores::search::{CursorProblem, IndexOp, SearchError, SearchRequest, SearchStore, Sort};
use std::collections::HashSet;

conformance!(
    pages_have_no_duplicates_or_gaps_while_the_index_changes,
    a_tampered_or_foreign_cursor_is_refused,
);

/// Pages through `first` (per_page small), changing the index between pages with
/// `between(page_number)`; returns every sku seen, in order.
async fn page_through(
    store: &dyn SearchStore,
    first: SearchRequest,
    mut between: impl AsyncFnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<String>> {
    let mut seen = Vec::new();
    let mut request = first;
    for page in 0.. {
        let results = store.search(&request).await?;
        assert!(results.hits.len() <= request.per_page as usize);
        seen.extend(skus(&results));
        match results.next_cursor {
            Some(cursor) => request.cursor = Some(cursor),
            None => break,
        }
        between(page).await?;
        assert!(page < 100, "paging does not end");
    }
    Ok(seen)
}

async fn pages_have_no_duplicates_or_gaps_while_the_index_changes(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let mut version = 10;
    for (sort, q) in [
        (Sort::PriceAsc, None),
        (Sort::PriceDesc, None),
        (Sort::Newest, None),
        (Sort::Relevance, None),
        (Sort::Relevance, Some("mug")),
    ] {
        let mut whole = req();
        whole.sort = sort;
        whole.q = q.map(str::to_owned);
        let expected = skus(&store.search(&whole).await?);
        let mut first = whole.clone();
        first.per_page = 3;
        let seen = page_through(&*store, first, async |page| {
            version += 1;
            let new_sku = format!("NEW-{version}");
            let mut new = doc("MUG-005");
            new.sku = new_sku;
            new.version = version;
            new.price_minor = 1; // lands on the first page of price_asc
            new.title = "Cheap Mug".into();
            let target = expected[(page * 3 + 7) % expected.len()].clone();
            let changes = vec![
                IndexOp::Upsert(new),
                // Move one document across the order, remove another.
                upsert(&expected[page % expected.len()], version, 100_000 + version),
                delete(&target, version),
            ];
            store.apply(changes).await?;
            Ok(())
        })
        .await?;
        assert_eq!(seen, expected, "{sort:?} {q:?}: the snapshot of the first page");
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len());
        // Restore the fixture for the next order (newer versions of every document).
        version += 1;
        let restore: Vec<IndexOp> = souk_stores::search::fixture::ops()
            .into_iter()
            .map(|op| match op {
                IndexOp::Upsert(mut d) => {
                    d.version = version;
                    IndexOp::Upsert(d)
                }
                other => other,
            })
            .collect();
        store.apply(restore).await?;
        let stray: Vec<IndexOp> = store
            .search(&text("cheap"))
            .await?
            .hits
            .iter()
            .map(|h| IndexOp::Delete {
                tenant: souk_stores::search::fixture::TENANT.into(),
                sku: h.sku.clone(),
                version: version + 1,
            })
            .collect();
        store.apply(stray).await?;
        version += 1;
    }
    // A new first page sees the changes.
    assert_eq!(store.search(&req()).await?.total, 38);
    Ok(())
}

async fn a_tampered_or_foreign_cursor_is_refused(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let mut first = req();
    first.per_page = 5;
    let cursor = store.search(&first).await?.next_cursor.expect("more pages");
    // Tampered: a byte changed, truncated, garbage.
    let mut flipped = cursor.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    for bad in [
        String::from_utf8(flipped)?,
        cursor[..cursor.len() / 2].to_owned(),
        "not a cursor!".to_owned(),
        String::new(),
    ] {
        let mut r = first.clone();
        r.cursor = Some(bad.clone());
        let err = store.search(&r).await.expect_err("a tampered cursor");
        assert!(matches!(err, SearchError::BadCursor(_)), "{bad:?}: {err}");
        assert!(err.is_bad_request());
    }
    // Another query's cursor.
    let mut other = first.clone();
    other.seller = Some("east".into());
    other.cursor = Some(cursor.clone());
    let err = store.search(&other).await.expect_err("another query");
    assert!(matches!(err, SearchError::BadCursor(CursorProblem::OtherQuery)), "{err}");
    // The right one still works.
    let mut next = first.clone();
    next.cursor = Some(cursor);
    assert_eq!(store.search(&next).await?.hits.len(), 5);
    Ok(())
}

/// tantivy only: a snapshot evicted from the bounded cache (or expired) is an expired
/// cursor, and the store keeps no more snapshots than its capacity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_evicted_snapshot_is_an_expired_cursor() -> anyhow::Result<()> {
    let h = Harness::tantivy_with(TantivyOptions { snapshot_capacity: 2, ..TantivyOptions::default() })?;
    let store = h.with_fixture().await?;
    let mut first = req();
    first.per_page = 5;
    let mut cursors = Vec::new();
    for v in 2..6 {
        cursors.push(store.search(&first).await?.next_cursor.expect("more pages"));
        store.apply(vec![upsert("MUG-001", v, v)]).await?;
    }
    let mut oldest = first.clone();
    oldest.cursor = Some(cursors[0].clone());
    let err = store.search(&oldest).await.expect_err("evicted");
    assert!(matches!(err, SearchError::BadCursor(CursorProblem::Expired)), "{err}");
    let mut newest = first.clone();
    newest.cursor = cursors.last().cloned();
    assert_eq!(store.search(&newest).await?.hits.len(), 5);

    let h = Harness::tantivy_with(TantivyOptions {
        snapshot_ttl: std::time::Duration::ZERO,
        ..TantivyOptions::default()
    })?;
    let store = h.with_fixture().await?;
    let mut r = first.clone();
    r.cursor = store.search(&first).await?.next_cursor;
    let err = store.search(&r).await.expect_err("expired");
    assert!(matches!(err, SearchError::BadCursor(CursorProblem::Expired)), "{err}");
    Ok(())
}
