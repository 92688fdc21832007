//! Known answers on the fixture catalog: filters, facets, price buckets, sorts, typo
//! tolerance, prefixes, highlighting, page size bounds.

use super::{Harness, conformance, req, skus, sorted, strs, text};
use souk_stores::search::{AttrFilter, FacetCount, SearchError, SearchRequest, Sort};

conformance!(
    every_filter_has_known_answers,
    facets_count_the_whole_filtered_result,
    price_buckets_have_fixed_edges,
    each_sort_is_total_with_the_sku_as_tie_break,
    typos_within_the_edit_budget_match,
    the_last_word_matches_as_a_prefix_and_every_word_must_match,
    title_matches_rank_above_description_matches,
    matched_words_are_highlighted_and_the_rest_escaped,
    page_size_is_bounded,
    counts_are_the_same_for_every_sort_and_page_and_follow_each_commit,
);

fn with(f: impl FnOnce(&mut SearchRequest)) -> SearchRequest {
    let mut r = req();
    f(&mut r);
    r
}

fn count(value: &str, count: u64) -> FacetCount {
    FacetCount { value: value.into(), count }
}

async fn every_filter_has_known_answers(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let s = |r: SearchRequest| {
        let store = store.clone();
        async move { anyhow::Ok(store.search(&r).await?) }
    };
    // Category: a path prefix, by whole segments.
    let kitchen = s(with(|r| r.category = Some("home/kitchen".into()))).await?;
    assert_eq!(kitchen.total, 13);
    assert!(kitchen.hits.iter().all(|h| h.category.starts_with("home/kitchen/")));
    assert_eq!(s(with(|r| r.category = Some("home".into()))).await?.total, 20);
    assert_eq!(s(with(|r| r.category = Some("home/kitchen/mugs/".into()))).await?.total, 6);
    assert_eq!(s(with(|r| r.category = Some("home/kitchen/mug".into()))).await?.total, 0);
    // Seller.
    let east = s(with(|r| r.seller = Some("east".into()))).await?;
    assert_eq!(east.total, 14);
    assert!(east.hits.iter().all(|h| h.seller == "east"));
    // Price, inclusive at both ends.
    let priced = s(with(|r| {
        r.min_price = Some(1000);
        r.max_price = Some(2500);
    }))
    .await?;
    assert_eq!(
        sorted(&priced),
        strs(&["HDP-004", "LMP-004", "MUG-001", "MUG-002", "MUG-003", "MUG-004", "MUG-006", "YGA-002"])
    );
    assert_eq!(s(with(|r| r.min_price = Some(50_000))).await?.total, 1);
    assert_eq!(s(with(|r| r.max_price = Some(999))).await?.total, 1);
    // Attributes: typed values, several ANDed.
    let white = s(with(|r| r.attributes = vec![AttrFilter::parse("color", "white")])).await?;
    assert_eq!(white.total, 8);
    let white_350 = s(with(|r| {
        r.attributes = vec![AttrFilter::parse("color", "white"), AttrFilter::parse("capacity_ml", "350")]
    }))
    .await?;
    assert_eq!(skus(&white_350), ["MUG-001"]);
    let wireless = s(with(|r| r.attributes = vec![AttrFilter::parse("wireless", "true")])).await?;
    assert_eq!(
        sorted(&wireless),
        strs(&["HDP-001", "HDP-003", "HDP-005", "KBD-002", "LMP-003", "SPK-001", "SPK-003"])
    );
    let light = s(with(|r| r.attributes = vec![AttrFilter::parse("weight_kg", "0.05")])).await?;
    assert_eq!(sorted(&light), strs(&["HDP-003", "HDP-005"]));
    assert_eq!(
        s(with(|r| r.attributes = vec![AttrFilter::parse("color", "White")])).await?.total,
        0,
        "attribute values match exactly"
    );
    // Stock.
    let in_stock = s(with(|r| r.in_stock = Some(true))).await?;
    assert_eq!(in_stock.total, 32);
    assert!(in_stock.hits.iter().all(|h| h.stock > 0));
    let out = s(with(|r| r.in_stock = Some(false))).await?;
    assert_eq!(sorted(&out), strs(&["HDP-004", "KET-003", "LMP-003", "MUG-003", "SPK-003", "TNT-003"]));
    // Everything at once, with text.
    let combined = s(with(|r| {
        r.q = Some("mug".into());
        r.category = Some("home/kitchen".into());
        r.in_stock = Some(true);
        r.max_price = Some(2000);
    }))
    .await?;
    assert_eq!(sorted(&combined), strs(&["MUG-001", "MUG-002", "MUG-005", "MUG-006"]));
    Ok(())
}

