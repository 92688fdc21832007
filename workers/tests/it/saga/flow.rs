//! The saga's forward path: every command sent once, in order, with the right content;
//! duplicated and out-of-order replies change nothing; a worker stopped between two
//! steps resumes.

use super::{SagaEnv, drive_to, order, payment, replies};
use souk_pipelines::{payments::Operation, subjects};

#[tokio::test]
async fn a_multi_seller_order_is_confirmed_then_shipped_with_each_command_sent_once() -> anyhow::Result<()> {
    let env = SagaEnv::start().await?;
    let cmd = order(&[("SKU-A", "s1", 2, 500), ("SKU-B", "s2", 1, 1000), ("SKU-A", "s1", 1, 500)]);
    let id = cmd.order_id;
    env.place(&cmd).await?;
    env.until(id, "reserving").await?;
    let reserve = &env.commands(id).await?[0].1;
    assert_eq!(
        reserve["lines"],
        serde_json::json!([{"sku": "SKU-A", "quantity": 3}, {"sku": "SKU-B", "quantity": 1}])
    );
    let hold_until: chrono::DateTime<chrono::Utc> = serde_json::from_value(reserve["hold_until"].clone())?;
    let hold = hold_until - chrono::Utc::now();
    assert!(hold > chrono::Duration::minutes(10), "held for the whole checkout and a margin: {hold}");

    drive_to(&env, &cmd, "fulfilling").await?;
    let commands = env.commands(id).await?;
    let authorize = &commands[1].1;
    assert_eq!(
        (&authorize["amount_minor"], &authorize["payment_token"], &authorize["idempotency_key"]),
        (&2500.into(), &"tok_ok".into(), &format!("souk-{id}-authorize").into())
    );
    let capture = &commands[3].1;
    assert_eq!(capture["idempotency_key"], format!("souk-{id}-capture"));
    assert_eq!(env.order_status(id).await?.0, "confirmed");
    assert_eq!(env.events(subjects::ORDERS_CONFIRMED, id).await?, 1);
    let s1 = commands.iter().find(|(_, b)| b["seller"] == "s1").map(|(_, b)| b["lines"].clone());
    assert_eq!(
        s1,
        Some(serde_json::json!([{"sku": "SKU-A", "quantity": 2}, {"sku": "SKU-A", "quantity": 1}]))
    );

    env.reply(&replies::shipped(&cmd, "s1")).await?;
    env.reply(&replies::shipped(&cmd, "s1")).await?; // the same seller twice
    super::settle(&env).await?;
    assert_eq!(env.saga(id).await?.state, "fulfilling", "s2 has not shipped");
    assert_eq!(env.order_status(id).await?.0, "confirmed");
    env.reply(&replies::shipped(&cmd, "s2")).await?;
    let saga = env.until(id, "shipped").await?;
    assert_eq!(env.order_status(id).await?.0, "shipped");
    assert_eq!(env.events(subjects::ORDERS_SHIPPED, id).await?, 1);
    assert_eq!(
        env.sent(id).await?,
        [
            "inventory.reserve",
            "payments.authorize",
            "inventory.commit",
            "payments.settle:capture",
            "fulfilment.request:s1",
            "fulfilment.request:s2"
        ]
    );
    let steps: Vec<(&str, Option<&str>)> =
        saga.steps.iter().map(|s| (s.step.as_str(), s.outcome.as_deref())).collect();
    assert_eq!(
        steps[..4],
        [
            ("reserve", Some("ok")),
            ("authorize", Some("ok (sandbox-a)")),
            ("commit", Some("ok")),
            ("capture", Some("ok (sandbox-a)")),
        ]
    );
    assert!(saga.steps.iter().all(|s| s.finished_at.is_some()), "{:?}", saga.steps);
    assert_eq!(saga.deadline, None, "nothing awaited");
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}

