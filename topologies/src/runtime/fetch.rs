//! Fetching: pull no more messages than there are free handler slots, hand each to
//! its own task, and hand back what a pull fetched when shutdown interrupts it.

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use std::{sync::Arc, time::Duration};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    execute::{Slot, process},
    pool::Ctx,
};
use crate::{control::PoolSettings, spec::PoolSpec};

/// How long one pull request waits for messages before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Longest a pool waits for more free slots before a pull (see `gather_slots`).
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// Pull and spawn until `cancel` fires. Each spawned task holds one slot of `slots`
/// and is tracked by `tracker`; `abandon` cuts it at the drain deadline.
///
/// While `settings` say paused no pull is started. A pull already open is not cut
/// short: dropping it would strand what the server is sending it until the ack wait,
/// and a hand-back nak costs each message a delivery. Its messages run (they have
/// slots), and it ends within [`PULL_EXPIRES`]; then the pool is drained once its
/// handlers return.
#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch_loop(
    ctx: &Arc<Ctx>,
    consumer: &PullConsumer,
    spec: &PoolSpec,
    slots: &Arc<Semaphore>,
    settings: &mut watch::Receiver<PoolSettings>,
    tracker: &TaskTracker,
    abandon: &CancellationToken,
    cancel: &CancellationToken,
) {
    'fetch: while !cancel.is_cancelled() {
        // A dependency is down: fetch nothing until the breaker's probe passes.
        if !ctx.breaker.closed(cancel).await {
            break;
        }
        if !running(ctx, settings, cancel).await {
            break;
        }
        let first = tokio::select! {
            () = cancel.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        // Paused while waiting for a slot: pull nothing.
        if settings.borrow().paused {
            drop(first);
            continue;
        }
        let first = gather_slots(slots, first, spec.fetch_batch).await;
        let wanted = first.num_permits();
        let pull = consumer.batch().max_messages(wanted).expires(PULL_EXPIRES).messages();
        ctx.live.set_pulling(true);
        let _pulling = Pulling(ctx);
        let mut batch = tokio::select! {
            () = cancel.cancelled() => break,
            b = pull => match b {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(pool = %spec.name, error = %e, "pull request failed; retrying");
                    drop(first);
                    pause(cancel, Duration::from_millis(500)).await;
                    continue;
                }
            },
        };
        let mut permit = Some(first);
        let mut pull_failed = false;
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => {
                    hand_back(None, &mut batch).await;
                    break 'fetch;
                }
                m = batch.next() => m,
            };
            let msg = match next {
                None => break,
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    tracing::debug!(pool = %spec.name, error = %e, "pull batch ended with an error");
                    pull_failed = true;
                    break;
                }
            };
            if cancel.is_cancelled() {
                hand_back(Some(msg), &mut batch).await;
                break 'fetch;
            }
            // Each message takes one of the slots reserved for this pull.
            let slot = match permit.as_mut().filter(|p| p.num_permits() > 0).and_then(|p| p.split(1)) {
                Some(p) => p,
                None => match slots.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let ctx = ctx.clone();
            let abandon = abandon.clone();
            metrics::gauge!("souk_worker_in_flight", "pool" => ctx.pool.clone()).increment(1.0);
            ctx.live.started();
            let all_slots = slots.clone();
            let key = msg.info().ok().map(|i| super::ledger::key_of(&i));
            tracker.spawn(async move {
                let mut slot = Slot::new(slot, all_slots);
                tokio::select! {
                    () = process(&ctx, msg, &mut slot) => {},
                    () = abandon.cancelled() => {
                        tracing::warn!(pool = %ctx.pool, "abandoned at drain deadline; JetStream will redeliver");
                        if let Some(key) = key {
                            ctx.last_runs.abandoned(&ctx.consumer.name, key).await;
                        }
                    }
                }
                metrics::gauge!("souk_worker_in_flight", "pool" => ctx.pool.clone()).decrement(1.0);
                ctx.live.finished();
                drop(slot);
            });
        }
        if pull_failed {
            // The server ended the pull at once (consumer deleted, leader change,
            // too many waiting pulls): pulling again at once would spin against it.
            drop(permit);
            pause(cancel, Duration::from_millis(500)).await;
        }
    }
}

/// Wait while the pool is paused; `false` when `cancel` fires first.
async fn running(
    ctx: &Ctx,
    settings: &mut watch::Receiver<PoolSettings>,
    cancel: &CancellationToken,
) -> bool {
    loop {
        let paused = settings.borrow_and_update().paused;
        ctx.live.set_paused(paused);
        if !paused {
            return true;
        }
        tokio::select! {
            () = cancel.cancelled() => return false,
            changed = settings.changed() => if changed.is_err() {
                // The settings' sender is gone (its watch task ended at shutdown):
                // stay paused until cancelled.
                cancel.cancelled().await;
                return false;
            },
        }
    }
}

/// Marks the pool's pull as open until dropped (also when the loop breaks out).
struct Pulling<'a>(&'a Ctx);

impl Drop for Pulling<'_> {
    fn drop(&mut self) {
        self.0.live.set_pulling(false);
    }
}

/// At shutdown, nak what a pull fetched but the pool will not start (`fetched`, and
/// whatever the pull has already buffered): handed back at once rather than left to
/// wait out the ack wait.
async fn hand_back(fetched: Option<jetstream::Message>, batch: &mut jetstream::consumer::pull::Batch) {
    if let Some(msg) = fetched {
        let _ = msg.ack_with(AckKind::Nak(None)).await;
    }
    while let Some(Some(Ok(buffered))) = batch.next().now_or_never() {
        let _ = buffered.ack_with(AckKind::Nak(None)).await;
    }
}

/// Reserve the slots for one pull. Pulling as soon as one slot frees up makes many
/// one-message pulls under load (measured: a quarter of all pulls asked for one
/// message), each a request and a response for nats-server. So wait — at most
/// [`GATHER_WAIT`] — until a quarter of `fetch_batch` slots are free, then take every free
/// slot up to `fetch_batch`. Messages are still only pulled for slots that can run them.
async fn gather_slots(
    slots: &Arc<Semaphore>,
    mut first: OwnedSemaphorePermit,
    fetch_batch: usize,
) -> OwnedSemaphorePermit {
    let enough = (fetch_batch / 4).max(1);
    if slots.available_permits() + 1 < enough {
        let more = u32::try_from(enough - 1).unwrap_or(u32::MAX);
        if let Ok(Ok(p)) = tokio::time::timeout(GATHER_WAIT, slots.clone().acquire_many_owned(more)).await {
            first.merge(p);
        }
    }
    let free = slots.available_permits().min(fetch_batch.saturating_sub(first.num_permits()));
    if let Ok(p) = slots.clone().try_acquire_many_owned(u32::try_from(free).unwrap_or(0)) {
        first.merge(p);
    }
    first
}

async fn pause(cancel: &CancellationToken, d: Duration) {
    tokio::select! {
        () = cancel.cancelled() => {},
        () = tokio::time::sleep(d) => {},
    }
}
