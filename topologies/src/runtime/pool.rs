//! Pools: build, run (fetch → execute → settle), drain. The three stages live in
//! their own files: [`super::fetch`] (pulls, slots), [`super::execute`] (the handler
//! call, its batcher, timeout and progress acks, holding a delivery while the breaker
//! is open) and [`super::settle`] (ack, nak, dead letter, the max-deliver decision);
//! [`super::breaker`] stops and resumes a pool whose dependency fails.

use async_nats::jetstream::{self, consumer::PullConsumer};
use souk_pipelines::follow::FailureLog;
use std::{sync::Arc, time::Duration};
use tokio::sync::{Semaphore, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    Delivery, Handler, Outcome, Registry,
    breaker::Breaker,
    execute::batch_fn,
    failures, fetch, heartbeat,
    last_run::LastRuns,
    ledger::{Ledger, RateLimitedWarning},
    live::{self, Live},
    sink::SinkStats,
    stats::PoolStats,
};
use crate::{
    Error, Result,
    batcher::{BatchOptions, Batcher},
    control::{Controls, PoolSettings},
    publisher::Publisher,
    purge,
    spec::{ConsumerSpec, PoolSpec, Topology},
    status,
};

/// A pool ready to run.
pub struct Pool {
    spec: PoolSpec,
    consumer_spec: ConsumerSpec,
    consumer: PullConsumer,
    handler: Arc<dyn Handler>,
    publisher: Publisher,
    failure_log: Option<Arc<dyn FailureLog>>,
    last_runs: Arc<LastRuns>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("spec", &self.spec).finish()
    }
}

/// What every stage of a running pool shares.
pub(super) struct Ctx {
    pub(super) pool: String,
    pub(super) consumer: ConsumerSpec,
    pub(super) handler: Arc<dyn Handler>,
    /// Groups deliveries for `handle_batch` when the pool's `max-batch` > 1.
    pub(super) batcher: Option<Batcher<Delivery, Outcome>>,
    pub(super) handler_timeout: Duration,
    pub(super) publisher: Publisher,
    pub(super) breaker: Arc<Breaker>,
    /// The pool's shutdown: held deliveries are handed back when it fires.
    pub(super) cancel: CancellationToken,
    /// Deferrals and last errors of messages not yet done with (see `ledger`).
    pub(super) ledger: Ledger,
    /// The warning for messages of a newer schema, at most once a minute.
    pub(super) too_new_warning: RateLimitedWarning,
    /// This pool's counts, for the process's heartbeat.
    pub(super) stats: Arc<PoolStats>,
    /// Paused or not, concurrency, in flight: for the process's heartbeat.
    pub(super) live: Arc<Live>,
    /// Where failed attempts and each dead letter's place are recorded (for `souk
    /// trace`), if anywhere: a queue to the pool's writer (see [`failures`]).
    pub(super) failures: Option<failures::Recorder>,
    /// Marks of the extra runs of deliveries past max-deliver (see `last_run`).
    pub(super) last_runs: Arc<LastRuns>,
    /// The works its waiting deliveries wait on (see [`super::HandlerError::work`]).
    pub(super) waiting_work: super::waiting::WaitingWork,
}

impl Pool {
    /// Bind pool `name` of `topology` to its consumer (which must exist: apply the
    /// topology first) and its handler in `registry`.
    pub async fn build(
        publisher: &Publisher,
        topology: &Topology,
        name: &str,
        registry: &Registry,
    ) -> Result<Pool> {
        let spec_err = |message: String| Error::Spec { path: "<topology>".into(), message };
        let spec = topology.pool(name).ok_or_else(|| spec_err(format!("no pool {name}")))?.clone();
        let consumer_spec = topology
            .consumer(&spec.consumer)
            .ok_or_else(|| spec_err(format!("no consumer {}", spec.consumer)))?
            .clone();
        let handler = registry
            .get(&spec.handler)
            .ok_or_else(|| spec_err(format!("pool {name}: no handler registered as {}", spec.handler)))?;
        let stream = publisher.jetstream().get_stream(&consumer_spec.stream).await.map_err(|e| {
            Error::Nats(format!("stream {}: {e} (run `souk topology apply`)", consumer_spec.stream))
        })?;
        let consumer: PullConsumer = stream.get_consumer(&consumer_spec.name).await.map_err(|e| {
            Error::Nats(format!("consumer {}: {e} (run `souk topology apply`)", consumer_spec.name))
        })?;
        let last_runs = Arc::new(LastRuns::new(publisher.jetstream().clone(), control_replicas(topology)));
        Ok(Pool {
            spec,
            consumer_spec,
            consumer,
            handler,
            publisher: publisher.clone(),
            failure_log: None,
            last_runs,
        })
    }

    /// Record each failed attempt and each dead letter's place in `log` (see
    /// [`FailureLog`] and the runtime's `failures` module).
    pub fn failure_log(mut self, log: Arc<dyn FailureLog>) -> Pool {
        self.failure_log = Some(log);
        self
    }

