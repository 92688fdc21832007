//! The OpenSearch adapter (production).
//!
//! - Names: the alias `{prefix}-products` (read and write) points at one concrete index
//!   `{prefix}-products-{uuid}`; while a rebuild runs, the alias `{prefix}-products-next`
//!   points at the index being filled, and every `apply` (on any node) writes to it too.
//!   The swap is one `_aliases` call (remove the alias from the old index, add it to the
//!   new one, drop `-next`); the old index is deleted after it.
//! - Mapping ([`mapping`]): explicit and strict; the same analyzer as tantivy (split on
//!   non-alphanumerics, lowercase, ASCII folding); filters and facets on keywords
//!   (`category_paths` holds every path prefix, `attrs` holds `key\u{1f}value`, the
//!   canonical value text: one field serves filters and one terms aggregation for every
//!   attribute key, and typed values compare as in tantivy); the document itself in a
//!   non-indexed `doc` object, from which hits and highlights are built.
//! - Version safety: bulk `index` with `version_type=external` and the product's version;
//!   a 409 per item is a stale op (counted, not an error). A delete indexes a tombstone
//!   document (`live: false`) at its version instead of deleting: OpenSearch forgets the
//!   versions of deleted documents after `index.gc_deletes` (60 s), after which a stale
//!   update would resurrect the product.
//! - `refresh=wait_for` on the live bulk, so `apply` returns when the batch is searchable.
//! - Cursors: a point in time (PIT, kept alive [`OpenSearchOptions::cursor_keep_alive`])
//!   opened by the first page, and `search_after` on the sort values of the last hit; the
//!   cursor carries both and the query fingerprint. It is not signed: the PIT lives in the
//!   cluster, so any node can continue it, and a forged one only reaches what the same
//!   tenant's query could.

pub mod mapping;
pub mod query;
pub mod store;

pub use store::OpenSearchStore;

use std::time::Duration;

#[derive(Clone)]
pub struct OpenSearchOptions {
    /// e.g. `https://user:pass@search.internal:9200`.
    pub url: String,
    /// Prefix of the alias and index names (`souk`, or one per test).
    pub index_prefix: String,
    /// Timeout of each request.
    pub timeout: Duration,
    /// How long a cursor's point in time lives after its last page.
    pub cursor_keep_alive: Duration,
    /// Shards of a new index (1 suits a catalog of millions of products).
    pub shards: u32,
    pub replicas: u32,
}

impl std::fmt::Debug for OpenSearchOptions {
    /// The URL may carry credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenSearchOptions")
            .field("url", &"<hidden>")
            .field("index_prefix", &self.index_prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl OpenSearchOptions {
    pub fn new(url: &str, index_prefix: &str) -> OpenSearchOptions {
        OpenSearchOptions {
            url: url.to_owned(),
            index_prefix: index_prefix.to_owned(),
            timeout: Duration::from_secs(10),
            cursor_keep_alive: Duration::from_secs(300),
            shards: 1,
            replicas: 1,
        }
    }

    pub fn alias(&self) -> String {
        format!("{}-products", self.index_prefix)
    }

    pub fn next_alias(&self) -> String {
        format!("{}-products-next", self.index_prefix)
    }

    pub fn new_index_name(&self) -> String {
        format!("{}-products-{}", self.index_prefix, uuid::Uuid::now_v7().simple())
    }
}
