//! Errors of the search store, classified for the indexer and the API.

use thiserror::Error;

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorProblem {
    /// Not a cursor this store issued (bad encoding, bad signature).
    Malformed,
    /// The snapshot it pinned is gone (expired, evicted, or the process restarted).
    Expired,
    /// Issued for another query (other text, filters, sort or page size).
    OtherQuery,
}

impl std::fmt::Display for CursorProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CursorProblem::Malformed => "malformed cursor",
            CursorProblem::Expired => "expired cursor: start again from the first page",
            CursorProblem::OtherQuery => "cursor belongs to another query",
        })
    }
}

#[derive(Debug, Error)]
pub enum SearchError {
    /// A request the store cannot run; `field` names the parameter (a 400).
    #[error("invalid {field}: {reason}")]
    InvalidRequest { field: &'static str, reason: String },
    /// A cursor the store refuses (a 400 naming `cursor`).
    #[error("{0}")]
    BadCursor(CursorProblem),
    /// A document the index cannot hold: a failure of the message (dead letter). Named
    /// by tenant and sku: the same sku of another tenant is another product.
    #[error("bad document {tenant}/{sku}: {reason}")]
    BadDocument { tenant: String, sku: String, reason: String },
    /// The index is unavailable: disk full, I/O error, server down or timed out. A failure
    /// of the dependency (back off, retry; never dead-letter).
    #[error("search store unavailable: {0}")]
    Unavailable(String),
    /// A rebuild is already running.
    #[error("a rebuild is already running")]
    RebuildRunning,
    /// A bug or a broken invariant of the store itself.
    #[error("search store internal error: {0}")]
    Internal(String),
}

impl SearchError {
    /// `true` for failures of the store (retry later); `false` for failures of the input.
    pub fn is_outage(&self) -> bool {
        matches!(self, SearchError::Unavailable(_) | SearchError::Internal(_))
    }

    /// `true` when the caller's request or cursor is at fault (a 400).
    pub fn is_bad_request(&self) -> bool {
        matches!(self, SearchError::InvalidRequest { .. } | SearchError::BadCursor(_))
    }
}
