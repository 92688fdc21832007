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
//! Both are labelled `index` (souk keeps one: `products`), exported with the other
//! pipeline gauges by every process that serves `/metrics`, and shown by `souk status`.

use serde::Serialize;
use souk_topologies::{Topology, status};

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
        let lag = status::consumer_lag(js, &consumer.stream, &consumer.name).await?;
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
