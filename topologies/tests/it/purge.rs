//! `purge-acked` streams: handled commands are removed in bulk, never one still needed.

use async_nats::jetstream::{
    self, AckKind,
    consumer::PullConsumer,
    stream::{RawMessageError, RawMessageErrorKind, Stream},
};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use souk_topologies::{
    Topology,
    purge::{NextMessage, Store, purge_acked, purge_acked_with, safe_floor},
    runtime::{Delivery, Handler, Outcome, Registry, Runtime},
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{Env, edited, env_of, env_with, msg, stream_messages};

/// The shipped shape: limits retention, purge-acked, discard new.
const PURGED: &str = r#"
[[stream]]
name = "CMD"
subjects = ["souk.cmd.test.work", "souk.cmd.test.other"]
retention = "limits"
purge-acked = true
discard = "new"
allow-atomic = true

[[stream]]
name = "DLQ"
subjects = ["souk.dlq.>"]
retention = "limits"

[[consumer]]
name = "work"
stream = "CMD"
filter-subjects = ["souk.cmd.test.work"]
ack-wait = "30s"
max-deliver = 3
max-ack-pending = 1000

[[consumer]]
name = "other"
stream = "CMD"
filter-subjects = ["souk.cmd.test.other"]
ack-wait = "30s"
max-deliver = 3
max-ack-pending = 1000

[[pool]]
name = "work"
consumer = "work"
handler = "ack"
concurrency = 8
fetch-batch = 8
handler-timeout = "10s"
"#;

const WORK: &str = "souk.cmd.test.work";
const OTHER: &str = "souk.cmd.test.other";

async fn publish_n(env: &Env, subject: &str, prefix: &str, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        env.publisher.publish(msg(subject, &format!("{prefix}-{i}"), "x")).await?;
    }
    Ok(())
}

