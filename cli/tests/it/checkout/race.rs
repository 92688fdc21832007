//! Buyers racing for the last units, and holds that expire: stock is never oversold
//! and always conserved (on hand + sold = what the seller put up; held back to 0).

use super::*;
use futures::StreamExt;
use souk_testkit::{
    StackOptions,
    catalog::{for_sale, seed},
};

const BUYERS: usize = 200;
const UNITS: i64 = 50;
const PRICE: i64 = 1999;

/// 200 buyers put the SKU's one unit in their carts and check out at once, all
/// accepted before any saga runs (the ingress checks availability, which nothing holds
/// yet); then two worker processes run the sagas side by side. Exactly 50 are
/// confirmed, 150 cancelled for stock, and the books agree.
#[tokio::test]
async fn two_hundred_buyers_race_for_fifty_units_and_exactly_fifty_are_sold() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions { pools: false, ..Default::default() }).await?;
    seed(&stack.db.pool, TENANT, &[for_sale("LAST", "rare", PRICE, UNITS)]).await?;
    let buyers: Vec<(String, String)> =
        (0..BUYERS).map(|i| (format!("b{i}"), buyer(&stack, &format!("b{i}")))).collect();
    let placed: Vec<anyhow::Result<(Uuid, String)>> = futures::stream::iter(&buyers)
        .map(|(name, token)| {
            let stack = &stack;
            async move {
                let id = buy(stack, token, &format!("{name}-k"), &[("LAST", 1)], "tok_ok").await?;
                anyhow::Ok((id, token.clone()))
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let placed: Vec<(Uuid, String)> = placed.into_iter().collect::<anyhow::Result<_>>()?;
    assert_eq!(placed.len(), BUYERS, "every checkout accepted");

    let workers = [stack.start_worker(&[]).await?, stack.start_worker(&[]).await?];
    let ended = eventually(Duration::from_secs(180), || async {
        let open = stack.count("select 1 from orders where status not in ('confirmed', 'cancelled')").await?;
        let all = stack.count("select 1 from orders").await?;
        anyhow::Ok((open == 0 && all == BUYERS as i64).then_some(()))
    });
    ended.await?;
    stack.quiescent(WAIT).await?;
    // Each buyer reads their order over HTTP.
    let (mut confirmed, mut cancelled) = (0, 0);
    for (id, token) in &placed {
        let o = order(&stack, token, *id).await?;
        match o["status"].as_str() {
            Some("confirmed") => confirmed += 1,
            Some("cancelled") if o["reason"] == "out of stock: SKU LAST" => cancelled += 1,
            _ => anyhow::bail!("neither sold nor cancelled for stock: {o}"),
        }
    }
    assert_eq!((confirmed, cancelled), (UNITS, BUYERS as i64 - UNITS), "confirmed, cancelled for stock");
    assert_eq!(units(&stack, "LAST").await?, (0, 0, UNITS), "on hand, held, sold: no oversell");
    assert_eq!(product_stock(&stack, &placed[0].1, "LAST").await?, 0);
    let (captures, captured): (i64, i64) =
        sqlx::query_as("select count(*), coalesce(sum(amount_minor), 0)::bigint from payment_captures")
            .fetch_one(&stack.db.pool)
            .await?;
    assert_eq!((captures, captured), (UNITS, UNITS * PRICE), "one capture per sale");
    let authorizations = stack.count("select 1 from payment_authorizations").await?;
    assert_eq!(authorizations, UNITS, "buyers without stock were never charged");
    let moved_total: u32 = placed.iter().map(|(id, _)| moved(&stack, *id, Operation::Authorize)).sum();
    assert_eq!(moved_total as i64, UNITS, "the sandboxes authorized 50 payments");
    let captured_total: u32 = placed.iter().map(|(id, _)| moved(&stack, *id, Operation::Capture)).sum();
    assert_eq!(captured_total as i64, UNITS, "the sandboxes captured 50 payments");
    for w in workers {
        w.stop().await;
    }
    Ok(())
}

/// A hold whose order never completes (the payments pools are not running: the saga
/// waits to authorize) is released when its time passes — the test moves the hold's
/// clock instead of waiting the 11 minutes a hold lasts — and its units are bought by
/// another buyer. When payments come back the first order is authorized, its commit is
/// refused (the hold expired), the authorization voided and the order cancelled.
#[tokio::test]
async fn an_expired_hold_returns_its_stock_and_its_late_order_is_voided_and_cancelled() -> anyhow::Result<()>
{
    let stack = Stack::start_with(StackOptions { pools: false, ..Default::default() }).await?;
    seed(&stack.db.pool, TENANT, &[for_sale("ONE", "rare", 5000, 1)]).await?;
    let (gus, hal) = (buyer(&stack, "gus"), buyer(&stack, "hal"));
    let unpaid = stack.start_worker(&pools_but(&stack, &["payments-authorize"])).await?;
    let first = buy(&stack, &gus, "g1", &[("ONE", 1)], "tok_ok").await?;
    eventually(WAIT, || async {
        anyhow::Ok((saga_state(&stack, &gus, first).await? == "authorizing").then_some(()))
    })
    .await?;
    assert_eq!(product_stock(&stack, &hal, "ONE").await?, 0, "held");
    let (status, problem) = put_item(&stack, &hal, "ONE", 1).await?;
    assert_eq!(status, 422, "nothing left to put in a cart: {problem}");

    // The hold's time passes (the database's clock decides expiry).
    sqlx::query("update stock_reservations set hold_until = now() where order_id = $1")
        .bind(first)
        .execute(&stack.db.pool)
        .await?;
    eventually(WAIT, || async { anyhow::Ok((product_stock(&stack, &hal, "ONE").await? == 1).then_some(())) })
        .await?;
    assert_eq!(units(&stack, "ONE").await?, (1, 0, 0), "released by the expiry sweeper");
    let second = buy(&stack, &hal, "h1", &[("ONE", 1)], "tok_ok").await?;
    eventually(WAIT, || async {
        anyhow::Ok((saga_state(&stack, &hal, second).await? == "authorizing").then_some(()))
    })
    .await?;

    unpaid.stop().await;
    let worker = stack.start_worker(&[]).await?;
    order_reaches(&stack, &hal, second, &["confirmed"], WAIT).await?;
    let late = order_reaches(&stack, &gus, first, &["cancelled"], WAIT).await?;
    assert!(late["reason"].as_str().is_some_and(|r| !r.is_empty()), "{late}");
    stack.quiescent(WAIT).await?;
    let voided =
        Ledger { authorized: 1, captured: 0, voided: 1, refunded: 0, provider: Some("primary".into()) };
    assert_eq!(ledger(&stack, first).await?, voided, "the late order's authorization voided");
    assert_eq!(moved(&stack, first, Operation::Void), 1);
    assert_eq!(moved(&stack, first, Operation::Capture), 0);
    assert_eq!(units(&stack, "ONE").await?, (0, 0, 1), "sold once");
    worker.stop().await;
    Ok(())
}
