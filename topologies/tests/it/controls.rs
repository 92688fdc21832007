//! Operators' pool controls through the control bucket: pause drains and stops
//! fetching, resume handles everything once, scale moves the in-flight bound — in one
//! runtime and across two (each with its own NATS connection, as two worker processes
//! have) — and a runtime started while its pool is paused starts paused.

use futures::{FutureExt, future::BoxFuture};
use souk_topologies::{
    control::{Change, Controls},
    runtime::{Activity, Delivery, Handler, Outcome, Registry, Runtime},
    status::{self, PoolStatus, heartbeat::PoolControls},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Env, env, msg};

const SUBJECT: &str = "souk.cmd.test.work";
const WAIT: Duration = Duration::from_secs(20);

/// Acks every message; `block…` bodies wait for a permit of `gate` first, `wait…`
/// bodies are `Waiting` (tried again in 20 ms) until `released`.
#[derive(Clone)]
struct Gated {
    handled: Arc<Mutex<Vec<String>>>,
    started: Arc<Semaphore>,
    gate: Arc<Semaphore>,
    released: Arc<std::sync::atomic::AtomicBool>,
    /// Runs of `flaky…` bodies so far.
    flaky_runs: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Gated {
    fn default() -> Self {
        Gated {
            handled: Arc::default(),
            started: Arc::new(Semaphore::new(0)),
            gate: Arc::new(Semaphore::new(0)),
            released: Arc::default(),
            flaky_runs: Arc::default(),
        }
    }
}

impl Handler for Gated {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).to_string();
            if body.starts_with("block") {
                self.started.add_permits(1);
                let _permit = self.gate.acquire().await.expect("gate open");
            }
            // `flaky…`: fails its first run, then waits like `wait…`.
            if body.starts_with("flaky")
                && self.flaky_runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0
            {
                return Outcome::retry("test_flaky", "first run fails");
            }
            let waits = body.starts_with("wait") || body.starts_with("flaky");
            if waits && !self.released.load(std::sync::atomic::Ordering::SeqCst) {
                let busy = souk_topologies::runtime::HandlerError::waiting("test_wait", "not yet");
                return busy.after(Duration::from_millis(20)).into();
            }
            self.handled.lock().expect("lock").push(body);
            Outcome::Ack
        }
        .boxed()
    }
}

impl Gated {
    fn handled(&self) -> Vec<String> {
        self.handled.lock().expect("lock").clone()
    }
}

/// A runtime of every pool of the test topology on its own connection.
struct Process {
    cancel: CancellationToken,
    run: tokio::task::JoinHandle<()>,
}

async fn start(env: &Env, handler: &Gated) -> anyhow::Result<Process> {
    let client = env.nats.client().await?;
    let publisher = souk_topologies::publisher::Publisher::new(client, Duration::from_secs(2));
    let mut registry = Registry::default();
    registry.register("test", handler.clone());
    let runtime = Runtime::build(&publisher, &env.topology, &registry, &[])
        .await?
        .heartbeat_every(Duration::from_millis(200));
    let cancel = CancellationToken::new();
    Ok(Process { cancel: cancel.clone(), run: tokio::spawn(runtime.run(cancel)) })
}

impl Process {
    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        Ok(self.run.await?)
    }
}

async fn publish(env: &Env, prefix: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        env.publisher.publish(msg(SUBJECT, &format!("{prefix}{i}"), &format!("{prefix}:{i}"))).await?;
    }
    Ok(())
}

/// The "work" pool of every live process (by its heartbeat), once `processes` beat
/// and each passes `check` (on its controls, as the status model shows them).
async fn pools_where(
    env: &Env,
    processes: usize,
    check: impl Fn(&PoolStatus, &PoolControls) -> bool,
) -> anyhow::Result<Option<Vec<PoolStatus>>> {
    let pools = status::read_pools(&env.client).await?;
    let work: Vec<_> = pools.into_iter().filter(|p| p.name == "work").collect();
    let passes = |p: &PoolStatus| p.controls.is_some_and(|c| check(p, &c));
    Ok((work.len() == processes && work.iter().all(passes)).then_some(work))
}

