//! The outbox relay on shipped settings, over the real Postgres outbox.

use anyhow::Context;
use souk_stores::postgres::outbox::{self, NewMessage, PgOutbox};
use souk_testkit::{Stack, StackOptions, eventually};
use std::time::Duration;

async fn enqueue(
    stack: &Stack,
    aggregate: &str,
    subject: &str,
    payload: Vec<u8>,
) -> anyhow::Result<uuid::Uuid> {
    enqueue_with(stack, aggregate, subject, vec![], payload).await
}

async fn enqueue_with(
    stack: &Stack,
    aggregate: &str,
    subject: &str,
    headers: Vec<(String, String)>,
    payload: Vec<u8>,
) -> anyhow::Result<uuid::Uuid> {
    let mut tx = stack.db.pool.begin().await?;
    let id = outbox::enqueue(
        &mut tx,
        NewMessage { aggregate_id: aggregate.into(), subject: subject.into(), headers, payload },
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// Subjects of a stream's messages, in stream order.
async fn subjects(stack: &Stack, stream: &str) -> anyhow::Result<Vec<String>> {
    let stream = stack.js.get_stream(stream).await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        out.push(stream.get_raw_message(seq).await?.subject.to_string());
    }
    Ok(out)
}

/// One row that can never be published used to stop the relay for ever. Now a row for a
/// subject no stream takes, a row over the server's max_payload and a row with a header
/// NATS refuses are parked, with
/// their errors, after a few tries over a grace period; the rows of other aggregates behind them are
/// published; the later rows of a parked row's aggregate wait behind it — also those
/// written after it was parked — and follow it, in order, once it is requeued.
#[tokio::test]
async fn unpublishable_rows_are_parked_and_the_rows_behind_them_go_on() -> anyhow::Result<()> {
    let stack =
        Stack::start_with(StackOptions { ingress: false, pools: false, ..Default::default() }).await?;
    let too_large = vec![b'x'; stack.client.server_info().max_payload + 1];
    let a1 = enqueue(&stack, "a", "souk.nowhere.a1", b"a1".to_vec()).await?;
    enqueue(&stack, "b", "souk.evt.test.b1", b"b1".to_vec()).await?;
    let c1 = enqueue(&stack, "c", "souk.evt.test.c1", too_large).await?;
    let a2 = enqueue(&stack, "a", "souk.evt.test.a2", b"a2".to_vec()).await?;
    enqueue(&stack, "b", "souk.evt.test.b2", b"b2".to_vec()).await?;
    // A header NATS cannot carry (the client would panic on it).
    let bad_header = vec![("souk-note".to_owned(), "two\r\nlines".to_owned())];
    let e1 = enqueue_with(&stack, "e", "souk.evt.test.e1", bad_header, b"e1".to_vec()).await?;

    let outbox = PgOutbox::new(stack.db.pool.clone(), &stack.db.url);
    // Parked once they have failed for the shipped grace (a minute), not before.
    eventually(Duration::from_secs(150), || async {
        let published = subjects(&stack, "EVT").await.ok()?.len();
        (published == 2 && outbox.parked(10).await.ok()?.len() == 4).then_some(())
    })
    .await?;
    assert_eq!(subjects(&stack, "EVT").await?, ["souk.evt.test.b1", "souk.evt.test.b2"]);
    let parked = outbox.parked(10).await?;
    assert_eq!(parked.iter().map(|p| p.id).collect::<Vec<_>>(), [a1, c1, a2, e1]);
    let error = |i: usize| parked[i].last_error.clone().unwrap_or_default();
    assert!(error(0).contains("no stream takes subject souk.nowhere.a1"), "{}", error(0));
    assert!(error(1).contains("max_payload"), "{}", error(1));
    assert!(error(2).contains(&a1.to_string()), "waits behind a1: {}", error(2));
    assert!(error(3).contains("header refused"), "{}", error(3));
    assert!(parked[0].tries >= 5, "parked after at least the shipped number of tries");

    // A row of the parked aggregate written later waits too; other aggregates do not.
    let a3 = enqueue(&stack, "a", "souk.evt.test.a3", b"a3".to_vec()).await?;
    enqueue(&stack, "d", "souk.evt.test.d1", b"d1".to_vec()).await?;
    eventually(Duration::from_secs(30), || async {
        (subjects(&stack, "EVT").await.ok()?.len() == 3).then_some(())
    })
    .await
    .context("d1 is published")?;
    let unpublished: bool = sqlx::query_scalar("select published_at is null from outbox where id = $1")
        .bind(a3)
        .fetch_one(&stack.db.pool)
        .await?;
    assert!(unpublished, "a3 waits behind a1");

    // The cause fixed (a stream now takes the subject; one without atomic batches, which
    // the relay then publishes to one message at a time) and the aggregate requeued: it
    // is published in its order.
    stack
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ELSEWHERE".into(),
            subjects: vec!["souk.nowhere.>".into()],
            ..Default::default()
        })
        .await?;
    let data = tempfile::tempdir()?;
    let souk = |args: &[&str]| {
        let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_souk"));
        c.arg("--data-dir")
            .arg(data.path())
            .args(args)
            .env_remove("SOUK_CONFIG")
            .env("SOUK_NATS_URL", stack.nats.url())
            .env("DATABASE_URL", &stack.db.url)
            .kill_on_drop(true);
        c.output()
    };
    let listed = souk(&["outbox", "parked", "--json"]).await?;
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout)?;
    assert_eq!(listed.as_array().map(Vec::len), Some(4));
    let requeued = souk(&["outbox", "requeue", "--aggregate", "a"]).await?;
    assert!(requeued.status.success(), "{}", String::from_utf8_lossy(&requeued.stderr));
    assert_eq!(String::from_utf8(requeued.stdout)?.trim(), "2 outbox rows requeued");
    eventually(Duration::from_secs(30), || async {
        (subjects(&stack, "EVT").await.ok()?.len() == 5
            && subjects(&stack, "ELSEWHERE").await.ok()?.len() == 1)
            .then_some(())
    })
    .await?;
    assert_eq!(
        subjects(&stack, "EVT").await?,
        ["souk.evt.test.b1", "souk.evt.test.b2", "souk.evt.test.d1", "souk.evt.test.a2", "souk.evt.test.a3"]
    );
    assert_eq!(
        outbox.parked(10).await?.iter().map(|p| p.id).collect::<Vec<_>>(),
        [c1, e1],
        "the others stay parked"
    );
    Ok(())
}

