//! Publishing to JetStream: every publish carries a `Nats-Msg-Id` and waits for the
//! PubAck, so "published" always means "stored durably by the stream".
//!
//! Two ways: [`Publisher::publish`] for one message, and [`Publisher::publish_all`],
//! which sends many as one JetStream atomic batch (nats-server ≥ 2.12, stream with
//! `allow_atomic`). With `sync_interval: always` a single publish costs one fsync, and a
//! batch costs one fsync for all its messages — the whole reason batching exists here.
//!
//! An atomic batch holding any message id that is already in the stream's dedupe
//! window (or the same id twice) is rejected whole with err_code 10201 and does not say
//! which id; [`Publisher::publish_all`] then republishes that batch one message at a time,
//! pipelined, where JetStream dedupes per message and acks the duplicates, and
//! [`Publisher::publish_in_order`] does the same one after the other, for callers whose
//! order must survive a failure (the outbox relay).

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use serde::Deserialize;
use std::time::{Duration, Instant};

use crate::{Error, Result};
use souk_pipelines::headers::MSG_ID;

/// err_code of an atomic batch that holds an already-seen (or repeated) message id.
pub const BATCH_DUPLICATE_MESSAGE_ID: u64 = 10201;

/// JetStream's default cap on messages per atomic batch.
pub const MAX_ATOMIC_BATCH: usize = 1000;

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub subject: String,
    /// Becomes `Nats-Msg-Id`: JetStream drops a second message with the same id
    /// within the stream's duplicate window.
    pub msg_id: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

impl OutgoingMessage {
    /// A command as every publisher of commands sends it: `souk-schema`, `souk-tenant`,
    /// its message id as `souk-causation-id` too, the current span's trace context,
    /// and the encoded payload. One way to build a command, whoever publishes it (the
    /// ingress, import jobs, the seed generator).
    pub fn command<M: souk_pipelines::Message>(message: &M, msg_id: String, tenant: &str) -> Self {
        let mut headers = HeaderMap::new();
        crate::trace::inject_current(&mut headers);
        headers.insert(souk_pipelines::headers::SCHEMA, M::schema_header().as_str());
        headers.insert(souk_pipelines::headers::TENANT, tenant);
        headers.insert(souk_pipelines::headers::CAUSATION_ID, msg_id.as_str());
        OutgoingMessage {
            subject: M::SUBJECT.into(),
            msg_id,
            headers,
            payload: Bytes::from(souk_pipelines::encode(message)),
        }
    }
}

/// How [`Publisher::atomic_or_singles`] falls back to single publishes.
#[derive(Clone, Copy)]
enum Singles {
    /// Send all, then collect the acks.
    Pipelined,
    /// Each after the previous ack, stopping at the first failure.
    InOrder,
}

/// JetStream's acknowledgement of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub stream: String,
    pub sequence: u64,
    /// The message id was already stored; nothing new was written.
    pub duplicate: bool,
}

/// Publishes and waits for acknowledgements, never longer than `ack_timeout`.
#[derive(Clone)]
pub struct Publisher {
    client: async_nats::Client,
    js: jetstream::Context,
    ack_timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").field("ack_timeout", &self.ack_timeout).finish()
    }
}

#[derive(Deserialize)]
struct ApiAck {
    stream: Option<String>,
    seq: Option<u64>,
    count: Option<u64>,
    #[serde(default)]
    duplicate: bool,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

impl Publisher {
    /// A publisher over `client` that gives up on an acknowledgement after `ack_timeout`.
    pub fn new(client: async_nats::Client, ack_timeout: Duration) -> Self {
        let js = jetstream::ContextBuilder::new().timeout(ack_timeout).build(client.clone());
        Publisher { client, js, ack_timeout }
    }

