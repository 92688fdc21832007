//! `souk dev` after a crash: a SIGKILLed `souk dev` leaves no nats-server behind, and a
//! start stops one left on its data dir before it opens the store (issue 8, item 10).
//! Two `souk dev` side by side: each data dir has its own database, and a database
//! serves one deployment only (item 11).

use super::binary::{api_address, nats_servers_under, souk, souk_dev_with_own_nats};
use souk_testkit::{TestDb, eventually, order_body};
use std::{
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// A buyer token signed with the key `souk dev` generated in `data`.
async fn token(data: &std::path::Path) -> anyhow::Result<String> {
    let out = souk(data).args(["token", "--sub", "zoe", "--role", "buyer"]).output().await?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// Put DEV-1, what [`place`] orders, on sale in the tenant `souk token` mints for, in
/// the (migrated) database at `url`.
async fn stock(url: &str) -> anyhow::Result<()> {
    let pool = sqlx::PgPool::connect(url).await?;
    souk_testkit::catalog::seed_skus(&pool, "dev", &["DEV-1"]).await?;
    pool.close().await;
    Ok(())
}

/// Place one order; its id if the answer was 202.
async fn place(http: &reqwest::Client, api: &str, token: &str, key: &str) -> Option<uuid::Uuid> {
    let r = http
        .post(format!("{api}/v1/orders"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&order_body("DEV-1", 1))
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 202 {
        return None;
    }
    let body: serde_json::Value = r.json().await.ok()?;
    body["order_id"].as_str()?.parse().ok()
}

/// How many of `ids` are in `orders`.
async fn stored(db: &TestDb, ids: &[uuid::Uuid]) -> anyhow::Result<usize> {
    let n: i64 = sqlx::query_scalar("select count(*) from orders where order_id = any($1)")
        .bind(ids)
        .fetch_one(&db.pool)
        .await?;
    Ok(usize::try_from(n)?)
}

/// Every order that got 202 is stored, once nothing is left to do.
async fn all_stored(db: &TestDb, ids: &[uuid::Uuid]) -> anyhow::Result<()> {
    eventually(Duration::from_secs(60), || async {
        (stored(db, ids).await.ok()? == ids.len()).then_some(())
    })
    .await?;
    Ok(())
}

/// SIGKILL `souk dev` while orders stream in (an OOM kill, a crashed terminal): its
/// nats-server, in a process group of its own, must not outlive it; a new `souk dev` on
/// the same data dir then runs exactly one server on that store, and every order that
/// got 202 before the kill is stored.
#[tokio::test]
async fn a_sigkilled_souk_dev_leaves_no_nats_server_and_restarts_on_its_store() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let mut first = souk_dev_with_own_nats(data.path(), &db.url, Stdio::piped())?;
    let api = api_address(&mut first).await?;
    stock(&db.url).await?;
    let token = token(data.path()).await?;

    // Load: 8 clients, each key used once; 202s are recorded.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let http = reqwest::Client::new();
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (accepted, stop, http, api, token) =
                (accepted.clone(), stop.clone(), http.clone(), api.clone(), token.clone());
            tokio::spawn(async move {
                for i in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    if let Some(id) = place(&http, &api, &token, &format!("kill-{c}-{i}")).await {
                        accepted.lock().expect("not poisoned").push(id);
                    }
                }
            })
        })
        .collect();
    let count = || accepted.lock().expect("not poisoned").len();
    eventually(Duration::from_secs(60), || async { (count() >= 40).then_some(()) }).await?;
    first.start_kill()?; // SIGKILL, with requests in flight
    first.wait().await?;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }
    let accepted = accepted.lock().expect("not poisoned").clone();

    // Its server goes with it (before the fix it kept running, holding the store).
    eventually(Duration::from_secs(30), || async {
        nats_servers_under(data.path()).is_empty().then_some(())
    })
    .await?;

    let mut second = souk_dev_with_own_nats(data.path(), &db.url, Stdio::piped())?;
    api_address(&mut second).await?;
    assert_eq!(nats_servers_under(data.path()).len(), 1, "exactly one nats-server on the store");
    all_stored(&db, &accepted).await?;
    second.start_kill()?;
    second.wait().await?;
    Ok(())
}

