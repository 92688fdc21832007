//! The pipeline status model against a real nats-server: exact counts for a known
//! load, worker processes seen through their heartbeats (a stopped one leaves at once,
//! a dead one ages out), and the history kept across keepers, bounded.

use futures::{FutureExt, future::BoxFuture};
use souk_topologies::{
    runtime::{BreakerState, Delivery, Handler, Outcome, Registry, Runtime, SinkStats},
    status::{self, HistoryOptions, heartbeat, history, model::Model},
};
use std::{sync::Arc, time::Duration};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Env, env, msg};

const SUBJECT: &str = "souk.cmd.test.work";
const BEAT: Duration = Duration::from_millis(100);

/// `ok` acks, `fail` is poison (dead-lettered at once), `block` waits for the gate.
#[derive(Clone)]
struct Scripted {
    gate: Arc<Semaphore>,
}

impl Handler for Scripted {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            match &d.payload[..] {
                b"fail" => Outcome::fail("unparseable", "unparseable test message"),
                b"block" => {
                    let _permit = self.gate.acquire().await.expect("gate open");
                    Outcome::Ack
                }
                _ => Outcome::Ack,
            }
        }
        .boxed()
    }
}

fn registry(gate: &Arc<Semaphore>) -> Registry {
    let mut registry = Registry::default();
    registry.register("test", Scripted { gate: gate.clone() });
    registry
}

async fn publish(env: &Env, body: &str, n: usize) -> anyhow::Result<()> {
    for _ in 0..n {
        env.publisher.publish(msg(SUBJECT, &uuid::Uuid::new_v4().to_string(), body)).await?;
    }
    Ok(())
}

async fn model(env: &Env) -> anyhow::Result<Model> {
    Ok(status::model::read(&env.js, &env.topology, None, true).await?)
}

/// Publish 10 `ok`, 3 `fail`, then 6 `block` to a pool of concurrency 4: the model
/// says exactly 10 acked, 3 dead letters, 4 in flight (ack pending) and 2 pending —
/// then, once the gate opens, 16 acked and nothing behind.
#[tokio::test]
async fn the_model_reports_exactly_the_pending_acked_and_dead_lettered_counts_of_a_known_load()
-> anyhow::Result<()> {
    let env = env().await?; // work-queue CMD, consumer `work`, pool concurrency 4
    let gate = Arc::new(Semaphore::new(0));
    let runtime =
        Runtime::build(&env.publisher, &env.topology, &registry(&gate), &[]).await?.heartbeat_every(BEAT);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(runtime.run(cancel.clone()));
    publish(&env, "ok", 10).await?;
    publish(&env, "fail", 3).await?;
    souk_testkit::eventually(Duration::from_secs(20), || async {
        let m = model(&env).await?;
        let pool = &m.pools[0];
        anyhow::Ok((pool.totals.handled == 13 && m.consumers[0].lag == 0).then_some(()))
    })
    .await?;
    publish(&env, "block", 6).await?;
    let m = souk_testkit::eventually(Duration::from_secs(20), || async {
        let m = model(&env).await?;
        anyhow::Ok((m.pools[0].in_flight == 4 && m.consumers[0].pending == 2).then_some(m))
    })
    .await?;
    let (consumer, pool) = (&m.consumers[0], &m.pools[0]);
    assert_eq!((consumer.name.as_str(), consumer.stream.as_str()), ("work", "CMD"));
    assert_eq!(consumer.pending, 2, "{m:#?}");
    assert_eq!(consumer.ack_pending, 4, "{m:#?}");
    assert_eq!(consumer.lag, 6);
    assert_eq!(consumer.dead_letters, 3, "{m:#?}");
    assert_eq!(consumer.breaker, Some(BreakerState::Closed));
    assert!(consumer.oldest_unhandled_secs >= 0.0 && consumer.last_active_secs.is_some());
    assert_eq!(pool.name, "work");
    assert_eq!(pool.live_processes, 1);
    assert_eq!(pool.in_flight, 4);
    assert_eq!((pool.totals.handled, pool.totals.acked), (13, 10), "{pool:#?}");
    assert_eq!((pool.totals.errors, pool.totals.dead_lettered), (3, 3), "{pool:#?}");
    let minute = pool.rates.iter().find(|r| r.window_secs == 60).expect("1 minute rate");
    assert_eq!(minute.error_ratio, Some(3.0 / 13.0));
    assert!(minute.per_sec > 0.0);
    assert!(pool.p50_ms.is_some() && pool.p99_ms >= pool.p50_ms, "{pool:#?}");
    let cmd = m.streams.iter().find(|s| s.name == "CMD").expect("CMD");
    assert_eq!(cmd.messages, 6, "handled and dead-lettered commands leave the work queue");
    let dlq = m.streams.iter().find(|s| s.name == "DLQ").expect("DLQ");
    assert_eq!(dlq.messages, 3);
    assert!(m.problems.is_empty(), "{:?}", m.problems);
    assert!(m.sinks.is_empty(), "the pool writes no sink: {:?}", m.sinks);

    gate.add_permits(6);
    let m = souk_testkit::eventually(Duration::from_secs(20), || async {
        let m = model(&env).await?;
        anyhow::Ok((m.consumers[0].lag == 0 && m.pools[0].in_flight == 0).then_some(m))
    })
    .await?;
    assert_eq!(m.pools[0].totals.acked, 16, "{m:#?}");
    assert_eq!(m.consumers[0].dead_letters, 3);
    cancel.cancel();
    run.await?;
    Ok(())
}

