//! Pools: fetch, run with bounded concurrency, settle, drain.

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::{FutureExt, StreamExt};
use std::{
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, Instant},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use super::{Delivery, Handler, Outcome, Registry, dead_letter};
use crate::{
    Error, Result,
    batcher::{BatchFn, BatchOptions, Batcher},
    publisher::Publisher,
    purge,
    spec::{ConsumerSpec, PoolSpec, Topology},
    trace,
};

/// How long one pull request waits for messages before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Longest a pool waits for more free slots before a pull (see `gather_slots`).
const GATHER_WAIT: Duration = Duration::from_millis(2);

/// A pool ready to run.
pub struct Pool {
    spec: PoolSpec,
    consumer_spec: ConsumerSpec,
    consumer: PullConsumer,
    handler: Arc<dyn Handler>,
    publisher: Publisher,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("spec", &self.spec).finish()
    }
}

struct Ctx {
    pool: String,
    consumer: ConsumerSpec,
    handler: Arc<dyn Handler>,
    /// Groups deliveries for `handle_batch` when the pool's `max-batch` > 1.
    batcher: Option<Batcher<Delivery, Outcome>>,
    handler_timeout: Duration,
    publisher: Publisher,
}

impl Pool {
    /// Bind pool `name` of `topology` to its consumer (which must exist: apply the
    /// topology first) and its handler in `registry`.
    pub async fn build(
        publisher: &Publisher,
        topology: &Topology,
        name: &str,
        registry: &Registry,
    ) -> Result<Pool> {
        let spec_err = |message: String| Error::Spec { path: "<topology>".into(), message };
        let spec = topology.pool(name).ok_or_else(|| spec_err(format!("no pool {name}")))?.clone();
        let consumer_spec = topology
            .consumer(&spec.consumer)
            .ok_or_else(|| spec_err(format!("no consumer {}", spec.consumer)))?
            .clone();
        let handler = registry
            .get(&spec.handler)
            .ok_or_else(|| spec_err(format!("pool {name}: no handler registered as {}", spec.handler)))?;
        let stream = publisher.jetstream().get_stream(&consumer_spec.stream).await.map_err(|e| {
            Error::Nats(format!("stream {}: {e} (run `souk topology apply`)", consumer_spec.stream))
        })?;
        let consumer: PullConsumer = stream.get_consumer(&consumer_spec.name).await.map_err(|e| {
            Error::Nats(format!("consumer {}: {e} (run `souk topology apply`)", consumer_spec.name))
        })?;
        Ok(Pool { spec, consumer_spec, consumer, handler, publisher: publisher.clone() })
    }

