//! The tantivy schema, and documents to and from it.
//!
//! One document per `(tenant, sku)`, identified by the `key` term: a live product or a
//! tombstone (`live = 0`, with the version of the delete). Filters use indexed raw terms;
//! sorting, tie-breaks, facets and version lookups use fast fields; the hit is rebuilt
//! from the stored `source` (the [`SearchDoc`] as JSON).

use crate::search::doc::{SearchDoc, attr_value_string};
use crate::search::text::{ANALYZER, analyzer};
use tantivy::schema::{
    FAST, Field, INDEXED, IndexRecordOption, STORED, STRING, Schema, TextFieldIndexing, TextOptions,
};
use tantivy::{Index, TantivyDocument, Term};

/// Separates tenant and sku in `key`, and attribute key and value in `attrs` (a control
/// character no tenant, sku or attribute key may hold; [`crate::search::IndexOp::validate`]
/// refuses one).
pub const SEP: char = '\u{1f}';

pub const F_KEY: &str = "key";
pub const F_SKU: &str = "sku";
pub const F_SELLER: &str = "seller";
pub const F_CATEGORY: &str = "category";
pub const F_CATEGORY_LEAF: &str = "category_leaf";
pub const F_ATTRS: &str = "attrs";
pub const F_PRICE: &str = "price";
pub const F_STOCK: &str = "stock";
pub const F_UPDATED: &str = "updated";
pub const F_VERSION: &str = "version";
pub const F_LIVE: &str = "live";

/// Handles to every field.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// `tenant SEP sku`, raw: the identity used to replace and look up a document.
    pub key: Field,
    pub tenant: Field,
    pub sku: Field,
    pub seller: Field,
    /// Every path prefix of the category (multi-valued), so a prefix filter is one term.
    pub category: Field,
    /// The whole (normalised) path, single-valued: facets count per leaf and expand to
    /// prefixes once per distinct leaf, not once per document.
    pub category_leaf: Field,
    /// `key SEP value` per attribute (multi-valued).
    pub attrs: Field,
    pub price: Field,
    pub stock: Field,
    /// `updated_at` in microseconds since the epoch.
    pub updated: Field,
    pub version: Field,
    /// 1 for a product, 0 for a tombstone.
    pub live: Field,
    pub title: Field,
    pub description: Field,
    /// The whole document as JSON.
    pub source: Field,
}

impl Fields {
    pub fn schema() -> (Schema, Fields) {
        let mut b = Schema::builder();
        let text = TextOptions::default().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer(ANALYZER)
                .set_index_option(IndexRecordOption::WithFreqs),
        );
        let fields = Fields {
            key: b.add_text_field(F_KEY, STRING),
            tenant: b.add_text_field("tenant", STRING),
            sku: b.add_text_field(F_SKU, STRING | FAST),
            seller: b.add_text_field(F_SELLER, STRING | FAST),
            category: b.add_text_field(F_CATEGORY, STRING),
            category_leaf: b.add_text_field(F_CATEGORY_LEAF, FAST),
            attrs: b.add_text_field(F_ATTRS, STRING | FAST),
            price: b.add_i64_field(F_PRICE, INDEXED | FAST),
            stock: b.add_i64_field(F_STOCK, INDEXED | FAST),
            updated: b.add_i64_field(F_UPDATED, FAST),
            version: b.add_i64_field(F_VERSION, FAST),
            live: b.add_u64_field(F_LIVE, INDEXED | FAST),
            title: b.add_text_field("title", text.clone()),
            description: b.add_text_field("description", text),
            source: b.add_text_field("source", STORED),
        };
        (b.build(), fields)
    }

    /// Registers the analyzer the text fields name.
    pub fn register_analyzer(index: &Index) {
        index.tokenizers().register(ANALYZER, analyzer());
    }

    pub fn key_term(&self, tenant: &str, sku: &str) -> Term {
        Term::from_field_text(self.key, &doc_key(tenant, sku))
    }

    pub fn product(&self, doc: &SearchDoc) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.key, doc_key(&doc.tenant, &doc.sku));
        d.add_text(self.tenant, &doc.tenant);
        d.add_text(self.sku, &doc.sku);
        d.add_text(self.seller, &doc.seller);
        let prefixes = doc.category_prefixes();
        if let Some(leaf) = prefixes.last() {
            d.add_text(self.category_leaf, leaf);
        }
        for prefix in prefixes {
            d.add_text(self.category, prefix);
        }
        for (key, value) in &doc.attributes {
            d.add_text(self.attrs, attr_term(key, &attr_value_string(value)));
        }
        d.add_i64(self.price, doc.price_minor);
        d.add_i64(self.stock, doc.stock);
        d.add_i64(self.updated, doc.updated_at.timestamp_micros());
        d.add_i64(self.version, doc.version);
        d.add_u64(self.live, 1);
        d.add_text(self.title, &doc.title);
        d.add_text(self.description, &doc.description);
        d.add_text(self.source, serde_json::to_string(doc).unwrap_or_else(|_| "{}".into()));
        d
    }

    pub fn tombstone(&self, tenant: &str, sku: &str, version: i64) -> TantivyDocument {
        let mut d = TantivyDocument::default();
        d.add_text(self.key, doc_key(tenant, sku));
        d.add_text(self.tenant, tenant);
        d.add_text(self.sku, sku);
        d.add_i64(self.version, version);
        d.add_u64(self.live, 0);
        d
    }
}

pub fn doc_key(tenant: &str, sku: &str) -> String {
    format!("{tenant}{SEP}{sku}")
}

pub fn attr_term(key: &str, value: &str) -> String {
    format!("{key}{SEP}{value}")
}
