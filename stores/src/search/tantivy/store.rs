//! [`TantivyStore`]: the [`SearchStore`] over one live [`IndexHandle`] (and a second one
//! while a rebuild runs).

use super::TantivyOptions;
use super::collect::{FacetCollector, SortKey, TopCollector};
use super::index::{IndexHandle, io_error, tantivy_error};
use super::query;
use super::snapshots::{Current, Snapshots};
use super::threads::SearchThreads;
use crate::search::cursor::Signer;
use crate::search::highlight::{highlight_all, snippet};
use crate::search::text::query_words;
use crate::search::{
    ApplyOutcome, CursorProblem, Facets, Highlights, IndexOp, Rebuild, SearchDoc, SearchError, SearchHit,
    SearchRequest, SearchResults, SearchStore, StoreStats, StoredVersion,
};
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use tantivy::TantivyDocument;
use tantivy::schema::Value;

const POINTER: &str = "CURRENT";
const INDEX_PREFIX: &str = "index-";

/// The embedded store. Cheap to clone (one shared state).
#[derive(Clone)]
pub struct TantivyStore {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    options: TantivyOptions,
    live: RwLock<Arc<IndexHandle>>,
    /// The index being rebuilt, which every `apply` also writes to.
    rebuild: Mutex<Option<Arc<IndexHandle>>>,
    current: RwLock<Current>,
    next_snapshot: AtomicU64,
    snapshots: Snapshots,
    signer: Signer,
    /// Serialises `apply` and the swap, so no batch lands in only one of two indexes.
    apply_lock: tokio::sync::Mutex<()>,
    facets: FacetCache,
    /// Where queries run (`TantivyOptions::search_threads` threads, one queue).
    threads: SearchThreads,
}

/// The total and facets of recent queries on one searcher (snapshot id): they depend
/// only on what matches, not on the sort or the page, and a searcher never changes, so
/// the same filters (the category pages, a match-all with every facet) are counted
/// once per commit instead of once per query — a pass over every matching document.
/// Cleared when a newer snapshot is searched; bounded.
#[derive(Default)]
struct FacetCache(Mutex<(u64, HashMap<u64, Counted>)>);

/// A query's total and facets.
type Counted = (u64, Facets);

const FACET_CACHE_ENTRIES: usize = 1024;

impl FacetCache {
    fn get(&self, snapshot: u64, key: u64) -> Option<Counted> {
        let cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        (cache.0 == snapshot).then(|| cache.1.get(&key).cloned()).flatten()
    }

    fn put(&self, snapshot: u64, key: u64, total: u64, facets: &Facets) {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot > cache.0 {
            *cache = (snapshot, HashMap::new());
        }
        // An older snapshot's (a cursor's page) are not kept: they would evict the
        // current one's.
        if snapshot == cache.0 && cache.1.len() < FACET_CACHE_ENTRIES {
            cache.1.insert(key, (total, facets.clone()));
        }
    }
}

/// What a tantivy cursor holds.
#[derive(Serialize, Deserialize)]
struct CursorPayload {
    /// Snapshot id.
    s: u64,
    /// Query fingerprint.
    f: u64,
    /// Rank of the last hit.
    r: u64,
    /// Sku of the last hit.
    k: String,
}

