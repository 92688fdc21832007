//! History for charts: one [`Point`] per 10 s over the last hour, kept by souk itself
//! in JetStream, so it survives the restart of any process.
//!
//! Stored in the stream [`STREAM`] (subject [`SUBJECT`]), created by the first
//! keeper: file storage, `max-age` = the kept span and `max-msgs` = the points that
//! span holds (+1), discarding the oldest — bounded by configuration, whatever writes.
//! Chosen over a key-value bucket because a KV keeps at most 64 values per key and
//! reading 360 keys is 360 requests, while one ordered consumer reads the whole
//! stream in a pull. Every process running [`keep`] takes part: at each slot boundary
//! it reads the model, sets the pipeline gauges, and publishes the slot's point with
//! `Nats-Msg-Id: slot-<n>` unless the stream already holds that slot — so several
//! processes store each slot once, without electing a writer, and when one stops the
//! others carry on.

use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use souk_pipelines::outbox::OutboxStats;
use std::{collections::BTreeMap, sync::Arc, time::Duration};
use tokio_util::sync::CancellationToken;

use super::{
    heartbeat,
    model::{self, Model},
};
use crate::{Error, Result, spec::Topology};

/// The history stream (souk's own, not part of a topology).
pub const STREAM: &str = "SOUK_STATUS_HISTORY";
pub const SUBJECT: &str = "souk.status.history";

/// How finely and how long history is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryOptions {
    pub resolution: Duration,
    pub keep: Duration,
}

impl Default for HistoryOptions {
    fn default() -> Self {
        HistoryOptions { resolution: Duration::from_secs(10), keep: Duration::from_secs(3600) }
    }
}

impl HistoryOptions {
    /// Points the kept span holds: the stream's `max-msgs`.
    pub fn max_points(&self) -> i64 {
        let n = self.keep.as_millis() / self.resolution.as_millis().max(1);
        i64::try_from(n).unwrap_or(i64::MAX).saturating_add(1)
    }
}

/// The pipeline at one slot, for charts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// The slot: unix time / resolution.
    pub slot: u64,
    pub at_ms: i64,
    pub consumers: BTreeMap<String, ConsumerPoint>,
    pub pools: BTreeMap<String, PoolPoint>,
    pub outbox_unpublished: Option<u64>,
    /// Points stored before sinks were counted have none.
    #[serde(default)]
    pub sinks: BTreeMap<String, SinkPoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SinkPoint {
    /// Over the last 10 s.
    pub items_per_sec: f64,
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ConsumerPoint {
    pub lag: u64,
    pub dead_letters: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PoolPoint {
    pub live_processes: usize,
    pub in_flight: u64,
    /// Over the last 10 s.
    pub per_sec: f64,
    pub error_ratio: Option<f64>,
}

impl Point {
    fn of(model: &Model, slot: u64) -> Point {
        Point {
            slot,
            at_ms: model.at_ms,
            consumers: model
                .consumers
                .iter()
                .map(|c| (c.name.clone(), ConsumerPoint { lag: c.lag, dead_letters: c.dead_letters }))
                .collect(),
            pools: model
                .pools
                .iter()
                .map(|p| {
                    let last = p.rates.first();
                    let point = PoolPoint {
                        live_processes: p.live_processes,
                        in_flight: p.in_flight,
                        per_sec: last.map_or(0.0, |r| r.per_sec),
                        error_ratio: last.and_then(|r| r.error_ratio),
                    };
                    (p.name.clone(), point)
                })
                .collect(),
            outbox_unpublished: model.outbox.map(|o| o.unpublished),
            sinks: model
                .sinks
                .iter()
                .map(|s| {
                    let last = s.rates.first();
                    let point = SinkPoint {
                        items_per_sec: last.map_or(0.0, |r| r.items_per_sec),
                        errors: last.map_or(0, |r| r.errors),
                    };
                    (s.name.clone(), point)
                })
                .collect(),
        }
    }
}

fn nats(e: &dyn std::fmt::Display) -> Error {
    Error::Nats(format!("status history ({STREAM}): {e}"))
}

/// The history stream, created with `options` if missing.
async fn stream(js: &jetstream::Context, options: HistoryOptions) -> Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: STREAM.into(),
        description: Some("souk: pipeline status history for charts (one point per slot)".into()),
        subjects: vec![SUBJECT.into()],
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        storage: stream::StorageType::File,
        max_age: options.keep,
        max_messages: options.max_points(),
        duplicate_window: options.keep.min(Duration::from_secs(120)),
        ..Default::default()
    })
    .await
    .map_err(|e| nats(&e))
}

