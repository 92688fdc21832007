//! Settling: map a handler's outcome to JetStream (ack, nak with delay, dead letter)
//! and decide when deliveries are used up.

use async_nats::jetstream::{self, AckKind};
use souk_pipelines::follow::AfterFailure;
use std::time::Duration;

use super::{
    Delivery, ErrorClass, HandlerError, Outcome,
    dead_letter::dead_letter_since,
    ledger::{History, Key},
    pool::Ctx,
};
use crate::spec::ConsumerSpec;

/// How long a message of a newer schema than the handler reads waits before it is
/// offered again: a rolling deploy replaces the readers within minutes, and until then
/// each offer costs a delivery and a header check. Such a message holds one of the
/// consumer's `max-ack-pending` slots while it waits.
pub(super) const TOO_NEW_DELAY: Duration = Duration::from_secs(60);
/// How long a delivery waiting for another delivery of the same work waits by default.
pub(super) const WAITING_DELAY: Duration = Duration::from_secs(10);

/// A delivery past `max_deliver` is dead-lettered without running the handler: the
/// previous (last allowed) attempt did not settle — its dead-letter publish failed, the
/// worker died, or the ack was lost mid-handling — so it is not run again. It carries
/// the last real error this pool saw for it (`history`); only a message whose history
/// this process does not know (another process, a restart) gets the generic reason.
pub(super) fn past_max_deliver(attempt: u64, max_deliver: u64, history: &History) -> Option<Outcome> {
    (attempt > max_deliver).then(|| {
        Outcome::Error(match &history.last_error {
            // The last allowed attempt failed with it (then its dead letter could not be stored).
            Some((error, at)) if *at >= max_deliver => HandlerError::poison(error.code, &error.message),
            Some((error, at)) => HandlerError::poison(
                error.code,
                format!("{} (attempt {at}; the last attempt, {max_deliver}, did not finish)", error.message),
            ),
            None => HandlerError::poison(
                "max_deliver_exceeded",
                format!("delivered {attempt} times (max {max_deliver}); the last attempt did not finish"),
            ),
        })
    })
}

/// A delivery past `max_deliver` whose extra run (see `last_run`) was given before and
/// never returned: the process running it died, so it is not run again.
pub(super) fn extra_run_unfinished(attempt: u64, max_deliver: u64) -> Outcome {
    Outcome::Error(HandlerError::poison(
        "max_deliver_exceeded",
        format!(
            "delivered {attempt} times (max {max_deliver}); the last attempt did not finish, \
             nor did the run it was given once more"
        ),
    ))
}

/// Hand `msg` back for `delay` as a deferral, not an attempt (the ledger subtracts it
/// from the delivery count): a too-new schema (its deliveries past max-deliver are never
/// dead-lettered, whatever the process).
async fn defer(ctx: &Ctx, msg: &jetstream::Message, key: Key, delay: Duration) -> &'static str {
    ctx.ledger.deferred(key);
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(delay))).await {
        tracing::warn!(error = %e, "nak failed; redelivery waits for the ack timeout");
    }
    "deferred"
}

/// Map an outcome to JetStream. Returns the metrics label. `ran`: the outcome is the
/// handler's (then a failure is recorded as a failed attempt, see `failures`), not the
/// runtime's decision before running it.
pub(super) async fn settle(
    ctx: &Ctx,
    msg: &jetstream::Message,
    delivery: &Delivery,
    key: Key,
    outcome: Outcome,
    max_deliver: u64,
    ran: bool,
) -> &'static str {
    let error = match outcome {
        Outcome::Ack => {
            ctx.ledger.forget(key);
            // A lost ack means a redelivery, which the handler's inbox turns into a no-op.
            if let Err(e) = msg.ack().await {
                tracing::warn!(error = %e, "ack failed; the message will be redelivered");
            }
            return "ack";
        }
        Outcome::Error(error) => error,
    };
    let attempt = |then: AfterFailure| attempt_at(ctx, ran, delivery, &error, then, chrono::Utc::now());
    match error.class {
        ErrorClass::TooNew => {
            metrics::counter!("souk_worker_unknown_schema_total", "pool" => ctx.pool.clone()).increment(1);
            if let Some(suppressed) = ctx.too_new_warning.due() {
                tracing::warn!(
                    code = error.code,
                    error = %error.message,
                    retry_in = ?TOO_NEW_DELAY,
                    suppressed,
                    "message too new for this release; deferred until the reader is upgraded (readers deploy before writers)"
                );
            }
            return defer(ctx, msg, key, TOO_NEW_DELAY).await;
        }
        // Never reached from a running pool (it keeps a waiting delivery, see
        // `execute::run_until_not_dependency`); should it be, a deferral.
        ErrorClass::Waiting => {
            return defer(ctx, msg, key, error.retry_after.unwrap_or(WAITING_DELAY)).await;
        }
        ErrorClass::Retryable if delivery.attempt < max_deliver => {
            attempt(AfterFailure::Retry);
            ctx.ledger.failed(key, delivery.attempt, &error);
            return retry(msg, &error, backoff(&ctx.consumer, delivery.attempt)).await;
        }
        // Never reached from a running pool (it holds such a delivery until its breaker
        // closes); should it be, a dependency failure is never dead-lettered.
        ErrorClass::Dependency => {
            attempt(AfterFailure::Retry);
            return retry(msg, &error, backoff(&ctx.consumer, delivery.attempt)).await;
        }
        ErrorClass::Retryable | ErrorClass::Poison => {}
    }
    // Timed before the dead letter is stored, so the trace shows the attempt first.
    let failed_at = chrono::Utc::now();
    let reason = error.to_string();
    tracing::error!(error = %reason, "dead-lettering message");
    let first_failure = ctx.ledger.get(key).first_failed_at;
    let stored = match dead_letter_since(&ctx.publisher, msg, delivery, &reason, first_failure).await {
        Ok(stored) => stored,
        Err(e) => {
            tracing::error!(error = %e, "dead-letter publish failed; leaving the message for redelivery");
            // The redelivery may come past max-deliver: it must still say why. Recorded as
            // the last allowed attempt's error: the decision to dead-letter stands.
            ctx.ledger.failed(key, delivery.attempt.max(max_deliver), &error);
            attempt_at(ctx, ran, delivery, &error, AfterFailure::DeadLetterFailed, failed_at);
            let _ = msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
            return "dead_letter_failed";
        }
    };
    ctx.ledger.forget(key);
    attempt_at(ctx, ran, delivery, &error, AfterFailure::DeadLetter, failed_at);
    record_dead_letter(ctx, delivery, &stored, &reason);
    "dead_letter"
}