async fn facets_count_the_whole_filtered_result(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    // One hit per page, facets still over everything.
    let all = store.search(&with(|r| r.per_page = 1)).await?;
    assert_eq!(all.total, 38);
    assert_eq!(all.hits.len(), 1);
    let f = &all.facets;
    let expected_categories = [
        ("electronics", 12),
        ("electronics/audio", 8),
        ("electronics/audio/headphones", 5),
        ("electronics/audio/speakers", 3),
        ("electronics/computers", 4),
        ("electronics/computers/keyboards", 4),
        ("home", 20),
        ("home/decor", 7),
        ("home/decor/lamps", 4),
        ("home/decor/rugs", 3),
        ("home/kitchen", 13),
        ("home/kitchen/kettles", 4),
        ("home/kitchen/mugs", 6),
        ("home/kitchen/teapots", 3),
        ("sports", 6),
        ("sports/fitness", 3),
        ("sports/fitness/yoga", 3),
        ("sports/outdoor", 3),
        ("sports/outdoor/tents", 3),
    ];
    assert_eq!(f.categories, expected_categories.iter().map(|(v, n)| count(v, *n)).collect::<Vec<_>>());
    assert_eq!(f.sellers, vec![count("east", 14), count("north", 12), count("south", 12)]);
    assert_eq!(f.attributes["color"][0], count("white", 8));
    // Filtered: only what the filter keeps.
    let mugs = store.search(&with(|r| r.category = Some("home/kitchen/mugs".into()))).await?;
    assert_eq!(
        mugs.facets.attributes["color"],
        vec![count("white", 3), count("black", 1), count("blue", 1), count("green", 1)]
    );
    assert_eq!(
        mugs.facets.attributes["capacity_ml"],
        vec![count("350", 2), count("300", 1), count("450", 1), count("500", 1), count("90", 1)]
    );
    assert!(!mugs.facets.attributes.contains_key("wireless"));
    let east = store.search(&with(|r| r.seller = Some("east".into()))).await?;
    let top: Vec<_> = east.facets.categories.iter().filter(|c| !c.value.contains('/')).cloned().collect();
    assert_eq!(top, vec![count("electronics", 5), count("home", 7), count("sports", 2)]);
    assert_eq!(east.facets.sellers, vec![count("east", 14)]);
    let none = store.search(&text("zzzzzz")).await?;
    assert_eq!(none.total, 0);
    assert!(none.facets.categories.is_empty());
    assert!(none.facets.price_buckets.iter().all(|b| b.count == 0));
    Ok(())
}

/// Totals and facets depend on what matches, nothing else (tantivy counts each filter
/// set once per index state and reuses the counts): the same filters under another
/// sort or page size count the same, and a commit changes the counts at once.
async fn counts_are_the_same_for_every_sort_and_page_and_follow_each_commit(
    h: &Harness,
) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let mugs = |sort: Sort, per_page: u32| {
        with(move |r| {
            r.category = Some("home/kitchen/mugs".into());
            r.sort = sort;
            r.per_page = per_page;
        })
    };
    let first = store.search(&mugs(Sort::Relevance, 100)).await?;
    assert_eq!(first.total, 6);
    for (sort, per_page) in [(Sort::PriceAsc, 1), (Sort::Newest, 3), (Sort::PriceDesc, 100)] {
        let again = store.search(&mugs(sort, per_page)).await?;
        assert_eq!((again.total, &again.facets), (first.total, &first.facets), "{sort:?}");
        assert_eq!(again.hits.len(), per_page.min(6) as usize, "{sort:?}");
    }
    // One more white mug: the next query of the same filters counts it.
    let mut new = super::doc("MUG-005");
    new.sku = "MUG-NEW".into();
    store.apply(vec![souk_stores::search::IndexOp::Upsert(new)]).await?;
    let after = store.search(&mugs(Sort::PriceAsc, 1)).await?;
    assert_eq!(after.total, 7);
    let categories = |r: &souk_stores::search::SearchResults| {
        r.facets.categories.iter().find(|c| c.value == "home/kitchen/mugs").map(|c| c.count)
    };
    assert_eq!((categories(&first), categories(&after)), (Some(6), Some(7)));
    Ok(())
}

