//! Failure is a feature: nats-server dies, Postgres crashes, workers die, and the
//! invariants hold.

use souk_ingress::Role;
use souk_testkit::{PgServer, Stack, StackOptions, eventually, order_body};
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};
use tokio::task::JoinHandle;

use crate::support::place_until_accepted;

type Accepted = Arc<Mutex<HashSet<String>>>;

/// `clients` buyers placing `each` orders, each retrying its current order (same key)
/// until it gets a definite answer: 202, or 503 while a server is down (any other
/// answer fails the test). Accepted order ids are collected in `accepted`.
fn buyers(
    stack: &Stack,
    token: &str,
    clients: usize,
    each: usize,
    accepted: &Accepted,
) -> Vec<JoinHandle<()>> {
    let token = Arc::new(token.to_owned());
    (0..clients)
        .map(|c| {
            let (token, accepted) = (token.clone(), accepted.clone());
            let (base, http) = (stack.base.clone(), stack.http.clone());
            tokio::spawn(async move {
                for i in 0..each {
                    let key = format!("c{c}-o{i}");
                    let deadline = Instant::now() + Duration::from_secs(60);
                    let pause = Duration::from_millis(50);
                    let id = place_until_accepted(&http, &base, &token, &key, "SKU-9", deadline, pause).await;
                    assert!(accepted.lock().expect("lock").insert(id), "two keys got one order id");
                }
            })
        })
        .collect()
}

