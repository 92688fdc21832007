use futures::future::join_all;
use souk_topologies::{
    Error,
    batcher::BatchOptions,
    group_commit::{GroupCommitOptions, GroupCommitter},
    publisher::Publisher,
};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::{env, msg, stream_messages};

#[tokio::test]
async fn atomic_batch_is_stored_whole_with_consecutive_sequences() -> anyhow::Result<()> {
    let env = env().await?;
    let batch: Vec<_> = (0..100).map(|i| msg("souk.cmd.test.other", &format!("m{i}"), "x")).collect();
    let acks = env.publisher.publish_atomic(&batch).await?;
    assert_eq!(acks.len(), 100);
    assert!(acks.windows(2).all(|w| w[1].sequence == w[0].sequence + 1));
    assert_eq!(stream_messages(&env.js, "CMD").await?, 100);
    Ok(())
}

#[tokio::test]
async fn a_batch_with_a_seen_id_falls_back_to_single_publishes_and_dedupes() -> anyhow::Result<()> {
    let env = env().await?;
    env.publisher.publish(msg("souk.cmd.test.other", "seen", "x")).await?;
    let batch = vec![
        msg("souk.cmd.test.other", "new-1", "x"),
        msg("souk.cmd.test.other", "seen", "x"),
        msg("souk.cmd.test.other", "new-2", "x"),
    ];
    // The atomic path alone is rejected whole (err_code 10201)…
    match env.publisher.publish_atomic(&batch).await {
        Err(Error::JetStream { code: 10201, .. }) => {}
        other => panic!("expected 10201, got {other:?}"),
    }
    assert_eq!(stream_messages(&env.js, "CMD").await?, 1, "a rejected batch stores nothing");
    // …and publish_all recovers message by message.
    let results = env.publisher.publish_all(&batch).await;
    let dup: Vec<bool> = results.iter().map(|r| r.as_ref().map(|a| a.duplicate).unwrap_or(false)).collect();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(dup, [false, true, false]);
    assert_eq!(stream_messages(&env.js, "CMD").await?, 3);
    Ok(())
}

/// How many of 50 concurrent calls through a committer with `singles_below` were
/// stored as part of an atomic batch. (JetStream keeps the batch headers on every
/// message of a batch but its last, the commit.)
async fn batched_of_fifty(env: &crate::Env, singles_below: usize, prefix: &str) -> anyhow::Result<usize> {
    let cancel = CancellationToken::new();
    let batch = BatchOptions { max_in_flight: 1, ..Default::default() };
    let (committer, tasks) = GroupCommitter::spawn(
        env.publisher.clone(),
        GroupCommitOptions { singles_below, batch },
        cancel.clone(),
    );
    let calls = (0..50).map(|i| {
        let committer = committer.clone();
        async move { committer.publish(msg("souk.cmd.test.other", &format!("{prefix}-{i}"), "x")).await }
    });
    let acks: Vec<_> = join_all(calls).await.into_iter().collect::<Result<_, _>>()?;
    let stream = env.js.get_stream("CMD").await?;
    let mut batched = 0;
    for a in &acks {
        batched +=
            usize::from(stream.get_raw_message(a.sequence).await?.headers.get("Nats-Batch-Id").is_some());
    }
    cancel.cancel();
    tasks.wait().await;
    Ok(batched)
}

#[tokio::test]
async fn small_group_commits_go_as_single_publishes_and_large_ones_as_atomic_batches() -> anyhow::Result<()> {
    let env = env().await?;
    // 50 calls at once queue together: at most 50 per batch, and most of them in one.
    assert_eq!(batched_of_fifty(&env, 100, "small").await?, 0, "batches below 100: single publishes");
    assert!(batched_of_fifty(&env, 5, "large").await? >= 5, "batches of 5 or more: atomic");
    assert_eq!(stream_messages(&env.js, "CMD").await?, 100);
    Ok(())
}

#[tokio::test]
async fn group_commit_coalesces_concurrent_callers_and_equal_ids() -> anyhow::Result<()> {
    for singles_below in [0, usize::MAX] {
        coalesces(singles_below).await?;
    }
    Ok(())
}

