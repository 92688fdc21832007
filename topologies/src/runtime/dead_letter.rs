//! Dead letters: a message that cannot be handled is copied, with its original body and
//! headers plus why and how often it failed, to `souk.dlq.<consumer>`; only once that
//! copy is acknowledged — and known to be this message's copy — is the original
//! terminated. Nothing is acked away.
//!
//! **Ids.** A copy's `Nats-Msg-Id` is stable per original, so dead-lettering twice (a
//! crash between the copy and the term, a lost term) stores one copy: DLQ dedupes for a
//! day. It is `dlq:<consumer>:<the original's Nats-Msg-Id>`, or, for an original
//! without one, `dlq:<consumer>:<origin>` where the origin is
//! `<stream>/<stream creation time, unix ns>/<sequence>`. Never the bare stream sequence:
//! a stream removed and re-created (what `souk topology apply` tells operators to do when
//! a stream must change) numbers from 1 again, and its new messages' ids would name older
//! dead letters still in DLQ's window — the copy dropped as a duplicate, the original
//! terminated, the message gone.
//!
//! **Duplicates are checked.** A duplicate PubAck names the stored copy's sequence; it is
//! read back and must carry this original's origin (`souk-dlq-origin`) and consumer. If
//! not — the same message id stored twice in CMD beyond its dedupe window, or the stored
//! copy already replayed — this copy is stored again under its origin id, which no other
//! stored message shares.
//!
//! **A failed publish is retried in place** (bounded, with backoff, progress acks keeping
//! the original meanwhile) before the caller hands the message back for redelivery.

use async_nats::jetstream::{self, AckKind};
use backon::BackoffBuilder;
use souk_pipelines::{headers, subjects};
use std::time::Duration;

use super::Delivery;
use crate::{
    Error, Result,
    publisher::{Ack, OutgoingMessage, Publisher},
    trace,
};

/// Longest error text kept in a header.
const MAX_ERROR_LEN: usize = 1024;

/// Waits between in-place tries of a failed dead-letter publish: a broker hiccup (a
/// leader election, a reconnect) usually passes within seconds, and handing the message
/// back instead costs a redelivery — which, on its last allowed delivery, cannot run the
/// handler again. Five tries in ~4 s of waits plus their ack timeouts stay well inside
/// the shipped 30 s ack wait (progress acks are sent anyway).
fn in_place_retries() -> impl Iterator<Item = Duration> {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter()
        .build()
}

/// Copy `delivery` to the dead-letter stream with `error`, then terminate `msg`.
/// A failed publish is retried in place; if it still fails, the original is left unacked
/// for the caller to hand back (it will be redelivered and tried again).
pub async fn dead_letter(
    publisher: &Publisher,
    msg: &jetstream::Message,
    delivery: &Delivery,
    error: &str,
) -> Result<Ack> {
    dead_letter_since(publisher, msg, delivery, error, None).await
}

/// [`dead_letter`], recording when the message first failed (`None`: now, this being
/// the first failure this process saw). Returns where the copy is stored.
pub async fn dead_letter_since(
    publisher: &Publisher,
    msg: &jetstream::Message,
    delivery: &Delivery,
    error: &str,
    first_failure: Option<std::time::SystemTime>,
) -> Result<Ack> {
    let first_failure = first_failure.unwrap_or_else(std::time::SystemTime::now);
    let mut waits = in_place_retries();
    let stored = loop {
        match store_copy(publisher, msg, delivery, error, first_failure).await {
            Ok(ack) => break ack,
            Err(e) => match waits.next() {
                Some(wait) if e.is_retryable() => {
                    tracing::warn!(error = %e, retry_in = ?wait, "dead-letter publish failed; retrying in place");
                    metrics::counter!("souk_worker_dead_letter_retries_total", "consumer" => delivery.consumer.clone())
                        .increment(1);
                    if let Err(e) = msg.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "progress ack failed");
                    }
                    tokio::time::sleep(wait).await;
                }
                _ => return Err(e),
            },
        }
    };
    metrics::counter!("souk_worker_dead_letters_total", "consumer" => delivery.consumer.clone()).increment(1);
    // If the term is lost, the redelivery finds the copy already stored (same id).
    if let Err(e) = msg.ack_with(AckKind::Term).await {
        tracing::warn!(error = %e, "dead letter stored but terminating the original failed");
    }
    Ok(stored)
}

