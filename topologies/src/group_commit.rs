//! Group commit of JetStream publishes: concurrent callers share atomic batches.
//!
//! Built on [`Batcher`]: each batch becomes one [`Publisher::publish_all`] (one atomic
//! batch, one fsync). A failed batch fails only its own callers. Callers with the same
//! `Nats-Msg-Id` in one batch are coalesced into one message and all receive its ack,
//! so a burst of retries with one idempotency key stays one message and keeps the
//! batch valid (JetStream rejects a batch that repeats an id).

use futures::FutureExt;
use std::{collections::HashMap, sync::Arc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Result,
    batcher::{BatchOptions, Batcher},
    publisher::{Ack, MAX_ATOMIC_BATCH, OutgoingMessage, Publisher},
};

/// Handle to a running group committer. Cheap to clone. All messages must go to
/// subjects of one stream (an atomic batch is per stream).
#[derive(Clone, Debug)]
pub struct GroupCommitter {
    batcher: Batcher<OutgoingMessage, Result<Ack>>,
}

impl GroupCommitter {
    /// Start the collector; see [`Batcher::spawn`] for shutdown.
    pub fn spawn(
        publisher: Publisher,
        mut options: BatchOptions,
        cancel: CancellationToken,
    ) -> (Self, TaskTracker) {
        options.max_batch = options.max_batch.clamp(1, MAX_ATOMIC_BATCH);
        let (batcher, tracker) = Batcher::spawn(
            options,
            cancel,
            Arc::new(move |batch| {
                let publisher = publisher.clone();
                async move { commit(&publisher, batch).await }.boxed()
            }),
        );
        (GroupCommitter { batcher }, tracker)
    }

    /// Publish one message as part of the next batch and wait for its ack.
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<Ack> {
        self.batcher.call(msg).await?
    }
}

async fn commit(publisher: &Publisher, batch: Vec<OutgoingMessage>) -> Vec<Result<Ack>> {
    metrics::histogram!("souk_publisher_group_commit_size").record(batch.len() as f64);
    // Coalesce equal message ids: one message, many waiters.
    let mut index: HashMap<String, usize> = HashMap::with_capacity(batch.len());
    let mut messages = Vec::with_capacity(batch.len());
    let slots: Vec<usize> = batch
        .into_iter()
        .map(|msg| {
            *index.entry(msg.msg_id.clone()).or_insert_with(|| {
                messages.push(msg);
                messages.len() - 1
            })
        })
        .collect();
    let results = publisher.publish_all(&messages).await;
    slots.into_iter().map(|i| results[i].clone()).collect()
}