impl TantivyStore {
    /// Opens (or creates) the store under `root`. Blocking (file system).
    pub fn open(root: impl AsRef<Path>, options: TantivyOptions) -> Result<TantivyStore, SearchError> {
        let root = root.as_ref().to_owned();
        std::fs::create_dir_all(&root).map_err(io_error)?;
        let name = match std::fs::read_to_string(root.join(POINTER)) {
            Ok(name) => name.trim().to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = new_index_name();
                write_pointer(&root, &name)?;
                name
            }
            Err(e) => return Err(io_error(e)),
        };
        remove_unnamed_indexes(&root, &name);
        let live = Arc::new(IndexHandle::open(&root.join(&name), options.writer_memory_bytes)?);
        let current = Current { id: 1, searcher: live.searcher() };
        let threads = SearchThreads::start(options.search_threads).map_err(io_error)?;
        Ok(TantivyStore {
            inner: Arc::new(Inner {
                root,
                snapshots: Snapshots::new(options.snapshot_ttl, options.snapshot_capacity),
                options,
                live: RwLock::new(live),
                rebuild: Mutex::new(None),
                current: RwLock::new(current),
                next_snapshot: AtomicU64::new(2),
                signer: Signer::default(),
                apply_lock: tokio::sync::Mutex::new(()),
                facets: FacetCache::default(),
                threads,
            }),
        })
    }

    /// The directory of the live index (for tests and `souk status`).
    pub fn live_dir(&self) -> PathBuf {
        self.inner.live().dir.clone()
    }

    /// Cursor snapshots currently pinned.
    pub fn pinned_snapshots(&self) -> usize {
        self.inner.snapshots.len()
    }

    /// Wait until the live index's background merges end, and search their result
    /// (a benchmark measures queries on a settled index this way). Batches wait meanwhile.
    pub async fn wait_for_merges(&self) -> Result<(), SearchError> {
        let inner = self.inner.clone();
        let _serial = inner.apply_lock.lock().await;
        let run = inner.clone();
        blocking(move || run.live().wait_for_merges()).await
    }

    /// Segments the live index is searched in.
    pub fn segments(&self) -> usize {
        self.inner.live().segments()
    }

    /// The most queries that ran at once since the store was opened (at most
    /// `TantivyOptions::search_threads`): for tests and the benchmark's report.
    pub fn peak_concurrent_searches(&self) -> usize {
        self.inner.threads.peak()
    }
}

impl Inner {
    fn live(&self) -> Arc<IndexHandle> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn rebuilding(&self) -> Option<Arc<IndexHandle>> {
        self.rebuild.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn refresh_current(&self, live: &IndexHandle) {
        let id = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Current { id, searcher: live.searcher() };
    }

    /// The live index's current searcher, under a new snapshot id whenever the reader
    /// moved on without a batch of ours (it reloads when a background merge ends).
    fn current(&self) -> Current {
        let searcher = self.live().searcher();
        let same = |c: &Current| c.searcher.generation().segments() == searcher.generation().segments();
        {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            if same(&current) {
                return current.clone();
            }
        }
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if !same(&current) {
            let id = self.next_snapshot.fetch_add(1, Ordering::Relaxed);
            *current = Current { id, searcher };
        }
        current.clone()
    }

    fn apply_blocking(&self, ops: Vec<IndexOp>) -> Result<ApplyOutcome, SearchError> {
        let rebuild = self.rebuilding();
        let live = self.live();
        let copy = rebuild.as_ref().map(|_| ops.clone());
        let outcome = live.apply(ops)?;
        if outcome.applied > 0 {
            self.refresh_current(&live);
        }
        if let (Some(rebuild), Some(ops)) = (rebuild, copy) {
            rebuild.apply(ops)?;
        }
        Ok(outcome)
    }

    fn search_blocking(&self, request: &SearchRequest) -> Result<SearchResults, SearchError> {
        request.validate()?;
        let fingerprint = request.fingerprint();
        let (current, after) = match &request.cursor {
            Some(cursor) => {
                let p: CursorPayload = self.signer.decode(cursor)?;
                if p.f != fingerprint {
                    return Err(SearchError::BadCursor(CursorProblem::OtherQuery));
                }
                let searcher =
                    self.snapshots.get(p.s).ok_or(SearchError::BadCursor(CursorProblem::Expired))?;
                (Current { id: p.s, searcher }, Some(SortKey { rank: p.r, sku: p.k }))
            }
            None => (self.current(), None),
        };
        let fields = self.live().fields;
        let query = query::build(&fields, request);
        let per_page = request.per_page as usize;
        let top =
            TopCollector { sort: request.sort, scored: request.text().is_some(), limit: per_page + 1, after };
        let searcher = &current.searcher;
        let matching = request.match_fingerprint();
        let ((total, facets), mut ranked) = match self.facets.get(current.id, matching) {
            Some(counted) => (counted, searcher.search(&*query, &top).map_err(tantivy_error)?),
            None => {
                let ((total, facets), ranked) =
                    searcher.search(&*query, &(FacetCollector, top)).map_err(tantivy_error)?;
                self.facets.put(current.id, matching, total, &facets);
                ((total, facets), ranked)
            }
        };
        let has_more = ranked.len() > per_page;
        ranked.truncate(per_page);
        let words = request.text().map(query_words).unwrap_or_default();
        let mut hits = Vec::with_capacity(ranked.len());
        for r in &ranked {
            let stored: TantivyDocument = searcher.doc(r.address).map_err(tantivy_error)?;
            let source = stored.get_first(fields.source).and_then(|v| v.as_str()).unwrap_or("{}");
            let doc: SearchDoc = serde_json::from_str(source)
                .map_err(|e| SearchError::Internal(format!("stored document {}: {e}", r.key.sku)))?;
            hits.push(hit(doc, &words));
        }
        let next_cursor = match ranked.last() {
            Some(last) if has_more => {
                self.snapshots.pin(&current);
                Some(self.signer.encode(&CursorPayload {
                    s: current.id,
                    f: fingerprint,
                    r: last.key.rank,
                    k: last.key.sku.clone(),
                }))
            }
            _ => None,
        };
        Ok(SearchResults { total, hits, facets, next_cursor })
    }

    fn begin_rebuild_blocking(self: &Arc<Self>) -> Result<Box<dyn Rebuild>, SearchError> {
        let mut slot = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            return Err(SearchError::RebuildRunning);
        }
        let dir = self.root.join(new_index_name());
        let handle = Arc::new(IndexHandle::open(&dir, self.options.writer_memory_bytes)?);
        *slot = Some(handle.clone());
        Ok(Box::new(TantivyRebuild { inner: self.clone(), handle: Some(handle) }))
    }

