//! What each inventory command does to one order's reservation, in the transaction of
//! the message that asked (which also records it in the inbox): reserve all lines or
//! none, release, commit, and expire (the sweeper's, in a transaction of its own).
//!
//! Every decision takes the order's lock first (`inventory::lock_order`), then touches
//! stock rows one SKU at a time in SKU order: two orders racing for the same SKUs wait
//! for each other instead of deadlocking, and a commit and an expiry of one order are
//! decided one after the other — whichever runs first wins, the other finds it decided.
//! A hold past its `hold_until` can no longer be committed (by the database's clock),
//! whether or not the sweeper has come by: a commit that finds it due expires it
//! itself, so how late the sweeper runs changes when units return, never who wins.

use chrono::Utc;
use souk_pipelines::inventory::{
    CommitStock, ReleaseStock, ReserveStock, Shortage, StockCommitted, StockLine, StockRejected,
    StockReleased, StockReserved,
};
use souk_stores::postgres::{
    self as pg,
    inventory::{self as inv, Movement, Reservation, State},
    outbox,
};
use sqlx::{Acquire, PgConnection};
use std::collections::BTreeMap;
use uuid::Uuid;

use super::events::outbox_event;
use crate::dedupe::ApplyError;

/// The end of a hold made now for a reserve that asked for `asked` and was stored at
/// `stored_at`: `asked`, moved on by as long as the command waited in the stream — a
/// reserve whose pool was paused or behind holds for as long as its saga planned, from
/// when it is made — and never already due (then a whole hold from now). A hold made
/// already due was expired within a second and its order, after the buyer's card was
/// authorized, voided and cancelled (review, eleventh session); the first fix renewed
/// only holds already past, and one arriving just before its time got the seconds left
/// (third review).
fn starting_hold(
    asked: chrono::DateTime<Utc>,
    stored_at: Option<std::time::SystemTime>,
) -> chrono::DateTime<Utc> {
    let now = Utc::now();
    let waited = stored_at
        .and_then(|at| std::time::SystemTime::now().duration_since(at).ok())
        .and_then(|w| chrono::Duration::from_std(w).ok())
        .unwrap_or_default();
    let moved = asked + waited;
    match moved > now {
        true => moved,
        false => now + crate::orders::saga::hold_duration(),
    }
}

/// Reason of the release an expiry makes.
pub const EXPIRED_REASON: &str = "the hold expired";

/// Answer to a reserve that arrives after its order's release.
pub const RELEASED_BEFORE_RESERVED: &str = "the order's stock was released before this reservation arrived";

/// The command's lines merged per SKU and sorted by SKU (the lock order), or why the
/// command can never be applied.
fn merged(lines: &[StockLine]) -> Result<Vec<StockLine>, ApplyError> {
    if lines.is_empty() {
        return Err(ApplyError::Message("a reservation without lines".into()));
    }
    let mut by_sku: BTreeMap<&str, i64> = BTreeMap::new();
    for line in lines {
        if line.sku.is_empty() || line.quantity <= 0 {
            return Err(ApplyError::Message(format!(
                "line {:?} x {}: a line needs a SKU and a positive quantity",
                line.sku, line.quantity
            )));
        }
        let total = by_sku.entry(&line.sku).or_default();
        *total = total
            .checked_add(line.quantity)
            .ok_or_else(|| ApplyError::Message(format!("the quantity of {} overflows", line.sku)))?;
    }
    Ok(by_sku.into_iter().map(|(sku, quantity)| StockLine { sku: sku.to_owned(), quantity }).collect())
}

