//! The pipeline status model: everything `souk status` and the operators' dashboard
//! show, computed here and only rendered there. Every number is read — streams and
//! consumers from JetStream's own info, dead letters from the `DLQ` stream's subject
//! counts, pools from the processes' heartbeats, the outbox through
//! [`OutboxStats`] — never guessed; a part that cannot be read is named in
//! [`Model::problems`] and left empty, not filled with zeros.

use async_nats::jetstream;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use souk_pipelines::{
    outbox::{OutboxBacklog, OutboxStats},
    subjects,
};
use std::{collections::BTreeMap, time::Duration};

use super::{
    heartbeat::{self, PoolControls},
    history::{self, Point},
    oldest_unhandled,
};
use crate::{
    Error, Result,
    control::{self, PoolSettings},
    dead_letters,
    runtime::{Activity, BreakerState, Counters, HANDLE_BUCKETS, SinkCounters, SinkError, WINDOWS},
    spec::Topology,
};

/// The whole pipeline at one moment, with its recent history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    /// When it was read (unix milliseconds).
    pub at_ms: i64,
    pub streams: Vec<StreamModel>,
    pub consumers: Vec<ConsumerModel>,
    /// Every pool of the topology, and any other pool a live process runs.
    pub pools: Vec<PoolModel>,
    /// `None` when no outbox was given or it could not be read (see `problems`).
    pub outbox: Option<OutboxBacklog>,
    /// Every sink a live process writes (from heartbeats), by name.
    #[serde(default)]
    pub sinks: Vec<SinkModel>,
    /// What could not be read (the rest is still right).
    pub problems: Vec<String>,
    /// One point per 10 s over the last hour, oldest first (see [`history`]).
    pub history: Vec<Point>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamModel {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    /// Age of the oldest message some consumer of this stream has not handled.
    pub oldest_unhandled_secs: f64,
    /// How full the stream is of the nearer of its `max-bytes` and `max-messages`
    /// (0 to 1; 0 without either): a `discard = "new"` stream refuses commands at 1.
    #[serde(default)]
    pub fullness: f64,
    /// Whether a full stream refuses new messages (`discard = "new"`, CMD) rather than
    /// dropping its oldest (EVT, DLQ): only then is fullness an outage.
    #[serde(default)]
    pub discards_new: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerModel {
    pub stream: String,
    pub name: String,
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Messages delivered more than once (still unacknowledged).
    pub redelivered: u64,
    /// Pull requests waiting (≈ idle workers).
    pub waiting: u64,
    /// `pending + ack_pending`: what this consumer has not handled.
    pub lag: u64,
    /// Age of the oldest of them (0 when nothing is behind).
    pub oldest_unhandled_secs: f64,
    /// Since the consumer last delivered or was acknowledged (`None`: never).
    pub last_active_secs: Option<f64>,
    /// Change of `lag` per minute over the last 5 minutes of history (`None`: too
    /// little history).
    pub lag_per_min: Option<f64>,
    /// How long `lag` has been above zero without ever going down (by history).
    pub lag_growing_secs: f64,
    /// Dead letters of this consumer now in `DLQ`.
    pub dead_letters: u64,
    /// The worst breaker among the live pools reading this consumer (`None`: none runs).
    pub breaker: Option<BreakerState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PoolModel {
    pub name: String,
    pub consumer: String,
    /// Live processes running it.
    pub processes: Vec<ProcessModel>,
    pub live_processes: usize,
    pub in_flight: u64,
    /// Of `in_flight`, waiting to be tried again (their slots given up).
    #[serde(default)]
    pub waiting: u64,
    /// Worst over its processes; `None` when no process runs it.
    pub breaker: Option<BreakerState>,
    /// The dependency failure behind a breaker that is not closed.
    pub last_error: Option<String>,
    /// Since each live process started, summed.
    pub totals: Counters,
    /// Throughput and error ratio over the last 10 s, 1, 5 and 15 minutes.
    pub rates: Vec<Rate>,
    /// Handler duration percentiles over the last 5 minutes (`None`: nothing handled).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Its processes' controls taken together (from their heartbeats; each one's in
    /// `processes[].controls`): paused when any is told to pause; their activity when
    /// they agree, else `pausing` (a change has not reached or drained them all); the
    /// highest concurrency in force. `None` when no live process reports controls.
    pub controls: Option<PoolControls>,
    /// What operators set for it in the control bucket ([`crate::control`]), and who
    /// and when; `None`: never set (the topology's settings). Shown also when no
    /// process runs the pool: a pool left paused starts paused.
    pub settings: Option<PoolSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessModel {
    pub process: String,
    pub host: String,
    pub pid: u32,
    /// Since its last heartbeat.
    pub beat_age_secs: f64,
    pub uptime_secs: f64,
    pub in_flight: u64,
    #[serde(default)]
    pub waiting: u64,
    pub breaker: BreakerState,
    pub controls: Option<PoolControls>,
}

/// A store the pipelines write besides Postgres (the search index; see
/// [`crate::runtime::SinkStats`]), summed over the live processes that write it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkModel {
    pub name: String,
    /// What implements it (`tantivy`, `opensearch`; several when processes disagree).
    pub backend: String,
    pub live_processes: usize,
    /// Since each live process started, summed.
    pub totals: SinkCounters,
    /// Items written per second and failed writes over the last 10 s, 1, 5 and 15 min.
    pub rates: Vec<SinkRate>,
    /// Write-call duration percentiles over the last 5 minutes (`None`: no writes).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The newest failed write of any live process.
    pub last_error: Option<SinkError>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SinkRate {
    pub window_secs: u64,
    /// Items (documents, rows) written per second.
    pub items_per_sec: f64,
    /// Write calls in the window (a batch is one), and per second.
    pub writes: u64,
    pub writes_per_sec: f64,
    /// Failed write calls in the window.
    pub errors: u64,
    /// Failed / all write calls; `None` when there were none.
    pub error_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub window_secs: u64,
    /// Deliveries that reached an outcome, per second.
    pub per_sec: f64,
    /// Errors (retries, dead letters) / deliveries; `None` when nothing was handled.
    pub error_ratio: Option<f64>,
}

fn nats(what: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Nats(format!("{what}: {e}"))
}

/// Read the model. JetStream's streams and consumers must be readable (else an error);
/// heartbeats, dead letters, the outbox and the history are reported in `problems`
/// when they are not. `with_history`: also read the history and the trends from it.
pub async fn read(
    js: &jetstream::Context,
    topology: &Topology,
    outbox: Option<&dyn OutboxStats>,
    with_history: bool,
) -> Result<Model> {
    let at_ms = i64::try_from(heartbeat::time_now_nanos() / 1_000_000).unwrap_or(0);
    let mut problems = Vec::new();
    let mut streams = Vec::new();
    let mut handles = BTreeMap::new();
    for s in &topology.streams {
        let mut stream = js.get_stream(&s.name).await.map_err(|e| nats(&s.name, &e))?;
        let info = stream.info().await.map_err(|e| nats(&s.name, &e))?;
        streams.push(StreamModel {
            name: s.name.clone(),
            messages: info.state.messages,
            bytes: info.state.bytes,
            first_seq: info.state.first_sequence,
            last_seq: info.state.last_sequence,
            oldest_unhandled_secs: 0.0,
            fullness: crate::purge::fullness(info),
            discards_new: info.config.discard == jetstream::stream::DiscardPolicy::New,
        });
        handles.insert(s.name.clone(), stream);
    }
    let dlq = match dead_letter_counts(js).await {
        Ok(d) => d,
        Err(e) => {
            problems.push(format!("dead letters: {e}"));
            BTreeMap::new()
        }
    };
    let mut consumers = Vec::new();
    for c in &topology.consumers {
        let stream = match handles.get(&c.stream) {
            Some(s) => s.clone(),
            None => js.get_stream(&c.stream).await.map_err(|e| nats(&c.stream, &e))?,
        };
        let info = stream.consumer_info(&c.name).await.map_err(|e| nats(&c.name, &e))?;
        let lag = oldest_unhandled(&stream, &info).await?;
        let last_active = [info.delivered.last_active, info.ack_floor.last_active]
            .into_iter()
            .flatten()
            .map(|t| t.unix_timestamp_nanos())
            .max()
            .map(|t| secs_since(heartbeat::time_now_nanos(), t));
        if let Some(s) = streams.iter_mut().find(|s| s.name == c.stream) {
            s.oldest_unhandled_secs = s.oldest_unhandled_secs.max(lag.oldest.as_secs_f64());
        }
        consumers.push(ConsumerModel {
            stream: c.stream.clone(),
            name: c.name.clone(),
            pending: info.num_pending,
            ack_pending: info.num_ack_pending as u64,
            redelivered: info.num_redelivered as u64,
            waiting: info.num_waiting as u64,
            lag: lag.messages,
            oldest_unhandled_secs: lag.oldest.as_secs_f64(),
            last_active_secs: last_active,
            lag_per_min: None,
            lag_growing_secs: 0.0,
            dead_letters: dlq.get(&c.name).copied().unwrap_or(0),
            breaker: None,
        });
    }
    let beats = match heartbeat::read_live(js).await {
        Ok(b) => b,
        Err(e) => {
            problems.push(format!("heartbeats: {e}"));
            Vec::new()
        }
    };
    let settings = match control::read_all(js).await {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("pool controls: {e}"));
            Vec::new()
        }
    };
    let pools = pools(topology, &beats, &settings);
    let sinks = sinks(&beats);
    for c in &mut consumers {
        c.breaker = pools.iter().filter(|p| p.consumer == c.name).filter_map(|p| p.breaker).max();
    }
    let outbox = match outbox {
        Some(o) => match o.backlog().await {
            Ok(b) => Some(b),
            Err(e) => {
                problems.push(format!("outbox: {e}"));
                None
            }
        },
        None => None,
    };
    let mut model = Model { at_ms, streams, consumers, pools, outbox, sinks, problems, history: Vec::new() };
    if with_history {
        match history::read(js).await {
            Ok(points) => model.history = points,
            Err(e) => model.problems.push(format!("history: {e}")),
        }
        history::trends(&mut model);
    }
    Ok(model)
}

fn secs_since(now_nanos: i128, then_nanos: i128) -> f64 {
    ((now_nanos - then_nanos).max(0) as f64) / 1e9
}

/// Dead letters per consumer: the `DLQ` stream's message count per subject
/// (`souk.dlq.<consumer>`). None when there is no `DLQ` stream.
async fn dead_letter_counts(js: &jetstream::Context) -> Result<BTreeMap<String, u64>> {
    let Ok(stream) = js.get_stream(dead_letters::STREAM).await else { return Ok(BTreeMap::new()) };
    let prefix = format!("{}.", subjects::DEAD_LETTERS);
    let mut counts = BTreeMap::new();
    let mut subjects =
        stream.info_with_subjects(format!("{prefix}>")).await.map_err(|e| nats(dead_letters::STREAM, &e))?;
    while let Some((subject, n)) = subjects.try_next().await.map_err(|e| nats(dead_letters::STREAM, &e))? {
        if let Some(consumer) = subject.strip_prefix(&prefix) {
            *counts.entry(consumer.to_owned()).or_insert(0) += n as u64;
        }
    }
    Ok(counts)
}

/// Every pool of the topology (and others live processes run), from live heartbeats.
fn pools(
    topology: &Topology,
    beats: &[heartbeat::Seen],
    settings: &[(String, PoolSettings)],
) -> Vec<PoolModel> {
    let mut names: Vec<(String, String)> =
        topology.pools.iter().map(|p| (p.name.clone(), p.consumer.clone())).collect();
    for seen in beats {
        for p in &seen.beat.pools {
            if !names.iter().any(|(n, _)| *n == p.name) {
                names.push((p.name.clone(), p.consumer.clone()));
            }
        }
    }
    names
        .into_iter()
        .map(|(name, consumer)| {
            let mut model = PoolModel {
                name: name.clone(),
                consumer,
                processes: Vec::new(),
                live_processes: 0,
                in_flight: 0,
                waiting: 0,
                breaker: None,
                last_error: None,
                totals: Counters::default(),
                rates: Vec::new(),
                p50_ms: None,
                p99_ms: None,
                controls: None,
                settings: settings.iter().find(|(pool, _)| *pool == name).map(|(_, s)| s.clone()),
            };
            // Per window: (handled per second summed over processes, handled, errors).
            let mut windows: Vec<(f64, u64, u64)> = vec![(0.0, 0, 0); WINDOWS.len()];
            let mut five_minutes = Counters::default();
            for seen in beats {
                for p in seen.beat.pools.iter().filter(|p| p.name == name) {
                    model.processes.push(ProcessModel {
                        process: seen.beat.process.clone(),
                        host: seen.beat.host.clone(),
                        pid: seen.beat.pid,
                        beat_age_secs: seen.age.as_secs_f64(),
                        uptime_secs: seen.beat.uptime_secs,
                        in_flight: p.in_flight,
                        waiting: p.waiting,
                        breaker: p.breaker,
                        controls: p.controls,
                    });
                    model.in_flight += p.in_flight;
                    model.waiting += p.waiting;
                    model.totals.add(&p.totals);
                    if model.breaker.is_none_or(|b| p.breaker > b) {
                        model.breaker = Some(p.breaker);
                        model.last_error = p.last_error.clone();
                    }
                    for w in &p.windows {
                        let Some(i) = WINDOWS.iter().position(|s| *s == w.secs) else { continue };
                        windows[i].0 += w.counts.handled as f64 / w.covered_secs.max(1.0);
                        windows[i].1 += w.counts.handled;
                        windows[i].2 += w.counts.errors;
                        if w.secs == 300 {
                            five_minutes.add(&w.counts);
                        }
                    }
                }
            }
            model.live_processes = model.processes.len();
            model.controls = together(model.processes.iter().filter_map(|p| p.controls));
            model.rates = WINDOWS
                .iter()
                .zip(windows)
                .map(|(&window_secs, (per_sec, handled, errors))| Rate {
                    window_secs,
                    per_sec,
                    error_ratio: (handled > 0).then(|| errors as f64 / handled as f64),
                })
                .collect();
            model.p50_ms = quantile(&five_minutes.buckets, 0.5).map(|s| s * 1e3);
            model.p99_ms = quantile(&five_minutes.buckets, 0.99).map(|s| s * 1e3);
            model
        })
        .collect()
}

/// Every sink live processes write, summed over them.
fn sinks(beats: &[heartbeat::Seen]) -> Vec<SinkModel> {
    let mut by_name: BTreeMap<&str, SinkModel> = BTreeMap::new();
    // Per sink and window: (items/s, writes/s, writes, errors), summed over processes.
    let mut windows: BTreeMap<&str, Vec<(f64, f64, u64, u64)>> = BTreeMap::new();
    let mut five_minutes: BTreeMap<&str, SinkCounters> = BTreeMap::new();
    for s in beats.iter().flat_map(|seen| &seen.beat.sinks) {
        let model = by_name.entry(&s.name).or_insert_with(|| SinkModel {
            name: s.name.clone(),
            backend: s.backend.clone(),
            live_processes: 0,
            totals: SinkCounters::default(),
            rates: Vec::new(),
            p50_ms: None,
            p99_ms: None,
            last_error: None,
        });
        if !model.backend.split(", ").any(|b| b == s.backend) {
            model.backend = format!("{}, {}", model.backend, s.backend);
        }
        model.live_processes += 1;
        model.totals.add(&s.totals);
        if let Some(e) = &s.last_error
            && model.last_error.as_ref().is_none_or(|m| e.at_ms > m.at_ms)
        {
            model.last_error = Some(e.clone());
        }
        let sums = windows.entry(&s.name).or_insert_with(|| vec![(0.0, 0.0, 0, 0); WINDOWS.len()]);
        for w in &s.windows {
            let Some(i) = WINDOWS.iter().position(|secs| *secs == w.secs) else { continue };
            let covered = w.covered_secs.max(1.0);
            sums[i].0 += w.counts.items as f64 / covered;
            sums[i].1 += w.counts.writes as f64 / covered;
            sums[i].2 += w.counts.writes;
            sums[i].3 += w.counts.errors;
            if w.secs == 300 {
                five_minutes.entry(&s.name).or_default().add(&w.counts);
            }
        }
    }
    by_name
        .into_iter()
        .map(|(name, mut model)| {
            let sums = windows.remove(name).unwrap_or_default();
            model.rates = WINDOWS
                .iter()
                .zip(sums)
                .map(|(&window_secs, (items_per_sec, writes_per_sec, writes, errors))| SinkRate {
                    window_secs,
                    items_per_sec,
                    writes,
                    writes_per_sec,
                    errors,
                    error_ratio: (writes > 0).then(|| errors as f64 / writes as f64),
                })
                .collect();
            let buckets = five_minutes.remove(name).unwrap_or_default().buckets;
            model.p50_ms = quantile(&buckets, 0.5).map(|s| s * 1e3);
            model.p99_ms = quantile(&buckets, 0.99).map(|s| s * 1e3);
            model
        })
        .collect()
}

/// One pool's controls over its processes (see [`PoolModel::controls`]).
fn together(each: impl Iterator<Item = PoolControls>) -> Option<PoolControls> {
    each.reduce(|a, b| PoolControls {
        paused: a.paused || b.paused,
        activity: match (a.activity, b.activity) {
            (x, y) if x == y => x,
            _ => Activity::Pausing,
        },
        concurrency: a.concurrency.max(b.concurrency),
    })
}

/// The `q` quantile (seconds) of durations counted per [`HANDLE_BUCKETS`] bucket,
/// interpolated linearly inside its bucket (as Prometheus's `histogram_quantile`);
/// the +Inf bucket reads as the last finite bound.
pub fn quantile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let Some(&upper) = HANDLE_BUCKETS.get(i) else { return HANDLE_BUCKETS.last().copied() };
            let lower = if i == 0 { 0.0 } else { HANDLE_BUCKETS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += n;
    }
    HANDLE_BUCKETS.last().copied()
}

/// The age of `d` in whole seconds, for display.
pub fn short_duration(secs: f64) -> String {
    let d = Duration::from_secs_f64(secs.max(0.0));
    match d.as_secs() {
        0 if d.is_zero() => "0".into(),
        0 => format!("{}ms", d.as_millis()),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_their_bucket() {
        let mut b = vec![0u64; HANDLE_BUCKETS.len() + 1];
        assert_eq!(quantile(&b, 0.5), None, "nothing handled");
        b[4] = 100; // (5 ms, 10 ms]
        let p50 = quantile(&b, 0.5).expect("some");
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        b[HANDLE_BUCKETS.len()] = 100; // +Inf
        assert_eq!(quantile(&b, 0.99), Some(10.0));
    }
}
