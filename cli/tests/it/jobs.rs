//! `souk jobs …` through the binary: submit, show, list, cancel, follow, `--json`, and
//! the documented exit codes; files refused as a whole. No job worker runs here, so a
//! submitted job stays queued until the test moves it.

use super::binary::souk;
use souk_testkit::TestDb;
use std::path::Path;

/// `souk jobs <args>` on the test's database; (exit code, stdout, stderr).
async fn jobs(data: &Path, database_url: &str, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
    let out = souk(data)
        .arg("jobs")
        .args(args)
        .env("SOUK_DATABASE_URL", database_url)
        // Never used by `souk jobs`; set so that no local `souk dev` is looked for.
        .env("SOUK_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .await?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

fn row(sku: &str, price: i64) -> String {
    serde_json::json!({"sku": sku, "title": "Speckled mug", "category": "home/kitchen/mugs",
        "attributes": {"capacity_ml": 350, "material": "stoneware"},
        "price_minor": price, "currency": "EUR", "stock": 4})
    .to_string()
}

#[tokio::test]
async fn souk_jobs_submits_shows_lists_cancels_and_follows_with_meaningful_exit_codes() -> anyhow::Result<()>
{
    let db = TestDb::create().await?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let data = tempfile::tempdir()?;
    let file = data.path().join("products.jsonl");
    std::fs::write(&file, [row("m-1", 1299), row("m-2", 1499), row("m-3", -5), row("m-4", 999)].join("\n"))?;
    let file = file.to_str().expect("utf-8 path");

    let (code, out, err) =
        jobs(data.path(), &db.url, &["submit", "catalog-import", "--seller", "s1", "--file", file, "--json"])
            .await?;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("products.jsonl:3: price_minor"), "bad row reported by line on stderr: {err}");
    let job: serde_json::Value = serde_json::from_str(&out)?;
    let id = job["id"].as_str().expect("submit --json prints the id").to_owned();
    assert_eq!(job["state"], "queued");
    assert_eq!(job["progress"], serde_json::json!({"total": 4, "done": 0, "failed": 1}));
    assert_eq!(job["errors"][0]["line"], 3);

    let (code, out, _) = jobs(data.path(), &db.url, &["show", &id, "--json"]).await?;
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!((shown["state"].as_str(), shown["kind"].as_str()), (Some("queued"), Some("catalog-import")));
    assert_eq!(shown["submitted_by"].as_str().map(|s| s.starts_with("cli:")), Some(true));

    let (code, out, _) = jobs(data.path(), &db.url, &["list", "--json"]).await?;
    assert_eq!(code, 0);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&out)?;
    assert_eq!(listed.iter().filter(|j| j["id"] == id.as_str()).count(), 1);

    // Cancelled while queued: at once; following it then says "cancelled" (4).
    let (code, _, err) = jobs(data.path(), &db.url, &["cancel", &id]).await?;
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = jobs(data.path(), &db.url, &["show", &id, "--json"]).await?;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&out)?["state"], "cancelled");
    assert_eq!(jobs(data.path(), &db.url, &["follow", &id]).await?.0, 4);

    // follow's exit code is the job's end: done 0, failed 1.
    for (state, expected) in [("done", 0), ("failed", 1)] {
        let (_, out, _) = jobs(data.path(), &db.url, &["submit", "reindex", "--json"]).await?;
        let id: serde_json::Value = serde_json::from_str(&out)?;
        sqlx::query("update jobs set state = $2, finished_at = now() where id = $1::uuid")
            .bind(id["id"].as_str())
            .bind(state)
            .execute(&db.pool)
            .await?;
        let (code, out, _) =
            jobs(data.path(), &db.url, &["follow", id["id"].as_str().unwrap_or(""), "--json"]).await?;
        assert_eq!(code, expected, "follow of a {state} job");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&out)?["state"], state);
    }

    // Not found: 3, also for something that is not an id at all.
    let missing = uuid::Uuid::now_v7().to_string();
    assert_eq!(jobs(data.path(), &db.url, &["show", &missing]).await?.0, 3);
    assert_eq!(jobs(data.path(), &db.url, &["cancel", "not-a-job"]).await?.0, 3);

    // Unavailable: 5 (a database that does not exist stands for a stopped deployment).
    let gone = db.url.rsplit_once('/').map(|(server, _)| format!("{server}/souk_no_such_db")).expect("url");
    let (code, _, err) = jobs(data.path(), &gone, &["list"]).await?;
    assert_eq!(code, 5, "{err}");

    let (code, out, _) = jobs(data.path(), &db.url, &["--help"]).await?;
    assert_eq!(code, 0);
    assert!(out.contains("Exit codes") && out.contains("3  no such job"), "{out}");
    Ok(())
}

