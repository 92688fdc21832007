//! The search indexer (`catalog.index`) on the shipped topology's `catalog-index` pool
//! and consumer (timers shortened), a real nats-server and tantivy on disk: crafted
//! `ProductChanged` events published straight to EVT.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{Message, catalog::ProductChanged, encode, headers};
use souk_stores::search::{
    ApplyOutcome, IndexOp, Rebuild, SearchError, SearchRequest, SearchResults, SearchStore, StoreStats,
    StoredVersion, tantivy::TantivyStore,
};
use souk_testkit::{
    catalog::{changed, product, publish, publish_raw, shuffled},
    eventually,
};
use souk_topologies::runtime::{Handler, Pool, Registry, SinkStats};
use souk_workers::catalog::{INDEX_CONSUMER, INDEX_HANDLER, IndexProducts, lag};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use crate::{Env, env};

const WAIT: Duration = Duration::from_secs(30);

/// A real tantivy store that fails every write with an outage while `down` is set (the
/// way a full or vanished disk fails it: `SearchError::Unavailable`), and counts the
/// writes it was asked for.
struct Switchable {
    inner: TantivyStore,
    down: AtomicBool,
    refused: AtomicU64,
}

impl SearchStore for Switchable {
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        if self.down.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return async { Err(SearchError::Unavailable("disk gone (test)".into())) }.boxed();
        }
        self.inner.apply(ops)
    }
    fn search<'a>(&'a self, r: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        self.inner.search(r)
    }
    fn version<'a>(
        &'a self,
        t: &'a str,
        s: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        self.inner.version(t, s)
    }
    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        self.inner.begin_rebuild()
    }
    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        self.inner.stats()
    }
}

struct Indexer {
    store: Arc<Switchable>,
    _dir: tempfile::TempDir,
}

fn indexer() -> anyhow::Result<Indexer> {
    let dir = tempfile::tempdir()?;
    let inner = TantivyStore::open(dir.path().join("search"), Default::default())?;
    Ok(Indexer {
        store: Arc::new(Switchable { inner, down: AtomicBool::new(false), refused: AtomicU64::new(0) }),
        _dir: dir,
    })
}

impl Env {
    /// Run the `catalog-index` pool over `store` until the token is cancelled.
    async fn index_with(
        &self,
        store: Arc<dyn SearchStore>,
    ) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
        let (cancel, run, _sink) = self.index_counting(store).await?;
        Ok((cancel, run))
    }

    /// [`Env::index_with`], also handing back the indexer's sink counts.
    async fn index_counting(
        &self,
        store: Arc<dyn SearchStore>,
    ) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>, Arc<SinkStats>)> {
        let handler = IndexProducts::new(store);
        let sink = handler.sinks().pop().ok_or_else(|| anyhow::anyhow!("the indexer declares its sink"))?;
        let mut registry = Registry::default();
        registry.register(INDEX_HANDLER, handler);
        let pool = Pool::build(&self.publisher, &self.topology, "catalog-index", &registry).await?;
        let cancel = CancellationToken::new();
        Ok((cancel.clone(), tokio::spawn(pool.run(cancel)), sink))
    }

    /// `Some` once the indexer's consumer has handled everything stored.
    async fn indexed_all(&self) -> anyhow::Result<Option<()>> {
        souk_testkit::drained(&self.js, "EVT", INDEX_CONSUMER).await
    }
}

async fn stored(store: &dyn SearchStore, sku: &str) -> anyhow::Result<Option<StoredVersion>> {
    Ok(store.version("t1", sku).await?)
}

async fn search(store: &dyn SearchStore, q: &str) -> anyhow::Result<SearchResults> {
    let mut r = SearchRequest::new("t1");
    r.q = Some(q.into()).filter(|q: &String| !q.is_empty());
    r.per_page = 100;
    Ok(store.search(&r).await?)
}

