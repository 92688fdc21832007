//! Settling: map a handler's outcome to JetStream (ack, nak with delay, dead letter)
//! and decide when deliveries are used up.

use async_nats::jetstream::{self, AckKind};
use std::time::Duration;

use super::{Delivery, Outcome, dead_letter, pool::Ctx};
use crate::spec::ConsumerSpec;

/// A delivery past `max_deliver` is dead-lettered without running the handler: the
/// previous (last allowed) attempt never reported — the worker died or the ack was
/// lost mid-handling — so it is not run again.
pub(super) fn past_max_deliver(attempt: u64, max_deliver: u64) -> Option<Outcome> {
    (attempt > max_deliver).then(|| Outcome::Fail {
        reason: format!("delivered {attempt} times (max {max_deliver}); the last attempt did not finish"),
    })
}

/// Map an outcome to JetStream. Returns the metrics label.
pub(super) async fn settle(
    ctx: &Ctx,
    msg: &jetstream::Message,
    delivery: &Delivery,
    outcome: Outcome,
    max_deliver: u64,
) -> &'static str {
    let reason = match outcome {
        Outcome::Ack => {
            // A lost ack means a redelivery, which the handler's inbox turns into a no-op.
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered");
            }
            return "ack";
        }
        Outcome::Retry { after, error } if delivery.attempt < max_deliver => {
            let after = after.unwrap_or_else(|| backoff(&ctx.consumer, delivery.attempt));
            tracing::warn!(error = %error, retry_in = ?after, "handler failed; will retry");
            if let Err(e) = msg.ack_with(AckKind::Nak(Some(after))).await {
                tracing::warn!(error = %e, "nak failed; redelivery waits for the ack timeout");
            }
            return "retry";
        }
        Outcome::Retry { error, .. } => error,
        Outcome::Fail { reason } => reason,
    };
    tracing::error!(error = %reason, "dead-lettering message");
    if let Err(e) = dead_letter(&ctx.publisher, msg, delivery, &reason).await {
        tracing::error!(error = %e, "dead-letter publish failed; leaving the message for redelivery");
        let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
        return "dead_letter_failed";
    }
    "dead_letter"
}

/// The consumer's backoff step for this attempt (the last step repeats).
fn backoff(consumer: &ConsumerSpec, attempt: u64) -> Duration {
    let i = (attempt.saturating_sub(1) as usize).min(consumer.backoff.len().saturating_sub(1));
    consumer.backoff.get(i).copied().unwrap_or(Duration::from_secs(1))
}
