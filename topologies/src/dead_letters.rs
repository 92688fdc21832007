//! Operating on the dead-letter stream: list what is there and why, and replay a dead
//! letter to the subject it came from once its cause is fixed.

use async_nats::{HeaderMap, jetstream};
use serde::Serialize;
use souk_pipelines::headers;

use crate::{
    Error, Result,
    publisher::{Ack, OutgoingMessage, Publisher},
};

/// The dead-letter stream declared in the topology.
pub const STREAM: &str = "DLQ";

/// One dead letter, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Sequence in the `DLQ` stream (what `replay` takes).
    pub seq: u64,
    pub consumer: String,
    pub subject: String,
    pub attempts: String,
    pub error: String,
    pub trace_id: String,
    /// When it was dead-lettered (RFC 3339).
    pub time: String,
    pub payload_bytes: usize,
    #[serde(skip)]
    headers: HeaderMap,
    #[serde(skip)]
    payload: bytes::Bytes,
}

/// Up to `limit` dead letters, oldest first.
pub async fn list(js: &jetstream::Context, limit: usize) -> Result<Vec<DeadLetter>> {
    let stream = js.get_stream(STREAM).await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?;
    let state = stream.get_info().await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?.state;
    let mut out = Vec::new();
    if state.messages == 0 {
        return Ok(out);
    }
    for seq in state.first_sequence..=state.last_sequence {
        if out.len() >= limit {
            break;
        }
        match stream.get_raw_message(seq).await {
            Ok(m) => out.push(describe(m)),
            // Replayed (deleted) dead letters leave gaps.
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(Error::Nats(format!("{STREAM} seq {seq}: {e}"))),
        }
    }
    Ok(out)
}

fn describe(m: jetstream::message::StreamMessage) -> DeadLetter {
    let h = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
    DeadLetter {
        seq: m.sequence,
        consumer: h(headers::DLQ_CONSUMER),
        subject: h(headers::DLQ_SUBJECT),
        attempts: h(headers::DLQ_ATTEMPTS),
        error: h(headers::DLQ_ERROR),
        trace_id: h(headers::DLQ_TRACE_ID),
        time: m.time.to_string(),
        payload_bytes: m.payload.len(),
        headers: m.headers,
        payload: m.payload,
    }
}

/// Publish dead letter `seq` again, with its original body and headers, to its original
/// subject, then remove it from the dead-letter stream. The republished message gets
/// the id `replay:<seq>:<stored at, ns>`, so replaying twice (or crashing between the
/// publish and the removal) publishes once; handlers see a new message and must rely on
/// their own idempotency (they do: the inbox and the aggregate's own keys).
pub async fn replay(publisher: &Publisher, seq: u64) -> Result<Ack> {
    let js = publisher.jetstream();
    let stream = js.get_stream(STREAM).await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?;
    let raw =
        stream.get_raw_message(seq).await.map_err(|e| Error::Nats(format!("{STREAM} seq {seq}: {e}")))?;
    // With the sequence alone, a re-created DLQ (sequences from 1 again) would replay
    // under the id of an earlier replay, which CMD's dedupe window or the handler's
    // inbox takes for that one: the redrive would vanish. The time it was stored
    // tells them apart.
    let stored_at = raw.time.unix_timestamp_nanos();
    let letter = describe(raw);
    if letter.subject.is_empty() {
        return Err(Error::Nats(format!("{STREAM} seq {seq} has no {} header", headers::DLQ_SUBJECT)));
    }
    let mut original = HeaderMap::new();
    for (name, values) in copyable_headers(&letter.headers).iter() {
        let name: &str = name.as_ref();
        if name.starts_with("souk-dlq-") {
            continue;
        }
        for v in values {
            original.append(name, v.as_str());
        }
    }
    let ack = publisher
        .publish(OutgoingMessage {
            subject: letter.subject.clone(),
            msg_id: format!("replay:{seq}:{stored_at}"),
            headers: original,
            payload: letter.payload.clone(),
        })
        .await?;
    stream.delete_message(seq).await.map_err(|e| Error::Nats(format!("removing {STREAM} seq {seq}: {e}")))?;
    metrics::counter!("souk_dlq_replayed_total", "consumer" => letter.consumer).increment(1);
    Ok(ack)
}

/// The headers of a stored message that may go on a copy of it: all but JetStream's own
/// (`Nats-*`). Those are directives to the server, not data — and some stay on stored
/// messages: an atomic batch keeps `Nats-Batch-Id`/`-Sequence` on every message but its
/// last, and a copy carrying them would be a batch fragment, refused by a stream without
/// `allow-atomic` and never committed by one with it. Others (`Nats-Rollup`,
/// `Nats-Expected-*`, `Nats-TTL`) would act again on the copy's stream. The message id
/// is kept apart by the callers (`souk-dlq-msg-id`).
pub fn copyable_headers(stored: &HeaderMap) -> HeaderMap {
    let mut copy = HeaderMap::new();
    for (name, values) in stored.iter() {
        let name: &str = name.as_ref();
        if name.len() >= 5 && name[..5].eq_ignore_ascii_case("nats-") {
            continue;
        }
        for v in values {
            copy.append(name, v.as_str());
        }
    }
    copy
}