#[tokio::test]
async fn files_that_cannot_be_read_as_a_whole_are_refused_with_exit_code_2_and_nothing_is_submitted()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let data = tempfile::tempdir()?;
    let d = data.path();
    std::fs::write(
        d.join("latin1.jsonl"),
        [row("m-1", 100).as_bytes(), b"\n{\"title\": \"Caf\xe9\"}\n"].concat(),
    )?;
    std::fs::write(d.join("columns.csv"), "sku,name,price\nm-1,Mug,100\n")?;
    std::fs::write(d.join("empty.csv"), "sku,title,category,price_minor,currency,stock\n")?;
    std::fs::write(d.join("products.txt"), row("m-1", 100))?;
    std::fs::write(d.join("all-bad.jsonl"), "not json\n[]\n")?;
    let huge = std::fs::File::create(d.join("huge.jsonl"))?;
    huge.set_len(souk_jobs::parse::MAX_FILE_BYTES as u64 + 1)?; // sparse: no disk used
    for (file, says) in [
        ("latin1.jsonl", "not UTF-8 (line 2"),
        (
            "columns.csv",
            "missing required columns title, category, price_minor, currency, stock; unknown columns \"name\", \"price\"",
        ),
        ("empty.csv", "no rows"),
        ("products.txt", "cannot tell the format"),
        ("all-bad.jsonl", "no valid rows"),
        ("huge.jsonl", "imported at once"),
        ("missing.jsonl", "reading"),
    ] {
        let path = d.join(file);
        let args = ["submit", "catalog-import", "--seller", "s1", "--file", path.to_str().expect("path")];
        let (code, _, err) = jobs(d, &db.url, &args).await?;
        assert_eq!(code, 2, "{file}: {err}");
        assert!(err.contains(says), "{file}: expected {says:?} in {err:?}");
    }
    let (code, _, _) =
        jobs(d, &db.url, &["submit", "catalog-import", "--seller", "", "--file", "x.jsonl"]).await?;
    assert_eq!(code, 2, "an empty seller id is refused");
    let submitted: i64 = sqlx::query_scalar("select count(*) from jobs").fetch_one(&db.pool).await?;
    assert_eq!(submitted, 0, "nothing submitted");
    Ok(())
}