/// Once the node has nothing left to do (every command handled and acknowledged, the
/// outbox published: counts read earlier could still grow), every accepted order is in
/// Postgres exactly once, confirmed by its saga, with exactly one OrderAccepted and one
/// OrderConfirmed event, and nothing was dead-lettered.
async fn every_accepted_order_exactly_once(stack: &Stack, accepted: &HashSet<String>) -> anyhow::Result<()> {
    // A thousand sagas (four commands and four replies each, eleven outbox rows an
    // order) still run after the last 202: wait for every order to end its saga and the
    // outbox to drain, then for quiescence (whose reads of every stream and consumer are
    // slow while that much traffic flows). Measured on the loaded 2-core machine (debug
    // build): 81 s for 1,000 orders without a crash, 92 s through the nats-server kill,
    // 39 s for 600 through the Postgres crash — the outbox relay is the tail.
    let started = Instant::now();
    let reported = std::cell::Cell::new(Instant::now());
    let ended = eventually(Duration::from_secs(240), || async {
        // A timeline of where the sagas are, shown when the test fails (nextest prints
        // a failing test's output): stuck and slow look different in it.
        if reported.get().elapsed() >= Duration::from_secs(30) {
            reported.set(Instant::now());
            eprintln!("sagas after {:?}:\n{}", started.elapsed(), saga_report(stack).await);
        }
        let open = stack.count("select 1 from orders where status in ('accepted')").await.ok()?;
        let stored = stack.count("select 1 from orders").await.ok()?;
        let unpublished = stack.count("select 1 from outbox where published_at is null").await.ok()?;
        (stored >= accepted.len() as i64 && open == 0 && unpublished == 0).then_some(())
    })
    .await;
    if ended.is_err() {
        eprintln!("sagas after {:?}, given up:\n{}", started.elapsed(), saga_report(stack).await);
    }
    ended?;
    eprintln!("every saga ended {:?} after the last client finished", started.elapsed());
    stack.quiescent(Duration::from_secs(60)).await?;
    let n = accepted.len() as i64;
    let stored: Vec<uuid::Uuid> =
        sqlx::query_scalar("select order_id from orders").fetch_all(&stack.db.pool).await?;
    assert_eq!(stored.len() as i64, n, "one row per accepted order");
    let stored: HashSet<String> = stored.into_iter().map(|u| u.to_string()).collect();
    assert_eq!(&stored, accepted);
    assert_eq!(stack.count("select 1 from outbox where published_at is null").await?, 0);
    // The node runs every pool: each order's saga confirms it, and each order has one
    // OrderAccepted and one OrderConfirmed event.
    let open = "select status, reason from orders where status <> 'confirmed' limit 3";
    let open: Vec<(String, Option<String>)> = sqlx::query_as(open).fetch_all(&stack.db.pool).await?;
    assert!(open.is_empty(), "every order confirmed: {open:?}");
    let events = crate::events::all(stack).await?;
    for subject in [souk_pipelines::subjects::ORDERS_ACCEPTED, souk_pipelines::subjects::ORDERS_CONFIRMED] {
        let of: Vec<String> = events
            .iter()
            .filter(|e| e.subject == subject)
            .map(|e| e.body["order_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(of.len() as i64, n, "one {subject} per order");
        assert_eq!(&of.into_iter().collect::<HashSet<_>>(), accepted);
    }
    assert_eq!(stack.stream_messages("DLQ").await?, 0, "nothing dead-lettered");
    Ok(())
}

/// What the pipeline holds while sagas run (or once they failed to end): sagas by
/// state and attempt with their deadlines against now, the steps still open, every
/// consumer's pending / ack-pending / redelivered / waiting pulls, the outbox backlog,
/// dead letters. Each part that cannot be read says so instead.
async fn saga_report(stack: &Stack) -> String {
    use futures::TryStreamExt;
    use std::fmt::Write;
    let mut out = String::new();
    let by_state = "select s.state, s.attempt, count(*)::bigint,
                            extract(epoch from min(s.deadline) - now())::float8,
                            extract(epoch from max(s.deadline) - now())::float8
                     from sagas s group by 1, 2 order by 1, 2";
    match sqlx::query_as::<_, (String, i32, i64, Option<f64>, Option<f64>)>(by_state)
        .fetch_all(&stack.db.pool)
        .await
    {
        Ok(rows) => {
            for (state, attempt, n, min, max) in rows {
                let _ =
                    writeln!(out, "  saga {state} attempt {attempt}: {n} (deadline in {min:?}..{max:?} s)");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  sagas: {e}");
        }
    }
    let open = "select st.step, st.attempt, count(*)::bigint,
                       extract(epoch from now() - min(st.started_at))::float8
                from saga_steps st join sagas s using (order_id)
                where st.finished_at is null and s.state not in ('fulfilling', 'shipped', 'cancelled')
                group by 1, 2 order by 1, 2";
    match sqlx::query_as::<_, (String, i32, i64, Option<f64>)>(open).fetch_all(&stack.db.pool).await {
        Ok(rows) => {
            for (step, attempt, n, oldest) in rows {
                let _ = writeln!(out, "  open step {step} attempt {attempt}: {n} (oldest {oldest:?} s)");
            }
        }
        Err(e) => {
            let _ = writeln!(out, "  steps: {e}");
        }
    }
    let outbox = "select count(*) filter (where published_at is null and parked_at is null)::bigint,
                         count(*) filter (where parked_at is not null)::bigint,
                         extract(epoch from now() - min(created_at) filter (where published_at is null))::float8
                  from outbox";
    match sqlx::query_as::<_, (i64, i64, Option<f64>)>(outbox).fetch_one(&stack.db.pool).await {
        Ok((unpublished, parked, oldest)) => {
            let _ =
                writeln!(out, "  outbox: {unpublished} unpublished (oldest {oldest:?} s), {parked} parked");
        }
        Err(e) => {
            let _ = writeln!(out, "  outbox: {e}");
        }
    }
    let stock = "select on_hand, held, sold from stock where sku = 'SKU-9'";
    match sqlx::query_as::<_, (i64, i64, i64)>(stock).fetch_optional(&stack.db.pool).await {
        Ok(s) => {
            let _ = writeln!(out, "  stock SKU-9 (on hand, held, sold): {s:?}");
        }
        Err(e) => {
            let _ = writeln!(out, "  stock: {e}");
        }
    }
    for name in ["CMD", "EVT", "DLQ"] {
        let stream = match stack.js.get_stream(name).await {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(out, "  stream {name}: {e}");
                continue;
            }
        };
        let _ = writeln!(out, "  stream {name}: {} messages", stream.cached_info().state.messages);
        let infos: Result<Vec<async_nats::jetstream::consumer::Info>, _> =
            stream.consumers().try_collect().await;
        match infos {
            Ok(mut infos) => {
                infos.sort_by(|a, b| a.name.cmp(&b.name));
                for c in infos {
                    let _ = writeln!(
                        out,
                        "    {}: pending {} ack-pending {} redelivered {} waiting {} delivered {} floor {}",
                        c.name,
                        c.num_pending,
                        c.num_ack_pending,
                        c.num_redelivered,
                        c.num_waiting,
                        c.delivered.stream_sequence,
                        c.ack_floor.stream_sequence
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "    consumers: {e}");
            }
        }
    }
    out
}

#[tokio::test]
async fn orders_that_got_202_survive_a_nats_server_kill_and_restart() -> anyhow::Result<()> {
    // One buyer sending as fast as 20 clients can: not what the rate limit is for here.
    let mut stack = Stack::start_with(StackOptions { rate_limit: None, ..Default::default() }).await?;
    stack.seed_skus(&["SKU-9"]).await?;
    let token = stack.token("dora", &[Role::Buyer]);
    let accepted = Accepted::default();
    // 1,000 orders from 20 clients while the server is killed and restarted underneath.
    let clients = buyers(&stack, &token, 20, 50, &accepted);

    // Kill the server (SIGKILL, no flush) once some orders are in, then bring it back.
    eventually(Duration::from_secs(30), || async {
        (accepted.lock().expect("lock").len() >= 200).then_some(())
    })
    .await?;
    stack.nats.kill().await?;
    let during_outage = accepted.lock().expect("lock").len();
    stack.nats.restart().await?;
    for c in clients {
        c.await?;
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 1000, "every client order eventually accepted once");
    assert!(during_outage < 1000, "the kill happened mid-stream");
    every_accepted_order_exactly_once(&stack, &accepted).await?;
    stack.stop_node().await;
    Ok(())
}

/// Postgres crashes (immediate shutdown: connections cut, no checkpoint) and comes back
/// through crash recovery while orders stream in: the ingress answers 503 meanwhile,
/// handlers retry instead of dead-lettering, the relay retakes its lease and LISTEN.
#[tokio::test]
async fn orders_that_got_202_survive_a_postgres_crash_and_restart() -> anyhow::Result<()> {
    let mut pg = PgServer::start().await?;
    let mut stack =
        Stack::start_with(StackOptions { rate_limit: None, postgres: Some(pg.url()), ..Default::default() })
            .await?;
    // Production's retry schedule spans minutes; the test topology's spans under a
    // second, shorter than a restart with recovery. Give it room, as production has.
    stack.stop_node().await;
    for c in &mut stack.topology.consumers {
        c.max_deliver = 50;
        c.backoff = vec![Duration::from_millis(100), Duration::from_millis(200)];
    }
    stack.start_node().await?;
    stack.seed_skus(&["SKU-9"]).await?;
    let token = stack.token("pia", &[Role::Buyer]);
    let accepted = Accepted::default();
    let clients = buyers(&stack, &token, 20, 30, &accepted);

    eventually(Duration::from_secs(30), || async {
        (accepted.lock().expect("lock").len() >= 150).then_some(())
    })
    .await?;
    pg.crash().await?;
    let during_outage = accepted.lock().expect("lock").len();
    pg.restart().await?;
    for c in clients {
        c.await?;
    }
    let accepted = accepted.lock().expect("lock").clone();
    assert_eq!(accepted.len(), 600, "every client order eventually accepted once");
    assert!(during_outage < 600, "the crash happened mid-stream");
    every_accepted_order_exactly_once(&stack, &accepted).await?;
    stack.stop_node().await;
    Ok(())
}

#[tokio::test]
async fn with_jetstream_unreachable_orders_get_503_within_two_seconds() -> anyhow::Result<()> {
    let mut stack =
        Stack::start_with(StackOptions { pools: false, relay: false, ..Default::default() }).await?;
    stack.seed_skus(&["A"]).await?;
    let token = stack.token("erin", &[Role::Buyer]);
    stack.nats.kill().await?;
    let started = Instant::now();
    let (status, problem) = stack.place(&token, "k-down", &order_body("A", 1)).await?;
    let took = started.elapsed();
    assert_eq!(status, 503, "{problem}");
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let r = stack
        .http
        .post(format!("{}/v1/orders", stack.base))
        .bearer_auth(&token)
        .header("idempotency-key", "k-down-2")
        .json(&order_body("A", 1))
        .send()
        .await?;
    assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
    let ready = stack.http.get(format!("{}/readyz", stack.base)).send().await?;
    assert_eq!(ready.status().as_u16(), 503);

    // Back up: the same key now succeeds, and it is still one order.
    stack.nats.restart().await?;
    let (status, _) = eventually(Duration::from_secs(20), || async {
        let r = stack.place(&token, "k-down", &order_body("A", 1)).await?;
        anyhow::Ok((r.0 == 202).then_some(r))
    })
    .await?;
    assert_eq!(status, 202);
    Ok(())
}
