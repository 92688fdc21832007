//! Event consumers apply each event once, even when the events stream holds it twice
//! (published again past the dedupe window: a relay that crashed, or lost its lease,
//! between publishing and marking).

use futures::{FutureExt, future::BoxFuture};
use souk_stores::postgres as pg;
use souk_testkit::{NatsServer, TestDb, eventually};
use souk_topologies::{
    Topology,
    apply::Mode,
    publisher::{OutgoingMessage, Publisher},
    runtime::{Delivery, Pool, Registry},
    spec::{ConsumerSpec, Discard, PoolSpec, Retention, Storage, StreamSpec},
};
use souk_workers::dedupe::{Apply, ApplyError, Deduplicated};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Counts applications per subject, in the handler's transaction.
struct CountApplied;

impl Apply for CountApplied {
    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            sqlx::query(
                "insert into applied (subject, n) values ($1, 1)
                 on conflict (subject) do update set n = applied.n + 1",
            )
            .bind(&d.subject)
            .execute(tx)
            .await
            .map_err(pg::Error::from)?;
            Ok(())
        }
        .boxed()
    }
}

/// An events stream whose dedupe window passes in test time, and one consumer of it.
fn topology() -> Topology {
    Topology {
        streams: vec![StreamSpec {
            name: "EVT".into(),
            subjects: vec!["souk.evt.>".into()],
            retention: Retention::Limits,
            storage: Storage::File,
            max_age: Duration::ZERO,
            max_bytes: -1,
            duplicate_window: Duration::from_millis(200),
            replicas: 1,
            allow_atomic: true,
            discard: Discard::Old,
            purge_acked: false,
        }],
        consumers: vec![ConsumerSpec {
            name: "count-test".into(),
            stream: "EVT".into(),
            filter_subjects: vec!["souk.evt.test.>".into()],
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![Duration::from_secs(1)],
            max_ack_pending: 100,
        }],
        pools: vec![PoolSpec {
            name: "count-test".into(),
            consumer: "count-test".into(),
            handler: "test.count".into(),
            concurrency: 4,
            fetch_batch: 8,
            max_batch: 1,
            batches_in_flight: 1,
            handler_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
        }],
    }
}

#[tokio::test]
async fn an_event_stored_twice_past_the_dedupe_window_is_applied_once() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    pg::migrate(&db.pool).await?;
    sqlx::query("create table applied (subject text primary key, n int not null)").execute(&db.pool).await?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = topology();
    souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
    let publisher = Publisher::new(client, Duration::from_secs(2));

    // The same event (same outbox id as its Nats-Msg-Id) published again until JetStream
    // stores it a second time: its dedupe window has passed.
    let event = OutgoingMessage {
        subject: "souk.evt.test.happened".into(),
        msg_id: uuid::Uuid::now_v7().to_string(),
        headers: async_nats::HeaderMap::new(),
        payload: "{}".into(),
    };
    assert!(!publisher.publish(event.clone()).await?.duplicate);
    eventually(Duration::from_secs(10), || async {
        publisher.publish(event.clone()).await.ok().filter(|ack| !ack.duplicate)
    })
    .await?;
    let stream = js.get_stream("EVT").await?;
    assert_eq!(stream.get_info().await?.state.messages, 2, "stored twice");

    let mut registry = Registry::default();
    registry.register("test.count", Deduplicated::new(db.pool.clone(), "count-test", CountApplied));
    let pool = Pool::build(&publisher, &topology, "count-test", &registry).await?;
    let cancel = CancellationToken::new();
    let run = tokio::spawn(pool.run(cancel.clone()));
    eventually(Duration::from_secs(10), || async {
        let info = stream.consumer_info("count-test").await.ok()?;
        (info.ack_floor.stream_sequence == 2 && info.num_ack_pending == 0).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;
    let applied: i32 = sqlx::query_scalar("select n from applied").fetch_one(&db.pool).await?;
    assert_eq!(applied, 1, "both copies delivered and acked, applied once");
    Ok(())
}
