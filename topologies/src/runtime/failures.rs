//! Recording failures for `souk trace`: each failed handler attempt and each dead
//! letter's place go to the pool's [`FailureLog`] — from a bounded queue, by a writer
//! task of the pool, never from the path of a message. A message's outcome is decided
//! and settled whatever happens to its record: a full queue drops the record, a log
//! that fails loses the batch it was writing; both are counted
//! (`souk_worker_failure_records_lost_total{pool, reason}`) and warned of at most once a
//! minute.
//!
//! What is recorded is bounded by what happens to messages, not by how often the
//! runtime retries: an attempt is recorded when a handler ran and failed, once per
//! delivery. A dependency failure holds its delivery and re-runs it after every passing
//! probe of the pool's breaker; only the first failure of that delivery is recorded
//! (`held`), so an outage costs at most one row per held delivery — a pool's
//! concurrency — however long it lasts (and, since the breaker stops fetching, no
//! more deliveries). Deferrals of a too-new schema are not attempts (the handler did
//! not run) and are not recorded; nor is a delivery past max-deliver dead-lettered
//! unrun (its dead letter is).

use chrono::{DateTime, Utc};
use souk_pipelines::follow::{
    AfterFailure, DeadLettered, FailedAttempt, FailureClass, FailureLog, bounded_error,
};
use std::{sync::Arc, time::Duration};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use super::{Delivery, ErrorClass, HandlerError, ledger::RateLimitedWarning};

/// Records waiting for the writer, per pool. A failure storm beyond this (the log far
/// slower than failures come) drops records rather than holding memory or messages.
pub(super) const QUEUE: usize = 4096;
/// Attempts written in one statement at most.
const BATCH: usize = 256;
/// Longest one write may take before its records are given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a stopping pool waits for its queued records to be written.
const FLUSH_AT_STOP: Duration = Duration::from_secs(5);

/// One record for the log.
#[derive(Debug)]
enum Record {
    Attempt(FailedAttempt),
    DeadLetter(DeadLettered),
}

/// The pool's side of the queue.
#[derive(Debug, Clone)]
pub(super) struct Recorder {
    pool: String,
    tx: mpsc::Sender<Record>,
    warning: Arc<RateLimitedWarning>,
}

/// The writer task of one pool; [`Writer::stop`] flushes what is queued (bounded) and ends it.
#[derive(Debug)]
pub(super) struct Writer {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Writer {
    /// Write what is queued, for at most [`FLUSH_AT_STOP`]; what is left then is lost.
    pub(super) async fn stop(self) {
        let Writer { stop, mut task } = self;
        stop.cancel();
        if tokio::time::timeout(FLUSH_AT_STOP, &mut task).await.is_err() {
            task.abort();
            tracing::warn!("failure records not written by shutdown: lost (the messages' outcomes stand)");
        }
    }
}

/// Start the writer of `pool`'s records to `log`.
pub(super) fn spawn(pool: &str, log: Arc<dyn FailureLog>) -> (Recorder, Writer) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let warning = Arc::new(RateLimitedWarning::new(Duration::from_secs(60)));
    let recorder = Recorder { pool: pool.to_owned(), tx, warning: warning.clone() };
    let stop = CancellationToken::new();
    let task = tokio::spawn(write(pool.to_owned(), log, rx, warning, stop.clone()));
    (recorder, Writer { stop, task })
}

/// The class of a failed attempt's error (timeouts and panics are the runtime's
/// retryable errors, told apart by their codes).
pub(super) fn class_of(error: &HandlerError) -> FailureClass {
    match (error.class, error.code) {
        (_, "handler_timeout") if error.class != ErrorClass::Dependency => FailureClass::Timeout,
        (_, "handler_panic") => FailureClass::Panic,
        (ErrorClass::Retryable | ErrorClass::TooNew | ErrorClass::Waiting, _) => FailureClass::Retryable,
        (ErrorClass::Poison, _) => FailureClass::Poison,
        (ErrorClass::Dependency, _) => FailureClass::Dependency,
    }
}

impl Recorder {
    /// Delivery `delivery`'s attempt failed with `error` (now), and the runtime did `then`.
    pub(super) fn attempt(&self, delivery: &Delivery, error: &HandlerError, then: AfterFailure) {
        self.attempt_at(delivery, error, then, Utc::now());
    }

