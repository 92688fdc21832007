//! `souk trace`: one order followed through every pipeline, in time order, from the
//! binary against a whole stack (real nats-server, Postgres, payment sandboxes).

use souk_ingress::Role;
use souk_pipelines::{
    Message, encode,
    follow::{Entry, Kind, Trace},
    headers,
    orders::{PlaceOrder, PricedLine, place_message_id},
    subjects,
};
use souk_testkit::{Stack, eventually, order_body};
use souk_topologies::publisher::{OutgoingMessage, Publisher};
use std::{collections::BTreeSet, time::Duration};

use crate::binary::souk;

/// `souk trace ARGS…` against the stack's servers: (exit code, stdout, stderr).
async fn souk_trace(stack: &Stack, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let data = tempfile::tempdir()?;
    let out = souk(data.path())
        .arg("trace")
        .args(args)
        .env("SOUK_NATS_URL", stack.nats.url())
        .env("SOUK_DATABASE_URL", &stack.db.url)
        .output()
        .await?;
    Ok((out.status.code().unwrap_or(-1), String::from_utf8(out.stdout)?, String::from_utf8(out.stderr)?))
}

async fn traced(stack: &Stack, id: &str) -> anyhow::Result<Trace> {
    let (code, stdout, stderr) = souk_trace(stack, &[id, "--json"]).await?;
    anyhow::ensure!(code == 0, "souk trace {id} --json exited {code}: {stderr}");
    Ok(serde_json::from_str(&stdout)?)
}

/// The trace once `ready` holds: failures are recorded behind the messages (the
/// runtime's record queue), so they may land just after the order's state does.
async fn traced_when(stack: &Stack, id: &str, ready: impl Fn(&Trace) -> bool) -> anyhow::Result<Trace> {
    let last = std::sync::Mutex::new(None);
    let found = eventually(Duration::from_secs(10), || async {
        let trace = traced(stack, id).await?;
        if ready(&trace) {
            return anyhow::Ok(Some(trace));
        }
        *last.lock().expect("lock") = Some(trace);
        Ok(None)
    })
    .await;
    found.map_err(|e| anyhow::anyhow!("{e}; last trace: {:#?}", last.lock().expect("lock")))
}

/// Orders whose handling fails: a `FLAKY` order's insert always fails with a
/// serialization failure (retryable); any other order's fails so its first `n` times.
async fn flaky_orders(pool: &sqlx::PgPool, n: i64) -> anyhow::Result<()> {
    // `n` is a number of ours: nothing to inject.
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        r#"create sequence order_insert_failures;
           create function flaky_orders() returns trigger language plpgsql as $$
           begin
               if new.status = 'accepted' then
                   if new.lines @> '[{{"sku": "FLAKY"}}]' then
                       raise exception 'FLAKY lost a race' using errcode = 'serialization_failure';
                   end if;
                   if nextval('order_insert_failures') <= {n} then
                       raise exception 'lost a race' using errcode = 'serialization_failure';
                   end if;
               end if;
               return new;
           end $$;
           create trigger flaky_orders before insert on orders
               for each row execute function flaky_orders();"#
    )))
    .execute(pool)
    .await?;
    Ok(())
}

async fn order_status(stack: &Stack, token: &str, order_id: &str, wanted: &str) -> anyhow::Result<()> {
    let path = format!("/v1/orders/{order_id}");
    eventually(Duration::from_secs(40), || async {
        match stack.get(token, &path).await {
            Ok((200, body)) if body["status"] == wanted => Some(()),
            _ => None,
        }
    })
    .await
}

fn of<'a>(trace: &'a Trace, kind: Kind, subject: &str) -> Vec<&'a Entry> {
    trace.entries.iter().filter(|e| e.kind == kind && e.subject.as_deref() == Some(subject)).collect()
}

