//! The embedded tantivy store, the default.
//!
//! Layout under the directory given at open (the data dir's `search/`): one index
//! directory `index-<uuid>/` and a `CURRENT` file naming it. A rebuild fills a second
//! `index-<uuid>/`, then renames a new `CURRENT` over the old one (atomic on POSIX), swaps
//! the in-process handle and removes the old directory. A directory `CURRENT` does not
//! name is a rebuild that never finished, removed at the next open.
//!
//! - [`index`]: one index, its single writer, version-safe batches, commit and reload.
//! - [`schema`]: fields and documents (tombstones included).
//! - [`query`], [`collect`]: a request as a query; the page and the facets in one pass.
//! - [`snapshots`]: searchers pinned for cursors.
//! - [`store`]: [`TantivyStore`], the [`crate::search::SearchStore`] implementation.
//! - [`threads`]: the threads queries run on, first come first served.

pub mod collect;
pub mod index;
pub mod query;
pub mod schema;
pub mod snapshots;
pub mod store;
pub mod threads;

pub use store::TantivyStore;

use std::time::Duration;

/// Tuning of the tantivy store; the defaults suit a node and the tests.
#[derive(Debug, Clone)]
pub struct TantivyOptions {
    /// Memory budget of the single indexing thread (tantivy's minimum is 15 MB). A
    /// batch is committed whole, so this only needs to hold the largest batch's segment:
    /// 64 MB holds tens of thousands of product documents.
    pub writer_memory_bytes: usize,
    /// How long an unused cursor snapshot is kept.
    pub snapshot_ttl: Duration,
    /// Most cursor snapshots kept at once.
    pub snapshot_capacity: usize,
    /// Threads queries run on, so the most that run at once; the rest wait their turn,
    /// first come first served (see [`threads`]). Defaults to the cores this process
    /// may use.
    pub search_threads: usize,
}

impl TantivyOptions {
    /// These options with `threads` search threads, or the default when `None` (a
    /// setting left unset).
    pub fn with_search_threads(self, threads: Option<usize>) -> TantivyOptions {
        TantivyOptions { search_threads: threads.unwrap_or(self.search_threads), ..self }
    }
}

impl Default for TantivyOptions {
    fn default() -> TantivyOptions {
        TantivyOptions {
            writer_memory_bytes: 64 * 1024 * 1024,
            snapshot_ttl: Duration::from_secs(300),
            snapshot_capacity: 64,
            search_threads: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        }
    }
}
