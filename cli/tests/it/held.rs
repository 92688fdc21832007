//! Deliveries held behind an open breaker (Postgres down) meet a second failure:
//! nats-server killed and restarted under them, or the worker stopped and started.
//! On the shipped topology, once both are back every accepted order is stored once and
//! its saga confirms it, with exactly one `OrderAccepted` event, and nothing is dead-lettered.

use souk_ingress::Role;
use souk_stores::postgres::{self as pg, PgOptions};
use souk_testkit::{PgServer, Stack, eventually, order_body};
use souk_topologies::{
    Topology,
    publisher::Publisher,
    runtime::{BreakerState, Runtime},
    status,
};
use std::{collections::HashSet, time::Duration};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const BACKLOG: usize = 100;

/// A stack on a private Postgres with the shipped topology, no pools in its node, and
/// `BACKLOG` accepted orders waiting in CMD.
async fn backlog() -> anyhow::Result<(PgServer, Stack, Publisher, Topology, HashSet<String>)> {
    let pg_server = PgServer::start().await?;
    let (stack, topology, publisher) = crate::support::shipped_stack(&pg_server).await?;
    stack.seed_skus(&["SKU-3"]).await?;
    let token = stack.token("hana", &[Role::Buyer]);
    let mut accepted = HashSet::new();
    for i in 0..BACKLOG {
        let (status, body) = stack.place(&token, &format!("k{i}"), &order_body("SKU-3", 1)).await?;
        assert_eq!(status, 202, "{body}");
        accepted.insert(body["order_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(accepted.len(), BACKLOG);
    Ok((pg_server, stack, publisher, topology, accepted))
}

/// The whole backlog is delivered `times` times in all, and held (Postgres is down:
/// the breaker is open).
async fn all_held(stack: &Stack, times: usize) -> anyhow::Result<()> {
    let seen = std::sync::Mutex::new(String::new());
    let held = eventually(Duration::from_secs(60), || async {
        let info = stack.js.get_stream("CMD").await.ok()?.consumer_info("orders-place").await.ok()?;
        *seen.lock().ok()? = format!(
            "ack pending {}, pending {}, delivered {}, DLQ {:?}",
            info.num_ack_pending,
            info.num_pending,
            info.delivered.consumer_sequence,
            stack.stream_messages("DLQ").await.ok()
        );
        (info.num_ack_pending == BACKLOG
            && info.num_pending == 0
            && info.delivered.consumer_sequence == (BACKLOG * times) as u64)
            .then_some(())
    })
    .await;
    held.map_err(|e| anyhow::anyhow!("{e}: not all held {times} times: {}", seen.lock().expect("lock")))
}

/// Quiescent, then exact: every accepted order stored once, its saga run to the end
/// (`confirmed`: the worker runs every pool), one `OrderAccepted` and one
/// `OrderConfirmed` event each, nothing dead-lettered, nothing left to publish.
async fn exactly_once(stack: &Stack, accepted: &HashSet<String>) -> anyhow::Result<()> {
    eventually(Duration::from_secs(120), || async {
        let info = stack.js.get_stream("CMD").await.ok()?.consumer_info("orders-place").await.ok()?;
        let unpublished = stack.count("select 1 from outbox where published_at is null").await.ok()?;
        let open = stack.count("select 1 from orders where status = 'accepted'").await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0 && unpublished == 0 && open == 0).then_some(())
    })
    .await?;
    stack.quiescent(Duration::from_secs(60)).await?;
    let stored: Vec<(uuid::Uuid, String)> =
        sqlx::query_as("select order_id, status from orders").fetch_all(&stack.db.pool).await?;
    let reasons: Vec<(String, Option<String>)> =
        sqlx::query_as("select status, reason from orders where status <> 'confirmed' limit 3")
            .fetch_all(&stack.db.pool)
            .await?;
    assert!(reasons.is_empty(), "every order handled and its saga confirmed: {reasons:?}");
    let ids: HashSet<String> = stored.iter().map(|(id, _)| id.to_string()).collect();
    assert_eq!(stored.len(), ids.len());
    assert_eq!(&ids, accepted, "every 202 stored once, nothing else");
    let dlq = stack.js.get_stream("DLQ").await?.get_info().await?.state;
    assert_eq!((dlq.messages, dlq.last_sequence), (0, 0), "nothing dead-lettered");
    // One OrderAccepted and one OrderConfirmed per order in EVT (read back, not just counted).
    let events = crate::events::all(stack).await?;
    for subject in [souk_pipelines::subjects::ORDERS_ACCEPTED, souk_pipelines::subjects::ORDERS_CONFIRMED] {
        let of: Vec<String> = events
            .iter()
            .filter(|e| e.subject == subject)
            .map(|e| e.body["order_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        let distinct: HashSet<String> = of.iter().cloned().collect();
        assert_eq!(of.len(), accepted.len(), "one {subject} per order: {} events", of.len());
        assert_eq!(&distinct, accepted);
    }
    Ok(())
}

/// nats-server is killed (SIGKILL) while the whole backlog is held behind the open
/// breaker, stays down longer than the ack wait (30 s), and restarts on its store; then
/// Postgres comes back.
#[tokio::test]
async fn held_deliveries_survive_a_nats_server_kill_during_a_postgres_outage() -> anyhow::Result<()> {
    let (mut pg_server, mut stack, publisher, topology, accepted) = backlog().await?;
    pg_server.crash().await?;
    let (worker, worker_task) = crate::support::start_worker(
        &publisher,
        &topology,
        &stack.db.url,
        None,
        Some(stack.payments.clone()),
    )?;
    all_held(&stack, 1).await?;
    stack.nats.kill().await?;
    // The outage itself, longer than the ack wait: not synchronisation.
    tokio::time::sleep(Duration::from_secs(35)).await;
    stack.nats.restart().await?;
    // Back: the consumer still has the backlog out (held, or due for redelivery).
    eventually(Duration::from_secs(30), || async {
        let info = stack.js.get_stream("CMD").await.ok()?.consumer_info("orders-place").await.ok()?;
        (info.num_ack_pending + info.num_pending as usize >= BACKLOG).then_some(())
    })
    .await?;
    pg_server.restart().await?;
    exactly_once(&stack, &accepted).await?;
    worker.cancel();
    worker_task.await?;
    stack.stop_node().await;
    Ok(())
}

/// nats-server is killed while the whole backlog is held behind the open breaker, and
/// Postgres comes back while it is down: the held deliveries are stored (their acks
/// cannot reach the server), then nats-server restarts on its store and redelivers what
/// it never saw acknowledged.
#[tokio::test]
async fn held_deliveries_stored_while_nats_server_is_down_are_stored_once() -> anyhow::Result<()> {
    let (mut pg_server, mut stack, publisher, topology, accepted) = backlog().await?;
    pg_server.crash().await?;
    let (worker, worker_task) = crate::support::start_worker(
        &publisher,
        &topology,
        &stack.db.url,
        None,
        Some(stack.payments.clone()),
    )?;
    all_held(&stack, 1).await?;
    stack.nats.kill().await?;
    pg_server.restart().await?;
    eventually(Duration::from_secs(60), || async {
        (stack.count("select 1 from orders").await.ok()? == BACKLOG as i64).then_some(())
    })
    .await?;
    stack.nats.restart().await?;
    exactly_once(&stack, &accepted).await?;
    worker.cancel();
    worker_task.await?;
    stack.stop_node().await;
    Ok(())
}

/// The worker is stopped (as on SIGTERM: it hands its held deliveries back) while the
/// whole backlog is held behind the open breaker, and started again — as many times as
/// the consumer's max-deliver (a rolling deploy, a restarting node): each hand-back is a
/// delivery, none is an attempt. Then Postgres comes back.
#[tokio::test]
async fn held_deliveries_survive_worker_restarts_during_a_postgres_outage() -> anyhow::Result<()> {
    let (mut pg_server, mut stack, publisher, topology, accepted) = backlog().await?;
    pg_server.crash().await?;
    let max_deliver = topology.consumer("orders-place").map_or(0, |c| c.max_deliver);
    let (mut worker, mut worker_task) = crate::support::start_worker(
        &publisher,
        &topology,
        &stack.db.url,
        None,
        Some(stack.payments.clone()),
    )?;
    for restarts in 0..max_deliver as usize {
        all_held(&stack, restarts + 1).await?;
        worker.cancel();
        worker_task.await?;
        (worker, worker_task) = crate::support::start_worker(
            &publisher,
            &topology,
            &stack.db.url,
            None,
            Some(stack.payments.clone()),
        )?;
    }
    // Held again, not dead-lettered, while Postgres is still down: delivered, and the
    // orders pool's breaker open (the deliveries' checks of Postgres failed).
    all_held(&stack, max_deliver as usize + 1).await?;
    eventually(Duration::from_secs(30), || async {
        let pools = status::read_pools(&stack.client).await.ok()?;
        pools.iter().any(|p| p.name == "orders" && p.breaker == BreakerState::Open).then_some(())
    })
    .await?;
    assert_eq!(stack.stream_messages("DLQ").await?, 0, "nothing dead-lettered during the outage");
    pg_server.restart().await?;
    exactly_once(&stack, &accepted).await?;
    worker.cancel();
    worker_task.await?;
    stack.stop_node().await;
    Ok(())
}

/// A dead letter reaches the pool that marks its order failed while Postgres is down:
/// the pool holds it behind its breaker (it does not dead-letter the dead letter), and
/// marks the order failed once Postgres is back.
#[tokio::test]
async fn the_dead_lettered_order_pool_holds_its_dead_letters_through_a_postgres_outage() -> anyhow::Result<()>
{
    let mut pg_server = PgServer::start().await?;
    let (mut stack, topology, publisher) = crate::support::shipped_stack(&pg_server).await?;
    // A rule the store enforces refuses one product: its command is dead-lettered at once.
    crate::support::refuse_banned_product(&stack.db.pool).await?;
    stack.seed_skus(&["BANNED"]).await?;
    let token = stack.token("ines", &[Role::Buyer]);
    let (status, placed) = stack.place(&token, "banned", &order_body("BANNED", 1)).await?;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();

    // Only the orders pool: the command is dead-lettered, nobody marks the order yet.
    let only = |name: &str| -> anyhow::Result<(CancellationToken, JoinHandle<()>)> {
        let registry = souk_workers::registry(pg::connect(&PgOptions::new(&stack.db.url))?);
        let (publisher, topology, only) = (publisher.clone(), topology.clone(), vec![name.to_owned()]);
        let cancel = CancellationToken::new();
        let run = cancel.clone();
        Ok((
            cancel,
            tokio::spawn(async move {
                let runtime = Runtime::build(&publisher, &topology, &registry, &only).await.expect("runtime");
                runtime.run(run).await;
            }),
        ))
    };
    let (orders, orders_task) = only("orders")?;
    eventually(Duration::from_secs(30), || async {
        (stack.stream_messages("DLQ").await.ok()? == 1).then_some(())
    })
    .await?;
    orders.cancel();
    orders_task.await?;

    pg_server.crash().await?;
    let (marker, marker_task) = only("orders-dead-lettered")?;
    let consumer =
        || async { stack.js.get_stream("DLQ").await.ok()?.consumer_info("orders-dead-lettered").await.ok() };
    eventually(Duration::from_secs(30), || async {
        let pools = status::read_pools(&stack.client).await.ok()?;
        let open =
            pools.iter().any(|p| p.name == "orders-dead-lettered" && p.breaker != BreakerState::Closed);
        (open && consumer().await?.num_ack_pending == 1).then_some(())
    })
    .await?;
    // The outage outlasts the ack wait (30 s) and the first backoff steps.
    tokio::time::sleep(Duration::from_secs(40)).await; // the outage itself, not synchronisation
    assert_eq!(stack.stream_messages("DLQ").await?, 1, "the dead letter was not dead-lettered");
    pg_server.restart().await?;

    eventually(Duration::from_secs(60), || async {
        let info = consumer().await?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("select status, reason from orders where order_id = $1::uuid")
            .bind(&order_id)
            .fetch_one(&stack.db.pool)
            .await?;
    assert_eq!(status, "failed");
    assert!(reason.is_some_and(|r| r.contains("BANNED is not sold here")));
    let dlq = stack.js.get_stream("DLQ").await?.get_info().await?.state;
    assert_eq!((dlq.messages, dlq.last_sequence), (1, 1), "one dead letter, none of it");
    marker.cancel();
    marker_task.await?;
    stack.stop_node().await;
    Ok(())
}
