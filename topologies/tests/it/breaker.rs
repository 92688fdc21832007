//! A pool whose dependency is down: it stops fetching, probes, resumes — and the
//! outage costs no message a delivery attempt, let alone a dead letter.

use futures::{FutureExt, future::BoxFuture};
use souk_topologies::{
    publisher::OutgoingMessage,
    runtime::{BreakerState, Delivery, Handler, HandlerError, Outcome, Registry, Runtime},
    status,
};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use crate::{Env, env};

const SUBJECT: &str = "souk.cmd.test.work";

/// A handler over a dependency the test switches off and on.
#[derive(Clone, Default)]
struct OverStore {
    up: Arc<AtomicBool>,
    probes: Arc<AtomicUsize>,
    /// (body, attempt) of every run.
    runs: Arc<Mutex<Vec<(String, u64)>>>,
    handled: Arc<Mutex<Vec<String>>>,
}

impl Handler for OverStore {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).to_string();
            self.runs.lock().expect("lock").push((body.clone(), d.attempt));
            if !self.up.load(Ordering::SeqCst) {
                return Outcome::unavailable("store_down", "connection refused");
            }
            self.handled.lock().expect("lock").push(body);
            Outcome::Ack
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        async move {
            self.probes.fetch_add(1, Ordering::SeqCst);
            match self.up.load(Ordering::SeqCst) {
                true => Ok(()),
                false => Err(HandlerError::dependency("store_down", "connection refused")),
            }
        }
        .boxed()
    }
}

async fn publish_n(env: &Env, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        env.publisher
            .publish(OutgoingMessage {
                subject: SUBJECT.into(),
                msg_id: format!("m{i}"),
                headers: async_nats::HeaderMap::new(),
                payload: format!("m{i}").into(),
            })
            .await?;
    }
    Ok(())
}

async fn start(
    env: &Env,
    handler: OverStore,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let mut registry = Registry::default();
    registry.register("test", handler);
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &[]).await?;
    let cancel = CancellationToken::new();
    Ok((cancel.clone(), tokio::spawn(runtime.run(cancel))))
}

/// The DLQ's last sequence, read from the server: an error fails the test.
async fn dead_lettered(env: &Env) -> anyhow::Result<u64> {
    Ok(env.js.get_stream("DLQ").await?.get_info().await?.state.last_sequence)
}

async fn consumer(env: &Env) -> anyhow::Result<async_nats::jetstream::consumer::Info> {
    Ok(env.js.get_stream("CMD").await?.consumer_info("work").await?)
}

#[tokio::test]
async fn a_pool_whose_dependency_is_down_stops_fetching_probes_and_resumes_without_dead_letters()
-> anyhow::Result<()> {
    let env = env().await?; // max-deliver 3, backoff 50 ms, ack-wait 1 s, concurrency 4
    let handler = OverStore::default();
    publish_n(&env, 10).await?;
    let (cancel, run) = start(&env, handler.clone()).await?;

    // Down for longer than the retry schedule (3 × 50 ms) and several ack waits.
    souk_testkit::eventually(Duration::from_secs(30), || async {
        (handler.probes.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await?;
    let pools = status::read_pools(&env.client).await?;
    assert_eq!(pools.len(), 1, "{pools:?}");
    assert_ne!(pools[0].breaker, BreakerState::Closed, "{pools:?}");
    assert!(pools[0].last_error.as_deref().is_some_and(|e| e.contains("store_down")), "{pools:?}");
    // Stopped fetching: only what the first pull took (≤ concurrency) was delivered, and
    // each of those ran once — probing does not run messages.
    let info = consumer(&env).await?;
    assert!(info.num_pending >= 6, "still in the stream: {}", info.num_pending);
    let runs = handler.runs.lock().expect("lock").clone();
    assert!(!runs.is_empty() && runs.len() <= 4, "{runs:?}");
    assert!(runs.iter().all(|(_, attempt)| *attempt == 1), "{runs:?}");
    assert_eq!(dead_lettered(&env).await?, 0);

    handler.up.store(true, Ordering::SeqCst);
    souk_testkit::eventually(Duration::from_secs(30), || async {
        (handler.handled.lock().ok()?.len() == 10).then_some(())
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || souk_testkit::drained(&env.js, "CMD", "work"))
        .await?;
    // The heartbeat carrying the closed breaker is put as the breaker closes.
    souk_testkit::eventually(Duration::from_secs(5), || async {
        let pools = status::read_pools(&env.client).await?;
        anyhow::Ok((pools.len() == 1 && pools[0].breaker == BreakerState::Closed).then_some(()))
    })
    .await?;
    cancel.cancel();
    run.await?;

    // The outage cost no message a delivery: every run was a first delivery.
    let runs = handler.runs.lock().expect("lock").clone();
    assert!(runs.iter().all(|(_, attempt)| *attempt == 1), "{runs:?}");
    assert_eq!(dead_lettered(&env).await?, 0, "nothing dead-lettered");
    Ok(())
}

#[tokio::test]
async fn held_messages_are_handed_back_at_shutdown_not_dead_lettered() -> anyhow::Result<()> {
    let env = env().await?; // drain timeout 10 s
    let handler = OverStore::default();
    publish_n(&env, 3).await?;
    let (cancel, run) = start(&env, handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (handler.runs.lock().ok()?.len() == 3).then_some(())
    })
    .await?;
    cancel.cancel();
    // Held messages do not wait out the drain timeout (10 s) for a breaker that will
    // not close: they are handed back at once.
    tokio::time::timeout(Duration::from_secs(5), run).await??;
    assert_eq!(dead_lettered(&env).await?, 0);

    // The next process handles them.
    handler.up.store(true, Ordering::SeqCst);
    let (cancel, run) = start(&env, handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (handler.handled.lock().ok()?.len() == 3).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    assert_eq!(dead_lettered(&env).await?, 0);
    Ok(())
}

/// [`OverStore`] whose first probe panics (a bug in a probe, a library's `unwrap`).
#[derive(Clone, Default)]
struct PanickyProbe {
    inner: OverStore,
    panicked: Arc<AtomicBool>,
}

impl Handler for PanickyProbe {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        self.inner.handle(d)
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("probe bug");
        }
        self.inner.probe()
    }
}

/// A handler's panic is caught (a retry); a probe's was not: it killed the prober with
/// the breaker half-open, and the pool neither fetched nor re-ran what it held until
/// the process restarted. A panicking probe is now a failed probe.
#[tokio::test]
async fn a_panicking_probe_fails_the_probe_instead_of_wedging_the_pool() -> anyhow::Result<()> {
    let env = env().await?;
    let handler = PanickyProbe::default();
    publish_n(&env, 3).await?;
    let mut registry = Registry::default();
    registry.register("test", handler.clone());
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &[]).await?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(runtime.run(cancel.clone()));
    souk_testkit::eventually(Duration::from_secs(10), || async {
        handler.panicked.load(Ordering::SeqCst).then_some(())
    })
    .await?;
    handler.inner.up.store(true, Ordering::SeqCst);
    let handled = souk_testkit::eventually(Duration::from_secs(20), || async {
        (handler.inner.handled.lock().ok()?.len() == 3).then_some(())
    })
    .await;
    cancel.cancel();
    run.await?;
    handled?;
    assert_eq!(dead_lettered(&env).await?, 0);
    Ok(())
}
