//! Follow one order: everything souk did with it, across pipelines, in time order.
//!
//! The stores say what they recorded ([`Journal`], one [`Source`] per pipeline); the
//! engine joins it with the topology and JetStream:
//!
//! - every message the records name (outbox rows, the ingress's `PlaceOrder`) is joined
//!   to the consumers that take its subject (the topology's filters) and looked up in
//!   their inboxes by `(consumer, message id)` — the inbox's primary key — which gives
//!   the stream sequence and the delivery that handled it;
//! - the runtime records each failed attempt (a [`FailureLog`], by the same pairs): one
//!   entry per failed delivery, with its error and what the runtime did then;
//! - the runtime records where it stored each dead letter (the same [`FailureLog`], by
//!   the original's message id), and the stored dead letter is read back by that sequence
//!   (error, attempts, the original's sequence);
//! - messages with a sequence are checked against their stream (read by sequence: a
//!   handled command is purged from CMD, an event stays in EVT).
//!
//! Nothing is found by scanning a stream.
//!
//! [`FailureLog`]: souk_pipelines::follow::FailureLog

use async_nats::jetstream::{self, stream::RawMessageErrorKind};
use chrono::{DateTime, Utc};
use souk_pipelines::{
    follow::{
        AfterFailure, DeadLetterRecord, Entry, FailedAttempt, Handling, Journal, Kind, Source, SourceError,
        Trace,
    },
    headers,
};
use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
};

use crate::spec::{Topology, subject_covers};

/// Why no trace could be made.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error("no order or trace {0:?} is known")]
    NotFound(String),
    #[error("reading the order's records: {0}")]
    Store(SourceError),
}

/// The trace of the order `id` names (an order id, or the trace id of the request that
/// placed it). Parts that cannot be read are named in `problems`.
pub async fn follow(
    js: &jetstream::Context,
    topology: &Topology,
    journal: &dyn Journal,
    sources: &[Arc<dyn Source>],
    id: &str,
) -> Result<Trace, FollowError> {
    let order = journal
        .resolve(id.trim())
        .await
        .map_err(FollowError::Store)?
        .ok_or_else(|| FollowError::NotFound(id.to_owned()))?;
    let mut problems = Vec::new();
    let mut entries = Vec::new();
    for source in sources {
        match source.entries(&order).await {
            Ok(found) => entries.extend(found),
            Err(e) => problems.push(format!("{}: {e}", source.pipeline())),
        }
    }
    let aggregates: Vec<String> =
        sources.iter().flat_map(|s| s.aggregates(&order)).collect::<BTreeSet<_>>().into_iter().collect();
    match journal.outbox(&aggregates).await {
        Ok(rows) => entries.extend(rows.iter().flat_map(outbox_entries)),
        Err(e) => problems.push(format!("outbox: {e}")),
    }
    let mut streams = Streams { js, found: HashMap::new() };
    join_handlers(topology, journal, &mut streams, &mut entries, &mut problems).await;
    check_stored(&mut streams, &mut entries, &mut problems).await;
    entries.sort_by_key(|e| (e.at, e.kind, e.stream_seq));
    Ok(Trace { order_id: order.order_id, tenant: order.tenant, trace_id: order.trace_id, entries, problems })
}

/// The pipeline a subject belongs to: `souk.<cmd|evt>.<domain>.…` → `<domain>`.
fn pipeline_of(subject: &str) -> &str {
    subject.split('.').nth(2).unwrap_or(subject)
}

fn kind_of(subject: &str) -> Kind {
    match subject.starts_with("souk.evt.") {
        true => Kind::Event,
        false => Kind::Command,
    }
}

/// An outbox row: written (with the transaction that decided it), then published.
fn outbox_entries(row: &souk_pipelines::follow::OutboxRow) -> Vec<Entry> {
    let id = row.id.to_string();
    let pipeline = pipeline_of(&row.subject);
    let written = Entry::new(row.created_at, pipeline, kind_of(&row.subject), "written to the outbox")
        .message(&row.subject, &id);
    let mut out = vec![written];
    match (row.published_at, row.parked_at) {
        (Some(at), _) => {
            let mut e = Entry::new(at, pipeline, Kind::Published, "published by the relay")
                .message(&row.subject, &id);
            e.stream = row.stream.clone();
            e.stream_seq = row.stream_seq;
            out.push(e.outcome("ok"));
        }
        (None, Some(at)) => out.push(
            Entry::new(at, pipeline, Kind::Published, "parked by the relay (souk outbox parked)")
                .message(&row.subject, &id)
                .outcome(row.last_error.clone().unwrap_or_else(|| "parked".into())),
        ),
        (None, None) => {}
    }
    out
}

