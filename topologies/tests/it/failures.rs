//! Failed attempts recorded for `souk trace` (a `FailureLog`): one record per failed
//! delivery, with its class and what the runtime did then; an outage's held delivery
//! once, not once per probe; and a log that fails or hangs changes no message's outcome.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::follow::{
    AfterFailure, DeadLettered, FailedAttempt, FailureClass, FailureLog, MAX_ATTEMPT_ERROR, SourceError,
};
use souk_topologies::{
    publisher::OutgoingMessage,
    runtime::{Delivery, Handler, HandlerError, Outcome, Pool, Registry},
};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

use crate::{Env, env};

const SUBJECT: &str = "souk.cmd.test.work";

/// How the log behaves.
#[derive(Clone, Copy, Default, PartialEq)]
enum Mode {
    #[default]
    Works,
    Fails,
    Hangs,
}

/// A failure log in memory.
#[derive(Clone, Default)]
struct MemoryLog {
    mode: Mode,
    attempts: Arc<Mutex<Vec<FailedAttempt>>>,
    letters: Arc<Mutex<Vec<DeadLettered>>>,
    /// Writes asked for (also those that failed or hung).
    writes: Arc<AtomicUsize>,
}

impl MemoryLog {
    fn answer(&self) -> BoxFuture<'static, Result<(), SourceError>> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        let mode = self.mode;
        async move {
            match mode {
                Mode::Works => Ok(()),
                Mode::Fails => Err("connection refused".into()),
                Mode::Hangs => futures::future::pending().await,
            }
        }
        .boxed()
    }

    fn attempts(&self) -> Vec<FailedAttempt> {
        self.attempts.lock().expect("lock").clone()
    }
}

impl FailureLog for MemoryLog {
    fn record_attempts<'a>(
        &'a self,
        attempts: &'a [FailedAttempt],
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        if self.mode == Mode::Works {
            self.attempts.lock().expect("lock").extend_from_slice(attempts);
        }
        self.answer()
    }

    fn record_dead_letter<'a>(&'a self, letter: &'a DeadLettered) -> BoxFuture<'a, Result<(), SourceError>> {
        if self.mode == Mode::Works {
            self.letters.lock().expect("lock").push(letter.clone());
        }
        self.answer()
    }
}

/// A handler driven by the payload: `ok`, `retry` (retryable until its third delivery),
/// `retry-always`, `panic`, `poison`, `long` (a retryable error of 5,000 characters),
/// `outage` (a dependency failure on its first four runs, while the probe passes).
#[derive(Clone, Default)]
struct Scripted {
    runs: Arc<Mutex<HashMap<String, usize>>>,
    handled: Arc<Mutex<Vec<String>>>,
}

impl Handler for Scripted {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).to_string();
            let runs = {
                let mut runs = self.runs.lock().expect("lock");
                let n = runs.entry(body.clone()).or_default();
                *n += 1;
                *n
            };
            let retry =
                || HandlerError::retryable("conflict", "lost a race").after(Duration::from_millis(20));
            let outcome: Outcome = match body.as_str() {
                "retry" if d.attempt < 3 => retry().into(),
                "retry-always" => retry().into(),
                "panic" => panic!("handler bug"),
                "poison" => Outcome::fail("unparseable", "not an order"),
                "long" => HandlerError::retryable("verbose", "x".repeat(5000)).into(),
                "outage" if runs <= 4 => Outcome::unavailable("store_down", "connection refused"),
                _ => Outcome::Ack,
            };
            if outcome == Outcome::Ack {
                self.handled.lock().expect("lock").push(body);
            }
            outcome
        }
        .boxed()
    }

    // The dependency answers probes: a delivery that still fails is held again.
    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        async { Ok(()) }.boxed()
    }
}

async fn publish(env: &Env, bodies: &[&str]) -> anyhow::Result<()> {
    for body in bodies {
        env.publisher
            .publish(OutgoingMessage {
                subject: SUBJECT.into(),
                msg_id: format!("id-{body}"),
                headers: async_nats::HeaderMap::new(),
                payload: body.to_string().into(),
            })
            .await?;
    }
    Ok(())
}

async fn start(
    env: &Env,
    handler: Scripted,
    log: MemoryLog,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let mut registry = Registry::default();
    registry.register("test", handler);
    let pool =
        Pool::build(&env.publisher, &env.topology, "work", &registry).await?.failure_log(Arc::new(log));
    let cancel = CancellationToken::new();
    Ok((cancel.clone(), tokio::spawn(pool.run(cancel))))
}

async fn idle(env: &Env) -> anyhow::Result<Option<()>> {
    souk_testkit::drained(&env.js, "CMD", "work").await
}

async fn dead_lettered(env: &Env) -> anyhow::Result<u64> {
    Ok(env.js.get_stream("DLQ").await?.get_info().await?.state.messages)
}

/// (delivery, class, then) of `body`'s recorded attempts, in order.
fn of(attempts: &[FailedAttempt], body: &str) -> Vec<(u64, FailureClass, AfterFailure)> {
    let id = format!("id-{body}");
    attempts
        .iter()
        .filter(|a| a.message_id.as_deref() == Some(id.as_str()))
        .map(|a| (a.delivery, a.class, a.then))
        .collect()
}