async fn consumer(env: &Env) -> anyhow::Result<async_nats::jetstream::consumer::Info> {
    Ok(env.js.get_stream("CMD").await?.consumer_info("work").await?)
}

/// Paused with nothing open: no pull request waits at the server and nothing is
/// delivered, so whatever is published now stays in the stream. Returns the consumer's
/// state once `published` messages are pending there.
async fn stays_in_the_stream(env: &Env, published: u64) -> anyhow::Result<()> {
    let info = souk_testkit::eventually(WAIT, || async {
        let info = consumer(env).await?;
        anyhow::Ok((info.num_pending == published).then_some(info))
    })
    .await?;
    assert_eq!((info.num_waiting, info.num_ack_pending), (0, 0), "a paused pool pulled: {info:?}");
    Ok(())
}

#[tokio::test]
async fn pause_drains_in_flight_and_stops_fetching_and_resume_loses_nothing() -> anyhow::Result<()> {
    let env = env().await?; // pool "work": concurrency 4
    let controls = Controls::open(&env.js, 1).await?;
    let handler = Gated::default();
    let process = start(&env, &handler).await?;
    publish(&env, "block", 4).await?;
    let _running = handler.started.acquire_many(4).await?;

    controls.change("work", Change::Pause, "test-operator").await?;
    // Paused, not drained: four handlers still run, and are not interrupted.
    let pausing = souk_testkit::eventually(WAIT, || {
        pools_where(&env, 1, |p, c| c.activity == Activity::Pausing && c.paused && p.in_flight == 4)
    })
    .await?;
    assert_eq!(pausing[0].controls.map(|c| c.concurrency), Some(4));
    handler.gate.add_permits(4);
    souk_testkit::eventually(WAIT, || {
        pools_where(&env, 1, |p, c| c.activity == Activity::Paused && p.in_flight == 0)
    })
    .await?;
    assert_eq!(handler.handled().len(), 4, "in-flight messages finished");
    // The status model shows it: the pool's controls from the heartbeats, and what the
    // operator set (and who) from the control bucket.
    let model = status::model::read(&env.js, &env.topology, None, false).await?;
    let work = model.pools.iter().find(|p| p.name == "work").expect("work pool");
    let shown = work.controls.expect("controls in the heartbeat");
    assert_eq!((shown.paused, shown.activity, shown.concurrency), (true, Activity::Paused, 4));
    let set = work.settings.as_ref().expect("settings in the control bucket");
    assert!(set.paused && set.changed_by == "test-operator", "{set:?}");

    publish(&env, "late", 10).await?;
    stays_in_the_stream(&env, 10).await?;
    assert_eq!(handler.handled().len(), 4, "nothing published after the pause was handled");

    controls.change("work", Change::Resume, "test-operator").await?;
    souk_testkit::eventually(WAIT, || async { (handler.handled().len() == 14).then_some(()) }).await?;
    souk_testkit::eventually(WAIT, || souk_testkit::drained(&env.js, "CMD", "work")).await?;
    process.stop().await?;
    let mut handled = handler.handled();
    handled.sort();
    handled.dedup();
    assert_eq!(handled.len(), 14, "each message handled once");
    Ok(())
}

#[tokio::test]
async fn pause_and_resume_reach_every_process_running_the_pool() -> anyhow::Result<()> {
    let env = env().await?;
    let controls = Controls::open(&env.js, 1).await?;
    let (one, two) = (Gated::default(), Gated::default());
    let (p1, p2) = (start(&env, &one).await?, start(&env, &two).await?);
    souk_testkit::eventually(WAIT, || {
        pools_where(&env, 2, |_, c| c.activity == Activity::Running && !c.paused)
    })
    .await?;

    controls.change("work", Change::Pause, "test-operator").await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 2, |_, c| c.activity == Activity::Paused)).await?;
    publish(&env, "m", 20).await?;
    stays_in_the_stream(&env, 20).await?;
    assert_eq!(one.handled().len() + two.handled().len(), 0, "neither process fetched");

    controls.change("work", Change::Resume, "test-operator").await?;
    souk_testkit::eventually(WAIT, || async {
        (one.handled().len() + two.handled().len() == 20).then_some(())
    })
    .await?;
    p1.stop().await?;
    p2.stop().await?;
    let mut all = one.handled();
    all.extend(two.handled());
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 20, "nothing lost, nothing twice");
    Ok(())
}

