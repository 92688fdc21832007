//! The outbox relay: publishes what handlers committed to their outbox.
//!
//! One relay holds the outbox lease at a time (the others wait as standbys), which is
//! what keeps the messages of one aggregate in order: it reads pending rows oldest
//! first, publishes the round's rows as one atomic batch per stream, each in outbox
//! order (`Nats-Msg-Id` = row id), and marks them published only after the ack. A
//! stream's run of fewer than [`RelayOptions::singles_below`] rows goes as single
//! publishes instead, each sent after the previous one's ack (so in order, and a failure
//! stops the run there as a refused batch would): nats-server stages each atomic batch
//! in a file store created and deleted per batch (see `group_commit`), which costs more
//! CPU and time than a few single publishes. Order
//! is kept per aggregate within a stream, which is all a consumer can see (a consumer
//! reads one stream). A crash between publish and mark republishes the same ids, which
//! JetStream drops as duplicates. A failed publish stops the round (nothing later of
//! that stream is published before it), and the round is retried after a pause.
//!
//! A row that can never be published as it is — no stream takes its subject, it is
//! larger than the server's `max_payload`, a header is refused ([`Error::is_permanent`])
//! — would stop every round for ever. Such a row holds back only its own aggregate
//! (the round goes on with the other rows), and once it has failed so
//! [`RelayOptions::park_after`] times over at least [`RelayOptions::park_grace`] it is
//! parked with its error ([`Outbox::park`]), together with the later rows of its
//! aggregate (so that they keep their order), an error is logged and
//! `souk_relay_parked_total` counted. The grace is what keeps a stream that an operator
//! removes and re-creates from parking good rows: "no stream" is permanent only until
//! the topology changes, and a re-creation takes longer than a few rounds.
//!
//! Marks are fenced on the lease ([`Outbox::mark_published`] fails once another relay
//! has taken it over), so a relay that lost its lease mid-round stops at its next mark.
//! What it published before that is in JetStream twice at worst (after the dedupe
//! window): event consumers deduplicate by message id (the outbox id) in their inbox.

use async_nats::{HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use souk_pipelines::outbox::{Outbox, OutboxMessage, Published};
use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    publisher::{OutgoingMessage, Publisher},
};
use async_nats::jetstream::context::GetStreamByNameErrorKind;

/// err_code of an atomic batch sent to a stream without `allow-atomic`.
const ATOMIC_DISABLED: u64 = 10174;
/// How often the gauge of parked rows is read from the outbox.
const PARKED_GAUGE_EVERY: Duration = Duration::from_secs(10);

/// Most reads one round makes past rows that cannot be published (each a batch): a
/// bound on one round's work; the next round goes on.
const MAX_READS_PER_ROUND: usize = 16;

/// A row failing with a permanent error, as this relay saw it.
#[derive(Debug, Clone)]
struct Failing {
    /// Its aggregate, left out of the rounds' reads between retries (see
    /// [`Relay::round`]), and its seq.
    aggregate_id: String,
    seq: i64,
    /// Since when it fails, and when its last failure was recorded.
    since: Instant,
    last_try: Instant,
}

/// Tuning of the relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows read per round (and most messages per atomic batch).
    pub batch: i64,
    /// Longest wait between rounds when no notification arrives.
    pub poll_interval: Duration,
    /// Pause after a failed round.
    pub retry_pause: Duration,
    /// Longest round (reading, publishing, marking). A round cut short is retried:
    /// what it published and did not mark is published again, and deduplicated.
    pub round_timeout: Duration,
    /// Failed publishes with a permanent error after which a row is parked (once
    /// `park_grace` has passed too).
    pub park_after: u32,
    /// How long a row must have been failing with permanent errors before it is
    /// parked: long enough for an operator to remove and re-create a stream (meanwhile
    /// only the row's aggregate waits; the other rows are published).
    pub park_grace: Duration,
    /// A stream's run of fewer rows than this is published one message after the
    /// other instead of as one atomic batch; 0 never does. An atomic batch is acked in
    /// ~4 ms here whatever its size, one single publish in ~0.6 ms.
    pub singles_below: usize,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 200,
            poll_interval: Duration::from_millis(500),
            retry_pause: Duration::from_millis(500),
            round_timeout: Duration::from_secs(30),
            park_after: 5,
            park_grace: Duration::from_secs(60),
            singles_below: 8,
        }
    }
}