#[tokio::test]
async fn each_failed_delivery_is_recorded_with_its_class_and_what_was_done_then() -> anyhow::Result<()> {
    let env = env().await?; // max-deliver 3
    let (handler, log) = (Scripted::default(), MemoryLog::default());
    publish(&env, &["ok", "retry", "retry-always", "panic", "poison", "long"]).await?;
    let (cancel, run) = start(&env, handler.clone(), log.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(20), || async {
        anyhow::Ok((dead_lettered(&env).await? == 4).then_some(()))
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || idle(&env)).await?;
    // Records are written behind the messages: they arrive shortly after.
    souk_testkit::eventually(Duration::from_secs(10), || async {
        (log.attempts().len() == 2 + 3 + 3 + 1 + 3 && log.letters.lock().ok()?.len() == 4).then_some(())
    })
    .await?;
    cancel.cancel();
    run.await?;

    let attempts = log.attempts();
    use AfterFailure::{DeadLetter, Retry};
    use FailureClass::{Panic, Poison, Retryable};
    assert!(of(&attempts, "ok").is_empty(), "a success records nothing");
    assert_eq!(of(&attempts, "retry"), [(1, Retryable, Retry), (2, Retryable, Retry)], "then handled");
    assert_eq!(
        of(&attempts, "retry-always"),
        [(1, Retryable, Retry), (2, Retryable, Retry), (3, Retryable, DeadLetter)]
    );
    assert_eq!(of(&attempts, "panic"), [(1, Panic, Retry), (2, Panic, Retry), (3, Panic, DeadLetter)]);
    assert_eq!(of(&attempts, "poison"), [(1, Poison, DeadLetter)]);
    let retried = attempts.iter().find(|a| a.message_id.as_deref() == Some("id-retry")).expect("recorded");
    assert_eq!((retried.consumer.as_str(), retried.stream.as_str()), ("work", "CMD"));
    assert_eq!((retried.code.as_str(), retried.error.as_str()), ("conflict", "lost a race"));
    let panicked = attempts.iter().find(|a| a.class == Panic).expect("recorded");
    assert_eq!(panicked.error, "handler panicked: handler bug");
    let long = attempts.iter().find(|a| a.code == "verbose").expect("recorded");
    assert_eq!(long.error.chars().count(), MAX_ATTEMPT_ERROR, "errors are bounded");
    // The dead-lettering attempt is timed before its dead letter was stored, and each
    // message's attempts in delivery order.
    let letters = log.letters.lock().expect("lock").clone();
    let always = letters.iter().find(|l| l.message_id.as_deref() == Some("id-retry-always")).expect("letter");
    assert_eq!(always.attempts, 3);
    let seq =
        attempts.iter().find(|a| a.message_id.as_deref() == Some("id-retry-always")).map(|a| a.stream_seq);
    assert_eq!(Some(always.stream_seq), seq);
    assert_eq!(handler.handled.lock().expect("lock").len(), 2, "ok and retry");
    Ok(())
}

/// A dependency that keeps failing while its probe passes re-runs the held delivery
/// after every probe: one record (`held`) for the delivery, not one per run.
#[tokio::test]
async fn a_held_delivery_is_recorded_once_however_often_it_is_re_run() -> anyhow::Result<()> {
    let env = env().await?;
    let (handler, log) = (Scripted::default(), MemoryLog::default());
    publish(&env, &["outage"]).await?;
    let (cancel, run) = start(&env, handler.clone(), log.clone()).await?;
    souk_testkit::eventually(Duration::from_secs(30), || async {
        (handler.handled.lock().ok()?.len() == 1).then_some(())
    })
    .await?;
    souk_testkit::eventually(Duration::from_secs(10), || idle(&env)).await?;
    cancel.cancel();
    run.await?; // the writer flushes before the pool returns
    assert_eq!(handler.runs.lock().expect("lock")["outage"], 5, "failed four times, then handled");
    assert_eq!(of(&log.attempts(), "outage"), [(1, FailureClass::Dependency, AfterFailure::Held)]);
    assert_eq!(dead_lettered(&env).await?, 0);
    Ok(())
}

/// The log is down (every write fails) or hangs: messages are handled, retried and
/// dead-lettered exactly as without it, and the pool still stops in time.
#[tokio::test]
async fn a_failing_or_hanging_failure_log_changes_no_outcome() -> anyhow::Result<()> {
    for mode in [Mode::Fails, Mode::Hangs] {
        let env = env().await?;
        let handler = Scripted::default();
        let log = MemoryLog { mode, ..MemoryLog::default() };
        publish(&env, &["ok", "retry", "poison"]).await?;
        let (cancel, run) = start(&env, handler.clone(), log.clone()).await?;
        souk_testkit::eventually(Duration::from_secs(20), || async {
            anyhow::Ok(
                (handler.handled.lock().expect("lock").len() == 2 && dead_lettered(&env).await? == 1)
                    .then_some(()),
            )
        })
        .await?;
        souk_testkit::eventually(Duration::from_secs(10), || idle(&env)).await?;
        assert!(log.writes.load(Ordering::SeqCst) >= 1, "the log was asked");
        cancel.cancel();
        // A hung write is given up at shutdown (bounded), not waited for.
        tokio::time::timeout(Duration::from_secs(30), run).await??;
        assert_eq!(stream_left(&env).await?, 0, "everything settled");
    }
    Ok(())
}

async fn stream_left(env: &Env) -> anyhow::Result<u64> {
    crate::stream_messages(&env.js, "CMD").await
}
