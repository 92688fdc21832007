//! Version safety: out of order, duplicated, delete then stale update, across a restart;
//! bad documents; tenant isolation.

use super::{Harness, conformance, delete, doc, req, skus, text, upsert};
use souk_stores::search::{ApplyOutcome, IndexOp, SearchError, SearchStore, StoredVersion, fixture};

conformance!(
    out_of_order_updates_converge_to_the_newest,
    a_batch_applied_twice_changes_nothing,
    a_delete_followed_by_a_stale_update_stays_deleted,
    versions_and_tombstones_survive_a_restart,
    a_bad_document_fails_the_batch_as_the_messages_fault,
    tenants_are_isolated,
);

fn outcome(applied: usize, stale: usize) -> ApplyOutcome {
    ApplyOutcome { applied, stale }
}

fn by_sku(sku: &str) -> souk_stores::search::SearchRequest {
    let mut r = text(&doc(sku).title);
    r.per_page = 100;
    r
}

async fn price_of(store: &dyn souk_stores::search::SearchStore, sku: &str) -> anyhow::Result<Option<i64>> {
    let results = store.search(&by_sku(sku)).await?;
    Ok(results.hits.iter().find(|h| h.sku == sku).map(|h| h.price_minor))
}

async fn out_of_order_updates_converge_to_the_newest(h: &Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    assert_eq!(store.apply(vec![upsert("KET-001", 3, 300)]).await?, outcome(1, 0));
    assert_eq!(store.apply(vec![upsert("KET-001", 1, 100)]).await?, outcome(0, 1));
    assert_eq!(store.apply(vec![upsert("KET-001", 2, 200)]).await?, outcome(0, 1));
    // Equal version: a replay, stale too.
    assert_eq!(store.apply(vec![upsert("KET-001", 3, 999)]).await?, outcome(0, 1));
    assert_eq!(price_of(&*store, "KET-001").await?, Some(300));
    // Within one batch, the newest wins whatever the order.
    let batch = vec![upsert("KET-002", 2, 20), upsert("KET-002", 5, 50), upsert("KET-002", 4, 40)];
    assert_eq!(store.apply(batch).await?, outcome(1, 2));
    assert_eq!(price_of(&*store, "KET-002").await?, Some(50));
    assert_eq!(
        store.version(fixture::TENANT, "KET-002").await?,
        Some(StoredVersion { version: 5, deleted: false })
    );
    assert_eq!(store.version(fixture::TENANT, "NOPE").await?, None);
    Ok(())
}

async fn a_batch_applied_twice_changes_nothing(h: &Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let n = fixture::catalog().len();
    assert_eq!(store.apply(fixture::ops()).await?, outcome(n, 0));
    let before = store.search(&req()).await?;
    assert_eq!(store.apply(fixture::ops()).await?, outcome(0, n));
    let after = store.search(&req()).await?;
    assert_eq!(skus(&before), skus(&after));
    assert_eq!(before.total, after.total);
    assert_eq!(store.stats().await?.docs, n as u64);
    Ok(())
}

async fn a_delete_followed_by_a_stale_update_stays_deleted(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    assert_eq!(price_of(&*store, "MUG-002").await?, Some(1499));
    assert_eq!(store.apply(vec![delete("MUG-002", 4)]).await?, outcome(1, 0));
    assert_eq!(price_of(&*store, "MUG-002").await?, None);
    // The update the delete overtook arrives late: stale.
    assert_eq!(store.apply(vec![upsert("MUG-002", 3, 333)]).await?, outcome(0, 1));
    assert_eq!(store.apply(vec![delete("MUG-002", 2)]).await?, outcome(0, 1));
    assert_eq!(price_of(&*store, "MUG-002").await?, None);
    assert_eq!(
        store.version(fixture::TENANT, "MUG-002").await?,
        Some(StoredVersion { version: 4, deleted: true })
    );
    // A newer write brings it back.
    assert_eq!(store.apply(vec![upsert("MUG-002", 5, 555)]).await?, outcome(1, 0));
    assert_eq!(price_of(&*store, "MUG-002").await?, Some(555));
    // Deleting an sku never indexed leaves a tombstone all the same.
    assert_eq!(store.apply(vec![delete("NEVER-SEEN", 7)]).await?, outcome(1, 0));
    let mut late = doc("MUG-001");
    late.sku = "NEVER-SEEN".into();
    late.version = 6;
    assert_eq!(store.apply(vec![IndexOp::Upsert(late)]).await?, outcome(0, 1));
    let stats = store.stats().await?;
    assert_eq!(stats.docs, fixture::catalog().len() as u64);
    assert_eq!(stats.tombstones, 1);
    assert!(stats.last_commit.is_some() || matches!(h, Harness::OpenSearch { .. }));
    Ok(())
}

