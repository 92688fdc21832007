//! A query ([`SearchRequest`]) and its answer ([`SearchResults`]).

use super::SearchError;
use super::doc::{attr_value_string, category_prefixes};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use souk_pipelines::Currency;
use souk_pipelines::catalog::AttrValue;
use std::collections::BTreeMap;

/// Largest page.
pub const MAX_PER_PAGE: u32 = 100;
/// Page size when the caller gives none.
pub const DEFAULT_PER_PAGE: u32 = 20;
/// Longest query text, in bytes.
pub const MAX_QUERY_BYTES: usize = 512;
/// Most words in a query text.
pub const MAX_QUERY_WORDS: usize = 16;

/// Price bucket edges in minor units: `[0, 1000)`, `[1000, 2500)`, `[2500, 5000)`,
/// `[5000, 10000)`, `[10000, 25000)`, `[25000, 50000)`, `[50000, ∞)` — 0–10.00,
/// 10–25, 25–50, 50–100, 100–250, 250–500 and 500+ in a two-decimal currency. Prices are
/// compared in minor units whatever the currency.
pub const PRICE_BUCKET_EDGES: [i64; 7] = [0, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000];

/// Order of the hits. Every order ends with the sku (ascending), so it is total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sort {
    /// Best match first; without text, all score the same (so by sku).
    #[default]
    Relevance,
    PriceAsc,
    PriceDesc,
    /// Most recently updated first.
    Newest,
}

impl std::str::FromStr for Sort {
    type Err = String;
    fn from_str(s: &str) -> Result<Sort, String> {
        match s {
            "relevance" => Ok(Sort::Relevance),
            "price_asc" => Ok(Sort::PriceAsc),
            "price_desc" => Ok(Sort::PriceDesc),
            "newest" => Ok(Sort::Newest),
            other => {
                Err(format!("unknown sort {other:?}: expected relevance, price_asc, price_desc or newest"))
            }
        }
    }
}

/// `attr.<key>=<value>`: the attribute `key` has `value` (compared as
/// [`attr_value_string`], so `350`, `350.0` and `"350"` are the same).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttrFilter {
    pub key: String,
    pub value: AttrValue,
}

impl AttrFilter {
    /// Parses a query-string value: `true`/`false`, an integer, a number, else text.
    pub fn parse(key: &str, raw: &str) -> AttrFilter {
        let value = if let Ok(b) = raw.parse::<bool>() {
            AttrValue::Bool(b)
        } else if let Ok(i) = raw.parse::<i64>() {
            AttrValue::Int(i)
        } else if let Some(n) = raw.parse::<f64>().ok().filter(|n| n.is_finite()) {
            AttrValue::Number(n)
        } else {
            AttrValue::Text(raw.to_owned())
        };
        AttrFilter { key: key.to_owned(), value }
    }

    /// The value as the index holds it.
    pub fn value_string(&self) -> String {
        attr_value_string(&self.value)
    }
}

/// One query. Build it with [`SearchRequest::new`] and set what applies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchRequest {
    pub tenant: String,
    /// Words to match (see [`super::text`]); `None` or blank matches everything.
    pub q: Option<String>,
    /// Category path prefix: `home/kitchen` matches `home/kitchen/mugs`.
    pub category: Option<String>,
    pub seller: Option<String>,
    /// Inclusive, minor units.
    pub min_price: Option<i64>,
    /// Inclusive, minor units.
    pub max_price: Option<i64>,
    /// All must hold.
    pub attributes: Vec<AttrFilter>,
    /// `Some(true)`: stock > 0 only; `Some(false)`: stock ≤ 0 only.
    pub in_stock: Option<bool>,
    pub sort: Sort,
    /// 1..=100.
    pub per_page: u32,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl SearchRequest {
    pub fn new(tenant: impl Into<String>) -> SearchRequest {
        SearchRequest {
            tenant: tenant.into(),
            q: None,
            category: None,
            seller: None,
            min_price: None,
            max_price: None,
            attributes: Vec::new(),
            in_stock: None,
            sort: Sort::default(),
            per_page: DEFAULT_PER_PAGE,
            cursor: None,
        }
    }

    /// Checks the bounds every store relies on: the first problem found. The API checks
    /// with [`SearchRequest::problems`] to name every bad field at once.
    pub fn validate(&self) -> Result<(), SearchError> {
        match self.problems().into_iter().next() {
            Some((field, reason)) => Err(SearchError::InvalidRequest { field, reason }),
            None => Ok(()),
        }
    }

    /// Every bad field with its reason (empty when the request is valid).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if self.tenant.is_empty() {
            out.push(("tenant", "empty".to_owned()));
        }
        if !(1..=MAX_PER_PAGE).contains(&self.per_page) {
            out.push(("per_page", format!("must be 1..={MAX_PER_PAGE}")));
        }
        if let Some(q) = &self.q {
            if q.len() > MAX_QUERY_BYTES {
                out.push(("q", format!("longer than {MAX_QUERY_BYTES} bytes")));
            } else if super::text::words(q).len() > MAX_QUERY_WORDS {
                out.push(("q", format!("more than {MAX_QUERY_WORDS} words")));
            }
        }
        if let Some(c) = &self.category
            && category_prefixes(c).is_empty()
        {
            out.push(("category", "empty path".to_owned()));
        }
        for (field, price) in [("min_price", self.min_price), ("max_price", self.max_price)] {
            if price.is_some_and(|p| p < 0) {
                out.push((field, "must not be negative".to_owned()));
            }
        }
        if let (Some(min), Some(max)) = (self.min_price, self.max_price)
            && min > max
        {
            out.push(("min_price", "greater than max_price".to_owned()));
        }
        for attr in &self.attributes {
            if attr.key.is_empty() || attr.key.contains('\u{1f}') {
                out.push(("attr", format!("bad attribute key {:?}", attr.key)));
            }
        }
        if self.cursor.as_ref().is_some_and(|c| c.len() > super::cursor::MAX_CURSOR_BYTES) {
            out.push(("cursor", "too long".to_owned()));
        }
        out
    }

    /// The normalised category filter (`home/kitchen`), if any.
    pub fn category_path(&self) -> Option<String> {
        self.category.as_deref().and_then(|c| category_prefixes(c).pop())
    }

    /// The text, `None` if blank.
    pub fn text(&self) -> Option<&str> {
        self.q.as_deref().filter(|q| !q.trim().is_empty())
    }

    /// A hash of everything but the cursor: a cursor is only valid for the query that
    /// issued it. Stable across processes (no random state), so OpenSearch cursors work on
    /// any node.
    pub fn fingerprint(&self) -> u64 {
        let mut copy = self.clone();
        copy.cursor = None;
        let json = serde_json::to_string(&copy).unwrap_or_default();
        fnv1a(json.as_bytes())
    }

    /// A hash of what decides which documents match (the tenant, words and filters),
    /// not how they are ordered or paged: equal for requests whose total and facets
    /// are equal on one index state.
    pub fn match_fingerprint(&self) -> u64 {
        let mut copy = self.clone();
        copy.cursor = None;
        copy.sort = Sort::Relevance;
        copy.per_page = 0;
        let json = serde_json::to_string(&copy).unwrap_or_default();
        fnv1a(json.as_bytes())
    }
}

