use async_nats::{HeaderMap, jetstream};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use souk_pipelines::headers;
use souk_topologies::{
    publisher::OutgoingMessage,
    runtime::{Delivery, Handler, HandlerError, Outcome, Pool, Registry},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::{Env, env, stream_messages};

const SUBJECT: &str = "souk.cmd.test.work";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A handler driven by the payload: `ok`, `retry`, `fail`, `panic`, `slow:<ms>`, `block`,
/// `waitonce:<ms>` (`Waiting` for `ms` the first time it is seen, then handled).
#[derive(Clone)]
struct Scripted {
    seen: Arc<Mutex<Vec<(String, u64)>>>,
    done: Arc<Mutex<Vec<String>>>,
    /// `block` messages wait for a permit here.
    gate: Arc<Semaphore>,
    started: Arc<Semaphore>,
}

impl Default for Scripted {
    fn default() -> Self {
        Scripted {
            seen: Arc::default(),
            done: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            started: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Handler for Scripted {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).to_string();
            let seen_before = {
                let mut seen = self.seen.lock().expect("lock");
                let before = seen.iter().filter(|(b, _)| *b == body).count();
                seen.push((body.clone(), d.attempt));
                before
            };
            let outcome = match body.split_once(':').map_or(body.as_str(), |(k, _)| k) {
                "retry" => HandlerError::retryable("downstream", "boom: downstream 500")
                    .after(Duration::from_millis(20))
                    .into(),
                "fail" => Outcome::fail("unparseable", "unparseable order"),
                "panic" => panic!("handler bug"),
                "slow" => {
                    let ms: u64 = body[5..].parse().unwrap_or(0);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Outcome::Ack
                }
                "block" => {
                    self.started.add_permits(1);
                    let _permit = self.gate.acquire().await.expect("gate open");
                    Outcome::Ack
                }
                "waitonce" if seen_before == 0 => {
                    let ms: u64 = body[9..].parse().unwrap_or(0);
                    HandlerError::waiting("test_wait", "once").after(Duration::from_millis(ms)).into()
                }
                _ => Outcome::Ack,
            };
            if outcome == Outcome::Ack {
                self.done.lock().expect("lock").push(body);
            }
            outcome
        }
        .boxed()
    }
}

async fn publish(env: &Env, id: &str, body: &str) -> anyhow::Result<()> {
    let mut h = HeaderMap::new();
    h.insert(headers::TRACEPARENT, TRACEPARENT);
    h.insert("x-custom", "kept");
    env.publisher
        .publish(OutgoingMessage {
            subject: SUBJECT.into(),
            msg_id: id.into(),
            headers: h,
            payload: body.to_owned().into(),
        })
        .await?;
    Ok(())
}

async fn start_pool(
    env: &Env,
    handler: Scripted,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let mut registry = Registry::default();
    registry.register("test", handler);
    let pool = Pool::build(&env.publisher, &env.topology, "work", &registry).await?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pool.run(cancel.clone()));
    Ok((cancel, run))
}

async fn dead_letters(env: &Env) -> anyhow::Result<Vec<jetstream::message::StreamMessage>> {
    let stream = env.js.get_stream("DLQ").await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        out.push(stream.get_raw_message(seq).await?);
    }
    Ok(out)
}

fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// Whether "work" has nothing pending and nothing unacknowledged; an error when it
/// cannot be read.
async fn consumer_idle(env: &Env) -> anyhow::Result<Option<()>> {
    souk_testkit::drained(&env.js, "CMD", "work").await
}

