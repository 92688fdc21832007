//! The operators' dashboard from the binary: `souk dev` serves it under `/ops/` on its
//! API address, `souk dashboard --data-dir` serves it alone for that `souk dev`; both
//! verify operator tokens with the data dir's key (the pages themselves are tested in
//! the dashboard crate).

use super::binary::{api_address, souk, souk_dev_with_own_nats};
use souk_testkit::TestDb;
use std::{process::Stdio, time::Duration};
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn souk_dev_serves_the_dashboard_beside_the_api_and_souk_dashboard_serves_it_alone()
-> anyhow::Result<()> {
    let db = TestDb::create().await?;
    let data = tempfile::tempdir()?;
    let mut dev = souk_dev_with_own_nats(data.path(), &db.url, Stdio::piped())?;
    let api = api_address(&mut dev).await?;
    let minted = souk(data.path()).args(["token", "--sub", "olga", "--role", "operator"]).output().await?;
    anyhow::ensure!(minted.status.success(), "{}", String::from_utf8_lossy(&minted.stderr));
    let operator = String::from_utf8(minted.stdout)?.trim().to_owned();
    let http = reqwest::Client::new();

    let stranger = http.get(format!("{api}/ops/")).send().await?;
    assert_eq!(stranger.status(), 401);
    let page = http.get(format!("{api}/ops/")).bearer_auth(&operator).send().await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains("data-pool=\"orders\""), "the topology's pools are shown");

    let mut alone = souk(data.path())
        .args(["dashboard", "--listen", "127.0.0.1:0"])
        .env("SOUK_DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut lines = BufReader::new(alone.stdout.take().expect("stdout piped")).lines();
    let base = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("souk dashboard: ") {
                let url = rest.split_whitespace().next().unwrap_or_default();
                return Ok(url.trim_end_matches("/ops/").to_owned());
            }
        }
        anyhow::bail!("souk dashboard exited before printing its address")
    })
    .await??;
    let status = http.get(format!("{base}/ops/status.json")).bearer_auth(&operator).send().await?;
    assert_eq!(status.status(), 200);
    let model: serde_json::Value = status.json().await?;
    let pools = model["pools"].as_array().map(Vec::len).unwrap_or(0);
    assert!(pools > 0, "the model of the running souk dev: {model}");
    let buyer = souk(data.path()).args(["token", "--sub", "bob", "--role", "buyer"]).output().await?;
    let buyer = String::from_utf8(buyer.stdout)?.trim().to_owned();
    assert_eq!(http.get(format!("{base}/ops/")).bearer_auth(&buyer).send().await?.status(), 403);

    alone.start_kill()?;
    alone.wait().await?;
    dev.start_kill()?;
    dev.wait().await?;
    Ok(())
}
