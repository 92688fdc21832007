//! `GET /v1/search` end to end: the known-answer fixture (`souk_stores::search::fixture`)
//! published to EVT as `ProductChanged` events, indexed by the node's `catalog-index`
//! pool into tantivy on disk, and searched through HTTP.

use serde_json::Value;
use souk_ingress::{Claims, Role};
use souk_stores::search::fixture;
use souk_testkit::{
    Stack,
    catalog::{changed, changed_of, product, publish},
    eventually, read_body,
};
use souk_topologies::publisher::Publisher;
use std::{collections::BTreeSet, time::Duration};

const WAIT: Duration = Duration::from_secs(30);

struct Env {
    stack: Stack,
    publisher: Publisher,
    /// A buyer of the fixture's tenant.
    token: String,
}

/// A stack with the whole fixture (both tenants) indexed through the pipeline.
async fn env() -> anyhow::Result<Env> {
    let stack = Stack::start().await?;
    let publisher = Publisher::new(stack.client.clone(), Duration::from_secs(5));
    for doc in fixture::catalog() {
        let id = format!("fixture:{}:{}:{}", doc.tenant, doc.sku, doc.version);
        publish(&publisher, &id, &changed_of(&doc)).await?;
    }
    let env = Env {
        token: stack.keys.mint(&Claims::new(
            "buyer",
            fixture::TENANT,
            vec![Role::Buyer],
            Duration::from_secs(600),
        )),
        stack,
        publisher,
    };
    env.indexed().await?;
    Ok(env)
}

impl Env {
    /// Until the indexer has handled every event stored.
    async fn indexed(&self) -> anyhow::Result<()> {
        eventually(WAIT, || async { souk_testkit::drained(&self.stack.js, "EVT", "catalog-index").await })
            .await
    }

    /// `GET /v1/search?<query>` as the fixture tenant's buyer.
    async fn search(&self, query: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}/v1/search?{query}", self.stack.base);
        read_body(self.stack.http.get(url).bearer_auth(&self.token).send().await?).await
    }

    /// A 200 answer's body, or an error naming the status and the body.
    async fn ok(&self, query: &str) -> anyhow::Result<Value> {
        match self.search(query).await? {
            (200, body) => Ok(body),
            (status, body) => anyhow::bail!("{query}: {status} {body}"),
        }
    }
}

