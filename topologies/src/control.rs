//! Operators' pool controls: pause, resume and scale a pool across every process
//! running it.
//!
//! The wanted settings of each pool live in the JetStream key-value bucket
//! [`BUCKET`] (key: the pool's name; value: [`PoolSettings`] as JSON). Every runtime
//! reads its pools' keys before its first fetch and watches them while it runs, so a
//! change reaches every process running the pool — on every host — and a process that
//! starts later starts the way the pool was left (paused stays paused). A KV rather
//! than a core NATS request: a request reaches only the processes alive when it is
//! sent. Writes are compare-and-set on the key's revision, so a pause and a scale sent
//! together do not undo each other.

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// The bucket holding every pool's wanted settings.
pub const BUCKET: &str = "souk-pool-control";

/// Largest concurrency an operator may set: far above what one process runs well
/// (the shipped pools run 16–1024), low enough that a typo cannot ask for millions of
/// tasks. Each consumer's `max-ack-pending` bounds deliveries across processes anyway.
pub const MAX_CONCURRENCY: usize = 10_000;

/// What an operator wants of one pool. Absent key: running, at the topology's
/// concurrency.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSettings {
    /// Stop fetching (in-flight messages finish; nothing is lost).
    #[serde(default)]
    pub paused: bool,
    /// Messages in flight per process; `None`: the topology's `concurrency`.
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// Who changed it last, and when (RFC 3339).
    #[serde(default)]
    pub changed_by: String,
    #[serde(default)]
    pub changed_at: String,
}

/// A change to a pool's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Pause,
    Resume,
    Scale(usize),
}

impl Change {
    /// Refuse a concurrency outside 1..=[`MAX_CONCURRENCY`].
    pub fn check(self) -> Result<Self> {
        match self {
            Change::Scale(n) if n == 0 || n > MAX_CONCURRENCY => {
                Err(Error::Invalid(format!("concurrency must be between 1 and {MAX_CONCURRENCY}, not {n}")))
            }
            c => Ok(c),
        }
    }
}

/// The control bucket.
#[derive(Clone)]
pub struct Controls {
    kv: kv::Store,
}

impl std::fmt::Debug for Controls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controls").field("bucket", &BUCKET).finish()
    }
}

