//! Choosing dead letters — by sequence, by filter, or all — and purging a choice.

use async_nats::jetstream;
use serde::Serialize;
use std::time::SystemTime;

use super::{DeadLetter, STREAM, get, list_filtered, redrive::letter_gone};
use crate::{Error, Result};

/// Which dead letters a listing, redrive or purge takes: every condition set must hold.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Filter {
    /// Dead-lettered by this consumer.
    pub consumer: Option<String>,
    /// Its error contains this text (case-insensitive).
    pub error: Option<String>,
    /// Dead-lettered at or after.
    #[serde(skip)]
    pub since: Option<SystemTime>,
    /// Dead-lettered at or before.
    #[serde(skip)]
    pub until: Option<SystemTime>,
}

impl Filter {
    /// Whether no condition is set (it selects everything).
    pub fn is_empty(&self) -> bool {
        self.consumer.is_none() && self.error.is_none() && self.since.is_none() && self.until.is_none()
    }

    /// Whether `letter` passes every condition.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.consumer.as_ref().is_none_or(|c| &letter.consumer == c)
            && self.error.as_ref().is_none_or(|e| letter.error.to_lowercase().contains(&e.to_lowercase()))
            && self.since.is_none_or(|t| letter.stored_at >= t)
            && self.until.is_none_or(|t| letter.stored_at <= t)
    }
}

/// An operator's choice of dead letters.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These sequences, each of which must be a dead letter.
    Seqs(Vec<u64>),
    /// Those the filter selects (refused when it is empty: say `All`).
    Matching(Filter),
    /// Every dead letter.
    All,
}

/// The dead letters `selection` names, oldest first. Sequences are checked first, all
/// of them: one that is not a dead letter refuses the whole selection
/// ([`Error::NotFound`]), so a typo never acts on half a list.
pub async fn select(js: &jetstream::Context, selection: &Selection) -> Result<Vec<DeadLetter>> {
    match selection {
        Selection::Seqs(seqs) if seqs.is_empty() => Err(Error::Invalid("no dead letters named".into())),
        Selection::Seqs(seqs) => {
            let mut seqs = seqs.clone();
            seqs.sort_unstable();
            seqs.dedup();
            let mut out = Vec::with_capacity(seqs.len());
            let mut missing = Vec::new();
            for seq in seqs {
                match get(js, seq).await {
                    Ok(letter) => out.push(letter),
                    Err(Error::NotFound(_)) => missing.push(seq.to_string()),
                    Err(e) => return Err(e),
                }
            }
            if !missing.is_empty() {
                return Err(Error::NotFound(format!(
                    "no dead letter #{} in {STREAM} (see `souk dlq list`); nothing done",
                    missing.join(", #")
                )));
            }
            Ok(out)
        }
        Selection::Matching(filter) if filter.is_empty() => {
            Err(Error::Invalid("an empty filter selects everything: say --all".into()))
        }
        Selection::Matching(filter) => list_filtered(js, filter, usize::MAX).await,
        Selection::All => list_filtered(js, &Filter::default(), usize::MAX).await,
    }
}

/// What a purge did: every sequence asked for is in `deleted` or `gone`, unless it
/// stopped at `error` (a JetStream failure; the rest were not tried).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Purged {
    pub deleted: Vec<u64>,
    /// Already gone (redriven or purged by another operator meanwhile).
    pub gone: Vec<u64>,
    pub error: Option<String>,
}

/// Delete dead letters `seqs` from the DLQ, and nothing else.
pub async fn purge(js: &jetstream::Context, seqs: &[u64]) -> Purged {
    let mut out = Purged::default();
    let stream = match js.get_stream(STREAM).await {
        Ok(s) => s,
        Err(e) => {
            out.error = Some(format!("stream {STREAM}: {e}"));
            return out;
        }
    };
    for &seq in seqs {
        match stream.delete_message(seq).await {
            Ok(_) => out.deleted.push(seq),
            Err(e) if letter_gone(&e) => out.gone.push(seq),
            Err(e) => {
                out.error = Some(format!("removing {STREAM} seq {seq}: {e}"));
                break;
            }
        }
    }
    metrics::counter!("souk_dlq_purged_total").increment(out.deleted.len() as u64);
    out
}