/// Writes a sink: `w<n>` is a write of n items, `err` a write the sink refused (the
/// message itself is acked either way: only the sink's counts are under test).
struct Writing {
    sink: Arc<SinkStats>,
}

impl Handler for Writing {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = std::str::from_utf8(&d.payload).unwrap_or_default();
            match body.strip_prefix('w').and_then(|n| n.parse::<usize>().ok()) {
                Some(n) => self.sink.wrote(n, Duration::from_millis(2)),
                None => self.sink.failed(&format!("index refused {body}"), Duration::from_millis(40)),
            }
            Outcome::Ack
        }
        .boxed()
    }

    fn sinks(&self) -> Vec<Arc<SinkStats>> {
        vec![self.sink.clone()]
    }
}

/// Two processes write the same sink: the model sums their write calls, items and
/// failures exactly, keeps the newest error, and counts both as live writers.
#[tokio::test]
async fn sink_writes_and_failures_of_every_live_process_are_summed_exactly() -> anyhow::Result<()> {
    let env = env().await?;
    let cancel = CancellationToken::new();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut registry = Registry::default();
        registry.register("test", Writing { sink: Arc::new(SinkStats::new("index", "test-store")) });
        let runtime =
            Runtime::build(&env.publisher, &env.topology, &registry, &[]).await?.heartbeat_every(BEAT);
        runs.push(tokio::spawn(runtime.run(cancel.clone())));
    }
    publish(&env, "w3", 5).await?;
    publish(&env, "w10", 2).await?;
    publish(&env, "err", 2).await?;
    let m = souk_testkit::eventually(Duration::from_secs(20), || async {
        let m = model(&env).await?;
        let writes = m.sinks.first().map_or(0, |s| s.totals.writes);
        anyhow::Ok((m.pools[0].totals.handled == 9 && writes == 9).then_some(m))
    })
    .await?;
    assert_eq!(m.sinks.len(), 1, "{:?}", m.sinks);
    let sink = &m.sinks[0];
    assert_eq!((sink.name.as_str(), sink.backend.as_str()), ("index", "test-store"));
    assert_eq!(sink.live_processes, 2, "{sink:#?}");
    assert_eq!((sink.totals.writes, sink.totals.items, sink.totals.errors), (9, 35, 2), "{sink:#?}");
    let minute = sink.rates.iter().find(|r| r.window_secs == 60).expect("1 minute rate");
    assert_eq!((minute.writes, minute.errors), (9, 2));
    assert_eq!(minute.error_ratio, Some(2.0 / 9.0));
    assert!(minute.items_per_sec > 0.0 && minute.writes_per_sec > 0.0, "{minute:?}");
    assert_eq!(sink.last_error.as_ref().map(|e| e.error.as_str()), Some("index refused err"));
    assert!(sink.p50_ms.is_some() && sink.p99_ms > sink.p50_ms, "{sink:#?}");
    cancel.cancel();
    for run in runs {
        run.await?;
    }
    // Stopped writers leave the model with their heartbeats.
    assert!(model(&env).await?.sinks.is_empty());
    Ok(())
}

/// A worker "process": its own tokio runtime and NATS connection, running the pools.
struct Process {
    rt: tokio::runtime::Runtime,
    cancel: CancellationToken,
    done: tokio::sync::oneshot::Receiver<()>,
}

async fn start_process(env: &Env, gate: &Arc<Semaphore>) -> anyhow::Result<Process> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let cancel = CancellationToken::new();
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    let (url, topology, registry, stop) =
        (env.nats.url(), env.topology.clone(), registry(gate), cancel.clone());
    rt.spawn(async move {
        let run = async {
            let client = async_nats::connect(url).await?;
            let publisher = souk_topologies::publisher::Publisher::new(client, Duration::from_secs(2));
            anyhow::Ok(Runtime::build(&publisher, &topology, &registry, &[]).await?.heartbeat_every(BEAT))
        };
        match run.await {
            Ok(runtime) => {
                let _ = started_tx.send(Ok(()));
                runtime.run(stop).await;
                let _ = done_tx.send(());
            }
            Err(e) => _ = started_tx.send(Err(e)),
        }
    });
    started.await??;
    Ok(Process { rt, cancel, done })
}