#[tokio::test]
async fn scale_moves_the_in_flight_bound_of_every_process() -> anyhow::Result<()> {
    let env = env().await?; // concurrency 4 per process
    let controls = Controls::open(&env.js, 1).await?;
    let handler = Gated::default();
    let (p1, p2) = (start(&env, &handler).await?, start(&env, &handler).await?);
    publish(&env, "block", 40).await?;
    let running = handler.started.acquire_many(8).await?;
    running.forget();
    // Two processes at 4: exactly eight delivered, none buffered.
    souk_testkit::eventually(WAIT, || async {
        anyhow::Ok((consumer(&env).await?.num_ack_pending == 8).then_some(()))
    })
    .await?;

    controls.change("work", Change::Scale(7), "test-operator").await?;
    let scaled = handler.started.acquire_many(6).await?;
    scaled.forget();
    souk_testkit::eventually(WAIT, || pools_where(&env, 2, |p, c| c.concurrency == 7 && p.in_flight == 7))
        .await?;
    let info = consumer(&env).await?;
    assert_eq!(info.num_ack_pending, 14, "two processes at 7");
    assert_eq!(handler.started.available_permits(), 0, "no process went past 7");

    // Down to 2: running handlers are not cut; the bound falls as they return.
    controls.change("work", Change::Scale(2), "test-operator").await?;
    handler.gate.add_permits(1000);
    souk_testkit::eventually(WAIT, || async { (handler.handled().len() == 40).then_some(()) }).await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 2, |p, c| c.concurrency == 2 && p.in_flight == 0))
        .await?;
    handler.gate.forget_permits(usize::MAX);
    publish(&env, "block-again", 10).await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 2, |p, _| p.in_flight == 2)).await?;
    let info = consumer(&env).await?;
    assert_eq!(info.num_ack_pending, 4, "two processes at 2: {info:?}");
    handler.gate.add_permits(1000);
    souk_testkit::eventually(WAIT, || async { (handler.handled().len() == 50).then_some(()) }).await?;
    p1.stop().await?;
    p2.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_process_started_while_its_pool_is_paused_starts_paused() -> anyhow::Result<()> {
    let env = env().await?;
    let controls = Controls::open(&env.js, 1).await?;
    controls.change("work", Change::Pause, "test-operator").await?;
    publish(&env, "m", 5).await?;
    let handler = Gated::default();
    let process = start(&env, &handler).await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 1, |_, c| c.activity == Activity::Paused)).await?;
    stays_in_the_stream(&env, 5).await?;
    assert!(handler.handled().is_empty());
    let (settings, _) = controls.get("work").await?;
    assert!(settings.paused && settings.changed_by == "test-operator", "{settings:?}");

    controls.change("work", Change::Resume, "test-operator").await?;
    souk_testkit::eventually(WAIT, || async { (handler.handled().len() == 5).then_some(()) }).await?;
    process.stop().await?;
    Ok(())
}

#[tokio::test]
async fn out_of_bounds_concurrency_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let env = env().await?;
    let controls = Controls::open(&env.js, 1).await?;
    for n in [0, souk_topologies::control::MAX_CONCURRENCY + 1] {
        let e = controls.change("work", Change::Scale(n), "test-operator").await.expect_err("refused");
        assert!(e.to_string().contains("between 1 and"), "{e}");
    }
    assert_eq!(controls.get("work").await?.1, 0, "nothing written");
    Ok(())
}

