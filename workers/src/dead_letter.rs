//! What the dead-letter handlers read off a dead letter, the same for every command:
//! why it was dead-lettered, and which request it was when its body is unreadable.

use souk_pipelines::headers;
use souk_topologies::runtime::Delivery;
use sqlx::types::Uuid;

/// Why the command was dead-lettered (`souk-dlq-error`).
pub(crate) fn reason(d: &Delivery) -> String {
    d.header(headers::DLQ_ERROR).unwrap_or("dead-lettered").to_owned()
}

/// The id the ingress gave the request (order id, write id): the last part of the
/// command's message id (`<command>:<tenant>:<id>`). A redriven command was published
/// under a `redrive:…` id (older releases: `replay:…`), so its dead letter names that one; its causation id (the
/// original message id, kept by a redrive) still names the request.
pub(crate) fn original_id(d: &Delivery) -> Option<Uuid> {
    [headers::DLQ_MSG_ID, headers::CAUSATION_ID]
        .into_iter()
        .filter_map(|name| d.header(name)?.rsplit(':').next())
        .find_map(|id| Uuid::parse_str(id).ok())
}