/// The relay over one outbox.
#[derive(Debug)]
pub struct Relay<O> {
    outbox: O,
    publisher: Publisher,
    options: RelayOptions,
    /// Subject → stream, learned from JetStream, to cut rows into per-stream batches.
    streams: HashMap<String, String>,
    /// Rows failing with permanent errors, by id.
    failing: HashMap<uuid::Uuid, Failing>,
    /// When a round last read the outbox without leaving any aggregate out.
    last_full_read: Option<Instant>,
}

impl<O: Outbox> Relay<O> {
    pub fn new(outbox: O, publisher: Publisher, options: RelayOptions) -> Self {
        Relay {
            outbox,
            publisher,
            options,
            streams: HashMap::new(),
            failing: HashMap::new(),
            last_full_read: None,
        }
    }

    /// Run until `cancel`; a round in progress finishes first.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut leased = false;
        let mut parked_gauge_at: Option<Instant> = None;
        // Rounds failing since (and how many): logged when an outage starts and ends,
        // not every retry pause.
        let mut failing: Option<(std::time::Instant, u64)> = None;
        while !cancel.is_cancelled() {
            let result = tokio::time::timeout(self.options.round_timeout, self.round(&mut leased))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::Nats(format!("relay round took longer than {:?}", self.options.round_timeout)))
                });
            match (&result, &mut failing) {
                (Ok(_), Some((since, rounds))) => {
                    tracing::info!(after = ?since.elapsed(), failed_rounds = *rounds, "outbox relay publishing again");
                    failing = None;
                }
                (Err(e), None) => {
                    tracing::warn!(error = %e, "outbox relay round failed; retrying until it succeeds");
                    failing = Some((std::time::Instant::now(), 1));
                }
                (Err(e), Some((_, rounds))) => {
                    *rounds += 1;
                    tracing::debug!(error = %e, "outbox relay round failed again");
                }
                (Ok(_), None) => {}
            }
            metrics::gauge!("souk_relay_failing").set(if failing.is_some() { 1.0 } else { 0.0 });
            if leased && parked_gauge_at.is_none_or(|at| at.elapsed() >= PARKED_GAUGE_EVERY) {
                // Rows are requeued by operators, out of the relay's sight: read the count.
                if let Ok(n) = self.outbox.parked_count().await {
                    metrics::gauge!("souk_relay_parked_rows").set(n as f64);
                    parked_gauge_at = Some(Instant::now());
                }
            }
            let wait = match result {
                Ok(n) if n as i64 >= self.options.batch => Duration::ZERO,
                Ok(_) => self.options.poll_interval,
                Err(_) => self.options.retry_pause,
            };
            if wait.is_zero() {
                continue;
            }
            if !leased {
                // A standby retries the lease on a clock: waking on every outbox
                // notification would try (and connect) hundreds of times a second.
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(self.options.poll_interval) => {},
                }
                continue;
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = self.outbox.wait_for_new(wait) => {},
            }
        }
    }

    /// One round: publish the pending rows of one read of up to `batch` — or of several,
    /// past rows that cannot be published (see below). Returns how many were published.
    pub async fn round(&mut self, leased: &mut bool) -> Result<usize> {
        let has_lease = self.outbox.try_lease().await.map_err(store_error)?;
        if has_lease != *leased {
            tracing::info!(leased = has_lease, "outbox relay lease changed");
            *leased = has_lease;
        }
        if !has_lease {
            return Ok(0);
        }
        // Rows that cannot be published hold back their own aggregates only. A read that
        // comes back full and held some back is followed at once, in this round, by one
        // that leaves their aggregates out, until a read is short: a batch's worth of
        // them at the head of the outbox would otherwise fill every read, and the rows
        // behind them — every other aggregate's — would never be read (found in review).
        // Between retries (one a retry pause) every read leaves them out; a retry is a
        // read that does not.
        let mut skip = match self.last_full_read {
            Some(at) if at.elapsed() < self.options.retry_pause => self.failing_aggregate_ids(),
            _ => Vec::new(),
        };
        let mut published = 0;
        for _ in 0..MAX_READS_PER_ROUND {
            let rows = self.outbox.pending(self.options.batch, &skip).await.map_err(store_error)?;
            metrics::gauge!("souk_relay_pending_rows").set(rows.len() as f64);
            let full = rows.len() as i64 >= self.options.batch;
            if skip.is_empty() {
                self.last_full_read = Some(Instant::now());
                // A row no longer pending (published, parked, requeued out of sight)
                // starts afresh should it fail again. Only a read that skips nothing
                // can tell, and only up to the last row it read: a row past it was not
                // read, not gone (its clock towards parking keeps running).
                let read: HashSet<_> = rows.iter().map(|r| r.id).collect();
                let last = match full {
                    true => rows.last().map_or(i64::MAX, |r| r.seq),
                    false => i64::MAX,
                };
                self.failing.retain(|id, f| read.contains(id) || f.seq > last);
            }
            published += self.publish_read(&rows).await?;
            let held = rows.iter().any(|r| self.failing.contains_key(&r.id));
            if !(full && held) {
                break;
            }
            let next = self.failing_aggregate_ids();
            if next == skip {
                break;
            }
            skip = next;
        }
        Ok(published)
    }

    /// The aggregates of the rows failing now, sorted, each once.
    fn failing_aggregate_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.failing.values().map(|f| f.aggregate_id.clone()).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Publish the rows one read returned (see [`Relay::round`]). Returns how many were
    /// published.
    async fn publish_read(&mut self, rows: &[OutboxMessage]) -> Result<usize> {
        // Aggregates with a row parked or held back in this round, with that row's seq:
        // their later rows wait behind it.
        let mut parked = Held::new();
        // Subjects no stream took in this round: asked once, not once per row.
        let mut missing: HashMap<String, Error> = HashMap::new();
        // One run per stream, each in outbox order, the runs in the order of their first
        // row. Splitting the round into runs of *consecutive* rows instead made one
        // publish (an fsync) and one mark (a commit) per row whenever a pipeline's
        // transactions write a command and an event each — every saga step does — which
        // capped the relay at one row per fsync (measured: ~1.8 rows a round, ~130 rows/s).
        // Order is kept where a consumer can see it: per aggregate within a stream (each
        // consumer reads one stream).
        let mut runs: Vec<(String, Vec<(&OutboxMessage, OutgoingMessage)>)> = Vec::new();
        // The rows' `relay.publish` spans stay open until the round has published and
        // marked them.
        let mut spans = Vec::with_capacity(rows.len());
        for row in rows {
            if parked.contains_key(&row.aggregate_id) {
                continue;
            }
            let stream = match missing.get(&row.subject) {
                Some(e) => Err(e.clone()),
                None => self.stream_of(&row.subject).await,
            };
            if let Err(e @ Error::NoStream(_)) = &stream {
                missing.insert(row.subject.clone(), e.clone());
            }
            let checked = match stream {
                Ok(stream) => self.to_outgoing(row).map(|(m, span)| {
                    spans.push(span);
                    (stream, m)
                }),
                Err(e) => Err(e),
            };
            match checked {
                Ok((stream, message)) => match runs.iter_mut().find(|(s, _)| *s == stream) {
                    Some((_, run)) => run.push((row, message)),
                    None => runs.push((stream, vec![(row, message)])),
                },
                Err(e) if e.is_permanent() => {
                    self.failed(row, &e).await?;
                    hold(&mut parked, row);
                }
                Err(e) => return Err(e),
            }
        }
        let mut published = 0;
        for (_, run) in runs {
            published += self.flush(run, &mut parked).await?;
        }
        Ok(published)
    }

    /// Publish a run of rows bound for one stream, in order, marking what JetStream
    /// acknowledged. A row refused for good is handed to [`Relay::failed`] and the rest
    /// of the run goes on without its aggregate; any other failure stops the round.
    async fn flush(
        &mut self,
        run: Vec<(&OutboxMessage, OutgoingMessage)>,
        parked: &mut Held,
    ) -> Result<usize> {
        let mut published = 0;
        // Rows behind a row of their aggregate held back earlier in the round (in
        // another stream's run) wait with it.
        let mut run: Vec<_> = run.into_iter().filter(|(m, _)| !held_back(parked, m)).collect();
        while !run.is_empty() {
            let messages: Vec<_> = run.iter().map(|(_, m)| m.clone()).collect();
            let atomic = messages.len() >= self.options.singles_below;
            let mut results = match atomic {
                true => self.publisher.publish_in_order(&messages).await,
                false => self.publisher.publish_one_by_one(&messages).await,
            };
            let refused_whole = atomic
                && results.len() == run.len()
                && matches!(&results[0], Err(e) if e.is_permanent())
                && (run.len() > 1
                    || matches!(&results[0], Err(Error::JetStream { code: ATOMIC_DISABLED, .. })));
            if refused_whole {
                // An atomic batch refused as a whole does not say which message it
                // refused: find it one at a time. (So is a batch to a stream without
                // `allow-atomic`, which takes single publishes.)
                results = self.publisher.publish_one_by_one(&messages).await;
            }
            let ok = results.iter().take_while(|r| r.is_ok()).count();
            let acked: Vec<_> = run[..ok]
                .iter()
                .zip(&results)
                .filter_map(|((m, _), r)| {
                    let ack = r.as_ref().ok()?;
                    Some(Published { id: m.id, stream: ack.stream.clone(), stream_seq: ack.sequence })
                })
                .collect();
            if !acked.is_empty() {
                self.outbox.mark_published(&acked).await.map_err(store_error)?;
                published += acked.len();
                metrics::counter!("souk_relay_published_total").increment(acked.len() as u64);
            }
            let Some(Err(e)) = results.into_iter().nth(ok) else { break };
            if !e.is_permanent() {
                return Err(e);
            }
            let (row, _) = run[ok];
            self.failed(row, &e).await?;
            hold(parked, row);
            if matches!(e, Error::NoStream(_)) {
                // The stream went away after it was looked up: the rest of the run would
                // fail alike, one publish each. Hold it back; the next round looks the
                // stream up again.
                self.streams.clear();
                for (m, _) in &run[ok + 1..] {
                    hold(parked, m);
                }
                break;
            }
            run = run.into_iter().skip(ok + 1).filter(|(m, _)| !held_back(parked, m)).collect();
        }
        Ok(published)
    }

    /// `row` failed with permanent error `e`: count it, and park it once it has failed
    /// [`RelayOptions::park_after`] times over at least [`RelayOptions::park_grace`].
    /// Either way the caller holds back the row's aggregate and goes on with the others.
    async fn failed(&mut self, row: &OutboxMessage, e: &Error) -> Result<()> {
        let now = Instant::now();
        let seen = self.failing.get(&row.id).map(|f| (f.since, f.last_try));
        // Rounds come on every outbox notification: a try is counted (and written) at
        // most once per retry pause, so a missing stream does not cost a write per
        // held-back row per round.
        if seen.is_some_and(|(_, last)| now.duration_since(last) < self.options.retry_pause) {
            return Ok(());
        }
        let error = e.to_string();
        let tries = self.outbox.record_failure(row.id, &error).await.map_err(store_error)?;
        let since = seen.map_or(now, |(since, _)| since);
        let failing = Failing { aggregate_id: row.aggregate_id.clone(), seq: row.seq, since, last_try: now };
        self.failing.insert(row.id, failing);
        if tries < self.options.park_after || since.elapsed() < self.options.park_grace {
            if seen.is_none() {
                tracing::warn!(
                    outbox_id = %row.id,
                    aggregate_id = %row.aggregate_id,
                    subject = %row.subject,
                    error = %error,
                    grace = ?self.options.park_grace,
                    "outbox row cannot be published; its aggregate waits, and it is parked if this lasts"
                );
            }
            return Ok(());
        }
        self.failing.remove(&row.id);
        let parked = self.outbox.park(row.id, &error).await.map_err(store_error)?;
        metrics::counter!("souk_relay_parked_total").increment(1);
        metrics::gauge!("souk_relay_parked_rows").set(parked as f64);
        tracing::error!(
            outbox_id = %row.id,
            aggregate_id = %row.aggregate_id,
            subject = %row.subject,
            tries,
            error = %error,
            "outbox row parked: it cannot be published as it is; the later rows of its aggregate wait \
             behind it until it is requeued"
        );
        Ok(())
    }

    async fn stream_of(&mut self, subject: &str) -> Result<String> {
        if let Some(s) = self.streams.get(subject) {
            return Ok(s.clone());
        }
        let stream =
            self.publisher.jetstream().stream_by_subject(subject).await.map_err(|e| match e.kind() {
                GetStreamByNameErrorKind::NotFound | GetStreamByNameErrorKind::InvalidSubject => {
                    Error::NoStream(subject.to_owned())
                }
                _ => Error::Nats(format!("no stream for {subject}: {e}")),
            })?;
        self.streams.insert(subject.to_owned(), stream.clone());
        Ok(stream)
    }
}

