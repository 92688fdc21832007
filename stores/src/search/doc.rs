//! What the index holds: [`SearchDoc`], and the ops that change it ([`IndexOp`]).
//!
//! The indexer maps each `ProductChanged` with [`IndexOp::from_event`]; the reindex job
//! maps each stored product with [`SearchDoc::from_product`] (or a deleted one with
//! [`IndexOp::Delete`]). Nothing else is needed: the event carries the whole product.
//!
//! | contract (`pipelines::catalog`) | index |
//! |---|---|
//! | `ProductChanged.tenant`, `.sku`, `.version` | identity `(tenant, sku)`, `version` (orders the changes) |
//! | `ProductChanged.product: None` | [`IndexOp::Delete`] → a tombstone at `version` |
//! | `Product.seller` | `seller` (filter, facet) |
//! | `fields.title`, `fields.description` | text (title weighted), highlights |
//! | `fields.category` | every path prefix (filter, category tree facet) |
//! | `fields.attributes` | `key` = [`attr_value_string`] (filters ANDed, facet per key) |
//! | `fields.price_minor`, `fields.currency` | price (range filter, sort, buckets), currency |
//! | `fields.stock` | stock (`in_stock` filter) |
//! | `Product.updated_at` | `newest` sort |
//! | `fields.images`, `created_at` | not indexed |

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use souk_pipelines::Currency;
use souk_pipelines::catalog::{AttrValue, Product, ProductChanged};
use std::collections::BTreeMap;

/// One searchable product of one tenant. `version` orders the changes of one
/// `(tenant, sku)` (the catalog's version, which only grows).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchDoc {
    pub tenant: String,
    pub sku: String,
    pub seller: String,
    pub version: i64,
    pub title: String,
    #[serde(default)]
    pub description: String,
    /// Category path, e.g. `home/kitchen/mugs`.
    pub category: String,
    #[serde(default)]
    pub attributes: BTreeMap<String, AttrValue>,
    pub price_minor: i64,
    pub currency: Currency,
    pub stock: i64,
    pub updated_at: DateTime<Utc>,
}

impl SearchDoc {
    /// The document for a stored product. Images and `created_at` are not indexed.
    pub fn from_product(tenant: &str, product: &Product) -> SearchDoc {
        let f = &product.fields;
        SearchDoc {
            tenant: tenant.to_owned(),
            sku: product.sku.clone(),
            seller: product.seller.clone(),
            version: product.version,
            title: f.title.clone(),
            description: f.description.clone(),
            category: f.category.clone(),
            attributes: f.attributes.clone(),
            price_minor: f.price_minor,
            currency: f.currency,
            stock: f.stock,
            updated_at: product.updated_at,
        }
    }

    /// Category path prefixes, shortest first: `home/kitchen/mugs` gives `home`,
    /// `home/kitchen`, `home/kitchen/mugs`. A category filter matches any of them.
    pub fn category_prefixes(&self) -> Vec<String> {
        category_prefixes(&self.category)
    }
}

/// See [`SearchDoc::category_prefixes`]. Empty segments (`a//b`, a trailing `/`) are
/// dropped, so the path is normalised.
pub fn category_prefixes(category: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut path = String::new();
    for segment in category.split('/').filter(|s| !s.is_empty()) {
        if !path.is_empty() {
            path.push('/');
        }
        path.push_str(segment);
        out.push(path.clone());
    }
    out
}

/// The canonical text of an attribute value, used for filtering and facets: `true`,
/// `350`, `2.5`, `red`. An integer and a number with the same value read the same
/// (`350` and `350.0` are both `350`), so a filter parsed from a query string matches
/// whichever type the category schema gave the attribute.
pub fn attr_value_string(value: &AttrValue) -> String {
    match value {
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Number(n) => n.to_string(),
        AttrValue::Text(t) => t.clone(),
    }
}

/// One change to the index.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexOp {
    /// Create or replace the document, if `doc.version` is newer than the stored one.
    Upsert(SearchDoc),
    /// Remove the document, leaving a tombstone at `version`, if `version` is newer than
    /// the stored one.
    Delete { tenant: String, sku: String, version: i64 },
}

impl IndexOp {
    /// The op for one `ProductChanged`: an upsert of the product it carries, or a delete
    /// when it carries none.
    pub fn from_event(event: &ProductChanged) -> IndexOp {
        match &event.product {
            Some(product) => {
                let mut doc = SearchDoc::from_product(&event.tenant, product);
                // The event's version is authoritative (the product's is the same).
                doc.version = event.version;
                IndexOp::Upsert(doc)
            }
            None => IndexOp::Delete {
                tenant: event.tenant.clone(),
                sku: event.sku.clone(),
                version: event.version,
            },
        }
    }