#[tokio::test]
async fn two_worker_processes_both_appear_and_a_stopped_or_dead_one_leaves() -> anyhow::Result<()> {
    let env = env().await?;
    let gate = Arc::new(Semaphore::new(0));
    let (a, b) = (start_process(&env, &gate).await?, start_process(&env, &gate).await?);
    // One model with both live (liveness is judged against 3 beats of 100 ms: a single
    // read of a loaded machine may find one late, so the same read is asserted on).
    let m = souk_testkit::eventually(Duration::from_secs(10), || async {
        let m = model(&env).await?;
        anyhow::Ok((m.pools[0].live_processes == 2).then_some(m))
    })
    .await?;
    let both: Vec<String> = m.pools[0].processes.iter().map(|p| p.process.clone()).collect();
    assert_ne!(both[0], both[1]);
    assert!(m.pools[0].processes.iter().all(|p| p.pid == std::process::id() && !p.host.is_empty()));

    // A stopped process deletes its heartbeat: gone at once, not after it ages (read
    // from the bucket, live or not, so a late beat of the other cannot blur it).
    a.cancel.cancel();
    a.done.await?;
    let stored = || async {
        anyhow::Ok(
            heartbeat::read_all(&env.js).await?.into_iter().map(|s| s.beat.process).collect::<Vec<_>>(),
        )
    };
    let after_stop = stored().await?;
    assert_eq!(after_stop.len(), 1, "{after_stop:?}");
    assert!(both.contains(&after_stop[0]));
    a.rt.shutdown_background();

    // A dead process (its runtime and connection dropped, nothing run on the way out)
    // leaves its last heartbeat behind, which stops counting as live.
    let Process { rt, cancel: _b_cancel, done: _b_done } = b;
    rt.shutdown_background();
    assert_eq!(stored().await?, after_stop, "the dead process's heartbeat is still stored");
    souk_testkit::eventually(Duration::from_secs(10), || async {
        let m = model(&env).await?;
        anyhow::Ok((m.pools[0].live_processes == 0 && m.pools[0].breaker.is_none()).then_some(()))
    })
    .await?;
    assert_eq!(model(&env).await?.consumers[0].breaker, None, "no live worker reads it");
    Ok(())
}

fn keeper(env: &Env, options: HistoryOptions) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let cancel = CancellationToken::new();
    let task =
        tokio::spawn(status::keep(env.js.clone(), env.topology.clone(), None, options, cancel.clone()));
    (cancel, task)
}

fn slots(points: &[history::Point]) -> Vec<u64> {
    points.iter().map(|p| p.slot).collect()
}

async fn points_at_least(env: &Env, n: usize) -> anyhow::Result<Vec<history::Point>> {
    souk_testkit::eventually(Duration::from_secs(20), || async {
        let points = history::read(&env.js).await?;
        anyhow::Ok((points.len() >= n).then_some(points))
    })
    .await
}

/// Two keepers store each slot once; the history outlives a keeper's restart (here:
/// both stopped, a third started); it never holds more than its span.
#[tokio::test]
async fn history_is_kept_once_per_slot_survives_its_keepers_restart_and_stays_bounded() -> anyhow::Result<()>
{
    let env = env().await?;
    let options = HistoryOptions { resolution: Duration::from_millis(200), keep: Duration::from_secs(2) };
    assert_eq!(options.max_points(), 11);
    let (stop_a, a) = keeper(&env, options);
    let (stop_b, b) = keeper(&env, options);
    let before = points_at_least(&env, 4).await?;
    stop_a.cancel();
    a.await?;
    stop_b.cancel();
    b.await?;
    let kept = history::read(&env.js).await?;
    let kept_slots = slots(&kept);
    assert!(kept_slots.windows(2).all(|w| w[0] < w[1]), "each slot once, in order: {kept_slots:?}");
    assert!(kept.len() >= before.len());
    assert!(kept.iter().all(|p| p.consumers.contains_key("work") && p.pools.contains_key("work")));

    // A new keeper (a restarted process) finds the history and adds to it.
    let (stop_c, c) = keeper(&env, options);
    let newer = souk_testkit::eventually(Duration::from_secs(20), || async {
        let points = history::read(&env.js).await?;
        let last = kept_slots.last().copied().unwrap_or(0);
        anyhow::Ok(points.iter().any(|p| p.slot > last).then_some(points))
    })
    .await?;
    assert!(slots(&newer).contains(&kept_slots[kept_slots.len() - 1]), "the old points are still there");
    // Run past the span: full, never more than its points.
    let full = points_at_least(&env, 11).await?;
    let last_seen = full.last().map(|p| p.slot).unwrap_or(0);
    let later = souk_testkit::eventually(Duration::from_secs(20), || async {
        let points = history::read(&env.js).await?;
        anyhow::Ok(points.last().is_some_and(|p| p.slot >= last_seen + 5).then_some(points))
    })
    .await?;
    stop_c.cancel();
    c.await?;
    for points in [&full, &later] {
        assert!(points.len() <= 11, "{} points", points.len());
    }
    assert!(!later.iter().any(|p| p.slot <= kept_slots[0]), "the oldest points were dropped");
    let stored = env.js.get_stream(history::STREAM).await?.get_info().await?.state.messages;
    assert!(stored <= 11, "{stored} stored");
    Ok(())
}