/// The one entry of `kind` on `subject` (the order's saga sends each command once).
fn one<'a>(trace: &'a Trace, kind: Kind, subject: &str) -> &'a Entry {
    let found = of(trace, kind, subject);
    assert_eq!(found.len(), 1, "one {kind:?} of {subject}: {found:#?}");
    found[0]
}

#[tokio::test]
async fn a_confirmed_order_is_traced_from_its_request_through_every_pipeline_in_time_order()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    stack.seed_skus(&["MUG-1"]).await?;
    let token = stack.token("tess", &[Role::Buyer]);
    let (status, placed) = stack.place(&token, "trace-1", &order_body("MUG-1", 2)).await?;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    order_status(&stack, &token, &order_id, "confirmed").await?;
    stack.quiescent(Duration::from_secs(30)).await?;

    let trace = traced(&stack, &order_id).await?;
    assert_eq!(trace.order_id.to_string(), order_id);
    assert!(trace.problems.is_empty(), "{:?}", trace.problems);
    // Time order, and every kind of step there is for a confirmed order.
    assert!(trace.entries.windows(2).all(|w| w[0].at <= w[1].at), "{:#?}", trace.entries);
    let kinds: BTreeSet<Kind> = trace.entries.iter().map(|e| e.kind).collect();
    let expected =
        [Kind::Request, Kind::Command, Kind::Event, Kind::Published, Kind::Handled, Kind::Step, Kind::Record];
    assert_eq!(kinds, expected.into_iter().collect(), "{:#?}", trace.entries);

    // The request first, then PlaceOrder with its CMD sequence, handled at that sequence.
    assert_eq!(trace.entries[0].kind, Kind::Request, "{:#?}", trace.entries[0]);
    assert!(trace.entries[0].detail.contains("trace-1"), "{:?}", trace.entries[0]);
    let place = one(&trace, Kind::Command, subjects::ORDERS_PLACE);
    assert_eq!(place.stream.as_deref(), Some("CMD"));
    let place_seq = place.stream_seq.expect("PlaceOrder's CMD sequence");
    let handled = one(&trace, Kind::Handled, subjects::ORDERS_PLACE);
    assert_eq!((handled.consumer.as_deref(), handled.stream_seq), (Some("orders-place"), Some(place_seq)));
    assert_eq!(handled.outcome.as_deref(), Some("ok"));
    assert!(place.at <= handled.at);

    // Each saga command and reply: written to the outbox, published by the relay at a
    // sequence of its stream, handled by its consumer at that sequence, in that order.
    let flows = [
        (subjects::INVENTORY_RESERVE, "CMD", "inventory"),
        (subjects::INVENTORY_RESERVED, "EVT", "orders-saga"),
        (subjects::PAYMENTS_AUTHORIZE, "CMD", "payments-authorize"),
        (subjects::INVENTORY_COMMIT, "CMD", "inventory"),
        (subjects::INVENTORY_COMMITTED, "EVT", "orders-saga"),
        (subjects::PAYMENTS_SETTLE, "CMD", "payments-settle"),
        (subjects::FULFILMENT_REQUEST, "CMD", "fulfilment"),
    ];
    for (subject, stream, consumer) in flows {
        let written = one(&trace, if stream == "CMD" { Kind::Command } else { Kind::Event }, subject);
        let published = one(&trace, Kind::Published, subject);
        let handled = one(&trace, Kind::Handled, subject);
        assert_eq!(written.message_id, published.message_id, "{subject}");
        assert_eq!(published.stream.as_deref(), Some(stream), "{subject}: {published:?}");
        let seq = published.stream_seq.expect("a published row's sequence");
        assert_eq!(
            (handled.consumer.as_deref(), handled.stream_seq),
            (Some(consumer), Some(seq)),
            "{subject}"
        );
        assert_eq!(handled.message_id, written.message_id, "{subject}");
        assert!(written.at <= published.at, "{subject}: published before written");
        // An event is timed by EVT, which keeps it; a handled command is purged from
        // CMD, and the relay's mark after its PubAck can come after a fast handler.
        if stream == "EVT" {
            assert!(
                published.detail.contains("stored") && published.at <= handled.at,
                "{subject}: {published:?}"
            );
        }
    }
    // Two payment results (authorize, capture), both handled by the saga; events nobody
    // consumes are published and not handled.
    let results = of(&trace, Kind::Handled, subjects::PAYMENTS_RESULT);
    assert_eq!(results.len(), 2, "{results:#?}");
    assert!(results.iter().all(|h| h.consumer.as_deref() == Some("orders-saga")));
    for subject in [subjects::ORDERS_ACCEPTED, subjects::ORDERS_CONFIRMED] {
        let published = one(&trace, Kind::Published, subject);
        assert!(published.detail.contains("stored"), "{published:?}");
        assert!(of(&trace, Kind::Handled, subject).is_empty());
    }
    // The saga's steps, the hold, the money and the seller's part.
    let details = |kind: Kind| -> Vec<&str> {
        trace.entries.iter().filter(|e| e.kind == kind).map(|e| e.detail.as_str()).collect()
    };
    let steps = details(Kind::Step);
    for step in ["reserve: sent", "authorize: sent", "commit: sent", "capture: sent"] {
        assert!(steps.iter().any(|s| s.starts_with(step)), "{step} in {steps:?}");
    }
    let records = details(Kind::Record);
    for record in
        ["stock held: MUG-1 x2", "ledger: authorized", "ledger: captured", "fulfilment requested of"]
    {
        assert!(records.iter().any(|r| r.starts_with(record)), "{record} in {records:?}");
    }
    assert!(
        records.contains(&"saga is fulfilling") && records.contains(&"order is confirmed"),
        "{records:?}"
    );

    // The text form: one line per step after the header, relative times from +0.000s.
    let (code, text, stderr) = souk_trace(&stack, &[&order_id]).await?;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), trace.entries.len() + 1, "{text}");
    assert!(lines[0].starts_with(&format!("order {order_id} (tenant t1")), "{text}");
    assert!(lines[1].trim_start().starts_with("+0.000s orders     request"), "{text}");
    assert!(text.contains(&format!("{} CMD#{place_seq} ", subjects::ORDERS_PLACE)), "{text}");
    Ok(())
}