async fn price_buckets_have_fixed_edges(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let buckets: Vec<_> = store
        .search(&req())
        .await?
        .facets
        .price_buckets
        .into_iter()
        .map(|b| (b.from, b.to, b.count))
        .collect();
    assert_eq!(
        buckets,
        vec![
            (0, Some(1_000), 1),
            (1_000, Some(2_500), 7),
            (2_500, Some(5_000), 11),
            (5_000, Some(10_000), 8),
            (10_000, Some(25_000), 6),
            (25_000, Some(50_000), 4),
            (50_000, None, 1),
        ]
    );
    Ok(())
}

async fn each_sort_is_total_with_the_sku_as_tie_break(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let mugs = |sort| {
        with(move |r| {
            r.category = Some("home/kitchen/mugs".into());
            r.sort = sort;
        })
    };
    assert_eq!(
        skus(&store.search(&mugs(Sort::PriceAsc)).await?),
        ["MUG-005", "MUG-006", "MUG-001", "MUG-002", "MUG-004", "MUG-003"]
    );
    assert_eq!(
        skus(&store.search(&mugs(Sort::PriceDesc)).await?),
        ["MUG-003", "MUG-004", "MUG-002", "MUG-001", "MUG-006", "MUG-005"]
    );
    assert_eq!(
        skus(&store.search(&mugs(Sort::Newest)).await?),
        ["MUG-006", "MUG-005", "MUG-004", "MUG-003", "MUG-002", "MUG-001"]
    );
    // Without text every hit scores the same: by sku.
    assert_eq!(
        skus(&store.search(&mugs(Sort::Relevance)).await?),
        ["MUG-001", "MUG-002", "MUG-003", "MUG-004", "MUG-005", "MUG-006"]
    );
    // Equal prices: by sku, in both directions.
    for sort in [Sort::PriceAsc, Sort::PriceDesc] {
        let tie = with(|r| {
            r.sort = sort;
            r.min_price = Some(1999);
            r.max_price = Some(2499);
        });
        let expected = match sort {
            Sort::PriceAsc => ["MUG-004", "YGA-002", "HDP-004", "LMP-004"],
            _ => ["HDP-004", "LMP-004", "MUG-004", "YGA-002"],
        };
        assert_eq!(skus(&store.search(&tie).await?), expected);
    }
    // The whole catalog in price order is non-decreasing, skus ascending within a price.
    let all = store.search(&with(|r| r.sort = Sort::PriceAsc)).await?;
    for pair in all.hits.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!((a.price_minor, &a.sku) < (b.price_minor, &b.sku), "{} then {}", a.sku, b.sku);
    }
    Ok(())
}

async fn typos_within_the_edit_budget_match(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let q = |s: &str| {
        let store = store.clone();
        let r = text(s);
        async move { anyhow::Ok(sorted(&store.search(&r).await?)) }
    };
    let kettles = strs(&["KET-001", "KET-002", "KET-003", "KET-004"]);
    assert_eq!(q("kettle").await?, kettles);
    // 6 letters: one edit; a swap of adjacent letters is one.
    assert_eq!(q("ketlte").await?, kettles, "transposition");
    assert_eq!(q("kettel").await?, kettles, "transposition at the end");
    assert_eq!(q("kettke").await?, kettles, "substitution");
    assert_eq!(q("ktetel").await?, Vec::<String>::new(), "two edits");
    // 4 letters: exact only; 5 letters: one edit.
    assert_eq!(q("lmap shade").await?, Vec::<String>::new(), "4 letters, swapped");
    assert_eq!(q("lamp shade").await?, strs(&["LMP-002", "LMP-004"]));
    let linen = strs(&["LMP-002", "RUG-001", "YGA-003"]);
    assert_eq!(q("linen").await?, linen);
    assert_eq!(q("lnien").await?, linen, "5 letters, swapped");
    assert_eq!(q("lnine").await?, Vec::<String>::new(), "5 letters, two edits");
    // 8 letters: one edit; 9 letters: two.
    let keyboards = strs(&["KBD-001", "KBD-002", "KBD-003", "KBD-004"]);
    assert_eq!(q("keybaord").await?, keyboards, "8 letters, swapped");
    assert_eq!(q("kyebaord").await?, Vec::<String>::new(), "8 letters, two edits");
    let stainless = strs(&["KET-001", "MUG-003", "TNT-003"]);
    assert_eq!(q("stainless").await?, stainless);
    assert_eq!(q("tsainlses").await?, stainless, "9 letters, two swaps");
    assert_eq!(q("tsianlses").await?, Vec::<String>::new(), "9 letters, three edits");
    // The budget is the query word's length: `bluetoth` (8) is one deletion away.
    let bluetooth = strs(&["HDP-001", "HDP-003", "SPK-001"]);
    assert_eq!(q("bluetoth").await?, bluetooth);
    assert_eq!(q("bleutooth").await?, bluetooth);
    // Accents and case fold.
    assert_eq!(q("CAFE").await?, strs(&["YGA-003"]));
    assert_eq!(q("crème").await?, strs(&["YGA-003"]));
    Ok(())
}

