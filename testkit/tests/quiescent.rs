//! `quiescent` waits for what a count taken too early would miss: a command stored but
//! not delivered, one delivered but not acknowledged, an outbox row not published.

use async_nats::jetstream;
use futures::StreamExt;
use souk_testkit::{NatsServer, TestDb, quiescent, test_topology};
use std::time::Duration;

/// Long enough to see a state that never changes by itself; the waits that succeed
/// return as soon as their condition holds.
const NOT_WITHIN: Duration = Duration::from_millis(300);

#[tokio::test]
async fn quiescent_waits_for_undelivered_unacknowledged_and_unpublished_work() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let js = jetstream::new(nats.client().await?);
    let topology = test_topology()?;
    souk_topologies::apply::apply(&js, &topology, souk_topologies::apply::Mode::Apply).await?;
    quiescent(&js, Some(&db.pool), Duration::from_secs(10)).await?;

    // Stored, not delivered.
    let consumer = &topology.consumers[0];
    let subject = consumer.filter_subjects[0].clone();
    js.publish(subject, "x".into()).await?.await?;
    let e = quiescent(&js, None, NOT_WITHIN).await.expect_err("a command waits").to_string();
    assert!(e.contains("pending 1 ack-pending 0"), "{e}");

    // Delivered, not acknowledged.
    let pull: jetstream::consumer::PullConsumer = js
        .get_stream(&consumer.stream)
        .await?
        .get_consumer(&consumer.name)
        .await
        .map_err(anyhow::Error::msg)?;
    let mut batch = pull.fetch().max_messages(1).expires(Duration::from_secs(2)).messages().await?;
    let message =
        batch.next().await.ok_or_else(|| anyhow::anyhow!("no delivery"))?.map_err(anyhow::Error::msg)?;
    let e = quiescent(&js, None, NOT_WITHIN).await.expect_err("a delivery is running").to_string();
    assert!(e.contains("pending 0 ack-pending 1"), "{e}");
    message.double_ack().await.map_err(anyhow::Error::msg)?;
    quiescent(&js, None, Duration::from_secs(10)).await?;

    // An outbox row the relay has not published.
    sqlx::query(
        "insert into outbox (id, aggregate_id, subject, payload) values ($1, 'a', 'souk.evt.t', 'x')",
    )
    .bind(uuid::Uuid::new_v4())
    .execute(&db.pool)
    .await?;
    let e = quiescent(&js, Some(&db.pool), NOT_WITHIN).await.expect_err("a row waits").to_string();
    assert!(e.contains("outbox unpublished 1"), "{e}");
    sqlx::query("update outbox set published_at = now()").execute(&db.pool).await?;
    quiescent(&js, Some(&db.pool), Duration::from_secs(10)).await?;
    Ok(())
}

/// A read that fails is not "nothing to do".
#[tokio::test]
async fn quiescent_fails_when_it_cannot_read() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let js = jetstream::new(nats.client().await?);
    souk_topologies::apply::apply(&js, &test_topology()?, souk_topologies::apply::Mode::Apply).await?;
    nats.kill().await?;
    let e = quiescent(&js, None, NOT_WITHIN).await.expect_err("nothing was read");
    assert!(format!("{e:#}").contains("the last read failed"), "{e:#}");
    Ok(())
}
