//! One tantivy index directory: its single writer, its reader, and version-safe batches.
//!
//! Commit and reload policy: each [`IndexHandle::apply`] batch is one commit (tantivy
//! fsyncs the segment files and `meta.json`), followed by a manual reader reload, so the
//! batch is durable and searchable when `apply` returns. The reader also reloads on its
//! own when `meta.json` changes ([`ReloadPolicy::OnCommitWithDelay`]), which only a
//! commit or the end of a background merge does: every visible state is still a whole
//! batch, and merged segments are searched without waiting for the next one. The writer's
//! memory budget ([`super::TantivyOptions::writer_memory_bytes`]) only bounds one batch's
//! in-memory segment; batches are committed long before it fills.

use super::schema::{F_LIVE, F_VERSION, Fields, doc_key};
use crate::search::doc::newest_per_key;
use crate::search::{ApplyOutcome, IndexOp, SearchError, StoredVersion};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tantivy::directory::MmapDirectory;
use tantivy::query::TermQuery;
use tantivy::schema::IndexRecordOption;
use tantivy::{
    DocSet, Index, IndexReader, IndexWriter, ReloadPolicy, Searcher, TERMINATED, TantivyError, Term,
};

/// Most versions kept in memory (about 100 bytes each).
const VERSION_CACHE_ENTRIES: usize = 1_000_000;

pub struct IndexHandle {
    pub dir: PathBuf,
    pub fields: Fields,
    reader: IndexReader,
    writer: Mutex<WriterState>,
    /// To make a new writer when a failed commit could not be rolled back.
    index: Index,
    writer_memory_bytes: usize,
}

struct WriterState {
    /// `None` after a failed commit whose rollback failed too (the directory vanished:
    /// tantivy's writer has then lost its lock and panics on its next use); the next
    /// batch makes a new one, which fails as an outage until the directory is back.
    writer: Option<IndexWriter>,
    /// Versions known to be committed, so most lookups skip the index. Filled by commits
    /// and lookups; the index (tombstones included) stays the source of truth.
    versions: HashMap<String, StoredVersion>,
    last_commit: Option<DateTime<Utc>>,
    /// A commit whose reader reload failed: the reader (and lookups through it) lag the
    /// index until a reload succeeds, so every batch reloads first.
    reload_pending: bool,
}