/// Record a failed attempt (when the handler `ran`) timed `at`.
fn attempt_at(
    ctx: &Ctx,
    ran: bool,
    delivery: &Delivery,
    error: &HandlerError,
    then: AfterFailure,
    at: chrono::DateTime<chrono::Utc>,
) {
    if let Some(failures) = ctx.failures.as_ref().filter(|_| ran) {
        failures.attempt_at(delivery, error, then, at);
    }
}

/// Tell the pool's failure log where the copy is (`souk trace` finds it so). Best
/// effort, after the fact, through the pool's record queue: a store that is down must
/// not hold dead letters back; a record lost so leaves the trace without that dead
/// letter's place (DLQ still has it; its last attempt says `dead-letter`).
fn record_dead_letter(ctx: &Ctx, delivery: &Delivery, stored: &crate::publisher::Ack, error: &str) {
    let Some(failures) = &ctx.failures else { return };
    let letter = souk_pipelines::follow::DeadLettered {
        consumer: delivery.consumer.clone(),
        message_id: delivery.message_id.clone(),
        stream: delivery.stream.clone(),
        stream_seq: delivery.stream_sequence,
        dlq_stream: stored.stream.clone(),
        dlq_seq: stored.sequence,
        attempts: delivery.attempt,
        error: error.to_owned(),
    };
    failures.dead_letter(letter);
}

/// Nak for a later redelivery (after the error's own delay, else `step`).
async fn retry(msg: &jetstream::Message, error: &HandlerError, step: Duration) -> &'static str {
    let after = error.retry_after.unwrap_or(step);
    tracing::warn!(code = error.code, error = %error.message, retry_in = ?after, "handler failed; will retry");
    if let Err(e) = msg.ack_with(AckKind::Nak(Some(after))).await {
        tracing::warn!(error = %e, "nak failed; redelivery waits for the ack timeout");
    }
    "retry"
}

/// The pool shuts down while `msg` is held for an open breaker or waits,
/// or is paused when its wait ends: hand it back now (JetStream redelivers it, to this
/// or another process, as a new delivery). A pause's hand-back is remembered as a
/// deferral, not an attempt, for this process's next delivery of it (review, eleventh
/// session: a message that had failed an attempt here was dead-lettered unrun after a
/// pause handed it back on its last delivery).
pub(super) async fn hand_back(ctx: &Ctx, msg: &jetstream::Message, key: Key) -> &'static str {
    let shutdown = ctx.cancel.is_cancelled();
    if !shutdown {
        ctx.ledger.deferred(key);
    }
    if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "nak of a held message failed; redelivery waits for the ack timeout");
    }
    match shutdown {
        true => "held_at_shutdown",
        false => "handed_back_paused",
    }
}

/// The consumer's backoff step for this attempt (the last step repeats).
fn backoff(consumer: &ConsumerSpec, attempt: u64) -> Duration {
    let i = (attempt.saturating_sub(1) as usize).min(consumer.backoff.len().saturating_sub(1));
    consumer.backoff.get(i).copied().unwrap_or(Duration::from_secs(1))
}
