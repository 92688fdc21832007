//! `POST/GET /v1/jobs`: staff only, tenant-scoped, problem+json for every refusal.

use souk_ingress::Role;
use souk_testkit::{Stack, StackOptions};

use crate::support::{good_row, post};

#[tokio::test]
async fn jobs_over_http_are_for_staff_of_the_tenant_and_bad_requests_get_problems() -> anyhow::Result<()> {
    // No job worker: submitted jobs stay queued (what is checked here is the surface).
    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    let staff = stack.token("ops-1", &[Role::Staff]);
    let reindex = serde_json::json!({"kind": "reindex"});

    let (status, body) = post(&stack, "", "/v1/jobs", &reindex).await?;
    assert_eq!(status, 401, "{body}");
    for role in [Role::Buyer, Role::Seller, Role::Support] {
        let token = stack.token("someone", &[role]);
        let (status, body) = post(&stack, &token, "/v1/jobs", &reindex).await?;
        assert_eq!(status, 403, "{role:?}: {body}");
        assert_eq!(body["type"], "https://souk.dev/problems/forbidden");
        assert_eq!(stack.get(&token, "/v1/jobs").await?.0, 403);
    }
    assert_eq!(stack.get("not-a-token", "/v1/jobs").await?.0, 401);

    let content = [good_row(1, "m-1").to_string(), "{broken".into()].join("\n");
    let import =
        serde_json::json!({"kind": "catalog-import", "seller": "s1", "format": "jsonl", "content": content});
    let (status, job) = post(&stack, &staff, "/v1/jobs", &import).await?;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["progress"], serde_json::json!({"total": 2, "done": 0, "failed": 1}));
    assert_eq!(job["errors"][0]["line"], 2);
    let id = job["id"].as_str().expect("id").to_owned();
    let (status, read) = stack.get(&staff, &format!("/v1/jobs/{id}")).await?;
    assert_eq!((status, &read["state"], &read["errors"][0]["line"]), (200, &"queued".into(), &2.into()));
    let (status, list) = stack.get(&staff, "/v1/jobs").await?;
    assert_eq!((status, list.as_array().map(Vec::len)), (200, Some(1)));
    // Admins may too.
    let admin = stack.token("root", &[Role::Admin]);
    assert_eq!(stack.get(&admin, &format!("/v1/jobs/{id}")).await?.0, 200);

    // Another tenant's staff: the job does not exist for them.
    let other = stack.keys.mint(&souk_ingress::Claims::new(
        "ops-2",
        "t2",
        vec![Role::Admin],
        std::time::Duration::from_secs(60),
    ));
    assert_eq!(stack.get(&other, &format!("/v1/jobs/{id}")).await?.0, 404);
    assert_eq!(stack.get(&other, "/v1/jobs").await?.1, serde_json::json!([]));
    assert_eq!(stack.get(&staff, &format!("/v1/jobs/{}", uuid::Uuid::now_v7())).await?.0, 404);
    assert_eq!(stack.get(&staff, "/v1/jobs/not-a-uuid").await?.0, 400);
    assert_eq!(stack.get(&staff, "/v1/jobs?limit=0").await?.0, 400);

    for (body, names) in [
        (serde_json::json!({"kind": "defrag"}), None),
        (
            serde_json::json!({"kind": "catalog-import", "seller": "s1", "format": "xml", "content": "x"}),
            None,
        ),
        (
            serde_json::json!({"kind": "catalog-import", "seller": "", "format": "csv", "content": "sku,name\n"}),
            Some(["seller", "content"]),
        ),
        (
            serde_json::json!({"kind": "catalog-import", "seller": "s1", "format": "jsonl", "content": "nope\n"}),
            Some(["content", "content"]),
        ),
    ] {
        let (status, problem) = post(&stack, &staff, "/v1/jobs", &body).await?;
        assert_eq!(status, 400, "{body}: {problem}");
        if let Some(fields) = names {
            let named: Vec<_> =
                problem["errors"].as_array().into_iter().flatten().map(|e| e["field"].clone()).collect();
            assert!(fields.iter().all(|f| named.contains(&(*f).into())), "{problem}");
        }
    }
    let huge = "x".repeat(17 << 20);
    let body =
        serde_json::json!({"kind": "catalog-import", "seller": "s1", "format": "csv", "content": huge});
    assert_eq!(post(&stack, &staff, "/v1/jobs", &body).await?.0, 413);
    let jobs: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&stack.db.pool).await?;
    assert_eq!(jobs, 1, "refused requests submitted nothing");
    Ok(())
}

#[tokio::test]
async fn a_row_whose_field_names_hold_control_characters_is_reported_not_a_503() -> anyhow::Result<()> {
    let stack = Stack::start_with(StackOptions { jobs: None, ..StackOptions::default() }).await?;
    let staff = stack.token("ops-1", &[Role::Staff]);
    // A row error names the bad key; Postgres text cannot hold NUL.
    let mut hostile = good_row(1, "n-1");
    hostile["a\u{0}b"] = 1.into();
    let content = format!("{}\n{}", good_row(2, "n-2"), hostile);
    let body =
        serde_json::json!({"kind": "catalog-import", "seller": "s1", "format": "jsonl", "content": content});
    let (status, job) = post(&stack, &staff, "/v1/jobs", &body).await?;
    assert_eq!(status, 202, "{job}");
    assert_eq!(job["errors"][0]["line"], 2, "{job}");
    let reason = job["errors"][0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("unknown field") && !reason.contains('\0'), "{reason:?}");
    Ok(())
}