/// FNV-1a: a fixed, seedless hash (std's `DefaultHasher` may change between releases).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Matched words of a hit, wrapped in `<mark>…</mark>`; everything else HTML-escaped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Highlights {
    /// The whole title.
    pub title: String,
    /// A window of the description around the first match (its start when nothing
    /// matched there), with `…` where it was cut.
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchHit {
    pub sku: String,
    pub title: String,
    pub seller: String,
    pub category: String,
    pub price_minor: i64,
    pub currency: Currency,
    pub stock: i64,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    pub highlights: Highlights,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FacetCount {
    pub value: String,
    pub count: u64,
}

/// `[from, to)` in minor units; `to: None` is open-ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBucket {
    pub from: i64,
    pub to: Option<i64>,
    pub count: u64,
}

/// Counts over the whole filtered result (every page of it), not just this page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facets {
    /// One entry per category path prefix (`home`, `home/kitchen`, …), by path.
    pub categories: Vec<FacetCount>,
    /// By count, then value; at most [`FACET_LIMIT`].
    pub sellers: Vec<FacetCount>,
    /// Per attribute key, its values by count then value; at most [`FACET_LIMIT`] each.
    pub attributes: BTreeMap<String, Vec<FacetCount>>,
    /// Every bucket of [`PRICE_BUCKET_EDGES`], empty ones included.
    pub price_buckets: Vec<PriceBucket>,
}

/// Most values a seller or attribute facet lists.
pub const FACET_LIMIT: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResults {
    /// Hits of the whole filtered result.
    pub total: u64,
    pub hits: Vec<SearchHit>,
    pub facets: Facets,
    /// `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Which price bucket a price falls in (its index in [`PRICE_BUCKET_EDGES`]); negative
/// prices count in the first.
pub fn price_bucket(price_minor: i64) -> usize {
    PRICE_BUCKET_EDGES.iter().rposition(|edge| price_minor >= *edge).unwrap_or(0)
}

/// Empty buckets, in order.
pub fn empty_price_buckets() -> Vec<PriceBucket> {
    PRICE_BUCKET_EDGES
        .iter()
        .enumerate()
        .map(|(i, from)| PriceBucket { from: *from, to: PRICE_BUCKET_EDGES.get(i + 1).copied(), count: 0 })
        .collect()
}

/// Sorts facet counts by count (descending) then value, and keeps the first `limit`.
pub fn top_counts(mut counts: Vec<FacetCount>, limit: usize) -> Vec<FacetCount> {
    counts.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.value.cmp(&b.value)));
    counts.truncate(limit);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bad_field_is_named() {
        let mut r = SearchRequest::new("t");
        r.per_page = 0;
        r.min_price = Some(-1);
        r.max_price = Some(-5);
        r.category = Some("//".into());
        let fields: Vec<_> = r.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["per_page", "category", "min_price", "max_price", "min_price"]);
        assert!(SearchRequest::new("t").problems().is_empty());
    }

    #[test]
    fn price_buckets_have_their_edges() {
        assert_eq!(price_bucket(0), 0);
        assert_eq!(price_bucket(999), 0);
        assert_eq!(price_bucket(1_000), 1);
        assert_eq!(price_bucket(49_999), 5);
        assert_eq!(price_bucket(50_000), 6);
        assert_eq!(empty_price_buckets().last().map(|b| b.to), Some(None));
    }

    #[test]
    fn a_fingerprint_ignores_the_cursor_only() {
        let a = SearchRequest::new("t");
        let mut b = a.clone();
        b.cursor = Some("x".into());
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.sort = Sort::Newest;
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
