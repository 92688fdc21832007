//! catalog-import end to end, through the shipped topology: the job's commands go the
//! way API writes go (CMD → catalog pool → products + outbox).

use souk_ingress::Role;
use souk_jobs::{
    JobState, Submission, WorkerOptions,
    parse::{self, Format},
    record,
};
use souk_testkit::{Stack, StackOptions, eventually, test_job_tuning};
use souk_topologies::publisher::Publisher;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::support::{error_lines, finished, import_file, post, product_events, products, summary};

#[tokio::test]
async fn an_import_of_10000_rows_with_37_bad_ones_writes_exactly_the_good_ones_and_reports_the_bad_by_line()
-> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (file, bad_lines) = import_file(10_000, 37);
    let staff = stack.token("ops-1", &[Role::Staff]);
    let body =
        serde_json::json!({"kind": "catalog-import", "seller": "s1", "format": "jsonl", "content": file});
    let (status, job) = post(&stack, &staff, "/v1/jobs", &body).await?;
    assert_eq!(status, 202, "{job}");
    let id = job["id"].as_str().expect("id").parse()?;
    let job = finished(&stack, id, Duration::from_secs(180)).await?;
    assert_eq!(summary(&job), (JobState::Done, 10_000, 9_963, 37));
    let (lines, reasons) = error_lines(&job);
    assert_eq!(lines, bad_lines, "exactly the bad lines are reported");
    for (line, says) in [
        (bad_lines[0], "price_minor"),
        (bad_lines[1], "category"),
        (bad_lines[2], "attributes."),
        (bad_lines[3], "currency"),
        (bad_lines[4], "sku"),
        (bad_lines[5], "already on line 1"),
        (bad_lines[6], "not JSON"),
        (bad_lines[7], "colour"),
        (bad_lines[8], "stock"),
        (bad_lines[9], "images[0]"),
    ] {
        assert!(reasons[&line].contains(says), "line {line}: {:?} should name {says}", reasons[&line]);
    }
    stack.quiescent(Duration::from_secs(120)).await?;
    assert_eq!(products(&stack, "s1").await?, (9_963, 0), "every good row once, at version 1");
    let bad_skus: Vec<String> = bad_lines.iter().map(|l| format!("imp-{l}")).collect();
    let written_bad: i64 = sqlx::query_scalar("select count(*) from products where sku = any($1)")
        .bind(&bad_skus)
        .fetch_one(&stack.db.pool)
        .await?;
    assert_eq!(written_bad, 0, "no bad row became a product");
    // And searchable: the indexer took every ProductChanged into the index.
    let (status, found) = stack.get(&staff, "/v1/search?seller=s1&per_page=1").await?;
    assert_eq!((status, &found["total"]), (200, &9_963.into()), "exactly the good rows are searchable");
    Ok(())
}

#[tokio::test]
async fn a_job_worker_killed_halfway_through_an_import_resumes_and_applies_each_row_once()
-> anyhow::Result<()> {
    // No job worker in the node: the test runs one, kills it, and starts another.
    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    let rows = 6_000;
    let (file, _) = import_file(rows, 0);
    let parsed = parse::parse(file.as_bytes(), Format::Jsonl)?;
    let job = souk_jobs::submit(
        &stack.db.pool,
        "t1",
        "ops-1",
        Submission::CatalogImport { seller: "s1".into(), parsed },
    )
    .await?;
    let tuning = souk_jobs::Tuning { chunk: 50, ..test_job_tuning() };
    let worker = || WorkerOptions {
        pool: stack.db.pool.clone(),
        publisher: Publisher::new(stack.client.clone(), Duration::from_secs(2)),
        search: None,
        tuning: tuning.clone(),
    };
    let first = tokio::spawn(souk_jobs::run(worker(), CancellationToken::new()));
    let pool = stack.db.pool.clone();
    eventually(Duration::from_secs(60), || async {
        let job = record::get(&pool, None, job.id).await?.expect("job");
        anyhow::Ok((job.progress.done >= 1_000).then_some(()))
    })
    .await?;
    // A crash: no hand-back, no goodbye; its apalis task stays locked by a dead worker.
    first.abort();
    let _ = first.await;
    let at_kill = record::get(&pool, None, job.id).await?.expect("job");
    assert_eq!(at_kill.state, JobState::Running, "killed mid-job");
    assert!(at_kill.progress.done < rows as i64, "killed before the end: {:?}", at_kill.progress);

    let stop = CancellationToken::new();
    let second = tokio::spawn(souk_jobs::run(worker(), stop.clone()));
    let job = finished(&stack, job.id, Duration::from_secs(120)).await?;
    assert_eq!(summary(&job), (JobState::Done, rows as i64, rows as i64, 0));
    stack.quiescent(Duration::from_secs(120)).await?;
    assert_eq!(
        products(&stack, "s1").await?,
        (rows as i64, 0),
        "each row applied once: every product at version 1"
    );
    assert_eq!(product_events(&stack).await?, rows as i64, "one ProductChanged per row");
    let kept: i64 = sqlx::query_scalar("select count(*) from job_rows").fetch_one(&stack.db.pool).await?;
    assert_eq!(kept, 0, "an ended job's rows are removed");
    stop.cancel();
    second.await?;
    Ok(())
}

#[tokio::test]
async fn a_cancelled_import_stops_between_chunks() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    let (file, _) = import_file(6_000, 0);
    let parsed = parse::parse(file.as_bytes(), Format::Jsonl)?;
    let submission = Submission::CatalogImport { seller: "s1".into(), parsed };
    let job = souk_jobs::submit(&stack.db.pool, "t1", "ops-1", submission).await?;
    let options = WorkerOptions {
        pool: stack.db.pool.clone(),
        publisher: Publisher::new(stack.client.clone(), Duration::from_secs(2)),
        search: None,
        tuning: souk_jobs::Tuning { chunk: 20, ..test_job_tuning() },
    };
    let stop = CancellationToken::new();
    let worker = tokio::spawn(souk_jobs::run(options, stop.clone()));
    let pool = stack.db.pool.clone();
    eventually(Duration::from_secs(60), || async {
        let job = record::get(&pool, None, job.id).await?.expect("job");
        anyhow::Ok((job.progress.done > 0).then_some(()))
    })
    .await?;
    assert_eq!(record::cancel(&pool, None, job.id).await?, record::Cancelled::Requested);
    let job = finished(&stack, job.id, Duration::from_secs(60)).await?;
    assert_eq!(job.state, JobState::Cancelled);
    assert!(
        job.progress.done < 6_000 && job.progress.done % 20 == 0,
        "stopped between chunks: {:?}",
        job.progress
    );
    stack.quiescent(Duration::from_secs(60)).await?;
    assert_eq!(products(&stack, "s1").await?, (job.progress.done, 0), "exactly the stored chunks");
    stop.cancel();
    worker.await?;
    Ok(())
}