#[tokio::test]
async fn a_dead_lettered_order_shows_its_dead_letter_and_unknown_ids_exit_3() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    crate::support::refuse_banned_product(&stack.db.pool).await?;
    stack.seed_skus(&["BANNED"]).await?;
    let token = stack.token("fay", &[Role::Buyer]);
    let (status, placed) = stack.place(&token, "banned-1", &order_body("BANNED", 1)).await?;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    order_status(&stack, &token, &order_id, "failed").await?;
    stack.quiescent(Duration::from_secs(30)).await?;

    let trace =
        traced_when(&stack, &order_id, |t| !of(t, Kind::DeadLetter, subjects::ORDERS_PLACE).is_empty())
            .await?;
    assert!(trace.problems.is_empty(), "{:?}", trace.problems);
    let place = one(&trace, Kind::Command, subjects::ORDERS_PLACE);
    let letter = one(&trace, Kind::DeadLetter, subjects::ORDERS_PLACE);
    assert_eq!(letter.consumer.as_deref(), Some("orders-place"));
    assert_eq!((letter.stream.as_deref(), letter.stream_seq), (Some("CMD"), place.stream_seq), "{letter:?}");
    assert!(place.stream_seq.is_some(), "{place:?}");
    assert!(letter.outcome.as_deref().unwrap_or_default().contains("BANNED is not sold here"), "{letter:?}");
    assert!(letter.detail.contains("DLQ seq"), "{letter:?}");
    assert!(place.at <= letter.at);
    assert!(of(&trace, Kind::Handled, subjects::ORDERS_PLACE).is_empty(), "never handled");
    let failed = trace.entries.iter().find(|e| e.detail == "order is failed").expect("the order row");
    assert!(failed.outcome.as_deref().unwrap_or_default().contains("BANNED"), "{failed:?}");

    // A command carrying a trace context: its trace id finds its order.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let cmd = PlaceOrder {
        order_id: uuid::Uuid::now_v7(),
        tenant: "t1".into(),
        buyer_id: "fay".into(),
        currency: "EUR".parse().expect("EUR"),
        lines: vec![PricedLine {
            sku: "BANNED".into(),
            seller: "s1".into(),
            quantity: 1,
            unit_price_minor: 900,
        }],
        total_minor: 900,
        payment_token: None,
        placed_at: chrono::Utc::now(),
        cart: None,
    };
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::SCHEMA, PlaceOrder::schema_header().as_str());
    h.insert(headers::TRACEPARENT, format!("00-{trace_id}-00f067aa0ba902b7-01").as_str());
    let message = OutgoingMessage {
        subject: subjects::ORDERS_PLACE.into(),
        msg_id: place_message_id("t1", cmd.order_id),
        headers: h,
        payload: encode(&cmd).into(),
    };
    sqlx::query("drop trigger refuse_banned on orders").execute(&stack.db.pool).await?;
    Publisher::new(stack.client.clone(), Duration::from_secs(2)).publish(message).await?;
    order_status(&stack, &token, &cmd.order_id.to_string(), "cancelled").await?;
    let by_trace = traced(&stack, &trace_id.to_uppercase()).await?;
    assert_eq!((by_trace.order_id, by_trace.trace_id.as_deref()), (cmd.order_id, Some(trace_id)));

    // Unknown ids: a clear error and exit code 3; no id at all is a usage error.
    for unknown in [uuid::Uuid::now_v7().to_string(), "0af7651916cd43dd8448eb211c80319c".into()] {
        let (code, stdout, stderr) = souk_trace(&stack, &[&unknown]).await?;
        assert_eq!(code, 3, "{unknown}: {stdout} {stderr}");
        assert!(stderr.contains(&format!("no order or trace \"{unknown}\"")), "{stderr}");
    }
    let (code, _, stderr) = souk_trace(&stack, &[" "]).await?;
    assert_eq!(code, 2, "{stderr}");
    Ok(())
}

