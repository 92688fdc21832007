//! The query string of `GET /v1/search`, parsed strictly: every parameter is known,
//! single-valued ones appear once, values are in range, and every problem is reported
//! at once (one 400 naming each bad parameter), so a client fixes its request in one go.

use souk_pipelines::orders::FieldError;
use souk_stores::search::{Sort, request::MAX_QUERY_BYTES};
use std::collections::BTreeMap;

/// Longest category path, seller id, attribute key or value, in characters.
pub const MAX_VALUE_CHARS: usize = 128;
/// Attribute filters one request may carry.
pub const MAX_ATTR_FILTERS: usize = 16;
/// Longest cursor accepted (the store's are far shorter; this bounds the work).
pub const MAX_CURSOR_BYTES: usize = 2048;
/// Hits per page: default and most.
pub use souk_stores::search::request::{DEFAULT_PER_PAGE, MAX_PER_PAGE};

/// A parsed, valid search request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchParams {
    pub q: Option<String>,
    /// A category path prefix (`home/kitchen` matches `home/kitchen/mugs`).
    pub category: Option<String>,
    pub seller: Option<String>,
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    /// `attr.<key>=<value>`: every one must hold (one value per key).
    pub attributes: BTreeMap<String, String>,
    pub in_stock: Option<bool>,
    pub sort: Sort,
    pub per_page: u32,
    /// As sent: the store checks it (its own, intact, current, for this query).
    pub cursor: Option<String>,
}

/// The parameters of `GET /v1/search`, for the API document ([`parse`] reads the raw
/// pairs, `attr.<key>` included, which OpenAPI cannot name).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // a description for the document, never built
pub struct SearchQuery {
    /// Words to find in titles (weighted) and descriptions: one typo allowed in words
    /// of 5-8 letters, two from 9 (two swapped neighbours count as one), the last word
    /// also as a prefix. At most 512 bytes and 16 words.
    q: Option<String>,
    /// A category path; matches it and everything below (`home/kitchen`).
    category: Option<String>,
    seller: Option<String>,
    /// Inclusive, in minor units (1299 for 12.99); a non-negative integer.
    #[param(minimum = 0)]
    min_price: Option<i64>,
    /// Inclusive, in minor units; not below `min_price`.
    #[param(minimum = 0)]
    max_price: Option<i64>,
    /// `true`: only products in stock; `false`: only those out of stock.
    in_stock: Option<bool>,
    /// `relevance` (default), `price_asc`, `price_desc` or `newest`; ties by SKU.
    #[param(pattern = "^(relevance|price_asc|price_desc|newest)$")]
    sort: Option<String>,
    /// Hits per page, 1-100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    per_page: Option<u32>,
    /// The previous page's `next_cursor`, with the same other parameters. Also
    /// `attr.<key>=<value>` (at most 16, one value per key): the attribute has the value.
    cursor: Option<String>,
}

/// Parse the decoded `(name, value)` pairs of a query string.
pub fn parse(pairs: &[(String, String)]) -> Result<SearchParams, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut err = |field: &str, message: String| errors.push(FieldError { field: field.to_owned(), message });
    let mut p = SearchParams { per_page: DEFAULT_PER_PAGE, ..Default::default() };
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, _) in pairs {
        *seen.entry(name.as_str()).or_default() += 1;
    }
    for (name, count) in &seen {
        if *count > 1 && (is_known(name) || name.starts_with("attr.")) {
            err(name, format!("given {count} times; it takes one value"));
        }
    }
    for (name, value) in pairs {
        if seen.get(name.as_str()).is_some_and(|n| *n > 1) && (is_known(name) || name.starts_with("attr.")) {
            continue; // reported above, once
        }
        let value = value.as_str();
        match name.as_str() {
            "q" => match value.trim() {
                "" => {}
                v if v.len() > MAX_QUERY_BYTES => err(name, format!("at most {MAX_QUERY_BYTES} bytes")),
                v if v.chars().any(char::is_control) => err(name, "contains control characters".into()),
                // Never a product search, and the query text goes on to the search engine
                // and its logs (second review, twelfth session).
                v if souk_pipelines::pan::looks_like_pan(v) => {
                    err(name, "looks like a card number: it is not searched for".into())
                }
                v => p.q = Some(v.to_owned()),
            },
            "category" => match text(value) {
                Ok(v) => {
                    let path = v.trim_matches('/');
                    if path.is_empty() || path.split('/').any(str::is_empty) {
                        err(name, "a category path like home/kitchen".into());
                    } else {
                        p.category = Some(path.to_owned());
                    }
                }
                Err(why) => err(name, why),
            },
            "seller" => match text(value) {
                Ok(v) => p.seller = Some(v.to_owned()),
                Err(why) => err(name, why),
            },
            "min_price" => match price(value) {
                Ok(v) => p.min_price = Some(v),
                Err(why) => err(name, why),
            },
            "max_price" => match price(value) {
                Ok(v) => p.max_price = Some(v),
                Err(why) => err(name, why),
            },
            "in_stock" => match value {
                "true" => p.in_stock = Some(true),
                "false" => p.in_stock = Some(false),
                _ => err(name, "true or false".into()),
            },
            "sort" => match value.parse::<Sort>() {
                Ok(s) => p.sort = s,
                Err(_) => err(name, "one of relevance, price_asc, price_desc, newest".into()),
            },
            "per_page" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_PER_PAGE).contains(&n) => p.per_page = n,
                _ => err(name, format!("an integer from 1 to {MAX_PER_PAGE}")),
            },
            "cursor" => match value {
                "" => err(name, "empty; omit it for the first page".into()),
                v if v.len() > MAX_CURSOR_BYTES => err(name, "not a cursor this API made".into()),
                v => p.cursor = Some(v.to_owned()),
            },
            other => match other.strip_prefix("attr.") {
                Some(key) => match (attr_key(key), text(value)) {
                    (Ok(()), Ok(v)) => {
                        p.attributes.insert(key.to_owned(), v.to_owned());
                    }
                    (Err(why), _) | (_, Err(why)) => err(name, why),
                },
                None => err(name, "unknown parameter".into()),
            },
        }
    }
    if seen.keys().filter(|n| n.starts_with("attr.")).count() > MAX_ATTR_FILTERS {
        err("attr", format!("at most {MAX_ATTR_FILTERS} attribute filters"));
    }
    if let (Some(min), Some(max)) = (p.min_price, p.max_price)
        && min > max
    {
        err("min_price", "greater than max_price".into());
    }
    if errors.is_empty() { Ok(p) } else { Err(errors) }
}

