//! Dead letters: a message that cannot be handled is copied, with its original body and
//! headers plus why and how often it failed, to `souk.dlq.<consumer>`; only once that
//! copy is acknowledged is the original terminated. Nothing is acked away.

use async_nats::jetstream;
use souk_pipelines::{headers, subjects};

use super::Delivery;
use crate::{
    Result,
    publisher::{OutgoingMessage, Publisher},
    trace,
};

/// Longest error text kept in a header.
const MAX_ERROR_LEN: usize = 1024;

/// Copy `delivery` to the dead-letter stream with `error`, then terminate `msg`.
/// On failure the original is left unacked (it will be redelivered and tried again).
pub async fn dead_letter(
    publisher: &Publisher,
    msg: &jetstream::Message,
    delivery: &Delivery,
    error: &str,
) -> Result<()> {
    let mut h = delivery.headers.as_ref().map(crate::dead_letters::copyable_headers).unwrap_or_default();
    // The copy gets its own id, stable for this original, so dead-lettering twice
    // (a crash between the copy and the term) stores one copy. The sequence alone is
    // not: a re-created stream counts from 1 again, and a copy of a new original would
    // be dropped as a duplicate of an old one (and skipped by the inboxes of DLQ
    // consumers). The time the original was stored tells the two apart.
    let stored_at = msg.info().map(|i| i.published.unix_timestamp_nanos()).unwrap_or_default();
    let dlq_id = format!("dlq:{}:{}:{stored_at}", delivery.consumer, delivery.stream_sequence);
    if let Some(original) = &delivery.message_id {
        h.insert("souk-dlq-msg-id", original.as_str());
    }
    h.insert(headers::DLQ_CONSUMER, delivery.consumer.as_str());
    h.insert(headers::DLQ_SUBJECT, delivery.subject.as_str());
    h.insert(headers::DLQ_STREAM_SEQ, delivery.stream_sequence.to_string().as_str());
    h.insert(headers::DLQ_ATTEMPTS, delivery.attempt.to_string().as_str());
    h.insert(headers::DLQ_ERROR, header_safe(error).as_str());
    if let Some(trace_id) = trace::trace_id(delivery.headers.as_ref()) {
        h.insert(headers::DLQ_TRACE_ID, trace_id.as_str());
    }
    publisher
        .publish(OutgoingMessage {
            subject: subjects::dead_letter(&delivery.consumer),
            msg_id: dlq_id,
            headers: h,
            payload: delivery.payload.clone(),
        })
        .await?;
    metrics::counter!("souk_worker_dead_letters_total", "consumer" => delivery.consumer.clone()).increment(1);
    // If the term is lost, the redelivery finds the copy already stored (same id).
    if let Err(e) = msg.ack_with(jetstream::AckKind::Term).await {
        tracing::warn!(error = %e, "dead letter stored but terminating the original failed");
    }
    Ok(())
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
