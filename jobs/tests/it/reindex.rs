//! reindex: a fresh index from Postgres, swapped in while search keeps answering.

use souk_ingress::Role;
use souk_jobs::{JobState, seed};
use souk_testkit::Stack;
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use crate::support::{finished, post};

/// Store `n` generated products of tenant `t1` in Postgres directly (as the catalog
/// pool would have), every tenth one deleted.
async fn store_products(stack: &Stack, n: usize) -> anyhow::Result<()> {
    for start in (0..n).step_by(2000) {
        let listings: Vec<_> = (start..(start + 2000).min(n)).map(|i| seed::listing(9, 12, i)).collect();
        let f = |get: fn(&seed::Listing) -> serde_json::Value| listings.iter().map(get).collect::<Vec<_>>();
        sqlx::query(
            "insert into products (tenant, sku, seller, title, description, category, attributes, price_minor,
                                   currency, stock, images, version, deleted_at, updated_at)
             select 't1', r.sku, r.seller, r.title, r.description, r.category, r.attributes, r.price_minor,
                    r.currency, r.stock, r.images, 1 + r.n % 3,
                    case when r.n % 10 = 0 then now() end, timestamptz '2026-01-01' + r.n * interval '1 second'
             from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::jsonb[], $7::bigint[],
                         $8::text[], $9::bigint[], $10::jsonb[], $11::bigint[])
                  as r(sku, seller, title, description, category, attributes, price_minor, currency, stock, images, n)",
        )
        .bind(listings.iter().map(|l| l.sku.clone()).collect::<Vec<_>>())
        .bind(listings.iter().map(|l| l.seller.clone()).collect::<Vec<_>>())
        .bind(listings.iter().map(|l| l.fields.title.clone()).collect::<Vec<_>>())
        .bind(listings.iter().map(|l| l.fields.description.clone()).collect::<Vec<_>>())
        .bind(listings.iter().map(|l| l.fields.category.clone()).collect::<Vec<_>>())
        .bind(f(|l| serde_json::to_value(&l.fields.attributes).unwrap_or_default()))
        .bind(listings.iter().map(|l| l.fields.price_minor).collect::<Vec<_>>())
        .bind(listings.iter().map(|l| l.fields.currency.to_string()).collect::<Vec<_>>())
        .bind(listings.iter().map(|l| l.fields.stock).collect::<Vec<_>>())
        .bind(f(|l| serde_json::to_value(&l.fields.images).unwrap_or_default()))
        .bind((start..start + listings.len()).map(|i| i as i64).collect::<Vec<_>>())
        .execute(&stack.db.pool)
        .await?;
    }
    Ok(())
}

/// A search of tenant `t1` (a buyer's: a token's tenant is the one searched).
async fn search(stack: &Stack, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    stack.get(&stack.token("buyer-1", &[Role::Buyer]), path).await
}

const QUERIES: [&str; 5] = [
    "/v1/search?q=mug",
    "/v1/search?category=home&sort=price_asc&per_page=50",
    "/v1/search?q=wireless%20headphones&in_stock=true",
    "/v1/search?sort=newest&per_page=100",
    "/v1/search?seller=seller-0001&sort=price_desc",
];

/// The answers to [`QUERIES`] without their cursors (a cursor pins one index).
async fn answers(stack: &Stack) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut all = Vec::new();
    for q in QUERIES {
        let (status, mut body) = search(stack, q).await?;
        anyhow::ensure!(status == 200, "{q}: {status} {body}");
        if let Some(o) = body.as_object_mut() {
            o.remove("next_cursor");
        }
        all.push(body);
    }
    Ok(all)
}

async fn reindex(stack: &Stack) -> anyhow::Result<souk_jobs::Job> {
    let staff = stack.token("ops-1", &[Role::Staff]);
    let (status, job) = post(stack, &staff, "/v1/jobs", &serde_json::json!({"kind": "reindex"})).await?;
    anyhow::ensure!(status == 202, "{job}");
    finished(stack, job["id"].as_str().unwrap_or_default().parse()?, Duration::from_secs(180)).await
}