async fn consumer(env: &Env, name: &str) -> anyhow::Result<PullConsumer> {
    env.js.get_stream("CMD").await?.get_consumer(name).await.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn fetch(c: &PullConsumer, n: usize) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = c.fetch().max_messages(n).expires(Duration::from_secs(2)).messages().await?;
    let mut out = Vec::new();
    while let Some(m) = batch.next().await {
        out.push(m.map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    anyhow::ensure!(out.len() == n, "fetched {} of {n}", out.len());
    Ok(out)
}

async fn ack_all(msgs: &[jetstream::Message]) -> anyhow::Result<()> {
    for m in msgs {
        m.double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(())
}

#[tokio::test]
async fn purges_only_below_every_consumers_ack_floor() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    publish_n(&env, WORK, "w", 6).await?; // seqs 1..=6
    publish_n(&env, OTHER, "o", 2).await?; // seqs 7, 8
    assert_eq!(safe_floor(&env.js, "CMD").await?, None, "nothing handled yet");
    assert_eq!(purge_acked(&env.js, "CMD").await?, 0);

    let work = consumer(&env, "work").await?;
    let taken = fetch(&work, 6).await?;
    // 1, 2, 3 acked; 5 acked out of order; 4 still running; 6 retried later.
    ack_all(&taken[..3]).await?;
    taken[4].double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    taken[5]
        .ack_with(AckKind::Nak(Some(Duration::from_secs(60))))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // "other" has handled nothing, but its first command is 7, so it holds the floor at
    // 6; "work" holds it at 3.
    assert_eq!(safe_floor(&env.js, "CMD").await?, Some(3));
    assert_eq!(purge_acked(&env.js, "CMD").await?, 3);
    assert_eq!(stream_messages(&env.js, "CMD").await?, 5, "4 (running), 5, 6 (retrying), 7, 8 kept");
    assert_eq!(purge_acked(&env.js, "CMD").await?, 0, "a second round removes nothing more");

    let other = consumer(&env, "other").await?;
    ack_all(&fetch(&other, 2).await?).await?;
    // "other" has handled all of its own; "work" still holds the floor at 3.
    assert_eq!(safe_floor(&env.js, "CMD").await?, Some(3));

    // 4 finishes: the floor moves to 5; 6 is still waiting for its retry.
    taken[3].double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(purge_acked(&env.js, "CMD").await?, 2);
    let info = env.js.get_stream("CMD").await?.info().await?.state.clone();
    assert_eq!((info.first_sequence, info.messages), (6, 3), "the retried command is still there");

    // The retried command is handled too: nothing of either filter is left, so
    // everything goes.
    taken[5].double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(purge_acked(&env.js, "CMD").await?, 3);
    assert_eq!(stream_messages(&env.js, "CMD").await?, 0);
    Ok(())
}

/// `souk_stream_purged_messages_total` counts what the purges removed, per stream.
#[tokio::test]
async fn a_purge_counts_what_it_removed() -> anyhow::Result<()> {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    // The test runs on one thread, the purge's own included.
    let _local = metrics::set_default_local_recorder(&recorder);
    let env = env_with(PURGED).await?;
    publish_n(&env, WORK, "w", 3).await?;
    ack_all(&fetch(&consumer(&env, "work").await?, 3).await?).await?;
    assert_eq!(purge_acked(&env.js, "CMD").await?, 3);
    assert_eq!(purge_acked(&env.js, "CMD").await?, 0);
    let text = metrics.render();
    assert!(text.contains(r#"souk_stream_purged_messages_total{stream="CMD"} 3"#), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_consumer_outside_the_topology_also_holds_the_floor() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    publish_n(&env, WORK, "w", 4).await?;
    let stream = env.js.get_stream("CMD").await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("audit".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    ack_all(&fetch(&consumer(&env, "work").await?, 4).await?).await?;
    // "other" has nothing to do (nothing of its subject exists) but "audit" has read nothing.
    assert_eq!(purge_acked(&env.js, "CMD").await?, 0);
    ack_all(&fetch(&consumer(&env, "audit").await?, 2).await?).await?;
    assert_eq!(purge_acked(&env.js, "CMD").await?, 2);
    assert_eq!(stream_messages(&env.js, "CMD").await?, 2);
    Ok(())
}

/// A command no consumer takes (here its consumer was deleted by hand) has been handled
/// by nobody, so no purge may remove it, however far the other consumers have got.
#[tokio::test]
async fn a_command_no_consumer_takes_is_never_purged() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    env.js.get_stream("CMD").await?.delete_consumer("other").await?;
    publish_n(&env, WORK, "a", 2).await?; // 1, 2
    publish_n(&env, OTHER, "o", 1).await?; // 3: nobody takes it now
    publish_n(&env, WORK, "b", 2).await?; // 4, 5
    ack_all(&fetch(&consumer(&env, "work").await?, 4).await?).await?;
    // "work" is idle at the stream's end, but 3 is unhandled.
    let refused = purge_acked(&env.js, "CMD").await.expect_err("must refuse").to_string();
    assert!(refused.contains("souk.cmd.test.other"), "{refused}");
    assert!(safe_floor(&env.js, "CMD").await.is_err());
    assert_eq!(stream_messages(&env.js, "CMD").await?, 5, "nothing removed");

    // Once the consumer is back (apply recreates it) and has handled 3, all 5 can go.
    souk_topologies::apply::apply(&env.js, &env.topology, souk_topologies::apply::Mode::Apply).await?;
    let other = consumer(&env, "other").await?;
    ack_all(&fetch(&other, 1).await?).await?;
    assert_eq!(purge_acked(&env.js, "CMD").await?, 5);
    Ok(())
}

/// A consumer without acks (a viewer, `nats stream view`'s ordered consumer) has not
/// handled anything, so it takes no subject: with the real consumer gone, nothing goes.
#[tokio::test]
async fn a_viewer_without_acks_does_not_count_as_taking_commands() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    publish_n(&env, OTHER, "o", 2).await?;
    let stream = env.js.get_stream("CMD").await?;
    stream.delete_consumer("other").await?;
    let viewer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("viewer".into()),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    fetch(&viewer, 2).await?;
    let refused = purge_acked(&env.js, "CMD").await.expect_err("must refuse").to_string();
    assert!(refused.contains("souk.cmd.test.other"), "{refused}");
    assert_eq!(stream_messages(&env.js, "CMD").await?, 2);
    Ok(())
}

#[tokio::test]
async fn a_stream_without_consumers_is_never_purged() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    let stream = env.js.get_stream("CMD").await?;
    stream.delete_consumer("work").await?;
    stream.delete_consumer("other").await?;
    publish_n(&env, WORK, "w", 3).await?;
    assert!(safe_floor(&env.js, "CMD").await.is_err());
    assert!(purge_acked(&env.js, "CMD").await.is_err());
    assert_eq!(stream_messages(&env.js, "CMD").await?, 3);
    Ok(())
}

/// The real store, except that lookups on `subject` fail with `error` (what async-nats
/// returns for a request that timed out or a JetStream error answer).
struct FailingOn {
    subject: &'static str,
    error: fn() -> RawMessageError,
}

impl NextMessage for FailingOn {
    fn first_at_or_after<'a>(
        &'a self,
        stream: &'a Stream,
        subject: &'a str,
        from: u64,
    ) -> BoxFuture<'a, Result<u64, RawMessageError>> {
        if subject == self.subject {
            let error = (self.error)();
            return async move { Err(error) }.boxed();
        }
        Store.first_at_or_after(stream, subject, from)
    }
}

