//! The outbox relay: publishes what handlers committed to their outbox.
//!
//! One relay holds the outbox lease at a time (the others wait as standbys), which is
//! what keeps the messages of one aggregate in order: it reads pending rows oldest
//! first, publishes consecutive rows bound for one stream as an atomic batch
//! (`Nats-Msg-Id` = row id), and marks them published only after the ack. A crash
//! between publish and mark republishes the same ids, which JetStream drops as
//! duplicates. Failed publishes stop the round (nothing later is published before
//! it), and the round is retried after a pause.

use async_nats::HeaderMap;
use bytes::Bytes;
use souk_pipelines::outbox::{Outbox, OutboxMessage};
use std::{collections::HashMap, time::Duration};
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    publisher::{OutgoingMessage, Publisher},
};

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
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            batch: 200,
            poll_interval: Duration::from_millis(500),
            retry_pause: Duration::from_millis(500),
            round_timeout: Duration::from_secs(30),
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
}

impl<O: Outbox> Relay<O> {
    pub fn new(outbox: O, publisher: Publisher, options: RelayOptions) -> Self {
        Relay { outbox, publisher, options, streams: HashMap::new() }
    }

    /// Run until `cancel`; a round in progress finishes first.
    pub async fn run(mut self, cancel: CancellationToken) {
        let mut leased = false;
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

    /// One round: publish up to `batch` pending rows. Returns how many were published.
    pub async fn round(&mut self, leased: &mut bool) -> Result<usize> {
        let has_lease = self.outbox.try_lease().await.map_err(store_error)?;
        if has_lease != *leased {
            tracing::info!(leased = has_lease, "outbox relay lease changed");
            *leased = has_lease;
        }
        if !has_lease {
            return Ok(0);
        }
        let rows = self.outbox.pending(self.options.batch).await.map_err(store_error)?;
        metrics::gauge!("souk_relay_pending_rows").set(rows.len() as f64);
        let mut published = 0;
        for run in self.runs_by_stream(&rows).await? {
            // The rows' spans stay open until their publish is acknowledged and marked.
            let (messages, _spans): (Vec<_>, Vec<_>) = run.iter().map(to_outgoing).unzip();
            let results = self.publisher.publish_in_order(&messages).await;
            // Mark the acknowledged prefix; stop at the first failure to keep order.
            let ok = results.iter().take_while(|r| r.is_ok()).count();
            let ids: Vec<_> = run[..ok].iter().map(|m| m.id).collect();
            if !ids.is_empty() {
                self.outbox.mark_published(&ids).await.map_err(store_error)?;
                published += ids.len();
                metrics::counter!("souk_relay_published_total").increment(ids.len() as u64);
            }
            if let Some(Err(e)) = results.into_iter().nth(ok) {
                return Err(e);
            }
        }
        Ok(published)
    }

    /// Cut `rows` into maximal consecutive runs bound for the same stream.
    async fn runs_by_stream<'r>(&mut self, rows: &'r [OutboxMessage]) -> Result<Vec<&'r [OutboxMessage]>> {
        let mut runs = Vec::new();
        let mut start = 0;
        let mut current: Option<String> = None;
        for (i, row) in rows.iter().enumerate() {
            let stream = self.stream_of(&row.subject).await?;
            if current.as_ref().is_some_and(|c| *c != stream) {
                runs.push(&rows[start..i]);
                start = i;
            }
            current = Some(stream);
        }
        if start < rows.len() {
            runs.push(&rows[start..]);
        }
        Ok(runs)
    }

    async fn stream_of(&mut self, subject: &str) -> Result<String> {
        if let Some(s) = self.streams.get(subject) {
            return Ok(s.clone());
        }
        let stream = self
            .publisher
            .jetstream()
            .stream_by_subject(subject)
            .await
            .map_err(|e| Error::Nats(format!("no stream for {subject}: {e}")))?;
        self.streams.insert(subject.to_owned(), stream.clone());
        Ok(stream)
    }
}

/// The message for row `m`, and its `relay.publish` span: a child of the trace context
/// stored on the row, whose own context the event carries on.
fn to_outgoing(m: &OutboxMessage) -> (OutgoingMessage, tracing::Span) {
    let mut headers = HeaderMap::new();
    for (k, v) in &m.headers {
        headers.insert(k.as_str(), v.as_str());
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
    (message, span)
}

fn store_error(e: impl std::fmt::Display) -> Error {
    Error::Nats(format!("outbox store: {e}"))
}
