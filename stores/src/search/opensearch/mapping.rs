//! The index settings and mappings, and documents in their shape.

use super::OpenSearchOptions;
use crate::search::doc::{SearchDoc, attr_value_string};
use crate::search::text::{ANALYZER, MAX_TOKEN_BYTES};
use serde_json::{Value, json};

/// Separates attribute key and value in `attrs`, as in tantivy.
pub const SEP: char = '\u{1f}';

/// The document id of `(tenant, sku)`.
pub fn doc_id(tenant: &str, sku: &str) -> String {
    format!("{tenant}{SEP}{sku}")
}

/// The body of a create-index request, with `aliases` given.
pub fn create_index_body(options: &OpenSearchOptions, aliases: Value) -> Value {
    let keyword = json!({ "type": "keyword" });
    let text = json!({ "type": "text", "analyzer": ANALYZER });
    json!({
        "settings": {
            "number_of_shards": options.shards,
            "number_of_replicas": options.replicas,
            "analysis": {
                "tokenizer": {
                    // tantivy's SimpleTokenizer: runs of letters and digits.
                    "souk_words": { "type": "pattern", "pattern": "[^\\p{L}\\p{N}]+" }
                },
                "filter": {
                    "souk_long": { "type": "length", "max": MAX_TOKEN_BYTES }
                },
                "analyzer": {
                    ANALYZER: {
                        "type": "custom",
                        "tokenizer": "souk_words",
                        "filter": ["souk_long", "lowercase", "asciifolding"]
                    }
                }
            }
        },
        "mappings": {
            "dynamic": "strict",
            "properties": {
                "tenant": keyword,
                "sku": keyword,
                "seller": keyword,
                "live": { "type": "boolean" },
                "category_paths": keyword,
                "attrs": keyword,
                "price": { "type": "long" },
                "stock": { "type": "long" },
                // Microseconds since the epoch: exact, like tantivy's sort key.
                "updated": { "type": "long" },
                "title": text,
                "description": text,
                "doc": { "type": "object", "enabled": false }
            }
        },
        "aliases": aliases
    })
}

/// A product document.
pub fn product(doc: &SearchDoc) -> Value {
    let attrs: Vec<String> =
        doc.attributes.iter().map(|(k, v)| format!("{k}{SEP}{}", attr_value_string(v))).collect();
    json!({
        "tenant": doc.tenant,
        "sku": doc.sku,
        "seller": doc.seller,
        "live": true,
        "category_paths": doc.category_prefixes(),
        "attrs": attrs,
        "price": doc.price_minor,
        "stock": doc.stock,
        "updated": doc.updated_at.timestamp_micros(),
        "title": doc.title,
        "description": doc.description,
        "doc": doc,
    })
}

/// A tombstone: the version lives in the document's external version.
pub fn tombstone(tenant: &str, sku: &str) -> Value {
    json!({ "tenant": tenant, "sku": sku, "live": false })
}