/// Hold every line of `cmd`, or none (see the module docs). A reservation already
/// decided is answered again as it was, changing nothing.
pub async fn reserve(
    tx: &mut PgConnection,
    cmd: &ReserveStock,
    causation: &str,
    stored_at: Option<std::time::SystemTime>,
) -> Result<(), ApplyError> {
    let lines = merged(&cmd.lines)?;
    inv::lock_order(tx, &cmd.tenant, cmd.order_id).await?;
    if let Some(previous) = inv::reservation(tx, &cmd.tenant, cmd.order_id).await? {
        if previous.state == State::Released && previous.lines.is_empty() {
            // Released before it was reserved: nothing is held for an order whose
            // saga has moved on; the answer says the order's stock is released.
            metrics::counter!("souk_inventory_reservations_total", "outcome" => "released_before")
                .increment(1);
            let event = StockReleased {
                tenant: cmd.tenant.clone(),
                order_id: cmd.order_id,
                expired: false,
                released: false,
                reason: RELEASED_BEFORE_RESERVED.into(),
                at: Utc::now(),
            };
            outbox::enqueue(tx, outbox_event(&cmd.tenant, cmd.order_id, causation, &event)).await?;
            return Ok(());
        }
        metrics::counter!("souk_inventory_reservations_total", "outcome" => "replayed").increment(1);
        return answer_again(tx, cmd, &previous, causation).await;
    }
    // All lines or none: the holds are made in a savepoint, rolled back on any shortage.
    let mut attempt = tx.begin().await.map_err(pg::Error::from)?;
    let mut shortages = Vec::new();
    for line in &lines {
        // Once one line is short nothing will be held: the rest are only checked.
        let held =
            shortages.is_empty() && inv::hold(&mut attempt, &cmd.tenant, &line.sku, line.quantity).await?;
        if !held {
            let available = inv::available(&mut attempt, &cmd.tenant, &line.sku).await?;
            if !shortages.is_empty() && available >= line.quantity {
                continue;
            }
            shortages.push(Shortage { sku: line.sku.clone(), requested: line.quantity, available });
        }
    }
    if shortages.is_empty() {
        attempt.commit().await.map_err(pg::Error::from)?;
        let (hold_until, at) = inv::record(
            tx,
            &cmd.tenant,
            cmd.order_id,
            starting_hold(cmd.hold_until, stored_at),
            &lines,
            None,
        )
        .await?;
        metrics::counter!("souk_inventory_reservations_total", "outcome" => "reserved").increment(1);
        let event = StockReserved { tenant: cmd.tenant.clone(), order_id: cmd.order_id, hold_until, at };
        outbox::enqueue(tx, outbox_event(&cmd.tenant, cmd.order_id, causation, &event)).await?;
    } else {
        attempt.rollback().await.map_err(pg::Error::from)?;
        let (_, at) =
            inv::record(tx, &cmd.tenant, cmd.order_id, cmd.hold_until, &[], Some(&shortages)).await?;
        metrics::counter!("souk_inventory_reservations_total", "outcome" => "rejected").increment(1);
        let event = StockRejected { tenant: cmd.tenant.clone(), order_id: cmd.order_id, shortages, at };
        outbox::enqueue(tx, outbox_event(&cmd.tenant, cmd.order_id, causation, &event)).await?;
    }
    Ok(())
}

/// The answer a reservation got, sent again (a replayed `ReserveStock`).
async fn answer_again(
    tx: &mut PgConnection,
    cmd: &ReserveStock,
    previous: &Reservation,
    causation: &str,
) -> Result<(), ApplyError> {
    let message = if previous.state == State::Rejected {
        let event = StockRejected {
            tenant: cmd.tenant.clone(),
            order_id: cmd.order_id,
            shortages: previous.shortages.clone(),
            at: previous.decided_at,
        };
        outbox_event(&cmd.tenant, cmd.order_id, causation, &event)
    } else {
        let event = StockReserved {
            tenant: cmd.tenant.clone(),
            order_id: cmd.order_id,
            hold_until: previous.hold_until,
            at: previous.reserved_at,
        };
        outbox_event(&cmd.tenant, cmd.order_id, causation, &event)
    };
    outbox::enqueue(tx, message).await?;
    Ok(())
}

/// Give the order's units back: a held hold's to available, a committed one's sold
/// units too. Anything else (never held, released, expired) answers `released: false`;
/// an order with no reservation yet gets one, released and empty, so that its reserve
/// — overtaken by this release (queued behind an outage while the saga gave up) —
/// holds nothing when it comes. Without it the units stayed held for the cancelled
/// order until the hold expired, minutes later (found in review).
pub async fn release(tx: &mut PgConnection, cmd: &ReleaseStock, causation: &str) -> Result<(), ApplyError> {
    inv::lock_order(tx, &cmd.tenant, cmd.order_id).await?;
    let previous = inv::reservation(tx, &cmd.tenant, cmd.order_id).await?;
    let movement = match previous.as_ref().map(|r| r.state) {
        Some(State::Held) => Some(Movement::Unhold),
        Some(State::Committed) => Some(Movement::Unsell),
        _ => None,
    };
    if let (Some(movement), Some(r)) = (movement, &previous) {
        inv::apply(tx, &cmd.tenant, &r.lines, movement).await?;
        inv::set_state(tx, &cmd.tenant, cmd.order_id, State::Released).await?;
    }
    if previous.is_none() {
        inv::record_released_unreserved(tx, &cmd.tenant, cmd.order_id).await?;
    }
    let outcome = if movement.is_some() { "released" } else { "nothing" };
    metrics::counter!("souk_inventory_releases_total", "outcome" => outcome).increment(1);
    let event = StockReleased {
        tenant: cmd.tenant.clone(),
        order_id: cmd.order_id,
        expired: false,
        released: movement.is_some(),
        reason: cmd.reason.clone(),
        at: Utc::now(),
    };
    outbox::enqueue(tx, outbox_event(&cmd.tenant, cmd.order_id, causation, &event)).await?;
    Ok(())
}