    /// Run until `cancel` fires, then drain (see the module docs).
    pub async fn run(self, cancel: CancellationToken) {
        let Pool { spec, consumer_spec, consumer, handler, publisher } = self;
        // The batcher outlives the fetch loop: draining handlers still need it.
        let stop_batcher = CancellationToken::new();
        let (batcher, batch_tasks) = match spec.max_batch {
            0 | 1 => (None, None),
            max_batch => {
                let options = BatchOptions {
                    max_batch,
                    max_wait: Duration::ZERO,
                    max_in_flight: spec.batches_in_flight,
                    queue_capacity: spec.concurrency,
                };
                let (b, t) = Batcher::spawn(
                    options,
                    stop_batcher.clone(),
                    batch_fn(handler.clone(), spec.handler_timeout),
                );
                (Some(b), Some(t))
            }
        };
        let ctx = Arc::new(Ctx {
            pool: spec.name.clone(),
            consumer: consumer_spec,
            handler,
            batcher,
            handler_timeout: spec.handler_timeout,
            publisher,
        });
        let slots = Arc::new(Semaphore::new(spec.concurrency));
        let tracker = TaskTracker::new();
        // Fires when the drain deadline passes: running handlers are abandoned unacked.
        let abandon = CancellationToken::new();
        tracing::info!(pool = %spec.name, consumer = %spec.consumer, concurrency = spec.concurrency, "pool started");

        'fetch: while !cancel.is_cancelled() {
            let first = tokio::select! {
                () = cancel.cancelled() => break,
                p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let first = gather_slots(&slots, first, spec.fetch_batch).await;
            let wanted = first.num_permits();
            let pull = consumer.batch().max_messages(wanted).expires(PULL_EXPIRES).messages();
            let mut batch = tokio::select! {
                () = cancel.cancelled() => break,
                b = pull => match b {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(pool = %spec.name, error = %e, "pull request failed; retrying");
                        drop(first);
                        pause(&cancel, Duration::from_millis(500)).await;
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
                tracker.spawn(async move {
                    tokio::select! {
                        () = process(&ctx, msg) => {},
                        () = abandon.cancelled() => {
                            tracing::warn!(pool = %ctx.pool, "abandoned at drain deadline; JetStream will redeliver");
                        }
                    }
                    metrics::gauge!("souk_worker_in_flight", "pool" => ctx.pool.clone()).decrement(1.0);
                    drop(slot);
                });
            }
            if pull_failed {
                // The server ended the pull at once (consumer deleted, leader change,
                // too many waiting pulls): pulling again at once would spin against it.
                drop(permit);
                pause(&cancel, Duration::from_millis(500)).await;
            }
        }

        tracker.close();
        let in_flight = tracker.len();
        tracing::info!(pool = %spec.name, in_flight, "pool draining");
        if tokio::time::timeout(spec.drain_timeout, tracker.wait()).await.is_err() {
            abandon.cancel();
            tracker.wait().await;
        }
        stop_batcher.cancel();
        if let Some(tasks) = batch_tasks {
            // Abandoned handlers may leave a batch running; it is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
        }
        tracing::info!(pool = %spec.name, "pool stopped");
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

async fn process(ctx: &Ctx, msg: jetstream::Message) {
    let (stream_sequence, attempt) = match msg.info() {
        Ok(info) => (info.stream_sequence, info.delivered.max(1) as u64),
        Err(e) => {
            tracing::error!(pool = %ctx.pool, error = %e, "message without JetStream metadata; leaving it");
            return;
        }
    };
    let delivery = Delivery {
        subject: msg.subject.to_string(),
        headers: msg.headers.clone(),
        payload: msg.payload.clone(),
        message_id: msg
            .headers
            .as_ref()
            .and_then(|h| h.get(souk_pipelines::headers::MSG_ID))
            .map(|v| v.as_str().to_owned()),
        stream_sequence,
        attempt,
        consumer: ctx.consumer.name.clone(),
    };
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
        let outcome = if attempt > max_deliver {
            // The previous (last allowed) attempt never reported: the worker died or
            // the ack was lost mid-handling. Do not run it again.
            Outcome::Fail {
                reason: format!(
                    "delivered {attempt} times (max {max_deliver}); the last attempt did not finish"
                ),
            }
        } else {
            run_handler(ctx, &msg, &delivery).await
        };
        let label = settle(ctx, &msg, &delivery, outcome, max_deliver).await;
        tracing::Span::current().record("outcome", label);
        metrics::counter!("souk_worker_messages_total", "pool" => ctx.pool.clone(), "outcome" => label)
            .increment(1);
        metrics::histogram!("souk_worker_handle_seconds", "pool" => ctx.pool.clone())
            .record(started.elapsed().as_secs_f64());
    }
    .instrument(span)
    .await
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
            Some(batcher) => {
                batcher.call(trace::carrying_current(delivery)).await.unwrap_or_else(Outcome::retry)
            }
            None => ctx.handler.handle(delivery).await,
        }
    };
    let work = tokio::time::timeout(limit, AssertUnwindSafe(handle).catch_unwind());
    tokio::pin!(work);
    let mut progress = tokio::time::interval((ctx.consumer.ack_wait / 3).max(Duration::from_millis(100)));
    progress.tick().await;
    let result = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = progress.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    tracing::debug!(error = %e, "progress ack failed");
                }
            }
        }
    };
    match result {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(panic)) => panicked(panic.as_ref()),
        Err(_) => Outcome::retry(format!("handler timed out after {:?}", ctx.handler_timeout)),
    }
}

fn panicked(panic: &(dyn std::any::Any + Send)) -> Outcome {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Outcome::retry(format!("handler panicked: {what}"))
}

