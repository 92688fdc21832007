//! Dead letters and replays on the shipped topology (`marketplace.toml`): their ids
//! survive re-created streams, a failed dead-letter publish is retried in place, and a
//! dead letter keeps the real last error.

use async_nats::{HeaderMap, jetstream};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use souk_pipelines::headers;
use souk_topologies::{
    Topology,
    apply::Mode,
    dead_letters,
    publisher::{OutgoingMessage, Publisher},
    runtime::{Delivery, Handler, Outcome, Pool, Registry},
};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio_util::sync::CancellationToken;

const SUBJECT: &str = "souk.cmd.orders.place";
const CONSUMER: &str = "orders-place";

fn shipped() -> anyhow::Result<Topology> {
    Ok(Topology::parse(include_str!("../../marketplace.toml"))?)
}

struct Shipped {
    _nats: souk_testkit::NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    publisher: Publisher,
    topology: Topology,
}

async fn shipped_env() -> anyhow::Result<Shipped> {
    shipped_env_with(|_| {}).await
}

/// The shipped topology with `edit` made to it.
async fn shipped_env_with(edit: impl FnOnce(&mut Topology)) -> anyhow::Result<Shipped> {
    let nats = souk_testkit::NatsServer::start().await?;
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let mut topology = shipped()?;
    edit(&mut topology);
    souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
    let publisher = Publisher::new(client.clone(), Duration::from_secs(2));
    Ok(Shipped { _nats: nats, client, js, publisher, topology })
}

impl Shipped {
    async fn start(
        &self,
        handler: impl Handler,
    ) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
        let mut registry = Registry::default();
        registry.register("orders.place", handler);
        let pool = Pool::build(&self.publisher, &self.topology, "orders", &registry).await?;
        let cancel = CancellationToken::new();
        Ok((cancel.clone(), tokio::spawn(pool.run(cancel))))
    }

    async fn send(&self, id: Option<&str>, body: &str) -> anyhow::Result<()> {
        match id {
            Some(id) => {
                self.publisher
                    .publish(OutgoingMessage {
                        subject: SUBJECT.into(),
                        msg_id: id.into(),
                        headers: HeaderMap::new(),
                        payload: body.to_owned().into(),
                    })
                    .await?;
            }
            // Without a `Nats-Msg-Id`: only the stream position identifies it.
            None => {
                self.js.publish(SUBJECT, body.to_owned().into()).await?.await?;
            }
        }
        Ok(())
    }

    async fn idle(&self) -> bool {
        matches!(souk_testkit::drained(&self.js, "CMD", CONSUMER).await, Ok(Some(())))
    }

    /// Every dead letter's body, failing loudly on any error.
    async fn dead_letter_bodies(&self) -> anyhow::Result<Vec<String>> {
        let listed = dead_letters::list(&self.js, 1000).await?;
        let stream = self.js.get_stream(dead_letters::STREAM).await?;
        let mut out = Vec::new();
        for d in listed {
            let m = stream.get_raw_message(d.seq).await?;
            out.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
        out.sort();
        Ok(out)
    }

    /// Remove `stream` and apply the topology again, as the apply error tells operators
    /// to do when a stream must change.
    async fn recreate(&self, stream: &str) -> anyhow::Result<()> {
        self.js.delete_stream(stream).await?;
        souk_topologies::apply::apply(&self.js, &self.topology, Mode::Apply).await?;
        Ok(())
    }
}

/// Fails every body starting with `fail` the first time it sees it; acks the rest.
#[derive(Clone, Default)]
struct FailOnce {
    seen: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Handler for FailOnce {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).into_owned();
            let mut seen = self.seen.lock().expect("lock");
            let first = !seen.iter().any(|(b, _)| *b == body);
            seen.push((body.clone(), d.attempt));
            if first && body.starts_with("fail") {
                Outcome::fail("refused", format!("cannot take {body}"))
            } else {
                Outcome::Ack
            }
        }
        .boxed()
    }
}