    /// Drops the rebuild slot (if it still holds `handle`) and removes its directory.
    fn discard(&self, handle: Arc<IndexHandle>) {
        let mut slot = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_some_and(|h| Arc::ptr_eq(h, &handle)) {
            *slot = None;
        }
        drop(slot);
        let dir = handle.dir.clone();
        drop(handle);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove an abandoned search index");
        }
    }

    /// The swap: called with the apply lock held, so every batch is in both indexes.
    fn swap_blocking(&self, handle: Arc<IndexHandle>) -> Result<(), SearchError> {
        let name = handle
            .dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| SearchError::Internal("rebuild directory has no name".into()))?
            .to_owned();
        if let Err(e) = write_pointer(&self.root, &name) {
            // Only when `CURRENT` already names the new index (the rename happened, a
            // later fsync failed) is it the one a restart opens: then the swap goes on.
            // Otherwise the rebuild is over, failed: left in its slot it would take every
            // later `apply` and refuse every later rebuild until a restart.
            let named = std::fs::read_to_string(self.root.join(POINTER)).is_ok_and(|n| n.trim() == name);
            if !named {
                self.discard(handle);
                return Err(e);
            }
            tracing::warn!(error = %e, "the search index pointer was replaced but not synced");
        }
        let old = {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *live, handle.clone())
        };
        self.refresh_current(&handle);
        *self.rebuild.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let dir = old.dir.clone();
        // Pinned snapshots of the old index keep its files open (and readable: unlinked
        // files live on while mapped), so earlier cursors still page to their end.
        drop(old);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "could not remove the replaced search index");
        }
        Ok(())
    }
}

