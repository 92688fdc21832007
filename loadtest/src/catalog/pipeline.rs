//! Through souk, over HTTP: product writes (`PUT /v1/sellers/{seller}/products/{sku}`)
//! until every product is searchable, the freshness prober running beside them, and the
//! query set through `GET /v1/search`.

use futures::FutureExt;
use hdrhistogram::Histogram;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::Serialize;
use souk_ingress::{Claims, Keys, Role};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{products::Listing, queries::Query};
use crate::load::{self, LabelledOp, Plan, Tally};

/// The seller the freshness prober writes as, and its one product.
pub const PROBE_SELLER: &str = "bench-probe";
const PROBE_SKU: &str = "probe-0001";
/// How often the prober asks whether its write is searchable yet (the resolution of
/// the freshness figure).
const PROBE_POLL: Duration = Duration::from_millis(5);
/// A probe not searchable after this long counts as timed out.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the searchable count is read while waiting for the whole set.
const COUNT_POLL: Duration = Duration::from_millis(200);

/// Bearer tokens: one per seller, and one buyer's (searches run in its tenant).
pub struct Tokens {
    pub sellers: HashMap<String, String>,
    pub buyer: String,
}

impl Tokens {
    pub fn mint(
        keys: &Keys,
        tenant: &str,
        sellers: impl IntoIterator<Item = String>,
        ttl: Duration,
    ) -> Tokens {
        let sellers = sellers.into_iter().map(|s| (s.clone(), seller_token(keys, tenant, &s, ttl))).collect();
        let buyer = keys.mint(&Claims::new("bench-searcher", tenant, vec![Role::Buyer], ttl));
        Tokens { sellers, buyer }
    }
}

/// A token that may write `seller`'s listings.
fn seller_token(keys: &Keys, tenant: &str, seller: &str, ttl: Duration) -> String {
    let claims = Claims::new(&format!("{seller}-owner"), tenant, vec![Role::Seller], ttl)
        .with_sellers(vec![seller.to_owned()]);
    keys.mint(&claims)
}

fn product_url(addr: SocketAddr, seller: &str, sku: &str) -> String {
    format!("http://{addr}/v1/sellers/{seller}/products/{sku}")
}

/// What the writers did.
#[derive(Debug, Clone, Default)]
pub struct Writes {
    /// Products accepted (202).
    pub accepted: u64,
    /// Products given up on, by the last answer's class (`"400"`, `"timeout"`, …).
    pub errors: BTreeMap<String, u64>,
    /// 503 answers (each retried after its `Retry-After`, with the same key).
    pub refused: u64,
    /// Products refused at least once before being accepted.
    pub retried: u64,
    /// When the last product was accepted.
    pub last_accepted: Option<Instant>,
}

/// PUT every listing once, `writers` in flight, as a client told to back off would: a
/// write refused with 503 is sent again with the same `Idempotency-Key` after its
/// `Retry-After` (1 s when absent), until accepted or [`MAX_REFUSALS`]; any other
/// failure gives that product up and is counted under its class.
pub async fn write_all(
    client: reqwest::Client,
    addr: SocketAddr,
    listings: Arc<Vec<Listing>>,
    tokens: Arc<Tokens>,
    writers: usize,
) -> anyhow::Result<Writes> {
    let run = crate::http::key_run();
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers.max(1) {
        let (client, listings, tokens, next, run) =
            (client.clone(), listings.clone(), tokens.clone(), next.clone(), run.clone());
        tasks.spawn(async move {
            let mut writes = Writes::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(l) = listings.get(i) else { break };
                let token = tokens.sellers.get(&l.seller).cloned().unwrap_or_default();
                let key = format!("bench-{run}-{i}");
                let mut refusals = 0u64;
                let result = loop {
                    let request = client
                        .put(product_url(addr, &l.seller, &l.sku))
                        .header(AUTHORIZATION, format!("Bearer {token}"))
                        .header("idempotency-key", &key)
                        .header(CONTENT_TYPE, "application/json")
                        .json(&l.fields);
                    match send_once(request).await {
                        Answer::Refused(wait) if refusals < MAX_REFUSALS => {
                            refusals += 1;
                            tokio::time::sleep(wait).await;
                        }
                        Answer::Refused(_) => break Err("503".to_owned()),
                        Answer::Done(result) => break result,
                    }
                };
                writes.refused += refusals;
                writes.retried += u64::from(refusals > 0);
                match result {
                    Ok(()) => {
                        writes.accepted += 1;
                        writes.last_accepted = Some(Instant::now());
                    }
                    Err(class) => *writes.errors.entry(class).or_default() += 1,
                }
            }
            writes
        });
    }
    let mut total = Writes::default();
    while let Some(joined) = tasks.join_next().await {
        let w = joined?;
        total.accepted += w.accepted;
        total.refused += w.refused;
        total.retried += w.retried;
        for (class, n) in w.errors {
            *total.errors.entry(class).or_default() += n;
        }
        total.last_accepted = total.last_accepted.max(w.last_accepted);
    }
    Ok(total)
}