async fn stop(pool: (CancellationToken, tokio::task::JoinHandle<()>)) -> anyhow::Result<()> {
    pool.0.cancel();
    pool.1.await?;
    Ok(())
}

/// CMD removed and re-created numbers its messages from 1 again. A dead-letter id made
/// of the consumer and the stream sequence then names an older dead letter still in
/// DLQ's one-day dedupe window: the copy is dropped as a duplicate and the original
/// terminated — lost. Ids come from the original's own id (or, without one, the stream's
/// creation time and sequence), and a duplicate is checked against the stored copy.
#[tokio::test]
async fn dead_letters_survive_a_re_created_command_stream() -> anyhow::Result<()> {
    let env = shipped_env().await?;
    let pool = env.start(FailOnce::default()).await?;
    env.send(Some("a"), "fail:a").await?; // CMD seq 1
    env.send(None, "fail:no-id-1").await?; // CMD seq 2
    souk_testkit::eventually(Duration::from_secs(20), || async { env.idle().await.then_some(()) }).await?;
    stop(pool).await?;
    assert_eq!(env.dead_letter_bodies().await?, ["fail:a", "fail:no-id-1"]);

    env.recreate("CMD").await?;
    let pool = env.start(FailOnce::default()).await?;
    env.send(Some("b"), "fail:b").await?; // CMD seq 1 again
    env.send(None, "fail:no-id-2").await?; // CMD seq 2 again
    // The same message id again (a client retry long after the first): another stored
    // message, which must get its own dead letter, not be taken for the first one's.
    env.send(Some("a"), "fail:a-again").await?;
    souk_testkit::eventually(Duration::from_secs(20), || async { env.idle().await.then_some(()) }).await?;
    stop(pool).await?;
    assert_eq!(
        env.dead_letter_bodies().await?,
        ["fail:a", "fail:a-again", "fail:b", "fail:no-id-1", "fail:no-id-2"],
        "every terminated command has its copy"
    );
    Ok(())
}

/// DLQ removed and re-created numbers its dead letters from 1 again. A replay id made of
/// the DLQ sequence then repeats one CMD saw within its two-minute dedupe window: the
/// replay is acked as a duplicate and never stored, and the dead letter is removed — lost.
#[tokio::test]
async fn a_replay_is_not_swallowed_after_the_dead_letter_stream_is_re_created() -> anyhow::Result<()> {
    let env = shipped_env().await?;
    let handler = FailOnce::default();
    let pool = env.start(handler.clone()).await?;
    let seen_twice = |body: &'static str| {
        let seen = handler.seen.clone();
        move || {
            let n = seen.lock().expect("lock").iter().filter(|(b, _)| b == body).count();
            async move { (n == 2).then_some(()) }
        }
    };

    env.send(Some("a"), "fail:a").await?;
    let first = souk_testkit::eventually(Duration::from_secs(20), || async {
        dead_letters::list(&env.js, 10).await.ok().filter(|l| l.len() == 1)
    })
    .await?;
    let ack = dead_letters::replay(&env.publisher, first[0].seq).await?;
    assert!(!ack.duplicate);
    souk_testkit::eventually(Duration::from_secs(20), seen_twice("fail:a")).await?;

    env.recreate("DLQ").await?;
    env.send(Some("b"), "fail:b").await?;
    let second = souk_testkit::eventually(Duration::from_secs(20), || async {
        dead_letters::list(&env.js, 10).await.ok().filter(|l| l.len() == 1)
    })
    .await?;
    assert_eq!(second[0].seq, first[0].seq, "the premise: the new DLQ reuses the sequence");
    let ack = dead_letters::replay(&env.publisher, second[0].seq).await?;
    assert!(!ack.duplicate, "the replay was stored, not taken for the earlier one");
    souk_testkit::eventually(Duration::from_secs(20), seen_twice("fail:b")).await?;
    souk_testkit::eventually(Duration::from_secs(20), || async { env.idle().await.then_some(()) }).await?;
    stop(pool).await?;
    assert!(env.dead_letter_bodies().await?.is_empty());
    Ok(())
}

