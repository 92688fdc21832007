//! `catalog.index`: `ProductChanged` events from EVT into the search index, a batch at a
//! time.
//!
//! Each batch is decoded and checked message by message (an undecodable payload or a
//! document the index cannot hold is poison: dead-lettered with the reason, and the
//! rest of the batch goes on), then written with ONE [`SearchStore::apply`]: one commit
//! for up to `max-batch` products. Every delivery of the batch is acked only after
//! `apply` returned, when the changes are durable and searchable.
//!
//! No inbox: the store is version-safe on its own. An op applies only if its version is
//! newer than the one stored for its `(tenant, sku)` (deletes leave a tombstone with
//! their version), so a duplicate delivery, a replay, an out-of-order delivery or an
//! update older than a delete changes nothing, and applying a batch again after a
//! failure (or after a crash between the commit and the acks) gives the same index.
//! That is what the inbox gives the Postgres handlers; here it would be a second,
//! redundant record in another store — and the indexer would need Postgres for nothing.
//!
//! Failures of the store are told apart by the store's own classification: an outage
//! (disk full or read-only, I/O error, server down, timeout) is a dependency failure —
//! the pool's breaker opens and holds the whole batch, nothing dead-lettered, nothing
//! lost — and anything else is retried as a failure of the batch.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::catalog::ProductChanged;
use souk_stores::search::{IndexOp, SearchError, SearchStore};
use souk_topologies::runtime::{Delivery, Handler, HandlerError, Outcome, SinkStats};
use std::{sync::Arc, time::Instant};

/// The sink's name in the status model and metrics.
pub const SINK: &str = "search";

/// The tenant of the probe's tombstone: no token names it (the probe writes a delete,
/// never a searchable document, and searches are scoped to the caller's tenant).
const PROBE_TENANT: &str = "souk.probe";

/// Indexes `ProductChanged` events (see the module doc).
#[derive(Clone)]
pub struct IndexProducts {
    store: Arc<dyn SearchStore>,
    /// Every write call's outcome, for the status model's sinks.
    sink: Arc<SinkStats>,
}

impl std::fmt::Debug for IndexProducts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IndexProducts").finish_non_exhaustive()
    }
}

impl IndexProducts {
    pub fn new(store: Arc<dyn SearchStore>) -> Self {
        let sink = Arc::new(SinkStats::new(SINK, store.backend()));
        IndexProducts { store, sink }
    }

    /// Apply `ops` (each with the index of its delivery) in one store call, answering
    /// into `outcomes`. A document the store refuses as invalid is poison for its
    /// deliveries only: the call is made again without it.
    async fn apply(&self, mut ops: Vec<(usize, IndexOp)>, outcomes: &mut [Outcome]) {
        // Each refusal removes at least one op, so this ends.
        while !ops.is_empty() {
            let batch: Vec<IndexOp> = ops.iter().map(|(_, op)| op.clone()).collect();
            let started = Instant::now();
            let applied = self.store.apply(batch).await;
            match &applied {
                Ok(_) => self.sink.wrote(ops.len(), started.elapsed()),
                Err(e) => self.sink.failed(e, started.elapsed()),
            }
            match applied {
                Ok(done) => {
                    metrics::counter!("souk_search_index_ops_total", "outcome" => "applied")
                        .increment(done.applied as u64);
                    metrics::counter!("souk_search_index_ops_total", "outcome" => "stale")
                        .increment(done.stale as u64);
                    for (i, _) in ops {
                        outcomes[i] = Outcome::Ack;
                    }
                    return;
                }
                Err(SearchError::BadDocument { tenant, sku, reason }) => {
                    let before = ops.len();
                    ops.retain(|(i, op)| {
                        // By (tenant, sku): another tenant's product of the same sku is
                        // another document, not refused with this one.
                        let refused = op.tenant() == tenant && op.sku() == sku;
                        if refused {
                            outcomes[*i] = Outcome::fail("invalid_document", format!("{sku}: {reason}"));
                        }
                        !refused
                    });
                    if ops.len() == before {
                        // The store named a document that is not in the batch: not the
                        // message's fault as far as can be told.
                        let e = HandlerError::retryable("store_refused", format!("{sku}: {reason}"));
                        return fail_all(&ops, outcomes, e);
                    }
                }
                Err(e) => return fail_all(&ops, outcomes, classify(&e)),
            }
        }
    }
}

fn fail_all(ops: &[(usize, IndexOp)], outcomes: &mut [Outcome], e: HandlerError) {
    for (i, _) in ops {
        outcomes[*i] = Outcome::Error(e.clone());
    }
}

/// A store failure as a handler error: an outage holds the deliveries behind the
/// breaker; anything else is retried (and counts toward max-deliver).
fn classify(e: &SearchError) -> HandlerError {
    if e.is_outage() {
        HandlerError::dependency("search_unavailable", e)
    } else {
        HandlerError::retryable("search_failed", e)
    }
}

/// The op for one delivery, or why it can never be indexed (poison; a newer schema
/// waits).
fn op_of(d: &Delivery) -> Result<IndexOp, HandlerError> {
    let event: ProductChanged = d.decode().map_err(|e| {
        if e.is_newer_version() {
            HandlerError::too_new("schema_too_new", e)
        } else {
            HandlerError::poison("undecodable", e)
        }
    })?;
    if let Some(p) = &event.product
        && (p.sku != event.sku || p.seller != event.seller || p.version != event.version)
    {
        // The catalog writes both from one row; a disagreement is a broken event, and
        // which half is right cannot be told.
        return Err(HandlerError::poison(
            "inconsistent_event",
            format!("event {} v{} carries product {} v{}", event.sku, event.version, p.sku, p.version),
        ));
    }
    let op = IndexOp::from_event(&event);
    op.validate().map_err(|why| HandlerError::poison("invalid_document", format!("{}: {why}", event.sku)))?;
    Ok(op)
}

impl Handler for IndexProducts {
    fn handle<'a>(&'a self, delivery: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            self.handle_batch(std::slice::from_ref(delivery))
                .await
                .pop()
                .unwrap_or_else(|| Outcome::retry("no_outcome", "the batch answered nothing"))
        }
        .boxed()
    }

    fn handle_batch<'a>(&'a self, deliveries: &'a [Delivery]) -> BoxFuture<'a, Vec<Outcome>> {
        async move {
            // Every slot is overwritten below: by a refusal, or by the apply's answer.
            let mut outcomes = vec![Outcome::retry("not_applied", "not applied"); deliveries.len()];
            let mut ops = Vec::with_capacity(deliveries.len());
            for (i, d) in deliveries.iter().enumerate() {
                match op_of(d) {
                    Ok(op) => ops.push((i, op)),
                    Err(e) => outcomes[i] = Outcome::Error(e),
                }
            }
            self.apply(ops, &mut outcomes).await;
            outcomes
        }
        .boxed()
    }

    fn too_new(&self, d: &Delivery) -> Option<String> {
        crate::schema::too_new::<ProductChanged>(d)
    }

    fn sinks(&self) -> Vec<Arc<SinkStats>> {
        vec![self.sink.clone()]
    }

    /// The index takes writes: a real write (a tombstone of the probe tenant, at a
    /// version that grows with the clock), durable on return like any batch. A read-only
    /// or full disk, or an OpenSearch cluster refusing writes, fails it.
    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        async move {
            let version = chrono::Utc::now().timestamp_micros();
            let op = IndexOp::Delete { tenant: PROBE_TENANT.into(), sku: "probe".into(), version };
            self.store.apply(vec![op]).await.map(|_| ()).map_err(|e| classify(&e))
        }
        .boxed()
    }
}
