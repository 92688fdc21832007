//! Executing one delivery: its span, the handler call (directly or through the pool's
//! batcher), the handler timeout, panics, progress acks while it runs, and holding it
//! while the pool's breaker is open.

use async_nats::jetstream::{self, AckKind};
use futures::FutureExt;
use souk_pipelines::follow::AfterFailure;
use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::{
    Delivery, ErrorClass, Handler, HandlerError, Outcome, breaker,
    pool::Ctx,
    settle,
    waiting::{Claimed, WorkClaim},
};
use crate::{batcher::BatchFn, trace};

/// The handler slot a delivery runs in: given up while the delivery waits for another
/// delivery of the same work, taken again to run it.
pub(super) struct Slot {
    permit: Option<OwnedSemaphorePermit>,
    slots: Arc<Semaphore>,
}

impl Slot {
    pub(super) fn new(permit: OwnedSemaphorePermit, slots: Arc<Semaphore>) -> Slot {
        Slot { permit: Some(permit), slots }
    }

    fn give_up(&mut self) {
        self.permit = None;
    }

    /// Take a slot again: `false` if the pool shuts down first.
    async fn take(&mut self, cancel: &tokio_util::sync::CancellationToken) -> bool {
        if self.permit.is_some() {
            return true;
        }
        tokio::select! {
            p = self.slots.clone().acquire_owned() => {
                self.permit = p.ok();
                self.permit.is_some()
            }
            () = cancel.cancelled() => false,
        }
    }
}

/// Run one fetched message through the handler and settle it.
pub(super) async fn process(ctx: &Ctx, msg: jetstream::Message, slot: &mut Slot) {
    let (stream_sequence, delivered, key) = match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u64, super::ledger::key_of(&info)),
        Err(e) => {
            tracing::error!(pool = %ctx.pool, error = %e, "message without JetStream metadata; leaving it");
            return;
        }
    };
    // Deferred deliveries (a schema too new for this release) are not attempts.
    let history = ctx.ledger.get(key);
    let attempt = delivered.saturating_sub(history.deferrals).max(1);
    let delivery = Delivery::of(&msg, stream_sequence, attempt, ctx.consumer.name.clone());
    let span = tracing::info_span!(
        "handle",
        pool = %ctx.pool,
        subject = %delivery.subject,
        message_id = delivery.message_id.as_deref().unwrap_or(""),
        stream_seq = stream_sequence,
        attempt,
        outcome = tracing::field::Empty,
    );
    trace::set_parent_from(&span, delivery.headers.as_ref());
    async {
        let started = Instant::now();
        let max_deliver = ctx.consumer.max_deliver.max(1) as u64;
        // The mark of this delivery's extra run, if it gets one (see `last_run`).
        let mut marked = None;
        // A message this release cannot read yet waits for the upgrade, whatever its
        // delivery count: earlier deferrals may have been another process's.
        let first = match ctx.handler.too_new(&delivery) {
            Some(reason) => Some(Outcome::defer("schema_too_new", reason)),
            None => match settle::past_max_deliver(attempt, max_deliver, &history) {
                // Deliveries this process does not know of may have been holds or waits
                // handed back at shutdown or on a pause, or kept by a process that was
                // killed (each a delivery, none an attempt). While the dependency is down
                // such a delivery is held too, then run once more when the breaker
                // closes; otherwise it runs once more, marked, unless an earlier such run
                // never returned (the process died in it: a message that crashes its
                // worker).
                Some(_) if history.last_error.is_none() => match in_outage(ctx).await {
                    true => None,
                    false => match ctx.last_runs.begin(&ctx.consumer.name, key).await {
                        Ok(true) => {
                            marked = Some(key);
                            None
                        }
                        Ok(false) => Some(settle::extra_run_unfinished(attempt, max_deliver)),
                        Err(e) => {
                            tracing::warn!(error = %e, "the extra run of a delivery past max-deliver is not marked");
                            None
                        }
                    },
                },
                decided => decided,
            },
        };
        // The handler did not run for `first`: no attempt to record.
        let label = match first {
            Some(outcome) => settle::settle(ctx, &msg, &delivery, key, outcome, max_deliver, false).await,
            None => match run_until_not_dependency(ctx, &msg, &delivery, slot, key, marked).await {
                Some(outcome) => settle::settle(ctx, &msg, &delivery, key, outcome, max_deliver, true).await,
                None => settle::hand_back(ctx, &msg, key).await,
            },
        };
        tracing::Span::current().record("outcome", label);
        metrics::counter!("souk_worker_messages_total", "pool" => ctx.pool.clone(), "outcome" => label)
            .increment(1);
        let took = started.elapsed();
        metrics::histogram!("souk_worker_handle_seconds", "pool" => ctx.pool.clone())
            .record(took.as_secs_f64());
        ctx.stats.record(label, took);
    }
    .instrument(span)
    .await
}