#[tokio::test]
async fn poison_message_is_dead_lettered_after_max_deliver_without_blocking_others() -> anyhow::Result<()> {
    let env = env().await?;
    let handler = Scripted::default();
    publish(&env, "poison", "retry").await?;
    for i in 0..20 {
        publish(&env, &format!("good-{i}"), &format!("ok:{i}")).await?;
    }
    let (cancel, run) = start_pool(&env, handler.clone()).await?;

    souk_testkit::eventually(Duration::from_secs(20), || async {
        anyhow::Ok(Some(dead_letters(&env).await?).filter(|d| !d.is_empty()))
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || consumer_idle(&env)).await?;
    cancel.cancel();
    run.await?;
    // Read once nothing is in flight: a second copy would show here.
    let dlq = dead_letters(&env).await?;

    assert_eq!(handler.done.lock().expect("lock").len(), 20, "every good message handled");
    let attempts: Vec<u64> =
        handler.seen.lock().expect("lock").iter().filter(|(b, _)| b == "retry").map(|(_, a)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "max-deliver is 3");
    assert_eq!(dlq.len(), 1);
    let d = &dlq[0];
    assert_eq!(d.subject.as_str(), "souk.dlq.work");
    assert_eq!(&d.payload[..], b"retry", "original body");
    assert_eq!(header(d, "x-custom"), Some("kept"), "original headers");
    assert_eq!(header(d, headers::DLQ_ATTEMPTS), Some("3"));
    assert_eq!(header(d, headers::DLQ_ERROR), Some("downstream: boom: downstream 500"));
    assert_eq!(header(d, headers::DLQ_SUBJECT), Some(SUBJECT));
    assert_eq!(header(d, headers::DLQ_CONSUMER), Some("work"));
    assert_eq!(header(d, headers::DLQ_TRACE_ID), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    assert_eq!(header(d, headers::DLQ_MSG_ID), Some("poison"));
    assert_eq!(stream_messages(&env.js, "CMD").await?, 0, "terminated, not left behind");
    Ok(())
}

#[tokio::test]
async fn fail_dead_letters_at_once_and_panics_are_retried_then_dead_lettered() -> anyhow::Result<()> {
    let env = env().await?;
    let handler = Scripted::default();
    publish(&env, "f", "fail").await?;
    publish(&env, "p", "panic").await?;
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(20), || async {
        anyhow::Ok(Some(dead_letters(&env).await?).filter(|d| d.len() >= 2))
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || consumer_idle(&env)).await?;
    cancel.cancel();
    run.await?;
    let dlq = dead_letters(&env).await?;
    assert_eq!(dlq.len(), 2, "one copy each, read once nothing is in flight");
    let by_body = |b: &[u8]| dlq.iter().find(|m| &m.payload[..] == b).expect("dead letter present");
    let fail = by_body(b"fail");
    assert_eq!(header(fail, headers::DLQ_ATTEMPTS), Some("1"));
    assert_eq!(header(fail, headers::DLQ_ERROR), Some("unparseable: unparseable order"));
    let panic = by_body(b"panic");
    assert_eq!(header(panic, headers::DLQ_ATTEMPTS), Some("3"));
    assert_eq!(header(panic, headers::DLQ_ERROR), Some("handler_panic: handler panicked: handler bug"));
    Ok(())
}

/// The test topology with max-deliver 1 (and `edit` made to it): one worker that takes
/// the message and dies uses up its only attempt.
async fn one_delivery_env(edit: impl FnOnce(&mut souk_topologies::Topology)) -> anyhow::Result<Env> {
    let mut topology = souk_topologies::Topology::parse(crate::TEST_TOPOLOGY)?;
    topology.consumers[0].max_deliver = 1;
    topology.consumers[0].backoff.truncate(1);
    edit(&mut topology);
    crate::env_of(topology).await
}

/// Take the next delivery of "work" without ever settling it: a worker that died
/// holding it. Returns its key for the extra-run marks.
async fn take_and_die(env: &Env) -> anyhow::Result<(u64, i128)> {
    let consumer: jetstream::consumer::PullConsumer =
        env.js.get_stream("CMD").await?.get_consumer("work").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut taken = consumer
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let msg = taken
        .next()
        .await
        .ok_or_else(|| anyhow::anyhow!("nothing delivered"))?
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((info.stream_sequence, info.published.unix_timestamp_nanos()))
}

/// A message that kills the worker running it must not loop for ever: past max-deliver,
/// with no history in this process, it gets one more run, marked; a delivery that finds
/// that mark (the run never returned: the worker died in it too) is dead-lettered
/// without running the handler.
#[tokio::test]
async fn a_delivery_past_max_deliver_whose_extra_run_died_is_dead_lettered_unrun() -> anyhow::Result<()> {
    // max-deliver 1: a worker that takes the message and dies uses up its only attempt.
    let env = one_delivery_env(|_| {}).await?;
    publish(&env, "crashy", "ok:crashy").await?;
    take_and_die(&env).await?;
    // The next worker marks the extra run of delivery 2 and dies in it.
    let key = take_and_die(&env).await?;
    let marks = souk_topologies::runtime::LastRuns::new(env.js.clone(), 1);
    assert!(marks.begin("work", key).await?, "the first extra run is marked");

    let handler = Scripted::default();
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    let dlq = souk_testkit::eventually(Duration::from_secs(20), || async {
        anyhow::Ok(Some(dead_letters(&env).await?).filter(|d| !d.is_empty()))
    })
    .await?;
    cancel.cancel();
    run.await?;
    assert!(handler.seen.lock().expect("lock").is_empty(), "handler not run again");
    assert_eq!(header(&dlq[0], headers::DLQ_ATTEMPTS), Some("3"));
    assert!(header(&dlq[0], headers::DLQ_ERROR).is_some_and(|e| e.contains("did not finish")));
    Ok(())
}

/// Review (eleventh session): deliveries past max-deliver this process knew nothing of
/// were dead-lettered unrun — but they are as often deliveries that were never attempts
/// (handed back while waiting at a shutdown, kept by a process that was killed). Such a
/// delivery now runs once more; its mark goes when the run returns, so the next one can
/// run again too.
#[tokio::test]
async fn a_delivery_past_max_deliver_of_unknown_history_runs_once_more() -> anyhow::Result<()> {
    let env = one_delivery_env(|_| {}).await?;
    publish(&env, "w", "waitonce:50").await?;
    take_and_die(&env).await?;
    let handler = Scripted::default();
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(20), || async {
        (!handler.done.lock().ok()?.is_empty()).then_some(())
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || consumer_idle(&env)).await?;
    cancel.cancel();
    run.await?;
    assert!(dead_letters(&env).await?.is_empty(), "not dead-lettered");
    let seen = handler.seen.lock().expect("lock").clone();
    assert_eq!(seen, [("waitonce:50".to_owned(), 2), ("waitonce:50".to_owned(), 2)], "waited, then handled");
    Ok(())
}

#[tokio::test]
async fn long_handlers_keep_their_message_with_progress_acks() -> anyhow::Result<()> {
    let env = env().await?; // ack-wait 1s
    let handler = Scripted::default();
    publish(&env, "slow", "slow:2500").await?;
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (!handler.done.lock().expect("lock").is_empty()).then_some(())
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(5), || consumer_idle(&env)).await?;
    cancel.cancel();
    run.await?;
    assert_eq!(*handler.seen.lock().expect("lock"), [("slow:2500".to_owned(), 1)], "never redelivered");
    Ok(())
}

#[tokio::test]
async fn shutdown_drains_in_flight_handlers_before_returning() -> anyhow::Result<()> {
    let env = env().await?; // concurrency 4
    let handler = Scripted::default();
    for i in 0..4 {
        publish(&env, &format!("b{i}"), &format!("block:{i}")).await?;
    }
    let (cancel, mut run) = start_pool(&env, handler.clone()).await?;
    // All four are running.
    let _started = handler.started.acquire_many(4).await?;
    cancel.cancel();
    // The pool must still be waiting for them.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut run).await.is_err(),
        "returned before draining"
    );
    handler.gate.add_permits(4);
    run.await?;
    assert_eq!(handler.done.lock().expect("lock").len(), 4, "every in-flight handler finished");
    // Acks are asynchronous: the server sees them shortly after the pool returns.
    souk_testkit::eventually(Duration::from_secs(5), || consumer_idle(&env)).await?;
    Ok(())
}

