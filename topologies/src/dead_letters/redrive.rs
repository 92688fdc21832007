//! Redrive: a dead letter goes back to the subject it came from, with its original body
//! and headers, as a NEW message (a new `Nats-Msg-Id`, so neither JetStream's dedupe
//! window nor a handler's inbox swallows it as the original) carrying
//! `souk-redrives: <n>`, then leaves the DLQ.
//!
//! **Crash safety.** Publish, await the PubAck, and only then delete the dead letter:
//! a crash before the PubAck leaves the dead letter in place (redrive again); a crash
//! between the PubAck and the delete leaves the message both redriven and still in the
//! DLQ. The redrive id is derived from the dead letter alone —
//! `redrive:<DLQ creation, unix ns>:<seq>:<n>` — so redriving it again publishes the
//! same id: the target stream acks it as a duplicate within its dedupe window (CMD:
//! 2 minutes) and it is handled once; the duplicate ack is checked against the stored
//! message, then the dead letter is deleted. Past the window the copy is stored again
//! under the same id, and handlers, which record every message id they apply in their
//! inbox (`Deduplicated`, the orders and catalog inboxes), apply it once. The DLQ's
//! creation time keeps ids unique across a re-created DLQ, which numbers from 1 again
//! (a bare `<seq>` id repeated one the target still held: acked as a duplicate, never
//! stored, and the dead letter deleted — lost).

use async_nats::{HeaderMap, jetstream};
use serde::Serialize;
use souk_pipelines::headers;

use super::{STREAM, copyable_headers, get};
use crate::{
    Error, Result,
    publisher::{Ack, OutgoingMessage, Publisher},
};

/// What one redrive did.
#[derive(Debug, Clone, Serialize)]
pub struct Redriven {
    /// The dead letter's sequence (now deleted from the DLQ).
    pub seq: u64,
    pub consumer: String,
    pub subject: String,
    /// Where the copy is stored.
    pub stream: String,
    pub stream_seq: u64,
    /// The copy's `Nats-Msg-Id`.
    pub msg_id: String,
    /// Its `souk-redrives` count.
    pub redrives: u32,
    /// The target stream already held this copy (an earlier redrive published it and
    /// did not get to delete the dead letter).
    pub duplicate: bool,
}

/// Redrive dead letter `seq` (see the module docs): [`publish_copy`], then delete it.
pub async fn redrive(publisher: &Publisher, seq: u64) -> Result<Redriven> {
    let redriven = publish_copy(publisher, seq).await?;
    let js = publisher.jetstream();
    let stream = js.get_stream(STREAM).await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?;
    match stream.delete_message(seq).await {
        Ok(_) => {}
        // Deleted meanwhile by a redrive running beside this one: the same copy, once.
        Err(e) if letter_gone(&e) => {}
        Err(e) => return Err(Error::Nats(format!("removing {STREAM} seq {seq}: {e}"))),
    }
    metrics::counter!("souk_dlq_redriven_total", "consumer" => redriven.consumer.clone()).increment(1);
    Ok(redriven)
}

/// The first half of a redrive: publish dead letter `seq`'s copy and await its PubAck,
/// keeping the dead letter — what a redrive that crashed before its delete leaves.
pub async fn publish_copy(publisher: &Publisher, seq: u64) -> Result<Redriven> {
    let js = publisher.jetstream();
    let letter = get(js, seq).await?;
    if letter.subject.is_empty() {
        return Err(Error::Refused(format!("{STREAM} seq {seq} has no {} header", headers::DLQ_SUBJECT)));
    }
    let redrives = letter.redrives.saturating_add(1);
    let mut original = HeaderMap::new();
    for (name, values) in copyable_headers(&letter.headers).iter() {
        let name: &str = name.as_ref();
        if name.starts_with("souk-dlq-") || name.eq_ignore_ascii_case(headers::REDRIVES) {
            continue;
        }
        for v in values {
            original.append(name, v.as_str());
        }
    }
    original.insert(headers::REDRIVES, redrives.to_string().as_str());
    let stream = js.get_stream(STREAM).await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?;
    let created = stream.cached_info().created.unix_timestamp_nanos();
    let msg_id = format!("redrive:{created}:{seq}:{redrives}");
    let ack = publisher
        .publish(OutgoingMessage {
            subject: letter.subject.clone(),
            msg_id: msg_id.clone(),
            headers: original,
            payload: letter.payload.clone(),
        })
        .await?;
    if ack.duplicate {
        check_earlier_redrive(js, &ack, &msg_id, &letter.payload).await?;
    }
    Ok(Redriven {
        seq,
        consumer: letter.consumer,
        subject: letter.subject,
        stream: ack.stream,
        stream_seq: ack.sequence,
        msg_id,
        redrives,
        duplicate: ack.duplicate,
    })
}

/// [`redrive`] under its former name, answering the PubAck.
pub async fn replay(publisher: &Publisher, seq: u64) -> Result<Ack> {
    let r = redrive(publisher, seq).await?;
    Ok(Ack { stream: r.stream, sequence: r.stream_seq, duplicate: r.duplicate })
}

/// Whether a delete failed because the message is already gone: nats-server answers a
/// delete of a missing sequence with err_code 10057 ("no message found"), or 10043
/// ("sequence not found") when it is past the stream's first/last bounds; a get with 10037.
pub(super) fn letter_gone(e: &jetstream::stream::DeleteMessageError) -> bool {
    matches!(e.kind(), jetstream::stream::DeleteMessageErrorKind::JetStream(j)
        if matches!(j.error_code().0, 10057 | 10043 | 10037))
}

/// A duplicate ack for a redrive: the message it names (unless since handled and
/// purged) must be this dead letter's earlier redrive, or the dead letter is kept.
async fn check_earlier_redrive(
    js: &jetstream::Context,
    ack: &Ack,
    msg_id: &str,
    payload: &[u8],
) -> Result<()> {
    let target =
        js.get_stream(&ack.stream).await.map_err(|e| Error::Nats(format!("stream {}: {e}", ack.stream)))?;
    match target.get_raw_message(ack.sequence).await {
        Ok(stored) => {
            let id = stored.headers.get(headers::MSG_ID).map(|v| v.as_str().to_owned());
            if id.as_deref() == Some(msg_id) && stored.payload[..] == *payload {
                Ok(())
            } else {
                Err(Error::Refused(format!(
                    "redrive {msg_id} acked as a duplicate of {} seq {}, which is another message; dead letter kept",
                    ack.stream, ack.sequence
                )))
            }
        }
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => Ok(()),
        Err(e) => Err(Error::Nats(format!("{} seq {}: {e}", ack.stream, ack.sequence))),
    }
}
