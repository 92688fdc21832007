//! Bulk removal of acknowledged commands (`purge-acked` streams).
//!
//! A work-queue stream removes each message when it is acknowledged. With
//! `sync_interval: always`, nats-server writes a delete tombstone for every removal and
//! fsyncs it, under the stream's lock: one fsync per handled command, as many as the
//! publishes that atomic batches were meant to save (see ARCHITECTURE.md, "Commands are
//! purged in bulk"). A `purge-acked` stream is instead a limits stream whose consumers
//! only move their ack floors, and a purger removes, every second or so, everything
//! below the lowest ack floor with one purge request: the work queue's bounded storage
//! at one fsync per round instead of one per message.
//!
//! The floor is computed so that it never passes a message some consumer still needs:
//! - for a consumer with deliveries unacknowledged, its ack floor (every message of its
//!   filter up to there is acknowledged or terminated);
//! - for a consumer with none, everything it was delivered is settled, so its floor is
//!   just below the first message of its filter after its delivered position, asked of
//!   the stream's store, or the stream's last sequence read *before* asking when there
//!   is none. (Not its `num_pending`: nats-server stores a message before it tells the
//!   consumers, so a consumer can show nothing pending while a message for it is
//!   already stored. The store itself has no such lag.)
//! - the lowest of those over every consumer the server has on the stream, including
//!   ones the topology does not declare (a purge must not take messages from under them).
//!
//! A stream is not purged at all while one of its subjects is taken by no consumer that
//! acknowledges what it handles (none at all, one deleted by hand, or only a viewer
//! without acks): every floor would pass the commands there, which nobody has handled.
//! The topology loader rejects such a purge-acked stream up front; this covers the live
//! state. Several processes may run purgers on one stream: each purge is to a floor
//! that was safe when computed, and a lower one later is a no-op.
//!
//! Only the store's own "no message found" answer means a consumer has nothing more to
//! do: any other failure of that lookup (a timeout, a lost connection, JetStream
//! temporarily unavailable) fails the round, which is retried on the next tick. Taken
//! as "nothing there", it would put the floor at the stream's end and purge commands
//! never delivered. The lookup goes through [`NextMessage`] so tests can make it fail.

use async_nats::jetstream::{
    self, consumer,
    stream::{RawMessageError, RawMessageErrorKind},
};
use futures::{FutureExt, TryStreamExt, future::BoxFuture};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    apply::filters_of,
    spec::{first_uncovered, subject_covers, subjects_overlap},
};

/// How often a purger runs when `run` is not told otherwise.
pub const DEFAULT_EVERY: Duration = Duration::from_secs(1);

/// The sequence below which every message of `stream` has been handled by every
/// consumer of the stream, or `None` when one of them has handled nothing yet.
/// [`Error::Refused`] when a subject of the stream is taken by no consumer.
pub async fn safe_floor(js: &jetstream::Context, stream: &str) -> Result<Option<u64>> {
    floor_of(&open(js, stream).await?, &Store).await
}

/// How the purger finds the first message of a subject at or after a sequence.
/// Production asks the stream's store ([`Store`]); the seam exists so that tests can
/// make the lookup fail the way a server or a network does.
pub trait NextMessage: Send + Sync {
    /// The sequence of the first message of `stream` on `subject` at or after `from`,
    /// or the server's answer: `NoMessageFound` when there is none.
    fn first_at_or_after<'a>(
        &'a self,
        stream: &'a jetstream::stream::Stream,
        subject: &'a str,
        from: u64,
    ) -> BoxFuture<'a, std::result::Result<u64, RawMessageError>>;
}

/// The stream's store, asked directly (not a consumer's view, which lags it).
#[derive(Debug, Clone, Copy, Default)]
pub struct Store;

impl NextMessage for Store {
    fn first_at_or_after<'a>(
        &'a self,
        stream: &'a jetstream::stream::Stream,
        subject: &'a str,
        from: u64,
    ) -> BoxFuture<'a, std::result::Result<u64, RawMessageError>> {
        next_in_store(stream, subject, from).boxed()
    }
}

async fn next_in_store(
    stream: &jetstream::stream::Stream,
    subject: &str,
    from: u64,
) -> std::result::Result<u64, RawMessageError> {
    stream.get_first_raw_message_by_subject(subject, from).await.map(|m| m.sequence)
}

/// `stream`, with its info as of now.
async fn open(js: &jetstream::Context, stream: &str) -> Result<jetstream::stream::Stream> {
    js.get_stream(stream).await.map_err(|e| Error::Nats(format!("stream {stream}: {e}")))
}