/// Every stored point, oldest first (none when nothing was ever kept).
pub async fn read(js: &jetstream::Context) -> Result<Vec<Point>> {
    let Ok(mut stream) = js.get_stream(STREAM).await else { return Ok(Vec::new()) };
    let stored = stream.info().await.map_err(|e| nats(&e))?.state.messages;
    if stored == 0 {
        return Ok(Vec::new());
    }
    let reader = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| nats(&e))?;
    let mut messages = reader.messages().await.map_err(|e| nats(&e))?;
    let mut points = Vec::new();
    // Bounded: points expire meanwhile, so stop at the last pending one, or when
    // nothing more comes.
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(2), messages.next()).await {
        let message = next.map_err(|e| nats(&e))?;
        match serde_json::from_slice::<Point>(&message.payload) {
            Ok(p) => points.push(p),
            Err(e) => tracing::warn!(error = %e, "unreadable status history point"),
        }
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        if pending == 0 {
            break;
        }
    }
    Ok(points)
}

/// Fill the trends of `model`'s consumers from its history (and the current reading).
pub fn trends(model: &mut Model) {
    for c in &mut model.consumers {
        let mut series: Vec<(i64, u64)> =
            model.history.iter().filter_map(|p| Some((p.at_ms, p.consumers.get(&c.name)?.lag))).collect();
        series.push((model.at_ms, c.lag));
        let five_minutes_ago = model.at_ms - 300_000;
        let from = series.iter().find(|(at, _)| *at >= five_minutes_ago).copied();
        c.lag_per_min = from.and_then(|(at, lag)| {
            let minutes = (model.at_ms - at) as f64 / 60_000.0;
            (minutes >= 0.5).then(|| (c.lag as f64 - lag as f64) / minutes)
        });
        // The growing streak: back from now while lag is above zero and never went down.
        let mut start = model.at_ms;
        for pair in series.windows(2).rev() {
            let ((at, before), (_, after)) = (pair[0], pair[1]);
            if before == 0 || after < before {
                break;
            }
            start = at;
        }
        c.lag_growing_secs = if c.lag == 0 { 0.0 } else { (model.at_ms - start) as f64 / 1e3 };
    }
}

/// Until `cancel`, at every slot boundary: read the model, set the pipeline gauges, and
/// store the slot's point unless another process already has.
pub async fn keep(
    js: jetstream::Context,
    topology: Topology,
    outbox: Option<Arc<dyn OutboxStats>>,
    options: HistoryOptions,
    cancel: CancellationToken,
) {
    let mut history = None;
    loop {
        let resolution = options.resolution.as_millis().max(1);
        let now_ms = heartbeat::time_now_nanos() / 1_000_000;
        let slot = u64::try_from(now_ms / resolution as i128).unwrap_or(0);
        match model::read(&js, &topology, outbox.as_deref(), false).await {
            Ok(model) => {
                super::set_gauges(&model);
                if history.is_none() {
                    history = stream(&js, options).await.inspect_err(|e| tracing::debug!(error = %e)).ok();
                }
                if let Some(s) = &history
                    && let Err(e) = store(&js, s, &model, slot).await
                {
                    tracing::debug!(error = %e, "status history point not stored");
                }
            }
            Err(e) => tracing::debug!(error = %e, "pipeline status unavailable"),
        }
        // Sleep to the next slot boundary.
        let now_ms = heartbeat::time_now_nanos() / 1_000_000;
        let next = (now_ms / resolution as i128 + 1) * resolution as i128;
        let wait = Duration::from_millis(u64::try_from(next - now_ms).unwrap_or(0).max(1));
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn store(js: &jetstream::Context, stream: &stream::Stream, model: &Model, slot: u64) -> Result<()> {
    // Skip a slot already stored (the message id would dedupe it too, within the window).
    match stream.get_last_raw_message_by_subject(SUBJECT).await {
        Ok(last) if serde_json::from_slice::<Point>(&last.payload).is_ok_and(|p| p.slot >= slot) => {
            return Ok(());
        }
        _ => {}
    }
    let body = serde_json::to_vec(&Point::of(model, slot)).map_err(|e| nats(&e))?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("slot-{slot}").as_str());
    js.publish_with_headers(SUBJECT, headers, body.into())
        .await
        .map_err(|e| nats(&e))?
        .await
        .map_err(|e| nats(&e))?;
    Ok(())
}