/// A lookup that fails (a timeout, JetStream temporarily unavailable) is not "no message
/// there": taken as such, the idle consumer's floor would be the stream's end and its
/// undelivered commands would be purged. The round fails instead and removes nothing.
#[tokio::test]
async fn a_failed_next_message_lookup_purges_nothing() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    publish_n(&env, WORK, "w", 5).await?; // 1..=5, never delivered
    publish_n(&env, OTHER, "o", 1).await?; // 6
    let timed_out: fn() -> RawMessageError = || RawMessageError::new(RawMessageErrorKind::Other);
    let unavailable: fn() -> RawMessageError = || {
        let answer =
            r#"{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}"#;
        RawMessageError::new(RawMessageErrorKind::JetStream(
            serde_json::from_str(answer).expect("error json"),
        ))
    };
    for error in [timed_out, unavailable] {
        let failing = FailingOn { subject: WORK, error };
        let e =
            purge_acked_with(&env.js, "CMD", &failing).await.expect_err("the round must fail").to_string();
        assert!(e.contains(WORK), "{e}");
        assert_eq!(stream_messages(&env.js, "CMD").await?, 6, "nothing removed");
    }
    // The same round with the store answering: "work" has handled nothing, nothing goes.
    assert_eq!(purge_acked(&env.js, "CMD").await?, 0);
    assert_eq!(stream_messages(&env.js, "CMD").await?, 6);
    Ok(())
}

struct AckAll;

impl Handler for AckAll {
    /// Acks everything but a `fail` body, which is dead-lettered (and so terminated).
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move { if &d.payload[..] == b"fail" { Outcome::fail("poison", "poison") } else { Outcome::Ack } }.boxed()
    }
}

#[tokio::test]
async fn the_runtime_purges_what_its_pools_handled() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    let mut registry = Registry::default();
    registry.register("ack", AckAll);
    let runtime = Runtime::build(&env.publisher, &env.topology, &registry, &[]).await?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn(runtime.run(cancel.clone()));
    // "other" must not hold the floor back: it has nothing to do, so it is idle.
    publish_n(&env, WORK, "w", 25).await?;
    // A dead-lettered command is terminated: settled like an acked one, so purged too.
    env.publisher.publish(msg(WORK, "poison", "fail")).await?;
    publish_n(&env, WORK, "v", 24).await?;
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (stream_messages(&env.js, "CMD").await.ok()? == 0).then_some(())
    })
    .await?;
    let state = env.js.get_stream("CMD").await?.info().await?.state.clone();
    assert_eq!(state.last_sequence, 50, "all 50 were stored, then purged");
    assert_eq!(stream_messages(&env.js, "DLQ").await?, 1, "the poison command is kept as a dead letter");
    cancel.cancel();
    running.await?;
    Ok(())
}