#[tokio::test]
async fn a_reindex_swaps_in_a_fresh_index_while_8_clients_query_and_no_query_fails() -> anyhow::Result<()> {
    let stack = Arc::new(Stack::start().await?);
    store_products(&stack, 10_000).await?;
    // The index is empty (nothing went through the pipeline); a first reindex fills it
    // from Postgres.
    let (status, empty) = search(&stack, "/v1/search?q=mug").await?;
    assert_eq!((status, &empty["total"]), (200, &0.into()), "{empty}");
    let first = reindex(&stack).await?;
    assert_eq!((first.state, first.progress.total, first.progress.done), (JobState::Done, 10_000, 10_000));
    let before = answers(&stack).await?;
    assert!(before[0]["total"].as_u64().is_some_and(|t| t > 0), "products are searchable: {}", before[0]);
    assert_eq!(
        search(&stack, "/v1/search?per_page=1").await?.1["total"],
        9_000,
        "deleted products are not searchable"
    );

    // A second reindex while 8 clients query.
    let done = Arc::new(AtomicBool::new(false));
    let (queries, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (stack, done, queries, failures) =
                (stack.clone(), done.clone(), queries.clone(), failures.clone());
            tokio::spawn(async move {
                let mut i = c;
                while !done.load(Ordering::Relaxed) {
                    let q = QUERIES[i % QUERIES.len()];
                    match search(&stack, q).await {
                        Ok((200, body)) if body["hits"].is_array() => {}
                        other => {
                            eprintln!("{q}: {other:?}");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    queries.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    let during_before = queries.load(Ordering::Relaxed);
    let second = reindex(&stack).await?;
    let during = queries.load(Ordering::Relaxed) - during_before;
    done.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    assert_eq!(second.state, JobState::Done, "{:?}", second.error);
    assert!(during >= 8, "clients queried during the reindex ({during} queries)");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no query failed");
    assert_eq!(answers(&stack).await?, before, "results after the swap equal those before");
    Ok(())
}

/// One search index shared by several processes (as an OpenSearch cluster is): counts
/// the rebuilds running at once. A rebuild's writes wait a little for a rival, so two
/// rebuilds that may overlap do.
#[derive(Default)]
struct SharedIndex {
    running: std::sync::atomic::AtomicUsize,
    most_at_once: std::sync::atomic::AtomicUsize,
    rival: tokio::sync::Notify,
}

/// This process's handle on the shared index; only rebuilds are used.
struct Node(Arc<SharedIndex>);

struct NodeRebuild(Arc<SharedIndex>);

use futures::{FutureExt, future::BoxFuture};
use souk_stores::search::{
    ApplyOutcome, IndexOp, Rebuild, SearchError, SearchRequest, SearchResults, SearchStore, StoreStats,
    StoredVersion,
};

impl SearchStore for Node {
    fn apply(&self, _: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        async { Ok(ApplyOutcome::default()) }.boxed()
    }
    fn search<'a>(&'a self, _: &'a SearchRequest) -> BoxFuture<'a, Result<SearchResults, SearchError>> {
        async { Err(SearchError::Internal("not in this test".into())) }.boxed()
    }
    fn version<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredVersion>, SearchError>> {
        async { Ok(None) }.boxed()
    }
    fn begin_rebuild(&self) -> BoxFuture<'_, Result<Box<dyn Rebuild>, SearchError>> {
        let shared = self.0.clone();
        async move {
            let now = shared.running.fetch_add(1, Ordering::SeqCst) + 1;
            shared.most_at_once.fetch_max(now, Ordering::SeqCst);
            shared.rival.notify_waiters();
            Ok(Box::new(NodeRebuild(shared)) as Box<dyn Rebuild>)
        }
        .boxed()
    }
    fn stats(&self) -> BoxFuture<'_, Result<StoreStats, SearchError>> {
        async { Ok(StoreStats::default()) }.boxed()
    }
}

impl Rebuild for NodeRebuild {
    fn apply(&self, ops: Vec<IndexOp>) -> BoxFuture<'_, Result<ApplyOutcome, SearchError>> {
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(3), self.0.rival.notified()).await;
            Ok(ApplyOutcome { applied: ops.len(), stale: 0 })
        }
        .boxed()
    }
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>> {
        async move {
            self.0.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        }
        .boxed()
    }
    fn abort(self: Box<Self>) -> BoxFuture<'static, Result<(), SearchError>> {
        self.finish()
    }
}