/// Turn the order's held units into sold ones. A hold whose time has passed is expired
/// here instead (see the module docs); a committed one answers `committed: true` again.
pub async fn commit(tx: &mut PgConnection, cmd: &CommitStock, causation: &str) -> Result<(), ApplyError> {
    inv::lock_order(tx, &cmd.tenant, cmd.order_id).await?;
    let previous = inv::reservation(tx, &cmd.tenant, cmd.order_id).await?;
    let refused = |reason: String| (false, Some(reason));
    let (committed, reason) = match &previous {
        None => refused("no stock is held for this order".into()),
        Some(r) => match r.state {
            State::Held if r.due => {
                expire_now(tx, &cmd.tenant, cmd.order_id, r, causation).await?;
                refused(format!("the hold expired at {}", r.hold_until.to_rfc3339()))
            }
            State::Held => {
                inv::apply(tx, &cmd.tenant, &r.lines, Movement::Sell).await?;
                inv::set_state(tx, &cmd.tenant, cmd.order_id, State::Committed).await?;
                (true, None)
            }
            State::Committed => (true, None),
            State::Rejected => refused("the stock was never held (the reservation was refused)".into()),
            State::Released => refused("the hold was released".into()),
            State::Expired => refused(format!("the hold expired at {}", r.hold_until.to_rfc3339())),
        },
    };
    let outcome = if committed { "committed" } else { "refused" };
    metrics::counter!("souk_inventory_commits_total", "outcome" => outcome).increment(1);
    let event = StockCommitted {
        tenant: cmd.tenant.clone(),
        order_id: cmd.order_id,
        committed,
        reason,
        at: Utc::now(),
    };
    outbox::enqueue(tx, outbox_event(&cmd.tenant, cmd.order_id, causation, &event)).await?;
    Ok(())
}

/// Expire up to `limit` due holds in one transaction (the sweeper's): each order
/// locked without waiting (one being decided elsewhere is left for the next sweep), the
/// units of all of them returned with one update per SKU in SKU order (the lock order),
/// one `StockReleased { expired: true }` each. Returns how many it expired.
pub async fn expire_due(tx: &mut PgConnection, limit: i64, causation: &str) -> Result<u64, pg::Error> {
    let due = inv::lock_due(tx, limit).await?;
    let mut by_tenant: BTreeMap<&str, (BTreeMap<&str, i64>, Vec<Uuid>)> = BTreeMap::new();
    for hold in &due {
        let (units, orders) = by_tenant.entry(&hold.tenant).or_default();
        orders.push(hold.order_id);
        for line in &hold.lines {
            *units.entry(&line.sku).or_default() += line.quantity;
        }
    }
    for (tenant, (units, orders)) in &by_tenant {
        let lines: Vec<StockLine> = units
            .iter()
            .map(|(sku, quantity)| StockLine { sku: (*sku).to_owned(), quantity: *quantity })
            .collect();
        inv::apply(tx, tenant, &lines, Movement::Unhold).await?;
        inv::set_states(tx, tenant, orders, State::Expired).await?;
    }
    let now = Utc::now();
    let events: Vec<_> = due
        .iter()
        .map(|hold| {
            expired_late(hold.hold_until, now);
            let event = expired_event(&hold.tenant, hold.order_id, now);
            outbox_event(&hold.tenant, hold.order_id, causation, &event)
        })
        .collect();
    outbox::enqueue_many(tx, &events).await?;
    Ok(due.len() as u64)
}

fn expired_event(tenant: &str, order_id: Uuid, at: chrono::DateTime<Utc>) -> StockReleased {
    StockReleased {
        tenant: tenant.to_owned(),
        order_id,
        expired: true,
        released: true,
        reason: EXPIRED_REASON.into(),
        at,
    }
}

/// Count an expiry, and how long after its time the hold was taken back (the sweeper's
/// period bounds it).
fn expired_late(hold_until: chrono::DateTime<Utc>, now: chrono::DateTime<Utc>) {
    metrics::counter!("souk_inventory_holds_expired_total").increment(1);
    let late = (now - hold_until).to_std().unwrap_or_default();
    metrics::histogram!("souk_inventory_expiry_lateness_seconds").record(late.as_secs_f64());
}

/// Return a due hold's units and say so (`StockReleased { expired: true }`).
async fn expire_now(
    tx: &mut PgConnection,
    tenant: &str,
    order_id: Uuid,
    r: &Reservation,
    causation: &str,
) -> Result<(), pg::Error> {
    inv::apply(tx, tenant, &r.lines, Movement::Unhold).await?;
    inv::set_state(tx, tenant, order_id, State::Expired).await?;
    let now = Utc::now();
    expired_late(r.hold_until, now);
    let event = expired_event(tenant, order_id, now);
    outbox::enqueue(tx, outbox_event(tenant, order_id, causation, &event)).await?;
    Ok(())
}