/// Always refuses: `fail…` bodies as poison (dead letter at once), `down…` bodies as a
/// retryable failure of the message (retried until max-deliver).
#[derive(Clone, Default)]
struct Refusing {
    seen: Arc<Mutex<Vec<(String, u64)>>>,
}

const DOWN: &str = "could not serialize access due to concurrent update";

impl Handler for Refusing {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).into_owned();
            self.seen.lock().expect("lock").push((body.clone(), d.attempt));
            if body.starts_with("down") {
                Outcome::retry("conflict", DOWN)
            } else {
                Outcome::fail("refused", format!("cannot take {body}"))
            }
        }
        .boxed()
    }
}

impl Shipped {
    /// DLQ gone, and a subscriber in its place that sees every dead-letter publish but
    /// never acknowledges one: each publish fails after the publisher's ack timeout.
    async fn dead_letter_stream_unavailable(&self) -> anyhow::Result<async_nats::Subscriber> {
        self.js.delete_stream(dead_letters::STREAM).await?;
        Ok(self.client.subscribe("souk.dlq.>").await?)
    }

    /// The dead-letter stream back (the subscriber gone).
    async fn dead_letter_stream_back(&self, tries: async_nats::Subscriber) -> anyhow::Result<()> {
        drop(tries);
        souk_topologies::apply::apply(&self.js, &self.topology, Mode::Apply).await?;
        Ok(())
    }

    /// Deliver the next message `n` times without handling it (naked at once), as
    /// workers that have since gone did.
    async fn use_up_deliveries(&self, n: i64) -> anyhow::Result<()> {
        let consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream("CMD")
            .await?
            .get_consumer(CONSUMER)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        for _ in 0..n {
            let mut batch =
                consumer.batch().max_messages(1).expires(Duration::from_secs(5)).messages().await?;
            let msg = batch
                .next()
                .await
                .ok_or_else(|| anyhow::anyhow!("not delivered"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            msg.ack_with(jetstream::AckKind::Nak(None)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }

    async fn only_dead_letter(&self) -> anyhow::Result<jetstream::message::StreamMessage> {
        let listed = dead_letters::list(&self.js, 10).await?;
        anyhow::ensure!(listed.len() == 1, "dead letters: {listed:?}");
        Ok(self.js.get_stream(dead_letters::STREAM).await?.get_raw_message(listed[0].seq).await?)
    }
}

async fn next_try(tries: &mut async_nats::Subscriber) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(60), tries.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("subscription closed"))?;
    Ok(())
}

fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}

/// Invariant 6: when the dead-letter publish fails, it is retried in place before the
/// message is handed back. Handing it back at once meant a redelivery that ran the
/// handler again (and, on a last attempt, one past max-deliver that lost the error).
#[tokio::test]
async fn a_failed_dead_letter_publish_is_retried_in_place() -> anyhow::Result<()> {
    let env = shipped_env().await?;
    let mut tries = env.dead_letter_stream_unavailable().await?;
    let handler = Refusing::default();
    let pool = env.start(handler.clone()).await?;
    env.send(Some("x"), "fail:x").await?;
    next_try(&mut tries).await?; // failed: nothing stores it
    env.dead_letter_stream_back(tries).await?;
    souk_testkit::eventually(Duration::from_secs(30), || async { env.idle().await.then_some(()) }).await?;
    stop(pool).await?;

    let d = env.only_dead_letter().await?;
    assert_eq!(header(&d, headers::DLQ_ERROR), Some("refused: cannot take fail:x"));
    assert_eq!(header(&d, headers::DLQ_ATTEMPTS), Some("1"));
    assert_eq!(*handler.seen.lock().expect("lock"), [("fail:x".to_owned(), 1)], "handled once");
    Ok(())
}

/// Invariant 6: a dead letter carries the real last error. The last allowed attempt
/// failed, its dead letter could not be stored (even after the in-place retries), and the
/// message came back past max-deliver: its dead letter said "the last attempt did not
/// finish" instead of why it failed.
#[tokio::test]
async fn a_dead_letter_keeps_the_last_real_error_when_its_publish_failed() -> anyhow::Result<()> {
    let env = shipped_env().await?;
    let max_deliver = env.topology.consumers[0].max_deliver;
    let mut tries = env.dead_letter_stream_unavailable().await?;
    env.send(Some("y"), "down:y").await?;
    env.use_up_deliveries(max_deliver - 1).await?;
    let handler = Refusing::default();
    let pool = env.start(handler.clone()).await?;
    // Every in-place try of the last attempt's dead letter fails.
    for _ in 0..5 {
        next_try(&mut tries).await?;
    }
    env.dead_letter_stream_back(tries).await?;
    souk_testkit::eventually(Duration::from_secs(60), || async { env.idle().await.then_some(()) }).await?;
    stop(pool).await?;

    let d = env.only_dead_letter().await?;
    assert_eq!(
        header(&d, headers::DLQ_ERROR),
        Some(format!("conflict: {DOWN}").as_str()),
        "the real last error"
    );
    assert_eq!(
        *handler.seen.lock().expect("lock"),
        [("down:y".to_owned(), max_deliver as u64)],
        "run once, on the last allowed attempt; not again past it"
    );
    Ok(())
}

/// Reads nothing until `upgraded`: a reader of an older release that is then upgraded
/// in place (the same pool, as far as the test can tell).
#[derive(Clone, Default)]
struct UpgradedLater {
    upgraded: Arc<std::sync::atomic::AtomicBool>,
    deferred: Arc<std::sync::atomic::AtomicU32>,
    handled: Arc<Mutex<Vec<u64>>>,
}

impl Handler for UpgradedLater {
    fn too_new(&self, _: &Delivery) -> Option<String> {
        use std::sync::atomic::Ordering;
        if self.upgraded.load(Ordering::SeqCst) {
            return None;
        }
        self.deferred.fetch_add(1, Ordering::SeqCst);
        Some("orders.place v2 is newer than this release reads (v1)".into())
    }
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        self.handled.lock().expect("lock").push(d.attempt);
        async { Outcome::Ack }.boxed()
    }
}

