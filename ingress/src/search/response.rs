//! The JSON of a search answer: the API's own types (documented in the OpenAPI
//! document), mapped from the store's, so the contract does not move with the store.

use serde::Serialize;
use souk_pipelines::Currency;
use souk_stores::search::{self as store, SearchHit, SearchResults};
use std::collections::BTreeMap;

/// One page of hits, with facets and price buckets over the whole filtered result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page {
    pub hits: Vec<Hit>,
    /// Hits of the whole filtered result, every page.
    pub total: u64,
    pub facets: FacetsOut,
    pub price_buckets: Vec<PriceBucket>,
    /// Pass as `cursor` (with the same parameters) for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

/// One product found.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Hit {
    pub sku: String,
    pub title: String,
    pub seller: String,
    pub category: String,
    pub price: Price,
    pub stock: i64,
    pub highlights: Highlights,
}

/// A price in minor units of its currency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: Currency,
}

/// Counts over the whole filtered result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FacetsOut {
    /// The category paths of the result as a tree: each node counts the hits in it and
    /// below.
    pub categories: Vec<CategoryNode>,
    /// By count, then value.
    pub sellers: Vec<FacetCount>,
    /// Per attribute key, its values by count.
    pub attributes: BTreeMap<String, Vec<FacetCount>>,
}

/// A facet value and the hits that have it.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FacetCount {
    pub value: String,
    pub count: u64,
}

/// Hits priced in `[from, to)` minor units (`to` null: no upper bound).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PriceBucket {
    pub from: i64,
    pub to: Option<i64>,
    pub count: u64,
}

/// Matched words wrapped in `<mark>…</mark>`, everything else HTML-escaped.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Highlights {
    /// The whole title.
    pub title: String,
    /// A window of the description around the first match.
    pub description: String,
}

/// A category path with the hits in it and below.
#[derive(Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(no_recursion)]
pub struct CategoryNode {
    /// The whole path (`home/kitchen`): what `category=` takes.
    pub path: String,
    /// The last segment (`kitchen`).
    pub name: String,
    pub count: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<CategoryNode>,
}

impl Page {
    pub fn of(r: SearchResults) -> Page {
        Page {
            hits: r.hits.into_iter().map(Hit::of).collect(),
            total: r.total,
            facets: FacetsOut {
                categories: tree(&r.facets.categories),
                sellers: counts(r.facets.sellers),
                attributes: r.facets.attributes.into_iter().map(|(k, v)| (k, counts(v))).collect(),
            },
            price_buckets: r
                .facets
                .price_buckets
                .into_iter()
                .map(|b| PriceBucket { from: b.from, to: b.to, count: b.count })
                .collect(),
            next_cursor: r.next_cursor,
        }
    }
}

impl Hit {
    fn of(h: SearchHit) -> Hit {
        Hit {
            sku: h.sku,
            title: h.title,
            seller: h.seller,
            category: h.category,
            price: Price { amount_minor: h.price_minor, currency: h.currency },
            stock: h.stock,
            highlights: Highlights { title: h.highlights.title, description: h.highlights.description },
        }
    }
}

fn counts(c: Vec<store::FacetCount>) -> Vec<FacetCount> {
    c.into_iter().map(|c| FacetCount { value: c.value, count: c.count }).collect()
}

/// Flat path counts (every prefix of every hit's category: `home`, `home/kitchen`, …)
/// as a tree, children in path order.
fn tree(flat: &[store::FacetCount]) -> Vec<CategoryNode> {
    let mut sorted: Vec<&store::FacetCount> = flat.iter().collect();
    sorted.sort_by(|a, b| a.value.cmp(&b.value));
    let mut roots: Vec<CategoryNode> = Vec::new();
    for c in sorted {
        let node = CategoryNode {
            path: c.value.clone(),
            name: c.value.rsplit('/').next().unwrap_or(&c.value).to_owned(),
            count: c.count,
            children: Vec::new(),
        };
        insert(&mut roots, node);
    }
    roots
}

/// Put `node` under the deepest node whose path is its parent's (sorted input puts
/// parents first; a node whose parent is missing becomes a root).
fn insert(level: &mut Vec<CategoryNode>, node: CategoryNode) {
    let parent = level
        .iter_mut()
        .find(|n| node.path.strip_prefix(n.path.as_str()).is_some_and(|rest| rest.starts_with('/')));
    match parent {
        Some(p) => insert(&mut p.children, node),
        None => level.push(node),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn category_counts_become_a_tree() {
        let flat = |v: &str, count| store::FacetCount { value: v.into(), count };
        let t = tree(&[
            flat("home/kitchen", 3),
            flat("home", 4),
            flat("home/kitchen/mugs", 2),
            flat("garden", 1),
            flat("home/bath", 1),
        ]);
        assert_eq!(
            t.iter().map(|n| (n.path.as_str(), n.count)).collect::<Vec<_>>(),
            [("garden", 1), ("home", 4)]
        );
        let home = &t[1];
        assert_eq!(home.children.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["bath", "kitchen"]);
        assert_eq!(home.children[1].children[0].path, "home/kitchen/mugs");
    }
}