#[tokio::test]
async fn a_full_stream_refuses_new_commands_instead_of_dropping_old_ones() -> anyhow::Result<()> {
    let mut topology = Topology::parse(PURGED)?;
    topology.streams[0].max_bytes = 1024;
    let env = env_of(topology).await?;
    let mut refused = None;
    for i in 0..100 {
        if let Err(e) = env.publisher.publish(msg(WORK, &format!("w-{i}"), &"x".repeat(100))).await {
            refused = Some((i, e));
            break;
        }
    }
    let (stored, error) = refused.ok_or_else(|| anyhow::anyhow!("a 1 KiB stream took 100 messages"))?;
    assert!(stored > 0, "{error}");
    let state = env.js.get_stream("CMD").await?.info().await?.state.clone();
    assert_eq!((state.first_sequence, state.messages), (1, stored as u64), "the oldest is still there");
    Ok(())
}

/// Review (twelfth session): one delivery held for hours (a capture waiting out its
/// provider's outage, a paused pool) held the stream's floor, so nothing the other
/// consumers handled above it was purged; the `discard = "new"` stream filled and
/// refused every new command. Once crowded, each subject is purged below its own
/// consumers' floor — and the held command is never among what goes.
#[tokio::test]
async fn a_command_held_for_hours_does_not_fill_the_stream_behind_it() -> anyhow::Result<()> {
    let mut topology = Topology::parse(PURGED)?;
    topology.streams[0].max_bytes = 64 * 1024;
    let env = env_of(topology).await?;
    env.publisher.publish(msg(OTHER, "held", "capture")).await?; // seq 1
    let other = consumer(&env, "other").await?;
    let held = fetch(&other, 1).await?; // delivered, never acknowledged
    let work = consumer(&env, "work").await?;
    let payload = "x".repeat(100);
    // 2,000 commands of ~200 bytes stored: several times what the stream can hold.
    for round in 0..40 {
        for i in 0..50 {
            env.publisher
                .publish(msg(WORK, &format!("w-{round}-{i}"), &payload))
                .await
                .map_err(|e| anyhow::anyhow!("round {round}, command {i} refused: {e}"))?;
        }
        ack_all(&fetch(&work, 50).await?).await?;
        purge_acked(&env.js, "CMD").await?;
    }
    let stream = env.js.get_stream("CMD").await?;
    let held_still = stream.get_raw_message(1).await?;
    assert_eq!(held_still.payload.as_ref(), b"capture", "the held command is kept");
    assert_eq!(stream_messages(&env.js, "CMD").await?, 1, "everything handled is gone");
    assert_eq!(safe_floor(&env.js, "CMD").await?, None, "the stream's floor is still held");
    held[0].double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    purge_acked(&env.js, "CMD").await?;
    assert_eq!(stream_messages(&env.js, "CMD").await?, 0);
    Ok(())
}

