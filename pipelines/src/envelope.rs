//! The envelope: how a typed message becomes bytes plus a schema header, and back.
//!
//! Payloads are JSON. The `souk-schema` header names the type and version
//! (`orders.place/v1`); readers accept the current version and the one before it, so a
//! rolling deploy never strands messages written by the previous release. A version
//! *newer* than the reader knows is not malformed: it was written by a release the reader
//! has not been upgraded to yet ([`DecodeError::NewerVersion`], [`newer_version`]), and
//! the runtime defers it instead of dead-lettering it. Only undecodable payloads (and
//! schemas no release of this reader writes) are fatal.

use serde::{Serialize, de::DeserializeOwned};

/// A message type with a subject and a schema version.
pub trait Message: Serialize + DeserializeOwned {
    /// Subject it is published on.
    const SUBJECT: &'static str;
    /// Schema name, e.g. `orders.place`.
    const SCHEMA: &'static str;
    /// Current schema version written by this release.
    const VERSION: u16;

    /// The `souk-schema` header value for the current version.
    fn schema_header() -> String {
        format!("{}/v{}", Self::SCHEMA, Self::VERSION)
    }
}

/// Why a payload could not be decoded. The bytes will not change: fatal, except for
/// [`DecodeError::NewerVersion`], which the reader's next release will read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("missing souk-schema header")]
    MissingSchema,
    /// Written by a newer release (a rolling deploy upgraded a writer first).
    #[error("schema {found:?} is newer than this reader knows ({expected} up to v{max})")]
    NewerVersion { found: String, expected: &'static str, max: u16 },
    #[error("schema {found:?} is not {expected} v{min}..=v{max}")]
    WrongSchema { found: String, expected: &'static str, min: u16, max: u16 },
    #[error("invalid {schema} payload: {source}")]
    Payload { schema: String, source: serde_json::Error },
}

/// Serialise a message to its JSON payload.
pub fn encode<M: Message>(message: &M) -> Vec<u8> {
    // Serialising our own plain structs to JSON cannot fail (no maps with non-string keys).
    serde_json::to_vec(message).unwrap_or_default()
}

impl DecodeError {
    /// Whether a later release of the reader will decode it (so: wait, do not give up).
    pub fn is_newer_version(&self) -> bool {
        matches!(self, DecodeError::NewerVersion { .. })
    }
}

/// The version a `souk-schema` header gives for `M`'s schema (`None`: another schema, or
/// no version).
fn version_of<M: Message>(schema: &str) -> Option<u16> {
    schema.split_once("/v").filter(|(name, _)| *name == M::SCHEMA).and_then(|(_, v)| v.parse::<u16>().ok())
}

/// `Some(version)` when `schema` names `M` at a version newer than this release reads.
/// Cheap (the header only), for a runtime deciding before anything else whether a
/// message must wait for the reader's upgrade.
pub fn newer_version<M: Message>(schema: Option<&str>) -> Option<u16> {
    schema.and_then(version_of::<M>).filter(|v| *v > M::VERSION)
}

/// Decode a payload, checking the schema header: current or previous version.
pub fn decode<M: Message>(schema: Option<&str>, payload: &[u8]) -> Result<M, DecodeError> {
    let schema = schema.ok_or(DecodeError::MissingSchema)?;
    let min = M::VERSION.saturating_sub(1).max(1);
    if newer_version::<M>(Some(schema)).is_some() {
        return Err(DecodeError::NewerVersion {
            found: schema.to_owned(),
            expected: M::SCHEMA,
            max: M::VERSION,
        });
    }
    let accepted = version_of::<M>(schema).is_some_and(|v| (min..=M::VERSION).contains(&v));
    if !accepted {
        return Err(DecodeError::WrongSchema {
            found: schema.to_owned(),
            expected: M::SCHEMA,
            min,
            max: M::VERSION,
        });
    }
    serde_json::from_slice(payload)
        .map_err(|source| DecodeError::Payload { schema: schema.to_owned(), source })
}
