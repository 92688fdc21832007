//! Two collectors run in the one pass of a query: [`TopCollector`] (the page, in a total
//! order with the sku as tie-break, after the cursor's position) and [`FacetCollector`]
//! (the total and every facet count over the whole filtered result).

use super::schema::{F_ATTRS, F_CATEGORY_LEAF, F_PRICE, F_SELLER, F_SKU, F_UPDATED, SEP};
use crate::search::doc::category_prefixes;
use crate::search::request::{
    FACET_LIMIT, FacetCount, Facets, Sort, empty_price_buckets, price_bucket, top_counts,
};
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::{Column, StrColumn};
use tantivy::{DocAddress, DocId, Score, SegmentOrdinal, SegmentReader};

/// A position in the sort order: `rank` first (smaller first), then the sku.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SortKey {
    pub rank: u64,
    pub sku: String,
}

/// Maps a sort value to a `u64` whose ascending order is the sort's order.
fn rank(sort: Sort, score: Score, price: i64, updated: i64, scored: bool) -> u64 {
    const FLIP: u64 = 1 << 63;
    match sort {
        Sort::Relevance if scored => u64::MAX - ordered_f32(score),
        Sort::Relevance => 0,
        Sort::PriceAsc => (price as u64) ^ FLIP,
        Sort::PriceDesc => u64::MAX - ((price as u64) ^ FLIP),
        Sort::Newest => u64::MAX - ((updated as u64) ^ FLIP),
    }
}

/// An order-preserving map of `f32` onto `u64`.
fn ordered_f32(f: f32) -> u64 {
    let bits = f.to_bits();
    u64::from(if f.is_sign_negative() { !bits } else { bits | (1 << 31) })
}

pub struct TopCollector {
    pub sort: Sort,
    /// Whether the query has text (relevance ranks by score only then).
    pub scored: bool,
    pub limit: usize,
    /// Only hits strictly after this position.
    pub after: Option<SortKey>,
}

/// One hit of the page.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub key: SortKey,
    pub address: DocAddress,
}

impl Collector for TopCollector {
    type Fruit = Vec<Ranked>;
    type Child = TopSegment;

    fn for_segment(&self, ord: SegmentOrdinal, segment: &SegmentReader) -> tantivy::Result<TopSegment> {
        let fast = segment.fast_fields();
        Ok(TopSegment {
            sort: self.sort,
            scored: self.scored,
            limit: self.limit,
            after: self.after.clone(),
            segment: ord,
            sku: fast.str(F_SKU)?,
            // Only the column the order needs is read per document.
            price: match self.sort {
                Sort::PriceAsc | Sort::PriceDesc => fast.column_opt::<i64>(F_PRICE)?,
                _ => None,
            },
            updated: match self.sort {
                Sort::Newest => fast.column_opt::<i64>(F_UPDATED)?,
                _ => None,
            },
            heap: BinaryHeap::new(),
        })
    }

    fn requires_scoring(&self) -> bool {
        self.sort == Sort::Relevance && self.scored
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Ranked>>) -> tantivy::Result<Vec<Ranked>> {
        let mut all: Vec<Ranked> = fruits.into_iter().flatten().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all.truncate(self.limit);
        Ok(all)
    }
}

/// Heap entry: ordered by (rank, sku ord), the largest on top so it is evicted first.
/// Within a segment, sku ords follow the skus' byte order, so this is the sort order.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Entry(u64, u64, DocId);

pub struct TopSegment {
    sort: Sort,
    scored: bool,
    limit: usize,
    after: Option<SortKey>,
    segment: SegmentOrdinal,
    sku: Option<StrColumn>,
    price: Option<Column<i64>>,
    updated: Option<Column<i64>>,
    heap: BinaryHeap<Entry>,
}

fn first(col: &Option<Column<i64>>, doc: DocId) -> i64 {
    col.as_ref().and_then(|c| c.first(doc)).unwrap_or(0)
}

