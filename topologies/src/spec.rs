//! The topology file: streams, consumers and pools, as declared in `topologies/*.toml`.
//!
//! Keys are kebab-case and unknown keys are rejected, so a typo fails at load time
//! instead of silently falling back to a default.

use serde::Deserialize;
use std::{collections::HashSet, path::Path, time::Duration};

use crate::{Error, Result};

/// A whole topology.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Topology {
    #[serde(default, rename = "stream")]
    pub streams: Vec<StreamSpec>,
    #[serde(default, rename = "consumer")]
    pub consumers: Vec<ConsumerSpec>,
    #[serde(default, rename = "pool")]
    pub pools: Vec<PoolSpec>,
}

/// Retention of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retention {
    /// Kept until limits are hit (events: replayable).
    Limits,
    /// Removed once acknowledged, one removal (and, with `sync_interval: always`, one
    /// fsync) per message. souk's commands use `limits` with `purge-acked` instead.
    WorkQueue,
    /// Removed once every consumer has acknowledged.
    Interest,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Discard {
    /// Drop the oldest messages to make room (JetStream's default).
    Old,
    /// Refuse the new message: the publisher gets an error (back-pressure).
    New,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Storage {
    File,
    Memory,
}

/// One JetStream stream.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct StreamSpec {
    pub name: String,
    pub subjects: Vec<String>,
    pub retention: Retention,
    #[serde(default = "file")]
    pub storage: Storage,
    /// Zero keeps messages forever.
    #[serde(default, with = "humantime_serde")]
    pub max_age: Duration,
    /// -1 means unlimited.
    #[serde(default = "unlimited")]
    pub max_bytes: i64,
    #[serde(default = "two_minutes", with = "humantime_serde")]
    pub duplicate_window: Duration,
    #[serde(default = "one")]
    pub replicas: usize,
    /// Allow JetStream atomic batch publishes (nats-server ≥ 2.12).
    #[serde(default)]
    pub allow_atomic: bool,
    #[serde(default = "discard_old")]
    pub discard: Discard,
    /// Work-queue semantics at one fsync per round instead of one per message: the
    /// worker runtime purges, every second, whatever every consumer of the stream has
    /// acknowledged (see `purge`). Needs `retention = "limits"`, and the stream's
    /// consumers must not overlap (as a work queue's must not).
    #[serde(default)]
    pub purge_acked: bool,
}

impl StreamSpec {
    /// Whether each message is handled by one consumer and then removed: a work queue,
    /// or a purge-acked stream (a work queue purged in bulk).
    pub fn handled_once(&self) -> bool {
        self.purge_acked || self.retention == Retention::WorkQueue
    }
}

/// One durable pull consumer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConsumerSpec {
    pub name: String,
    pub stream: String,
    pub filter_subjects: Vec<String>,
    /// How long a delivery may go unacknowledged (no ack, nak or progress) before
    /// JetStream redelivers it: the crash-detection timeout.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Deliveries before the message goes to the dead-letter stream (enforced by the
    /// runtime, see `apply::consumer_config`).
    pub max_deliver: i64,
    /// Delays before the next attempt after a failed one (`Retry` without its own
    /// delay, a panic, a timeout): step n after the n-th failure, the last step
    /// repeating. Sent as nak delays, not as JetStream's backoff list.
    #[serde(default, deserialize_with = "durations")]
    pub backoff: Vec<Duration>,
    pub max_ack_pending: i64,
}

/// A worker pool: one consumer, one handler, bounded concurrency.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PoolSpec {
    pub name: String,
    pub consumer: String,
    /// Name under which the handler is registered with the runtime.
    pub handler: String,
    /// Handlers running at once in one process.
    pub concurrency: usize,
    /// Messages asked for per pull request (capped by free concurrency).
    #[serde(default = "sixty_four")]
    pub fetch_batch: usize,
    /// Most messages handed to the handler's `handle_batch` at once (1: one at a time).
    /// Messages that are ready together are grouped; none waits for others.
    #[serde(default = "one")]
    pub max_batch: usize,
    /// Batches being handled at once (with `max-batch` > 1).
    #[serde(default = "two")]
    pub batches_in_flight: usize,
    /// A handler running longer than this is abandoned and its message retried.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Duration,
    /// On shutdown, how long in-flight handlers may take to finish.
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<Duration>, D::Error> {
    let steps: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(steps.into_iter().map(humantime_serde::Serde::into_inner).collect())
}