impl<O: Outbox> Relay<O> {
    /// The message for `m`, or why NATS could never carry it: a header it refuses (the
    /// client would panic on one), or a payload larger than the server's `max_payload`.
    ///
    /// With it comes the row's `relay.publish` span: a child of the trace context stored
    /// on the row, whose own context the event carries on.
    fn to_outgoing(&self, m: &OutboxMessage) -> Result<(OutgoingMessage, tracing::Span)> {
        let mut headers = HeaderMap::new();
        for (k, v) in &m.headers {
            let name =
                HeaderName::try_from(k.as_str()).map_err(|_| Error::BadHeader(format!("name {k:?}")))?;
            let value =
                v.parse::<HeaderValue>().map_err(|_| Error::BadHeader(format!("value of {k}: {v:?}")))?;
            headers.insert(name, value);
        }
        let max = self.publisher.max_payload();
        if m.payload.len() > max {
            return Err(Error::TooLarge(format!(
                "payload of {} bytes, server max_payload {max} bytes",
                m.payload.len()
            )));
        }
        let span = tracing::info_span!("relay.publish", subject = %m.subject, row = %m.id);
        crate::trace::set_parent_from(&span, Some(&headers));
        span.in_scope(|| crate::trace::inject_current(&mut headers));
        let message = OutgoingMessage {
            subject: m.subject.clone(),
            msg_id: m.id.to_string(),
            headers,
            payload: Bytes::from(m.payload.clone()),
        };
        Ok((message, span))
    }
}

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Nats(format!("outbox store: {e}"))
}

/// Aggregates held back in a round, each with the seq of its first held row.
type Held = HashMap<String, i64>;

/// Hold back `row`'s aggregate from `row` on.
fn hold(held: &mut Held, row: &OutboxMessage) {
    let seq = held.entry(row.aggregate_id.clone()).or_insert(row.seq);
    *seq = (*seq).min(row.seq);
}

/// Whether `row` comes after a held row of its aggregate.
fn held_back(held: &Held, row: &OutboxMessage) -> bool {
    held.get(&row.aggregate_id).is_some_and(|&from| row.seq > from)
}
