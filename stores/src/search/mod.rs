//! # Search store: one trait, two implementations
//!
//! [`SearchStore`] is what the indexer, the search route, the reindex job and the
//! benchmark call. [`tantivy`] is the embedded default (an index under the data dir's
//! `search/`); [`opensearch`] is the production adapter. Both pass the same conformance
//! suite (`stores/tests/it/search/`).
//!
//! The rules every implementation keeps (see ARCHITECTURE.md, "Search store"):
//! - **Version safety.** An op whose version is not newer than the version stored for its
//!   `(tenant, sku)` is counted stale and changes nothing. A delete is stored as a
//!   tombstone document carrying its version, so an older update arriving after the delete
//!   (or after a restart) is still recognised as stale. Applying a batch twice is a no-op.
//! - **Durable and searchable on return.** [`SearchStore::apply`] returns only when the
//!   batch is committed and visible to new searches; the indexer acks after it.
//! - **Text matching** ([`text`]): every word must match, in the title or the description
//!   (title weighted higher); a word of 5–8 letters matches within one edit, 9+ within two
//!   (an adjacent transposition is one edit), shorter words exactly; the last word also
//!   matches as a prefix of a word.
//! - **Cursors** pin a snapshot: the pages of one query come from the same index state, so
//!   documents added, changed or removed meanwhile cause no duplicates or gaps. A cursor
//!   that is expired, unknown, tampered with or used with another query is
//!   [`SearchError::BadCursor`] (a 400 for the API).
//! - **Rebuild** ([`SearchStore::begin_rebuild`]) fills a fresh index while the live one
//!   keeps answering and keeps receiving every `apply` (written to both), then swaps it in
//!   atomically.

pub mod cursor;
pub mod doc;
pub mod error;
pub mod fixture;
pub mod highlight;
pub mod opensearch;
pub mod request;
pub mod tantivy;
pub mod text;

pub use doc::{IndexOp, SearchDoc, attr_value_string};
pub use error::{CursorProblem, SearchError};
pub use request::{
    AttrFilter, FacetCount, Facets, Highlights, PRICE_BUCKET_EDGES, PriceBucket, SearchHit, SearchRequest,
    SearchResults, Sort,
};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;

/// What one [`SearchStore::apply`] (or [`Rebuild::apply`]) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// Ops that changed the index (an upsert or a tombstone written).
    pub applied: usize,
    /// Ops ignored because the stored version was the same or newer (replays, out of
    /// order deliveries, updates after a delete).
    pub stale: usize,
}

impl ApplyOutcome {
    pub fn add(&mut self, other: ApplyOutcome) {
        self.applied += other.applied;
        self.stale += other.stale;
    }
}

/// The version the store holds for one `(tenant, sku)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredVersion {
    pub version: i64,
    /// `true`: a tombstone (deleted at `version`).
    pub deleted: bool,
}

/// Figures for `souk status` and metrics.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreStats {
    /// Searchable documents (tombstones excluded), all tenants.
    pub docs: u64,
    /// Tombstones held for version safety.
    pub tombstones: u64,
    /// When the live index last committed (this process), if it has.
    pub last_commit: Option<DateTime<Utc>>,
    /// Whether a rebuild is running.
    pub rebuilding: bool,
}

/// The search index behind one trait. Object safe: used as `Arc<dyn SearchStore>`.
pub trait SearchStore: Send + Sync + 'static {
    /// What implements it, for the status model's sinks (`tantivy`, `opensearch`).
    fn backend(&self) -> &'static str {
        "search"
    }

    /// Applies a batch of ops, version-safely (see the module doc), and returns when they
    /// are durable and searchable. While a rebuild runs, the ops also go to the new index.
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>>;

    /// Runs one query (tenant-scoped): hits, facets over the whole filtered result, the
    /// total and the next page's cursor.
    fn search<'a>(&'a self, request: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>>;

    /// The version stored for `(tenant, sku)`, tombstones included.
    fn version<'a>(
        &'a self,
        tenant: &'a str,
        sku: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>>;

    /// Starts filling a fresh index. Only one rebuild runs at a time
    /// ([`SearchError::RebuildRunning`] otherwise). Dropping the [`Rebuild`] without
    /// [`Rebuild::finish`] abandons it (the live index is untouched).
    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>>;

    /// Document counts and the last commit, for status and metrics.
    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>>;
}

/// A rebuild in progress: the reindex job feeds it every product (deleted ones as
/// [`IndexOp::Delete`], so their tombstones survive the swap), then finishes it.
pub trait Rebuild: Send + Sync {
    /// Writes a batch to the new index only (version-safely, durable on return; not
    /// searchable until the swap).
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>>;

    /// Swaps the new index in atomically (searches keep answering throughout) and removes
    /// the old one.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>>;

    /// Abandons the rebuild and removes the new index.
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>>;
}