    pub fn tenant(&self) -> &str {
        match self {
            IndexOp::Upsert(d) => &d.tenant,
            IndexOp::Delete { tenant, .. } => tenant,
        }
    }

    pub fn sku(&self) -> &str {
        match self {
            IndexOp::Upsert(d) => &d.sku,
            IndexOp::Delete { sku, .. } => sku,
        }
    }

    pub fn version(&self) -> i64 {
        match self {
            IndexOp::Upsert(d) => d.version,
            IndexOp::Delete { version, .. } => *version,
        }
    }

    /// Checks what the index cannot hold; such an op is a bad document (a failure of the
    /// message, not of the store).
    pub fn validate(&self) -> Result<(), String> {
        if self.tenant().is_empty() {
            return Err("empty tenant".into());
        }
        if self.sku().is_empty() {
            return Err("empty sku".into());
        }
        if self.tenant().contains('\u{1f}') || self.sku().contains('\u{1f}') {
            return Err("control character in tenant or sku".into());
        }
        if self.version() < 0 {
            return Err(format!("negative version {}", self.version()));
        }
        if let IndexOp::Upsert(d) = self {
            if d.seller.is_empty() {
                return Err("empty seller".into());
            }
            if category_prefixes(&d.category).is_empty() {
                return Err("empty category".into());
            }
        }
        Ok(())
    }
}

/// Keeps, per `(tenant, sku)`, only the op with the highest version (the first of equal
/// ones), in first-seen order; the others are stale by definition. Returns the kept ops
/// and how many were dropped.
pub fn newest_per_key(ops: Vec<IndexOp>) -> (Vec<IndexOp>, usize) {
    use std::collections::HashMap;
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    let mut kept: Vec<IndexOp> = Vec::with_capacity(ops.len());
    let mut dropped = 0;
    for op in ops {
        let key = (op.tenant().to_owned(), op.sku().to_owned());
        match index.get(&key) {
            Some(&i) => {
                dropped += 1;
                if op.version() > kept[i].version() {
                    kept[i] = op;
                }
            }
            None => {
                index.insert(key, kept.len());
                kept.push(op);
            }
        }
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalised() {
        assert_eq!(
            category_prefixes("home//kitchen/mugs/"),
            vec!["home", "home/kitchen", "home/kitchen/mugs"]
        );
        assert!(category_prefixes("/").is_empty());
    }

    #[test]
    fn events_map_to_upserts_and_deletes() {
        use chrono::Utc;
        use souk_pipelines::catalog::ProductFields;
        let now = Utc::now();
        let product = Product {
            sku: "S1".into(),
            seller: "north".into(),
            fields: ProductFields {
                title: "Mug".into(),
                description: String::new(),
                category: "home/kitchen/mugs".into(),
                attributes: BTreeMap::new(),
                price_minor: 1299,
                currency: "EUR".parse().expect("a currency"),
                stock: 3,
                images: vec!["https://example.com/a.jpg".into()],
            },
            version: 4,
            created_at: now,
            updated_at: now,
        };
        let mut event = ProductChanged {
            tenant: "acme".into(),
            sku: "S1".into(),
            seller: "north".into(),
            version: 4,
            product: Some(product),
            changed_at: now,
        };
        let IndexOp::Upsert(doc) = IndexOp::from_event(&event) else {
            panic!("an upsert");
        };
        assert_eq!((doc.tenant.as_str(), doc.sku.as_str(), doc.version), ("acme", "S1", 4));
        assert_eq!((doc.price_minor, doc.stock, doc.updated_at), (1299, 3, now));
        event.product = None;
        event.version = 5;
        assert_eq!(
            IndexOp::from_event(&event),
            IndexOp::Delete { tenant: "acme".into(), sku: "S1".into(), version: 5 }
        );
    }

    #[test]
    fn attribute_values_read_the_same_across_types() {
        assert_eq!(attr_value_string(&AttrValue::Int(350)), "350");
        assert_eq!(attr_value_string(&AttrValue::Number(350.0)), "350");
        assert_eq!(attr_value_string(&AttrValue::Number(2.5)), "2.5");
        assert_eq!(attr_value_string(&AttrValue::Bool(true)), "true");
    }
}