/// Rolling deploys: deliveries deferred for a schema this release cannot read yet are not
/// attempts. A message on its last allowed delivery that is deferred and then becomes
/// readable is handled — not dead-lettered as "delivered past max-deliver". (Waits out
/// one shipped deferral delay, a minute.)
#[tokio::test]
async fn deferrals_do_not_count_toward_max_deliver() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let env = shipped_env().await?;
    let max_deliver = env.topology.consumers[0].max_deliver;
    env.send(Some("z"), "from-a-newer-release").await?;
    env.use_up_deliveries(max_deliver - 1).await?;
    let handler = UpgradedLater::default();
    let pool = env.start(handler.clone()).await?;
    // Deferred on its last allowed delivery; then this reader is upgraded.
    souk_testkit::eventually(Duration::from_secs(20), || async {
        (handler.deferred.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await?;
    handler.upgraded.store(true, Ordering::SeqCst);
    // Settled either way: handled, or dead-lettered for its delivery count.
    souk_testkit::eventually(Duration::from_secs(150), || async {
        let handled = !handler.handled.lock().expect("lock").is_empty();
        let dead = !dead_letters::list(&env.js, 10).await.ok()?.is_empty();
        ((handled || dead) && env.idle().await).then_some(())
    })
    .await?;
    stop(pool).await?;
    assert_eq!(*handler.handled.lock().expect("lock"), [max_deliver as u64], "its last allowed attempt");
    assert!(dead_letters::list(&env.js, 10).await?.is_empty(), "not dead-lettered");
    Ok(())
}

/// Waits for another delivery of its work (`Waiting`) `waits` times, then handles.
#[derive(Clone)]
struct BusyFor {
    waits: u32,
    handled: Arc<Mutex<Vec<u64>>>,
    seen: Arc<std::sync::atomic::AtomicU32>,
}

impl Handler for BusyFor {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        use std::sync::atomic::Ordering;
        async move {
            if self.seen.fetch_add(1, Ordering::SeqCst) < self.waits {
                let busy =
                    souk_topologies::runtime::HandlerError::waiting("key_busy", "another call holds the key");
                return busy.after(Duration::from_millis(20)).into();
            }
            self.handled.lock().expect("lock").push(d.attempt);
            Outcome::Ack
        }
        .boxed()
    }
}

/// Found in review: a payment command waiting for another delivery of its key (the
/// original and the sweeper's re-send, each out of budget while the other called) spent
/// an attempt per wait and could be dead-lettered. Waiting is not an attempt: a message
/// that waits more times than max-deliver allows is handled once the other is done.
#[tokio::test]
async fn waiting_for_another_delivery_does_not_count_toward_max_deliver() -> anyhow::Result<()> {
    let env = shipped_env().await?;
    let max_deliver = env.topology.consumers[0].max_deliver;
    let waits = u32::try_from(max_deliver)? + 2;
    let handler =
        BusyFor { waits, handled: Arc::default(), seen: Arc::new(std::sync::atomic::AtomicU32::new(0)) };
    env.send(Some("busy"), "busy").await?;
    let pool = env.start(handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(60), || async {
        let handled = !handler.handled.lock().expect("lock").is_empty();
        let dead = !dead_letters::list(&env.js, 10).await.ok()?.is_empty();
        ((handled || dead) && env.idle().await).then_some(())
    })
    .await?;
    stop(pool).await?;
    assert!(dead_letters::list(&env.js, 10).await?.is_empty(), "not dead-lettered");
    assert_eq!(*handler.handled.lock().expect("lock"), [1], "handled, as its first attempt");
    Ok(())
}

/// Found by the chaos test once its workers were killed instead of drained: the waits
/// were counted in the process that made them, so a message that waited in one process
/// and was then delivered to another (or to the same one restarted) read its deliveries
/// past max-deliver as attempts that never finished, and was dead-lettered unrun.
/// Waiting now keeps the delivery (no redelivery to count).
#[tokio::test]
async fn a_message_that_waited_in_another_process_is_not_dead_lettered() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    let env = shipped_env().await?;
    let max_deliver = env.topology.consumers[0].max_deliver;
    let waits = u32::try_from(max_deliver)? * 2;
    let handler =
        BusyFor { waits, handled: Arc::default(), seen: Arc::new(std::sync::atomic::AtomicU32::new(0)) };
    env.send(Some("busy"), "busy").await?;
    // The first process waits on it more times than max-deliver allows, and stops.
    let first = env.start(handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(60), || async {
        (handler.seen.load(Ordering::SeqCst) > max_deliver as u32).then_some(())
    })
    .await?;
    stop(first).await?;
    // The next one takes it over.
    let second = env.start(handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(60), || async {
        let handled = !handler.handled.lock().expect("lock").is_empty();
        let dead = !dead_letters::list(&env.js, 10).await.ok()?.is_empty();
        ((handled || dead) && env.idle().await).then_some(())
    })
    .await?;
    stop(second).await?;
    assert!(dead_letters::list(&env.js, 10).await?.is_empty(), "not dead-lettered");
    assert_eq!(*handler.handled.lock().expect("lock"), [2], "handled: the second delivery's first attempt");
    Ok(())
}