    /// Run until `cancel` fires, then drain (see the module docs), at the topology's
    /// settings: operators' controls do not reach it (see [`Pool::run_controlled`]).
    pub async fn run(self, cancel: CancellationToken) {
        let breaker = Breaker::new(&self.spec.name);
        let (_keep, settings) = watch::channel(PoolSettings::default());
        let live = Live::new(self.spec.concurrency, false);
        self.run_with(cancel, breaker, settings, live, Arc::default()).await;
    }

    /// [`Pool::run`], following the pool's settings in `controls` (pause, resume,
    /// concurrency) from before its first fetch: a pool paused before this process
    /// started starts paused.
    pub async fn run_controlled(self, cancel: CancellationToken, controls: &Controls) -> Result<()> {
        let breaker = Breaker::new(&self.spec.name);
        let settings = controls.follow(&self.spec.name, cancel.child_token()).await?;
        let live = Live::starting(&self.spec, &settings.borrow());
        self.run_with(cancel, breaker, settings, live, Arc::default()).await;
        Ok(())
    }

    pub(super) async fn run_with(
        self,
        cancel: CancellationToken,
        breaker: Arc<Breaker>,
        mut settings: watch::Receiver<PoolSettings>,
        live: Arc<Live>,
        stats: Arc<PoolStats>,
    ) {
        let Pool { spec, consumer_spec, consumer, handler, publisher, failure_log, last_runs } = self;
        // Exported from the start (0 until a delivery waits), so a dashboard or an
        // alert rule finds the series before the first wait.
        metrics::gauge!("souk_worker_waiting_messages", "pool" => spec.name.clone()).increment(0.0);
        let (recorder, writer) = match failure_log {
            Some(log) => {
                let (recorder, writer) = failures::spawn(&spec.name, log);
                (Some(recorder), Some(writer))
            }
            None => (None, None),
        };
        // The batcher outlives the fetch loop: draining handlers still need it.
        let stop_batcher = CancellationToken::new();
        let (batcher, batch_tasks) = match spec.max_batch {
            0 | 1 => (None, None),
            max_batch => {
                let options = BatchOptions {
                    max_batch,
                    max_wait: Duration::ZERO,
                    max_in_flight: spec.batches_in_flight,
                    // Operators may raise the concurrency at run time; the queue holds
                    // at most what the pool's slots let in anyway.
                    queue_capacity: spec.concurrency.max(crate::control::MAX_CONCURRENCY),
                };
                let (b, t) = Batcher::spawn(
                    options,
                    stop_batcher.clone(),
                    batch_fn(handler.clone(), spec.handler_timeout),
                );
                (Some(b), Some(t))
            }
        };
        let ctx = Arc::new(Ctx {
            pool: spec.name.clone(),
            consumer: consumer_spec,
            handler,
            batcher,
            handler_timeout: spec.handler_timeout,
            publisher,
            ledger: Ledger::default(),
            too_new_warning: RateLimitedWarning::new(Duration::from_secs(60)),
            breaker: breaker.clone(),
            cancel: cancel.clone(),
            stats,
            live: live.clone(),
            failures: recorder,
            last_runs,
            waiting_work: Default::default(),
        });
        let stop_prober = CancellationToken::new();
        let prober = tokio::spawn({
            let (handler, stop) = (ctx.handler.clone(), stop_prober.clone());
            async move { breaker.run_prober(handler, stop).await }
        });
        let slots = Arc::new(Semaphore::new(live.concurrency()));
        let stop_resizer = CancellationToken::new();
        let resizer = tokio::spawn(live::resize(
            slots.clone(),
            live.clone(),
            settings.clone(),
            spec.concurrency,
            stop_resizer.clone(),
        ));
        let tracker = TaskTracker::new();
        // Fires when the drain deadline passes: running handlers are abandoned unacked.
        let abandon = CancellationToken::new();
        tracing::info!(pool = %spec.name, consumer = %spec.consumer, concurrency = spec.concurrency, "pool started");

        fetch::fetch_loop(&ctx, &consumer, &spec, &slots, &mut settings, &tracker, &abandon, &cancel).await;
        stop_resizer.cancel();
        resizer.await.ok();

        tracker.close();
        let in_flight = tracker.len();
        tracing::info!(pool = %spec.name, in_flight, "pool draining");
        if tokio::time::timeout(spec.drain_timeout, tracker.wait()).await.is_err() {
            abandon.cancel();
            tracker.wait().await;
        }
        stop_prober.cancel();
        prober.await.ok();
        stop_batcher.cancel();
        if let Some(tasks) = batch_tasks {
            // Abandoned handlers may leave a batch running; it is not waited for.
            let _ = tokio::time::timeout(Duration::from_secs(1), tasks.wait()).await;
        }
        if let Some(writer) = writer {
            writer.stop().await;
        }
        tracing::info!(pool = %spec.name, "pool stopped");
    }
}

