//! An outage is not a poison message: Postgres down for longer than the whole retry
//! schedule of the shipped topology (backoff 1s/5s/30s/2m, max-deliver 5: ~156 s plus
//! the attempts themselves) must not dead-letter a single accepted order.

use souk_ingress::Role;
use souk_testkit::{PgServer, Stack, StackOptions, eventually};
use souk_topologies::{apply::Mode, publisher::Publisher};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::place_until_accepted;

/// Longer than the shipped schedule (1 + 5 + 30 + 120 s of backoff, five attempts of up
/// to a 2 s connection wait each, plus batches queued behind each other).
const OUTAGE: Duration = Duration::from_secs(190);

type Accepted = Arc<Mutex<HashSet<String>>>;

/// `clients` buyers placing orders one after another until `stop`, each retrying its
/// current order (same key) on 503 until it gets its 202; any other answer fails the
/// test. The order in hand when `stop` fires is still finished.
fn load(
    stack: &Stack,
    token: &str,
    clients: usize,
    accepted: &Accepted,
    stop: &CancellationToken,
) -> Vec<JoinHandle<()>> {
    (0..clients)
        .map(|c| {
            let (token, accepted, stop) = (token.to_owned(), accepted.clone(), stop.clone());
            let (base, http) = (stack.base.clone(), stack.http.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.is_cancelled() {
                        break;
                    }
                    let key = format!("c{c}-o{i}");
                    let deadline = Instant::now() + OUTAGE + Duration::from_secs(60);
                    let pause = Duration::from_millis(200);
                    let id = place_until_accepted(&http, &base, &token, &key, "SKU-7", deadline, pause).await;
                    assert!(accepted.lock().expect("lock").insert(id), "two keys got one order id");
                }
            })
        })
        .collect()
}

