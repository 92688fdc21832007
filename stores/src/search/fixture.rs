//! The known-answer catalog shared by the conformance suite and the search API tests.
//!
//! `stores/tests/fixtures/search-catalog.json` holds ~40 hand-written products of tenant
//! [`TENANT`] (plus a few of [`OTHER_TENANT`] for isolation). The file is compiled in, so
//! any crate can load it with [`catalog`] and index it with [`ops`].

use super::{IndexOp, SearchDoc};

/// The tenant of the fixture catalog.
pub const TENANT: &str = "acme";
/// Another tenant, with a few products that must never appear in [`TENANT`]'s results.
pub const OTHER_TENANT: &str = "globex";

const CATALOG_JSON: &str = include_str!("../../tests/fixtures/search-catalog.json");

/// The fixture documents (both tenants), at the versions the file gives.
pub fn catalog() -> Vec<SearchDoc> {
    serde_json::from_str(CATALOG_JSON).expect("the fixture catalog is valid JSON")
}

/// Upserts of the whole fixture.
pub fn ops() -> Vec<IndexOp> {
    catalog().into_iter().map(IndexOp::Upsert).collect()
}
