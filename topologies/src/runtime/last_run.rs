//! The one more run a delivery past max-deliver gets when this process does not know
//! why its earlier deliveries ended.
//!
//! JetStream counts deliveries, not attempts. Deliveries past max-deliver whose history
//! this process knows are judged on it (`ledger`); the others may have been attempts
//! that never finished — a message that kills the process that runs it, which must not
//! loop for ever — or no attempts at all: deliveries handed back at shutdown or on a
//! pause while they waited or were held, or kept waiting in a process that was then
//! killed. Dead-lettering those unrun lost healthy commands after a few rolling deploys
//! during a provider outage (review, eleventh session). So such a delivery runs once
//! more, marked in a KV bucket for the length of that run: the mark is removed as soon
//! as the handler returns, whatever it returned. A delivery that finds the mark of an
//! earlier run is one whose run never returned — the process died in it — and is
//! dead-lettered unrun. A crashing message costs one crash more than max-deliver allows;
//! a waiting one is never dead-lettered for its hand-backs.
//!
//! Only deliveries past max-deliver of unknown history touch the bucket: nothing on the
//! path of a message that is handled within its deliveries. Marks expire after
//! [`MARK_TTL`], so a mark left by a kill does not outlive the message by long.

use async_nats::jetstream::{self, kv};
use std::time::Duration;
use tokio::sync::OnceCell;

use super::ledger::Key;
use crate::error::{Error, Result};

/// The bucket of marks.
pub const BUCKET: &str = "souk_last_runs";
/// How long a mark stays when its run never returned.
pub const MARK_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The marks of one pool's extra runs, in [`BUCKET`] (opened, or created, on first use).
#[derive(Debug)]
pub struct LastRuns {
    js: jetstream::Context,
    replicas: usize,
    kv: OnceCell<kv::Store>,
    /// The marks this process set and has not removed: a run abandoned at the drain
    /// deadline, or a delivery handed back before its run, removes its own.
    set: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl LastRuns {
    /// Marks kept through `js`, the bucket created with `replicas` replicas if missing.
    pub fn new(js: jetstream::Context, replicas: usize) -> LastRuns {
        LastRuns { js, replicas: replicas.max(1), kv: OnceCell::new(), set: Default::default() }
    }

    async fn kv(&self) -> Result<&kv::Store> {
        self.kv
            .get_or_try_init(|| async {
                match self.js.get_key_value(BUCKET).await {
                    Ok(kv) => Ok(kv),
                    Err(_) => self
                        .js
                        .create_key_value(kv::Config {
                            bucket: BUCKET.into(),
                            description: "souk: deliveries past max-deliver given one more run".into(),
                            history: 1,
                            max_age: MARK_TTL,
                            num_replicas: self.replicas,
                            storage: jetstream::stream::StorageType::File,
                            ..Default::default()
                        })
                        .await
                        .map_err(|e| Error::Nats(format!("bucket {BUCKET}: {e}"))),
                }
            })
            .await
    }

    /// Mark the extra run of `consumer`'s message `key`: `false` when an earlier run
    /// left its mark (it never returned).
    pub async fn begin(&self, consumer: &str, key: (u64, i128)) -> Result<bool> {
        let kv = self.kv().await?;
        let name = mark(consumer, key);
        match kv.create(&name, "running".into()).await {
            Ok(_) => {
                self.set().insert(name);
                Ok(true)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::Nats(format!("{BUCKET}: {e}"))),
        }
    }

    /// The run returned: remove its mark.
    pub async fn end(&self, consumer: &str, key: (u64, i128)) -> Result<()> {
        let name = mark(consumer, key);
        self.set().remove(&name);
        let kv = self.kv().await?;
        kv.purge(&name).await.map_err(|e| Error::Nats(format!("{BUCKET}: {e}")))
    }

    /// The delivery's run did not end but this process lives on (abandoned at the drain
    /// deadline, handed back before it ran): remove its mark if this process set one —
    /// only a process that died in the run may leave it (review, eleventh session: a run
    /// cut at a rolling deploy's drain deadline got its next delivery dead-lettered).
    pub async fn abandoned(&self, consumer: &str, key: (u64, i128)) {
        if self.set().contains(&mark(consumer, key))
            && let Err(e) = self.end(consumer, key).await
        {
            tracing::warn!(error = %e, "the mark of an abandoned extra run is not removed");
        }
    }

    fn set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.set.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A mark's key: the consumer, then the message's stream sequence and store time (a
/// re-created stream numbers from 1 again).
fn mark(consumer: &str, (sequence, stored_nanos): Key) -> String {
    format!("{consumer}.{sequence}.{stored_nanos}")
}
