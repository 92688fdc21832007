//! Worker heartbeats: every process running pools puts one entry (key: its process id)
//! in the JetStream key-value bucket [`BUCKET`] every few seconds, and at once when a
//! pool's breaker or its operators' controls change. The entry carries its pools'
//! breakers, controls (paused, draining, concurrency), in-flight counts and counters
//! ([`crate::runtime::PoolStats`]), so a reader sees every `souk worker` on
//! every host, not just itself. A process that stops deletes its entry; one that dies
//! stops beating and is no longer live after [`MISSED_BEATS`] of its own intervals
//! (judged by the server's time of the entry); the bucket's max age removes it later.

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::{
    Error, Result,
    runtime::{Activity, BreakerState, Counters, SinkCounters, SinkError, Window},
};

/// The key-value bucket of heartbeats.
pub const BUCKET: &str = "souk-heartbeats";
/// How long a dead process's entry stays in the bucket (it is not live long before).
const BUCKET_MAX_AGE: Duration = Duration::from_secs(300);
/// How often a process beats unless told otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(2);
/// A process whose last beat is older than this many of its intervals is not live.
pub const MISSED_BEATS: u32 = 3;

/// One process's heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessBeat {
    /// Unique per process run: `<host>-<pid>-<random>`.
    pub process: String,
    pub host: String,
    pub pid: u32,
    /// The interval it beats at (readers judge liveness by it).
    pub every_ms: u64,
    pub uptime_secs: f64,
    pub pools: Vec<PoolBeat>,
    /// The sinks its pools write (see [`crate::runtime::SinkStats`]); none from
    /// processes older than sink counts.
    #[serde(default)]
    pub sinks: Vec<SinkBeat>,
}

/// One sink as one process writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkBeat {
    pub name: String,
    /// What implements it (`tantivy`, `opensearch`).
    pub backend: String,
    /// Since the process started.
    pub totals: SinkCounters,
    /// The last 10 s, 1, 5 and 15 minutes.
    pub windows: Vec<Window<SinkCounters>>,
    pub last_error: Option<SinkError>,
}

/// One pool of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolBeat {
    pub name: String,
    pub consumer: String,
    pub breaker: BreakerState,
    /// The dependency failure that opened the breaker (while it is not closed).
    pub last_error: Option<String>,
    pub in_flight: u64,
    /// Of `in_flight`, deliveries waiting to be tried again, their slots given up (a
    /// command waiting for its one provider, say): 0 from processes older than this.
    #[serde(default)]
    pub waiting: u64,
    /// Since the process started.
    pub totals: Counters,
    /// The last 10 s, 1, 5 and 15 minutes.
    pub windows: Vec<Window>,
    /// Where the operators' pool controls ([`crate::control`]) have this pool in this
    /// process: `None` from processes older than the controls.
    #[serde(default)]
    pub controls: Option<PoolControls>,
}

/// One pool of one process under the operators' controls, as the process follows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolControls {
    /// Told to pause (see `activity` for whether it has drained).
    pub paused: bool,
    /// Fetching, pausing (a pull still open or handlers still running) or paused.
    pub activity: Activity,
    /// Messages it runs at once now (after a scale down: once enough have finished).
    pub concurrency: usize,
}

/// A heartbeat read back, with how long ago the server stored it.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    pub beat: ProcessBeat,
    pub age: Duration,
}

impl Seen {
    /// Whether the process still beats (its last beat is within [`MISSED_BEATS`] intervals).
    pub fn live(&self) -> bool {
        self.age <= Duration::from_millis(self.beat.every_ms.max(1)) * MISSED_BEATS
    }
}

/// This process's id in the bucket: host, pid, and a random part (pids are reused).
pub fn process_id() -> String {
    let host = host_name();
    let random = uuid::Uuid::new_v4().simple().to_string();
    let raw = format!("{host}-{}-{}", std::process::id(), &random[..8]);
    // Key-value keys allow letters, digits and `-_=/.`; a host name may hold others.
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn nats(e: &dyn std::fmt::Display) -> Error {
    Error::Nats(format!("heartbeats ({BUCKET}): {e}"))
}

/// The bucket, created if missing (identical configs make concurrent creates agree).
pub async fn bucket(js: &jetstream::Context) -> Result<kv::Store> {
    if let Ok(b) = js.get_key_value(BUCKET).await {
        return Ok(b);
    }
    js.create_key_value(kv::Config {
        bucket: BUCKET.into(),
        description: "souk: worker process heartbeats (pools, breakers, counters)".into(),
        history: 1,
        max_age: BUCKET_MAX_AGE,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| nats(&e))
}

/// Every heartbeat in the bucket, live or not (none when no process ever beat).
///
/// Read from the bucket's stream without a consumer — its subjects' counts list the
/// keys, a direct get reads each key's last entry — so reading leaves nothing behind
/// on the server (a key listing would create a consumer per read).
pub async fn read_all(js: &jetstream::Context) -> Result<Vec<Seen>> {
    let stream_name = format!("KV_{BUCKET}");
    let Ok(stream) = js.get_stream(&stream_name).await else { return Ok(Vec::new()) };
    let prefix = format!("$KV.{BUCKET}.");
    let mut subjects = stream.info_with_subjects(format!("{prefix}>")).await.map_err(|e| nats(&e))?;
    let mut keys = Vec::new();
    while let Some((subject, _)) = subjects.try_next().await.map_err(|e| nats(&e))? {
        keys.push(subject);
    }
    let now = time_now_nanos();
    let mut seen = Vec::new();
    for subject in keys {
        let entry = match stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => m,
            // Removed (aged out, purged) between the listing and the read.
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => continue,
            Err(e) => return Err(nats(&e)),
        };
        // A stopped process's delete (or purge) marker: not a heartbeat.
        if entry.headers.get(KV_OPERATION).is_some() {
            continue;
        }
        match serde_json::from_slice::<ProcessBeat>(&entry.payload) {
            Ok(beat) => {
                let at = entry.time.unix_timestamp_nanos();
                // A reader whose clock is behind the server's reads no age, not a negative one.
                let age = Duration::from_nanos(u64::try_from((now - at).max(0)).unwrap_or(u64::MAX));
                seen.push(Seen { beat, age });
            }
            Err(e) => tracing::warn!(subject, error = %e, "unreadable heartbeat"),
        }
    }
    seen.sort_by(|a, b| a.beat.process.cmp(&b.beat.process));
    Ok(seen)
}

/// The header JetStream KV sets on delete and purge markers (a put has none).
const KV_OPERATION: &str = "KV-Operation";

/// The heartbeats of live processes.
pub async fn read_live(js: &jetstream::Context) -> Result<Vec<Seen>> {
    Ok(read_all(js).await?.into_iter().filter(Seen::live).collect())
}

pub(crate) fn time_now_nanos() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i128)
}
