//! The known-answer catalog shared by the conformance suite and the search API tests.
//!
//! `stores/tests/fixtures/search-catalog.json` holds 38 hand-written products of tenant
//! [`TENANT`] and 2 of [`OTHER_TENANT`] (same words, for isolation), all at version 1,
//! `updated_at` one hour apart in file order. The file is compiled in: any crate loads it
//! with [`catalog`], indexes it with [`ops`] (or writes each product through the API),
//! and checks [`known_answers`] — each with the request, its query string for
//! `GET /v1/search`, and the expected skus. The conformance suite asserts every one of
//! them on each store, and more (facet counts, price buckets, highlights) in
//! `stores/tests/it/search/queries.rs`.

use super::{AttrFilter, IndexOp, SearchDoc, SearchRequest, Sort};

/// The tenant of the fixture catalog.
pub const TENANT: &str = "acme";
/// Another tenant, with a few products that must never appear in [`TENANT`]'s results.
pub const OTHER_TENANT: &str = "globex";

const CATALOG_JSON: &str = include_str!("../../tests/fixtures/search-catalog.json");

/// The fixture documents (both tenants), at the versions the file gives.
pub fn catalog() -> Vec<SearchDoc> {
    serde_json::from_str(CATALOG_JSON).expect("the fixture catalog is valid JSON")
}

/// Upserts of the whole fixture.
pub fn ops() -> Vec<IndexOp> {
    catalog().into_iter().map(IndexOp::Upsert).collect()
}

/// One query on the fixture and its answer.
#[derive(Debug, Clone)]
pub struct KnownAnswer {
    pub name: &'static str,
    /// `per_page` is 100: the whole answer on one page.
    pub request: SearchRequest,
    /// The expected skus: in this order if `ordered`, else sorted.
    pub skus: Vec<&'static str>,
    pub ordered: bool,
}

impl KnownAnswer {
    /// The query string of `GET /v1/search` for this request (the tenant is the
    /// caller's, not a parameter).
    pub fn query_string(&self) -> String {
        let r = &self.request;
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut push = |k: &str, v: String| pairs.push((k.to_owned(), v));
        if let Some(q) = &r.q {
            push("q", q.clone());
        }
        if let Some(c) = &r.category {
            push("category", c.clone());
        }
        if let Some(s) = &r.seller {
            push("seller", s.clone());
        }
        if let Some(p) = r.min_price {
            push("min_price", p.to_string());
        }
        if let Some(p) = r.max_price {
            push("max_price", p.to_string());
        }
        for a in &r.attributes {
            push(&format!("attr.{}", a.key), a.value_string());
        }
        if let Some(s) = r.in_stock {
            push("in_stock", s.to_string());
        }
        let sort = match r.sort {
            Sort::Relevance => "relevance",
            Sort::PriceAsc => "price_asc",
            Sort::PriceDesc => "price_desc",
            Sort::Newest => "newest",
        };
        push("sort", sort.to_owned());
        push("per_page", r.per_page.to_string());
        pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
    }
}

/// Percent-encodes all but RFC 3986 unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn request(tenant: &str, f: impl FnOnce(&mut SearchRequest)) -> SearchRequest {
    let mut r = SearchRequest::new(tenant);
    r.per_page = 100;
    f(&mut r);
    r
}

