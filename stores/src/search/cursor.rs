//! Opaque cursors: base64url of a JSON payload, signed with a per-process key where the
//! snapshot it names only lives in this process.

use super::{CursorProblem, SearchError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::hash::BuildHasher;

/// Longest cursor accepted, in bytes.
pub const MAX_CURSOR_BYTES: usize = 4096;

/// Signs cursors with a random key (SipHash, keyed per process): a cursor from another
/// process or with any byte changed is refused as malformed.
#[derive(Debug, Default)]
pub struct Signer {
    key: std::hash::RandomState,
}

impl Signer {
    pub fn encode<T: Serialize>(&self, payload: &T) -> String {
        let mut bytes = serde_json::to_vec(payload).unwrap_or_default();
        let mac = self.key.hash_one(&bytes);
        bytes.extend_from_slice(&mac.to_be_bytes());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode<T: DeserializeOwned>(&self, cursor: &str) -> Result<T, SearchError> {
        let bytes = raw_decode(cursor)?;
        let Some(split) = bytes.len().checked_sub(8) else {
            return Err(malformed());
        };
        let (json, mac) = bytes.split_at(split);
        if self.key.hash_one(json).to_be_bytes() != mac {
            return Err(malformed());
        }
        serde_json::from_slice(json).map_err(|_| malformed())
    }
}

/// An unsigned cursor (for stores whose snapshots are server-side and checked there).
pub fn encode_plain<T: Serialize>(payload: &T) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(payload).unwrap_or_default())
}

pub fn decode_plain<T: DeserializeOwned>(cursor: &str) -> Result<T, SearchError> {
    serde_json::from_slice(&raw_decode(cursor)?).map_err(|_| malformed())
}

fn raw_decode(cursor: &str) -> Result<Vec<u8>, SearchError> {
    if cursor.len() > MAX_CURSOR_BYTES {
        return Err(malformed());
    }
    URL_SAFE_NO_PAD.decode(cursor).map_err(|_| malformed())
}

fn malformed() -> SearchError {
    SearchError::BadCursor(CursorProblem::Malformed)
}