/// [`safe_floor`] of a stream just opened.
async fn floor_of(handle: &jetstream::stream::Stream, lookup: &dyn NextMessage) -> Result<Option<u64>> {
    Ok(floors_of(handle, lookup).await?.as_ref().and_then(lowest))
}

/// Every consumer's floor of a stream just opened (its cached info holds the last
/// sequence read before the consumers and the store are asked); `None` when it has no
/// consumer.
async fn floors_of(handle: &jetstream::stream::Stream, lookup: &dyn NextMessage) -> Result<Option<Floors>> {
    let info = handle.cached_info();
    let last = info.state.last_sequence;
    let consumers: Vec<consumer::Info> = handle
        .consumers()
        .try_collect()
        .await
        .map_err(|e| Error::Nats(format!("consumers of {}: {e}", info.config.name)))?;
    // A consumer's floor says nothing of subjects outside its filter: a command that no
    // consumer takes would be passed by every floor and purged unhandled. Only a consumer
    // that acknowledges takes anything; one without acks (a viewer, an ordered consumer)
    // has "handled" whatever it was shown.
    let filters: Vec<Vec<String>> = consumers
        .iter()
        .filter(|c| c.config.ack_policy != consumer::AckPolicy::None)
        .map(|c| filters_of(&c.config))
        .collect();
    if let Some(subject) = first_uncovered(&info.config.subjects, &filters) {
        return Err(Error::Refused(format!(
            "not purging stream {}: no consumer takes {subject}, so its commands would be removed unhandled",
            info.config.name
        )));
    }
    if consumers.is_empty() {
        return Ok(None);
    }
    Ok(Some(consumer_floors(handle, lookup, &consumers, last).await?))
}

/// Every consumer's filters with its floor (0: it has handled nothing yet).
type Floors = Vec<(Vec<String>, u64)>;

async fn consumer_floors(
    handle: &jetstream::stream::Stream,
    lookup: &dyn NextMessage,
    consumers: &[consumer::Info],
    last: u64,
) -> Result<Floors> {
    let mut floors = Vec::with_capacity(consumers.len());
    for c in consumers {
        let f = consumer_floor(handle, lookup, c, last).await?.unwrap_or(0);
        floors.push((filters_of(&c.config), f));
    }
    Ok(floors)
}

/// The stream's floor: the lowest of the consumers' (`None` while one has handled nothing).
fn lowest(floors: &Floors) -> Option<u64> {
    floors.iter().map(|(_, f)| *f).min().filter(|f| *f > 0)
}

/// How full a stream may get (of its `max-bytes` or `max-messages`) before the purger
/// also purges subject by subject (see [`purge_acked_with`]).
pub const CROWDED: f64 = 0.25;

/// How full `info`'s stream is of the nearer of its `max-bytes` and `max-messages`
/// (0 without either): what the purger and the status model's gauge read.
pub(crate) fn fullness(info: &jetstream::stream::Info) -> f64 {
    let share = |used: u64, limit: i64| if limit > 0 { used as f64 / limit as f64 } else { 0.0 };
    share(info.state.bytes, info.config.max_bytes).max(share(info.state.messages, info.config.max_messages))
}

/// Per subject, the floor below which it may be purged when the stream's floor is held
/// lower by another subject's consumer: for each consumer, one subject covering all its
/// filters ([`cover`]), bounded by the lowest floor of every consumer whose filter
/// overlaps it (an unfiltered one overlaps all). Only subjects whose floor is above the
/// stream's and that are safe to purge ([`purgeable`]), each once.
fn subject_floors(floors: &Floors, stream_floor: u64) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for (filters, _) in floors {
        let Some(subject) = cover(filters) else { continue };
        if out.iter().any(|(s, _)| *s == subject) || !purgeable(&subject, floors) {
            continue;
        }
        let bound = floors
            .iter()
            .filter(|(other, _)| other.is_empty() || other.iter().any(|o| subjects_overlap(o, &subject)))
            .map(|(_, f)| *f)
            .min()
            .unwrap_or(0);
        if bound > stream_floor {
            out.push((subject, bound));
        }
    }
    out
}