#[tokio::test]
async fn souk_seed_catalog_publishes_valid_varied_products_once_per_seed() -> anyhow::Result<()> {
    let stack = souk_testkit::Stack::start().await?;
    let data = tempfile::tempdir()?;
    let seed = || {
        souk(data.path())
            .args([
                "seed",
                "catalog",
                "--products",
                "700",
                "--sellers",
                "5",
                "--seed",
                "3",
                "--tenant",
                "t1",
                "--json",
            ])
            .env("SOUK_NATS_URL", stack.nats.url())
            .env("SOUK_DATABASE_URL", &stack.db.url)
            .output()
    };
    let out = seed().await?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["products"], 700);
    stack.quiescent(std::time::Duration::from_secs(120)).await?;
    let counts = || async {
        let c: (i64, i64, i64, i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where version <> 1), count(distinct category),
                    count(distinct seller), count(*) filter (where stock = 0)
             from products where tenant = 't1'",
        )
        .fetch_one(&stack.db.pool)
        .await?;
        anyhow::Ok(c)
    };
    let (products, not_v1, categories, sellers, out_of_stock) = counts().await?;
    assert_eq!((products, not_v1), (700, 0), "every generated product was valid and written once");
    assert!(
        categories >= 15 && sellers == 5 && out_of_stock > 20,
        "varied: {categories} categories, {sellers} sellers, {out_of_stock} out of stock"
    );
    let rejected: i64 = sqlx::query_scalar("select count(*) from catalog_writes where outcome = 'rejected'")
        .fetch_one(&stack.db.pool)
        .await?;
    assert_eq!(rejected, 0);
    // The same seed again writes nothing new: the same write ids.
    assert!(seed().await?.status.success());
    stack.quiescent(std::time::Duration::from_secs(120)).await?;
    let (products, not_v1, ..) = counts().await?;
    assert_eq!((products, not_v1), (700, 0), "seeding again changed nothing");
    Ok(())
}

/// `souk dev` runs the job worker; `souk seed` and `souk jobs` find it by its data
/// dir; `follow` waits for a live job and exits 0 once it is done.
#[tokio::test]
async fn souk_jobs_and_seed_work_against_a_running_souk_dev_found_by_its_data_dir() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let mut dev = super::binary::souk_dev_with_own_nats(data.path(), &db.url, std::process::Stdio::piped())?;
    super::binary::api_address(&mut dev).await?;
    let d = data.path();
    let run = |args: &[&str]| {
        let mut c = souk(d);
        c.args(args).env_remove("SOUK_NATS_URL").env("SOUK_DATABASE_URL", &db.url);
        c.output()
    };

    let out = run(&["seed", "catalog", "--products", "200", "--sellers", "3"]).await?;
    assert!(out.status.success(), "seed: {}", String::from_utf8_lossy(&out.stderr));

    let file = d.join("mugs.csv");
    let mut csv =
        String::from("sku,title,category,price_minor,currency,stock,images,attr.capacity_ml,attr.material\n");
    for i in 1..=50 {
        csv.push_str(&format!("mug-{i},Speckled mug {i},home/kitchen/mugs,{},EUR,{i},https://img.example/{i}.jpg,350,stoneware\n", 900 + i));
    }
    csv.push_str("mug-51,Broken mug,home/kitchen/mugs,100,EUR,1,,lots,stoneware\n");
    std::fs::write(&file, csv)?;
    let out = run(&[
        "jobs",
        "submit",
        "catalog-import",
        "--seller",
        "s9",
        "--file",
        file.to_str().expect("path"),
        "--json",
    ])
    .await?;
    assert!(out.status.success(), "submit: {}", String::from_utf8_lossy(&out.stderr));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let id = job["id"].as_str().expect("id").to_owned();
    assert_eq!(job["errors"][0]["line"], 52, "{job}");

    let out = run(&["jobs", "follow", &id, "--json"]).await?;
    assert_eq!(out.status.code(), Some(0), "follow: {}", String::from_utf8_lossy(&out.stderr));
    let job: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        (&job["state"], &job["progress"]),
        (&"done".into(), &serde_json::json!({"total": 51, "done": 50, "failed": 1}))
    );
    souk_testkit::eventually(std::time::Duration::from_secs(60), || async {
        let n: i64 = sqlx::query_scalar("select count(*) from products where tenant = 'dev'")
            .fetch_one(&db.pool)
            .await?;
        anyhow::Ok((n == 250).then_some(()))
    })
    .await?;

    let out = run(&["jobs", "submit", "reindex", "--json"]).await?;
    let job: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let out = run(&["jobs", "follow", job["id"].as_str().unwrap_or_default()]).await?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "reindex: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    tokio::process::Command::new("kill")
        .args(["-TERM", &dev.id().unwrap_or_default().to_string()])
        .status()
        .await?;
    let status = tokio::time::timeout(std::time::Duration::from_secs(60), dev.wait()).await??;
    assert!(status.success(), "souk dev exit status {status}");
    Ok(())
}

