//! What the sweeper must not give up (found in review, eighth session): a saga whose
//! command never left the outbox, a capture, a void or refund giving money back, and
//! the sellers' answers of a confirmed order.

use chrono::{Duration, Utc};
use souk_pipelines::{payments::Operation, subjects};
use souk_stores::postgres::sagas;
use souk_workers::orders::saga::{MAX_ATTEMPTS, Stalled, Swept, sweep};

use super::{SagaEnv, drive_to, exhausted, order, payment, replies};

/// Place `cmd` and cancel it for want of stock, before any money moved.
async fn cancelled_out_of_stock(
    env: &SagaEnv,
    cmd: &souk_pipelines::orders::PlaceOrder,
) -> anyhow::Result<()> {
    env.place(cmd).await?;
    env.until(cmd.order_id, "reserving").await?;
    env.reply(&replies::rejected(cmd, &cmd.lines[0].sku)).await?;
    env.until(cmd.order_id, "cancelled").await?;
    Ok(())
}

/// Sweep `times` times, an hour apart from `from`; returns the last clock used.
async fn sweep_hours(
    env: &SagaEnv,
    from: chrono::DateTime<Utc>,
    times: usize,
) -> anyhow::Result<chrono::DateTime<Utc>> {
    let mut now = from;
    for _ in 0..times {
        now += Duration::hours(1);
        sweep(&env.db.pool, now, 100, &Stalled::default()).await?;
        super::settle(env).await?;
    }
    Ok(now)
}

/// A NATS outage (or no relay) of 90 s used to spend a reserve's three attempts — each
/// sweep queued another copy behind the unsent first — and then cancel the order.
#[tokio::test]
async fn a_broker_outage_spends_no_attempts_of_a_saga_whose_command_is_unsent() -> anyhow::Result<()> {
    let mut env = SagaEnv::start().await?;
    let cmd = order(&[("SKU-A", "s1", 1, 700)]);
    let id = cmd.order_id;
    env.stop_relay().await?;
    env.place(&cmd).await?;
    souk_testkit::eventually(std::time::Duration::from_secs(20), || async {
        anyhow::Ok(sagas::view(&env.db.pool, id).await?.filter(|s| s.state == "reserving").map(|_| ()))
    })
    .await?;
    let mut now = Utc::now();
    for _ in 0..(MAX_ATTEMPTS + 2) {
        now += Duration::hours(1);
        let swept = sweep(&env.db.pool, now, 100, &Stalled::default()).await?;
        assert_eq!(swept, Swept { resent: 0, compensated: 0, waiting: 1 });
    }
    let saga = env.saga(id).await?;
    assert_eq!((saga.state.as_str(), saga.attempt), ("reserving", 1), "no attempt spent");
    assert!(saga.deadline.is_some_and(|d| d > now), "its deadline moved on");

    // The broker is back: the one reserve goes out, and the saga goes on.
    env.start_relay();
    super::settle(&env).await?;
    assert_eq!(env.sent(id).await?, ["inventory.reserve"]);
    env.reply(&replies::reserved(&cmd)).await?;
    env.until(id, "authorizing").await?;
    // With its command published, a lost reply is re-sent as before.
    assert_eq!(sweep(&env.db.pool, now + Duration::hours(1), 100, &Stalled::default()).await?.resent, 1);

    // The reply is what waits (the inventory pool answered; the broker went down before
    // its row was published): no attempt spent either (found in review of the fix).
    super::settle(&env).await?;
    env.stop_relay().await?;
    sqlx::query(
        "insert into outbox (id, aggregate_id, subject, payload) values (gen_random_uuid(), $1, 'souk.evt.inventory.reserved', '\\x7b7d')",
    )
    .bind(souk_workers::inventory::aggregate_id("t1", id))
    .execute(&env.db.pool)
    .await?;
    let swept = sweep(&env.db.pool, now + Duration::hours(2), 100, &Stalled::default()).await?;
    assert_eq!(swept, Swept { resent: 0, compensated: 0, waiting: 1 });
    sqlx::query("delete from outbox where aggregate_id = $1")
        .bind(souk_workers::inventory::aggregate_id("t1", id))
        .execute(&env.db.pool)
        .await?;

    // A parked row waits for an operator, not for the broker: its saga is swept as
    // before (found in review: waiting on it, the saga never showed as stuck).
    let parked = order(&[("SKU-B", "s1", 1, 700)]);
    env.stop_relay().await?;
    env.place(&parked).await?;
    souk_testkit::eventually(std::time::Duration::from_secs(20), || async {
        let saga = sagas::view(&env.db.pool, parked.order_id).await?;
        anyhow::Ok(saga.filter(|s| s.state == "reserving").map(|_| ()))
    })
    .await?;
    sqlx::query("update outbox set parked_at = now() where aggregate_id = $1")
        .bind(parked.order_id.to_string())
        .execute(&env.db.pool)
        .await?;
    let swept = sweep(&env.db.pool, now + Duration::hours(4), 100, &Stalled::default()).await?;
    // The parked saga's reserve is sent again (the first saga is swept too: its
    // authorize is due, sent or waiting depending on how far the relay got).
    assert!(swept.resent >= 1, "{swept:?}");
    assert_eq!(env.saga(parked.order_id).await?.attempt, 2);
    // Its re-sent reserve waits behind the parked row (the relay keeps an aggregate's
    // order): it waits for the operator too, and the saga goes on being swept (review,
    // tenth session: the sweeper waited on it, each deadline moved on for ever, and the
    // saga never showed as stuck).
    let swept = sweep(&env.db.pool, now + Duration::hours(5), 100, &Stalled::default()).await?;
    assert_eq!(env.saga(parked.order_id).await?.attempt, 3, "{swept:?}");
    Ok(())
}