/// Out-of-order and duplicated deliveries converge to the latest version: five versions
/// of each of 30 products (the last a delete for every third one), each event also
/// stored a second time under another message id (a relay's replay past the dedupe
/// window), all in a shuffled order, half before the indexer starts and half while it
/// runs (so they spread over many batches).
#[tokio::test]
async fn out_of_order_and_duplicated_product_changes_converge_to_the_latest_version() -> anyhow::Result<()> {
    let env = env().await?;
    let ix = indexer()?;
    let mut events = Vec::new();
    for n in 0..30 {
        let sku = format!("SKU-{n:02}");
        for v in 1..=5 {
            let deleted = v == 5 && n % 3 == 0;
            let p = (!deleted).then(|| product(&sku, "s1", v, &format!("mug {sku} v{v}")));
            let e = changed(&sku, "s1", v, p);
            events.push((format!("evt:{sku}:{v}"), e.clone()));
            events.push((format!("replay:{sku}:{v}"), e));
        }
    }
    let events = shuffled(events, 9);
    let (first, second) = events.split_at(events.len() / 2);
    for (id, e) in first {
        publish(&env.publisher, id, e).await?;
    }
    let (stop, run) = env.index_with(ix.store.clone()).await?;
    for (id, e) in second {
        publish(&env.publisher, id, e).await?;
    }
    eventually(WAIT, || env.indexed_all()).await?;

    for n in 0..30 {
        let sku = format!("SKU-{n:02}");
        let v = stored(ix.store.as_ref(), &sku).await?.ok_or_else(|| anyhow::anyhow!("{sku} not indexed"))?;
        assert_eq!((v.version, v.deleted), (5, n % 3 == 0), "{sku}");
    }
    let all = search(ix.store.as_ref(), "").await?;
    assert_eq!(all.total, 20, "the 10 deleted products are gone");
    assert!(all.hits.iter().all(|h| h.version == 5 && h.title.ends_with(" v5")), "{:?}", all.hits);
    let stats = ix.store.stats().await?;
    assert_eq!((stats.docs, stats.tombstones), (20, 10), "one document per product, no duplicates");
    assert_eq!(env.dead_letters().await?, 0);
    stop.cancel();
    run.await?;
    Ok(())
}

/// A delete followed by a stale update stays deleted: the update (version 2) arrives
/// after the delete (version 3) was indexed, and again after the indexer restarted on
/// the same index (the tombstone, not memory, keeps it out).
#[tokio::test]
async fn a_delete_followed_by_a_stale_update_stays_deleted() -> anyhow::Result<()> {
    let env = env().await?;
    let ix = indexer()?;
    let (stop, run) = env.index_with(ix.store.clone()).await?;
    publish(&env.publisher, "e1", &changed("MUG", "s1", 1, Some(product("MUG", "s1", 1, "blue mug"))))
        .await?;
    publish(&env.publisher, "e3", &changed("MUG", "s1", 3, None)).await?;
    eventually(WAIT, || async { Ok(stored(ix.store.as_ref(), "MUG").await?.filter(|v| v.deleted)) }).await?;
    publish(&env.publisher, "e2", &changed("MUG", "s1", 2, Some(product("MUG", "s1", 2, "blue mug"))))
        .await?;
    eventually(WAIT, || env.indexed_all()).await?;
    assert_eq!(stored(ix.store.as_ref(), "MUG").await?, Some(StoredVersion { version: 3, deleted: true }));
    assert_eq!(search(ix.store.as_ref(), "mug").await?.total, 0);
    stop.cancel();
    run.await?;

    // A new store over the same directory knows nothing in memory.
    let dir = ix.store.inner.live_dir();
    drop(ix.store);
    let reopened: Arc<dyn SearchStore> =
        Arc::new(TantivyStore::open(dir.parent().expect("root"), Default::default())?);
    let (stop, run) = env.index_with(reopened.clone()).await?;
    publish(&env.publisher, "e2-again", &changed("MUG", "s1", 2, Some(product("MUG", "s1", 2, "blue mug"))))
        .await?;
    eventually(WAIT, || env.indexed_all()).await?;
    assert_eq!(stored(reopened.as_ref(), "MUG").await?, Some(StoredVersion { version: 3, deleted: true }));
    assert_eq!(search(reopened.as_ref(), "mug").await?.total, 0);
    stop.cancel();
    run.await?;
    Ok(())
}

