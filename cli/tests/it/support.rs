//! What the end-to-end failure tests share: a buyer that retries one order until it is
//! accepted, and a worker process's pools run apart from the stack's node.

use souk_stores::postgres::{self as pg, PgOptions};
use souk_testkit::order_body;
use souk_topologies::{Topology, publisher::Publisher, runtime::Runtime};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Place one order under `key`, retrying it (same key) after `pause` until it is
/// accepted, and return its order id. While a server is down the only other answer
/// allowed is 503: anything else fails the test, and so does no 202 by `deadline`.
pub(crate) async fn place_until_accepted(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    key: &str,
    sku: &str,
    deadline: Instant,
    pause: Duration,
) -> String {
    loop {
        let sent = http
            .post(format!("{base}/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&order_body(sku, 1))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        if let Ok(r) = sent {
            let status = r.status().as_u16();
            if status == 202 {
                let json: serde_json::Value = r.json().await.expect("a 202's body is JSON");
                return json["order_id"].as_str().expect("a 202 names its order").to_owned();
            }
            assert_eq!(status, 503, "only 202 or 503 while a server is down");
        }
        assert!(Instant::now() < deadline, "order {key} never accepted");
        // Client back-off between retries, not synchronisation.
        tokio::time::sleep(pause).await;
    }
}

/// Every pool of `topology`, apart from the stack's node, on a connection pool with
/// production settings: a worker process the test can stop and start.
pub(crate) fn start_worker(
    publisher: &Publisher,
    topology: &Topology,
    url: &str,
) -> anyhow::Result<(CancellationToken, JoinHandle<()>)> {
    let pool = pg::connect(&PgOptions::new(url))?;
    let registry = souk_workers::registry(pool);
    let (publisher, topology) = (publisher.clone(), topology.clone());
    let cancel = CancellationToken::new();
    let run = cancel.clone();
    let task = tokio::spawn(async move {
        let runtime = Runtime::build(&publisher, &topology, &registry, &[]).await.expect("runtime");
        runtime.run(run).await;
    });
    Ok((cancel, task))
}