/// A nats-server still running on the data dir's store (its parent-death signal never
/// came: not Linux, or a start that died before it could set it) is stopped before
/// `souk dev` opens the store, and the new server serves what the old one stored.
#[tokio::test]
async fn souk_dev_stops_a_nats_server_left_on_its_data_dir_before_opening_the_store() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let mut first = souk_dev_with_own_nats(data.path(), &db.url, Stdio::piped())?;
    let api = api_address(&mut first).await?;
    stock(&db.url).await?;
    let token = token(data.path()).await?;
    let http = reqwest::Client::new();
    let before = place(&http, &api, &token, "left-1").await.expect("202");
    first.start_kill()?;
    first.wait().await?;
    eventually(Duration::from_secs(30), || async {
        nats_servers_under(data.path()).is_empty().then_some(())
    })
    .await?;

    // The leftover: a server on the data dir's config, not a child of any souk.
    let nats_dir = std::fs::canonicalize(data.path().join("nats"))?;
    let mut leftover = tokio::process::Command::new(souk_testkit::nats_server_bin()?)
        .arg("-c")
        .arg(nats_dir.join("nats.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let leftover_pid = leftover.id().expect("running");
    let ports_file = nats_dir.join("ports").join(format!("nats-server_{leftover_pid}.ports"));
    eventually(Duration::from_secs(30), || async { ports_file.exists().then_some(()) }).await?;

    let mut second = souk_dev_with_own_nats(data.path(), &db.url, Stdio::piped())?;
    let api = api_address(&mut second).await?;
    let exited = tokio::time::timeout(Duration::from_secs(5), leftover.wait()).await;
    assert!(exited.is_ok(), "the leftover nats-server {leftover_pid} was not stopped");
    let servers = nats_servers_under(data.path());
    assert_eq!(servers.len(), 1, "exactly one nats-server on the store: {servers:?}");
    assert_ne!(servers[0], leftover_pid);
    let after = place(&http, &api, &token, "left-2").await.expect("202");
    all_stored(&db, &[before, after]).await?;
    second.start_kill()?;
    second.wait().await?;
    Ok(())
}

/// `souk dev` on `data` with its own nats-server and `DATABASE_URL` (the conventional
/// variable, as `.souk/env` sets it): the data dir's own database on that server.
fn souk_dev_on_database_server(
    data: &std::path::Path,
    database_url: &str,
) -> std::io::Result<tokio::process::Child> {
    souk(data)
        .args(["dev", "--http-addr", "127.0.0.1:0"])
        .env_remove("SOUK_NATS_URL")
        .env_remove("SOUK_DATABASE_URL")
        .env("DATABASE_URL", database_url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
}

/// The order ids of the `OrderAccepted` and of the `OrderConfirmed` events in the EVT
/// stream of the `souk dev` running on `data`, each sorted (an order's saga publishes
/// more events: inventory, payments).
async fn evt_orders(data: &std::path::Path) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let url =
        souk_topologies::local_server::running_url(&data.join("nats")).ok_or(anyhow::anyhow!("no server"))?;
    let client = async_nats::connect(url).await?;
    let stream = async_nats::jetstream::new(client).get_stream("EVT").await?;
    let last = stream.get_info().await?.state.last_sequence;
    let (mut accepted, mut confirmed) = (Vec::new(), Vec::new());
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await?;
        let id =
            serde_json::from_slice::<serde_json::Value>(&m.payload)?["order_id"].as_str().map(str::to_owned);
        match (m.subject.as_str(), id) {
            (souk_pipelines::subjects::ORDERS_ACCEPTED, Some(id)) => accepted.push(id),
            (souk_pipelines::subjects::ORDERS_CONFIRMED, Some(id)) => confirmed.push(id),
            _ => {}
        }
    }
    accepted.sort();
    confirmed.sort();
    Ok((accepted, confirmed))
}

