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
