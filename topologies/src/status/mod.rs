//! Pipeline status: the [`model`] every operator view renders, computed here from
//! JetStream's own info (streams, consumers, dead-letter counts), the worker
//! processes' [`heartbeat`]s and the outbox; its [`history`] for charts; and the
//! pipeline gauges. Lag is JetStream's own count, never counted by hand.

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::{Error, Result, runtime::BreakerState};

pub mod heartbeat;
pub mod history;
pub mod model;

pub use history::{HistoryOptions, keep};
pub use model::Model;

/// One pool of one live worker process (from its heartbeat).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolStatus {
    pub name: String,
    pub consumer: String,
    pub breaker: BreakerState,
    /// The dependency failure that opened the breaker (while it is not closed).
    pub last_error: Option<String>,
    /// Deliveries in its handlers now (held ones included).
    pub in_flight: u64,
    /// Of `in_flight`, waiting to be tried again (their slots given up).
    pub waiting: u64,
    /// Paused or not, draining, concurrency in force (see [`crate::control`]).
    pub controls: Option<heartbeat::PoolControls>,
}

/// Every pool of every live worker process, by name (a breaker change is in the
/// heartbeat bucket as soon as the process could put it there).
pub async fn read_pools(client: &async_nats::Client) -> Result<Vec<PoolStatus>> {
    let js = jetstream::new(client.clone());
    let mut pools: Vec<PoolStatus> = heartbeat::read_live(&js)
        .await?
        .into_iter()
        .flat_map(|seen| seen.beat.pools)
        .map(|p| PoolStatus {
            name: p.name,
            consumer: p.consumer,
            breaker: p.breaker,
            last_error: p.last_error,
            in_flight: p.in_flight,
            waiting: p.waiting,
            controls: p.controls,
        })
        .collect();
    pools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pools)
}

/// Set the pipeline gauges from `model`: `souk_stream_messages`, `souk_stream_fullness_ratio`,
/// `souk_consumer_pending_messages`, `souk_consumer_ack_pending_messages`,
/// `souk_consumer_oldest_unhandled_seconds`, `souk_dlq_messages`,
/// `souk_pool_live_processes` and, with an outbox, `souk_outbox_unpublished_rows`
/// and `souk_outbox_oldest_unpublished_seconds`. Every process that runs [`keep`] sets
/// them, so lag and dead letters are on every `/metrics` without `souk status`.
pub fn set_gauges(model: &Model) {
    for s in &model.streams {
        metrics::gauge!("souk_stream_messages", "stream" => s.name.clone()).set(s.messages as f64);
        let discard = if s.discards_new { "new" } else { "old" };
        metrics::gauge!("souk_stream_fullness_ratio", "stream" => s.name.clone(), "discard" => discard)
            .set(s.fullness);
    }
    for c in &model.consumers {
        let name = || c.name.clone();
        metrics::gauge!("souk_consumer_pending_messages", "consumer" => name()).set(c.pending as f64);
        metrics::gauge!("souk_consumer_ack_pending_messages", "consumer" => name()).set(c.ack_pending as f64);
        metrics::gauge!("souk_consumer_oldest_unhandled_seconds", "consumer" => name())
            .set(c.oldest_unhandled_secs);
        metrics::gauge!("souk_dlq_messages", "consumer" => name()).set(c.dead_letters as f64);
    }
    for p in &model.pools {
        metrics::gauge!("souk_pool_live_processes", "pool" => p.name.clone()).set(p.live_processes as f64);
    }
    if let Some(o) = &model.outbox {
        metrics::gauge!("souk_outbox_unpublished_rows").set(o.unpublished as f64);
        metrics::gauge!("souk_outbox_oldest_unpublished_seconds").set(o.oldest_secs.unwrap_or(0.0));
    }
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
    oldest_unhandled(&handle, &info).await
}

/// The subjects a consumer reads: its filter, its filters, or every subject (`>`).
pub fn filters_of(config: &jetstream::consumer::Config) -> Vec<&str> {
    match (config.filter_subject.as_str(), config.filter_subjects.as_slice()) {
        ("", []) => vec![">"],
        ("", many) => many.iter().map(String::as_str).collect(),
        (one, _) => vec![one],
    }
}

/// [`ConsumerLag`] from a consumer's `info` (read from `handle`'s stream).
pub(crate) async fn oldest_unhandled(
    handle: &jetstream::stream::Stream,
    info: &jetstream::consumer::Info,
) -> Result<ConsumerLag> {
    let nats = |e: &dyn std::fmt::Display| Error::Nats(format!("{}/{}: {e}", info.stream_name, info.name));
    let messages = info.num_pending + info.num_ack_pending as u64;
    if messages == 0 {
        return Ok(ConsumerLag { messages, oldest: Duration::ZERO });
    }
    let filters = filters_of(&info.config);
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