/// Run the handler until its outcome is not a dependency failure. A dependency failure
/// trips the pool's breaker and the delivery is held — kept with progress acks, never
/// settled, so the outage costs it no delivery attempt — until the breaker closes, then
/// run again. `None` when the pool shuts down while the delivery is held.
///
/// Only the delivery's first dependency failure is recorded as a failed attempt
/// (`held`): it re-runs after every passing probe, and an outage must not write a row
/// per probe.
///
/// A delivery waiting for another delivery of the same work (`Waiting`) is kept the
/// same way for its wait (progress acks), then run again: not handed back for a
/// redelivery, which JetStream would count as a delivery. A count of waits kept in the
/// process could not follow the message to another process (or this one restarted), and
/// there the deliveries past max-deliver read as attempts that never finished: a
/// healthy command dead-lettered unrun (found by the chaos test once its workers were
/// killed instead of drained). The delivery gives its handler slot up while it waits
/// (the pool fetches other work meanwhile: a provider's outage must not fill the slots
/// with deliveries waiting for it) and takes one again to run.
async fn run_until_not_dependency(
    ctx: &Ctx,
    msg: &jetstream::Message,
    delivery: &Delivery,
    slot: &mut Slot,
    key: super::ledger::Key,
    mut marked: Option<super::ledger::Key>,
) -> Option<Outcome> {
    let mut recorded = false;
    // The work this delivery waits on, claimed in the pool while it is kept.
    let mut waiting_on: Option<WorkClaim<'_>> = None;
    loop {
        if ctx.breaker.state() != super::BreakerState::Closed && !hold(ctx, msg).await {
            // Handed back before its extra run ran: not a run that died.
            if let Some(key) = marked {
                ctx.last_runs.abandoned(&ctx.consumer.name, key).await;
            }
            return None;
        }
        let outcome = run_handler(ctx, msg, delivery).await;
        // The extra run returned (whatever it returned): unmark it, before any wait.
        if let Some(key) = marked.take()
            && let Err(e) = ctx.last_runs.end(&ctx.consumer.name, key).await
        {
            tracing::warn!(error = %e, "the mark of an extra run that returned is not removed");
        }
        match outcome {
            Outcome::Error(e) if e.class == ErrorClass::Dependency => {
                tracing::debug!(code = e.code, error = %e.message, "dependency failed; holding the message");
                if let Some(failures) = ctx.failures.as_ref().filter(|_| !recorded) {
                    failures.attempt(delivery, &e, AfterFailure::Held);
                    recorded = true;
                }
                ctx.breaker.trip(&e);
            }
            Outcome::Error(e) if e.class == ErrorClass::Waiting => {
                metrics::counter!("souk_worker_waiting_total", "pool" => ctx.pool.clone(), "code" => e.code)
                    .increment(1);
                tracing::debug!(code = e.code, error = %e.message, "waiting for another delivery of the same work");
                if let (None, Some(work)) = (&waiting_on, &e.work) {
                    match ctx.waiting_work.take(work, key) {
                        Claimed::Now(claim) => waiting_on = Some(claim),
                        // An earlier delivery of this same message (its progress acks
                        // lost past the ack wait): not a copy to drop — acking it would
                        // ack the message the other is waiting with.
                        Claimed::BySameMessage => {}
                        // Another message waits on it here and will answer: this copy
                        // (a re-sent command) is done.
                        Claimed::ByAnother => {
                            metrics::counter!("souk_worker_superseded_total", "pool" => ctx.pool.clone())
                                .increment(1);
                            tracing::debug!(work = %work, "another delivery waits on the same work here: acked");
                            return Some(Outcome::Ack);
                        }
                    }
                }
                slot.give_up();
                // A paused pool runs nothing new: the delivery goes back to JetStream
                // when its wait ends (review: waiters kept running in a paused pool, which
                // never read as paused).
                if !wait(ctx, msg, e.retry_after.unwrap_or(settle::WAITING_DELAY)).await
                    || ctx.live.is_paused()
                {
                    return None;
                }
                // Kept meanwhile too: every slot may be held (a dependency outage holds
                // deliveries in theirs) for longer than the ack wait.
                if !keeping(ctx, msg, slot.take(&ctx.cancel)).await {
                    return None;
                }
            }
            Outcome::Ack => {
                ctx.breaker.handled();
                return Some(Outcome::Ack);
            }
            outcome => return Some(outcome),
        }
    }
}

/// Keep `msg` (progress acks) for `delay`: `false` if the pool shuts down meanwhile.
async fn wait(ctx: &Ctx, msg: &jetstream::Message, delay: Duration) -> bool {
    let _waiting = ctx.live.waiting_one(&ctx.pool);
    keeping(ctx, msg, async {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = ctx.cancel.cancelled() => false,
        }
    })
    .await
}

