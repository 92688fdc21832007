//! The dashboard in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/prepare`), driven over WebDriver, in a
//! narrow window: log in, watch a pool's numbers change live after load is published,
//! pause a pool, redrive a dead letter with the button and see it disappear.
//! Screenshots go to `target/tmp/dashboard-screenshots/` (the path is printed).
//! Without Chromium the test FAILS, saying how to install it: it is never skipped.

use fantoccini::{Client, ClientBuilder, Locator};
use souk_ingress::Role;
use souk_testkit::{eventually, order_body};
use std::{path::PathBuf, process::Stdio, time::Duration};

use super::{dead_letter, stack};

/// A chromedriver of this test, on a free port, killed with it.
struct Driver {
    _child: tokio::process::Child,
    url: String,
}

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

async fn chromedriver() -> anyhow::Result<Driver> {
    let (Some(driver), Some(_)) = (find_binary("chromedriver"), find_binary("chromium")) else {
        anyhow::bail!(
            "chromium or chromedriver is not installed: run scripts/prepare (it installs Debian's chromium and \
             chromium-driver); the dashboard's browser test does not skip"
        );
    };
    // A free port, read back from the OS (chromedriver cannot report one it picked).
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let child = tokio::process::Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--log-level=WARNING")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    eventually(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
    })
    .await?;
    Ok(Driver { _child: child, url: format!("http://127.0.0.1:{port}") })
}

async fn browser(driver: &Driver) -> anyhow::Result<Client> {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            // A narrow window: the dashboard must work in one.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=480,1400"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    Ok(ClientBuilder::new(connector).capabilities(caps).connect(&driver.url).await?)
}

async fn screenshot(c: &Client, name: &str) -> anyhow::Result<()> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, c.screenshot().await?)?;
    println!("screenshot: {}", path.display());
    Ok(())
}

/// The text of the element `css` selects, `None` if there is none. The live view
/// replaces its elements on every server-sent update, so an element found can be gone
/// ("stale") before it is read: then it is found again.
async fn text(c: &Client, css: &str) -> anyhow::Result<Option<String>> {
    for _ in 0..20 {
        let read = match c.find(Locator::Css(css)).await {
            Ok(e) => e.text().await,
            Err(e) if e.is_no_such_element() => return Ok(None),
            Err(e) => Err(e),
        };
        match read {
            Ok(t) => return Ok(Some(t)),
            Err(e) if e.is_stale_element_reference() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("{css} was replaced 20 times in a row while being read")
}

/// Click the element `css` selects, finding it again if a live update replaced it.
async fn click(c: &Client, css: &str) -> anyhow::Result<()> {
    for _ in 0..20 {
        match c.find(Locator::Css(css)).await?.click().await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_stale_element_reference() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("{css} was replaced 20 times in a row while being clicked")
}

#[tokio::test]
async fn an_operator_logs_in_watches_a_pool_live_pauses_a_pool_and_redrives_a_dead_letter_in_chromium()
-> anyhow::Result<()> {
    let driver = chromedriver().await?;
    let stack = stack().await?;
    stack.seed_skus(&["MUG-1"]).await?;
    let seq = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom: no address").await?;
    let c = browser(&driver).await?;
    let run = async {
        // Log in: a browser without a session is sent to the login page.
        c.goto(&format!("{}/ops/", stack.base)).await?;
        c.wait()
            .for_element(Locator::Id("token"))
            .await?
            .send_keys(&stack.token("olga", &[Role::Operator]))
            .await?;
        screenshot(&c, "1-login").await?;
        c.find(Locator::Id("login")).await?.click().await?;
        c.wait().for_element(Locator::Id("live")).await?;

        // Numbers change live (server-sent events, no reload) once orders come in.
        let handled = "#pools tr[data-pool='orders'] td.handled";
        let before: u64 = text(&c, handled).await?.unwrap_or_default().trim().parse().unwrap_or(0);
        let buyer = stack.token("bob", &[Role::Buyer]);
        for i in 0..5 {
            let (status, body) = stack.place(&buyer, &format!("k-{i}"), &order_body("MUG-1", 1)).await?;
            anyhow::ensure!(status == 202, "{status} {body}");
        }
        let url_before = c.current_url().await?;
        let after = eventually(Duration::from_secs(60), || async {
            let now: u64 = text(&c, handled).await?.unwrap_or_default().trim().parse().unwrap_or(0);
            anyhow::Ok((now >= before + 5).then_some(now))
        })
        .await?;
        assert_eq!(c.current_url().await?, url_before, "updated in place, not reloaded");
        println!("orders handled: {before} → {after}");
        screenshot(&c, "2-overview-after-load").await?;

        // Pause a pool: the button, the confirmation, then the pool reports it.
        click(&c, "#controls tr[data-pool='fulfilment'] button[value='pause']").await?;
        c.wait().for_element(Locator::Id("confirm")).await?;
        screenshot(&c, "3-confirm-pause").await?;
        c.find(Locator::Id("confirm")).await?.click().await?;
        c.wait().for_element(Locator::Id("back")).await?;
        c.goto(&format!("{}/ops/", stack.base)).await?;
        eventually(Duration::from_secs(30), || async {
            let state = text(&c, "#pools tr[data-pool='fulfilment'] td.state").await?.unwrap_or_default();
            anyhow::Ok((state == "paused").then_some(()))
        })
        .await?;
        screenshot(&c, "4-paused").await?;

        // Redrive a dead letter with the button; it leaves the list (its pool is paused,
        // so the copy waits in CMD instead of failing again).
        c.goto(&format!("{}/ops/dlq", stack.base)).await?;
        let row = format!("#dead-letters tr[data-seq='{seq}']");
        c.wait().for_element(Locator::Css(&format!("{row} input[type='checkbox']"))).await?.click().await?;
        screenshot(&c, "5-dead-letters").await?;
        c.find(Locator::Id("redrive-selected")).await?.click().await?;
        c.wait().for_element(Locator::Id("confirm")).await?.click().await?;
        let done = c.wait().for_element(Locator::Css(".notice")).await?.text().await?;
        assert!(done.contains("1 redriven, 0 failed"), "{done}");
        c.find(Locator::Id("back")).await?.click().await?;
        c.wait().for_element(Locator::Id("dead-letters")).await?;
        assert_eq!(text(&c, &row).await?, None, "the redriven dead letter is gone");
        screenshot(&c, "6-redriven").await?;
        anyhow::Ok(())
    }
    .await;
    if run.is_err() {
        let _ = screenshot(&c, "failure").await;
    }
    c.close().await?;
    run
}
