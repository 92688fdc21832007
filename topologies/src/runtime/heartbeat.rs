//! Sending this process's heartbeat (see [`crate::status::heartbeat`]): every `every`,
//! and at once when a pool's breaker or its operators' controls change, until the
//! pools have drained; then the entry is deleted, so a stopped process disappears at
//! once (a dead one ages out).

use async_nats::jetstream;
use futures::FutureExt;
use std::{sync::Arc, time::Duration};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{BreakerState, SinkStats, breaker::Breaker, live::Live, stats::PoolStats};
use crate::{
    control::PoolSettings,
    status::heartbeat::{self, PoolBeat, PoolControls, ProcessBeat, SinkBeat},
};

/// One pool as its heartbeat reports it.
pub(super) struct Beating {
    pub(super) name: String,
    pub(super) consumer: String,
    pub(super) breaker: Arc<Breaker>,
    /// The operators' settings the pool follows (see [`crate::control`]).
    pub(super) settings: watch::Receiver<PoolSettings>,
    /// Paused or draining, concurrency in force, in flight.
    pub(super) live: Arc<Live>,
    pub(super) stats: Arc<PoolStats>,
}

impl Beating {
    fn beat(&self) -> PoolBeat {
        let breaker = self.breaker.state();
        PoolBeat {
            name: self.name.clone(),
            consumer: self.consumer.clone(),
            breaker,
            last_error: (breaker != BreakerState::Closed)
                .then(|| self.breaker.last_error().map(|e| e.to_string()))
                .flatten(),
            in_flight: self.live.in_flight() as u64,
            waiting: self.live.waiting() as u64,
            totals: self.stats.totals(),
            windows: self.stats.windows(),
            controls: Some(PoolControls {
                paused: self.settings.borrow().paused,
                activity: self.live.activity(),
                concurrency: self.live.concurrency(),
            }),
        }
    }
}

fn sink_beat(sink: &SinkStats) -> SinkBeat {
    SinkBeat {
        name: sink.name().to_owned(),
        backend: sink.backend().to_owned(),
        totals: sink.totals(),
        windows: sink.windows(),
        last_error: sink.last_error(),
    }
}

/// Beat until `stop`, then delete the entry.
pub(super) async fn run(
    js: jetstream::Context,
    pools: Vec<Beating>,
    sinks: Vec<Arc<SinkStats>>,
    every: Duration,
    stop: CancellationToken,
) {
    let started = std::time::Instant::now();
    let process = heartbeat::process_id();
    let (host, pid) = (heartbeat::host_name(), std::process::id());
    let mut breakers: Vec<_> = pools.iter().map(|p| p.breaker.watch()).collect();
    let mut settings: Vec<_> = pools.iter().map(|p| p.settings.clone()).collect();
    let mut bucket = None;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if bucket.is_none() {
            match heartbeat::bucket(&js).await {
                Ok(b) => bucket = Some(b),
                Err(e) => tracing::warn!(error = %e, "heartbeat bucket unavailable; retrying"),
            }
        }
        if let Some(b) = &bucket {
            let beat = ProcessBeat {
                process: process.clone(),
                host: host.clone(),
                pid,
                every_ms: u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
                uptime_secs: started.elapsed().as_secs_f64(),
                pools: pools.iter().map(Beating::beat).collect(),
                sinks: sinks.iter().map(|s| sink_beat(s)).collect(),
            };
            let body = serde_json::to_vec(&beat).unwrap_or_default();
            if let Err(e) = b.put(&process, body.into()).await {
                tracing::debug!(error = %e, "heartbeat not sent");
            }
        }
        // A watch whose sender is gone (the controls' follower ends at shutdown, while
        // the pools drain) would report at once forever: it is no longer waited on.
        let changed = futures::future::select_all(
            breakers
                .iter_mut()
                .filter(|rx| rx.has_changed().is_ok())
                .map(|rx| rx.changed().map(drop).boxed())
                .chain(
                    settings
                        .iter_mut()
                        .filter(|rx| rx.has_changed().is_ok())
                        .map(|rx| rx.changed().map(drop).boxed()),
                )
                .chain([futures::future::pending().boxed()]),
        );
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
            _ = changed => {}
        }
    }
    if let Some(b) = bucket
        && let Err(e) = b.delete(&process).await
    {
        tracing::debug!(error = %e, "heartbeat not removed; it ages out");
    }
}
