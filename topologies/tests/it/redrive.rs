//! Dead letters as operators handle them: filtered listing, `show`, redrive once the
//! cause is fixed (handled once, even when redriven twice or after a crash between
//! the publish and the delete), purge of exactly the chosen sequences.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::headers;
use souk_topologies::{
    Error,
    dead_letters::{self, Filter, Selection},
    runtime::{Delivery, Handler, Outcome, Pool, Registry},
};
use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};
use tokio_util::sync::CancellationToken;

use crate::{Env, env, msg};

const SUBJECT: &str = "souk.cmd.test.work";
const WAIT: Duration = Duration::from_secs(20);

/// Each acked body with its `souk-redrives` header.
type Handled = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// Refuses `bad…` bodies as poison while `broken`; acks everything else. Records each
/// acked body with its `souk-redrives` header.
#[derive(Clone)]
struct Fixable {
    broken: Arc<AtomicBool>,
    handled: Handled,
}

impl Handler for Fixable {
    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let body = String::from_utf8_lossy(&d.payload).to_string();
            if body.contains("bad") && self.broken.load(Ordering::SeqCst) {
                return Outcome::fail("unreadable", format!("cannot read {body}"));
            }
            let redrives = d.headers.as_ref().and_then(|h| h.get(headers::REDRIVES)).map(|v| v.to_string());
            self.handled.lock().expect("lock").push((body, redrives));
            Outcome::Ack
        }
        .boxed()
    }
}

impl Fixable {
    fn new() -> Self {
        Fixable { broken: Arc::new(AtomicBool::new(true)), handled: Arc::default() }
    }

    fn times_handled(&self, body: &str) -> usize {
        self.handled.lock().expect("lock").iter().filter(|(b, _)| b == body).count()
    }
}

async fn start(
    env: &Env,
    handler: &Fixable,
) -> anyhow::Result<(CancellationToken, tokio::task::JoinHandle<()>)> {
    let mut registry = Registry::default();
    registry.register("test", handler.clone());
    let pool = Pool::build(&env.publisher, &env.topology, "work", &registry).await?;
    let cancel = CancellationToken::new();
    Ok((cancel.clone(), tokio::spawn(pool.run(cancel))))
}

async fn dead_letters_n(env: &Env, n: usize) -> anyhow::Result<Vec<dead_letters::DeadLetter>> {
    souk_testkit::eventually(WAIT, || async {
        let l = dead_letters::list(&env.js, 100).await?;
        anyhow::Ok((l.len() == n).then_some(l))
    })
    .await
}

async fn idle(env: &Env) -> anyhow::Result<Option<()>> {
    souk_testkit::drained(&env.js, "CMD", "work").await
}