#[tokio::test]
async fn two_reindexes_on_two_processes_never_rebuild_a_shared_index_at_once() -> anyhow::Result<()> {
    use souk_jobs::{Submission, WorkerOptions};
    use souk_testkit::{StackOptions, test_job_tuning};
    use souk_topologies::publisher::Publisher;
    use tokio_util::sync::CancellationToken;

    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    store_products(&stack, 10).await?;
    let index = Arc::new(SharedIndex::default());
    let stop = CancellationToken::new();
    // Two worker processes, each with its own handle on the one index.
    let processes: Vec<_> = (0..2)
        .map(|_| {
            let options = WorkerOptions {
                pool: stack.db.pool.clone(),
                publisher: Publisher::new(stack.client.clone(), Duration::from_secs(2)),
                search: Some(Arc::new(Node(index.clone())) as Arc<dyn SearchStore>),
                tuning: test_job_tuning(),
            };
            tokio::spawn(souk_jobs::run(options, stop.clone()))
        })
        .collect();
    let first = souk_jobs::submit(&stack.db.pool, "t1", "ops-1", Submission::Reindex).await?;
    let second = souk_jobs::submit(&stack.db.pool, "t2", "ops-2", Submission::Reindex).await?;
    for id in [first.id, second.id] {
        let job = finished(&stack, id, Duration::from_secs(60)).await?;
        assert_eq!(job.state, JobState::Done, "{:?}", job.error);
    }
    assert_eq!(index.most_at_once.load(Ordering::SeqCst), 1, "one rebuild of the shared index at a time");
    stop.cancel();
    for p in processes {
        p.await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_reindex_waiting_for_another_does_not_rebuild_again_once_its_job_ended_elsewhere()
-> anyhow::Result<()> {
    use souk_jobs::{Submission, WorkerOptions, record};
    use souk_testkit::{StackOptions, eventually, test_job_tuning};
    use souk_topologies::publisher::Publisher;
    use tokio_util::sync::CancellationToken;

    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    store_products(&stack, 10).await?;
    // A run of this job elsewhere (declared dead while only paused) holds the reindex.
    let mut rival = stack.db.pool.acquire().await?;
    // The key of `souk_jobs::reindex`'s lock.
    const REINDEX_LOCK: i64 = 0x736f_756b_2d72_6978;
    sqlx::query("select pg_advisory_lock($1)").bind(REINDEX_LOCK).execute(&mut *rival).await?;
    let index = Arc::new(SharedIndex::default());
    let options = WorkerOptions {
        pool: stack.db.pool.clone(),
        publisher: Publisher::new(stack.client.clone(), Duration::from_secs(2)),
        search: Some(Arc::new(Node(index.clone())) as Arc<dyn SearchStore>),
        tuning: test_job_tuning(),
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(souk_jobs::run(options, stop.clone()));
    let job = souk_jobs::submit(&stack.db.pool, "t1", "ops-1", Submission::Reindex).await?;
    let pool = stack.db.pool.clone();
    eventually(Duration::from_secs(30), || async {
        let j = record::get(&pool, None, job.id).await?.expect("job");
        anyhow::Ok((j.state == JobState::Running).then_some(()))
    })
    .await?;
    // The rival run finishes the job, then lets go.
    sqlx::query(
        "update jobs set state = 'done', rows_total = 10, rows_done = 10, finished_at = now() where id = $1",
    )
    .bind(job.id)
    .execute(&stack.db.pool)
    .await?;
    sqlx::query("select pg_advisory_unlock($1)").bind(REINDEX_LOCK).execute(&mut *rival).await?;
    // The waiting run takes the lock and ends its apalis task.
    eventually(Duration::from_secs(30), || async {
        let status: Option<String> =
            sqlx::query_scalar("select status from apalis.jobs where idempotency_key = $1")
                .bind(job.id.to_string())
                .fetch_optional(&pool)
                .await?;
        anyhow::Ok(status.filter(|s| s == "Done"))
    })
    .await?;
    let after = record::get(&stack.db.pool, None, job.id).await?.expect("job");
    assert_eq!(
        (after.state, after.progress.done, index.most_at_once.load(Ordering::SeqCst)),
        (JobState::Done, 10, 0),
        "an ended job is not rebuilt again, nor its progress rewritten"
    );
    stop.cancel();
    worker.await?;
    Ok(())
}

#[tokio::test]
async fn a_reindex_whose_worker_was_aborted_mid_rebuild_does_not_keep_the_lock_in_the_pool()
-> anyhow::Result<()> {
    use souk_jobs::{Submission, WorkerOptions};
    use souk_testkit::{StackOptions, test_job_tuning};
    use souk_topologies::publisher::Publisher;
    use tokio_util::sync::CancellationToken;

    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    store_products(&stack, 10).await?;
    let index = Arc::new(SharedIndex::default());
    let options = || WorkerOptions {
        pool: stack.db.pool.clone(),
        publisher: Publisher::new(stack.client.clone(), Duration::from_secs(2)),
        search: Some(Arc::new(Node(index.clone())) as Arc<dyn SearchStore>),
        tuning: test_job_tuning(),
    };
    let first = tokio::spawn(souk_jobs::run(options(), CancellationToken::new()));
    let job = souk_jobs::submit(&stack.db.pool, "t1", "ops-1", Submission::Reindex).await?;
    // Killed while rebuilding (its rebuild's writes wait for a rival for 3 s).
    souk_testkit::eventually(Duration::from_secs(30), || async {
        anyhow::Ok((index.running.load(Ordering::SeqCst) > 0).then_some(()))
    })
    .await?;
    first.abort();
    let _ = first.await;
    // The same pool (the same process) runs the job again after the orphan timeout.
    let stop = CancellationToken::new();
    let second = tokio::spawn(souk_jobs::run(options(), stop.clone()));
    let ended = finished(&stack, job.id, Duration::from_secs(60)).await?;
    assert_eq!(ended.state, JobState::Done, "{:?}", ended.error);
    stop.cancel();
    second.await?;
    Ok(())
}