#[tokio::test]
async fn an_order_without_a_payment_token_is_cancelled_at_once_with_a_reason() -> anyhow::Result<()> {
    let env = SagaEnv::start().await?;
    let mut cmd = order(&[("SKU-A", "", 1, 500)]);
    cmd.payment_token = None;
    env.place(&cmd).await?;
    let saga = env.until(cmd.order_id, "cancelled").await?;
    let (status, reason) = env.order_status(cmd.order_id).await?;
    assert_eq!(
        (status.as_str(), reason.as_deref()),
        ("cancelled", Some(souk_workers::orders::saga::NO_PAYMENT_REASON))
    );
    assert_eq!(saga.reason.as_deref(), Some(souk_workers::orders::saga::NO_PAYMENT_REASON));
    assert!(env.sent(cmd.order_id).await?.is_empty(), "nothing to reserve or pay");
    assert_eq!(env.events(subjects::ORDERS_ACCEPTED, cmd.order_id).await?, 0, "never accepted");
    assert_eq!(env.events(subjects::ORDERS_CANCELLED, cmd.order_id).await?, 1);
    Ok(())
}

#[tokio::test]
async fn duplicated_and_out_of_order_replies_change_nothing() -> anyhow::Result<()> {
    let env = SagaEnv::start().await?;
    let cmd = order(&[("SKU-A", "s1", 1, 700)]);
    let id = cmd.order_id;
    env.place(&cmd).await?;
    env.until(id, "reserving").await?;
    // A capture before anything was authorized, and a commit answer out of turn.
    env.reply(&payment(&cmd, Operation::Capture, None)).await?;
    env.reply(&replies::committed(&cmd, true)).await?;
    super::settle(&env).await?;
    assert_eq!(env.saga(id).await?.state, "reserving");
    // The reservation, delivered twice under one id (the dedupe window drops one) and
    // published again under another (a relay that republished past the window).
    let reserved = replies::reserved(&cmd);
    env.reply_as(&reserved, "reserved-1".into()).await?;
    env.reply_as(&reserved, "reserved-1".into()).await?;
    env.reply_as(&reserved, "reserved-2".into()).await?;
    env.until(id, "authorizing").await?;
    super::settle(&env).await?;
    // A stale reserve reply after the saga moved on.
    env.reply(&replies::rejected(&cmd, "SKU-A")).await?;
    super::settle(&env).await?;
    let saga = env.saga(id).await?;
    assert_eq!((saga.state.as_str(), saga.reason), ("authorizing", None));
    assert_eq!(env.sent(id).await?, ["inventory.reserve", "payments.authorize"], "one authorization");
    let ignored =
        saga.steps.iter().filter(|s| s.outcome.as_deref().is_some_and(|o| o.starts_with("ignored"))).count();
    assert_eq!(
        ignored, 4,
        "recorded: capture, commit, the second reservation, the rejection: {:?}",
        saga.steps
    );
    assert_eq!(env.order_status(id).await?.0, "accepted");
    // It still goes on.
    env.reply(&payment(&cmd, Operation::Authorize, None)).await?;
    env.until(id, "committing").await?;
    assert_eq!(env.dead_letters().await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_worker_stopped_between_two_steps_resumes_when_restarted() -> anyhow::Result<()> {
    let mut env = SagaEnv::start().await?;
    let cmd = order(&[("SKU-A", "s1", 1, 700)]);
    let id = cmd.order_id;
    env.place(&cmd).await?;
    drive_to(&env, &cmd, "authorizing").await?;
    env.stop_pools().await?;
    // The authorization comes while no worker runs.
    env.reply(&payment(&cmd, Operation::Authorize, None)).await?;
    env.start_pools().await?;
    env.until(id, "committing").await?;
    env.reply(&replies::committed(&cmd, true)).await?;
    env.until(id, "capturing").await?;
    assert_eq!(
        env.sent(id).await?,
        ["inventory.reserve", "payments.authorize", "inventory.commit", "payments.settle:capture"]
    );
    Ok(())
}