async fn versions_and_tombstones_survive_a_restart(h: &Harness) -> anyhow::Result<()> {
    {
        let store = h.with_fixture().await?;
        store.apply(vec![delete("KET-003", 4), upsert("KET-004", 6, 60)]).await?;
    }
    let store = h.open().await?;
    assert_eq!(store.apply(vec![upsert("KET-003", 3, 30)]).await?, outcome(0, 1));
    assert_eq!(store.apply(vec![upsert("KET-004", 5, 50)]).await?, outcome(0, 1));
    assert_eq!(store.apply(fixture::ops()).await?.applied, 0);
    assert_eq!(price_of(&*store, "KET-003").await?, None);
    assert_eq!(price_of(&*store, "KET-004").await?, Some(60));
    assert_eq!(store.search(&req()).await?.total, 37);
    Ok(())
}

async fn a_bad_document_fails_the_batch_as_the_messages_fault(h: &Harness) -> anyhow::Result<()> {
    let store = h.open().await?;
    let mut bad = doc("MUG-001");
    bad.sku = String::new();
    let err = store
        .apply(vec![upsert("KET-001", 1, 100), IndexOp::Upsert(bad)])
        .await
        .expect_err("an empty sku is refused");
    assert!(matches!(err, SearchError::BadDocument { .. }), "{err}");
    assert!(!err.is_outage());
    // Nothing of the batch was written.
    assert_eq!(store.search(&req()).await?.total, 0);
    assert_eq!(store.version(fixture::TENANT, "KET-001").await?, None);
    Ok(())
}

async fn tenants_are_isolated(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let acme = store.search(&text("ceramic coffee mug")).await?;
    assert_eq!(skus(&acme), ["MUG-001"]);
    assert_eq!(acme.hits[0].seller, "north");
    let all = store.search(&req()).await?;
    assert_eq!(all.total, 38);
    assert!(all.hits.iter().all(|h| h.seller != "west"));
    assert!(all.facets.sellers.iter().all(|f| f.value != "west"));
    let mut globex = text("kettle");
    globex.tenant = fixture::OTHER_TENANT.into();
    assert_eq!(skus(&store.search(&globex).await?), ["GLX-KET"]);
    // The same sku in two tenants: two documents, two versions.
    store.apply(vec![delete("MUG-001", 9)]).await?;
    let mut other = text("ceramic coffee mug");
    other.tenant = fixture::OTHER_TENANT.into();
    assert_eq!(skus(&store.search(&other).await?), ["MUG-001"]);
    assert_eq!(
        store.version(fixture::OTHER_TENANT, "MUG-001").await?,
        Some(StoredVersion { version: 1, deleted: false })
    );
    assert!(store.search(&text("ceramic coffee mug")).await?.hits.is_empty());
    Ok(())
}

/// tantivy only: an index whose files vanish under it fails as an outage (hold and
/// retry), not as a bad message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_disk_is_an_outage_not_a_bad_document() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = souk_stores::search::tantivy::TantivyStore::open(
        dir.path(),
        souk_stores::search::tantivy::TantivyOptions::default(),
    )?;
    store.apply(fixture::ops()).await?;
    std::fs::remove_dir_all(store.live_dir())?;
    let err = store.apply(vec![upsert("KET-001", 2, 200)]).await.expect_err("the index directory is gone");
    assert!(err.is_outage(), "{err}");
    assert!(!matches!(err, SearchError::BadDocument { .. }));
    Ok(())
}
