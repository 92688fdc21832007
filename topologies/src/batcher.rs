//! A generic group-commit batcher: many concurrent callers, one call per batch.
//!
//! Each caller hands one item to [`Batcher::call`] and waits. A collector task takes
//! every item already queued, waits at most `max_wait` for more (zero by default), and
//! sends the batch as soon as a slot is free (at most `max_in_flight` batches run at
//! once); it runs the batch function and answers every caller with its own result.
//! This is classic group commit: an idle system answers at once, and under load
//! batches grow by themselves, because while every slot is busy new items keep joining
//! the next batch. Measured here: one batch of 64 commits far faster than four of 16,
//! so few slots and no artificial wait beat many slots.
//! The queue is bounded; when it is full callers are turned away at once
//! ([`Error::Overloaded`]) rather than queued without bound.

use futures::future::BoxFuture;
use std::{sync::Arc, time::Duration};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::Error;

/// Tuning of a batcher.
#[derive(Debug, Clone)]
pub struct BatchOptions {
    /// Most items in one batch.
    pub max_batch: usize,
    /// Longest the first item of a batch waits for others.
    pub max_wait: Duration,
    /// Batches running at once.
    pub max_in_flight: usize,
    /// Items queued before callers are turned away.
    pub queue_capacity: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { max_batch: 100, max_wait: Duration::ZERO, max_in_flight: 2, queue_capacity: 10_000 }
    }
}

/// The function run per batch: one output per input, in order.
pub type BatchFn<I, O> = Arc<dyn Fn(Vec<I>) -> BoxFuture<'static, Vec<O>> + Send + Sync>;

type Pending<I, O> = (I, oneshot::Sender<O>);

/// Handle to a running batcher. Cheap to clone.
pub struct Batcher<I, O> {
    tx: mpsc::Sender<Pending<I, O>>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Batcher { tx: self.tx.clone() }
    }
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("queued", &(self.tx.max_capacity() - self.tx.capacity())).finish()
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Start the collector. When `cancel` fires it stops taking items, runs what it
    /// holds, and the returned tracker completes once every batch is answered.
    pub fn spawn(options: BatchOptions, cancel: CancellationToken, f: BatchFn<I, O>) -> (Self, TaskTracker) {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let tracker = TaskTracker::new();
        tracker.spawn(collect(rx, options, cancel, f, tracker.clone()));
        (Batcher { tx }, tracker)
    }

    /// Add `item` to the next batch and wait for its result.
    pub async fn call(&self, item: I) -> Result<O, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send((item, reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded("batch queue is full"),
            mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
        })?;
        rx.await.map_err(|_| Error::ShuttingDown)
    }
}