/// A store outage holds the batch behind the pool's breaker — nothing dead-lettered,
/// nothing acked — and once the store takes writes again every product is indexed
/// exactly once.
#[tokio::test]
async fn a_failed_batch_is_retried_without_losing_or_duplicating_documents() -> anyhow::Result<()> {
    let env = env().await?;
    let ix = indexer()?;
    ix.store.down.store(true, Ordering::SeqCst);
    let (stop, run, sink) = env.index_counting(ix.store.clone()).await?;
    for n in 0..40 {
        let sku = format!("P{n}");
        publish(
            &env.publisher,
            &format!("e:{sku}"),
            &changed(&sku, "s1", 1, Some(product(&sku, "s1", 1, "teapot"))),
        )
        .await?;
    }
    // Refused more than once: the first failure, then at least one probe.
    eventually(WAIT, || async { (ix.store.refused.load(Ordering::SeqCst) >= 2).then_some(()) }).await?;
    let info = env.js.get_stream("EVT").await?.consumer_info(INDEX_CONSUMER).await?;
    assert!(
        info.num_pending + info.num_ack_pending as u64 > 0,
        "nothing may be acked while the store is down"
    );
    assert_eq!(env.dead_letters().await?, 0, "an outage never dead-letters");
    assert_eq!(ix.store.stats().await?.docs, 0);

    ix.store.down.store(false, Ordering::SeqCst);
    eventually(WAIT, || env.indexed_all()).await?;
    assert_eq!(search(ix.store.as_ref(), "teapot").await?.total, 40);
    assert_eq!(ix.store.stats().await?.docs, 40);
    assert_eq!(env.dead_letters().await?, 0);
    // The sink's counts (the status model's): the refused write, not the breaker's
    // probes, and each document once, when its batch was written.
    let counted = sink.totals();
    assert!(counted.errors >= 1, "{counted:?}");
    assert_eq!(counted.items, 40, "{counted:?}");
    assert!(counted.writes > counted.errors, "the successful writes are counted too: {counted:?}");
    let last = sink.last_error().expect("the refusal is kept");
    assert!(last.error.contains("disk gone (test)"), "{last:?}");
    assert_eq!(sink.backend(), "search", "a store that does not name itself");
    stop.cancel();
    run.await?;
    Ok(())
}

/// Poison events — an undecodable payload, a document the index cannot hold, an event
/// contradicting its own product — are dead-lettered at once with the reason, and the
/// rest of their batch is indexed.
#[tokio::test]
async fn poison_events_are_dead_lettered_with_the_reason_and_the_rest_is_indexed() -> anyhow::Result<()> {
    let env = env().await?;
    let ix = indexer()?;
    // Stored before the indexer starts, so they are fetched (and batched) together.
    for n in 0..5 {
        let sku = format!("OK{n}");
        publish(
            &env.publisher,
            &format!("ok:{n}"),
            &changed(&sku, "s1", 1, Some(product(&sku, "s1", 1, "kettle"))),
        )
        .await?;
    }
    publish_raw(&env.publisher, "bad:json", b"{not json".to_vec(), &ProductChanged::schema_header()).await?;
    publish(
        &env.publisher,
        "bad:seller",
        &changed("NOSELLER", "", 1, Some(product("NOSELLER", "", 1, "kettle"))),
    )
    .await?;
    publish(
        &env.publisher,
        "bad:versions",
        &changed("SPLIT", "s1", 4, Some(product("SPLIT", "s1", 3, "kettle"))),
    )
    .await?;
    let mut no_tenant = changed("X", "s1", 1, None);
    no_tenant.tenant = String::new();
    publish_raw(&env.publisher, "bad:tenant", encode(&no_tenant), &ProductChanged::schema_header()).await?;
    let (stop, run) = env.index_with(ix.store.clone()).await?;
    eventually(WAIT, || env.indexed_all()).await?;

    assert_eq!(search(ix.store.as_ref(), "kettle").await?.total, 5);
    let dlq = env.js.get_stream("DLQ").await?;
    let mut reasons = std::collections::BTreeMap::new();
    for seq in 1..=dlq.get_info().await?.state.last_sequence {
        let m = dlq.get_raw_message(seq).await?;
        let id = m.headers.get(headers::DLQ_MSG_ID).map(|v| v.to_string()).unwrap_or_default();
        let error = m.headers.get(headers::DLQ_ERROR).map(|v| v.to_string()).unwrap_or_default();
        reasons.insert(id, error);
    }
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(reasons["bad:json"].starts_with("undecodable"), "{reasons:?}");
    assert!(
        reasons["bad:seller"].contains("invalid_document") && reasons["bad:seller"].contains("seller"),
        "{reasons:?}"
    );
    assert!(reasons["bad:versions"].starts_with("inconsistent_event"), "{reasons:?}");
    assert!(reasons["bad:tenant"].contains("tenant"), "{reasons:?}");
    stop.cancel();
    run.await?;
    Ok(())
}