/// Store this original's copy once: under its message id, or — when that id names
/// another message's copy — under its origin.
async fn store_copy(
    publisher: &Publisher,
    msg: &jetstream::Message,
    delivery: &Delivery,
    error: &str,
    first_failure: std::time::SystemTime,
) -> Result<Ack> {
    let origin = origin(publisher, msg, delivery).await?;
    let mut h = delivery.headers.as_ref().map(crate::dead_letters::copyable_headers).unwrap_or_default();
    if let Some(original) = &delivery.message_id {
        h.insert(headers::DLQ_MSG_ID, original.as_str());
    }
    h.insert(headers::DLQ_CONSUMER, delivery.consumer.as_str());
    h.insert(headers::DLQ_SUBJECT, delivery.subject.as_str());
    h.insert(headers::DLQ_STREAM_SEQ, delivery.stream_sequence.to_string().as_str());
    h.insert(headers::DLQ_ORIGIN, origin.as_str());
    h.insert(headers::DLQ_ATTEMPTS, delivery.attempt.to_string().as_str());
    h.insert(headers::DLQ_ERROR, header_safe(error).as_str());
    let first = crate::dead_letters::rfc3339(time::OffsetDateTime::from(first_failure));
    h.insert(headers::DLQ_FIRST_FAILURE, first.as_str());
    if let Some(trace_id) = trace::trace_id(delivery.headers.as_ref()) {
        h.insert(headers::DLQ_TRACE_ID, trace_id.as_str());
    }
    let by_origin = format!("dlq:{}:{origin}", delivery.consumer);
    let ids =
        delivery.message_id.iter().map(|id| format!("dlq:{}:{id}", delivery.consumer)).chain([by_origin]);
    for id in ids {
        let ack = publisher
            .publish(OutgoingMessage {
                subject: subjects::dead_letter(&delivery.consumer),
                msg_id: id.clone(),
                headers: h.clone(),
                payload: delivery.payload.clone(),
            })
            .await?;
        if !ack.duplicate || is_copy_of(publisher, &ack, &delivery.consumer, &origin).await? {
            return Ok(ack);
        }
        tracing::warn!(dlq_id = %id, dlq_seq = ack.sequence, "dead-letter id already names another message's copy");
    }
    Err(Error::Refused(format!("DLQ holds another message under every dead-letter id of {origin}")))
}

/// The stored original, unique across re-created streams: `<stream>/<created ns>/<seq>`.
async fn origin(publisher: &Publisher, msg: &jetstream::Message, delivery: &Delivery) -> Result<String> {
    let stream = msg.info().map_err(|e| Error::Nats(format!("message metadata: {e}")))?.stream;
    let created = publisher
        .jetstream()
        .get_stream(stream)
        .await
        .map_err(|e| Error::Nats(format!("stream {stream}: {e}")))?
        .cached_info()
        .created
        .unix_timestamp_nanos();
    Ok(format!("{stream}/{created}/{}", delivery.stream_sequence))
}

/// Whether the message a duplicate PubAck names is the copy of `origin` for `consumer`.
async fn is_copy_of(publisher: &Publisher, ack: &Ack, consumer: &str, origin: &str) -> Result<bool> {
    let stream = publisher
        .jetstream()
        .get_stream(&ack.stream)
        .await
        .map_err(|e| Error::Nats(format!("stream {}: {e}", ack.stream)))?;
    match stream.get_raw_message(ack.sequence).await {
        Ok(stored) => {
            let h = |name: &str| stored.headers.get(name).map(|v| v.as_str().to_owned());
            Ok(h(headers::DLQ_ORIGIN).as_deref() == Some(origin)
                && h(headers::DLQ_CONSUMER).as_deref() == Some(consumer))
        }
        // Replayed (removed) since: the id is taken, but no copy of this message is kept.
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(false),
        Err(e) => Err(Error::Nats(format!("{} seq {}: {e}", ack.stream, ack.sequence))),
    }
}

/// Header values cannot hold line breaks or other control characters.
fn header_safe(text: &str) -> String {
    let mut s: String =
        text.chars().map(|c| if c.is_control() { ' ' } else { c }).take(MAX_ERROR_LEN).collect();
    if s.trim().is_empty() {
        s = "unspecified".into();
    }
    s
}
