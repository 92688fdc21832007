//! Pipeline status read back from JetStream: streams and consumer lag.
//! Lag is JetStream's own count of undelivered messages, never counted by hand.
//! Pool breakers live in the worker processes: each answers a core NATS request on
//! [`POOLS_SUBJECT`] with its pools' state, and [`read_pools`] gathers the answers.

use async_nats::jetstream;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::{
    Error, Result,
    runtime::{Activity, BreakerState},
    spec::Topology,
};

/// Every worker process answers a request here with its pools' [`PoolStatus`]es (a
/// JSON array). No stream captures it: it is a question to live processes.
pub const POOLS_SUBJECT: &str = "souk.status.pools";

/// One pool of one worker process.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub consumer: String,
    pub breaker: BreakerState,
    /// The dependency failure that opened the breaker (while it is not closed).
    pub last_error: Option<String>,
    /// Fetching, pausing (draining) or paused (drained). Defaults for answers of
    /// processes older than pool controls.
    #[serde(default)]
    pub activity: Activity,
    /// Messages this process runs at once now.
    #[serde(default)]
    pub concurrency: usize,
    /// Messages in this process's handlers now (held ones included).
    #[serde(default)]
    pub in_flight: usize,
}

/// One stream's state.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// One consumer's state.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub stream: String,
    pub name: String,
    /// Messages not yet delivered (the lag).
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: usize,
    pub redelivered: usize,
    /// Pull requests waiting (≈ idle workers).
    pub waiting: usize,
    /// The worst breaker state among the pools reading this consumer that answered
    /// (`None`: no worker process answered).
    pub breaker: Option<BreakerState>,
}

/// The whole pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
    /// Every pool of every worker process that answered [`read_pools`].
    pub pools: Vec<PoolStatus>,
}

impl PipelineStatus {
    /// Add the pools' states (and each consumer's worst breaker state).
    pub fn set_pools(&mut self, pools: Vec<PoolStatus>) {
        for c in &mut self.consumers {
            c.breaker = pools.iter().filter(|p| p.consumer == c.name).map(|p| p.breaker).max();
        }
        self.pools = pools;
    }
}

/// Ask every worker process for its pools' state: the answers that arrive within
/// `wait` of the request (each further answer extends it by a short quiet period).
pub async fn read_pools(client: &async_nats::Client, wait: Duration) -> Result<Vec<PoolStatus>> {
    let nats = |e: &dyn std::fmt::Display| Error::Nats(format!("{POOLS_SUBJECT}: {e}"));
    let inbox = client.new_inbox();
    let mut answers = client.subscribe(inbox.clone()).await.map_err(|e| nats(&e))?;
    client.publish_with_reply(POOLS_SUBJECT, inbox, "".into()).await.map_err(|e| nats(&e))?;
    client.flush().await.map_err(|e| nats(&e))?;
    let mut pools = Vec::new();
    let mut deadline = tokio::time::Instant::now() + wait;
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
        match serde_json::from_slice::<Vec<PoolStatus>>(&answer.payload) {
            Ok(more) => pools.extend(more),
            Err(e) => tracing::warn!(error = %e, "unreadable pool status answer"),
        }
        deadline = deadline.max(tokio::time::Instant::now() + Duration::from_millis(200));
    }
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}

/// Keep the pipeline gauges (`souk_stream_messages`, `souk_consumer_pending_messages`,
/// `souk_consumer_ack_pending_messages`) current: read JetStream every `every` until
/// `cancel`. Every process that serves `/metrics` runs one, so lag and dead letters
/// are visible without running `souk status`.
pub async fn export_gauges(
    js: jetstream::Context,
    topology: Topology,
    every: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = read(&js, &topology).await {
            tracing::debug!(error = %e, "pipeline status unavailable");
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Read the state of every stream and consumer in `topology` (and update the gauges).
pub async fn read(js: &jetstream::Context, topology: &Topology) -> Result<PipelineStatus> {
    let mut streams = Vec::new();
    for s in &topology.streams {
        let mut stream = js.get_stream(&s.name).await.map_err(|e| Error::Nats(format!("{}: {e}", s.name)))?;
        let info = stream.info().await.map_err(|e| Error::Nats(format!("{}: {e}", s.name)))?;
        metrics::gauge!("souk_stream_messages", "stream" => s.name.clone()).set(info.state.messages as f64);
        streams.push(StreamStatus {
            name: s.name.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
        });
    }
    let mut consumers = Vec::new();
    for c in &topology.consumers {
        let stream = js.get_stream(&c.stream).await.map_err(|e| Error::Nats(format!("{}: {e}", c.stream)))?;
        let info =
            stream.consumer_info(&c.name).await.map_err(|e| Error::Nats(format!("{}: {e}", c.name)))?;
        metrics::gauge!("souk_consumer_pending_messages", "consumer" => c.name.clone())
            .set(info.num_pending as f64);
        metrics::gauge!("souk_consumer_ack_pending_messages", "consumer" => c.name.clone())
            .set(info.num_ack_pending as f64);
        consumers.push(ConsumerStatus {
            stream: c.stream.clone(),
            name: c.name.clone(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending,
            redelivered: info.num_redelivered,
            waiting: info.num_waiting,
            breaker: None,
        });
    }
    Ok(PipelineStatus { streams, consumers, pools: Vec::new() })
}

/// How far one consumer is behind the stream.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ConsumerLag {
    /// Messages of its filter not yet handled: undelivered (`num_pending`) plus
    /// delivered and not yet acknowledged (`num_ack_pending`).
    pub messages: u64,
    /// How long ago the oldest of them was stored: the first message of its filter
    /// past its ack floor. Zero when nothing is behind.
    pub oldest: Duration,
}

/// [`ConsumerLag`] of `consumer` on `stream`, read from JetStream: the consumer's
/// counts and floor, and the stored time of the message just past the floor.
pub async fn consumer_lag(js: &jetstream::Context, stream: &str, consumer: &str) -> Result<ConsumerLag> {
    let nats = |e: &dyn std::fmt::Display| Error::Nats(format!("{stream}/{consumer}: {e}"));
    let handle = js.get_stream(stream).await.map_err(|e| nats(&e))?;
    let info = handle.consumer_info(consumer).await.map_err(|e| nats(&e))?;
    let messages = info.num_pending + info.num_ack_pending as u64;
    if messages == 0 {
        return Ok(ConsumerLag { messages, oldest: Duration::ZERO });
    }
    let config = &info.config;
    let filters: Vec<&str> = match (config.filter_subject.as_str(), config.filter_subjects.as_slice()) {
        ("", []) => vec![">"],
        ("", many) => many.iter().map(String::as_str).collect(),
        (one, _) => vec![one],
    };
    let from = info.ack_floor.stream_sequence + 1;
    let mut stored: Option<i128> = None;
    for subject in filters {
        match handle.get_first_raw_message_by_subject(subject, from).await {
            Ok(m) => {
                let at = m.time.unix_timestamp_nanos();
                stored = Some(stored.map_or(at, |s| s.min(at)));
            }
            // Handled between the two reads (or purged): not behind any more.
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(nats(&e)),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    // A clock behind the server's reads as no age, not a negative one.
    let oldest = stored.map_or(Duration::ZERO, |at| Duration::from_nanos((now - at).max(0) as u64));
    Ok(ConsumerLag { messages, oldest })
}