/// Every pool of a topology (or a chosen subset), run together.
#[derive(Debug)]
pub struct Runtime {
    pools: Vec<Pool>,
    /// `purge-acked` streams read by these pools.
    purged_streams: Vec<String>,
    js: jetstream::Context,
    /// Each pool's settings (pause, concurrency), followed from the control bucket
    /// since `build`, in the order of `pools`.
    settings: Vec<watch::Receiver<PoolSettings>>,
    /// Ends those watches once the pools have stopped.
    stop_following: CancellationToken,
    heartbeat_every: Duration,
}

impl Runtime {
    /// Build the pools named in `only` (all pools when empty).
    pub async fn build(
        publisher: &Publisher,
        topology: &Topology,
        registry: &Registry,
        only: &[String],
    ) -> Result<Runtime> {
        let mut pools = Vec::new();
        for spec in &topology.pools {
            if only.is_empty() || only.contains(&spec.name) {
                pools.push(Pool::build(publisher, topology, &spec.name, registry).await?);
            }
        }
        for name in only {
            if topology.pool(name).is_none() {
                return Err(Error::Spec { path: "<topology>".into(), message: format!("no pool {name}") });
            }
        }
        let mut purged_streams: Vec<String> = Vec::new();
        for pool in &pools {
            let stream = &pool.consumer_spec.stream;
            let purged = topology.streams.iter().any(|s| &s.name == stream && s.purge_acked);
            if purged && !purged_streams.contains(stream) {
                purged_streams.push(stream.clone());
            }
        }
        // Read (and watch) every pool's settings now, before `run`: a pool left paused
        // must not take a message, and a node whose `build` returned starts fetching at
        // once in `run` (the reads are done in parallel: a round trip or two each).
        let controls = Controls::open(publisher.jetstream(), control_replicas(topology)).await?;
        let stop_following = CancellationToken::new();
        let settings = futures::future::try_join_all(
            pools.iter().map(|p| controls.follow(&p.spec.name, stop_following.clone())),
        )
        .await?;
        Ok(Runtime {
            pools,
            purged_streams,
            js: publisher.jetstream().clone(),
            settings,
            stop_following,
            heartbeat_every: status::heartbeat::DEFAULT_EVERY,
        })
    }

    /// Record failed attempts and dead letters in `log` (see [`FailureLog`]), in every pool.
    pub fn failure_log(mut self, log: Arc<dyn FailureLog>) -> Runtime {
        self.pools = self.pools.into_iter().map(|p| p.failure_log(log.clone())).collect();
        self
    }

    /// Beat every `every` instead of [`status::heartbeat::DEFAULT_EVERY`] (tests).
    pub fn heartbeat_every(mut self, every: Duration) -> Runtime {
        self.heartbeat_every = every;
        self
    }

    /// Run every pool, and the purger of the `purge-acked` streams they read, until
    /// `cancel`; returns when all pools have drained. Each pool follows its
    /// operators' settings ([`crate::control`]) from before its first fetch. Meanwhile
    /// the process beats (its pools' breakers, controls and counts in the heartbeat
    /// bucket, see [`status::heartbeat`]) until its pools have drained.
    pub async fn run(self, cancel: CancellationToken) {
        let purger = tokio::spawn(purge::run(
            self.js.clone(),
            self.purged_streams,
            purge::DEFAULT_EVERY,
            cancel.clone(),
        ));
        let pools: Vec<_> = self
            .pools
            .into_iter()
            .zip(self.settings)
            .map(|(p, settings)| {
                let breaker = Breaker::new(&p.spec.name);
                let live = Live::starting(&p.spec, &settings.borrow());
                (p, breaker, settings, live, Arc::<PoolStats>::default())
            })
            .collect();
        // Each sink once, however many of these pools write it.
        let mut sinks: Vec<Arc<SinkStats>> = Vec::new();
        for sink in pools.iter().flat_map(|(p, ..)| p.handler.sinks()) {
            if !sinks.iter().any(|s| Arc::ptr_eq(s, &sink)) {
                sinks.push(sink);
            }
        }
        let beating = pools
            .iter()
            .map(|(p, b, settings, live, stats)| heartbeat::Beating {
                name: p.spec.name.clone(),
                consumer: p.spec.consumer.clone(),
                breaker: b.clone(),
                settings: settings.clone(),
                live: live.clone(),
                stats: stats.clone(),
            })
            .collect();
        let stop_beating = CancellationToken::new();
        let beat =
            tokio::spawn(heartbeat::run(self.js, beating, sinks, self.heartbeat_every, stop_beating.clone()));
        futures::future::join_all(
            pools.into_iter().map(|(p, b, s, l, stats)| p.run_with(cancel.clone(), b, s, l, stats)),
        )
        .await;
        self.stop_following.cancel();
        stop_beating.cancel();
        beat.await.ok();
        purger.await.ok();
    }
}

/// The control bucket's replicas: as many as the topology's most replicated stream.
fn control_replicas(topology: &Topology) -> usize {
    topology.streams.iter().map(|s| s.replicas).max().unwrap_or(1).max(1)
}
