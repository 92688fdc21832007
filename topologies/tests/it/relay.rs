//! The relay over an in-memory outbox (the Postgres outbox is tested in souk-stores).

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::outbox::{Outbox, OutboxMessage, Published};
use souk_topologies::relay::{Relay, RelayOptions};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use crate::env;

#[derive(Debug, thiserror::Error)]
#[error("store down")]
struct Down;

#[derive(Clone, Default)]
struct MemOutbox {
    rows: Arc<Mutex<Vec<(OutboxMessage, bool)>>>,
    /// Fail this many mark_published calls (a crash between publish and mark).
    fail_marks: Arc<Mutex<u32>>,
    /// Another relay holds the lease.
    standby: Arc<AtomicBool>,
    lease_tries: Arc<AtomicUsize>,
    waits: Arc<AtomicUsize>,
    /// `pending` never answers (a hung connection).
    hang: Arc<AtomicBool>,
    reads: Arc<AtomicUsize>,
    /// `mark_published` calls that marked rows (one per publish the relay made).
    marks: Arc<AtomicUsize>,
    /// How long recording a row's failure takes (a round trip to Postgres).
    failure_delay: Arc<Mutex<Duration>>,
}

impl MemOutbox {
    fn push(&self, aggregate: &str, subject: &str, body: &str) {
        let mut rows = self.rows.lock().expect("lock");
        let seq = rows.len() as i64 + 1;
        rows.push((
            OutboxMessage {
                id: uuid::Uuid::now_v7(),
                seq,
                aggregate_id: aggregate.into(),
                subject: subject.into(),
                headers: vec![("souk-schema".into(), "test/v1".into())],
                payload: body.as_bytes().to_vec(),
            },
            false,
        ));
    }
    fn unpublished(&self) -> usize {
        self.rows.lock().expect("lock").iter().filter(|(_, p)| !p).count()
    }
}

impl Outbox for MemOutbox {
    type Error = Down;
    fn pending<'a>(
        &'a self,
        limit: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<OutboxMessage>, Down>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if self.hang.load(Ordering::SeqCst) {
            return futures::future::pending().boxed();
        }
        let rows = self.rows.lock().expect("lock");
        let out = rows
            .iter()
            .filter(|(m, p)| !p && !skip.contains(&m.aggregate_id))
            .take(limit as usize)
            .map(|(m, _)| m.clone())
            .collect();
        async move { Ok(out) }.boxed()
    }
    fn mark_published<'a>(&'a self, published: &'a [Published]) -> BoxFuture<'a, Result<(), Down>> {
        let result = {
            let mut fail = self.fail_marks.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                Err(Down)
            } else {
                self.marks.fetch_add(1, Ordering::SeqCst);
                for (m, p) in self.rows.lock().expect("lock").iter_mut() {
                    if published.iter().any(|p| p.id == m.id) {
                        *p = true;
                    }
                }
                Ok(())
            }
        };
        async move { result }.boxed()
    }
    fn wait_for_new(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        self.waits.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(timeout.min(Duration::from_millis(20))).boxed()
    }
    fn record_failure<'a>(&'a self, _id: uuid::Uuid, _error: &'a str) -> BoxFuture<'a, Result<u32, Down>> {
        // Never parks: these tests are about order and failures that pass.
        let delay = *self.failure_delay.lock().expect("lock");
        async move {
            tokio::time::sleep(delay).await;
            Ok(1)
        }
        .boxed()
    }
    fn park<'a>(&'a self, _id: uuid::Uuid, _error: &'a str) -> BoxFuture<'a, Result<u64, Down>> {
        async move { Ok(0) }.boxed()
    }
    fn parked_count(&self) -> BoxFuture<'_, Result<u64, Down>> {
        async move { Ok(0) }.boxed()
    }
    fn try_lease(&self) -> BoxFuture<'_, Result<bool, Down>> {
        self.lease_tries.fetch_add(1, Ordering::SeqCst);
        let leased = !self.standby.load(Ordering::SeqCst);
        async move { Ok(leased) }.boxed()
    }
}

async fn read_all(
    js: &async_nats::jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<(String, String)>> {
    let stream = js.get_stream(stream).await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await?;
        out.push((m.subject.to_string(), String::from_utf8(m.payload.to_vec())?));
    }
    Ok(out)
}