/// A void whose retries ran out ended the saga with the authorization held; so did a
/// late authorization's void, sent once from `cancelled`.
#[tokio::test]
async fn a_void_out_of_retries_is_sent_again_until_done() -> anyhow::Result<()> {
    let env = SagaEnv::start().await?;
    let (refused, late) = (order(&[("SKU-A", "s1", 1, 700)]), order(&[("SKU-B", "s1", 1, 700)]));
    env.place(&refused).await?;
    drive_to(&env, &refused, "committing").await?;
    env.reply(&replies::committed(&refused, false)).await?;
    env.until(refused.order_id, "voiding").await?;
    env.reply(&payment(&refused, Operation::Void, exhausted())).await?;
    super::settle(&env).await?;
    assert_eq!(env.saga(refused.order_id).await?.state, "voiding", "the void was not done");
    // Re-sent at every deadline, past the attempts of a step that gives up.
    let now = sweep_hours(&env, Utc::now(), 5).await?;
    assert_eq!(env.saga(refused.order_id).await?.state, "voiding");
    assert_eq!(env.sent_count(refused.order_id, "payments.settle:void").await?, 6);
    let stuck = sagas::list(&env.db.pool, None, true, 10).await?;
    assert!(stuck.iter().any(|s| s.order_id == refused.order_id), "sent 6 times: shown as stuck");
    env.reply(&payment(&refused, Operation::Void, None)).await?;
    env.until(refused.order_id, "cancelled").await?;
    assert_eq!(env.events(subjects::ORDERS_CANCELLED, refused.order_id).await?, 1);

    // An authorization that turns up after the cancel: voided as a step of its own,
    // the order cancelled throughout.
    cancelled_out_of_stock(&env, &late).await?;
    env.reply(&payment(&late, Operation::Authorize, None)).await?;
    env.until(late.order_id, "voiding_late").await?;
    assert_eq!(env.order_status(late.order_id).await?.0, "cancelled");
    env.reply(&payment(&late, Operation::Void, exhausted())).await?;
    super::settle(&env).await?;
    sweep_hours(&env, now, 4).await?;
    assert_eq!(env.saga(late.order_id).await?.state, "voiding_late");
    assert_eq!(env.sent_count(late.order_id, "payments.settle:void").await?, 5);
    let refused =
        souk_workers::orders::saga::operator::compensate(&env.db.pool, late.order_id, "cli:ops").await;
    assert!(
        matches!(&refused, Err(souk_workers::orders::saga::operator::OperatorError::Refused(m)) if m.contains("already compensating")),
        "{refused:?}"
    );
    env.reply(&payment(&late, Operation::Void, None)).await?;
    let saga = env.until(late.order_id, "cancelled").await?;
    assert_eq!(saga.deadline, None);
    assert_eq!(env.order_status(late.order_id).await?.0, "cancelled");
    assert_eq!(env.events(subjects::ORDERS_CANCELLED, late.order_id).await?, 1, "cancelled once");
    Ok(())
}