    /// [`Recorder::attempt`], failed at `at`.
    pub(super) fn attempt_at(
        &self,
        delivery: &Delivery,
        error: &HandlerError,
        then: AfterFailure,
        at: DateTime<Utc>,
    ) {
        self.send(Record::Attempt(FailedAttempt {
            consumer: delivery.consumer.clone(),
            message_id: delivery.message_id.clone(),
            stream: delivery.stream.clone(),
            stream_seq: delivery.stream_sequence,
            delivery: delivery.attempt,
            class: class_of(error),
            code: error.code.to_owned(),
            error: bounded_error(&error.message),
            then,
            at,
        }));
    }

    /// A dead letter was stored (its PubAck is in).
    pub(super) fn dead_letter(&self, letter: DeadLettered) {
        self.send(Record::DeadLetter(letter));
    }

    fn send(&self, record: Record) {
        if let Err(e) = self.tx.try_send(record) {
            let (reason, why) = match e {
                mpsc::error::TrySendError::Full(_) => ("queue_full", "the record queue is full"),
                mpsc::error::TrySendError::Closed(_) => ("stopped", "the record writer has stopped"),
            };
            lost(&self.pool, reason, 1, &self.warning, &why);
        }
    }
}

fn lost(
    pool: &str,
    reason: &'static str,
    n: usize,
    warning: &RateLimitedWarning,
    why: &dyn std::fmt::Display,
) {
    if n == 0 {
        return;
    }
    metrics::counter!("souk_worker_failure_records_lost_total", "pool" => pool.to_owned(), "reason" => reason)
        .increment(n as u64);
    if let Some(suppressed) = warning.due() {
        tracing::warn!(
            pool,
            reason,
            records = n,
            suppressed,
            error = %why,
            "failure records for souk trace lost (the messages' outcomes stand)"
        );
    }
}

async fn write(
    pool: String,
    log: Arc<dyn FailureLog>,
    mut rx: mpsc::Receiver<Record>,
    warning: Arc<RateLimitedWarning>,
    stop: CancellationToken,
) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        let got = tokio::select! {
            n = rx.recv_many(&mut buf, BATCH) => n,
            _ = stop.cancelled() => break,
        };
        if got == 0 {
            return;
        }
        flush(&pool, log.as_ref(), &mut buf, &warning).await;
    }
    // Stopping: write what is queued (bounded by `Writer::stop`).
    rx.close();
    while rx.recv_many(&mut buf, BATCH).await > 0 {
        flush(&pool, log.as_ref(), &mut buf, &warning).await;
    }
}

/// Write `buf` (attempts in one statement, each dead letter on its own), then empty it.
async fn flush(pool: &str, log: &dyn FailureLog, buf: &mut Vec<Record>, warning: &RateLimitedWarning) {
    let mut attempts = Vec::new();
    let mut letters = Vec::new();
    for record in buf.drain(..) {
        match record {
            Record::Attempt(a) => attempts.push(a),
            Record::DeadLetter(l) => letters.push(l),
        }
    }
    if !attempts.is_empty() {
        match tokio::time::timeout(WRITE_TIMEOUT, log.record_attempts(&attempts)).await {
            Ok(Ok(())) => {
                metrics::counter!("souk_worker_failure_records_total", "pool" => pool.to_owned(), "kind" => "attempt")
                    .increment(attempts.len() as u64)
            }
            Ok(Err(e)) => lost(pool, "store_error", attempts.len(), warning, &e),
            Err(_) => lost(pool, "store_timeout", attempts.len(), warning, &"the write timed out"),
        }
    }
    for letter in &letters {
        match tokio::time::timeout(WRITE_TIMEOUT, log.record_dead_letter(letter)).await {
            Ok(Ok(())) => metrics::counter!(
                "souk_worker_failure_records_total", "pool" => pool.to_owned(), "kind" => "dead_letter"
            )
            .increment(1),
            Ok(Err(e)) => lost(pool, "store_error", 1, warning, &e),
            Err(_) => lost(pool, "store_timeout", 1, warning, &"the write timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_and_panics_are_told_apart_from_other_retryable_errors() {
        let retryable = HandlerError::retryable("pg_deadlock", "x");
        assert_eq!(class_of(&retryable), FailureClass::Retryable);
        assert_eq!(class_of(&HandlerError::retryable("handler_timeout", "x")), FailureClass::Timeout);
        assert_eq!(class_of(&HandlerError::retryable("handler_panic", "x")), FailureClass::Panic);
        assert_eq!(class_of(&HandlerError::poison("bad", "x")), FailureClass::Poison);
        // A timeout whose probe failed too is the dependency's.
        assert_eq!(class_of(&HandlerError::dependency("handler_timeout", "x")), FailureClass::Dependency);
        assert_eq!(class_of(&HandlerError::dependency("pg_unavailable", "x")), FailureClass::Dependency);
    }
}