fn answer(
    name: &'static str,
    f: impl FnOnce(&mut SearchRequest),
    skus: &[&'static str],
    ordered: bool,
) -> KnownAnswer {
    KnownAnswer { name, request: request(TENANT, f), skus: skus.to_vec(), ordered }
}

fn text(q: &'static str) -> impl FnOnce(&mut SearchRequest) {
    move |r| r.q = Some(q.to_owned())
}

/// The known answers on the fixture catalog (tenant [`TENANT`] unless the request
/// says otherwise).
pub fn known_answers() -> Vec<KnownAnswer> {
    const KETTLES: &[&str] = &["KET-001", "KET-002", "KET-003", "KET-004"];
    const KEYBOARDS: &[&str] = &["KBD-001", "KBD-002", "KBD-003", "KBD-004"];
    const BLUETOOTH: &[&str] = &["HDP-001", "HDP-003", "SPK-001"];
    const STAINLESS: &[&str] = &["KET-001", "MUG-003", "TNT-003"];
    const LINEN: &[&str] = &["LMP-002", "RUG-001", "YGA-003"];
    const CERAMIC: &[&str] = &["MUG-001", "MUG-002", "MUG-006"];
    let mugs = |sort: Sort| {
        move |r: &mut SearchRequest| {
            r.category = Some("home/kitchen/mugs".into());
            r.sort = sort;
        }
    };
    let mut answers = vec![
        answer(
            "category is a path prefix",
            |r| r.category = Some("home/kitchen".into()),
            &[
                "KET-001", "KET-002", "KET-003", "KET-004", "MUG-001", "MUG-002", "MUG-003", "MUG-004",
                "MUG-005", "MUG-006", "TEA-001", "TEA-002", "TEA-003",
            ],
            false,
        ),
        answer(
            "category matches whole segments",
            |r| r.category = Some("home/kitchen/mug".into()),
            &[],
            false,
        ),
        answer(
            "seller",
            |r| r.seller = Some("east".into()),
            &[
                "HDP-004", "HDP-005", "KBD-003", "KBD-004", "KET-004", "LMP-002", "LMP-003", "MUG-005",
                "MUG-006", "RUG-003", "SPK-003", "TEA-002", "TNT-003", "YGA-003",
            ],
            false,
        ),
        answer(
            "price range is inclusive",
            |r| {
                r.min_price = Some(1000);
                r.max_price = Some(2500);
            },
            &["HDP-004", "LMP-004", "MUG-001", "MUG-002", "MUG-003", "MUG-004", "MUG-006", "YGA-002"],
            false,
        ),
        answer(
            "attributes are ANDed",
            |r| {
                r.attributes =
                    vec![AttrFilter::parse("color", "white"), AttrFilter::parse("capacity_ml", "350")]
            },
            &["MUG-001"],
            false,
        ),
        answer(
            "boolean attribute",
            |r| r.attributes = vec![AttrFilter::parse("wireless", "true")],
            &["HDP-001", "HDP-003", "HDP-005", "KBD-002", "LMP-003", "SPK-001", "SPK-003"],
            false,
        ),
        answer(
            "number attribute",
            |r| r.attributes = vec![AttrFilter::parse("weight_kg", "0.05")],
            &["HDP-003", "HDP-005"],
            false,
        ),
        answer(
            "out of stock",
            |r| r.in_stock = Some(false),
            &["HDP-004", "KET-003", "LMP-003", "MUG-003", "SPK-003", "TNT-003"],
            false,
        ),
        answer(
            "text with filters",
            |r| {
                r.q = Some("mug".into());
                r.category = Some("home/kitchen".into());
                r.in_stock = Some(true);
                r.max_price = Some(2000);
            },
            &["MUG-001", "MUG-002", "MUG-005", "MUG-006"],
            false,
        ),
        answer(
            "price ascending",
            mugs(Sort::PriceAsc),
            &["MUG-005", "MUG-006", "MUG-001", "MUG-002", "MUG-004", "MUG-003"],
            true,
        ),
        answer(
            "price descending",
            mugs(Sort::PriceDesc),
            &["MUG-003", "MUG-004", "MUG-002", "MUG-001", "MUG-006", "MUG-005"],
            true,
        ),
        answer(
            "newest",
            mugs(Sort::Newest),
            &["MUG-006", "MUG-005", "MUG-004", "MUG-003", "MUG-002", "MUG-001"],
            true,
        ),
        answer(
            "relevance without text is by sku",
            mugs(Sort::Relevance),
            &["MUG-001", "MUG-002", "MUG-003", "MUG-004", "MUG-005", "MUG-006"],
            true,
        ),
        answer(
            "equal prices by sku",
            |r| {
                r.sort = Sort::PriceDesc;
                r.min_price = Some(1999);
                r.max_price = Some(2499);
            },
            &["HDP-004", "LMP-004", "MUG-004", "YGA-002"],
            true,
        ),
        answer("exact word", text("kettle"), KETTLES, false),
        answer("6 letters, swapped", text("ketlte"), KETTLES, false),
        answer("6 letters, two edits", text("ktetel"), &[], false),
        answer("4 letters, swapped", text("lmap shade"), &[], false),
        answer("5 letters, swapped", text("lnien"), LINEN, false),
        answer("5 letters, two edits", text("lnine"), &[], false),
        answer("8 letters, swapped", text("keybaord"), KEYBOARDS, false),
        answer("8 letters, two edits", text("kyebaord"), &[], false),
        answer("9 letters, two swaps", text("tsainlses"), STAINLESS, false),
        answer("9 letters, three edits", text("tsianlses"), &[], false),
        answer("8-letter query, one deletion", text("bluetoth"), BLUETOOTH, false),
        answer("accents fold", text("CAFE"), &["YGA-003"], false),
        answer("last word is a prefix", text("mug cera"), CERAMIC, false),
        answer("only the last word is a prefix", text("cera mug"), &[], false),
        answer("every word must match", text("walnut lamp"), &["LMP-002"], false),
    ];
    answers.push(KnownAnswer {
        name: "another tenant",
        request: request(OTHER_TENANT, |r| r.q = Some("kettle".into())),
        skus: vec!["GLX-KET"],
        ordered: true,
    });
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_use_the_api_parameter_names() {
        let a = answer(
            "x",
            |r| {
                r.q = Some("café mug".into());
                r.attributes = vec![AttrFilter::parse("capacity_ml", "350")];
                r.in_stock = Some(true);
            },
            &[],
            false,
        );
        assert_eq!(
            a.query_string(),
            "q=caf%C3%A9%20mug&attr.capacity_ml=350&in_stock=true&sort=relevance&per_page=100"
        );
    }
}