/// Join every message the entries name to its handlings and dead letters.
async fn join_handlers(
    topology: &Topology,
    journal: &dyn Journal,
    streams: &mut Streams<'_>,
    entries: &mut Vec<Entry>,
    problems: &mut Vec<String>,
) {
    // (subject, message id) of each message written, once.
    let messages: BTreeSet<(String, String)> = entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Command | Kind::Event))
        .filter_map(|e| Some((e.subject.clone()?, e.message_id.clone()?)))
        .collect();
    let mut pairs = Vec::new();
    for (subject, id) in &messages {
        for consumer in consumers_of(topology, subject) {
            pairs.push((consumer, id.clone()));
        }
    }
    let subject_of: HashMap<&str, &str> = messages.iter().map(|(s, id)| (id.as_str(), s.as_str())).collect();
    let mut found = Vec::new();
    if !pairs.is_empty() {
        match journal.handled(&pairs).await {
            Ok(handled) => found.extend(
                handled.iter().filter_map(|h| Some(handled_entry(h, subject_of.get(h.message_id.as_str())?))),
            ),
            Err(e) => problems.push(format!("inbox: {e}")),
        }
        match journal.attempts(&pairs).await {
            Ok(failed) => {
                found.extend(failed.iter().filter_map(|a| {
                    Some(attempt_entry(a, subject_of.get(a.message_id.as_deref()?).copied()?))
                }))
            }
            Err(e) => problems.push(format!("failed attempts: {e}")),
        }
    }
    let ids: Vec<String> = messages.iter().map(|(_, id)| id.clone()).collect();
    if !ids.is_empty() {
        match journal.dead_letters(&ids).await {
            Ok(letters) => {
                for l in &letters {
                    let subject = subject_of.get(l.message_id.as_str()).copied().unwrap_or_default();
                    found.push(dead_letter(streams, l, subject, problems).await);
                }
            }
            Err(e) => problems.push(format!("dead letters: {e}")),
        }
    }
    // A message the ingress published has no outbox row: its sequence comes from its
    // handling (or its dead letter).
    let relayed: BTreeSet<Option<String>> =
        entries.iter().filter(|e| e.kind == Kind::Published).map(|e| e.message_id.clone()).collect();
    for e in entries.iter_mut().filter(|e| e.kind == Kind::Command && e.stream_seq.is_none()) {
        if relayed.contains(&e.message_id) {
            continue;
        }
        if let Some(h) = found.iter().find(|h| {
            matches!(h.kind, Kind::Handled | Kind::Attempt | Kind::DeadLetter)
                && h.message_id == e.message_id
                && h.stream_seq.is_some()
        }) {
            e.stream = h.stream.clone();
            e.stream_seq = h.stream_seq;
        }
    }
    entries.extend(found);
}

/// The consumers whose filters take `subject`.
fn consumers_of(topology: &Topology, subject: &str) -> Vec<String> {
    topology
        .consumers
        .iter()
        .filter(|c| c.filter_subjects.iter().any(|f| subject_covers(f, subject)))
        .map(|c| c.name.clone())
        .collect()
}

fn handled_entry(h: &Handling, subject: &str) -> Entry {
    let mut e =
        Entry::new(h.at, pipeline_of(subject), Kind::Handled, "handled").message(subject, &h.message_id);
    e.consumer = Some(h.consumer.clone());
    e.stream = h.stream.clone();
    e.stream_seq = h.stream_seq;
    e.delivery = h.delivered;
    e.detail = match h.delivered {
        Some(1) => format!("handled by {} on its first delivery", h.consumer),
        Some(n) => {
            format!("handled by {} on delivery {n} (after {} that did not succeed)", h.consumer, n - 1)
        }
        None => format!("handled by {}", h.consumer),
    };
    e.outcome("ok")
}

/// A failed attempt: which delivery, what failed, and what the runtime did then.
fn attempt_entry(a: &FailedAttempt, subject: &str) -> Entry {
    let id = a.message_id.as_deref().unwrap_or_default();
    let mut e = Entry::new(a.at, pipeline_of(subject), Kind::Attempt, "").message(subject, id);
    e.consumer = Some(a.consumer.clone());
    e.stream = Some(a.stream.clone());
    e.stream_seq = Some(a.stream_seq);
    e.delivery = Some(a.delivery);
    let then = match a.then {
        AfterFailure::Retry => "nak'd for a later redelivery",
        AfterFailure::Held => "held while the pool's breaker was open, then run again",
        AfterFailure::DeadLetter => "dead-lettered",
        AfterFailure::DeadLetterFailed => "its dead letter could not be stored; left for redelivery",
    };
    e.detail = format!(
        "delivery {} to {} failed ({}, {}): {then}",
        a.delivery,
        a.consumer,
        a.class.as_str(),
        a.code
    );
    e.error = Some(a.error.clone());
    e.outcome(a.then.as_str())
}