/// A message whose handler failed twice (retryable) and then succeeded: each failed
/// delivery is an entry of its own (consumer, sequence, delivery, what was done, the
/// error), then the handling on the third delivery, in that order. A message
/// dead-lettered after its five attempts: five attempt entries, then its dead letter.
#[tokio::test]
async fn failed_attempts_are_traced_one_by_one_before_the_handling_or_the_dead_letter() -> anyhow::Result<()>
{
    let stack = Stack::start().await?; // orders-place: max-deliver 5, backoff from 50 ms
    flaky_orders(&stack.db.pool, 2).await?;
    stack.seed_skus(&["MUG-1", "FLAKY"]).await?;
    let token = stack.token("ida", &[Role::Buyer]);
    let (status, placed) = stack.place(&token, "flaky-1", &order_body("MUG-1", 1)).await?;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    order_status(&stack, &token, &order_id, "confirmed").await?;

    let attempts_of = |t: &Trace| of(t, Kind::Attempt, subjects::ORDERS_PLACE).len();
    let trace = traced_when(&stack, &order_id, |t| attempts_of(t) == 2).await?;
    assert!(trace.problems.is_empty(), "{:?}", trace.problems);
    let place = one(&trace, Kind::Command, subjects::ORDERS_PLACE);
    let attempts = of(&trace, Kind::Attempt, subjects::ORDERS_PLACE);
    let handled = one(&trace, Kind::Handled, subjects::ORDERS_PLACE);
    for (n, a) in attempts.iter().enumerate() {
        assert_eq!(a.delivery, Some(n as u64 + 1), "{a:?}");
        assert_eq!(a.consumer.as_deref(), Some("orders-place"), "{a:?}");
        assert_eq!((a.stream.as_deref(), a.stream_seq), (Some("CMD"), place.stream_seq), "{a:?}");
        assert_eq!(a.message_id, place.message_id, "{a:?}");
        assert_eq!(a.outcome.as_deref(), Some("retry"), "{a:?}");
        assert!(a.detail.contains("retryable, pg_serialization_failure"), "{a:?}");
        assert!(a.error.as_deref().is_some_and(|e| e.contains("lost a race")), "{a:?}");
    }
    assert_eq!(handled.delivery, Some(3), "{handled:?}");
    // In time order, and so in the list: attempt 1, attempt 2, the handling.
    let at = |e: &Entry| trace.entries.iter().position(|x| x == e).expect("listed");
    assert!(attempts[0].at <= attempts[1].at && attempts[1].at <= handled.at, "{:#?}", trace.entries);
    assert!(at(attempts[0]) < at(attempts[1]) && at(attempts[1]) < at(handled), "{:#?}", trace.entries);
    assert!(at(place) < at(attempts[0]));
    // The text form: a line per attempt.
    let (code, text, stderr) = souk_trace(&stack, &[&order_id]).await?;
    assert_eq!(code, 0, "{stderr}");
    let lines: Vec<&str> = text.lines().filter(|l| l.contains(" attempt ")).collect();
    if lines.len() != 2 {
        // Which deliveries were recorded, in the order they were written.
        let rows: Vec<(i64, i32, chrono::DateTime<chrono::Utc>, String)> =
            sqlx::query_as("select id, delivery, at, then_did from failed_attempts order by id")
                .fetch_all(&stack.db.pool)
                .await?;
        panic!("two attempt lines expected: {text}\nrecorded: {rows:#?}");
    }
    assert!(lines[0].contains("delivery 1 to orders-place failed"), "{text}");
    assert!(lines[0].contains("→ retry (") && lines[0].contains("lost a race"), "{text}");
    assert!(lines[1].contains("delivery 2 to orders-place failed"), "{text}");

    // Dead-lettered after max-deliver (5) attempts.
    let (status, placed) = stack.place(&token, "flaky-2", &order_body("FLAKY", 1)).await?;
    assert_eq!(status, 202, "{placed}");
    let order_id = placed["order_id"].as_str().unwrap_or_default().to_owned();
    order_status(&stack, &token, &order_id, "failed").await?;
    let trace = traced_when(&stack, &order_id, |t| {
        attempts_of(t) == 5 && !of(t, Kind::DeadLetter, subjects::ORDERS_PLACE).is_empty()
    })
    .await?;
    let attempts = of(&trace, Kind::Attempt, subjects::ORDERS_PLACE);
    let outcomes: Vec<(Option<u64>, Option<&str>)> =
        attempts.iter().map(|a| (a.delivery, a.outcome.as_deref())).collect();
    assert_eq!(
        outcomes,
        [
            (Some(1), Some("retry")),
            (Some(2), Some("retry")),
            (Some(3), Some("retry")),
            (Some(4), Some("retry")),
            (Some(5), Some("dead-letter"))
        ],
        "{attempts:#?}"
    );
    assert!(attempts.iter().all(|a| a.error.as_deref().is_some_and(|e| e.contains("FLAKY lost a race"))));
    let letter = one(&trace, Kind::DeadLetter, subjects::ORDERS_PLACE);
    assert!(letter.detail.contains("after 5 attempt(s)"), "{letter:?}");
    assert!(at_index(&trace, attempts[4]) < at_index(&trace, letter), "{:#?}", trace.entries);
    assert!(attempts[4].at <= letter.at, "{:#?}", trace.entries);
    assert!(of(&trace, Kind::Handled, subjects::ORDERS_PLACE).is_empty());
    Ok(())
}

fn at_index(trace: &Trace, e: &Entry) -> usize {
    trace.entries.iter().position(|x| x == e).expect("listed")
}