/// One subject that matches everything `filters` match: the filter itself when there is
/// one; else the filters' tokens, those that differ made `*` (filters of one length);
/// else their common leading tokens and `>`. `None` for no filter, or when only the
/// whole stream would cover them.
fn cover(filters: &[String]) -> Option<String> {
    let tokens: Vec<Vec<&str>> = filters.iter().map(|f| f.split('.').collect()).collect();
    let first = tokens.first()?;
    let same_shape = tokens.iter().all(|t| t.len() == first.len() && !t.contains(&">"));
    let candidate = if same_shape {
        let joined: Vec<&str> = (0..first.len())
            .map(|i| if tokens.iter().all(|t| t[i] == first[i]) { first[i] } else { "*" })
            .collect();
        joined.join(".")
    } else {
        let shortest = tokens.iter().map(Vec::len).min().unwrap_or(0);
        let prefix: Vec<&str> = (0..shortest.saturating_sub(1))
            .map_while(|i| {
                let t = first[i];
                (t != ">" && t != "*" && tokens.iter().all(|o| o[i] == t)).then_some(t)
            })
            .collect();
        if prefix.is_empty() {
            return None;
        }
        format!("{}.>", prefix.join("."))
    };
    filters.iter().all(|f| subject_covers(&candidate, f)).then_some(candidate)
}

/// Whether a purge of `subject` leaves every consumer's deliveries alone. nats-server's
/// source (`purgeLocked` → `consumer.purge`) moves each consumer with a filter equal
/// to or inside the purged subject on to the first message of that subject left (its
/// next delivery, its ack floor, its pending redeliveries), whatever its other filters
/// take: a purge of `…inventory.reserve` could make the `inventory` consumer skip a
/// `…inventory.release` stored before the first `reserve` left (review of the first
/// version; 2.15.1 kept the consumer's place in our test, but nothing promises it).
/// So every consumer with a filter inside `subject` must have all of them inside it,
/// and a filter that overlaps `subject` only in part (neither inside nor around it)
/// rules it out.
fn purgeable(subject: &str, floors: &Floors) -> bool {
    floors.iter().all(|(filters, _)| {
        let inside = filters.iter().filter(|f| subject_covers(subject, f)).count();
        let partial = filters.iter().any(|f| {
            subjects_overlap(f, subject) && !subject_covers(subject, f) && !subject_covers(f, subject)
        });
        !partial && (inside == 0 || inside == filters.len())
    })
}

/// The highest stream sequence up to which `c` has handled everything of its filter,
/// given the stream's last sequence read before; `None` if it has handled nothing.
async fn consumer_floor(
    handle: &jetstream::stream::Stream,
    lookup: &dyn NextMessage,
    c: &consumer::Info,
    stream_last: u64,
) -> Result<Option<u64>> {
    let floor = if c.num_ack_pending > 0 {
        c.ack_floor.stream_sequence
    } else {
        // Everything delivered is settled: the floor is just below the next message of
        // its filter the store holds, if any (delivered or not, signalled or not).
        let mut next = None;
        let filters = filters_of(&c.config);
        let whole_stream = [">".to_owned()];
        for subject in if filters.is_empty() { &whole_stream[..] } else { &filters[..] } {
            let from = c.delivered.stream_sequence + 1;
            if let Some(seq) = found(lookup.first_at_or_after(handle, subject, from).await, subject, from)? {
                next = Some(next.map_or(seq, |n: u64| n.min(seq)));
            }
        }
        match next {
            Some(seq) => seq - 1,
            None => stream_last,
        }
    };
    Ok((floor > 0).then_some(floor))
}