async fn the_last_word_matches_as_a_prefix_and_every_word_must_match(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let q = |s: &str| {
        let store = store.clone();
        let r = text(s);
        async move { anyhow::Ok(sorted(&store.search(&r).await?)) }
    };
    let ceramic = strs(&["MUG-001", "MUG-002", "MUG-006"]);
    assert_eq!(q("cera").await?, ceramic);
    assert_eq!(q("mug cera").await?, ceramic);
    assert_eq!(q("cera mug").await?, Vec::<String>::new(), "only the last word is a prefix");
    assert_eq!(q("head").await?, strs(&["HDP-001", "HDP-002", "HDP-004"]));
    assert_eq!(q("walnut lamp").await?, strs(&["LMP-002"]));
    assert_eq!(q("walnut").await?, strs(&["KBD-004", "LMP-002", "SPK-002"]));
    assert_eq!(q("walnut zebra").await?, Vec::<String>::new());
    assert_eq!(q("   ").await?.len(), 38, "blank text matches everything");
    Ok(())
}

async fn title_matches_rank_above_description_matches(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let walnut = skus(&store.search(&text("walnut")).await?);
    assert_eq!(walnut.len(), 3);
    assert_eq!(walnut[2], "SPK-002", "description only: last");
    let linen = skus(&store.search(&text("linen")).await?);
    assert_eq!(linen[0], "RUG-001", "in the title");
    // An exact word outranks a typo of it.
    let mut bluetooth = skus(&store.search(&text("bluetooth speaker")).await?);
    assert_eq!(bluetooth.remove(0), "SPK-001");
    Ok(())
}

async fn matched_words_are_highlighted_and_the_rest_escaped(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    let mug = store.search(&text("ceramic mug")).await?;
    let hit = mug.hits.iter().find(|h| h.sku == "MUG-001").expect("MUG-001");
    assert_eq!(hit.highlights.title, "<mark>Ceramic</mark> Coffee <mark>Mug</mark>");
    assert_eq!(
        hit.highlights.description,
        "A sturdy <mark>ceramic</mark> <mark>mug</mark> for coffee and tea, 350 ml."
    );
    let espresso = store.search(&text("espreso")).await?;
    assert_eq!(skus(&espresso), ["MUG-004"]);
    let hit = &espresso.hits[0];
    assert_eq!(hit.highlights.title, "<mark>Espresso</mark> Cups Set");
    assert_eq!(
        hit.highlights.description,
        "Four small <mark>espresso</mark> cups &lt;porcelain&gt; &amp; saucers."
    );
    let cafe = store.search(&text("cafe cre")).await?;
    assert_eq!(cafe.hits[0].highlights.title, "<mark>Café</mark> Meditation Cushion");
    assert_eq!(
        cafe.hits[0].highlights.description,
        "Buckwheat meditation cushion with a <mark>café</mark> <mark>crème</mark> linen cover."
    );
    // No text: nothing marked, still escaped.
    let plain = store.search(&with(|r| r.category = Some("home/kitchen/mugs".into()))).await?;
    let hit = plain.hits.iter().find(|h| h.sku == "MUG-004").expect("MUG-004");
    assert_eq!(hit.highlights.title, "Espresso Cups Set");
    assert!(hit.highlights.description.contains("&lt;porcelain&gt;"));
    Ok(())
}

async fn page_size_is_bounded(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    for bad in [0, 101, 10_000] {
        let err = store.search(&with(|r| r.per_page = bad)).await.expect_err("out of bounds");
        assert!(matches!(err, SearchError::InvalidRequest { field: "per_page", .. }), "{err}");
        assert!(err.is_bad_request() && !err.is_outage());
    }
    let one = store.search(&with(|r| r.per_page = 1)).await?;
    assert_eq!(one.hits.len(), 1);
    assert!(one.next_cursor.is_some());
    let hundred = store.search(&with(|r| r.per_page = 100)).await?;
    assert_eq!(hundred.hits.len(), 38);
    assert!(hundred.next_cursor.is_none());
    let err = store
        .search(&with(|r| {
            r.min_price = Some(500);
            r.max_price = Some(100);
        }))
        .await
        .expect_err("min above max");
    assert!(matches!(err, SearchError::InvalidRequest { field: "min_price", .. }));
    Ok(())
}