/// With every batch atomic (0), or every batch as single publishes (`usize::MAX`).
async fn coalesces(singles_below: usize) -> anyhow::Result<()> {
    let env = env().await?;
    let cancel = CancellationToken::new();
    let options = GroupCommitOptions { singles_below, ..Default::default() };
    let (committer, tasks) = GroupCommitter::spawn(env.publisher.clone(), options, cancel.clone());
    // 150 distinct ids plus 50 retries of one id, all at once.
    let calls = (0..200).map(|i| {
        let committer = committer.clone();
        let id = if i < 150 { format!("id-{i}") } else { "retried".to_owned() };
        async move { committer.publish(msg("souk.cmd.test.other", &id, "x")).await }
    });
    let results = join_all(calls).await;
    assert!(results.iter().all(Result::is_ok), "{:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(stream_messages(&env.js, "CMD").await?, 151);
    let retried: std::collections::HashSet<u64> =
        results[150..].iter().filter_map(|r| r.as_ref().ok().map(|a| a.sequence)).collect();
    assert_eq!(retried.len(), 1, "every retry of one id gets the one stored message");
    cancel.cancel();
    tasks.wait().await;
    Ok(())
}

#[tokio::test]
async fn publishing_with_the_server_down_fails_fast() -> anyhow::Result<()> {
    let mut env = env().await?;
    let publisher = Publisher::new(env.client.clone(), Duration::from_millis(500));
    env.nats.kill().await?;
    let started = Instant::now();
    let single = publisher.publish(msg("souk.cmd.test.other", "a", "x")).await;
    let batch = publisher.publish_atomic(&[msg("souk.cmd.test.other", "b", "x")]).await;
    assert!(single.is_err() && batch.is_err());
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    Ok(())
}

/// The relay's order: when a batch falls back to one-by-one publishing (it held an id
/// JetStream had seen), each message waits for the one before, and the first failure
/// stops the rest, so nothing later is stored before it (it is retried, then the rest).
#[tokio::test]
async fn the_in_order_fallback_stops_at_the_first_failure() -> anyhow::Result<()> {
    let env = env().await?;
    env.publisher.publish(msg("souk.cmd.test.other", "seen", "x")).await?;
    let mut failing = msg("souk.cmd.test.other", "new-1", "x");
    failing.headers.insert("Nats-Expected-Last-Sequence", "999");
    let batch =
        vec![msg("souk.cmd.test.other", "seen", "x"), failing, msg("souk.cmd.test.other", "new-2", "x")];
    let results = env.publisher.publish_in_order(&batch).await;
    assert!(results[0].as_ref().is_ok_and(|a| a.duplicate), "fell back: {results:?}");
    assert!(results[1].is_err(), "{results:?}");
    assert_eq!(results.len(), 2, "the third was not sent: {results:?}");
    assert_eq!(stream_messages(&env.js, "CMD").await?, 1, "nothing stored past the failure");
    Ok(())
}

/// One-by-one publishing is bounded as a whole by the ack timeout, not per message: an
/// unresponsive server costs one timeout, not one per message.
#[tokio::test]
async fn publishing_one_by_one_gives_up_after_one_ack_timeout_in_all() -> anyhow::Result<()> {
    let env = env().await?;
    // A subscriber that swallows the publishes: JetStream never acks them.
    let _black_hole = env.client.subscribe("souk.hole.>").await?;
    env.client.flush().await?;
    let timeout = Duration::from_millis(400);
    let publisher = Publisher::new(env.client.clone(), timeout);
    let msgs: Vec<_> = (0..20).map(|i| msg("souk.hole.x", &format!("h-{i}"), "x")).collect();
    let started = Instant::now();
    let results = publisher.publish_each(&msgs).await;
    let took = started.elapsed();
    assert!(results.iter().all(|r| matches!(r, Err(Error::AckTimeout(_)))), "{results:?}");
    // Per-message timeouts would take 20 × 400 ms = 8 s.
    assert!(took < timeout * 8, "took {took:?}");
    Ok(())
}

/// Group commit with the server down: every caller is answered within its ack timeout
/// (a single publish waits for an ack that never comes, bounded by its deadline, and
/// frees its batch slot), and once the server is back the committer publishes again —
/// no slot is lost to the outage. One caller at a time: each call is a batch of one, a
/// single publish, and more of them than there are slots.
#[tokio::test]
async fn group_commit_with_the_server_down_fails_fast_and_recovers() -> anyhow::Result<()> {
    let mut env = env().await?;
    let timeout = Duration::from_millis(500);
    let cancel = CancellationToken::new();
    let (committer, tasks) = GroupCommitter::spawn(
        Publisher::new(env.client.clone(), timeout),
        GroupCommitOptions::default(),
        cancel.clone(),
    );
    let publish = |id: String| {
        let committer = committer.clone();
        async move {
            tokio::time::timeout(timeout * 4, committer.publish(msg("souk.cmd.test.other", &id, "x")))
                .await
                .map_err(|_| anyhow::anyhow!("{id}: not answered within its ack timeout"))
        }
    };
    env.nats.kill().await?;
    for i in 0..40 {
        let result = publish(format!("down-{i}")).await?;
        assert!(result.is_err(), "stored with the server down: {result:?}");
    }
    env.nats.restart().await?;
    souk_testkit::eventually(
        Duration::from_secs(20),
        || async move { publish("up-0".into()).await.ok()?.ok() },
    )
    .await?;
    for i in 1..40 {
        publish(format!("up-{i}")).await??;
    }
    cancel.cancel();
    tasks.wait().await;
    Ok(())
}