/// `souk worker` (its job worker, catalog pool and relay) killed with SIGKILL halfway
/// through an import; a second `souk worker` takes the job over once the first misses
/// its heartbeats (shipped tuning: 30 s) and finishes it from its checkpoint: every row
/// applied once.
#[tokio::test]
async fn a_souk_worker_process_killed_mid_import_is_taken_over_and_each_row_is_applied_once()
-> anyhow::Result<()> {
    use std::time::Duration;
    let (nats, db) = tokio::try_join!(souk_testkit::NatsServer::start(), TestDb::create())?;
    souk_stores::postgres::migrate(&db.pool).await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    souk_topologies::apply::apply(&js, &souk_testkit::test_topology()?, souk_topologies::apply::Mode::Apply)
        .await?;
    let rows = 20_000;
    let file: String = (1..=rows).map(|i| row(&format!("w-{i}"), 1000 + i) + "\n").collect();
    let parsed = souk_jobs::parse::parse(file.as_bytes(), souk_jobs::parse::Format::Jsonl)?;
    let submission = souk_jobs::Submission::CatalogImport { seller: "s1".into(), parsed };
    let job = souk_jobs::submit(&db.pool, "t1", "ops", submission).await?;

    // The workers' payments pools need a provider.
    let provider = souk_sandbox::payments::PaymentSandbox::start(
        souk_sandbox::payments::SandboxOptions::local("jobs-test"),
    )
    .await?;
    let worker = |data: &Path| -> anyhow::Result<tokio::process::Child> {
        let key = data.join("k1.key");
        std::fs::write(&key, [7u8; 32])?;
        Ok(souk(data)
            .arg("worker")
            .env("SOUK_NATS_URL", nats.url())
            .env("SOUK_DATABASE_URL", &db.url)
            .env("SOUK_PAYMENTS_PRIMARY_URL", provider.url())
            .env("SOUK_JWT_KEYS", format!("[{{kid = \"k1\", file = \"{}\"}}]", key.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?)
    };
    let (first_dir, second_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut first = worker(first_dir.path())?;
    let progress = || async {
        let job = souk_jobs::record::get(&db.pool, None, job.id).await?.expect("job");
        anyhow::Ok(job)
    };
    souk_testkit::eventually(Duration::from_secs(120), || async {
        anyhow::Ok((progress().await?.progress.done >= 2_000).then_some(()))
    })
    .await?;
    first.start_kill()?; // SIGKILL
    first.wait().await?;
    let at_kill = progress().await?;
    assert_eq!(at_kill.state, souk_jobs::JobState::Running);
    assert!(at_kill.progress.done < rows, "killed mid-job: {:?}", at_kill.progress);

    let mut second = worker(second_dir.path())?;
    let done = souk_testkit::eventually(Duration::from_secs(180), || async {
        let job = progress().await?;
        anyhow::Ok(job.state.is_final().then_some(job))
    })
    .await?;
    assert_eq!((done.state, done.progress.done), (souk_jobs::JobState::Done, rows));
    souk_testkit::quiescent(&js, Some(&db.pool), Duration::from_secs(120)).await?;
    let (products, not_v1, events): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from products), (select count(*) from products where version <> 1),
                (select count(*) from outbox where subject = 'souk.evt.catalog.product-changed')",
    )
    .fetch_one(&db.pool)
    .await?;
    assert_eq!((products, not_v1, events), (rows, 0, rows), "each row applied once, one event each");
    second.start_kill()?;
    second.wait().await?;
    Ok(())
}
