//! The mixed query set: text (plain, with a typo, with a prefix last word), filters
//! (category, seller, price, attribute, stock), every sort, and facets (every answer
//! carries them). Made from the generated listings, so every query can match, and the
//! same for the same seed. One list serves both the HTTP phase (as a query string) and
//! the in-process phase (as a `SearchRequest`).

use souk_pipelines::catalog::AttrValue;
use souk_stores::search::{AttrFilter, SearchRequest, Sort, attr_value_string};

use super::products::{Listing, Rng};

/// One query of the set, in both forms.
#[derive(Debug, Clone)]
pub struct Query {
    /// What it exercises: `text`, `typo`, `prefix`, `category`, …
    pub kind: &'static str,
    pub request: SearchRequest,
    /// The same query as `GET /v1/search?…` parameters.
    pub query_string: String,
}

/// `n` queries over `listings` for `tenant`.
pub fn mix(listings: &[Listing], n: usize, seed: u64, tenant: &str) -> Vec<Query> {
    let mut rng = Rng::new(seed ^ 0x5EA2_C400);
    (0..n)
        .map(|i| {
            let l = &listings[rng.below(listings.len())];
            let words: Vec<String> = l.fields.title.split_whitespace().map(str::to_lowercase).collect();
            let word = |k: usize| words.get(k % words.len().max(1)).cloned().unwrap_or_default();
            let mut r = SearchRequest::new(tenant);
            let kind = match i % 8 {
                0 => {
                    r.q = Some(word(rng.below(3)));
                    "text"
                }
                1 => {
                    r.q = Some(format!("{} {}", typo(&word(0)), word(2)));
                    "typo"
                }
                2 => {
                    let prefix: String = word(2).chars().take(3).collect();
                    r.q = Some(format!("{} {prefix}", word(1)));
                    "prefix"
                }
                3 => {
                    r.category = l.fields.category.split('/').next().map(str::to_owned);
                    r.sort = Sort::PriceAsc;
                    "category"
                }
                4 => {
                    r.category = Some(l.fields.category.clone());
                    r.attributes = l
                        .fields
                        .attributes
                        .iter()
                        .take(1)
                        .map(|(key, value)| AttrFilter { key: key.clone(), value: value.clone() })
                        .collect();
                    r.in_stock = Some(true);
                    "attribute"
                }
                5 => {
                    r.seller = Some(l.seller.clone());
                    r.sort = Sort::Newest;
                    "seller"
                }
                6 => {
                    r.q = Some(word(2));
                    r.min_price = Some(l.fields.price_minor / 2);
                    r.max_price = Some(l.fields.price_minor * 2);
                    r.sort = Sort::PriceDesc;
                    "price"
                }
                _ => "facets",
            };
            let query_string = query_string(&r);
            Query { kind, request: r, query_string }
        })
        .collect()
}

/// Two adjacent letters swapped (one edit under souk's rules) in a word of 5+ letters.
fn typo(word: &str) -> String {
    let mut chars: Vec<char> = word.chars().collect();
    if chars.len() >= 5 {
        chars.swap(2, 3);
    }
    chars.into_iter().collect()
}

/// The request as `GET /v1/search` parameters (the tenant comes from the token).
pub fn query_string(r: &SearchRequest) -> String {
    let mut s = url::form_urlencoded::Serializer::new(String::new());
    let sort = match r.sort {
        Sort::Relevance => "relevance",
        Sort::PriceAsc => "price_asc",
        Sort::PriceDesc => "price_desc",
        Sort::Newest => "newest",
    };
    s.append_pair("sort", sort).append_pair("per_page", &r.per_page.to_string());
    let optional = [
        ("q", r.q.clone()),
        ("category", r.category.clone()),
        ("seller", r.seller.clone()),
        ("min_price", r.min_price.map(|p| p.to_string())),
        ("max_price", r.max_price.map(|p| p.to_string())),
        ("in_stock", r.in_stock.map(|b| b.to_string())),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            s.append_pair(key, &v);
        }
    }
    for a in &r.attributes {
        let value = match &a.value {
            AttrValue::Text(t) => t.clone(),
            other => attr_value_string(other),
        };
        s.append_pair(&format!("attr.{}", a.key), &value);
    }
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_becomes_the_query_string_the_api_parses() {
        let mut r = SearchRequest::new("bench");
        r.q = Some("blue mug".into());
        r.category = Some("home/kitchen".into());
        r.min_price = Some(100);
        r.in_stock = Some(true);
        r.sort = Sort::PriceDesc;
        r.attributes = vec![AttrFilter { key: "capacity_ml".into(), value: AttrValue::Int(330) }];
        assert_eq!(
            query_string(&r),
            "sort=price_desc&per_page=20&q=blue+mug&category=home%2Fkitchen&min_price=100&in_stock=true\
             &attr.capacity_ml=330"
        );
    }

    #[test]
    fn the_mix_is_the_same_for_the_same_seed_and_has_every_kind() {
        let listings: Vec<Listing> = (0..50).map(|i| super::super::products::listing(3, 5, i)).collect();
        let a = mix(&listings, 16, 3, "bench");
        let b = mix(&listings, 16, 3, "bench");
        let strings = |m: &[Query]| m.iter().map(|q| q.query_string.clone()).collect::<Vec<_>>();
        assert_eq!(strings(&a), strings(&b));
        let kinds: std::collections::BTreeSet<_> = a.iter().map(|q| q.kind).collect();
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }
}