/// The lag metrics move with unindexed events and return to zero once they are indexed.
#[tokio::test]
async fn index_lag_moves_and_returns_to_zero() -> anyhow::Result<()> {
    let env = env().await?;
    let ix = indexer()?;
    let before = lag::read(&env.js, &env.topology).await?;
    assert_eq!(before.len(), 1);
    assert_eq!((before[0].index.as_str(), before[0].events, before[0].seconds), ("products", 0, 0.0));
    for n in 0..12 {
        let sku = format!("L{n}");
        publish(
            &env.publisher,
            &format!("l:{n}"),
            &changed(&sku, "s1", 1, Some(product(&sku, "s1", 1, "jug"))),
        )
        .await?;
    }
    // Behind by all twelve, and by a time that grows while nobody indexes.
    let behind = lag::read(&env.js, &env.topology).await?;
    assert_eq!(behind[0].events, 12);
    let first_age = behind[0].seconds;
    eventually(WAIT, || async {
        let later = lag::read(&env.js, &env.topology).await?;
        anyhow::Ok((later[0].seconds > first_age && later[0].events == 12).then_some(()))
    })
    .await?;
    let (stop, run) = env.index_with(ix.store.clone()).await?;
    eventually(WAIT, || async {
        let now = lag::read(&env.js, &env.topology).await?;
        anyhow::Ok((now[0].events == 0 && now[0].seconds == 0.0).then_some(()))
    })
    .await?;
    assert_eq!(search(ix.store.as_ref(), "jug").await?.total, 12);
    stop.cancel();
    run.await?;
    Ok(())
}

/// An event of a newer schema (a catalog upgraded before its indexer) waits for the
/// upgrade: delivered, never acked, never dead-lettered; the events behind it go on.
#[tokio::test]
async fn a_product_change_of_a_newer_schema_waits_instead_of_being_dead_lettered() -> anyhow::Result<()> {
    let env = env().await?;
    let ix = indexer()?;
    let (stop, run) = env.index_with(ix.store.clone()).await?;
    let v2 = format!("{}/v{}", ProductChanged::SCHEMA, ProductChanged::VERSION + 1);
    let newer = changed("NEXT", "s1", 1, Some(product("NEXT", "s1", 1, "future mug")));
    publish_raw(&env.publisher, "newer", encode(&newer), &v2).await?;
    publish(&env.publisher, "after", &changed("NOW", "s1", 1, Some(product("NOW", "s1", 1, "present mug"))))
        .await?;
    eventually(WAIT, || async { stored(ix.store.as_ref(), "NOW").await }).await?;
    let info = env.js.get_stream("EVT").await?.consumer_info(INDEX_CONSUMER).await?;
    assert_eq!(info.ack_floor.stream_sequence, 0, "the newer event is not acknowledged");
    assert_eq!(stored(ix.store.as_ref(), "NEXT").await?, None);
    assert_eq!(env.dead_letters().await?, 0);
    stop.cancel();
    run.await?;
    Ok(())
}

/// The same through a real condition: the index directory vanishes (an unmounted
/// volume) while events arrive, and comes back. Nothing is acked or dead-lettered
/// meanwhile, and afterwards every product is indexed exactly once.
#[tokio::test]
async fn a_vanished_index_directory_holds_the_batch_until_it_returns() -> anyhow::Result<()> {
    let env = env().await?;
    let dir = tempfile::tempdir()?;
    let store = Arc::new(TantivyStore::open(dir.path().join("search"), Default::default())?);
    let live = store.live_dir();
    let away = dir.path().join("away");
    let (stop, run) = env.index_with(store.clone()).await?;
    publish(&env.publisher, "first", &changed("F0", "s1", 1, Some(product("F0", "s1", 1, "teapot")))).await?;
    eventually(WAIT, || env.indexed_all()).await?;

    std::fs::rename(&live, &away)?;
    for n in 1..=20 {
        let sku = format!("F{n}");
        publish(
            &env.publisher,
            &format!("e:{sku}"),
            &changed(&sku, "s1", 1, Some(product(&sku, "s1", 1, "teapot"))),
        )
        .await?;
    }
    // Delivered and held: every one outstanding, none acked, none dead-lettered.
    eventually(WAIT, || async {
        let info = env.js.get_stream("EVT").await?.consumer_info(INDEX_CONSUMER).await?;
        anyhow::Ok((info.num_pending == 0 && info.num_ack_pending == 20).then_some(()))
    })
    .await?;
    assert_eq!(env.dead_letters().await?, 0);

    std::fs::rename(&away, &live)?;
    eventually(WAIT, || env.indexed_all()).await?;
    assert_eq!(search(store.as_ref(), "teapot").await?.total, 21);
    assert_eq!(store.stats().await?.docs, 21);
    assert_eq!(env.dead_letters().await?, 0);
    stop.cancel();
    run.await?;
    Ok(())
}