impl TopSegment {
    fn sku_of(&self, ord: u64) -> String {
        let mut s = String::new();
        if let Some(col) = &self.sku {
            let _ = col.ord_to_str(ord, &mut s);
        }
        s
    }
}

impl SegmentCollector for TopSegment {
    type Fruit = Vec<Ranked>;

    fn collect(&mut self, doc: DocId, score: Score) {
        let Some(sku_ord) = self.sku.as_ref().and_then(|c| c.ords().first(doc)) else {
            return;
        };
        let r = rank(self.sort, score, first(&self.price, doc), first(&self.updated, doc), self.scored);
        if let Some(after) = &self.after {
            match r.cmp(&after.rank) {
                Ordering::Less => return,
                Ordering::Equal if self.sku_of(sku_ord) <= after.sku => return,
                _ => {}
            }
        }
        let entry = Entry(r, sku_ord, doc);
        if self.heap.len() < self.limit {
            self.heap.push(entry);
        } else if self.heap.peek().is_some_and(|top| entry < *top) {
            self.heap.pop();
            self.heap.push(entry);
        }
    }

    fn harvest(self) -> Vec<Ranked> {
        // The page's skus in one ordered pass over the dictionary: looked up one by one,
        // each decoded its dictionary block from the start.
        let mut entries = self.heap.into_vec();
        entries.sort_unstable_by_key(|Entry(_, ord, _)| *ord);
        let ords: Vec<u64> = entries.iter().map(|Entry(_, ord, _)| *ord).collect();
        let skus = sorted_ords_to_strings(&self.sku, &ords);
        entries
            .into_iter()
            .zip(skus)
            .map(|(Entry(rank, _, doc), sku)| Ranked {
                key: SortKey { rank, sku },
                address: DocAddress::new(self.segment, doc),
            })
            .collect()
    }
}

/// Counts the result and its facets.
pub struct FacetCollector;

/// Per segment: counts per term ordinal, turned into strings at harvest.
pub struct FacetSegment {
    total: u64,
    category: Option<StrColumn>,
    seller: Option<StrColumn>,
    attrs: Option<StrColumn>,
    price: Option<Column<i64>>,
    category_counts: Vec<u64>,
    seller_counts: Vec<u64>,
    attr_counts: Vec<u64>,
    buckets: Vec<u64>,
}

#[derive(Default)]
pub struct FacetFruit {
    pub total: u64,
    categories: HashMap<String, u64>,
    sellers: HashMap<String, u64>,
    attrs: HashMap<String, u64>,
    buckets: Vec<u64>,
}

impl Collector for FacetCollector {
    type Fruit = (u64, Facets);
    type Child = FacetSegment;

