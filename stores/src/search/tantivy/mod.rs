//! The embedded tantivy store (in progress).
