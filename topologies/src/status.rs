//! Pipeline status read back from JetStream: streams and consumer lag.
//! Lag is JetStream's own count of undelivered messages, never counted by hand.

use async_nats::jetstream;
use serde::Serialize;

use crate::{Error, Result, spec::Topology};

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
}

/// The whole pipeline.
#[derive(Debug, Clone, Serialize)]
pub struct PipelineStatus {
    pub streams: Vec<StreamStatus>,
    pub consumers: Vec<ConsumerStatus>,
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
        });
    }
    Ok(PipelineStatus { streams, consumers })
}