/// Refusals of one product after which the writer gives it up (a stalled server must
/// not hold the run for ever): ten minutes at `Retry-After: 1`.
const MAX_REFUSALS: u64 = 600;

/// One write's answer.
enum Answer {
    /// 503: send again after this long.
    Refused(Duration),
    /// Accepted, or failed with this class.
    Done(Result<(), String>),
}

async fn send_once(request: reqwest::RequestBuilder) -> Answer {
    let response = match request.send().await {
        Ok(r) => r,
        Err(e) => return Answer::Done(Err(if e.is_timeout() { "timeout" } else { "transport" }.to_owned())),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if response.bytes().await.is_err() {
        return Answer::Done(Err("transport".to_owned()));
    }
    match status.as_u16() {
        503 => Answer::Refused(Duration::from_secs(retry_after.unwrap_or(1))),
        _ if status.is_success() => Answer::Done(Ok(())),
        other => Answer::Done(Err(other.to_string())),
    }
}

async fn send(request: reqwest::RequestBuilder) -> Result<u64, String> {
    let response = request.send().await.map_err(|e| if e.is_timeout() { "timeout" } else { "transport" })?;
    let status = response.status();
    response.bytes().await.map_err(|_| "transport".to_owned())?;
    if status.is_success() { Ok(1) } else { Err(status.as_u16().to_string()) }
}

/// `GET /v1/search?…` as the buyer; the parsed answer, `None` when shed with 503.
async fn search_status(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    query_string: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    match search_json(client, addr, token, query_string).await {
        Ok(page) => Ok(Some(page)),
        Err(e) if e.to_string().contains(": 503 ") => Ok(None),
        Err(e) => Err(e),
    }
}

/// `GET /v1/search?…` as the buyer; the parsed answer.
async fn search_json(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    query_string: &str,
) -> anyhow::Result<serde_json::Value> {
    let response = client
        .get(format!("http://{addr}/v1/search?{query_string}"))
        .header(AUTHORIZATION, format!("Bearer {token}"))
        .send()
        .await?;
    let status = response.status();
    let body = response.bytes().await?;
    anyhow::ensure!(
        status.is_success(),
        "GET /v1/search?{query_string}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    Ok(serde_json::from_slice(&body)?)
}

/// The number of searchable products (the `total` of a query matching everything);
/// `None` when the search was shed with 503.
pub async fn searchable(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
) -> anyhow::Result<Option<u64>> {
    let Some(page) = search_status(client, addr, token, "per_page=1").await? else { return Ok(None) };
    let total = page["total"].as_u64();
    total.map(Some).ok_or_else(|| anyhow::anyhow!("a search answer without total: {page}"))
}

/// Wait until at least `expected` products are searchable; when that was first seen
/// (`None`: not within `timeout`) and the last count read.
pub async fn wait_searchable(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<(Option<Instant>, u64)> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(COUNT_POLL);
    let mut count = 0;
    loop {
        tick.tick().await;
        // A match-all with every facet counts the whole index: while the indexer still
        // catches up on a busy machine it can outlast the route's deadline and be shed
        // with 503, as souk sheds any slow search. That is an answer, not an end: ask again.
        // A match-all with every facet counts the whole index: while the indexer catches
        // up on a busy machine it can outlast the route's deadline and be shed with 503,
        // as souk sheds any slow search. That is an answer, not an end: ask again.
        if let Some(now) = searchable(client, addr, token).await? {
            count = now;
        }
        if count >= expected {
            return Ok((Some(Instant::now()), count));
        }
        if Instant::now() >= deadline {
            return Ok((None, count));
        }
    }
}

/// Time from a write's 202 to the change being searchable.
#[derive(Debug, Clone, Serialize)]
pub struct Freshness {
    pub probes: u64,
    pub timed_out: u64,
    /// Writes refused with 503 (tried again 100 ms later, as a new probe): not probed.
    pub refused: u64,
    /// Other failed writes by class (`"422"`, `"timeout"`, …): not probed.
    pub failed: BTreeMap<String, u64>,
    pub latency: crate::report::Latency,
}

/// Write the probe product again and again, each time with a new title, and time how
/// long after its 202 a search for that title finds it; until `stop`.
pub async fn probe_freshness(
    client: reqwest::Client,
    addr: SocketAddr,
    tokens: Arc<Tokens>,
    template: Listing,
    stop: CancellationToken,
) -> anyhow::Result<Freshness> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let (mut probes, mut timed_out, mut refused) = (0u64, 0u64, 0u64);
    let mut failed = BTreeMap::new();
    let token = tokens.sellers.get(PROBE_SELLER).cloned().unwrap_or_default();
    let run = crate::http::key_run();
    while !stop.is_cancelled() {
        probes += 1;
        // A word no generated title has, new for every probe: found means this write.
        let word = format!("pk{probes:07}");
        let mut fields = template.fields.clone();
        fields.title = format!("Probe {word}");
        let request = client
            .put(product_url(addr, PROBE_SELLER, PROBE_SKU))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .header("idempotency-key", format!("probe-{run}-{probes}"))
            .json(&fields);
        if let Err(class) = send(request).await {
            match class.as_str() {
                "503" => refused += 1,
                _ => *failed.entry(class).or_default() += 1,
            }
            // Do not spin on a refusing server.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let accepted = Instant::now();
        let query = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("q", &word)
            .append_pair("seller", PROBE_SELLER)
            .finish();
        loop {
            let found = search_json(&client, addr, &tokens.buyer, &query).await.is_ok_and(|page| {
                page["hits"].as_array().into_iter().flatten().any(|h| h["title"] == fields.title.as_str())
            });
            if found {
                let micros = u64::try_from(accepted.elapsed().as_micros()).unwrap_or(u64::MAX);
                histogram.saturating_record(micros.max(1));
                break;
            }
            if accepted.elapsed() >= PROBE_TIMEOUT {
                timed_out += 1;
                break;
            }
            tokio::time::sleep(PROBE_POLL).await;
        }
    }
    Ok(Freshness { probes, timed_out, refused, failed, latency: crate::report::Latency::of(&histogram) })
}

/// Run `queries` round robin through `GET /v1/search` per `plan`, tallied per kind too.
pub async fn search(
    client: reqwest::Client,
    addr: SocketAddr,
    token: String,
    queries: Arc<Vec<Query>>,
    plan: Plan,
) -> anyhow::Result<Tally> {
    let next = Arc::new(AtomicUsize::new(0));
    let op: LabelledOp = Arc::new(move || {
        let i = next.fetch_add(1, Ordering::Relaxed) % queries.len().max(1);
        let kind = queries.get(i).map_or("", |q| q.kind);
        let request = queries.get(i).map(|q| {
            client
                .get(format!("http://{addr}/v1/search?{}", q.query_string))
                .header(AUTHORIZATION, format!("Bearer {token}"))
        });
        (kind, async move { send(request.ok_or_else(|| "no queries".to_owned())?).await }.boxed())
    });
    load::run_labelled(plan, op).await
}

/// Queries whose `total` differs between the HTTP answer and the in-process one (both
/// indexes hold the same products; the probe product adds one to queries it matches).
pub async fn compare_totals(
    client: &reqwest::Client,
    addr: SocketAddr,
    token: &str,
    queries: &[Query],
    raw: &dyn souk_stores::search::SearchStore,
) -> anyhow::Result<u64> {
    let mut differ = 0;
    for q in queries {
        let http = search_json(client, addr, token, &q.query_string).await?["total"].as_u64();
        let local = raw.search(&q.request).await?.total;
        if http.is_none_or(|t| t.abs_diff(local) > 1) {
            differ += 1;
        }
    }
    Ok(differ)
}