fn skus(page: &Value) -> Vec<String> {
    page["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| h["sku"].as_str().unwrap_or("?").to_owned())
        .collect()
}

fn sorted(page: &Value) -> Vec<String> {
    let mut s = skus(page);
    s.sort();
    s
}

fn total(page: &Value) -> u64 {
    page["total"].as_u64().unwrap_or(u64::MAX)
}

/// Every filter, the facets (a category tree), the price buckets, each sort, typo
/// tolerance, prefix matching and highlighting, answered through HTTP on the fixture;
/// other tenants' products never appear, and an anonymous search sees the public
/// tenant only.
#[tokio::test]
async fn search_through_http_gives_the_known_answers() -> anyhow::Result<()> {
    let env = env().await?;
    // Filters.
    assert_eq!(total(&env.ok("category=home/kitchen").await?), 13);
    assert_eq!(total(&env.ok("category=home").await?), 20);
    assert_eq!(total(&env.ok("category=home/kitchen/mug").await?), 0);
    let east = env.ok("seller=east&per_page=100").await?;
    assert_eq!(total(&east), 14);
    assert!(east["hits"].as_array().into_iter().flatten().all(|h| h["seller"] == "east"));
    assert_eq!(
        sorted(&env.ok("min_price=1000&max_price=2500&per_page=100").await?),
        ["HDP-004", "LMP-004", "MUG-001", "MUG-002", "MUG-003", "MUG-004", "MUG-006", "YGA-002"]
    );
    assert_eq!(total(&env.ok("min_price=50000").await?), 1);
    assert_eq!(total(&env.ok("max_price=999").await?), 1);
    assert_eq!(total(&env.ok("attr.color=white").await?), 8);
    assert_eq!(skus(&env.ok("attr.color=white&attr.capacity_ml=350").await?), ["MUG-001"]);
    assert_eq!(
        sorted(&env.ok("attr.wireless=true&per_page=100").await?),
        ["HDP-001", "HDP-003", "HDP-005", "KBD-002", "LMP-003", "SPK-001", "SPK-003"]
    );
    assert_eq!(total(&env.ok("in_stock=true").await?), 32);
    assert_eq!(
        sorted(&env.ok("in_stock=false").await?),
        ["HDP-004", "KET-003", "LMP-003", "MUG-003", "SPK-003", "TNT-003"]
    );
    assert_eq!(
        sorted(&env.ok("q=mug&category=home/kitchen&in_stock=true&max_price=2000").await?),
        ["MUG-001", "MUG-002", "MUG-005", "MUG-006"]
    );

    // Facets over the whole result, one hit per page; categories as a tree.
    let all = env.ok("per_page=1").await?;
    assert_eq!(total(&all), 38);
    assert_eq!(all["hits"].as_array().map(Vec::len), Some(1));
    let tree = &all["facets"]["categories"];
    let roots: Vec<(&str, u64)> = tree
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| (n["path"].as_str().unwrap_or("?"), n["count"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(roots, [("electronics", 12), ("home", 20), ("sports", 6)]);
    let home = &tree[1];
    assert_eq!(home["children"][1]["path"], "home/kitchen");
    assert_eq!(home["children"][1]["count"], 13);
    assert_eq!(home["children"][1]["children"][1]["name"], "mugs");
    assert_eq!(home["children"][1]["children"][1]["count"], 6);
    assert_eq!(
        all["facets"]["sellers"],
        serde_json::json!([{"value": "east", "count": 14}, {"value": "north", "count": 12}, {"value": "south", "count": 12}])
    );
    assert_eq!(all["facets"]["attributes"]["color"][0], serde_json::json!({"value": "white", "count": 8}));
    let buckets: Vec<(i64, Option<i64>, u64)> = all["price_buckets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| (b["from"].as_i64().unwrap_or(-1), b["to"].as_i64(), b["count"].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(
        buckets,
        [
            (0, Some(1_000), 1),
            (1_000, Some(2_500), 7),
            (2_500, Some(5_000), 11),
            (5_000, Some(10_000), 8),
            (10_000, Some(25_000), 6),
            (25_000, Some(50_000), 4),
            (50_000, None, 1)
        ]
    );

    // Each sort.
    let mugs = |sort: &str| format!("category=home/kitchen/mugs&sort={sort}");
    assert_eq!(
        skus(&env.ok(&mugs("price_asc")).await?),
        ["MUG-005", "MUG-006", "MUG-001", "MUG-002", "MUG-004", "MUG-003"]
    );
    assert_eq!(
        skus(&env.ok(&mugs("price_desc")).await?),
        ["MUG-003", "MUG-004", "MUG-002", "MUG-001", "MUG-006", "MUG-005"]
    );
    assert_eq!(
        skus(&env.ok(&mugs("newest")).await?),
        ["MUG-006", "MUG-005", "MUG-004", "MUG-003", "MUG-002", "MUG-001"]
    );
    assert_eq!(
        skus(&env.ok(&mugs("relevance")).await?),
        ["MUG-001", "MUG-002", "MUG-003", "MUG-004", "MUG-005", "MUG-006"]
    );

    // Typo tolerance and the last word as a prefix.
    let kettles = sorted(&env.ok("q=kettle").await?);
    assert_eq!(kettles, ["KET-001", "KET-002", "KET-003", "KET-004"]);
    assert_eq!(sorted(&env.ok("q=ketlte").await?), kettles, "transposition");
    assert_eq!(sorted(&env.ok("q=kettke").await?), kettles, "substitution");
    assert_eq!(total(&env.ok("q=ktetel").await?), 0, "two edits in six letters");
    let stainless = sorted(&env.ok("q=stainless").await?);
    assert!(stainless.contains(&"MUG-003".to_owned()), "{stainless:?}");
    assert_eq!(sorted(&env.ok("q=tsainlses").await?), stainless, "9 letters, two edits");
    assert_eq!(sorted(&env.ok("q=head").await?), ["HDP-001", "HDP-002", "HDP-004"]);

    // Highlighting, escaped.
    let mug = env.ok("q=ceramic%20mug").await?;
    let hit = mug["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|h| h["sku"] == "MUG-001")
        .cloned()
        .unwrap_or_default();
    assert_eq!(hit["highlights"]["title"], "<mark>Ceramic</mark> Coffee <mark>Mug</mark>");
    assert_eq!(hit["price"], serde_json::json!({"amount_minor": 1299, "currency": "EUR"}));
    assert_eq!(hit["stock"], 40);
    assert_eq!(hit["category"], "home/kitchen/mugs");
    let espresso = env.ok("q=espreso").await?;
    assert_eq!(
        espresso["hits"][0]["highlights"]["description"],
        "Four small <mark>espresso</mark> cups &lt;porcelain&gt; &amp; saucers."
    );

    // Tenants: the other tenant's products never show; no token reads the public tenant.
    assert!(!skus(&env.ok("q=kettle&per_page=100").await?).contains(&"GLX-KET".to_owned()));
    let (status, anonymous) =
        read_body(env.stack.http.get(format!("{}/v1/search?q=kettle", env.stack.base)).send().await?).await?;
    assert_eq!((status, total(&anonymous)), (200, 0), "{anonymous}");
    Ok(())
}

/// Every known answer of the fixture (the list the store's conformance suite asserts
/// on every store) through HTTP, as a buyer of the answer's tenant.
#[tokio::test]
async fn every_known_answer_of_the_fixture_holds_through_http() -> anyhow::Result<()> {
    let env = env().await?;
    for answer in fixture::known_answers() {
        let token = env.stack.keys.mint(&Claims::new(
            "buyer",
            &answer.request.tenant,
            vec![Role::Buyer],
            Duration::from_secs(600),
        ));
        let url = format!("{}/v1/search?{}", env.stack.base, answer.query_string());
        let (status, page) = read_body(env.stack.http.get(url).bearer_auth(token).send().await?).await?;
        assert_eq!(status, 200, "{}: {page}", answer.name);
        let got = if answer.ordered { skus(&page) } else { sorted(&page) };
        assert_eq!(got, answer.skus, "{}", answer.name);
    }
    Ok(())
}

/// Pages of one query have no duplicates and no gaps while the index changes between
/// them (a product added, one deleted, one repriced to the other end): the cursor pins
/// the index state the first page was read from.
#[tokio::test]
async fn pages_have_no_duplicates_or_gaps_while_the_index_changes() -> anyhow::Result<()> {
    let env = env().await?;
    let first = env.ok("sort=price_asc&per_page=7").await?;
    let mut seen = skus(&first);
    let mut cursor = first["next_cursor"].as_str().map(str::to_owned);

    let t = fixture::TENANT;
    let mut added = changed("NEW-001", "north", 1, Some(product("NEW-001", "north", 1, "Cheap Mug")));
    added.tenant = t.into();
    publish(&env.publisher, "change:new", &added).await?;
    let mut deleted = changed("TNT-002", "north", 2, None);
    deleted.tenant = t.into();
    publish(&env.publisher, "change:delete", &deleted).await?;
    let doc = fixture::catalog().into_iter().find(|d| d.tenant == t && d.sku == "MUG-005").expect("MUG-005");
    let mut repriced = doc.clone();
    repriced.version += 1;
    repriced.price_minor = 99_999;
    publish(&env.publisher, "change:reprice", &changed_of(&repriced)).await?;
    env.indexed().await?;
    assert_eq!(total(&env.ok("sort=price_asc").await?), 38, "the index did change: one in, one out");

    let mut pages = 1;
    while let Some(c) = cursor {
        let page = env.ok(&format!("sort=price_asc&per_page=7&cursor={c}")).await?;
        seen.extend(skus(&page));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        pages += 1;
        assert!(pages <= 6, "too many pages");
    }
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates: {seen:?}");
    let expected: BTreeSet<String> =
        fixture::catalog().into_iter().filter(|d| d.tenant == t).map(|d| d.sku).collect();
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), expected, "gaps or strangers");
    assert_eq!(pages, 6, "38 hits, 7 a page");
    Ok(())
}

/// Every bad parameter is named in one 400 problem; bad, foreign and altered cursors
/// too; an unusable token is a 401, not an anonymous search.
#[tokio::test]
async fn bad_search_parameters_get_one_problem_naming_each() -> anyhow::Result<()> {
    let env = env().await?;
    let long = "a".repeat(600);
    let (status, problem) = env
        .search(&format!(
            "q={long}&per_page=0&min_price=-5&max_price=1.5&sort=cheapest&in_stock=yes&colour=red\
             &seller=a&seller=b&attr.Bad%20Key=x&cursor="
        ))
        .await?;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(problem["type"], "https://souk.dev/problems/invalid-search");
    let named: BTreeSet<&str> =
        problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
    for field in [
        "q",
        "per_page",
        "min_price",
        "max_price",
        "sort",
        "in_stock",
        "colour",
        "seller",
        "attr.Bad Key",
        "cursor",
    ] {
        assert!(named.contains(field), "{field} not named: {problem}");
    }
    for (query, field) in [
        ("per_page=101", "per_page"),
        ("per_page=ten", "per_page"),
        ("min_price=500&max_price=100", "min_price"),
        ("min_price=99999999999999999999", "min_price"),
        ("sort=newest&sort=price_asc", "sort"),
        ("cursor=not-a-cursor", "cursor"),
        ("q=a%20b%20c%20d%20e%20f%20g%20h%20i%20j%20k%20l%20m%20n%20o%20p%20q", "q"),
    ] {
        let (status, problem) = env.search(query).await?;
        assert_eq!(status, 400, "{query}: {problem}");
        let fields: Vec<&str> =
            problem["errors"].as_array().into_iter().flatten().filter_map(|e| e["field"].as_str()).collect();
        assert_eq!(fields, [field], "{query}: {problem}");
    }
    // A real cursor, altered; and used with another query.
    let page = env.ok("per_page=5").await?;
    let cursor = page["next_cursor"].as_str().unwrap_or_default().to_owned();
    let mut altered = cursor.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered)?;
    for query in [format!("per_page=5&cursor={altered}"), format!("per_page=5&q=mug&cursor={cursor}")] {
        let (status, problem) = env.search(&query).await?;
        assert_eq!((status, problem["errors"][0]["field"].as_str()), (400, Some("cursor")), "{problem}");
    }
    let (status, _) = env.ok(&format!("per_page=5&cursor={cursor}")).await.map(|b| (200, b))?;
    assert_eq!(status, 200, "the untouched cursor still works");
    // An expired token is refused, never read as anonymous.
    let r = env
        .stack
        .http
        .get(format!("{}/v1/search?q=mug", env.stack.base))
        .bearer_auth("garbage")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    Ok(())
}

/// A product written through the API goes the whole way — PUT (202), the catalog pool
/// (Postgres, outbox), the relay, EVT, the indexer — and becomes searchable through HTTP
/// (anonymously: the stack's public tenant); a PATCH reprices it, a DELETE removes it.
#[tokio::test]
async fn a_product_put_through_the_api_becomes_searchable_and_a_delete_removes_it() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let seller = stack.keys.mint(
        &Claims::new("seller-1", souk_testkit::PUBLIC_TENANT, vec![Role::Seller], Duration::from_secs(600))
            .with_sellers(vec!["s1".into()]),
    );
    let url = format!("{}/v1/sellers/s1/products/E2E-MUG", stack.base);
    let write = |method: reqwest::Method, key: &'static str, body: Option<Value>| {
        let mut r = stack.http.request(method, &url).bearer_auth(&seller).header("idempotency-key", key);
        if let Some(body) = body {
            r = r.json(&body);
        }
        async move { read_body(r.send().await?).await }
    };
    let search = |query: &'static str| {
        let (http, base) = (stack.http.clone(), stack.base.clone());
        async move { read_body(http.get(format!("{base}/v1/search?{query}")).send().await?).await }
    };
    let product = serde_json::json!({
        "title": "Stoneware Espresso Mug",
        "description": "Hand-thrown, holds a double shot.",
        "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 120, "material": "stoneware"},
        "price_minor": 1450,
        "currency": "EUR",
        "stock": 3
    });
    let (status, body) = write(reqwest::Method::PUT, "put-1", Some(product)).await?;
    assert_eq!(status, 202, "{body}");
    let hit = eventually(WAIT, || async {
        let (status, page) = search("q=stonewar").await?;
        anyhow::ensure!(status == 200, "{status} {page}");
        anyhow::Ok(page["hits"].as_array().and_then(|h| h.first()).cloned())
    })
    .await?;
    assert_eq!(hit["sku"], "E2E-MUG");
    assert_eq!(hit["seller"], "s1");
    assert_eq!(hit["price"], serde_json::json!({"amount_minor": 1450, "currency": "EUR"}));
    assert_eq!(hit["highlights"]["title"], "<mark>Stoneware</mark> Espresso Mug");

    let (status, body) =
        write(reqwest::Method::PATCH, "patch-1", Some(serde_json::json!({"price_minor": 990}))).await?;
    assert_eq!(status, 202, "{body}");
    eventually(WAIT, || async {
        let (_, page) = search("q=espresso&max_price=1000").await?;
        anyhow::Ok((page["hits"][0]["sku"] == "E2E-MUG").then_some(()))
    })
    .await?;

    let (status, body) = write(reqwest::Method::DELETE, "delete-1", None).await?;
    assert_eq!(status, 202, "{body}");
    eventually(WAIT, || async {
        let (_, page) = search("q=espresso").await?;
        anyhow::Ok((page["total"] == 0).then_some(()))
    })
    .await?;
    stack.quiescent(WAIT).await?;
    assert_eq!(total(&search("q=espresso").await?.1), 0, "still gone once everything settled");
    Ok(())
}

/// One process per embedded index: a second opener of the same directory is refused,
/// naming the directory, and may open it once the first has closed it.
#[tokio::test]
async fn a_second_process_cannot_open_the_same_embedded_index() -> anyhow::Result<()> {
    use souk_cli::node::{SearchBackend, open_search};
    let dir = tempfile::tempdir()?;
    let backend = SearchBackend::Tantivy { dir: dir.path().join("search"), threads: None };
    let first = open_search(&backend).await?;
    let refused = open_search(&backend).await.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(refused.contains("is open in another process") && refused.contains("search"), "{refused}");
    drop(first);
    open_search(&backend).await?;
    Ok(())
}
