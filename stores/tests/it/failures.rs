//! The records `souk trace` keeps of failures (`failed_attempts`, `dead_letters`): found
//! by `(consumer, message id)`, bounded by housekeeping, and a dead letter's record goes
//! when an operator purges it or the DLQ stream drops it.

use chrono::{Duration as Age, Utc};
use souk_pipelines::follow::{AfterFailure, DeadLettered, FailedAttempt, FailureClass, FailureLog, Journal};
use souk_stores::{
    operate::{self, Actor},
    postgres::{self as pg, follow::PgJournal},
};
use souk_testkit::{NatsServer, TestDb};
use souk_topologies::{apply::Mode, dead_letters::Selection, publisher::Publisher};
use std::time::Duration;

fn attempt(message_id: &str, delivery: u64, at: chrono::DateTime<Utc>) -> FailedAttempt {
    FailedAttempt {
        consumer: "orders-place".into(),
        message_id: Some(message_id.into()),
        stream: "CMD".into(),
        stream_seq: 7,
        delivery,
        class: FailureClass::Retryable,
        code: "pg_serialization_failure".into(),
        error: format!("attempt {delivery} lost a race"),
        then: AfterFailure::Retry,
        at,
    }
}

/// A store error of the journal's traits, for `?`.
fn any(e: souk_pipelines::follow::SourceError) -> anyhow::Error {
    anyhow::anyhow!(e)
}

fn letter(dlq_seq: u64, message_id: &str) -> DeadLettered {
    DeadLettered {
        consumer: "orders-place".into(),
        message_id: Some(message_id.into()),
        stream: "CMD".into(),
        stream_seq: dlq_seq + 100,
        dlq_stream: "DLQ".into(),
        dlq_seq,
        attempts: 5,
        error: "boom".into(),
    }
}

async fn db() -> anyhow::Result<TestDb> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    Ok(db)
}

async fn count(db: &TestDb, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql).fetch_one(&db.pool).await?)
}

#[tokio::test]
async fn failed_attempts_are_found_by_consumer_and_message_and_expire_with_housekeeping() -> anyhow::Result<()>
{
    let db = db().await?;
    let journal = PgJournal(db.pool.clone());
    let now = Utc::now();
    let old = now - Age::days(8);
    journal
        .record_attempts(&[attempt("m1", 2, now), attempt("m1", 1, now - Age::seconds(1))])
        .await
        .map_err(any)?;
    journal.record_attempts(&[attempt("m2", 1, old), attempt("other", 1, now)]).await.map_err(any)?;
    let mut anonymous = attempt("", 1, now);
    anonymous.message_id = None;
    journal.record_attempts(&[anonymous]).await.map_err(any)?;

    let pairs =
        |ids: &[&str]| ids.iter().map(|m| ("orders-place".to_owned(), m.to_string())).collect::<Vec<_>>();
    let found = journal.attempts(&pairs(&["m1", "m2"])).await.map_err(any)?;
    let got: Vec<(&str, u64)> =
        found.iter().map(|a| (a.message_id.as_deref().unwrap_or_default(), a.delivery)).collect();
    assert_eq!(got, [("m2", 1), ("m1", 1), ("m1", 2)], "in time order");
    assert_eq!(found[2], attempt("m1", 2, found[2].at), "every field read back");
    assert!((found[2].at - now).num_milliseconds().abs() < 1, "the runtime's time is kept");
    let other_consumer = journal.attempts(&[("inventory".into(), "m1".into())]).await.map_err(any)?;
    assert!(other_consumer.is_empty(), "by consumer and message id");

    // A redriven dead letter's record lives as long; a live one's stays.
    journal.record_dead_letter(&letter(1, "m1")).await.map_err(any)?;
    journal.record_dead_letter(&letter(2, "m2")).await.map_err(any)?;
    pg::follow::mark_redriven(&db.pool, "DLQ", &[1]).await?;
    sqlx::query("update dead_letters set redriven_at = now() - interval '8 days' where dlq_seq = 1")
        .execute(&db.pool)
        .await?;

    assert_eq!(pg::housekeeping(&db.pool, Duration::from_secs(9 * 24 * 3600)).await?.deleted, 0);
    let done = pg::housekeeping(&db.pool, Duration::from_secs(7 * 24 * 3600)).await?;
    assert_eq!(done.deleted, 2, "the old attempt and the old redrive's record");
    assert_eq!(count(&db, "select count(*) from failed_attempts").await?, 4);
    assert_eq!(count(&db, "select count(*) from failed_attempts where message_id = 'm2'").await?, 0);
    assert_eq!(count(&db, "select count(*) from dead_letters").await?, 1);
    let left = journal.dead_letters(&["m1".into(), "m2".into()]).await.map_err(any)?;
    assert_eq!((left.len(), left[0].dlq_seq, left[0].redriven_at), (1, 2, None));
    Ok(())
}