#[tokio::test]
async fn dead_letters_are_listed_with_their_cause_and_can_be_replayed() -> anyhow::Result<()> {
    use souk_topologies::dead_letters;
    let env = env().await?;
    let handler = Scripted::default();
    publish(&env, "bad", "fail").await?;
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    let listed = souk_testkit::eventually(Duration::from_secs(10), || async {
        dead_letters::list(&env.js, 10).await.ok().filter(|l| l.len() == 1)
    })
    .await?;
    let d = &listed[0];
    assert_eq!((d.consumer.as_str(), d.subject.as_str(), d.attempts.as_str()), ("work", SUBJECT, "1"));
    assert_eq!(d.error, "unparseable: unparseable order");
    assert_eq!(d.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

    // Replay: the original body and headers go back to the original subject, the dead
    // letter leaves the DLQ, and the handler sees the message again (and, still
    // failing, dead-letters it again).
    dead_letters::replay(&env.publisher, d.seq).await?;
    // Replaying the same sequence again fails cleanly: it is gone.
    assert!(dead_letters::replay(&env.publisher, d.seq).await.is_err());
    let again = souk_testkit::eventually(Duration::from_secs(10), || async {
        dead_letters::list(&env.js, 10).await.ok().filter(|l| l.len() == 1 && l[0].seq != d.seq)
    })
    .await?;
    assert_eq!(again[0].error, "unparseable: unparseable order");
    cancel.cancel();
    run.await?;
    let seen: Vec<_> = handler.seen.lock().expect("lock").iter().map(|(b, _)| b.clone()).collect();
    assert_eq!(seen, ["fail", "fail"], "the replay reached the handler");
    Ok(())
}

#[tokio::test]
async fn a_pool_pulls_only_what_its_free_slots_can_run() -> anyhow::Result<()> {
    let env = env().await?; // concurrency 4, fetch-batch 8
    let handler = Scripted::default();
    for i in 0..12 {
        publish(&env, &format!("b{i}"), &format!("block:{i}")).await?;
    }
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    let _started = handler.started.acquire_many(4).await?;
    // Four running, none buffered: JetStream has delivered exactly four.
    let info = env.js.get_stream("CMD").await?.consumer_info("work").await?;
    assert_eq!(info.num_ack_pending, 4, "pulled more than the pool can run");
    assert_eq!(handler.started.available_permits(), 0);
    handler.gate.add_permits(12);
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (handler.done.lock().expect("lock").len() == 12).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    Ok(())
}

/// Under load the ingress stores commands as atomic batches, and JetStream keeps
/// `Nats-Batch-Id`/`Nats-Batch-Sequence` on every message of a batch but the last. A dead
/// letter (or a replay) that copied those would itself be a batch fragment: refused by a
/// stream without `allow-atomic`, never committed by one with it. So batched commands
/// must dead-letter and replay like any other.
#[tokio::test]
async fn commands_stored_by_an_atomic_batch_are_dead_lettered_and_replayed() -> anyhow::Result<()> {
    use souk_topologies::dead_letters;
    let env = env().await?;
    let batch: Vec<_> = ["fail", "fail", "ok"]
        .iter()
        .enumerate()
        .map(|(i, body)| OutgoingMessage {
            subject: SUBJECT.into(),
            msg_id: format!("batched-{i}"),
            headers: HeaderMap::new(),
            payload: body.to_string().into(),
        })
        .collect();
    env.publisher.publish_atomic(&batch).await?;
    let stored = env.js.get_stream("CMD").await?.get_raw_message(1).await?;
    assert!(header(&stored, "Nats-Batch-Id").is_some(), "the premise: batch headers are kept");

    let handler = Scripted::default();
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    let listed = souk_testkit::eventually(Duration::from_secs(10), || async {
        dead_letters::list(&env.js, 10).await.ok().filter(|l| l.len() == 2)
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || consumer_idle(&env)).await?;
    for letter in dead_letters(&env).await? {
        assert!(
            !letter.headers.iter().any(|(k, _)| {
                let k: &str = k.as_ref();
                k.starts_with("Nats-Batch")
            }),
            "{letter:?}"
        );
    }
    dead_letters::replay(&env.publisher, listed[0].seq).await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (handler.seen.lock().ok()?.iter().filter(|(b, _)| b == "fail").count() == 3).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    Ok(())
}

/// Records when each attempt's batch starts and when its work is dropped; the first
/// attempt never finishes on its own (a batch stuck on a lock).
#[derive(Clone, Default)]
struct StuckFirstBatch {
    events: Arc<Mutex<Vec<String>>>,
}

struct OnDrop(Arc<Mutex<Vec<String>>>, String);

impl Drop for OnDrop {
    fn drop(&mut self) {
        self.0.lock().expect("lock").push(self.1.clone());
    }
}

impl Handler for StuckFirstBatch {
    fn handle<'a>(&'a self, _: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async { Outcome::Ack }.boxed()
    }
    fn handle_batch<'a>(&'a self, deliveries: &'a [Delivery]) -> BoxFuture<'a, Vec<Outcome>> {
        async move {
            let attempt = deliveries[0].attempt;
            self.events.lock().expect("lock").push(format!("start {attempt}"));
            let _guard = OnDrop(self.events.clone(), format!("dropped {attempt}"));
            if attempt == 1 {
                futures::future::pending::<()>().await;
            }
            vec![Outcome::Ack; deliveries.len()]
        }
        .boxed()
    }
}

/// A batch that outlives the handler timeout is cut (its work dropped, so its
/// transaction rolls back) before its message is retried: no batch can commit a message
/// that has meanwhile been redelivered, or dead-lettered on its last attempt.
#[tokio::test]
async fn a_timed_out_batch_is_dropped_before_its_message_is_retried() -> anyhow::Result<()> {
    let mut topology = souk_topologies::Topology::parse(crate::TEST_TOPOLOGY)?;
    let pool = &mut topology.pools[0];
    (pool.handler_timeout, pool.max_batch, pool.batches_in_flight) = (Duration::from_millis(300), 4, 2);
    let env = crate::env_of(topology).await?;
    publish(&env, "stuck", "x").await?;
    let handler = StuckFirstBatch::default();
    let mut registry = Registry::default();
    registry.register("test", handler.clone());
    let pool = Pool::build(&env.publisher, &env.topology, "work", &registry).await?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pool.run(cancel.clone()));
    souk_testkit::eventually(Duration::from_secs(10), || async {
        handler.events.lock().ok()?.iter().any(|e| e == "start 2").then_some(())
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || consumer_idle(&env)).await?;
    cancel.cancel();
    run.await?;
    let events = handler.events.lock().expect("lock").clone();
    assert_eq!(events[..3], ["start 1", "dropped 1", "start 2"], "{events:?}");
    Ok(())
}

/// Review (eleventh session): a delivery whose wait ended took its slot back without
/// progress acks; with every slot held for longer than the ack wait (here by handlers
/// that block; in production, deliveries held through a dependency outage), JetStream
/// redelivered it while this process still owned it, and the message ran twice.
#[tokio::test]
async fn a_waiting_delivery_kept_waiting_for_a_slot_is_not_redelivered() -> anyhow::Result<()> {
    let env = env().await?; // ack wait 1 s, 4 slots
    let handler = Scripted::default();
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    publish(&env, "w", "waitonce:300").await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (!handler.seen.lock().ok()?.is_empty()).then_some(())
    })
    .await?;
    // Every slot taken while it waits, and held for 3 ack waits once its wait is over.
    for i in 0..4 {
        publish(&env, &format!("b{i}"), "block").await?;
    }
    let _all_blocked = handler.started.acquire_many(4).await?;
    let waits =
        |h: &Scripted| h.seen.lock().expect("lock").iter().filter(|(b, _)| b.starts_with("wait")).count();
    assert_eq!(waits(&handler), 1, "the slots were taken while it waited (else the test proves nothing)");
    tokio::time::sleep(Duration::from_secs(3)).await; // the time the slots stay held, not a synchronisation
    handler.gate.add_permits(4);
    souk_testkit::eventually(Duration::from_secs(10), || consumer_idle(&env)).await?;
    cancel.cancel();
    run.await?;
    let runs: Vec<_> =
        handler.seen.lock().expect("lock").iter().filter(|(b, _)| b.starts_with("wait")).cloned().collect();
    assert_eq!(
        runs,
        [("waitonce:300".to_owned(), 1), ("waitonce:300".to_owned(), 1)],
        "one delivery: waited, then run"
    );
    Ok(())
}