#[tokio::test]
async fn relay_publishes_in_outbox_order_across_streams_and_survives_a_failed_mark() -> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    outbox.push("a", "souk.evt.test.one", "a1");
    outbox.push("a", "souk.cmd.test.other", "a2");
    outbox.push("b", "souk.evt.test.one", "b1");
    outbox.push("a", "souk.evt.test.one", "a3");
    *outbox.fail_marks.lock().expect("lock") = 1;

    let mut relay = Relay::new(outbox.clone(), env.publisher.clone(), RelayOptions::default());
    let mut leased = false;
    // First round: published, but marking fails (as if the relay crashed here).
    assert!(relay.round(&mut leased).await.is_err());
    assert_eq!(outbox.unpublished(), 4);
    // Second round republishes the same ids: JetStream drops the duplicates.
    let mut relay = Relay::new(outbox.clone(), env.publisher.clone(), RelayOptions::default());
    relay.round(&mut leased).await?;
    assert_eq!(outbox.unpublished(), 0);

    let evt: Vec<_> = read_all(&env.js, "EVT").await?.into_iter().map(|(_, b)| b).collect();
    assert_eq!(evt, ["a1", "b1", "a3"], "per-stream order is outbox order, no duplicates");
    let cmd: Vec<_> = read_all(&env.js, "CMD").await?.into_iter().map(|(_, b)| b).collect();
    assert_eq!(cmd, ["a2"]);
    Ok(())
}

/// Every saga step commits a command and an event together, so the outbox alternates
/// between CMD and EVT rows. A round publishes them as one batch per stream (one
/// fsync and one mark each), not one batch per row: that capped the relay at a row
/// per fsync, and the checkout saga at ~13 checkouts/s. Order per aggregate and stream
/// stays outbox order.
#[tokio::test]
async fn a_round_of_alternating_streams_publishes_one_batch_per_stream_in_order() -> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    for i in 0..20 {
        let aggregate = format!("order-{}", i % 5);
        outbox.push(&aggregate, "souk.cmd.test.other", &format!("{aggregate} cmd {i}"));
        outbox.push(&aggregate, "souk.evt.test.one", &format!("{aggregate} evt {i}"));
    }
    let mut relay = Relay::new(outbox.clone(), env.publisher.clone(), RelayOptions::default());
    let mut leased = false;
    assert_eq!(relay.round(&mut leased).await?, 40);
    assert_eq!(outbox.unpublished(), 0);
    assert_eq!(outbox.marks.load(Ordering::SeqCst), 2, "one publish and one mark per stream");
    for (stream, kind) in [("CMD", "cmd"), ("EVT", "evt")] {
        let bodies: Vec<_> = read_all(&env.js, stream).await?.into_iter().map(|(_, b)| b).collect();
        let expected: Vec<_> = (0..20).map(|i| format!("order-{} {kind} {i}", i % 5)).collect();
        assert_eq!(bodies, expected, "{stream} in outbox order");
    }
    Ok(())
}