/// Waits for another delivery of its work (`Waiting`) until `free`, then handles.
#[derive(Clone, Default)]
struct WaitsUntilFree {
    free: Arc<std::sync::atomic::AtomicBool>,
    seen: Arc<std::sync::atomic::AtomicU32>,
    handled: Arc<Mutex<Vec<u64>>>,
}

impl Handler for WaitsUntilFree {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        use std::sync::atomic::Ordering;
        async move {
            self.seen.fetch_add(1, Ordering::SeqCst);
            if !self.free.load(Ordering::SeqCst) {
                let busy =
                    souk_topologies::runtime::HandlerError::waiting("provider_down", "its provider is down");
                return busy.after(Duration::from_millis(50)).into();
            }
            self.handled.lock().expect("lock").push(d.attempt);
            Outcome::Ack
        }
        .boxed()
    }
}

/// Review (eleventh session): a command waiting on a provider that stays down is handed
/// back at each shutdown (a rolling deploy, a restart) — a delivery each, no attempt.
/// After max-deliver hand-backs the next process, which knows nothing of them, read the
/// deliveries as attempts that never finished and dead-lettered the command unrun. It
/// now runs it once more, and it goes on waiting until the provider is back.
#[tokio::test]
async fn a_waiting_message_handed_back_at_every_restart_is_not_dead_lettered() -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    // Hand-backs are redelivered after the backoff's steps: short ones here.
    let env = shipped_env_with(|t| t.consumers[0].backoff = vec![Duration::from_millis(50)]).await?;
    let max_deliver = u32::try_from(env.topology.consumers[0].max_deliver)?;
    let handler = WaitsUntilFree::default();
    env.send(Some("capture"), "capture").await?;
    for restart in 1..=max_deliver {
        let pool = env.start(handler.clone()).await?;
        souk_testkit::eventually(Duration::from_secs(60), || async {
            (handler.seen.load(Ordering::SeqCst) >= restart).then_some(())
        })
        .await?;
        stop(pool).await?;
    }
    // Past max-deliver now, in a process that never saw it: run once more, still waiting.
    let seen = handler.seen.load(Ordering::SeqCst);
    let pool = env.start(handler.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(60), || async {
        let ran = handler.seen.load(Ordering::SeqCst) > seen;
        let dead = !dead_letters::list(&env.js, 10).await.ok()?.is_empty();
        (ran || dead).then_some(())
    })
    .await?;
    assert!(dead_letters::list(&env.js, 10).await?.is_empty(), "not dead-lettered for its hand-backs");
    handler.free.store(true, Ordering::SeqCst);
    souk_testkit::eventually(Duration::from_secs(60), || async {
        (!handler.handled.lock().ok()?.is_empty() && env.idle().await).then_some(())
    })
    .await?;
    stop(pool).await?;
    assert!(dead_letters::list(&env.js, 10).await?.is_empty(), "not dead-lettered");
    assert_eq!(handler.handled.lock().expect("lock").len(), 1, "handled once");
    Ok(())
}