/// Review of the first version: by nats-server's source, a filtered purge of one filter
/// of a consumer with two moves that consumer on to the first message of the purged
/// subject left — past a command of its other filter stored before it, never delivered
/// (then purged as handled). 2.15.1 kept the consumer's place here even with the first
/// version, so this guards the behaviour rather than reproducing the fault: a
/// consumer's subjects are purged together, by one subject that covers them.
#[tokio::test]
async fn a_crowded_purge_never_moves_a_consumer_past_its_other_filters() -> anyhow::Result<()> {
    let multi = edited(
        &edited(
            PURGED,
            r#"subjects = ["souk.cmd.test.work", "souk.cmd.test.other"]"#,
            r#"subjects = ["souk.cmd.test.work.a", "souk.cmd.test.work.b", "souk.cmd.test.other"]"#,
        ),
        r#"filter-subjects = ["souk.cmd.test.work"]"#,
        r#"filter-subjects = ["souk.cmd.test.work.a", "souk.cmd.test.work.b"]"#,
    );
    let mut topology = Topology::parse(&multi)?;
    topology.streams[0].max_bytes = 600; // four small commands make it crowded
    let env = env_of(topology).await?;
    env.publisher.publish(msg(OTHER, "held", "capture")).await?; // seq 1
    let held = fetch(&consumer(&env, "other").await?, 1).await?;
    let work = consumer(&env, "work").await?;
    env.publisher.publish(msg("souk.cmd.test.work.a", "a0", "a0")).await?; // seq 2
    ack_all(&fetch(&work, 1).await?).await?;
    env.publisher.publish(msg("souk.cmd.test.work.b", "b1", "b1")).await?; // seq 3, not yet delivered
    env.publisher.publish(msg("souk.cmd.test.work.a", "a2", "a2")).await?; // seq 4
    assert_eq!(purge_acked(&env.js, "CMD").await?, 1, "the handled a0 goes");
    let next: Vec<String> =
        fetch(&work, 2).await?.iter().map(|m| String::from_utf8_lossy(&m.payload).into_owned()).collect();
    assert_eq!(next, ["b1", "a2"], "nothing skipped");
    held[0].double_ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[test]
fn validation_keeps_commands_to_one_handler() {
    let overlapping = edited(
        PURGED,
        r#"filter-subjects = ["souk.cmd.test.other"]"#,
        r#"filter-subjects = ["souk.cmd.test.*"]"#,
    );
    let e = Topology::parse(&overlapping).expect_err("overlap").to_string();
    assert!(e.contains("both take"), "{e}");
    let unfiltered = edited(PURGED, r#"filter-subjects = ["souk.cmd.test.other"]"#, "filter-subjects = []");
    let e = Topology::parse(&unfiltered).expect_err("takes all").to_string();
    assert!(e.contains("not its only consumer"), "{e}");
    let on_work_queue = edited(
        PURGED,
        r#"retention = "limits"
purge-acked"#,
        r#"retention = "work-queue"
purge-acked"#,
    );
    let e = Topology::parse(&on_work_queue).expect_err("purge needs limits").to_string();
    assert!(e.contains("purge-acked needs"), "{e}");
    let wider_than_its_consumers = edited(
        PURGED,
        r#"subjects = ["souk.cmd.test.work", "souk.cmd.test.other"]"#,
        r#"subjects = ["souk.cmd.>"]"#,
    );
    let e = Topology::parse(&wider_than_its_consumers).expect_err("untaken subject").to_string();
    assert!(e.contains("no consumer takes souk.cmd.>"), "{e}");
}

/// A consumer keeps its place in the stream when its filter widens, so commands on a
/// new subject stored before the change would never reach it. Apply refuses, and says
/// to declare a new consumer; nothing is changed.
#[tokio::test]
async fn apply_refuses_to_widen_a_consumer_of_commands() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    let mut topology = env.topology.clone();
    topology.streams[0].subjects.push("souk.cmd.test.extra".into());
    topology.consumers[0].filter_subjects.push("souk.cmd.test.extra".into());
    let err = souk_topologies::apply::apply(&env.js, &topology, souk_topologies::apply::Mode::Apply)
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(err.contains("consumer work") && err.contains("souk.cmd.test.extra"), "{err}");
    assert!(err.contains("new consumer"), "{err}");
    let live = consumer(&env, "work").await?.cached_info().config.filter_subjects.clone();
    assert_eq!(live, ["souk.cmd.test.work"], "unchanged");
    Ok(())
}

/// A consumer made by hand without acks cannot become the declared one in place: apply
/// says so instead of reporting it unchanged (its floor would pass what it never handled).
#[tokio::test]
async fn apply_refuses_a_consumer_without_acks_in_place_of_a_declared_one() -> anyhow::Result<()> {
    let env = env_with(PURGED).await?;
    let stream = env.js.get_stream("CMD").await?;
    stream.delete_consumer("other").await?;
    stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("other".into()),
            filter_subject: OTHER.into(),
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?;
    let report =
        souk_topologies::apply::apply(&env.js, &env.topology, souk_topologies::apply::Mode::Check).await?;
    assert!(!report.in_sync(), "{report}");
    let err = souk_topologies::apply::apply(&env.js, &env.topology, souk_topologies::apply::Mode::Apply)
        .await
        .expect_err("must refuse")
        .to_string();
    assert!(err.contains("ack policy"), "{err}");
    Ok(())
}