impl IndexHandle {
    /// Opens the index in `dir`, creating it if empty.
    pub fn open(dir: &Path, writer_memory_bytes: usize) -> Result<IndexHandle, SearchError> {
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let (schema, fields) = Fields::schema();
        let directory = MmapDirectory::open(dir).map_err(|e| SearchError::Unavailable(e.to_string()))?;
        let mut index = Index::open_or_create(directory, schema).map_err(tantivy_error)?;
        Fields::register_analyzer(&index);
        // One query's segments searched in parallel, on as many threads as cores: a
        // broad query (a facet-only one visits every document) is then bounded by the
        // largest segment rather than the sum, which is what p99 waits for.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        index.set_multithread_executor(threads).map_err(tantivy_error)?;
        // One indexing thread: the node shares its cores with the pools and the ingress,
        // and batches are small; the budget per thread must be at least 15 MB.
        let writer_memory_bytes = writer_memory_bytes.max(15_000_000);
        let writer = index.writer_with_num_threads(1, writer_memory_bytes).map_err(tantivy_error)?;
        // Reloaded by each batch (so it is searchable when `apply` returns), and also
        // when `meta.json` changes without one: a background merge ending. With manual
        // reloads only, the merged segments were never searched until the next batch,
        // so an index that went quiet after a bulk load kept every small segment (each
        // one more pass per query).
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::OnCommitWithDelay)
            .try_into()
            .map_err(tantivy_error)?;
        Ok(IndexHandle {
            dir: dir.to_owned(),
            fields,
            reader,
            writer: Mutex::new(WriterState {
                writer: Some(writer),
                versions: HashMap::new(),
                last_commit: None,
                reload_pending: false,
            }),
            index,
            writer_memory_bytes,
        })
    }

    /// The current searchable state.
    pub fn searcher(&self) -> Searcher {
        self.reader.searcher()
    }

    pub fn last_commit(&self) -> Option<DateTime<Utc>> {
        self.lock().last_commit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WriterState> {
        // A panic while holding the lock leaves the cache possibly ahead of the index
        // only if a commit half-happened; the cache is only updated after a commit, so
        // the state is still consistent.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a batch version-safely and commits it; returns when it is searchable.
    /// Blocking: call it from a blocking thread.
    pub fn apply(&self, ops: Vec<IndexOp>) -> Result<ApplyOutcome, SearchError> {
        for op in &ops {
            op.validate().map_err(|reason| SearchError::BadDocument {
                tenant: op.tenant().to_owned(),
                sku: op.sku().to_owned(),
                reason,
            })?;
        }
        let (ops, duplicates) = newest_per_key(ops);
        let mut outcome = ApplyOutcome { applied: 0, stale: duplicates };
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.writer.is_none() {
            let writer =
                self.index.writer_with_num_threads(1, self.writer_memory_bytes).map_err(tantivy_error)?;
            state.writer = Some(writer);
        }
        let Some(writer) = state.writer.as_mut() else {
            return Err(SearchError::Internal("no index writer".into()));
        };
        if state.reload_pending {
            // Lookups must see the last commit, and a batch that writes nothing new must
            // still be searchable when this returns.
            self.reader.reload().map_err(tantivy_error)?;
            state.reload_pending = false;
        }
        let searcher = self.reader.searcher();
        let mut written: Vec<(String, StoredVersion)> = Vec::new();
        for op in &ops {
            let key = doc_key(op.tenant(), op.sku());
            let stored = match state.versions.get(&key) {
                Some(v) => Some(*v),
                None => lookup(&searcher, &self.fields, op.tenant(), op.sku())?,
            };
            if stored.is_some_and(|s| s.version >= op.version()) {
                outcome.stale += 1;
                continue;
            }
            writer.delete_term(self.fields.key_term(op.tenant(), op.sku()));
            let (doc, deleted) = match op {
                IndexOp::Upsert(doc) => (self.fields.product(doc), false),
                IndexOp::Delete { tenant, sku, version } => {
                    (self.fields.tombstone(tenant, sku, *version), true)
                }
            };
            writer.add_document(doc).map_err(tantivy_error)?;
            written.push((key, StoredVersion { version: op.version(), deleted }));
            outcome.applied += 1;
        }
        if written.is_empty() {
            return Ok(outcome);
        }
        if let Err(e) = writer.commit() {
            // Drop the uncommitted ops so the next batch starts from the last commit; a
            // writer that cannot even roll back is replaced by the next batch.
            if writer.rollback().is_err() {
                state.writer = None;
            }
            return Err(tantivy_error(e));
        }
        // Committed: the cache follows the index now, before the reload, which may fail —
        // a cache left behind the index would let a stale op overwrite what this batch
        // wrote (its lookup falling back to a reader that has not seen the commit).
        // The cache only saves lookups; past its bound it starts over rather than grow
        // with the catalog.
        if state.versions.len() + written.len() > VERSION_CACHE_ENTRIES {
            state.versions.clear();
        }
        state.versions.extend(written);
        state.last_commit = Some(Utc::now());
        state.reload_pending = true;
        self.reader.reload().map_err(tantivy_error)?;
        state.reload_pending = false;
        Ok(outcome)
    }

    /// Wait for the merges under way to end, and search their result. Blocking. For
    /// benchmarks and maintenance: batches wait meanwhile.
    pub fn wait_for_merges(&self) -> Result<(), SearchError> {
        let mut state = self.lock();
        if let Some(writer) = state.writer.take() {
            writer.wait_merging_threads().map_err(tantivy_error)?;
        }
        state.writer =
            Some(self.index.writer_with_num_threads(1, self.writer_memory_bytes).map_err(tantivy_error)?);
        self.reader.reload().map_err(tantivy_error)
    }

    /// Segments in the current searchable state.
    pub fn segments(&self) -> usize {
        self.reader.searcher().segment_readers().len()
    }

    /// The stored version of `(tenant, sku)`.
    pub fn version(&self, tenant: &str, sku: &str) -> Result<Option<StoredVersion>, SearchError> {
        if let Some(v) = self.lock().versions.get(&doc_key(tenant, sku)) {
            return Ok(Some(*v));
        }
        lookup(&self.reader.searcher(), &self.fields, tenant, sku)
    }

    /// Documents and tombstones in the current state.
    pub fn counts(&self) -> Result<(u64, u64), SearchError> {
        let searcher = self.reader.searcher();
        let count = |live: u64| -> Result<u64, SearchError> {
            let q = TermQuery::new(Term::from_field_u64(self.fields.live, live), IndexRecordOption::Basic);
            let n = searcher.search(&q, &tantivy::collector::Count).map_err(tantivy_error)?;
            Ok(n as u64)
        };
        Ok((count(1)?, count(0)?))
    }
}

/// Reads the version of `(tenant, sku)` from the index: the one alive document with its
/// key, through the term dictionary and the `version` fast field.
fn lookup(
    searcher: &Searcher,
    fields: &Fields,
    tenant: &str,
    sku: &str,
) -> Result<Option<StoredVersion>, SearchError> {
    let term = fields.key_term(tenant, sku);
    for segment in searcher.segment_readers() {
        let inverted = segment.inverted_index(fields.key).map_err(tantivy_error)?;
        let Some(mut postings) = inverted.read_postings(&term, IndexRecordOption::Basic).map_err(io_error)?
        else {
            continue;
        };
        let fast = segment.fast_fields();
        let versions = fast.i64(F_VERSION).map_err(tantivy_error)?;
        let lives = fast.u64(F_LIVE).map_err(tantivy_error)?;
        let mut doc = postings.doc();
        while doc != TERMINATED {
            if !segment.is_deleted(doc)
                && let Some(version) = versions.first(doc)
            {
                let deleted = lives.first(doc) == Some(0);
                return Ok(Some(StoredVersion { version, deleted }));
            }
            doc = postings.advance();
        }
    }
    Ok(None)
}

pub fn io_error(e: std::io::Error) -> SearchError {
    SearchError::Unavailable(e.to_string())
}

/// I/O failures (disk full, permissions, a vanished directory) are outages; so is
/// everything else tantivy reports, as none of it is caused by one document.
pub fn tantivy_error(e: TantivyError) -> SearchError {
    match e {
        TantivyError::IoError(_)
        | TantivyError::OpenDirectoryError(_)
        | TantivyError::OpenWriteError(_)
        | TantivyError::OpenReadError(_)
        | TantivyError::LockFailure(..) => SearchError::Unavailable(e.to_string()),
        other => SearchError::Internal(other.to_string()),
    }
}