fn hit(doc: SearchDoc, words: &[crate::search::text::QueryWord]) -> SearchHit {
    SearchHit {
        highlights: Highlights {
            title: highlight_all(&doc.title, words),
            description: snippet(&doc.description, words),
        },
        sku: doc.sku,
        title: doc.title,
        seller: doc.seller,
        category: doc.category,
        price_minor: doc.price_minor,
        currency: doc.currency,
        stock: doc.stock,
        updated_at: doc.updated_at,
        version: doc.version,
    }
}

fn new_index_name() -> String {
    format!("{INDEX_PREFIX}{}", uuid::Uuid::now_v7().simple())
}

/// Replaces `CURRENT` atomically: write a temporary file, fsync it, rename it over, fsync
/// the directory (so the rename itself survives a crash).
fn write_pointer(root: &Path, name: &str) -> Result<(), SearchError> {
    use std::io::Write;
    let tmp = root.join(format!("{POINTER}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io_error)?;
    f.write_all(name.as_bytes()).map_err(io_error)?;
    f.sync_all().map_err(io_error)?;
    std::fs::rename(&tmp, root.join(POINTER)).map_err(io_error)?;
    std::fs::File::open(root).and_then(|d| d.sync_all()).map_err(io_error)
}

/// Removes index directories `CURRENT` does not name: rebuilds that never finished.
fn remove_unnamed_indexes(root: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(INDEX_PREFIX)
            && name != current
            && let Err(e) = std::fs::remove_dir_all(entry.path())
        {
            tracing::warn!(dir = name, error = %e, "could not remove an abandoned search index");
        }
    }
}

fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SearchError> + Send + 'static,
) -> BoxFuture<'static, Result<T, SearchError>> {
    async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| SearchError::Internal(format!("search task failed: {e}")))?
    }
    .boxed()
}

impl SearchStore for TantivyStore {
    fn backend(&self) -> &'static str {
        "tantivy"
    }

    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        let inner = self.inner.clone();
        async move {
            let _serial = inner.apply_lock.lock().await;
            let run = inner.clone();
            blocking(move || run.apply_blocking(ops)).await
        }
        .boxed()
    }

    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        let inner = self.inner.clone();
        let request = request.clone();
        self.inner.threads.run(move || inner.search_blocking(&request)).boxed()
    }

    fn version<'a>(
        &'a self,
        tenant: &'a str,
        sku: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        let live = self.inner.live();
        let (tenant, sku) = (tenant.to_owned(), sku.to_owned());
        blocking(move || live.version(&tenant, &sku))
    }

    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        let inner = self.inner.clone();
        blocking(move || inner.begin_rebuild_blocking())
    }

    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        let inner = self.inner.clone();
        blocking(move || {
            let live = inner.live();
            let (docs, tombstones) = live.counts()?;
            Ok(StoreStats {
                docs,
                tombstones,
                last_commit: live.last_commit(),
                rebuilding: inner.rebuilding().is_some(),
            })
        })
    }
}

struct TantivyRebuild {
    inner: Arc<Inner>,
    /// `None` once finished or aborted.
    handle: Option<Arc<IndexHandle>>,
}

impl Rebuild for TantivyRebuild {
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        let handle = self.handle.clone();
        blocking(move || match handle {
            Some(h) => h.apply(ops),
            None => Err(SearchError::Internal("rebuild already finished".into())),
        })
    }

    fn finish(mut self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>> {
        let inner = self.inner.clone();
        let handle = self.handle.take();
        async move {
            let handle = handle.ok_or_else(|| SearchError::Internal("rebuild already finished".into()))?;
            let _serial = inner.apply_lock.lock().await;
            let run = inner.clone();
            blocking(move || run.swap_blocking(handle)).await
        }
        .boxed()
    }

    fn abort(mut self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>> {
        let inner = self.inner.clone();
        let handle = self.handle.take();
        blocking(move || {
            if let Some(h) = handle {
                inner.discard(h);
            }
            Ok(())
        })
    }
}

impl Drop for TantivyRebuild {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            self.inner.discard(h);
        }
    }
}