/// A purge deletes the dead letters' records with them; a redrive says when on each;
/// records of dead letters the stream dropped (a purge of the whole stream, its
/// limits, a re-created stream) go at the next housekeeping.
#[tokio::test]
async fn a_dead_letters_record_goes_when_it_is_purged_or_the_stream_drops_it() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), db())?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    souk_topologies::apply::apply(&js, &souk_testkit::shipped_topology()?, Mode::Apply).await?;
    let journal = PgJournal(db.pool.clone());
    let publish_letter = |n: u64| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("souk-dlq-consumer", "orders-place");
            h.insert("souk-dlq-subject", "souk.cmd.orders.place");
            h.insert("souk-dlq-attempts", "5");
            h.insert("souk-dlq-error", "boom");
            let ack = js
                .publish_with_headers("souk.dlq.orders-place", h, format!("{{\"n\":{n}}}").into())
                .await?
                .await?;
            anyhow::Ok(ack.sequence)
        }
    };
    for n in 1..=3 {
        let seq = publish_letter(n).await?;
        journal.record_dead_letter(&letter(seq, &format!("m{n}"))).await.map_err(any)?;
    }
    let seqs = || async {
        anyhow::Ok(
            sqlx::query_scalar::<_, i64>("select dlq_seq from dead_letters order by dlq_seq")
                .fetch_all(&db.pool)
                .await?,
        )
    };
    assert_eq!(seqs().await?, [1, 2, 3]);

    let actor = Actor("ops:test".into());
    let chosen = Selection::Seqs(vec![2]);
    let letters = operate::purge_preview(&js, &chosen).await?;
    let purged = operate::purge(&js, &db.pool, &actor, &chosen, &letters).await?;
    assert_eq!(purged.purged.deleted, [2]);
    assert_eq!(seqs().await?, [1, 3], "only the purged one's record went");

    let publisher = Publisher::new(client.clone(), Duration::from_secs(2));
    let redriven = operate::redrive(&publisher, &db.pool, &actor, &Selection::Seqs(vec![3])).await?;
    assert_eq!(redriven.redriven.len(), 1, "{:?}", redriven.failed);
    let marked: Vec<(i64, bool)> =
        sqlx::query_as("select dlq_seq, redriven_at is not null from dead_letters order by dlq_seq")
            .fetch_all(&db.pool)
            .await?;
    assert_eq!(marked, [(1, false), (3, true)], "a redrive keeps the record, saying when");

    // The stream drops dead letter 1 (a purge of the whole stream stands for its limits
    // and max-age): below its first sequence, its record names nothing. One recorded
    // before the stream was created (a re-created stream numbers from 1 again) goes too.
    let mut dlq = js.get_stream("DLQ").await?;
    dlq.purge().await?;
    let fresh = publish_letter(4).await?;
    journal.record_dead_letter(&letter(fresh, "m4")).await.map_err(any)?;
    journal.record_dead_letter(&letter(fresh + 10, "m5")).await.map_err(any)?;
    sqlx::query("update dead_letters set at = '2000-01-01T00:00:00Z' where dlq_seq = $1")
        .bind(i64::try_from(fresh + 10)?)
        .execute(&db.pool)
        .await?;
    let info = dlq.info().await?;
    let created = chrono::DateTime::from_timestamp_nanos(i64::try_from(info.created.unix_timestamp_nanos())?);
    let forgotten =
        pg::follow::forget_dropped_dead_letters(&db.pool, "DLQ", info.state.first_sequence, created).await?;
    assert_eq!(forgotten, 3);
    assert_eq!(seqs().await?, [i64::try_from(fresh)?], "the dead letter still stored keeps its record");
    Ok(())
}