/// A delivery waiting to be tried again gives its slot up but is still the process's:
/// its heartbeat counts it in flight and as waiting, so an operator can tell a pool
/// waiting on something (a payment provider) from a busy one, until it is handled.
#[tokio::test]
async fn waiting_deliveries_show_in_the_heartbeat_until_handled() -> anyhow::Result<()> {
    let env = env().await?;
    let handler = Gated::default();
    publish(&env, "wait", 3).await?;
    let process = start(&env, &handler).await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 1, |p, _| p.waiting == 3 && p.in_flight == 3))
        .await?;
    assert!(handler.handled().is_empty());
    handler.released.store(true, std::sync::atomic::Ordering::SeqCst);
    souk_testkit::eventually(WAIT, || async { (handler.handled().len() == 3).then_some(()) }).await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 1, |p, _| p.waiting == 0 && p.in_flight == 0))
        .await?;
    process.stop().await?;
    Ok(())
}

/// Review (eleventh session): a paused pool kept running its waiting deliveries — each
/// took a slot again when its wait ended and ran its handler (a payment command would
/// call its provider again) — and, as they stayed in flight, never read as paused. A
/// waiting delivery is handed back when its wait ends in a paused pool.
#[tokio::test]
async fn pause_hands_waiting_deliveries_back() -> anyhow::Result<()> {
    let env = env().await?;
    let controls = Controls::open(&env.js, 1).await?;
    let handler = Gated::default();
    publish(&env, "wait", 1).await?;
    let process = start(&env, &handler).await?;
    souk_testkit::eventually(WAIT, || pools_where(&env, 1, |p, _| p.waiting == 1)).await?;
    controls.change("work", Change::Pause, "test-operator").await?;
    souk_testkit::eventually(WAIT, || {
        pools_where(&env, 1, |p, c| c.activity == Activity::Paused && p.in_flight == 0)
    })
    .await?;
    handler.released.store(true, std::sync::atomic::Ordering::SeqCst);
    controls.change("work", Change::Resume, "test-operator").await?;
    souk_testkit::eventually(WAIT, || async { (handler.handled() == ["wait:0"]).then_some(()) }).await?;
    process.stop().await?;
    Ok(())
}

/// Second review (eleventh session): each pause hands a waiting delivery back, and
/// JetStream counts that as a delivery. A message that had failed an attempt in this
/// process (so its history is known here) reached max-deliver by pauses alone and was
/// dead-lettered unrun. A pause's hand-back is a deferral, not an attempt.
#[tokio::test]
async fn pauses_that_hand_a_waiting_delivery_back_spend_none_of_its_attempts() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let env = env().await?; // max-deliver 3
    let controls = Controls::open(&env.js, 1).await?;
    let handler = Gated::default();
    publish(&env, "flaky", 1).await?;
    let process = start(&env, &handler).await?;
    for round in 1..=3 {
        // Failed once, then waiting: paused and resumed.
        souk_testkit::eventually(WAIT, || async {
            let runs = handler.flaky_runs.load(Ordering::SeqCst);
            let pools = pools_where(&env, 1, |p, _| p.waiting == 1).await?;
            anyhow::Ok((runs > round && pools.is_some()).then_some(()))
        })
        .await?;
        controls.change("work", Change::Pause, "test-operator").await?;
        souk_testkit::eventually(WAIT, || {
            pools_where(&env, 1, |p, c| c.activity == Activity::Paused && p.in_flight == 0)
        })
        .await?;
        controls.change("work", Change::Resume, "test-operator").await?;
    }
    handler.released.store(true, Ordering::SeqCst);
    souk_testkit::eventually(WAIT, || async { (handler.handled() == ["flaky:0"]).then_some(()) }).await?;
    process.stop().await?;
    let dlq = env.js.get_stream("DLQ").await?.get_info().await?.state.messages;
    assert_eq!(dlq, 0, "not dead-lettered");
    Ok(())
}
