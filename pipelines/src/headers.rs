//! Header names carried on every message (DESIGN.md §3).

/// JetStream de-duplication id.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace context, vendor part.
pub const TRACESTATE: &str = "tracestate";
/// Message type and version, e.g. `orders.place/v1`.
pub const SCHEMA: &str = "souk-schema";
/// Tenant the message belongs to.
pub const TENANT: &str = "souk-tenant";
/// Id of the message (or request) that caused this one.
pub const CAUSATION_ID: &str = "souk-causation-id";

/// Dead letters: the consumer that gave up on the message.
pub const DLQ_CONSUMER: &str = "souk-dlq-consumer";
/// Dead letters: the subject the message was originally published on.
pub const DLQ_SUBJECT: &str = "souk-dlq-subject";
/// Dead letters: the stream sequence of the original message.
pub const DLQ_STREAM_SEQ: &str = "souk-dlq-stream-seq";
/// Dead letters: how many deliveries were attempted.
pub const DLQ_ATTEMPTS: &str = "souk-dlq-attempts";
/// Dead letters: the last error, as the handler reported it.
pub const DLQ_ERROR: &str = "souk-dlq-error";
/// Dead letters: the trace id of the original message (from its `traceparent`).
pub const DLQ_TRACE_ID: &str = "souk-dlq-trace-id";
/// Dead letters: the stored original, `<stream>/<stream creation, unix ns>/<sequence>`,
/// unique across re-created streams (a re-created stream numbers from 1 again).
pub const DLQ_ORIGIN: &str = "souk-dlq-origin";
/// Dead letters: the original's `Nats-Msg-Id` (JetStream's own header is not copied).
pub const DLQ_MSG_ID: &str = "souk-dlq-msg-id";
/// Dead letters: when the message first failed in the process that dead-lettered it
/// (RFC 3339; the dead letter's own time is its last failure).
pub const DLQ_FIRST_FAILURE: &str = "souk-dlq-first-failure";
/// How many times an operator has redriven this message from the dead-letter stream
/// (absent: never). A redrive copies the original's headers, so the count carries over.
pub const REDRIVES: &str = "souk-redrives";