conformance!(the_shared_known_answers_hold);

/// The answers `souk_stores::search::fixture::known_answers` gives the API tests.
async fn the_shared_known_answers_hold(h: &Harness) -> anyhow::Result<()> {
    let store = h.with_fixture().await?;
    for answer in souk_stores::search::fixture::known_answers() {
        let results = store.search(&answer.request).await?;
        let got = if answer.ordered { skus(&results) } else { sorted(&results) };
        assert_eq!(got, answer.skus, "{}", answer.name);
        assert_eq!(results.total, answer.skus.len() as u64, "{}", answer.name);
    }
    Ok(())
}

/// tantivy only: the most expensive texts the bounds allow — 16 words of two-edit fuzzy
/// matching, one 512-byte word, a one-letter prefix, regex and query-syntax characters —
/// over a 20,000-word dictionary answer quickly and match nothing they should not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_query_texts_stay_cheap() -> anyhow::Result<()> {
    use souk_stores::search::IndexOp;
    let h = Harness::tantivy()?;
    let store = h.with_fixture().await?;
    // A large dictionary: 2,000 documents of 10 pseudo-random 9-letter words.
    let mut seed: u64 = 7;
    let mut word = || {
        (0..9)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                char::from(b'a' + ((seed >> 33) % 26) as u8)
            })
            .collect::<String>()
    };
    let ops: Vec<IndexOp> = (0..2000)
        .map(|n| {
            let mut d = super::doc("MUG-005");
            d.sku = format!("GEN-{n:05}");
            d.title = (0..5).map(|_| word()).collect::<Vec<_>>().join(" ");
            d.description = (0..5).map(|_| word()).collect::<Vec<_>>().join(" ");
            IndexOp::Upsert(d)
        })
        .collect();
    store.apply(ops).await?;
    let sixteen =
        (0..16).map(|i| format!("{}{}", "abcdefghijklmnopqrstuvwxyz", i)).collect::<Vec<_>>().join(" ");
    let regexy = ".*.*.*.*(a|b)+[^x]* \\ \" ' ~2 ^3 AND OR NOT *:* title:x";
    let (long, long_folded) = ("a".repeat(512), "é".repeat(256));
    for q in [
        sixteen.as_str(),
        long.as_str(),
        "a",
        regexy,
        long_folded.as_str(),
        "mug aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    ] {
        let started = std::time::Instant::now();
        let results = store.search(&text(q)).await?;
        let took = started.elapsed();
        // Generous: a debug build on shared cores; a blow-up takes seconds to minutes.
        assert!(took < std::time::Duration::from_secs(2), "{took:?} for {q:?}");
        assert!(results.hits.len() <= 100);
    }
    // A word too long to be indexed can never match, so a query with one matches
    // nothing (every word must match) — not everything, as if it were blank.
    for q in [long.as_str(), long_folded.as_str(), "mug aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        assert_eq!(store.search(&text(q)).await?.total, 0, "{q:?}");
    }
    assert_eq!(store.search(&text(regexy)).await?.total, 0, "query syntax is plain words");
    Ok(())
}

/// tantivy only: after a bulk load of many small batches (a segment each), the index
/// merges them in the background; once those merges end the store searches the merged
/// segments (fewer passes per query) with the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_loaded_index_searches_its_merged_segments_with_the_same_answers() -> anyhow::Result<()> {
    use souk_stores::search::{IndexOp, SearchStore, tantivy::TantivyStore};
    let dir = tempfile::tempdir()?;
    let store = TantivyStore::open(dir.path(), Default::default())?;
    let batches = 24;
    for n in 0..batches {
        let mut d = super::doc("MUG-005");
        d.sku = format!("BULK-{n:03}");
        store.apply(vec![IndexOp::Upsert(d)]).await?;
    }
    let everything = with(|r| r.per_page = 100);
    let before = store.search(&everything).await?;
    store.wait_for_merges().await?;
    assert!(store.segments() < batches, "{} segments after merging {batches}", store.segments());
    let after = store.search(&everything).await?;
    assert_eq!((after.total, sorted(&after), &after.facets), (before.total, sorted(&before), &before.facets));
    assert_eq!(after.total, batches as u64);
    Ok(())
}