fn discard_old() -> Discard {
    Discard::Old
}
fn file() -> Storage {
    Storage::File
}
fn unlimited() -> i64 {
    -1
}
fn two_minutes() -> Duration {
    Duration::from_secs(120)
}
fn one() -> usize {
    1
}
fn two() -> usize {
    2
}
fn sixty_four() -> usize {
    64
}
fn ten_seconds() -> Duration {
    Duration::from_secs(10)
}

impl Topology {
    /// Read and validate a topology file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| spec_error(path, e))?;
        Self::parse(&text).map_err(|e| match e {
            Error::Spec { message, .. } => Error::Spec { path: path.display().to_string(), message },
            other => other,
        })
    }

    /// Parse and validate topology text.
    ///
    /// ```
    /// let t = souk_topologies::Topology::parse(r#"
    ///     [[stream]]
    ///     name = "CMD"
    ///     subjects = ["souk.cmd.>"]
    ///     retention = "work-queue"
    /// "#)?;
    /// assert_eq!(t.streams[0].replicas, 1);
    /// assert!(souk_topologies::Topology::parse("[[stream]]\nname = 1").is_err());
    /// # Ok::<(), souk_topologies::Error>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self> {
        let topology: Topology = toml::from_str(text).map_err(|e| spec_error("<text>", e))?;
        topology.validate().map_err(|m| spec_error("<text>", m))?;
        Ok(topology)
    }

    /// The consumer a pool drains.
    pub fn consumer(&self, name: &str) -> Option<&ConsumerSpec> {
        self.consumers.iter().find(|c| c.name == name)
    }

    /// A pool by name.
    pub fn pool(&self, name: &str) -> Option<&PoolSpec> {
        self.pools.iter().find(|p| p.name == name)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let mut names = HashSet::new();
        for s in &self.streams {
            if !names.insert(("stream", s.name.as_str())) {
                return Err(format!("stream {} declared twice", s.name));
            }
            if s.subjects.is_empty() {
                return Err(format!("stream {} has no subjects", s.name));
            }
            if s.replicas == 0 || s.replicas > 5 {
                return Err(format!("stream {}: replicas must be 1..=5", s.name));
            }
            if s.purge_acked && s.retention != Retention::Limits {
                return Err(format!("stream {}: purge-acked needs retention = \"limits\"", s.name));
            }
            // Consumers of dead letters (marking what they failed) must not remove them.
            if s.name == crate::dead_letters::STREAM && (s.retention != Retention::Limits || s.purge_acked) {
                return Err(format!(
                    "stream {}: dead letters stay until an operator replays or purges them, so its \
                     retention must be \"limits\", without purge-acked",
                    s.name
                ));
            }
        }
        for c in &self.consumers {
            if !names.insert(("consumer", c.name.as_str())) {
                return Err(format!("consumer {} declared twice", c.name));
            }
            if !self.streams.iter().any(|s| s.name == c.stream) {
                return Err(format!("consumer {} reads unknown stream {}", c.name, c.stream));
            }
            if c.max_deliver < 1 {
                return Err(format!("consumer {}: max-deliver must be at least 1", c.name));
            }
            if c.backoff.len() as i64 > c.max_deliver {
                return Err(format!("consumer {}: more backoff steps than max-deliver", c.name));
            }
            if c.ack_wait < Duration::from_secs(1) {
                return Err(format!("consumer {}: ack-wait below 1s", c.name));
            }
        }
        self.check_exclusive_consumers()?;
        self.check_purged_subjects_are_taken()?;
        for p in &self.pools {
            if !names.insert(("pool", p.name.as_str())) {
                return Err(format!("pool {} declared twice", p.name));
            }
            if self.consumer(&p.consumer).is_none() {
                return Err(format!("pool {} drains unknown consumer {}", p.name, p.consumer));
            }
            if p.concurrency == 0 || p.fetch_batch == 0 || p.max_batch == 0 || p.batches_in_flight == 0 {
                return Err(format!(
                    "pool {}: concurrency, fetch-batch, max-batch and batches-in-flight must be positive",
                    p.name
                ));
            }
        }
        Ok(())
    }

    /// On a work-queue or purge-acked stream a message is handled by one consumer, so no
    /// two consumers of the stream may share a subject. (JetStream enforces this for
    /// work queues when creating the consumer; for purge-acked streams only this does.)
    fn check_exclusive_consumers(&self) -> std::result::Result<(), String> {
        for (i, a) in self.consumers.iter().enumerate() {
            let Some(stream) = self.streams.iter().find(|s| s.name == a.stream) else { continue };
            if !stream.handled_once() {
                continue;
            }
            for b in self.consumers[i + 1..].iter().filter(|b| b.stream == a.stream) {
                for (fa, fb) in
                    a.filter_subjects.iter().flat_map(|fa| b.filter_subjects.iter().map(move |fb| (fa, fb)))
                {
                    if subjects_overlap(fa, fb) {
                        return Err(format!(
                            "consumers {} and {} of stream {} both take {fa} / {fb}: a command must have one handler",
                            a.name, b.name, stream.name
                        ));
                    }
                }
            }
            if a.filter_subjects.is_empty()
                && self.consumers.iter().filter(|b| b.stream == a.stream).count() > 1
            {
                return Err(format!(
                    "consumer {} takes all of stream {} but is not its only consumer",
                    a.name, stream.name
                ));
            }
        }
        Ok(())
    }

    /// A purge-acked stream removes what its consumers have handled, so a command that no
    /// consumer takes would never be handled and must never be stored: every subject of
    /// such a stream must be taken by one of its consumers. (The purger also checks the
    /// live consumers, for those deleted by hand.)
    fn check_purged_subjects_are_taken(&self) -> std::result::Result<(), String> {
        for s in self.streams.iter().filter(|s| s.purge_acked) {
            let filters: Vec<Vec<String>> = self
                .consumers
                .iter()
                .filter(|c| c.stream == s.name)
                .map(|c| c.filter_subjects.clone())
                .collect();
            if let Some(subject) = first_uncovered(&s.subjects, &filters) {
                return Err(format!(
                    "stream {} is purge-acked but no consumer takes {subject}: commands there would \
                     never be handled; list only subjects its consumers take",
                    s.name
                ));
            }
        }
        Ok(())
    }
}

