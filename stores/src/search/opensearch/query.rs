//! A [`SearchRequest`] as an OpenSearch search body, and the aggregations back as
//! [`Facets`]. The text clauses mirror tantivy's (see [`crate::search::text`]): exact
//! `term`, `fuzzy` with the word's edit budget and `transpositions: true`, and `prefix`
//! for the last word, over `title` (weight 3) and `description`, every word required;
//! filters in `filter` context, so they do not score.

use super::mapping::SEP;
use crate::search::SearchRequest;
use crate::search::request::{
    FACET_LIMIT, FacetCount, Facets, PRICE_BUCKET_EDGES, Sort, empty_price_buckets, top_counts,
};
use crate::search::text::{QueryWord, has_unindexed_word, query_words};
use serde_json::{Value, json};
use std::collections::BTreeMap;

const TITLE_BOOST: f64 = 3.0;
const LOOSE_FACTOR: f64 = 0.5;
/// Most category paths and attribute values counted (all of them in practice).
const TERMS_SIZE: usize = 10_000;

pub fn query(request: &SearchRequest) -> Value {
    let mut filter =
        vec![json!({ "term": { "tenant": request.tenant } }), json!({ "term": { "live": true } })];
    if let Some(path) = request.category_path() {
        filter.push(json!({ "term": { "category_paths": path } }));
    }
    if let Some(seller) = &request.seller {
        filter.push(json!({ "term": { "seller": seller } }));
    }
    if request.min_price.is_some() || request.max_price.is_some() {
        let mut range = serde_json::Map::new();
        if let Some(min) = request.min_price {
            range.insert("gte".into(), json!(min));
        }
        if let Some(max) = request.max_price {
            range.insert("lte".into(), json!(max));
        }
        filter.push(json!({ "range": { "price": range } }));
    }
    for attr in &request.attributes {
        filter.push(json!({ "term": { "attrs": format!("{}{SEP}{}", attr.key, attr.value_string()) } }));
    }
    match request.in_stock {
        Some(true) => filter.push(json!({ "range": { "stock": { "gte": 1 } } })),
        Some(false) => filter.push(json!({ "range": { "stock": { "lte": 0 } } })),
        None => {}
    }
    let mut must: Vec<Value> = request.text().map(query_words).unwrap_or_default().iter().map(word).collect();
    if request.text().is_some_and(has_unindexed_word) {
        // A word no document holds: nothing matches (see `has_unindexed_word`).
        must.push(json!({ "match_none": {} }));
    }
    json!({ "bool": { "filter": filter, "must": must } })
}

fn word(w: &QueryWord) -> Value {
    let mut should = Vec::new();
    for (field, weight) in [("title", TITLE_BOOST), ("description", 1.0)] {
        should.push(json!({ "term": { field: { "value": w.text, "boost": weight } } }));
        if w.max_edits > 0 {
            should.push(json!({ "fuzzy": { field: {
                "value": w.text,
                "fuzziness": w.max_edits,
                "transpositions": true,
                "prefix_length": 0,
                "max_expansions": 50,
                "boost": weight * LOOSE_FACTOR
            } } }));
        }
        if w.prefix {
            should.push(json!({ "prefix": { field: { "value": w.text, "boost": weight * LOOSE_FACTOR } } }));
        }
    }
    json!({ "bool": { "should": should, "minimum_should_match": 1 } })
}

/// The sort: the order, then the sku (unique within a tenant), so it is total.
pub fn sort(sort: Sort) -> Value {
    let primary = match sort {
        Sort::Relevance => json!({ "_score": "desc" }),
        Sort::PriceAsc => json!({ "price": "asc" }),
        Sort::PriceDesc => json!({ "price": "desc" }),
        Sort::Newest => json!({ "updated": "desc" }),
    };
    json!([primary, { "sku": "asc" }])
}

pub fn aggregations() -> Value {
    let ranges: Vec<Value> = PRICE_BUCKET_EDGES
        .iter()
        .enumerate()
        .map(|(i, from)| match PRICE_BUCKET_EDGES.get(i + 1) {
            Some(to) => json!({ "key": i.to_string(), "from": from, "to": to }),
            None => json!({ "key": i.to_string(), "from": from }),
        })
        .collect();
    json!({
        "categories": { "terms": { "field": "category_paths", "size": TERMS_SIZE } },
        "sellers": { "terms": {
            "field": "seller", "size": FACET_LIMIT,
            "order": [{ "_count": "desc" }, { "_key": "asc" }]
        } },
        "attrs": { "terms": { "field": "attrs", "size": TERMS_SIZE } },
        "prices": { "range": { "field": "price", "keyed": true, "ranges": ranges } }
    })
}

/// The `aggregations` of a response as [`Facets`].
pub fn facets(aggs: &Value) -> Facets {
    let buckets = |name: &str| -> Vec<FacetCount> {
        aggs[name]["buckets"]
            .as_array()
            .map(|b| {
                b.iter()
                    .filter_map(|b| {
                        Some(FacetCount {
                            value: b["key"].as_str()?.to_owned(),
                            count: b["doc_count"].as_u64()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut categories = buckets("categories");
    categories.sort_by(|a, b| a.value.cmp(&b.value));
    let mut attributes: BTreeMap<String, Vec<FacetCount>> = BTreeMap::new();
    for c in buckets("attrs") {
        if let Some((key, value)) = c.value.split_once(SEP) {
            attributes
                .entry(key.to_owned())
                .or_default()
                .push(FacetCount { value: value.to_owned(), count: c.count });
        }
    }
    let mut price_buckets = empty_price_buckets();
    for (i, bucket) in price_buckets.iter_mut().enumerate() {
        bucket.count = aggs["prices"]["buckets"][i.to_string()]["doc_count"].as_u64().unwrap_or(0);
    }
    Facets {
        categories,
        sellers: top_counts(buckets("sellers"), FACET_LIMIT),
        attributes: attributes.into_iter().map(|(k, v)| (k, top_counts(v, FACET_LIMIT))).collect(),
        price_buckets,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::AttrFilter;

    #[test]
    fn words_carry_their_edit_budget_and_the_last_a_prefix() {
        let mut r = SearchRequest::new("t");
        r.q = Some("Kettle stainless mug".into());
        r.attributes = vec![AttrFilter::parse("capacity_ml", "350.0")];
        let q = query(&r);
        let must = q["bool"]["must"].as_array().expect("must");
        assert_eq!(must.len(), 3);
        let first = must[0].to_string();
        assert!(first.contains(r#""fuzziness":1"#) && !first.contains("prefix\""), "{first}");
        assert!(must[1].to_string().contains(r#""fuzziness":2"#));
        let last = must[2].to_string();
        assert!(last.contains(r#""prefix""#) && !last.contains("fuzzy"), "{last}");
        assert!(q.to_string().contains("capacity_ml\\u001f350"));
    }

    #[test]
    fn facets_read_back_from_aggregations() {
        let aggs = json!({
            "categories": { "buckets": [{ "key": "home/kitchen", "doc_count": 2 }, { "key": "home", "doc_count": 2 }] },
            "sellers": { "buckets": [{ "key": "north", "doc_count": 2 }] },
            "attrs": { "buckets": [{ "key": "color\u{1f}white", "doc_count": 2 }] },
            "prices": { "buckets": { "1": { "doc_count": 2 } } }
        });
        let f = facets(&aggs);
        assert_eq!(f.categories[0].value, "home");
        assert_eq!(f.attributes["color"][0].count, 2);
        assert_eq!(f.price_buckets[1].count, 2);
        assert_eq!(f.price_buckets[0].count, 0);
    }
}