/// A stream an operator removes and re-creates (what `souk topology apply` tells them to
/// do for a change it cannot make in place) is missing for a while: rows bound for it
/// fail with "no stream" meanwhile. They must wait for it, not be parked (parked rows,
/// and every later row of their aggregates, stay unpublished until an operator
/// requeues them) — the shipped settings used to park a row after five tries, half a
/// second apart, so any re-creation slower than ~2.5 s parked good rows.
#[tokio::test]
async fn rows_wait_for_a_stream_being_re_created_instead_of_being_parked() -> anyhow::Result<()> {
    let stack =
        Stack::start_with(StackOptions { ingress: false, pools: false, ..Default::default() }).await?;
    stack.js.delete_stream("EVT").await?;
    let a1 = enqueue(&stack, "a", "souk.evt.test.a1", b"a1".to_vec()).await?;
    let a2 = enqueue(&stack, "a", "souk.evt.test.a2", b"a2".to_vec()).await?;
    let state = || async {
        sqlx::query_as::<_, (i32, bool)>("select tries, parked_at is not null from outbox where id = $1")
            .bind(a1)
            .fetch_one(&stack.db.pool)
            .await
            .ok()
    };
    // More failed tries than the shipped `park_after` (5), or parked.
    let (tries, parked) =
        eventually(Duration::from_secs(60), || async { state().await.filter(|(t, p)| *t > 5 || *p) }).await?;
    assert!(!parked, "a row was parked after {tries} tries while its stream was being re-created");

    souk_topologies::apply::apply(&stack.js, &stack.topology, souk_topologies::apply::Mode::Apply).await?;
    let unmarked = || async {
        sqlx::query_scalar::<_, i64>(
            "select count(*) from outbox where id = any($1) and published_at is null",
        )
        .bind([a1, a2].as_slice())
        .fetch_one(&stack.db.pool)
        .await
        .ok()
    };
    eventually(Duration::from_secs(30), || async { (unmarked().await? == 0).then_some(()) })
        .await
        .context("both rows are published and marked once the stream is back")?;
    assert_eq!(
        subjects(&stack, "EVT").await?,
        ["souk.evt.test.a1", "souk.evt.test.a2"],
        "once each, in order"
    );
    let outbox = PgOutbox::new(stack.db.pool.clone(), &stack.db.url);
    assert!(outbox.parked(10).await?.is_empty());
    Ok(())
}

/// nats-server is killed (SIGKILL) while the relay publishes a stream of rows for many
/// aggregates, and restarted on its store while more rows are written: every row is
/// published once, in per-aggregate order, none parked (the server being away is not the
/// rows' fault).
#[tokio::test]
async fn rows_written_across_a_nats_server_kill_are_published_once_in_order() -> anyhow::Result<()> {
    let mut stack =
        Stack::start_with(StackOptions { ingress: false, pools: false, ..Default::default() }).await?;
    const AGGREGATES: usize = 20;
    const EACH: usize = 50;
    let mut written = 0;
    for i in 0..EACH {
        for a in 0..AGGREGATES {
            enqueue(&stack, &format!("agg{a}"), &format!("souk.evt.test.agg{a}.{i}"), vec![b'x'; 16]).await?;
            written += 1;
        }
        if i == EACH / 3 {
            // Some rows published, others not yet: the kill lands mid-stream.
            eventually(Duration::from_secs(30), || async {
                (stack.stream_messages("EVT").await.ok()? > 0).then_some(())
            })
            .await?;
            stack.nats.kill().await?;
        }
        if i == 2 * EACH / 3 {
            stack.nats.restart().await?;
        }
    }
    let unpublished = "select 1 from outbox where published_at is null";
    eventually(Duration::from_secs(60), || async {
        (stack.count(unpublished).await.ok()? == 0).then_some(())
    })
    .await
    .context("every row published")?;
    assert_eq!(stack.count("select 1 from outbox where parked_at is not null").await?, 0, "none parked");
    let subjects = subjects(&stack, "EVT").await?;
    assert_eq!(subjects.len(), written, "each row once");
    for a in 0..AGGREGATES {
        let prefix = format!("souk.evt.test.agg{a}.");
        let order: Vec<usize> = subjects
            .iter()
            .filter_map(|s| s.strip_prefix(&prefix))
            .map(|i| i.parse().unwrap_or(usize::MAX))
            .collect();
        assert_eq!(order, (0..EACH).collect::<Vec<_>>(), "aggregate {a} in order");
    }
    stack.stop_node().await;
    Ok(())
}