impl Controls {
    /// Open the bucket, creating it (with `replicas` replicas) when missing. Concurrent
    /// creates with the same configuration agree.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Controls> {
        let kv = match js.get_key_value(BUCKET).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: BUCKET.into(),
                    description: "souk: operators' pool controls (pause, concurrency), per pool".into(),
                    history: 1,
                    num_replicas: replicas.max(1),
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::Nats(format!("bucket {BUCKET}: {e}")))?,
        };
        Ok(Controls { kv })
    }

    /// The bucket if it exists (nothing was ever changed otherwise): for readers that
    /// must not create it.
    pub async fn existing(js: &jetstream::Context) -> Result<Option<Controls>> {
        match js.get_key_value(BUCKET).await {
            Ok(kv) => Ok(Some(Controls { kv })),
            Err(e) if e.kind() == jetstream::context::KeyValueErrorKind::GetBucket => Ok(None),
            Err(e) => Err(Error::Nats(format!("bucket {BUCKET}: {e}"))),
        }
    }

    /// `pool`'s settings and the key's revision (0: never set).
    pub async fn get(&self, pool: &str) -> Result<(PoolSettings, u64)> {
        match self.kv.entry(pool).await.map_err(|e| Error::Nats(format!("{BUCKET} {pool}: {e}")))? {
            Some(e) if e.operation == kv::Operation::Put => Ok((decode(pool, &e.value), e.revision)),
            Some(e) => Ok((PoolSettings::default(), e.revision)),
            None => Ok((PoolSettings::default(), 0)),
        }
    }

    /// Apply `change` to `pool` on behalf of `actor`; answers the settings before and
    /// after. The caller checks that the pool exists (the bucket does not know pools).
    pub async fn change(
        &self,
        pool: &str,
        change: Change,
        actor: &str,
    ) -> Result<(PoolSettings, PoolSettings)> {
        let change = change.check()?;
        // Compare-and-set on the revision read; a concurrent writer makes us read again.
        for _ in 0..10 {
            let (before, revision) = self.get(pool).await?;
            let mut after = before.clone();
            match change {
                Change::Pause => after.paused = true,
                Change::Resume => after.paused = false,
                Change::Scale(n) => after.concurrency = Some(n),
            }
            after.changed_by = actor.to_owned();
            after.changed_at = crate::dead_letters::rfc3339(time::OffsetDateTime::now_utc());
            let value: bytes::Bytes = serde_json::to_vec(&after).unwrap_or_default().into();
            // `Err(None)`: another writer got there first; read again.
            let written: std::result::Result<u64, Option<String>> = match revision {
                0 => self.kv.create(pool, value).await.map_err(|e| match e.kind() {
                    kv::CreateErrorKind::AlreadyExists => None,
                    _ => Some(e.to_string()),
                }),
                r => self.kv.update(pool, value, r).await.map_err(|e| match e.kind() {
                    kv::UpdateErrorKind::WrongLastRevision => None,
                    _ => Some(e.to_string()),
                }),
            };
            match written {
                Ok(_) => return Ok((before, after)),
                Err(None) => continue,
                Err(Some(e)) => return Err(Error::Nats(format!("{BUCKET} {pool}: {e}"))),
            }
        }
        Err(Error::Refused(format!("{BUCKET} {pool}: changed concurrently too often; try again")))
    }

    /// Follow `pool`'s settings until `cancel`: the receiver holds the current value
    /// (read before this returns, so a pool paused before its process started starts
    /// paused) and every later change. A lost watch is re-established; meanwhile the
    /// last known settings hold.
    pub async fn follow(
        &self,
        pool: &str,
        cancel: CancellationToken,
    ) -> Result<watch::Receiver<PoolSettings>> {
        // The watch first, then the read: a change between the two is seen by the
        // watch (and ignored if the read already had it, by revision).
        let watcher = self.kv.watch(pool).await.map_err(|e| Error::Nats(format!("{BUCKET} {pool}: {e}")))?;
        let (settings, revision) = self.get(pool).await?;
        let (tx, rx) = watch::channel(settings);
        let (this, pool) = (self.clone(), pool.to_owned());
        tokio::spawn(async move { this.keep_following(pool, watcher, revision, tx, cancel).await });
        Ok(rx)
    }

    async fn keep_following(
        self,
        pool: String,
        mut watcher: kv::Watch,
        mut revision: u64,
        tx: watch::Sender<PoolSettings>,
        cancel: CancellationToken,
    ) {
        loop {
            let next = tokio::select! {
                () = cancel.cancelled() => return,
                n = watcher.next() => n,
            };
            match next {
                Some(Ok(entry)) if entry.revision > revision => {
                    revision = entry.revision;
                    let settings = match entry.operation {
                        kv::Operation::Put => decode(&pool, &entry.value),
                        _ => PoolSettings::default(),
                    };
                    tracing::info!(pool = %pool, paused = settings.paused, concurrency = ?settings.concurrency, by = %settings.changed_by, "pool settings changed");
                    tx.send_replace(settings);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::warn!(pool = %pool, error = %e, "pool control watch failed"),
                None => {
                    // The watch ended (connection lost for good, bucket removed): watch
                    // again and read what changed meanwhile.
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    let (Ok(w), Ok((settings, r))) = (self.kv.watch(&pool).await, self.get(&pool).await)
                    else {
                        continue;
                    };
                    watcher = w;
                    if r != revision {
                        revision = r;
                        tx.send_replace(settings);
                    }
                }
            }
        }
    }
}

/// Every pool with settings, by name (none when nothing was ever set), for the status
/// model. Read from the bucket's stream without a consumer — its subjects' counts list
/// the keys, a direct get reads each key's last entry — so the status keeper, which
/// reads this every few seconds on every node, leaves nothing behind on the server.
pub async fn read_all(js: &jetstream::Context) -> Result<Vec<(String, PoolSettings)>> {
    let failed = |e: &dyn std::fmt::Display| Error::Nats(format!("{BUCKET}: {e}"));
    let Ok(stream) = js.get_stream(format!("KV_{BUCKET}")).await else { return Ok(Vec::new()) };
    let prefix = format!("$KV.{BUCKET}.");
    let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await.map_err(|e| failed(&e))?;
    let mut keys = Vec::new();
    while let Some((subject, _)) = subjects.try_next().await.map_err(|e| failed(&e))? {
        keys.push(subject);
    }
    keys.sort();
    let mut out = Vec::with_capacity(keys.len());
    for subject in keys {
        let entry = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(failed(&e)),
        };
        let pool = subject.strip_prefix(&prefix).unwrap_or(&subject).to_owned();
        // A delete or purge marker (KV-Operation header): back to the topology's.
        if entry.headers.get("KV-Operation").is_some() {
            continue;
        }
        let settings = decode(&pool, &entry.payload);
        out.push((pool, settings));
    }
    Ok(out)
}

/// Settings from a stored value; unreadable (a newer release's?) counts as unset,
/// loudly, rather than stopping the pool.
fn decode(pool: &str, value: &[u8]) -> PoolSettings {
    serde_json::from_slice(value).unwrap_or_else(|e| {
        tracing::warn!(pool, error = %e, "unreadable pool settings; running with the topology's");
        PoolSettings::default()
    })
}