/// A dead-letter action cut off half-way (a killed CLI, a node stopped by a deploy) is
/// still on record: the row naming who began it and on which letters is written before
/// anything is done (found in review: the only row was written after the work, so an
/// action stopped mid-way left none). And one Postgres will not record is not done.
#[tokio::test]
async fn a_dead_letter_action_is_on_record_before_it_acts() -> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), db())?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    souk_topologies::apply::apply(&js, &souk_testkit::shipped_topology()?, Mode::Apply).await?;
    // A stream that stores without ever acking: the redrive's publish waits for its
    // PubAck until the test stops it, as a long action is stopped mid-way.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "HOLD".into(),
        subjects: vec!["hold.>".into()],
        no_ack: true,
        ..Default::default()
    })
    .await?;
    let dead_letter = |subject: &'static str| {
        let js = js.clone();
        async move {
            let mut h = async_nats::HeaderMap::new();
            h.insert("souk-dlq-consumer", "orders-place");
            h.insert("souk-dlq-subject", subject);
            h.insert("souk-dlq-error", "boom");
            anyhow::Ok(
                js.publish_with_headers("souk.dlq.orders-place", h, "{}".into()).await?.await?.sequence,
            )
        }
    };
    let kept = |seq: u64| {
        let js = js.clone();
        async move { anyhow::Ok(js.get_stream("DLQ").await?.get_raw_message(seq).await.is_ok()) }
    };
    let actions = || async {
        anyhow::Ok(
            sqlx::query_as::<_, (String, String, serde_json::Value)>(
                "select actor, action, details from operator_actions order by id",
            )
            .fetch_all(&db.pool)
            .await?,
        )
    };
    let actor = Actor("ops:test".into());

    let held = dead_letter("hold.x").await?;
    let publisher = Publisher::new(client.clone(), Duration::from_secs(600));
    let redrive = tokio::spawn({
        let (publisher, pool, actor) = (publisher.clone(), db.pool.clone(), actor.clone());
        async move { operate::redrive(&publisher, &pool, &actor, &Selection::Seqs(vec![held])).await }
    });
    souk_testkit::eventually(Duration::from_secs(20), || async {
        anyhow::Ok((!actions().await?.is_empty()).then_some(()))
    })
    .await?;
    redrive.abort();
    assert!(redrive.await.is_err_and(|e| e.is_cancelled()), "stopped mid-way, before its outcome");
    assert_eq!(
        actions().await?,
        [(
            "ops:test".into(),
            "dlq.redrive-begun".into(),
            serde_json::json!({
                "selection": { "sequences": [held] },
                "sequences": [held],
            })
        )]
    );
    assert!(kept(held).await?, "its publish was never acked: the dead letter stays");

    // Postgres refuses the record: nothing is done.
    sqlx::query(
        "create function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused'; end $$",
    )
    .execute(&db.pool)
    .await?;
    sqlx::query(
        "create trigger refuse before insert on operator_actions for each row execute function refuse()",
    )
    .execute(&db.pool)
    .await?;
    let letter = dead_letter("souk.cmd.orders.place").await?;
    let chosen = Selection::Seqs(vec![letter]);
    let err = operate::redrive(&publisher, &db.pool, &actor, &chosen).await.expect_err("not recorded");
    assert!(matches!(err, operate::Error::Record(_)), "{err:?}");
    let letters = operate::purge_preview(&js, &chosen).await?;
    let err = operate::purge(&js, &db.pool, &actor, &chosen, &letters).await.expect_err("not recorded");
    assert!(matches!(err, operate::Error::Record(_)), "{err:?}");
    assert!(kept(letter).await?, "neither redriven nor purged");
    Ok(())
}
