//! Operating on the dead-letter stream: list what is there and why (filtered by
//! consumer, error text and time), show one with its headers and body, redrive dead
//! letters to the subject they came from once their cause is fixed ([`redrive`]), and
//! purge them ([`purge`]). The dashboard and the CLI call these same functions.

use async_nats::{HeaderMap, jetstream};
use serde::Serialize;
use souk_pipelines::{headers, subjects};
use std::time::SystemTime;

use crate::{Error, Result};

mod redrive;
mod select;

pub use redrive::{Redriven, publish_copy, redrive, replay};
pub use select::{Filter, Purged, Selection, purge, select};

/// The dead-letter stream declared in the topology.
pub const STREAM: &str = "DLQ";

/// One dead letter, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Sequence in the `DLQ` stream (what `redrive`, `show` and `purge` take).
    pub seq: u64,
    pub consumer: String,
    pub subject: String,
    pub attempts: String,
    /// The last error (the reason it was dead-lettered).
    pub error: String,
    pub trace_id: String,
    /// When it was dead-lettered (RFC 3339); the same as `last_failure`.
    pub time: String,
    /// When it first failed, as far as the process that dead-lettered it knew
    /// (RFC 3339; its last failure when that process saw only one failure).
    pub first_failure: String,
    /// When it was dead-lettered (RFC 3339).
    pub last_failure: String,
    /// How many times it was redriven before (0: never).
    pub redrives: u32,
    pub payload_bytes: usize,
    #[serde(skip)]
    stored_at: SystemTime,
    #[serde(skip)]
    headers: HeaderMap,
    #[serde(skip)]
    payload: bytes::Bytes,
}

impl DeadLetter {
    /// When JetStream stored it.
    pub fn stored_at(&self) -> SystemTime {
        self.stored_at
    }
}

/// One dead letter with everything it carries: `souk dlq show`.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterDetail {
    #[serde(flatten)]
    pub letter: DeadLetter,
    /// Every header, in order (a name may repeat).
    pub headers: Vec<(String, String)>,
    /// The body as JSON when it is JSON.
    pub body_json: Option<serde_json::Value>,
    /// The body as text when it is UTF-8 but not JSON; when it is neither, a note
    /// saying so (its bytes are not printed).
    pub body_text: Option<String>,
}

/// Up to `limit` dead letters, oldest first.
pub async fn list(js: &jetstream::Context, limit: usize) -> Result<Vec<DeadLetter>> {
    list_filtered(js, &Filter::default(), limit).await
}

/// Up to `limit` dead letters that `filter` selects, oldest first. Only the matching
/// consumer's subject is read when the filter names one (JetStream skips the others).
pub async fn list_filtered(
    js: &jetstream::Context,
    filter: &Filter,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    let stream = js.get_stream(STREAM).await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?;
    let subject = match &filter.consumer {
        Some(c) => subjects::dead_letter(c),
        None => format!("{}.>", subjects::DEAD_LETTERS),
    };
    let mut out = Vec::new();
    let mut from = 1;
    while out.len() < limit {
        match stream.get_first_raw_message_by_subject(subject.as_str(), from).await {
            Ok(m) => {
                from = m.sequence + 1;
                let letter = describe(m);
                if filter.until.is_some_and(|until| letter.stored_at > until) {
                    break; // stored in order: everything after is later still
                }
                if filter.matches(&letter) {
                    out.push(letter);
                }
            }
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(Error::Nats(format!("{STREAM} from seq {from}: {e}"))),
        }
    }
    Ok(out)
}

/// Dead letter `seq` with its headers and body.
pub async fn show(js: &jetstream::Context, seq: u64) -> Result<DeadLetterDetail> {
    let letter = get(js, seq).await?;
    let headers = letter
        .headers
        .iter()
        .flat_map(|(name, values)| {
            let name: &str = name.as_ref();
            values.iter().map(move |v| (name.to_owned(), v.as_str().to_owned()))
        })
        .collect();
    let (body_json, body_text) = match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
        Ok(v) => (Some(v), None),
        Err(_) => match std::str::from_utf8(&letter.payload) {
            Ok(text) => (None, Some(text.to_owned())),
            Err(_) => (None, Some(format!("<{} bytes, not UTF-8>", letter.payload.len()))),
        },
    };
    Ok(DeadLetterDetail { letter, headers, body_json, body_text })
}

/// Dead letter `seq`; [`Error::NotFound`] when the DLQ holds no such sequence.
pub(crate) async fn get(js: &jetstream::Context, seq: u64) -> Result<DeadLetter> {
    let stream = js.get_stream(STREAM).await.map_err(|e| Error::Nats(format!("stream {STREAM}: {e}")))?;
    match stream.get_raw_message(seq).await {
        Ok(m) if m.subject.starts_with(subjects::DEAD_LETTERS) => Ok(describe(m)),
        Ok(_) => Err(Error::NotFound(format!("{STREAM} seq {seq} is not a dead letter"))),
        Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
            Err(Error::NotFound(format!("no dead letter #{seq}")))
        }
        Err(e) => Err(Error::Nats(format!("{STREAM} seq {seq}: {e}"))),
    }
}

fn describe(m: jetstream::message::StreamMessage) -> DeadLetter {
    let h = |name: &str| m.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
    let last_failure = rfc3339(m.time);
    let first_failure = Some(h(headers::DLQ_FIRST_FAILURE)).filter(|s| !s.is_empty());
    DeadLetter {
        seq: m.sequence,
        consumer: h(headers::DLQ_CONSUMER),
        subject: h(headers::DLQ_SUBJECT),
        attempts: h(headers::DLQ_ATTEMPTS),
        error: h(headers::DLQ_ERROR),
        trace_id: h(headers::DLQ_TRACE_ID),
        time: last_failure.clone(),
        first_failure: first_failure.unwrap_or_else(|| last_failure.clone()),
        last_failure,
        redrives: h(headers::REDRIVES).parse().unwrap_or(0),
        payload_bytes: m.payload.len(),
        stored_at: m.time.into(),
        headers: m.headers,
        payload: m.payload,
    }
}

/// RFC 3339 text of a stored message's time.
pub(crate) fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| t.to_string())
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
