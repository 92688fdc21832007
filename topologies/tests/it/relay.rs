//! The relay over an in-memory outbox (the Postgres outbox is tested in souk-stores).

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::outbox::{Outbox, OutboxMessage};
use souk_topologies::relay::{Relay, RelayOptions};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::env;

#[derive(Debug, thiserror::Error)]
#[error("store down")]
struct Down;

#[derive(Clone, Default)]
struct MemOutbox {
    rows: Arc<Mutex<Vec<(OutboxMessage, bool)>>>,
    /// Fail this many mark_published calls (a crash between publish and mark).
    fail_marks: Arc<Mutex<u32>>,
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
    fn pending(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxMessage>, Down>> {
        let rows = self.rows.lock().expect("lock");
        let out = rows.iter().filter(|(_, p)| !p).take(limit as usize).map(|(m, _)| m.clone()).collect();
        async move { Ok(out) }.boxed()
    }
    fn mark_published<'a>(&'a self, ids: &'a [uuid::Uuid]) -> BoxFuture<'a, Result<(), Down>> {
        let result = {
            let mut fail = self.fail_marks.lock().expect("lock");
            if *fail > 0 {
                *fail -= 1;
                Err(Down)
            } else {
                for (m, p) in self.rows.lock().expect("lock").iter_mut() {
                    if ids.contains(&m.id) {
                        *p = true;
                    }
                }
                Ok(())
            }
        };
        async move { result }.boxed()
    }
    fn wait_for_new(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        tokio::time::sleep(timeout.min(Duration::from_millis(20))).boxed()
    }
    fn try_lease(&self) -> BoxFuture<'_, Result<bool, Down>> {
        async { Ok(true) }.boxed()
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
