//! Index lag: how far the search index is behind the catalog.
//!
//! Defined on the indexer's consumer (`catalog-index`), read from JetStream, never
//! counted by hand:
//! - `souk_search_index_lag_events`: `ProductChanged` events not yet indexed — the
//!   consumer's undelivered plus delivered-but-unacknowledged messages (an event is
//!   acknowledged only once its batch is durable and searchable);
//! - `souk_search_index_lag_seconds`: the age of the oldest event not yet indexed (the
//!   time EVT stored the first event past the consumer's ack floor), 0 when none is
//!   behind. Measured from EVT, so it leaves out the catalog's outbox-to-EVT step (the
//!   relay's own metrics show that); "caught up" reads 0, not the time since the last
//!   change, so an idle catalog never looks late.
//!
//! Without its consumer (deleted, or its stream re-created without it) nothing indexes:
//! the lag is then what a re-created consumer (which delivers all of EVT) has before it —
//! every stored event of its subjects and the age of the first — not the last value read
//! (which would keep showing a stalled index as caught up).
//!
//! Both are labelled `index` (souk keeps one: `products`), exported with the other
//! pipeline gauges by every process that serves `/metrics`, and shown by `souk status`.

use futures::TryStreamExt;
use serde::Serialize;
use souk_topologies::spec::ConsumerSpec;
use souk_topologies::{Error, Topology, status};
use std::time::Duration;

use super::{INDEX_HANDLER, PRODUCTS_INDEX};

/// The lag of one index.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexLag {
    pub index: String,
    /// The consumer that feeds it.
    pub consumer: String,
    pub events: u64,
    pub seconds: f64,
}

/// The lag of every index `topology` feeds (the consumers of its `catalog.index`
/// pools), with the gauges set.
pub async fn read(
    js: &async_nats::jetstream::Context,
    topology: &Topology,
) -> souk_topologies::Result<Vec<IndexLag>> {
    let mut lags = Vec::new();
    for pool in topology.pools.iter().filter(|p| p.handler == INDEX_HANDLER) {
        let Some(consumer) = topology.consumer(&pool.consumer) else { continue };
        if lags.iter().any(|l: &IndexLag| l.consumer == consumer.name) {
            continue;
        }
        let lag = match status::consumer_lag(js, &consumer.stream, &consumer.name).await {
            Ok(lag) => lag,
            Err(e) if consumer_missing(js, consumer).await => {
                tracing::debug!(error = %e, consumer = %consumer.name, "index consumer missing");
                lag_without_consumer(js, consumer).await?
            }
            Err(e) => return Err(e),
        };
        let seconds = lag.oldest.as_secs_f64();
        metrics::gauge!("souk_search_index_lag_events", "index" => PRODUCTS_INDEX).set(lag.messages as f64);
        metrics::gauge!("souk_search_index_lag_seconds", "index" => PRODUCTS_INDEX).set(seconds);
        lags.push(IndexLag {
            index: PRODUCTS_INDEX.to_owned(),
            consumer: consumer.name.clone(),
            events: lag.messages,
            seconds,
        });
    }
    Ok(lags)
}

/// Keep the lag gauges current: read every `every` until `cancel`.
pub async fn export_gauges(
    js: async_nats::jetstream::Context,
    topology: Topology,
    every: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        if let Err(e) = read(&js, &topology).await {
            tracing::debug!(error = %e, "index lag unavailable");
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
}

async fn consumer_missing(js: &async_nats::jetstream::Context, consumer: &ConsumerSpec) -> bool {
    use async_nats::jetstream::context::ConsumerInfoErrorKind;
    match js.get_stream(&consumer.stream).await {
        Ok(stream) => stream
            .consumer_info(&consumer.name)
            .await
            .is_err_and(|e| e.kind() == ConsumerInfoErrorKind::NotFound),
        Err(_) => false,
    }
}

/// Everything the stream holds on the consumer's subjects, and the age of the first.
async fn lag_without_consumer(
    js: &async_nats::jetstream::Context,
    consumer: &ConsumerSpec,
) -> souk_topologies::Result<status::ConsumerLag> {
    let nats = |e: &dyn std::fmt::Display| Error::Nats(format!("{}: {e}", consumer.stream));
    let stream = js.get_stream(&consumer.stream).await.map_err(|e| nats(&e))?;
    let filters: Vec<&str> = match consumer.filter_subjects.as_slice() {
        [] => vec![">"],
        many => many.iter().map(String::as_str).collect(),
    };
    let (mut messages, mut first) = (0u64, None::<i128>);
    for subject in filters {
        let mut counts = stream.info_with_subjects(subject).await.map_err(|e| nats(&e))?;
        while let Some((_, n)) = counts.try_next().await.map_err(|e| nats(&e))? {
            messages += n as u64;
        }
        match stream.get_first_raw_message_by_subject(subject, 1).await {
            Ok(m) => {
                let at = m.time.unix_timestamp_nanos();
                first = Some(first.map_or(at, |f| f.min(at)));
            }
            Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(nats(&e)),
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    let oldest = first.map_or(Duration::ZERO, |at| Duration::from_nanos((now - at).max(0) as u64));
    Ok(status::ConsumerLag { messages, oldest })
}