/// Two instances with different data dirs on one `DATABASE_URL` (each with its own
/// nats-server): each one's events land in its own EVT. Before, both used the one
/// database, and the relay holding its lease published every outbox row — the other
/// instance's too — into its own EVT. And a deployment refuses a database that
/// another deployment has claimed, even when it is named explicitly.
#[tokio::test]
async fn two_souk_devs_on_one_database_url_keep_their_events_apart() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let (a, b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let databases: Vec<String> = [&a, &b]
        .iter()
        .map(|d| Ok(souk_stores::postgres::database_for_dir(&db.url, &std::fs::canonicalize(d.path())?)))
        .collect::<anyhow::Result<_>>()?;
    let result = async {
        let mut instances = Vec::new();
        let http = reqwest::Client::new();
        let mut placed = Vec::new();
        for ((data, orders), url) in [(&a, 3), (&b, 2)].into_iter().zip(&databases) {
            let mut child = souk_dev_on_database_server(data.path(), &db.url)?;
            let api = api_address(&mut child).await?;
            stock(url).await?;
            let token = token(data.path()).await?;
            for i in 0..orders {
                let id = place(&http, &api, &token, &format!("side-{i}")).await.expect("202");
                placed.push((api.clone(), token.clone(), id));
            }
            instances.push(child);
        }
        // Every order stored and its saga confirmed (`souk dev` runs every pool), as its
        // own instance says.
        for (api, token, id) in &placed {
            eventually(Duration::from_secs(60), || async {
                let r = http.get(format!("{api}/v1/orders/{id}")).bearer_auth(token).send().await.ok()?;
                let body: serde_json::Value = r.json().await.ok()?;
                (body["status"] == "confirmed").then_some(())
            })
            .await?;
        }
        // Each instance's events in its own EVT (before: 5 in one, 0 in the other): each
        // order accepted and confirmed once, in its own instance's EVT.
        let ids_of = |from: std::ops::Range<usize>| -> Vec<String> {
            let mut ids: Vec<String> = placed[from].iter().map(|(_, _, id)| id.to_string()).collect();
            ids.sort();
            ids
        };
        let expected = [ids_of(0..3), ids_of(3..5)];
        let own = || async {
            let (a_events, b_events) = (evt_orders(a.path()).await.ok()?, evt_orders(b.path()).await.ok()?);
            Some([a_events, b_events])
        };
        eventually(Duration::from_secs(60), || async {
            let events = own().await?;
            events.iter().zip(&expected).all(|((acc, conf), ids)| acc == ids && conf == ids).then_some(())
        })
        .await?;
        // Quiescent: each database holds its own orders and has nothing left to publish;
        // the counts are still exact.
        for (url, orders) in databases.iter().zip([3, 2]) {
            let pool = sqlx::PgPool::connect(url).await?;
            let stored: i64 = sqlx::query_scalar("select count(*) from orders").fetch_one(&pool).await?;
            let unpublished: i64 =
                sqlx::query_scalar("select count(*) from outbox where published_at is null")
                    .fetch_one(&pool)
                    .await?;
            assert_eq!((stored, unpublished), (orders, 0), "{}", souk_stores::postgres::redact(url));
            pool.close().await;
        }
        for ((data, ids), name) in [a.path(), b.path()].into_iter().zip(&expected).zip(["a", "b"]) {
            let (accepted, confirmed) = evt_orders(data).await?;
            assert_eq!((&accepted, &confirmed), (ids, ids), "instance {name}'s events");
        }

        // `souk status` finds the instance through its data dir, and reads its database
        // (`DATABASE_URL`'s own is not even migrated).
        let status = souk(a.path())
            .args(["status", "--json"])
            .env_remove("SOUK_NATS_URL")
            .env_remove("SOUK_DATABASE_URL")
            .env("DATABASE_URL", &db.url)
            .output()
            .await?;
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&status.stdout)?["outbox_pending"], 0);

        // A third deployment told to use the first one's database by name is refused.
        let c = tempfile::tempdir()?;
        let refused = souk(c.path())
            .args(["dev", "--http-addr", "127.0.0.1:0"])
            .env_remove("SOUK_NATS_URL")
            .env("SOUK_DATABASE_URL", &databases[0])
            .output();
        // Bounded: before the check it started and ran (killed on drop).
        let refused = tokio::time::timeout(Duration::from_secs(60), refused).await??;
        let stderr = String::from_utf8(refused.stderr)?;
        assert!(!refused.status.success(), "{stderr}");
        assert!(stderr.contains("belongs to another souk deployment"), "{stderr}");

        for mut child in instances {
            let pid = child.id().expect("running");
            tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
            assert!(status.success(), "exit status {status}");
        }
        anyhow::Ok(())
    }
    .await;
    for url in &databases {
        souk_stores::postgres::drop_database(url).await?;
    }
    result
}

/// A data dir whose JetStream store was removed (its `nats/` directory) starts again on
/// its own database: nobody else can be using it (the data dir is locked), so the new
/// JetStream takes it over instead of being refused as another deployment.
#[tokio::test]
async fn a_data_dir_whose_jetstream_was_removed_takes_its_own_database_back() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let database = souk_stores::postgres::database_for_dir(&db.url, &std::fs::canonicalize(data.path())?);
    let result = async {
        for round in 0..2 {
            let mut child = souk_dev_on_database_server(data.path(), &db.url)?;
            api_address(&mut child).await.map_err(|e| e.context(format!("start {round}")))?;
            let pid = child.id().expect("running");
            tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await?;
            let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
            assert!(status.success(), "exit status {status}");
            std::fs::remove_dir_all(data.path().join("nats"))?;
        }
        anyhow::Ok(())
    }
    .await;
    souk_stores::postgres::drop_database(&database).await?;
    result
}