/// Run `work` while sending `msg`'s progress acks, so JetStream keeps the delivery for
/// as long as `work` takes (a handler, a hold, a wait).
async fn keeping<F: std::future::Future>(ctx: &Ctx, msg: &jetstream::Message, work: F) -> F::Output {
    tokio::pin!(work);
    let mut progress = tokio::time::interval(progress_every(ctx));
    progress.tick().await;
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = progress.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    }
}

/// Whether the pool's dependency is down now: its breaker is not closed, or its probe
/// fails (which trips the breaker, so the delivery is held like a failed one).
async fn in_outage(ctx: &Ctx) -> bool {
    if ctx.breaker.state() != super::BreakerState::Closed {
        return true;
    }
    match breaker::probe(ctx.handler.as_ref()).await {
        Ok(()) => false,
        Err(e) => {
            ctx.breaker.trip(&e);
            true
        }
    }
}

/// Keep `msg` (progress acks) until the breaker closes: `false` if the pool shuts down.
async fn hold(ctx: &Ctx, msg: &jetstream::Message) -> bool {
    let held = metrics::gauge!("souk_worker_held_messages", "pool" => ctx.pool.clone());
    held.increment(1.0);
    let resumed = keeping(ctx, msg, ctx.breaker.closed(&ctx.cancel)).await;
    held.decrement(1.0);
    resumed
}

fn progress_every(ctx: &Ctx) -> Duration {
    (ctx.consumer.ack_wait / 3).max(Duration::from_millis(100))
}

/// Run the handler with a timeout, catching panics, sending progress acks meanwhile.
///
/// A batched delivery waits for its batch however long it queues (progress acks keep
/// the message meanwhile): the batch itself is cut at the handler timeout, inside the
/// batcher, which drops (rolls back) its work. Timing out here instead would settle the
/// message (retry, or dead letter on the last attempt) while its batch might still
/// commit it.
async fn run_handler(ctx: &Ctx, msg: &jetstream::Message, delivery: &Delivery) -> Outcome {
    let limit = match &ctx.batcher {
        Some(_) => Duration::MAX,
        None => ctx.handler_timeout,
    };
    let handle = async {
        match &ctx.batcher {
            Some(batcher) => batcher
                .call(trace::carrying_current(delivery))
                .await
                .unwrap_or_else(|e| Outcome::retry("runtime_batcher", e)),
            None => ctx.handler.handle(delivery).await,
        }
    };
    let work = tokio::time::timeout(limit, AssertUnwindSafe(handle).catch_unwind());
    match keeping(ctx, msg, work).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => panicked(panic.as_ref()),
        Err(_) => timed_out(ctx.handler.as_ref(), ctx.handler_timeout).await,
    }
}

/// A handler timed out: the dependency's fault if its probe fails too (a hung store),
/// else the message's (it may loop or be too big), which counts toward max-deliver.
async fn timed_out(handler: &dyn Handler, limit: Duration) -> Outcome {
    match breaker::probe(handler).await {
        Ok(()) => Outcome::retry("handler_timeout", format!("handler timed out after {limit:?}")),
        Err(e) => Outcome::Error(HandlerError::dependency(
            "handler_timeout",
            format!("handler timed out after {limit:?}; probe: {e}"),
        )),
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> Outcome {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Outcome::retry("handler_panic", format!("handler panicked: {what}"))
}

/// The batch function for a pool's batcher: `handle_batch`, cut at `timeout` (its future
/// dropped, so an open transaction rolls back), with panics caught and one outcome
/// guaranteed per delivery.
pub(super) fn batch_fn(handler: Arc<dyn Handler>, timeout: Duration) -> BatchFn<Delivery, Outcome> {
    Arc::new(move |deliveries: Vec<Delivery>| {
        let handler = handler.clone();
        async move {
            let n = deliveries.len();
            metrics::histogram!("souk_worker_batch_size").record(n as f64);
            let run = AssertUnwindSafe(handler.handle_batch(&deliveries)).catch_unwind();
            let mut outcomes = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(outcomes)) => outcomes,
                Ok(Err(panic)) => vec![panicked(panic.as_ref()); n],
                Err(_) => vec![timed_out(handler.as_ref(), timeout).await; n],
            };
            if outcomes.len() != n {
                tracing::error!(
                    expected = n,
                    got = outcomes.len(),
                    "handle_batch returned a wrong count; retrying all"
                );
                outcomes =
                    vec![
                        Outcome::retry("handler_bug", "handle_batch returned a wrong number of outcomes");
                        n
                    ];
            }
            outcomes
        }
        .boxed()
    })
}