    fn for_segment(&self, _: SegmentOrdinal, segment: &SegmentReader) -> tantivy::Result<FacetSegment> {
        let fast = segment.fast_fields();
        let category = fast.str(F_CATEGORY_LEAF)?;
        let seller = fast.str(F_SELLER)?;
        let attrs = fast.str(F_ATTRS)?;
        let size = |c: &Option<StrColumn>| c.as_ref().map_or(0, |c| c.num_terms());
        Ok(FacetSegment {
            total: 0,
            category_counts: vec![0; size(&category)],
            seller_counts: vec![0; size(&seller)],
            attr_counts: vec![0; size(&attrs)],
            category,
            seller,
            attrs,
            price: fast.column_opt::<i64>(F_PRICE)?,
            buckets: vec![0; empty_price_buckets().len()],
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<FacetFruit>) -> tantivy::Result<(u64, Facets)> {
        let mut all = FacetFruit { buckets: vec![0; empty_price_buckets().len()], ..FacetFruit::default() };
        for f in fruits {
            all.total += f.total;
            for (into, from) in [
                (&mut all.categories, f.categories),
                (&mut all.sellers, f.sellers),
                (&mut all.attrs, f.attrs),
            ] {
                for (k, n) in from {
                    *into.entry(k).or_default() += n;
                }
            }
            for (i, n) in f.buckets.into_iter().enumerate() {
                all.buckets[i] += n;
            }
        }
        Ok((all.total, facets(all)))
    }
}

fn facets(f: FacetFruit) -> Facets {
    let counts = |m: HashMap<String, u64>| -> Vec<FacetCount> {
        m.into_iter().map(|(value, count)| FacetCount { value, count }).collect()
    };
    let mut categories = counts(f.categories);
    categories.sort_by(|a, b| a.value.cmp(&b.value));
    let mut by_key: BTreeMap<String, Vec<FacetCount>> = BTreeMap::new();
    for (term, count) in f.attrs {
        if let Some((key, value)) = term.split_once(SEP) {
            by_key.entry(key.to_owned()).or_default().push(FacetCount { value: value.to_owned(), count });
        }
    }
    let mut price_buckets = empty_price_buckets();
    for (bucket, n) in price_buckets.iter_mut().zip(f.buckets) {
        bucket.count = n;
    }
    Facets {
        categories,
        sellers: top_counts(counts(f.sellers), FACET_LIMIT),
        attributes: by_key.into_iter().map(|(k, v)| (k, top_counts(v, FACET_LIMIT))).collect(),
        price_buckets,
    }
}

fn count_ords(col: &Option<StrColumn>, counts: &mut [u64], doc: DocId) {
    if let Some(col) = col {
        for ord in col.term_ords(doc) {
            if let Some(c) = counts.get_mut(ord as usize) {
                *c += 1;
            }
        }
    }
}

fn ords_to_strings(col: &Option<StrColumn>, counts: Vec<u64>) -> HashMap<String, u64> {
    let counted: Vec<(u64, u64)> =
        counts.into_iter().enumerate().filter(|(_, n)| *n > 0).map(|(ord, n)| (ord as u64, n)).collect();
    let ords: Vec<u64> = counted.iter().map(|(ord, _)| *ord).collect();
    let strings = sorted_ords_to_strings(col, &ords);
    counted.into_iter().zip(strings).filter(|(_, s)| !s.is_empty()).map(|((_, n), s)| (s, n)).collect()
}

/// The terms of `ords` (ascending, repeats allowed), one per ord, in one pass over the
/// column's dictionary (`sorted_ords_to_term_cb`): a
/// term looked up alone decodes its dictionary block from the block's start, so the
/// facets of a broad query (thousands of attribute values) cost a block decode each.
/// A term that is not there or not UTF-8 comes back empty (the stored terms are
/// strings; none is empty).
fn sorted_ords_to_strings(col: &Option<StrColumn>, ords: &[u64]) -> Vec<String> {
    let mut out = Vec::with_capacity(ords.len());
    if let Some(col) = col {
        let found = col.dictionary().sorted_ords_to_term_cb(ords, |bytes| {
            out.push(std::str::from_utf8(bytes).map(str::to_owned).unwrap_or_default());
        });
        if found.is_err() {
            out.clear();
        }
    }
    out.resize(ords.len(), String::new());
    out
}

/// Leaf counts to counts per path prefix.
fn expand_prefixes(leaves: HashMap<String, u64>) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for (leaf, n) in leaves {
        for prefix in category_prefixes(&leaf) {
            *out.entry(prefix).or_default() += n;
        }
    }
    out
}

impl SegmentCollector for FacetSegment {
    type Fruit = FacetFruit;

    fn collect(&mut self, doc: DocId, _: Score) {
        self.total += 1;
        count_ords(&self.category, &mut self.category_counts, doc);
        count_ords(&self.seller, &mut self.seller_counts, doc);
        count_ords(&self.attrs, &mut self.attr_counts, doc);
        if let Some(price) = self.price.as_ref().and_then(|c| c.first(doc)) {
            self.buckets[price_bucket(price)] += 1;
        }
    }

    fn harvest(self) -> FacetFruit {
        FacetFruit {
            total: self.total,
            categories: expand_prefixes(ords_to_strings(&self.category, self.category_counts)),
            sellers: ords_to_strings(&self.seller, self.seller_counts),
            attrs: ords_to_strings(&self.attrs, self.attr_counts),
            buckets: self.buckets,
        }
    }
}
