//! `souk topology apply`: make JetStream match the topology, idempotently, and say what
//! differed.
//!
//! Only the fields the topology declares are compared, so server-side defaults (and
//! fields a newer server adds) never show up as drift.

use async_nats::jetstream::{
    self, consumer,
    context::{ConsumerInfoErrorKind, GetStreamErrorKind},
    stream,
};
use std::{fmt, time::Duration};

use crate::{
    Error, Result,
    spec::{ConsumerSpec, Discard, Retention, Storage, StreamSpec, Topology},
};

/// Whether to change anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Create what is missing and update what drifted.
    Apply,
    /// Only report.
    Check,
}

/// What happened (or, in [`Mode::Check`], would happen) to one stream or consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `stream` or `consumer`.
    pub kind: &'static str,
    pub name: String,
    pub action: Action,
}

/// The action for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Unchanged,
    Created,
    Missing,
    /// The live object differed in these fields (and was updated, in [`Mode::Apply`]).
    Drifted(Vec<Drift>),
}

/// One field that differs between JetStream and the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub field: &'static str,
    pub live: String,
    pub declared: String,
}

/// The result of [`apply`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub changes: Vec<Change>,
}

impl Report {
    /// True when JetStream already matched the topology.
    pub fn in_sync(&self) -> bool {
        self.changes.iter().all(|c| c.action == Action::Unchanged)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.changes {
            match &c.action {
                Action::Unchanged => writeln!(f, "  {} {}: unchanged", c.kind, c.name)?,
                Action::Created => writeln!(f, "+ {} {}: created", c.kind, c.name)?,
                Action::Missing => writeln!(f, "+ {} {}: missing", c.kind, c.name)?,
                Action::Drifted(drift) => {
                    writeln!(f, "~ {} {}: drifted", c.kind, c.name)?;
                    for d in drift {
                        writeln!(f, "    {}: live {} → declared {}", d.field, d.live, d.declared)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Make JetStream match `topology` (or, with [`Mode::Check`], only compare).
pub async fn apply(js: &jetstream::Context, topology: &Topology, mode: Mode) -> Result<Report> {
    let mut report = Report::default();
    for spec in &topology.streams {
        report.changes.push(apply_stream(js, spec, mode).await?);
    }
    for spec in &topology.consumers {
        let handled_once =
            topology.streams.iter().find(|s| s.name == spec.stream).is_some_and(StreamSpec::handled_once);
        report.changes.push(apply_consumer(js, spec, handled_once, mode).await?);
    }
    Ok(report)
}

async fn apply_stream(js: &jetstream::Context, spec: &StreamSpec, mode: Mode) -> Result<Change> {
    let declared = stream_config(spec);
    let change = |action| Change { kind: "stream", name: spec.name.clone(), action };
    let live = match js.get_stream(&spec.name).await {
        Ok(s) => s.cached_info().config.clone(),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(ref j) if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
        {
            if mode == Mode::Check {
                return Ok(change(Action::Missing));
            }
            js.create_stream(declared).await.map_err(|e| api_error("create stream", &spec.name, e))?;
            return Ok(change(Action::Created));
        }
        Err(e) => return Err(api_error("read stream", &spec.name, e)),
    };
    let drift = stream_drift(&live, &declared);
    if drift.is_empty() {
        return Ok(change(Action::Unchanged));
    }
    if mode == Mode::Apply {
        js.update_stream(declared).await.map_err(|e| refused_update(&spec.name, &drift, e))?;
    }
    Ok(change(Action::Drifted(drift)))
}

async fn apply_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
    handled_once: bool,
    mode: Mode,
) -> Result<Change> {
    let declared = consumer_config(spec);
    let change = |action| Change { kind: "consumer", name: spec.name.clone(), action };
    let stream = match js.get_stream(&spec.stream).await {
        Ok(s) => s,
        Err(_) if mode == Mode::Check => return Ok(change(Action::Missing)),
        Err(e) => return Err(api_error("read stream", &spec.stream, e)),
    };
    let live = match stream.consumer_info(&spec.name).await {
        Ok(info) => info.config,
        Err(e) if is_not_found(e.kind()) => {
            if mode == Mode::Check {
                return Ok(change(Action::Missing));
            }
            stream
                .create_consumer(declared)
                .await
                .map_err(|e| api_error("create consumer", &spec.name, e))?;
            return Ok(change(Action::Created));
        }
        Err(e) => return Err(api_error("read consumer", &spec.name, e)),
    };
    let drift = consumer_drift(&live, &declared);
    if drift.is_empty() {
        return Ok(change(Action::Unchanged));
    }
    if mode == Mode::Apply {
        if let Some(reason) = unsafe_consumer_change(&live, &declared, handled_once) {
            return Err(Error::Nats(format!("consumer {}: {reason}", spec.name)));
        }
        stream.update_consumer(declared).await.map_err(|e| api_error("update consumer", &spec.name, e))?;
    }
    Ok(change(Action::Drifted(drift)))
}

/// Why updating `live` to `declared` in place would lose commands or cannot be done, if
/// it would.
fn unsafe_consumer_change(
    live: &consumer::Config,
    declared: &consumer::pull::Config,
    handled_once: bool,
) -> Option<String> {
    if live.ack_policy != declared.ack_policy || live.deliver_policy != declared.deliver_policy {
        return Some(format!(
            "it was made with ack policy {:?} and deliver policy {:?}, which JetStream cannot \
             change in place; remove it (commands it has not handled stay in the stream) and \
             apply again",
            live.ack_policy, live.deliver_policy
        ));
    }
    if !handled_once {
        return None;
    }
    let live_filters = filters_of(live);
    if live_filters.is_empty() {
        return None;
    }
    let widened: Vec<&str> = if declared.filter_subjects.is_empty() {
        vec![">"]
    } else {
        declared
            .filter_subjects
            .iter()
            .filter(|f| !live_filters.iter().any(|l| crate::spec::subject_covers(l, f)))
            .map(String::as_str)
            .collect()
    };
    (!widened.is_empty()).then(|| {
        format!(
            "it would also take {}; a consumer keeps its place in the stream when its filter \
             widens, so commands on those subjects stored before the change would never be \
             delivered (and would be purged). Declare a new consumer for them instead",
            widened.join(", ")
        )
    })
}

/// A consumer's filter subjects (none: the whole stream).
pub(crate) fn filters_of(c: &consumer::Config) -> Vec<String> {
    let mut filters = c.filter_subjects.clone();
    if !c.filter_subject.is_empty() {
        filters.push(c.filter_subject.clone());
    }
    filters
}

fn is_not_found(kind: ConsumerInfoErrorKind) -> bool {
    match kind {
        ConsumerInfoErrorKind::NotFound => true,
        ConsumerInfoErrorKind::JetStream(e) => e.error_code() == jetstream::ErrorCode::CONSUMER_NOT_FOUND,
        _ => false,
    }
}

fn api_error(what: &str, name: &str, e: impl fmt::Display) -> Error {
    Error::Nats(format!("{what} {name}: {e}"))
}

/// JetStream refused to update a drifted stream. Some fields (retention to or from work
/// queue, storage) cannot change in place, so say which fields differ and the way out,
/// which only an operator may take: removing a stream drops what it holds.
fn refused_update(name: &str, drift: &[Drift], e: impl fmt::Display) -> Error {
    let fields: Vec<String> =
        drift.iter().map(|d| format!("{} (live {}, declared {})", d.field, d.live, d.declared)).collect();
    Error::Nats(format!(
        "update stream {name}: {e}. It differs in {}. A change JetStream cannot make in place \
         needs the stream created anew: let its consumers drain it, remove it \
         (with the nats CLI: `nats stream rm {name}`; for `souk dev`, a fresh --data-dir does it), then apply again \
         at once — the outbox relay parks rows it cannot publish to a missing stream after a minute \
         (`souk outbox parked` lists them, `souk outbox requeue --all` sends them once the stream is back)",
        fields.join(", ")
    ))
}

/// The JetStream stream config a spec declares.
pub fn stream_config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.clone(),
        retention: match spec.retention {
            Retention::Limits => stream::RetentionPolicy::Limits,
            Retention::WorkQueue => stream::RetentionPolicy::WorkQueue,
            Retention::Interest => stream::RetentionPolicy::Interest,
        },
        storage: match spec.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        duplicate_window: spec.duplicate_window,
        num_replicas: spec.replicas,
        allow_atomic_publish: spec.allow_atomic,
        discard: match spec.discard {
            Discard::Old => stream::DiscardPolicy::Old,
            Discard::New => stream::DiscardPolicy::New,
        },
        ..Default::default()
    }
}

/// The JetStream consumer config a spec declares.
///
/// Two declared fields are deliberately NOT handed to JetStream, because the runtime
/// owns them:
/// - `max_deliver` is unlimited server-side. The runtime dead-letters a message when its
///   last allowed attempt fails, and also when a delivery arrives past the limit (the
///   previous attempt crashed the worker). A server-side limit would instead stop
///   redelivering silently, leaving the message neither handled nor dead-lettered.
/// - `backoff` becomes nak delays. JetStream's own backoff list replaces the ack wait
///   of each delivery (the first delivery would get `backoff[0]` as its ack wait), which
///   would redeliver slow-but-healthy handlers long before `ack-wait`.
pub fn consumer_config(spec: &ConsumerSpec) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(spec.name.clone()),
        filter_subjects: spec.filter_subjects.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: -1,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    }
}

fn stream_drift(live: &stream::Config, declared: &stream::Config) -> Vec<Drift> {
    let mut drift = Vec::new();
    let mut check = |field, live: String, declared: String| {
        if live != declared {
            drift.push(Drift { field, live, declared });
        }
    };
    check("subjects", format!("{:?}", live.subjects), format!("{:?}", declared.subjects));
    check("retention", format!("{:?}", live.retention), format!("{:?}", declared.retention));
    check("storage", format!("{:?}", live.storage), format!("{:?}", declared.storage));
    check("max-age", dur(live.max_age), dur(declared.max_age));
    check("max-bytes", live.max_bytes.to_string(), declared.max_bytes.to_string());
    check("duplicate-window", dur(live.duplicate_window), dur(declared.duplicate_window));
    check("replicas", live.num_replicas.to_string(), declared.num_replicas.to_string());
    check("allow-atomic", live.allow_atomic_publish.to_string(), declared.allow_atomic_publish.to_string());
    check("discard", format!("{:?}", live.discard), format!("{:?}", declared.discard));
    drift
}

fn consumer_drift(live: &consumer::Config, declared: &consumer::pull::Config) -> Vec<Drift> {
    let mut drift = Vec::new();
    let mut check = |field, live: String, declared: String| {
        if live != declared {
            drift.push(Drift { field, live, declared });
        }
    };
    check("filter-subjects", format!("{:?}", filters_of(live)), format!("{:?}", declared.filter_subjects));
    check("ack-policy", format!("{:?}", live.ack_policy), format!("{:?}", declared.ack_policy));
    check("deliver-policy", format!("{:?}", live.deliver_policy), format!("{:?}", declared.deliver_policy));
    check("ack-wait", dur(live.ack_wait), dur(declared.ack_wait));
    // Server-side values (see consumer_config): unlimited deliveries, no backoff list.
    check("max-deliver (server)", live.max_deliver.to_string(), declared.max_deliver.to_string());
    check("backoff (server)", format!("{:?}", live.backoff), format!("{:?}", declared.backoff));
    check("max-ack-pending", live.max_ack_pending.to_string(), declared.max_ack_pending.to_string());
    drift
}

fn dur(d: Duration) -> String {
    format!("{d:?}")
}
