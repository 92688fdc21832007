//! The OpenSearch adapter (in progress).

use crate::search::SearchError;

#[derive(Debug, Clone)]
pub struct OpenSearchOptions {
    pub url: String,
    pub index_prefix: String,
}

impl OpenSearchOptions {
    pub fn new(url: &str, index_prefix: &str) -> OpenSearchOptions {
        OpenSearchOptions { url: url.to_owned(), index_prefix: index_prefix.to_owned() }
    }
}

pub struct OpenSearchStore;

impl OpenSearchStore {
    pub async fn connect(_: OpenSearchOptions) -> Result<crate::search::tantivy::TantivyStore, SearchError> {
        Err(SearchError::Unavailable("not yet".into()))
    }

    pub async fn delete_all(_: &str, _: &str) -> Result<(), SearchError> {
        Ok(())
    }
}