/// The batch function for a pool's batcher: `handle_batch`, cut at `timeout` (its future
/// dropped, so an open transaction rolls back), with panics caught and one outcome
/// guaranteed per delivery.
fn batch_fn(handler: Arc<dyn Handler>, timeout: Duration) -> BatchFn<Delivery, Outcome> {
    Arc::new(move |deliveries: Vec<Delivery>| {
        let handler = handler.clone();
        async move {
            let n = deliveries.len();
            metrics::histogram!("souk_worker_batch_size").record(n as f64);
            let run = AssertUnwindSafe(handler.handle_batch(&deliveries)).catch_unwind();
            let mut outcomes = match tokio::time::timeout(timeout, run).await {
                Ok(Ok(outcomes)) => outcomes,
                Ok(Err(panic)) => vec![panicked(panic.as_ref()); n],
                Err(_) => vec![Outcome::retry(format!("handler timed out after {timeout:?}")); n],
            };
            if outcomes.len() != n {
                tracing::error!(
                    expected = n,
                    got = outcomes.len(),
                    "handle_batch returned a wrong count; retrying all"
                );
                outcomes = vec![Outcome::retry("handle_batch returned a wrong number of outcomes"); n];
            }
            outcomes
        }
        .boxed()
    })
}

/// Map an outcome to JetStream. Returns the metrics label.
async fn settle(
    ctx: &Ctx,
    msg: &jetstream::Message,
    delivery: &Delivery,
    outcome: Outcome,
    max_deliver: u64,
) -> &'static str {
    let reason = match outcome {
        Outcome::Ack => {
            // A lost ack means a redelivery, which the handler's inbox turns into a no-op.
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered");
            }
            return "ack";
        }
        Outcome::Retry { after, error } if delivery.attempt < max_deliver => {
            let after = after.unwrap_or_else(|| backoff(&ctx.consumer, delivery.attempt));
            tracing::warn!(error = %error, retry_in = ?after, "handler failed; will retry");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(after))).await {
                tracing::warn!(error = %e, "nak failed; redelivery waits for the ack timeout");
            }
            return "retry";
        }
        Outcome::Retry { error, .. } => error,
        Outcome::Fail { reason } => reason,
    };
    tracing::error!(error = %reason, "dead-lettering message");
    if let Err(e) = dead_letter(&ctx.publisher, msg, delivery, &reason).await {
        tracing::error!(error = %e, "dead-letter publish failed; leaving the message for redelivery");
        let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
        return "dead_letter_failed";
    }
    "dead_letter"
}

/// The consumer's backoff step for this attempt (the last step repeats).
fn backoff(consumer: &ConsumerSpec, attempt: u64) -> Duration {
    let i = (attempt.saturating_sub(1) as usize).min(consumer.backoff.len().saturating_sub(1));
    consumer.backoff.get(i).copied().unwrap_or(Duration::from_secs(1))
}

/// Every pool of a topology (or a chosen subset), run together.
#[derive(Debug)]
pub struct Runtime {
    pools: Vec<Pool>,
    /// `purge-acked` streams read by these pools.
    purged_streams: Vec<String>,
    js: jetstream::Context,
}

impl Runtime {
    /// Build the pools named in `only` (all pools when empty).
    pub async fn build(
        publisher: &Publisher,
        topology: &Topology,
        registry: &Registry,
        only: &[String],
    ) -> Result<Runtime> {
        let mut pools = Vec::new();
        for spec in &topology.pools {
            if only.is_empty() || only.contains(&spec.name) {
                pools.push(Pool::build(publisher, topology, &spec.name, registry).await?);
            }
        }
        for name in only {
            if topology.pool(name).is_none() {
                return Err(Error::Spec { path: "<topology>".into(), message: format!("no pool {name}") });
            }
        }
        let mut purged_streams: Vec<String> = Vec::new();
        for pool in &pools {
            let stream = &pool.consumer_spec.stream;
            let purged = topology.streams.iter().any(|s| &s.name == stream && s.purge_acked);
            if purged && !purged_streams.contains(stream) {
                purged_streams.push(stream.clone());
            }
        }
        Ok(Runtime { pools, purged_streams, js: publisher.jetstream().clone() })
    }

    /// Run every pool, and the purger of the `purge-acked` streams they read, until
    /// `cancel`; returns when all pools have drained.
    pub async fn run(self, cancel: CancellationToken) {
        let purger =
            tokio::spawn(purge::run(self.js, self.purged_streams, purge::DEFAULT_EVERY, cancel.clone()));
        futures::future::join_all(self.pools.into_iter().map(|p| p.run(cancel.clone()))).await;
        purger.await.ok();
    }
}
