//! Group commit: many concurrent callers, few JetStream atomic batches.
//!
//! Each caller hands one message to [`GroupCommitter::publish`] and waits. A collector
//! task gathers messages into a batch until it is full, the first message has waited
//! `max_wait`, or a commit slot frees up (at most `max_in_flight` batches wait on
//! JetStream at once), then publishes the batch atomically and answers every caller
//! with its own ack. Under load batches grow by themselves: while slots are busy, new
//! messages keep joining the next batch. A failed batch fails only its own callers.
//!
//! Callers with the same `Nats-Msg-Id` in one batch are coalesced into one message
//! and all receive its ack, so a burst of retries with one idempotency key stays
//! one message and keeps the batch valid (JetStream rejects a batch that repeats an id).

use std::{collections::HashMap, sync::Arc, time::Duration};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Error, Result,
    publisher::{Ack, OutgoingMessage, Publisher},
};

/// Tuning of the group commit.
#[derive(Debug, Clone)]
pub struct GroupCommitOptions {
    /// Most messages in one atomic batch.
    pub max_batch: usize,
    /// Longest a message waits for others before its batch is sent anyway.
    pub max_wait: Duration,
    /// Batches waiting for JetStream at once.
    pub max_in_flight: usize,
    /// Messages queued before callers are turned away with [`Error::Overloaded`].
    pub queue_capacity: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions {
            max_batch: 100,
            max_wait: Duration::from_millis(2),
            max_in_flight: 4,
            queue_capacity: 10_000,
        }
    }
}

struct Pending {
    msg: OutgoingMessage,
    reply: oneshot::Sender<Result<Ack>>,
}

/// Handle to a running group committer. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GroupCommitter {
    tx: mpsc::Sender<Pending>,
}

impl GroupCommitter {
    /// Start the collector. It stops taking new messages when `cancel` fires, commits
    /// what it holds, and the returned tracker completes when every batch is answered.
    pub fn spawn(
        publisher: Publisher,
        options: GroupCommitOptions,
        cancel: CancellationToken,
    ) -> (Self, TaskTracker) {
        let (tx, rx) = mpsc::channel(options.queue_capacity.max(1));
        let tracker = TaskTracker::new();
        tracker.spawn(collect(rx, publisher, options, cancel, tracker.clone()));
        tracker.close();
        (GroupCommitter { tx }, tracker)
    }

    /// Publish one message as part of the next batch and wait for its ack.
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<Ack> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Pending { msg, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => Error::Overloaded("publish queue is full"),
            mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
        })?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }
}

async fn collect(
    mut rx: mpsc::Receiver<Pending>,
    publisher: Publisher,
    options: GroupCommitOptions,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(options.max_in_flight.max(1)));
    let max_batch = options.max_batch.clamp(1, crate::publisher::MAX_ATOMIC_BATCH);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            () = cancel.cancelled() => { rx.close(); rx.recv().await }
        };
        let Some(first) = first else { break };
        let mut batch = vec![first];
        // Gather until full, the wait is over, or (past the wait) a slot is free.
        let deadline = tokio::time::sleep(options.max_wait);
        tokio::pin!(deadline);
        let mut waited = false;
        let permit = loop {
            if waited && let Ok(p) = slots.clone().try_acquire_owned() {
                break p;
            }
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
                    None => waited = true,
                },
                () = &mut deadline, if !waited => waited = true,
                p = slots.clone().acquire_owned(), if waited => match p {
                    Ok(p) => break p,
                    Err(_) => return,
                },
            }
        };
        let publisher = publisher.clone();
        tracker.spawn(async move {
            commit(&publisher, batch).await;
            drop(permit);
        });
    }
}

async fn commit(publisher: &Publisher, batch: Vec<Pending>) {
    metrics::histogram!("souk_publisher_group_commit_size").record(batch.len() as f64);
    // Coalesce equal message ids: one message, many waiters.
    let mut index: HashMap<String, usize> = HashMap::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    let mut waiters: Vec<Vec<oneshot::Sender<Result<Ack>>>> = Vec::with_capacity(batch.len());
    for Pending { msg, reply } in batch {
        match index.get(&msg.msg_id) {
            Some(&i) => waiters[i].push(reply),
            None => {
                index.insert(msg.msg_id.clone(), messages.len());
                messages.push(msg);
                waiters.push(vec![reply]);
            }
        }
    }
    let results = publisher.publish_all(&messages).await;
    for (result, replies) in results.into_iter().zip(waiters) {
        for reply in replies {
            // The caller may have gone away (client disconnected); nothing to do then.
            let _ = reply.send(result.clone());
        }
    }
}
