//! Group commit of JetStream publishes: concurrent callers share atomic batches.
//!
//! Built on [`Batcher`]: each batch becomes one [`Publisher::publish_all`] (one atomic
//! batch, one fsync). A failed batch fails only its own callers. Callers with the same
//! `Nats-Msg-Id` in one batch are coalesced into one message and all receive its ack,
//! so a burst of retries with one idempotency key stays one message and keeps the
//! batch valid (JetStream rejects a batch that repeats an id).
//!
//! Small batches go as pipelined single publishes instead
//! ([`GroupCommitOptions::singles_below`]). nats-server stages each atomic batch of a
//! file-backed R1 stream in a temporary file store of its own, created and deleted per
//! batch: measured here, an atomic batch of one message is acknowledged in 4.3 ms, of
//! ten in 4.5 ms, while one single publish takes 0.6 ms and about 0.3 ms more per
//! message queued behind it. Below about 20 messages the singles are faster. Callers
//! lose nothing by it: each message still gets its own PubAck after its fsync, and the
//! messages of one batch are independent (an atomic batch was never a promise to them).

use futures::FutureExt;
use std::{collections::HashMap, sync::Arc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Result,
    batcher::{BatchOptions, Batcher},
    publisher::{Ack, MAX_ATOMIC_BATCH, OutgoingMessage, Publisher},
};

/// Tuning of a group committer.
#[derive(Debug, Clone)]
pub struct GroupCommitOptions {
    pub batch: BatchOptions,
    /// Batches of fewer messages than this are published one message at a time,
    /// pipelined, rather than as an atomic batch (see the module docs); 0 never does.
    pub singles_below: usize,
}

impl Default for GroupCommitOptions {
    fn default() -> Self {
        GroupCommitOptions { batch: BatchOptions::default(), singles_below: 20 }
    }
}

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
        options: GroupCommitOptions,
        cancel: CancellationToken,
    ) -> (Self, TaskTracker) {
        let mut batch_options = options.batch;
        batch_options.max_batch = batch_options.max_batch.clamp(1, MAX_ATOMIC_BATCH);
        let singles_below = options.singles_below;
        let (batcher, tracker) = Batcher::spawn(
            batch_options,
            cancel,
            Arc::new(move |batch| {
                let publisher = publisher.clone();
                async move { commit(&publisher, batch, singles_below).await }.boxed()
            }),
        );
        (GroupCommitter { batcher }, tracker)
    }

    /// Publish one message as part of the next batch and wait for its ack.
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<Ack> {
        self.batcher.call(msg).await?
    }
}

async fn commit(
    publisher: &Publisher,
    batch: Vec<OutgoingMessage>,
    singles_below: usize,
) -> Vec<Result<Ack>> {
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
    let results = if messages.len() < singles_below {
        publisher.publish_each(&messages).await
    } else {
        publisher.publish_all(&messages).await
    };
    slots.into_iter().map(|i| results[i].clone()).collect()
}