async fn collect<I: Send + 'static, O: Send + 'static>(
    mut rx: mpsc::Receiver<Pending<I, O>>,
    options: BatchOptions,
    cancel: CancellationToken,
    f: BatchFn<I, O>,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let max_batch = options.max_batch.max(1);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            () = cancel.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        let deadline = tokio::time::sleep(options.max_wait);
        tokio::pin!(deadline);
        let mut waited = options.max_wait.is_zero();
        let permit = loop {
            if batch.len() >= max_batch {
                match slots.clone().acquire_owned().await {
                    Ok(p) => break p,
                    Err(_) => return,
                }
            }
            tokio::select! {
                biased;
                m = rx.recv() => match m {
                    Some(m) => batch.push(m),
                    // Closed and drained: send what we have as soon as a slot frees.
                    None => match slots.clone().acquire_owned().await {
                        Ok(p) => break p,
                        Err(_) => return,
                    },
                },
                () = &mut deadline, if !waited => waited = true,
                p = slots.clone().acquire_owned(), if waited => match p {
                    Ok(p) => break p,
                    Err(_) => return,
                },
            }
        };
        // The point of no return: a caller that gave up while queued (its request timed
        // out and was answered 503) is dropped here rather than acted on after the fact.
        // One that gives up later cannot be told apart from one whose batch failed.
        batch.retain(|(_, reply)| !reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let f = f.clone();
        tracker.spawn(async move {
            let (items, replies): (Vec<I>, Vec<oneshot::Sender<O>>) = batch.into_iter().unzip();
            let outputs = f(items).await;
            debug_assert_eq!(outputs.len(), replies.len());
            for (output, reply) in outputs.into_iter().zip(replies) {
                // The caller may have gone away (client disconnected); nothing to do.
                let _ = reply.send(output);
            }
            drop(permit);
        });
    }
    tracker.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use std::sync::Mutex;

    type Recorded = Arc<Mutex<Vec<Vec<u32>>>>;

    /// A batcher whose batches are recorded and fail whole when they hold `poison`.
    fn spawn_recording(
        options: BatchOptions,
        poison: u32,
    ) -> (Batcher<u32, Result<u32, String>>, Recorded, CancellationToken) {
        let batches: Recorded = Arc::default();
        let seen = batches.clone();
        let cancel = CancellationToken::new();
        let (batcher, _) = Batcher::spawn(
            options,
            cancel.clone(),
            Arc::new(move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.clone());
                let failed = items.contains(&poison);
                async move {
                    tokio::task::yield_now().await;
                    items
                        .into_iter()
                        .map(|i| if failed { Err(format!("batch with {poison}")) } else { Ok(i) })
                        .collect()
                }
                .boxed()
            }),
        );
        (batcher, batches, cancel)
    }

    #[tokio::test]
    async fn a_failed_batch_fails_only_its_own_callers() {
        let options = BatchOptions { max_batch: 3, max_in_flight: 1, ..BatchOptions::default() };
        let (batcher, batches, cancel) = spawn_recording(options, 7);
        let results = futures::future::join_all((0..20).map(|i| batcher.call(i))).await;
        let poisoned =
            batches.lock().expect("lock").iter().find(|b| b.contains(&7)).cloned().expect("7 was sent");
        for (i, r) in (0..20).zip(results) {
            match r.expect("answered") {
                Ok(v) => assert!(v == i && !poisoned.contains(&i)),
                Err(_) => assert!(poisoned.contains(&i), "{i} failed outside the bad batch"),
            }
        }
        assert!(batches.lock().expect("lock").iter().all(|b| b.len() <= 3));
        cancel.cancel();
    }

    #[tokio::test]
    async fn callers_that_gave_up_while_queued_are_not_sent() {
        let (gate, started) = (Arc::new(Semaphore::new(0)), Arc::new(Semaphore::new(0)));
        let batches: Recorded = Arc::default();
        let (g, st, seen) = (gate.clone(), started.clone(), batches.clone());
        let cancel = CancellationToken::new();
        let options = BatchOptions { max_in_flight: 1, ..BatchOptions::default() };
        let (batcher, _) = Batcher::spawn(
            options,
            cancel.clone(),
            Arc::new(move |items: Vec<u32>| {
                seen.lock().expect("lock").push(items.clone());
                st.add_permits(1);
                let g = g.clone();
                async move {
                    let _open = g.acquire().await;
                    items
                }
                .boxed()
            }),
        );
        let first = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(1).await }
        });
        let _running = started.acquire().await.expect("first batch started");
        // 2 queues behind the running batch, and its caller gives up (a request timeout).
        let gave_up = tokio::time::timeout(Duration::from_millis(20), batcher.call(2)).await;
        assert!(gave_up.is_err());
        let third = tokio::spawn({
            let b = batcher.clone();
            async move { b.call(3).await }
        });
        gate.add_permits(10);
        assert_eq!(first.await.expect("join").expect("answered"), 1);
        assert_eq!(third.await.expect("join").expect("answered"), 3);
        let sent: Vec<u32> = batches.lock().expect("lock").concat();
        assert_eq!(sent, [1, 3], "2 was dropped, not sent after its caller had been answered");
        cancel.cancel();
    }

    #[tokio::test]
    async fn an_idle_batcher_sends_at_once_and_a_full_queue_sheds_load() {
        let (batcher, batches, cancel) = spawn_recording(BatchOptions::default(), u32::MAX);
        assert_eq!(batcher.call(1).await.expect("answered"), Ok(1));
        assert_eq!(*batches.lock().expect("lock"), [vec![1]]);
        cancel.cancel();

        let options = BatchOptions { queue_capacity: 1, ..BatchOptions::default() };
        let (tx, _rx) = mpsc::channel::<Pending<u32, u32>>(options.queue_capacity);
        let full = Batcher { tx };
        let (reply, _) = oneshot::channel();
        full.tx.try_send((0, reply)).expect("room for one");
        assert!(matches!(full.call(1).await, Err(Error::Overloaded(_))));
    }
}