fn is_known(name: &str) -> bool {
    matches!(
        name,
        "q" | "category" | "seller" | "min_price" | "max_price" | "in_stock" | "sort" | "per_page" | "cursor"
    )
}

fn text(value: &str) -> Result<&str, String> {
    if value.is_empty() {
        return Err("empty".into());
    }
    if value.chars().count() > MAX_VALUE_CHARS {
        return Err(format!("at most {MAX_VALUE_CHARS} characters"));
    }
    if value.chars().any(char::is_control) {
        return Err("contains control characters".into());
    }
    Ok(value)
}

/// A price in minor units: a non-negative integer, digits only (no sign, no decimals,
/// no exponent: `12.50` would be a guess at the currency's minor unit).
fn price(value: &str) -> Result<i64, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err("a non-negative integer amount in minor units (1299 for 12.99)".into());
    }
    value.parse::<i64>().map_err(|_| "too large".to_owned())
}

fn attr_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 64
        && key.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok { Ok(()) } else { Err("attribute keys are 1-64 of a-z, 0-9, _ and -".into()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn fields(q: &[(&str, &str)]) -> Vec<String> {
        parse(&pairs(q)).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_full_request_parses() {
        let p = parse(&pairs(&[
            ("q", " red mug "),
            ("category", "home/kitchen/"),
            ("seller", "s1"),
            ("min_price", "100"),
            ("max_price", "100"),
            ("attr.color", "red"),
            ("attr.size", "l"),
            ("in_stock", "true"),
            ("sort", "price_desc"),
            ("per_page", "100"),
        ]))
        .unwrap();
        assert_eq!(p.q.as_deref(), Some("red mug"));
        assert_eq!(p.category.as_deref(), Some("home/kitchen"));
        assert_eq!(p.attributes["color"], "red");
        assert_eq!((p.sort, p.per_page, p.in_stock), (Sort::PriceDesc, 100, Some(true)));
        assert_eq!(parse(&[]).unwrap().per_page, DEFAULT_PER_PAGE);
    }

    #[test]
    fn a_card_number_is_never_searched_for() {
        assert_eq!(fields(&[("q", "4111 1111 1111 1111")]), ["q"]);
        assert!(parse(&pairs(&[("q", "mug 330 ml")])).is_ok());
    }

    #[test]
    fn every_bad_parameter_is_named_at_once() {
        let long = "x".repeat(MAX_QUERY_BYTES + 1);
        let got = fields(&[
            ("q", &long),
            ("per_page", "0"),
            ("min_price", "-1"),
            ("max_price", "1.5"),
            ("sort", "cheapest"),
            ("in_stock", "yes"),
            ("colour", "red"),
            ("seller", "a"),
            ("seller", "b"),
            ("attr.Bad Key", "x"),
            ("attr.color", "red"),
            ("attr.color", "blue"),
            ("cursor", ""),
        ]);
        for f in [
            "q",
            "per_page",
            "min_price",
            "max_price",
            "sort",
            "in_stock",
            "colour",
            "seller",
            "attr.Bad Key",
            "attr.color",
            "cursor",
        ] {
            assert!(got.contains(&f.to_owned()), "{f} not named in {got:?}");
        }
        assert_eq!(got.iter().filter(|f| *f == "seller").count(), 1, "{got:?}");
        assert_eq!(fields(&[("min_price", "5"), ("max_price", "4")]), ["min_price"]);
        assert_eq!(fields(&[("per_page", "101")]), ["per_page"]);
        assert_eq!(fields(&[("min_price", "99999999999999999999")]), ["min_price"]);
        assert_eq!(fields(&[("category", "a//b")]), ["category"]);
    }
}
