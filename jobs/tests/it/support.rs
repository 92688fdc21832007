//! Import files with known bad lines, and job helpers.

use souk_jobs::{Job, JobState, record, seed};
use souk_testkit::{Stack, eventually};
use std::{collections::BTreeMap, time::Duration};
use uuid::Uuid;

/// A good JSONL row for `sku` (a generated listing's fields).
pub fn good_row(i: usize, sku: &str) -> serde_json::Value {
    let listing = seed::listing(42, 1, i);
    let mut row = serde_json::to_value(&listing.fields).expect("fields serialize");
    row["sku"] = sku.into();
    row
}

/// A row wrong in one of ten ways (`kind` 0-9), each for a different reason.
fn bad_row(kind: usize, i: usize) -> String {
    let mut row = good_row(i, &format!("imp-{i}"));
    match kind % 10 {
        0 => row["price_minor"] = (-1).into(),
        1 => row["category"] = "home/kitchen/teapots".into(),
        2 => {
            row["category"] = "home/kitchen/mugs".into();
            row["attributes"] = serde_json::json!({});
        }
        3 => row["currency"] = "EUX".into(),
        4 => row["sku"] = "bad sku!".into(),
        5 => row["sku"] = "imp-1".into(), // the first line's
        6 => return "{not json".into(),
        7 => row["colour"] = "red".into(),
        8 => row["stock"] = "many".into(),
        _ => row["images"] = serde_json::json!(["http://insecure.example/a.jpg"]),
    }
    row.to_string()
}

/// A JSONL file of `rows` lines, `bad` of them bad (spread out, varied reasons);
/// returns it with the bad lines.
pub fn import_file(rows: usize, bad: usize) -> (String, Vec<u64>) {
    let step = rows / (bad + 1);
    let bad_lines: Vec<u64> = (1..=bad).map(|k| (k * step) as u64).collect();
    let mut lines = Vec::with_capacity(rows);
    let mut kind = 0;
    for i in 1..=rows {
        if bad_lines.contains(&(i as u64)) {
            lines.push(bad_row(kind, i));
            kind += 1;
        } else {
            lines.push(good_row(i, &format!("imp-{i}")).to_string());
        }
    }
    (lines.join("\n"), bad_lines)
}

/// Wait until job `id` ends; returns it with its errors.
pub async fn finished(stack: &Stack, id: Uuid, timeout: Duration) -> anyhow::Result<Job> {
    let pool = stack.db.pool.clone();
    eventually(timeout, || async {
        let job = record::get_with_errors(&pool, None, id).await?;
        anyhow::Ok(job.filter(|j| j.state.is_final()))
    })
    .await
}

/// Products of `seller` by version: (products, products whose version is not 1).
pub async fn products(stack: &Stack, seller: &str) -> anyhow::Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "select count(*), count(*) filter (where version <> 1) from products where seller = $1 and deleted_at is null",
    )
    .bind(seller)
    .fetch_one(&stack.db.pool)
    .await?)
}

/// ProductChanged rows written to the outbox.
pub async fn product_events(stack: &Stack) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select count(*) from outbox where subject = 'souk.evt.catalog.product-changed'")
        .fetch_one(&stack.db.pool)
        .await?)
}

/// The job's state counts, to assert a job's end in one line.
pub fn summary(job: &Job) -> (JobState, i64, i64, i64) {
    (job.state, job.progress.total, job.progress.done, job.progress.failed)
}

/// Lines of a job's row errors, and their reasons by line.
pub fn error_lines(job: &Job) -> (Vec<u64>, BTreeMap<u64, String>) {
    (
        job.errors.iter().map(|e| e.line).collect(),
        job.errors.iter().map(|e| (e.line, e.reason.clone())).collect(),
    )
}

/// POST a JSON body with a token (none: `""`); status and body.
pub async fn post(
    stack: &Stack,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut request = stack.http.post(format!("{}{path}", stack.base)).json(body);
    if !token.is_empty() {
        request = request.bearer_auth(token);
    }
    souk_testkit::read_body(request.send().await?).await
}