/// A standby (another process holds the lease) retries the lease on a clock, never on
/// outbox notifications: under load those come hundreds of times a second, and every
/// lease try opens a Postgres connection.
#[tokio::test]
async fn a_standby_retries_the_lease_on_a_clock_not_on_notifications() -> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    outbox.standby.store(true, Ordering::SeqCst);
    let options = RelayOptions { poll_interval: Duration::from_millis(5), ..Default::default() };
    let cancel = CancellationToken::new();
    let run = tokio::spawn(Relay::new(outbox.clone(), env.publisher.clone(), options).run(cancel.clone()));
    souk_testkit::eventually(Duration::from_secs(5), || async {
        (outbox.lease_tries.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    assert_eq!(outbox.waits.load(Ordering::SeqCst), 0, "a standby never waits on notifications");
    Ok(())
}

/// A round that hangs (a half-open connection, a stuck server) is cut off and retried,
/// so the relay neither stalls for good nor keeps shutdown waiting.
#[tokio::test]
async fn a_hung_round_is_cut_off_and_retried() -> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    outbox.hang.store(true, Ordering::SeqCst);
    let options = RelayOptions {
        round_timeout: Duration::from_millis(50),
        retry_pause: Duration::from_millis(5),
        ..Default::default()
    };
    let cancel = CancellationToken::new();
    let run = tokio::spawn(Relay::new(outbox.clone(), env.publisher.clone(), options).run(cancel.clone()));
    souk_testkit::eventually(Duration::from_secs(5), || async {
        (outbox.reads.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await?;
    // Unstuck, it publishes what is waiting.
    outbox.push("a", "souk.evt.test.one", "a1");
    outbox.hang.store(false, Ordering::SeqCst);
    souk_testkit::eventually(Duration::from_secs(5), || async { (outbox.unpublished() == 0).then_some(()) })
        .await?;
    cancel.cancel();
    run.await?;
    Ok(())
}

/// A stream's run of fewer than `singles_below` rows goes as single publishes, one
/// after the other's ack (an atomic batch costs nats-server a file store created and
/// deleted per batch); a longer run goes as one atomic batch. Both in outbox order.
#[tokio::test]
async fn a_short_run_goes_as_single_publishes_in_order_and_a_long_one_as_an_atomic_batch()
-> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    for i in 0..3 {
        outbox.push("short", "souk.cmd.test.other", &format!("cmd {i}"));
    }
    for i in 0..8 {
        outbox.push(&format!("long-{}", i % 2), "souk.evt.test.one", &format!("evt {i}"));
    }
    let options = RelayOptions { singles_below: 8, ..Default::default() };
    let mut relay = Relay::new(outbox.clone(), env.publisher.clone(), options);
    let mut leased = false;
    assert_eq!(relay.round(&mut leased).await?, 11);
    assert_eq!(outbox.unpublished(), 0);
    assert_eq!(outbox.marks.load(Ordering::SeqCst), 2, "still one mark per stream");
    // Every message of an atomic batch keeps its batch id; a single publish has none.
    let batched = |stream: &'static str| {
        let js = env.js.clone();
        async move {
            let stream = js.get_stream(stream).await?;
            let last = stream.get_info().await?.state.last_sequence;
            let mut out = Vec::new();
            for seq in 1..=last {
                let m = stream.get_raw_message(seq).await?;
                let batch = m.headers.get("Nats-Batch-Id").is_some();
                out.push((String::from_utf8(m.payload.to_vec())?, batch));
            }
            anyhow::Ok(out)
        }
    };
    let cmd = batched("CMD").await?;
    assert_eq!(cmd, [("cmd 0".into(), false), ("cmd 1".into(), false), ("cmd 2".into(), false)]);
    let evt = batched("EVT").await?;
    let expected: Vec<(String, bool)> = (0..8).map(|i| (format!("evt {i}"), true)).collect();
    assert_eq!(evt, expected, "one atomic batch, in outbox order");
    Ok(())
}

/// Rows that cannot be published yet (a subject no stream takes: a stream deleted and
/// not yet re-created, a release ahead of its topology) hold back their own aggregates
/// only. A full read's worth of them at the head of the outbox used to stop the relay:
/// every round read just them, published nothing, and the rows behind them — every
/// other order's — were never read, for as long as such rows kept coming faster than
/// they were parked (found in review).
#[tokio::test]
async fn a_full_read_of_rows_that_cannot_be_published_does_not_hold_back_the_rows_behind_them()
-> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    for i in 0..4 {
        outbox.push(&format!("n{i}"), &format!("souk.nowhere.{i}"), "stuck");
    }
    outbox.push("z", "souk.evt.test.one", "z1");
    let options = RelayOptions { batch: 4, ..RelayOptions::default() };
    let mut relay = Relay::new(outbox.clone(), env.publisher.clone(), options);
    let mut leased = false;
    // One round, however long ago the last one was (rounds come on notifications, or
    // on the poll when the shop is quiet).
    relay.round(&mut leased).await?;
    let evt: Vec<_> = read_all(&env.js, "EVT").await?.into_iter().map(|(_, b)| b).collect();
    assert_eq!(evt, ["z1"], "the row behind the stuck ones is published");
    assert_eq!(outbox.unpublished(), 4, "the stuck rows wait (to be parked after their grace)");
    Ok(())
}

/// The same, several reads deep, with each failure's record taking a while (a round
/// longer than the retry pause): every round still reads past the rows that cannot be
/// published (review of the first fix: it skipped them only within a retry pause of the
/// last full read, so a slow round, or a quiet shop's poll, read the same head again).
#[tokio::test]
async fn rows_several_reads_behind_unpublishable_ones_are_published_in_one_round() -> anyhow::Result<()> {
    let env = env().await?;
    let outbox = MemOutbox::default();
    for i in 0..12 {
        outbox.push(&format!("n{i}"), &format!("souk.nowhere.{i}"), "stuck");
    }
    outbox.push("z", "souk.evt.test.one", "z1");
    *outbox.failure_delay.lock().expect("lock") = Duration::from_millis(50);
    let options =
        RelayOptions { batch: 4, retry_pause: Duration::from_millis(100), ..RelayOptions::default() };
    let mut relay = Relay::new(outbox.clone(), env.publisher.clone(), options);
    let mut leased = false;
    relay.round(&mut leased).await?;
    let evt: Vec<_> = read_all(&env.js, "EVT").await?.into_iter().map(|(_, b)| b).collect();
    assert_eq!(evt, ["z1"]);
    // Later rounds (past the retry pause) read from the head again and still get by.
    outbox.push("y", "souk.evt.test.one", "y1");
    tokio::time::sleep(Duration::from_millis(150)).await;
    relay.round(&mut leased).await?;
    let evt: Vec<_> = read_all(&env.js, "EVT").await?.into_iter().map(|(_, b)| b).collect();
    assert_eq!(evt, ["z1", "y1"]);
    Ok(())
}