/// A recorded dead letter, read back from DLQ by its sequence.
async fn dead_letter(
    streams: &mut Streams<'_>,
    l: &DeadLetterRecord,
    subject: &str,
    problems: &mut Vec<String>,
) -> Entry {
    let (consumer, stream, seq) = (&l.consumer, &l.dlq_stream, l.dlq_seq);
    let mut e = Entry::new(l.at, pipeline_of(subject), Kind::DeadLetter, "").message(subject, &l.message_id);
    e.consumer = Some(consumer.clone());
    match streams.get(stream, seq).await {
        Ok(Some(stored))
            if stored.headers.get(headers::DLQ_CONSUMER).map(|v| v.as_str()) == Some(consumer) =>
        {
            let header = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
            e.at = stored_at(&stored).unwrap_or(l.at);
            e.stream_seq = header(headers::DLQ_STREAM_SEQ).and_then(|s| s.parse().ok());
            e.stream = header(headers::DLQ_ORIGIN).and_then(|o| o.split('/').next().map(str::to_owned));
            e.detail = format!(
                "dead-lettered by {consumer} after {} attempt(s): {stream} seq {seq} (souk dlq show {seq})",
                header(headers::DLQ_ATTEMPTS).unwrap_or_else(|| "?".into()),
            );
            e.outcome = header(headers::DLQ_ERROR);
        }
        Ok(_) => {
            e.detail = match l.redriven_at {
                Some(at) => format!(
                    "dead-lettered by {consumer}: {stream} seq {seq}, redriven at {}",
                    at.to_rfc3339()
                ),
                None => format!("dead-lettered by {consumer}: {stream} seq {seq}, no longer stored"),
            }
        }
        Err(err) => problems.push(format!("{stream} seq {seq}: {err}")),
    }
    e
}

/// Say, for each message entry with a sequence, whether its stream still holds it. A
/// published message still stored is timed by the stream (when it was stored): the
/// outbox's `published_at` is written after the PubAck, so a fast consumer can have
/// handled the message before it.
async fn check_stored(streams: &mut Streams<'_>, entries: &mut [Entry], problems: &mut Vec<String>) {
    for e in entries.iter_mut().filter(|e| matches!(e.kind, Kind::Published | Kind::Command)) {
        let (Some(stream), Some(seq)) = (e.stream.clone(), e.stream_seq) else { continue };
        match streams.get(&stream, seq).await {
            Ok(Some(stored))
                if stored.headers.get(headers::MSG_ID).map(|v| v.as_str()) == e.message_id.as_deref() =>
            {
                if e.kind == Kind::Published {
                    e.at = stored_at(&stored).unwrap_or(e.at);
                }
                e.detail.push_str(&format!(" ({stream} seq {seq}, stored)"));
            }
            // Purged once every consumer acknowledged it (CMD), or aged out.
            Ok(_) => e.detail.push_str(&format!(" ({stream} seq {seq}, no longer stored)")),
            Err(err) => problems.push(format!("{stream} seq {seq}: {err}")),
        }
    }
}

fn stored_at(stored: &jetstream::message::StreamMessage) -> Option<DateTime<Utc>> {
    let nanos = stored.time.unix_timestamp_nanos();
    Some(DateTime::from_timestamp_nanos(i64::try_from(nanos).ok()?))
}

/// Streams read by sequence, each looked up once.
struct Streams<'a> {
    js: &'a jetstream::Context,
    found: HashMap<String, jetstream::stream::Stream>,
}

impl Streams<'_> {
    async fn get(
        &mut self,
        name: &str,
        seq: u64,
    ) -> Result<Option<jetstream::message::StreamMessage>, String> {
        if !self.found.contains_key(name) {
            let stream = self.js.get_stream(name).await.map_err(|e| e.to_string())?;
            self.found.insert(name.to_owned(), stream);
        }
        let stream = &self.found[name];
        match stream.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subject_names_its_pipeline_and_kind() {
        assert_eq!(pipeline_of("souk.cmd.inventory.reserve"), "inventory");
        assert_eq!(pipeline_of("souk.evt.payments.result"), "payments");
        assert_eq!(kind_of("souk.evt.orders.accepted"), Kind::Event);
        assert_eq!(kind_of("souk.cmd.orders.place"), Kind::Command);
    }
}