/// Second review (eleventh session): the mark of an extra run was removed only when the
/// handler returned; a run cut at the drain deadline (a rolling deploy, the handler
/// slower than the drain timeout) left it, and the next delivery read it as a run the
/// process died in: dead-lettered unrun. A process that lives on removes its own mark.
#[tokio::test]
async fn an_extra_run_abandoned_at_the_drain_deadline_leaves_no_mark() -> anyhow::Result<()> {
    let env = one_delivery_env(|t| t.pools[0].drain_timeout = Duration::from_millis(200)).await?;
    publish(&env, "slow", "slow:1500").await?;
    take_and_die(&env).await?;
    // Its extra run starts, and the pool is stopped during it.
    let handler = Scripted::default();
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(20), || async {
        (!handler.seen.lock().ok()?.is_empty()).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    assert!(
        handler.done.lock().expect("lock").is_empty(),
        "abandoned mid-run (else the test proves nothing)"
    );
    // The next process runs it once more.
    let (cancel, run) = start_pool(&env, handler.clone()).await?;
    let outcome = souk_testkit::eventually(Duration::from_secs(20), || async {
        let done = !handler.done.lock().ok()?.is_empty();
        let dead = !dead_letters(&env).await.ok()?.is_empty();
        (done || dead).then_some(done)
    })
    .await?;
    cancel.cancel();
    run.await?;
    assert!(outcome, "handled, not dead-lettered: {:?}", dead_letters(&env).await?.len());
    Ok(())
}
