//! Dead letters and replays on the shipped topology (`marketplace.toml`): their ids
//! survive re-created streams, a failed dead-letter publish is retried in place, and a
//! dead letter keeps the real last error.

use async_nats::{HeaderMap, jetstream};
use futures::{FutureExt, future::BoxFuture};
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
    js: jetstream::Context,
    publisher: Publisher,
    topology: Topology,
}

async fn shipped_env() -> anyhow::Result<Shipped> {
    let nats = souk_testkit::NatsServer::start().await?;
    let client = nats.client().await?;
    let js = jetstream::new(client.clone());
    let topology = shipped()?;
    souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
    let publisher = Publisher::new(client.clone(), Duration::from_secs(2));
    Ok(Shipped { _nats: nats, js, publisher, topology })
}

impl Shipped {
    async fn start(&self, handler: impl Handler) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
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
        match self.js.get_stream("CMD").await {
            Ok(s) => matches!(s.consumer_info(CONSUMER).await,
                Ok(i) if i.num_pending == 0 && i.num_ack_pending == 0 && i.delivered.stream_sequence > 0),
            Err(_) => false,
        }
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
            if first && body.starts_with("fail") { Outcome::fail(format!("cannot take {body}")) } else { Outcome::Ack }
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