/// Whether every subject `pattern` matches is also matched by `filter` (NATS
/// wildcards on both: `*` one token, `>` one or more).
pub fn subject_covers(filter: &str, pattern: &str) -> bool {
    let (mut f, mut p) = (filter.split('.'), pattern.split('.'));
    loop {
        match (f.next(), p.next()) {
            (Some(">"), Some(_)) | (None, None) => return true,
            (Some("*"), Some(t)) if t != ">" => continue,
            (Some(x), Some(y)) if x == y && x != ">" => continue,
            _ => return false,
        }
    }
}

/// The first of `subjects` that no consumer with these filters takes (a consumer with
/// no filter takes everything).
pub fn first_uncovered<'a>(subjects: &'a [String], consumer_filters: &[Vec<String>]) -> Option<&'a str> {
    subjects
        .iter()
        .find(|s| {
            !consumer_filters
                .iter()
                .any(|filters| filters.is_empty() || filters.iter().any(|f| subject_covers(f, s)))
        })
        .map(String::as_str)
}

/// Whether some subject matches both NATS subject filters (`*` one token, `>` the rest).
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn spec_error(path: impl AsRef<Path>, e: impl std::fmt::Display) -> Error {
    Error::Spec { path: path.as_ref().display().to_string(), message: e.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[stream]]
        name = "CMD"
        subjects = ["souk.cmd.>"]
        retention = "work-queue"
        [[consumer]]
        name = "c"
        stream = "CMD"
        filter-subjects = ["souk.cmd.x"]
        ack-wait = "30s"
        max-deliver = 3
        backoff = ["1s", "2s"]
        max-ack-pending = 10
        [[pool]]
        name = "p"
        consumer = "c"
        handler = "h"
        concurrency = 4
        handler-timeout = "5s"
    "#;

    #[test]
    fn parses_with_defaults() {
        let t = Topology::parse(MINIMAL).expect("valid");
        assert_eq!(t.streams[0].storage, Storage::File);
        assert_eq!(t.streams[0].duplicate_window, Duration::from_secs(120));
        assert_eq!(t.consumers[0].backoff, [Duration::from_secs(1), Duration::from_secs(2)]);
        assert_eq!(t.pools[0].fetch_batch, 64);
    }

    #[test]
    fn unknown_keys_and_dangling_references_are_rejected() {
        let typo = MINIMAL.replace("max-deliver", "max-delivery");
        assert!(Topology::parse(&typo).is_err());
        let dangling = MINIMAL.replace("stream = \"CMD\"", "stream = \"NOPE\"");
        assert!(Topology::parse(&dangling).expect_err("dangling").to_string().contains("unknown stream"));
        let backoff = MINIMAL.replace("max-deliver = 3", "max-deliver = 1");
        assert!(Topology::parse(&backoff).is_err());
    }

    #[test]
    fn the_shipped_topology_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("marketplace.toml");
        let t = Topology::load(&path).expect("shipped topology parses");
        assert!(t.pool("orders").is_some());
    }

    #[test]
    fn the_dead_letter_stream_never_removes_what_its_consumers_ack() {
        let dlq = |retention: &str, purge_acked: bool| {
            format!(
                "[[stream]]\nname = \"DLQ\"\nsubjects = [\"souk.dlq.>\"]\nretention = \"{retention}\"\npurge-acked = {purge_acked}\n"
            )
        };
        assert!(Topology::parse(&dlq("limits", false)).is_ok());
        assert!(Topology::parse(&dlq("limits", true)).is_err());
        assert!(Topology::parse(&dlq("work-queue", false)).is_err());
        assert!(Topology::parse(&dlq("interest", false)).is_err());
    }

    #[test]
    fn subject_filters_overlap_as_nats_matches_them() {
        for (a, b) in
            [("a.b", "a.b"), ("a.*", "a.b"), ("a.>", "a.b.c"), ("*.b", "a.*"), (">", "a"), ("a.*.c", "a.b.*")]
        {
            assert!(subjects_overlap(a, b) && subjects_overlap(b, a), "{a} / {b}");
        }
        for (a, b) in [("a.b", "a.c"), ("a.*", "a.b.c"), ("a.b", "a.b.c"), ("a.>", "a"), ("b.>", "a.>")] {
            assert!(!subjects_overlap(a, b) && !subjects_overlap(b, a), "{a} / {b}");
        }
    }

    #[test]
    fn a_filter_covers_a_pattern_only_if_it_takes_every_subject_of_it() {
        for (filter, pattern) in [
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("a.>", "a.b.c"),
            ("a.>", "a.*"),
            ("a.>", "a.>"),
            (">", "a.>"),
            ("*.b.>", "a.b.*"),
        ] {
            assert!(subject_covers(filter, pattern), "{filter} covers {pattern}");
        }
        for (filter, pattern) in [
            ("a.b", "a.*"),
            ("a.b", "a.>"),
            ("a.*", "a.>"),
            ("a.*", "a.b.c"),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
            ("a.>", "a"),
            ("a.*.c", "a.b.*"),
        ] {
            assert!(!subject_covers(filter, pattern), "{filter} does not cover {pattern}");
        }
        let subjects = ["a.x".to_owned(), "a.y".to_owned()];
        assert_eq!(first_uncovered(&subjects, &[vec!["a.x".into()]]), Some("a.y"));
        assert_eq!(first_uncovered(&subjects, &[vec!["a.x".into()], vec!["a.*".into()]]), None);
        assert_eq!(first_uncovered(&subjects, &[vec![]]), None, "no filter takes everything");
        assert_eq!(first_uncovered(&subjects, &[]), Some("a.x"), "no consumer takes nothing");
    }
}