/// A dead letter stored but whose original was not terminated (a lost term, a crash
/// between the two) is dead-lettered again on redelivery: the duplicate PubAck names its
/// own stored copy, which is recognised, so one copy is kept and the original terminated.
#[tokio::test]
async fn dead_lettering_twice_keeps_one_copy() -> anyhow::Result<()> {
    let env = shipped_env().await?;
    env.send(Some("twice"), "fail:twice").await?;
    env.send(None, "fail:twice-without-id").await?;
    let consumer: jetstream::consumer::PullConsumer =
        env.js.get_stream("CMD").await?.get_consumer(CONSUMER).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut batch = consumer.batch().max_messages(2).expires(Duration::from_secs(5)).messages().await?;
    for _ in 0..2 {
        let msg = batch
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("not delivered"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let delivery = Delivery::of(&msg, info.stream_sequence, 1, CONSUMER);
        for _ in 0..2 {
            souk_topologies::runtime::dead_letter(&env.publisher, &msg, &delivery, "refused: bad").await?;
        }
    }
    souk_testkit::eventually(Duration::from_secs(10), || async { env.idle().await.then_some(()) }).await?;
    assert_eq!(env.dead_letter_bodies().await?, ["fail:twice", "fail:twice-without-id"]);
    Ok(())
}
