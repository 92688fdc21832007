//! `souk dlq …` and `souk pool …` from the binary: filters, show, redrive and purge of
//! exactly what was chosen, bad input refused with a clear error and exit code 2 (and
//! nothing done), each action recorded in `operator_actions` with who did it.

use souk_testkit::{NatsServer, TestDb};
use std::process::{Output, Stdio};

use crate::binary::souk;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `(actor, action, target, details)` of every recorded action, oldest first.
async fn actions(db: &TestDb) -> anyhow::Result<Vec<(String, String, String, serde_json::Value)>> {
    let pool = sqlx::PgPool::connect(&db.url).await?;
    Ok(sqlx::query_as("select actor, action, target, details from operator_actions order by id")
        .fetch_all(&pool)
        .await?)
}

#[tokio::test]
async fn operators_list_show_redrive_purge_and_control_pools_and_every_action_is_recorded()
-> anyhow::Result<()> {
    let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
    let data = tempfile::tempdir()?;
    let run = |args: &[&str]| {
        let mut c = souk(data.path());
        c.args(args).env("SOUK_NATS_URL", nats.url()).env("DATABASE_URL", &db.url).env("USER", "ada");
        c.stdin(Stdio::null());
        async move { c.output().await }
    };
    assert!(run(&["topology", "apply"]).await?.status.success());
    assert!(run(&["migrate"]).await?.status.success());
    let js = async_nats::jetstream::new(nats.client().await?);
    // Dead letters as the runtime writes them: #1, #2 of orders-place, #3 of catalog-write.
    for (consumer, subject, error, body) in [
        ("orders-place", "souk.cmd.orders.place", "boom: bad currency", r#"{"order":1}"#),
        ("orders-place", "souk.cmd.orders.place", "timeout talking to x", r#"{"order":2}"#),
        ("catalog-write", "souk.cmd.catalog.write", "boom: bad sku", "not json"),
    ] {
        let mut h = async_nats::HeaderMap::new();
        h.insert("souk-dlq-consumer", consumer);
        h.insert("souk-dlq-subject", subject);
        h.insert("souk-dlq-attempts", "5");
        h.insert("souk-dlq-error", error);
        js.publish_with_headers(format!("souk.dlq.{consumer}"), h, body.to_owned().into()).await?.await?;
    }

    // Filters.
    let listed = |args: &'static [&'static str]| {
        let run = &run;
        async move {
            let out = run(&[&["dlq", "list", "--json"][..], args].concat()).await?;
            anyhow::ensure!(out.status.success(), "{}", stderr(&out));
            let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)?;
            anyhow::Ok(v.iter().map(|d| d["seq"].as_u64().unwrap_or(0)).collect::<Vec<_>>())
        }
    };
    assert_eq!(listed(&["--consumer", "orders-place"]).await?, [1, 2]);
    assert_eq!(listed(&["--error", "BOOM"]).await?, [1, 3]);
    assert_eq!(listed(&["--since", "1h"]).await?, [1, 2, 3]);
    assert_eq!(listed(&["--until", "2000-01-01T00:00:00Z"]).await?, Vec::<u64>::new());
    let bad = run(&["dlq", "list", "--since", "yesterdayish"]).await?;
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("RFC 3339"), "{}", stderr(&bad));

    // Show: headers and the body pretty-printed.
    let show = run(&["dlq", "show", "1"]).await?;
    assert!(show.status.success(), "{}", stderr(&show));
    assert!(stdout(&show).contains("souk-dlq-error: boom: bad currency"), "{}", stdout(&show));
    assert!(stdout(&show).contains("\"order\": 1"), "pretty JSON: {}", stdout(&show));
    let missing = run(&["dlq", "show", "99"]).await?;
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("no dead letter #99"), "{}", stderr(&missing));

    // Redrive: an unknown sequence refuses the whole command; then #1 alone.
    let refused = run(&["dlq", "redrive", "1", "99"]).await?;
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("#99") && stderr(&refused).contains("nothing done"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(listed(&[]).await?, [1, 2, 3], "nothing redriven");
    let nothing = run(&["dlq", "redrive"]).await?;
    assert_eq!(nothing.status.code(), Some(2), "{}", stderr(&nothing));
    let redrive = run(&["dlq", "redrive", "1"]).await?;
    assert!(redrive.status.success(), "{}", stderr(&redrive));
    assert_eq!(listed(&[]).await?, [2, 3]);
    let cmd = js.get_stream("CMD").await?.get_raw_message(1).await?;
    assert_eq!(cmd.headers.get("souk-redrives").map(|v| v.as_str()), Some("1"));
    assert!(cmd.headers.get("Nats-Msg-Id").is_some_and(|v| v.as_str().starts_with("redrive:")));

    // Purge: not confirmed → nothing; confirmed by --yes → only #2.
    let unconfirmed = run(&["dlq", "purge", "--consumer", "orders-place"]).await?;
    assert_eq!(unconfirmed.status.code(), Some(1), "{}", stderr(&unconfirmed));
    assert!(stderr(&unconfirmed).contains("nothing purged"), "{}", stderr(&unconfirmed));
    assert_eq!(listed(&[]).await?, [2, 3]);
    let purge = run(&["dlq", "purge", "2", "--yes"]).await?;
    assert!(purge.status.success(), "{}", stderr(&purge));
    assert_eq!(listed(&[]).await?, [3], "only #2 purged");

    // Pools: bad input refused, then a pause by an operator token.
    for (args, says) in [
        (&["pool", "pause", "nope"][..], "no pool \"nope\""),
        (&["pool", "scale", "orders", "0"][..], "between 1 and 10000"),
        (&["pool", "scale", "orders", "1000000"][..], "between 1 and 10000"),
    ] {
        let out = run(args).await?;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    souk_ingress::Keys::load_or_generate_dev(&data.path().join("jwt.key"))?;
    let buyer = run(&["token", "--sub", "bob", "--role", "buyer"]).await?;
    let not_operator = run(&["pool", "pause", "orders", "--token", stdout(&buyer).trim()]).await?;
    assert_eq!(not_operator.status.code(), Some(2), "{}", stderr(&not_operator));
    assert!(stderr(&not_operator).contains("not an operator"), "{}", stderr(&not_operator));
    let token = run(&["token", "--sub", "grace", "--role", "operator"]).await?;
    assert!(token.status.success(), "{}", stderr(&token));
    let pause = run(&["pool", "pause", "orders", "--token", stdout(&token).trim()]).await?;
    assert!(pause.status.success(), "{}", stderr(&pause));
    let scale = run(&["pool", "scale", "orders", "8"]).await?;
    assert!(scale.status.success(), "{}", stderr(&scale));
    let status = run(&["status", "--json"]).await?;
    let v: serde_json::Value = serde_json::from_slice(&status.stdout)?;
    // In the status model, with no worker running: what the operators set, per pool.
    let pools = v["pipeline"]["pools"].as_array().expect("pools");
    let orders = pools.iter().find(|p| p["name"] == "orders").expect("orders pool");
    assert_eq!(
        (orders["settings"]["paused"].as_bool(), orders["settings"]["concurrency"].as_u64()),
        (Some(true), Some(8)),
        "{v}"
    );
    assert!(orders["controls"].is_null(), "no process runs it: {v}");
    let others = pools.iter().filter(|p| p["name"] != "orders");
    assert!(others.clone().all(|p| p["settings"].is_null()), "only orders was set: {v}");
    let text = run(&["status"]).await?;
    assert!(
        stdout(&text).contains("  pool orders: paused, concurrency 8 (set by cli:ada"),
        "{}",
        stdout(&text)
    );

    // Every action, with who did it; refused ones left no row.
    let recorded = actions(&db).await?;
    let what: Vec<(&str, &str, &str)> =
        recorded.iter().map(|(a, w, t, _)| (a.as_str(), w.as_str(), t.as_str())).collect();
    assert_eq!(
        what,
        [
            ("cli:ada", "dlq.redrive-begun", "orders-place"),
            ("cli:ada", "dlq.redrive", "orders-place"),
            ("cli:ada", "dlq.purge-begun", "orders-place"),
            ("cli:ada", "dlq.purge", "orders-place"),
            ("grace", "pool.pause", "orders"),
            ("cli:ada", "pool.scale", "orders"),
        ]
    );
    // A dead-letter action is on record before it acts, and its outcome names that row.
    assert_eq!(recorded[0].3["sequences"], serde_json::json!([1]));
    assert_eq!(recorded[1].3["sequences"], serde_json::json!([1]));
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let names_its_begun: bool = sqlx::query_scalar(
        "select bool_and((d.details->>'begun')::bigint = b.id) from operator_actions d
         join operator_actions b on b.action = d.action || '-begun' where d.action like 'dlq.%' and d.action not like '%-begun'",
    )
    .fetch_one(&pool)
    .await?;
    assert!(names_its_begun);
    assert_eq!(recorded[2].3["sequences"], serde_json::json!([2]));
    assert_eq!(recorded[3].3["result"]["deleted"], serde_json::json!([2]));
    assert_eq!(recorded[5].3["after"]["concurrency"], 8);
    Ok(())
}
