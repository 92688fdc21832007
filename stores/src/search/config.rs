//! Which search store a node uses: the `[search]` table of `souk.toml`, and [`open`].

use super::opensearch::{OpenSearchOptions, OpenSearchStore};
use super::tantivy::{TantivyOptions, TantivyStore};
use super::{SearchError, SearchStore};
use serde::Deserialize;
use std::path::Path;
use std::sync::Arc;

/// `backend = "tantivy"` (the default: an index under `<data dir>/search`) or
/// `backend = "opensearch"` with `url` and an optional `index-prefix` (`souk`).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, tag = "backend")]
pub enum SearchConfig {
    Tantivy {},
    #[serde(rename = "opensearch", rename_all = "kebab-case")]
    OpenSearch {
        url: String,
        #[serde(default = "default_prefix")]
        index_prefix: String,
    },
}

impl Default for SearchConfig {
    fn default() -> SearchConfig {
        SearchConfig::Tantivy {}
    }
}

fn default_prefix() -> String {
    "souk".to_owned()
}

impl std::fmt::Debug for SearchConfig {
    /// The URL may carry credentials: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SearchConfig::Tantivy {} => f.write_str("Tantivy"),
            SearchConfig::OpenSearch { index_prefix, .. } => f
                .debug_struct("OpenSearch")
                .field("url", &"<hidden>")
                .field("index_prefix", index_prefix)
                .finish(),
        }
    }
}

/// Opens the configured store; tantivy's under `data_dir/search`.
pub async fn open(config: &SearchConfig, data_dir: &Path) -> Result<Arc<dyn SearchStore>, SearchError> {
    match config {
        SearchConfig::Tantivy {} => {
            let dir = data_dir.join("search");
            let store =
                tokio::task::spawn_blocking(move || TantivyStore::open(dir, TantivyOptions::default()))
                    .await
                    .map_err(|e| SearchError::Internal(format!("opening the search index: {e}")))??;
            Ok(Arc::new(store))
        }
        SearchConfig::OpenSearch { url, index_prefix } => {
            Ok(Arc::new(OpenSearchStore::connect(OpenSearchOptions::new(url, index_prefix)).await?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_tantivy_and_opensearch_hides_its_url() {
        assert!(matches!(SearchConfig::default(), SearchConfig::Tantivy {}));
        let c: SearchConfig =
            toml::from_str("backend = \"opensearch\"\nurl = \"https://u:secret@h:9200\"").expect("valid");
        let shown = format!("{c:?}");
        assert!(shown.contains("souk") && !shown.contains("secret"), "{shown}");
        assert!(toml::from_str::<SearchConfig>("backend = \"tantivy\"\nurl = \"x\"").is_err());
    }
}