/// A store that refuses one tenant's document as OpenSearch refuses a bulk item its
/// mapping cannot take (`BadDocument`), and is a real tantivy store for the rest.
struct RefusingOne {
    inner: TantivyStore,
    tenant: &'static str,
    sku: &'static str,
}

impl SearchStore for RefusingOne {
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        if ops.iter().any(|op| op.tenant() == self.tenant && op.sku() == self.sku) {
            let e = SearchError::BadDocument {
                tenant: self.tenant.into(),
                sku: self.sku.into(),
                reason: "mapper_parsing_exception".into(),
            };
            return async move { Err(e) }.boxed();
        }
        self.inner.apply(ops)
    }
    fn search<'a>(&'a self, r: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        self.inner.search(r)
    }
    fn version<'a>(
        &'a self,
        t: &'a str,
        s: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        self.inner.version(t, s)
    }
    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        self.inner.begin_rebuild()
    }
    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        self.inner.stats()
    }
}

/// A document the store refuses dead-letters its own event only: another tenant's
/// product with the same SKU in the same batch is indexed, not dead-lettered with it.
#[tokio::test]
async fn a_refused_document_dead_letters_only_its_own_tenants_event() -> anyhow::Result<()> {
    let env = env().await?;
    let dir = tempfile::tempdir()?;
    let inner = TantivyStore::open(dir.path().join("search"), Default::default())?;
    let store = Arc::new(RefusingOne { inner, tenant: "t2", sku: "SAME" });
    // Stored before the indexer starts, so they are fetched (and batched) together.
    publish(&env.publisher, "t1:same", &changed("SAME", "s1", 1, Some(product("SAME", "s1", 1, "kettle"))))
        .await?;
    let mut other = changed("SAME", "s1", 1, Some(product("SAME", "s1", 1, "kettle")));
    other.tenant = "t2".into();
    publish(&env.publisher, "t2:same", &other).await?;
    publish(&env.publisher, "t1:ok", &changed("OK", "s1", 1, Some(product("OK", "s1", 1, "kettle")))).await?;
    let (stop, run) = env.index_with(store.clone()).await?;
    eventually(WAIT, || env.indexed_all()).await?;
    stop.cancel();
    run.await?;
    assert_eq!(search(store.as_ref(), "kettle").await?.total, 2, "t1's SAME and OK are indexed");
    let dlq = env.js.get_stream("DLQ").await?;
    let mut ids = Vec::new();
    for seq in 1..=dlq.get_info().await?.state.last_sequence {
        let m = dlq.get_raw_message(seq).await?;
        ids.push(m.headers.get(headers::DLQ_MSG_ID).map(|v| v.to_string()).unwrap_or_default());
    }
    assert_eq!(ids, ["t2:same"]);
    Ok(())
}

/// Without its consumer (deleted, or EVT re-created without it) nothing indexes: the lag
/// reads what a re-created consumer would have to index — every stored event and the age
/// of the first — instead of failing and leaving the gauges at their last value (0: a
/// stalled index shown as caught up).
#[tokio::test]
async fn index_lag_without_its_consumer_counts_every_stored_event() -> anyhow::Result<()> {
    let env = env().await?;
    for n in 0..3 {
        let sku = format!("M{n}");
        publish(
            &env.publisher,
            &format!("m:{n}"),
            &changed(&sku, "s1", 1, Some(product(&sku, "s1", 1, "jug"))),
        )
        .await?;
    }
    let evt = env.js.get_stream("EVT").await?;
    evt.delete_consumer(INDEX_CONSUMER).await?;
    let lag = lag::read(&env.js, &env.topology).await?;
    assert_eq!(lag[0].events, 3);
    eventually(WAIT, || async {
        let later = lag::read(&env.js, &env.topology).await?;
        anyhow::Ok((later[0].seconds > 0.0).then_some(()))
    })
    .await?;
    Ok(())
}
