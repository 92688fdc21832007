//! The JSON of a search answer.

use serde::Serialize;
use souk_pipelines::Currency;
use souk_stores::search::{FacetCount, Highlights, PriceBucket, SearchHit, SearchResults};
use std::collections::BTreeMap;

#[derive(Debug, Serialize)]
pub struct Page {
    pub hits: Vec<Hit>,
    /// Hits of the whole filtered result, every page.
    pub total: u64,
    pub facets: FacetsOut,
    pub price_buckets: Vec<PriceBucket>,
    /// Pass as `cursor` (with the same parameters) for the next page; `null` on the last.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Hit {
    pub sku: String,
    pub title: String,
    pub seller: String,
    pub category: String,
    pub price: Price,
    pub stock: i64,
    pub highlights: Highlights,
}

#[derive(Debug, Serialize)]
pub struct Price {
    pub amount_minor: i64,
    pub currency: Currency,
}

#[derive(Debug, Serialize)]
pub struct FacetsOut {
    /// The category paths of the result as a tree: each node counts the hits in it and
    /// below.
    pub categories: Vec<CategoryNode>,
    pub sellers: Vec<FacetCount>,
    pub attributes: BTreeMap<String, Vec<FacetCount>>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
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
                sellers: r.facets.sellers,
                attributes: r.facets.attributes,
            },
            price_buckets: r.facets.price_buckets,
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
            highlights: h.highlights,
        }
    }
}

/// Flat path counts (every prefix of every hit's category: `home`, `home/kitchen`, …)
/// as a tree, children in path order.
fn tree(flat: &[FacetCount]) -> Vec<CategoryNode> {
    let mut sorted: Vec<&FacetCount> = flat.iter().collect();
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
        let flat = |v: &str, count| FacetCount { value: v.into(), count };
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