/// A lookup's answer: the sequence found, `None` only when the server said there is no
/// such message. Every other failure is an error, never "nothing there" (see the module
/// doc: that would purge up to the stream's end).
fn found(answer: std::result::Result<u64, RawMessageError>, subject: &str, from: u64) -> Result<Option<u64>> {
    match answer {
        Ok(seq) => Ok(Some(seq)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(Error::Nats(format!("next {subject} from {from}: {e}"))),
    }
}

/// One round: remove every message of `stream` at or below its safe floor. Returns how
/// many were removed.
pub async fn purge_acked(js: &jetstream::Context, stream: &str) -> Result<u64> {
    purge_acked_with(js, stream, &Store).await
}

/// [`purge_acked`], finding next messages through `lookup`.
pub async fn purge_acked_with(
    js: &jetstream::Context,
    stream: &str,
    lookup: &dyn NextMessage,
) -> Result<u64> {
    let handle = open(js, stream).await?;
    let floors = match floors_of(&handle, lookup).await? {
        Some(floors) => floors,
        None => return Ok(0),
    };
    let floor = lowest(&floors);
    let mut purged = 0;
    if let Some(floor) = floor {
        // `sequence(n)` removes everything below n.
        purged += handle
            .purge()
            .sequence(floor + 1)
            .await
            .map_err(|e| Error::Nats(format!("purging {stream} below {}: {e}", floor + 1)))?
            .purged;
    }
    // One consumer can hold the floor for hours — a delivery waiting out a provider's
    // outage, a paused pool — while the others go on: nothing above it would be purged,
    // and a `discard = "new"` stream would fill and refuse every new command (review:
    // one capture waiting on a provider down for a day stopped every checkout and, as
    // the relay's rounds failed on the full stream, every saga). Once the stream is
    // crowded, each consumer's subjects are also purged below their own consumers'
    // floor: a filtered purge removes messages one by one (as acks on a work queue do),
    // a cost paid only while the stream fills.
    if fullness(handle.cached_info()) >= CROWDED {
        for (subject, bound) in subject_floors(&floors, floor.unwrap_or(0)) {
            // Only when something of it lies below its floor: a purge that removes
            // nothing still costs the server a pass over the subject's blocks.
            match found(lookup.first_at_or_after(&handle, &subject, 1).await, &subject, 1)? {
                Some(first) if first <= bound => {}
                _ => continue,
            }
            purged += handle
                .purge()
                .filter(subject.as_str())
                .sequence(bound + 1)
                .await
                .map_err(|e| Error::Nats(format!("purging {subject} of {stream} below {}: {e}", bound + 1)))?
                .purged;
        }
    }
    // Incremented by 0 too: the series exists from the first round, not the first purge.
    metrics::counter!("souk_stream_purged_messages_total", "stream" => stream.to_owned()).increment(purged);
    Ok(purged)
}

/// Purge `streams` every `every` until `cancel`. A failed round (NATS unreachable) is
/// logged once per outage and retried on the next tick; nothing is lost by skipping one.
pub async fn run(js: jetstream::Context, streams: Vec<String>, every: Duration, cancel: CancellationToken) {
    if streams.is_empty() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        for stream in &streams {
            match purge_acked(&js, stream).await {
                Ok(_) if failing => {
                    tracing::info!(stream, "purging acknowledged commands again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    tracing::warn!(stream, error = %e, "could not purge acknowledged commands; retrying");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn a_cover_matches_every_filter_and_no_more_than_it_must() {
        let cover_of = |v: &[&str]| cover(&strings(v));
        assert_eq!(cover_of(&["souk.cmd.orders.place"]).as_deref(), Some("souk.cmd.orders.place"));
        assert_eq!(
            cover_of(&[
                "souk.cmd.inventory.reserve",
                "souk.cmd.inventory.release",
                "souk.cmd.inventory.commit"
            ])
            .as_deref(),
            Some("souk.cmd.inventory.*")
        );
        assert_eq!(cover_of(&["a.b.c", "a.d"]).as_deref(), Some("a.>"));
        assert_eq!(cover_of(&["a.b", "x.b"]).as_deref(), Some("*.b"));
        assert_eq!(cover_of(&["a.>", "b.c"]), None, "only the whole stream covers both");
        assert_eq!(cover_of(&[]), None);
    }

    #[test]
    fn a_subject_is_purged_only_when_no_consumer_would_be_moved_past_its_other_filters() {
        let floors = |v: &[&[&str]]| -> Floors { v.iter().map(|f| (strings(f), 10)).collect() };
        let shipped = floors(&[
            &["c.inventory.reserve", "c.inventory.release"],
            &["c.orders.place"],
            &["c.payments.settle"],
        ]);
        assert!(purgeable("c.inventory.*", &shipped));
        assert!(purgeable("c.orders.place", &shipped));
        // One filter of a two-filter consumer: nats-server would move it on past the other's.
        assert!(!purgeable("c.inventory.reserve", &shipped));
        // A wider purge that takes in part of another consumer's filters.
        let mixed = floors(&[&["c.a.x"], &["c.a.y", "c.b.z"]]);
        assert!(!purgeable("c.a.*", &mixed));
        // A filter overlapping only in part.
        let partial = floors(&[&["c.*.x"], &["c.a.y"]]);
        assert!(!purgeable("c.a.*", &partial));
        // A consumer wider than the subject (nats-server leaves it be) or without a filter.
        assert!(purgeable("c.a.x", &floors(&[&["c.a.x"], &["c.>"], &[]])));
    }

    #[test]
    fn subject_floors_bound_each_cover_by_every_consumer_overlapping_it() {
        let floors: Floors = vec![
            (strings(&["c.inventory.reserve", "c.inventory.release"]), 50),
            (strings(&["c.payments.settle"]), 3),
            (strings(&["c.orders.place"]), 70),
            (strings(&["c.>"]), 60),
        ];
        assert_eq!(
            subject_floors(&floors, 3),
            [("c.inventory.*".to_owned(), 50), ("c.orders.place".to_owned(), 60)],
            "the held subject is not purged; the viewer over everything bounds the others"
        );
    }
}