/// Postgres stops (immediate shutdown) with a backlog of accepted orders in CMD and
/// orders streaming in, stays down longer than the whole backoff schedule, and comes
/// back: every order that got a 202 is stored once as `accepted`, and nothing was
/// dead-lettered.
#[tokio::test]
async fn a_postgres_outage_longer_than_the_retry_schedule_dead_letters_nothing() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let step = |what: &str| eprintln!("[outage test {:>5.1}s] {what}", t0.elapsed().as_secs_f64());
    let mut pg_server = PgServer::start().await?;
    let mut stack = Stack::start_with(StackOptions {
        rate_limit: None,
        postgres: Some(pg_server.url()),
        pools: false,
        ..Default::default()
    })
    .await?;
    // Production settings: the shipped topology, applied over the test one.
    let topology = souk_testkit::shipped_topology()?;
    souk_topologies::apply::apply(&stack.js, &topology, Mode::Apply).await?;
    stack.topology = topology.clone();
    let publisher = Publisher::new(stack.client.clone(), Duration::from_millis(1500));
    let (worker, worker_task) = crate::support::start_worker(
        &publisher,
        &topology,
        &stack.db.url,
        None,
        Some(stack.payments.clone()),
    )?;

    stack.seed_skus(&["SKU-7"]).await?;
    let token = stack.token("quinn", &[Role::Buyer]);
    let accepted = Accepted::default();
    let stop = CancellationToken::new();
    let clients = load(&stack, &token, 8, &accepted, &stop);
    eventually(Duration::from_secs(60), || async { (accepted.lock().ok()?.len() >= 100).then_some(()) })
        .await?;

    step("100 orders accepted; stopping the worker");
    // A backlog that cannot have been handled before the outage: orders accepted while
    // the worker is stopped wait in CMD.
    worker.cancel();
    worker_task.await?;
    let before = accepted.lock().expect("lock").len();
    eventually(Duration::from_secs(60), || async {
        (accepted.lock().ok()?.len() >= before + 50).then_some(())
    })
    .await?;
    pg_server.crash().await?;
    step("postgres stopped");
    let backlog = accepted.lock().expect("lock").len() - before;
    let (worker, worker_task) = crate::support::start_worker(
        &publisher,
        &topology,
        &stack.db.url,
        None,
        Some(stack.payments.clone()),
    )?;
    // The backlog is fetched and fails against the dead store: every message of it is
    // delivered at least once during the outage.
    eventually(Duration::from_secs(30), || async {
        let info = stack.js.get_stream("CMD").await.ok()?.consumer_info("orders-place").await.ok()?;
        (info.num_ack_pending >= backlog).then_some(())
    })
    .await?;
    step(&format!("backlog of {backlog} delivered during the outage"));
    // `souk status` shows the open breaker (and keeps its consumer fields) once the
    // first attempts have failed (each waits out the pool's 2 s connection timeout).
    let data = tempfile::tempdir()?;
    let souk_status = || async {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_souk"))
            .arg("--data-dir")
            .arg(data.path())
            .args(["status", "--json"])
            .env_remove("SOUK_CONFIG")
            .env("SOUK_NATS_URL", stack.nats.url())
            .env("DATABASE_URL", &stack.db.url)
            .output()
            .await
            .ok()?;
        Some((out.status.code(), serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()?))
    };
    let (code, json) = eventually(Duration::from_secs(30), || async {
        let (code, json) = souk_status().await?;
        let breaker = json["pipeline"]["consumers"][0]["breaker"].as_str()?.to_owned();
        (breaker == "open" || breaker == "half-open").then_some((code, json))
    })
    .await?;
    let consumer = &json["pipeline"]["consumers"][0];
    assert_eq!(consumer["name"], "orders-place", "{json}");
    assert!(consumer["pending"].is_u64() && consumer["ack_pending"].is_u64(), "{json}");
    assert!(
        json["pipeline"]["pools"]
            .as_array()
            .and_then(|pools| pools.iter().find(|p| p["name"] == "orders"))
            .and_then(|orders| orders["last_error"].as_str())
            .is_some_and(|e| e.starts_with("pg_")),
        "{json}"
    );
    assert_eq!(code, Some(1), "Postgres is down: the status is incomplete");
    step("souk status shows the breaker open");
    tokio::time::sleep(OUTAGE).await; // the outage itself, not synchronisation
    pg_server.restart().await?;
    step("postgres restarted");

    // Load goes on after the restart, then stops.
    let resumed = accepted.lock().expect("lock").len();
    eventually(Duration::from_secs(60), || async {
        (accepted.lock().ok()?.len() >= resumed + 50).then_some(())
    })
    .await?;
    stop.cancel();
    for c in clients {
        c.await?;
    }
    let accepted = accepted.lock().expect("lock").clone();
    step(&format!("load stopped: {} accepted", accepted.len()));

    // Quiescent: nothing pending or unacknowledged, so every command was settled
    // (nothing more arrives: every 202 was stored in CMD before it was answered).
    eventually(Duration::from_secs(180), || souk_testkit::drained(&stack.js, "CMD", "orders-place")).await?;
    // And every saga ended (the worker runs every pool): nothing left in any consumer.
    eventually(Duration::from_secs(180), || async {
        (stack.count("select 1 from orders where status = 'accepted'").await.ok()? == 0).then_some(())
    })
    .await?;
    stack.quiescent(Duration::from_secs(60)).await?;
    step("quiescent");
    // Read the DLQ's state from the server (an error fails the test): never a message.
    let dlq = stack.js.get_stream("DLQ").await?.get_info().await?.state;
    assert_eq!((dlq.messages, dlq.last_sequence), (0, 0), "nothing dead-lettered ({backlog} in the backlog)");
    let stored: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("select order_id, status from orders").fetch_all(&stack.db.pool).await?;
    // Handled, and each order's saga confirmed it.
    let open: Vec<&(uuid::Uuid, String)> = stored.iter().filter(|(_, s)| s != "confirmed").take(3).collect();
    assert!(open.is_empty(), "every order handled and confirmed: {open:?}");
    let stored: HashSet<String> = stored.into_iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(stored, accepted, "every 202 stored once, nothing else");

    worker.cancel();
    worker_task.await?;
    stack.stop_node().await;
    Ok(())
}