    /// The largest message (headers and payload) the server takes, as it announced.
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// The JetStream context this publisher uses.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publish one message and wait for its PubAck.
    pub async fn publish(&self, msg: OutgoingMessage) -> Result<Ack> {
        let started = Instant::now();
        let mut headers = msg.headers;
        headers.insert(MSG_ID, msg.msg_id.as_str());
        let result = async {
            let subject = msg.subject;
            let fut = self
                .js
                .publish_with_headers(subject.clone(), headers, msg.payload)
                .await
                .map_err(|e| self.publish_error(e, &subject))?;
            let ack = fut.await.map_err(|e| self.publish_error(e, &subject))?;
            Ok(Ack { stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
        };
        let result = tokio::time::timeout(self.ack_timeout, result)
            .await
            .unwrap_or(Err(Error::AckTimeout(self.ack_timeout)));
        record("single", 1, started, &result);
        result
    }

    /// Publish `msgs` (all to subjects of one stream, in order) as one atomic batch:
    /// either every message is stored or none is.
    pub async fn publish_atomic(&self, msgs: &[OutgoingMessage]) -> Result<Vec<Ack>> {
        let Some((last, init)) = msgs.split_last() else { return Ok(Vec::new()) };
        if msgs.len() > MAX_ATOMIC_BATCH {
            return Err(Error::JetStream { code: 10199, description: "batch too large".into() });
        }
        let started = Instant::now();
        let batch_id = uuid::Uuid::new_v4().simple().to_string();
        let batch_headers = |m: &OutgoingMessage, seq: usize| {
            let mut h = m.headers.clone();
            h.insert(MSG_ID, m.msg_id.as_str());
            h.insert("Nats-Batch-Id", batch_id.as_str());
            h.insert("Nats-Batch-Sequence", seq.to_string().as_str());
            h
        };
        let result = async {
            for (i, m) in init.iter().enumerate() {
                self.client
                    .publish_with_headers(m.subject.clone(), batch_headers(m, i + 1), m.payload.clone())
                    .await
                    .map_err(core_publish_error)?;
            }
            let mut h = batch_headers(last, msgs.len());
            h.insert("Nats-Batch-Commit", "1");
            let request = async_nats::Request::new()
                .headers(h)
                .payload(last.payload.clone())
                .timeout(Some(self.ack_timeout));
            let reply = self.client.send_request(last.subject.clone(), request).await.map_err(|e| match e
                .kind()
            {
                async_nats::RequestErrorKind::TimedOut => Error::AckTimeout(self.ack_timeout),
                async_nats::RequestErrorKind::NoResponders => Error::NoStream(last.subject.clone()),
                async_nats::RequestErrorKind::MaxPayloadExceeded => Error::TooLarge(e.to_string()),
                _ => Error::nats(e),
            })?;
            let ack: ApiAck = serde_json::from_slice(&reply.payload)
                .map_err(|e| Error::Nats(format!("unreadable batch ack: {e}")))?;
            if let Some(err) = ack.error {
                return Err(Error::JetStream { code: err.err_code, description: err.description });
            }
            let (Some(stream), Some(last_seq)) = (ack.stream, ack.seq) else {
                return Err(Error::Nats("batch ack without stream or sequence".into()));
            };
            // A batch commit is acked with its count; a plain ack would mean the server
            // took the commit as a lone message and the rest went who knows where.
            let count = ack.count.ok_or_else(|| Error::Nats("batch ack without a count".into()))?;
            if count != msgs.len() as u64 {
                return Err(Error::Nats(format!("batch of {} acked with count {count}", msgs.len())));
            }
            let first = last_seq + 1 - count;
            Ok((0..count)
                .map(|i| Ack { stream: stream.clone(), sequence: first + i, duplicate: ack.duplicate })
                .collect())
        };
        let result = tokio::time::timeout(self.ack_timeout, result)
            .await
            .unwrap_or(Err(Error::AckTimeout(self.ack_timeout)));
        record("atomic", msgs.len(), started, &result);
        result
    }

    /// Publish `msgs` (all to subjects of one stream) with as few fsyncs as possible:
    /// as one atomic batch, or — when JetStream rejects the batch for holding an id it
    /// has already seen — one message at a time, pipelined. Results are per message, in
    /// order. Message ids must be distinct within `msgs`.
    pub async fn publish_all(&self, msgs: &[OutgoingMessage]) -> Vec<Result<Ack>> {
        self.atomic_or_singles(msgs, Singles::Pipelined).await
    }

    /// Like [`Publisher::publish_all`], but keeping their order in the stream whatever
    /// fails: the one-at-a-time fallback waits for each ack before the next message and
    /// stops at the first failure, so the results of a fallback are `Ok`s for a prefix,
    /// then at most one `Err`. The outbox relay publishes this way, since pipelined
    /// publishes could store a later event of an aggregate before an earlier one that
    /// failed.
    pub async fn publish_in_order(&self, msgs: &[OutgoingMessage]) -> Vec<Result<Ack>> {
        self.atomic_or_singles(msgs, Singles::InOrder).await
    }

    /// One atomic batch, or on err 10201 the messages one at a time as `singles` says.
    async fn atomic_or_singles(&self, msgs: &[OutgoingMessage], singles: Singles) -> Vec<Result<Ack>> {
        match self.publish_atomic(msgs).await {
            Ok(acks) => acks.into_iter().map(Ok).collect(),
            Err(Error::JetStream { code: BATCH_DUPLICATE_MESSAGE_ID, .. }) => {
                metrics::counter!("souk_publisher_batch_fallbacks_total").increment(1);
                match singles {
                    Singles::Pipelined => self.publish_each(msgs).await,
                    Singles::InOrder => self.publish_one_by_one(msgs).await,
                }
            }
            Err(e) => msgs.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// A typed error for a failed JetStream publish to `subject`, so that callers can
    /// tell a message that can never be stored ([`Error::is_permanent`]) from an outage.
    fn publish_error(&self, e: jetstream::context::PublishError, subject: &str) -> Error {
        use jetstream::context::PublishErrorKind as Kind;
        match e.kind() {
            Kind::TimedOut => Error::AckTimeout(self.ack_timeout),
            // A JetStream publish nobody answers: no stream takes the subject.
            Kind::StreamNotFound => Error::NoStream(subject.to_owned()),
            Kind::MaxPayloadExceeded => Error::TooLarge(e.to_string()),
            _ => match std::error::Error::source(&e).and_then(|s| s.downcast_ref::<jetstream::Error>()) {
                Some(api) => Error::JetStream { code: api.error_code().0, description: api.to_string() },
                None => Error::nats(e),
            },
        }
    }

    /// Publish one message at a time, each after the previous one's ack, stopping at the
    /// first failure: `Ok`s for a prefix, then at most one `Err`. Slower than
    /// [`Publisher::publish_each`], but a later message never lands before an earlier
    /// one that failed.
    pub async fn publish_one_by_one(&self, msgs: &[OutgoingMessage]) -> Vec<Result<Ack>> {
        let mut results = Vec::with_capacity(msgs.len());
        for m in msgs {
            let result = self.publish(m.clone()).await;
            let failed = result.is_err();
            results.push(result);
            if failed {
                break;
            }
        }
        results
    }

    /// Publish one message at a time, pipelined: send all, then collect the acks. The
    /// whole call is bounded by the ack timeout (each ack's own timer only starts when
    /// it is awaited, so per-message timeouts would add up on an unresponsive server).
    pub async fn publish_each(&self, msgs: &[OutgoingMessage]) -> Vec<Result<Ack>> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.ack_timeout;
        let mut pending = Vec::with_capacity(msgs.len());
        for m in msgs {
            let mut headers = m.headers.clone();
            headers.insert(MSG_ID, m.msg_id.as_str());
            let send = self.js.publish_with_headers(m.subject.clone(), headers, m.payload.clone());
            pending.push(match tokio::time::timeout_at(deadline, send).await {
                Ok(sent) => sent.map_err(|e| self.publish_error(e, &m.subject)),
                Err(_) => Err(Error::AckTimeout(self.ack_timeout)),
            });
        }
        let mut results = Vec::with_capacity(msgs.len());
        for (p, m) in pending.into_iter().zip(msgs) {
            results.push(match p {
                Ok(fut) => match tokio::time::timeout_at(deadline, fut).await {
                    Ok(acked) => acked
                        .map(|a| Ack { stream: a.stream, sequence: a.sequence, duplicate: a.duplicate })
                        .map_err(|e| self.publish_error(e, &m.subject)),
                    Err(_) => Err(Error::AckTimeout(self.ack_timeout)),
                },
                Err(e) => Err(e),
            });
        }
        for r in &results {
            record("single", 1, started, r);
        }
        results
    }
}

/// A typed error for a failed core NATS publish (a fragment of an atomic batch).
fn core_publish_error(e: async_nats::PublishError) -> Error {
    match e.kind() {
        async_nats::PublishErrorKind::MaxPayloadExceeded => Error::TooLarge(e.to_string()),
        _ => Error::nats(e),
    }
}

fn record<T>(mode: &'static str, messages: usize, started: Instant, result: &Result<T>) {
    let outcome = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("souk_publisher_messages_total", "mode" => mode, "outcome" => outcome)
        .increment(messages as u64);
    metrics::histogram!("souk_publisher_ack_seconds", "mode" => mode).record(started.elapsed().as_secs_f64());
}