#[tokio::test]
async fn a_failed_message_fixed_then_redriven_is_handled_once_even_redriven_twice() -> anyhow::Result<()> {
    let env = env().await?;
    let handler = Fixable::new();
    let (cancel, run) = start(&env, &handler).await?;
    let before = SystemTime::now() - Duration::from_secs(60);
    env.publisher.publish(msg(SUBJECT, "o1", r#"{"order":"bad-1"}"#)).await?;
    env.publisher.publish(msg(SUBJECT, "o2", "fine")).await?;
    let letters = dead_letters_n(&env, 1).await?;
    let d = &letters[0];
    assert_eq!((d.consumer.as_str(), d.redrives), ("work", 0));
    assert!(d.error.contains("cannot read"), "{d:?}");
    assert!(!d.first_failure.is_empty() && d.first_failure <= d.last_failure, "{d:?}");

    // Filters: consumer, error text (any case), time range.
    let by = |filter: Filter| {
        let js = env.js.clone();
        async move { anyhow::Ok(dead_letters::list_filtered(&js, &filter, 100).await?.len()) }
    };
    let consumer = |c: &str| Filter { consumer: Some(c.into()), ..Filter::default() };
    assert_eq!(by(consumer("work")).await?, 1);
    assert_eq!(by(consumer("other")).await?, 0);
    assert_eq!(by(Filter { error: Some("CANNOT READ".into()), ..Filter::default() }).await?, 1);
    assert_eq!(by(Filter { error: Some("timeout".into()), ..Filter::default() }).await?, 0);
    assert_eq!(by(Filter { since: Some(before), ..Filter::default() }).await?, 1);
    assert_eq!(by(Filter { until: Some(before), ..Filter::default() }).await?, 0);

    // Show: headers and the JSON body.
    let shown = dead_letters::show(&env.js, d.seq).await?;
    assert_eq!(shown.body_json, Some(serde_json::json!({"order": "bad-1"})));
    assert!(
        shown.headers.iter().any(|(n, v)| n == headers::DLQ_CONSUMER && v == "work"),
        "{:?}",
        shown.headers
    );

    // Fixed; a redrive that crashed after its publish, then the redrive run again.
    handler.broken.store(false, Ordering::SeqCst);
    let first = dead_letters::publish_copy(&env.publisher, d.seq).await?;
    assert!(!first.duplicate);
    let again = dead_letters::redrive(&env.publisher, d.seq).await?;
    assert!(again.duplicate, "the same redrive id: stored once");
    assert_eq!((again.msg_id.as_str(), again.redrives), (first.msg_id.as_str(), 1));
    // Gone: redriving it once more is refused by name.
    let gone = dead_letters::redrive(&env.publisher, d.seq).await.expect_err("gone");
    assert!(matches!(gone, Error::NotFound(_)), "{gone}");

    souk_testkit::eventually(WAIT, || async {
        (handler.times_handled(r#"{"order":"bad-1"}"#) == 1).then_some(())
    })
    .await?;
    souk_testkit::eventually(WAIT, || idle(&env)).await?;
    cancel.cancel();
    run.await?;
    assert_eq!(handler.times_handled(r#"{"order":"bad-1"}"#), 1, "handled once");
    let handled = handler.handled.lock().expect("lock").clone();
    assert!(handled.contains(&(r#"{"order":"bad-1"}"#.to_owned(), Some("1".to_owned()))), "{handled:?}");
    assert!(dead_letters::list(&env.js, 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn purge_removes_only_the_chosen_dead_letters_and_unknown_sequences_refuse_the_whole_choice()
-> anyhow::Result<()> {
    let env = env().await?;
    let handler = Fixable::new();
    let (cancel, run) = start(&env, &handler).await?;
    for i in 0..3 {
        env.publisher.publish(msg(SUBJECT, &format!("b{i}"), &format!("bad-{i}"))).await?;
    }
    let letters = dead_letters_n(&env, 3).await?;
    let seqs: Vec<u64> = letters.iter().map(|d| d.seq).collect();

    let missing =
        dead_letters::select(&env.js, &Selection::Seqs(vec![seqs[0], 9999])).await.expect_err("refused");
    assert!(matches!(missing, Error::NotFound(_)) && missing.to_string().contains("#9999"), "{missing}");
    let empty =
        dead_letters::select(&env.js, &Selection::Matching(Filter::default())).await.expect_err("refused");
    assert!(matches!(empty, Error::Invalid(_)), "{empty}");

    let chosen = dead_letters::select(&env.js, &Selection::Seqs(vec![seqs[2], seqs[0]])).await?;
    let chosen: Vec<u64> = chosen.iter().map(|d| d.seq).collect();
    assert_eq!(chosen, [seqs[0], seqs[2]]);
    let purged = dead_letters::purge(&env.js, &chosen).await;
    assert_eq!((purged.deleted.as_slice(), purged.error.as_deref()), (chosen.as_slice(), None));
    let left = dead_letters::list(&env.js, 10).await?;
    assert_eq!(left.iter().map(|d| d.seq).collect::<Vec<_>>(), [seqs[1]], "only the chosen ones went");
    // Purging what is gone deletes nothing else.
    let again = dead_letters::purge(&env.js, &chosen).await;
    assert_eq!((again.deleted.len(), again.gone.len()), (0, 2), "{again:?}");
    cancel.cancel();
    run.await?;
    assert_eq!(dead_letters::list(&env.js, 10).await?.len(), 1);
    Ok(())
}