/// A capture the payments pool holds (its provider's breaker open) was given up after
/// 6 minutes, unwinding a paid order; a refund was given up after three sends, keeping
/// the money.
#[tokio::test]
async fn a_late_capture_and_a_capture_held_by_its_provider_are_never_given_up() -> anyhow::Result<()> {
    let env = SagaEnv::start().await?;
    let (held, late) = (order(&[("SKU-A", "s1", 1, 700)]), order(&[("SKU-B", "s1", 1, 700)]));
    env.place(&held).await?;
    drive_to(&env, &held, "capturing").await?;
    let now = sweep_hours(&env, Utc::now(), 5).await?;
    assert_eq!(env.saga(held.order_id).await?.state, "capturing", "still waiting for the capture");
    assert_eq!(env.sent_count(held.order_id, "payments.settle:capture").await?, 6);
    env.reply(&payment(&held, Operation::Capture, None)).await?;
    env.until(held.order_id, "fulfilling").await?;

    cancelled_out_of_stock(&env, &late).await?;
    env.reply(&payment(&late, Operation::Capture, None)).await?;
    env.until(late.order_id, "refunding").await?;
    env.reply(&payment(&late, Operation::Refund, exhausted())).await?;
    super::settle(&env).await?;
    sweep_hours(&env, now, 5).await?;
    assert_eq!(env.saga(late.order_id).await?.state, "refunding", "the refund is still sent");
    assert_eq!(env.sent_count(late.order_id, "payments.settle:refund").await?, 6);
    env.reply(&payment(&late, Operation::Refund, None)).await?;
    env.until(late.order_id, "cancelled").await?;
    Ok(())
}

/// `fulfilling` had no deadline: a request lost with a stream (or its answer) left a
/// confirmed order nothing would finish.
#[tokio::test]
async fn a_fulfilment_request_or_answer_lost_is_sent_again_and_answered_again() -> anyhow::Result<()> {
    let env = SagaEnv::start().await?;
    let cmd = order(&[("SKU-A", "s1", 1, 700), ("SKU-B", "s2", 1, 300)]);
    let id = cmd.order_id;
    env.place(&cmd).await?;
    drive_to(&env, &cmd, "fulfilling").await?;
    let saga = env.saga(id).await?;
    let a_day = Utc::now() + Duration::hours(24);
    assert!(saga.deadline.is_some_and(|d| d > a_day - Duration::minutes(5)), "a day: {saga:?}");
    assert_eq!(
        sweep(&env.db.pool, Utc::now() + Duration::hours(1), 100, &Stalled::default()).await?,
        Swept::default()
    );
    env.reply(&replies::shipped(&cmd, "s1")).await?;
    super::settle(&env).await?;
    // A day on without s2's answer: only s2 is asked again.
    let swept = sweep(&env.db.pool, a_day + Duration::hours(1), 100, &Stalled::default()).await?;
    assert_eq!(swept, Swept { resent: 1, compensated: 0, waiting: 0 });
    super::settle(&env).await?;
    assert_eq!(env.sent_count(id, "fulfilment.request:s1").await?, 1);
    assert_eq!(env.sent_count(id, "fulfilment.request:s2").await?, 2);
    // Never given up, however long the seller takes.
    let mut later = a_day;
    for _ in 0..2 * MAX_ATTEMPTS {
        later += Duration::days(30);
        assert_eq!(sweep(&env.db.pool, later, 100, &Stalled::default()).await?.compensated, 0);
        super::settle(&env).await?;
    }
    let saga = env.saga(id).await?;
    assert_eq!(saga.state, "fulfilling");
    assert_eq!(env.sent_count(id, "fulfilment.request:s2").await?, 2 + 2 * MAX_ATTEMPTS as usize);
    // Each request's step is closed when it is sent again: one awaits its reply.
    let open: Vec<_> =
        saga.steps.iter().filter(|s| s.step == "fulfil s2" && s.finished_at.is_none()).collect();
    assert_eq!(open.len(), 1, "{:?}", saga.steps);
    // A seller taking weeks is not a stuck saga.
    assert!(sagas::list(&env.db.pool, None, true, 10).await?.iter().all(|s| s.order_id != id));
    // s2's answer, sent again by the fulfilment pool for the repeated request.
    env.reply(&replies::shipped(&cmd, "s2")).await?;
    env.until(id, "shipped").await?;
    assert_eq!(env.order_status(id).await?.0, "shipped");
    Ok(())
}
