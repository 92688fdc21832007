//! Logging in, the session cookie's flags, the CSRF token of a session, and the
//! confirmation step of every action: a dead-letter redrive, a purge of a selection and
//! a pool pause happen only once confirmed, and each is recorded with who did it.

use reqwest::{StatusCode, header};
use souk_ingress::Role;
use souk_testkit::eventually;
use std::time::Duration;

use super::{actions, client, csrf_of, dead_letter, stack};

#[tokio::test]
async fn a_login_gives_a_strict_http_only_cookie_and_actions_need_its_csrf_token_and_a_confirmation()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let http = client()?;
    let login = |token: String| {
        let http = http.clone();
        let url = format!("{}/ops/login", stack.base);
        async move { http.post(url).form(&[("token", token)]).send().await }
    };
    assert_eq!(login("not a token".into()).await?.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(login(stack.token("bob", &[Role::Buyer, Role::Admin])).await?.status(), StatusCode::FORBIDDEN);

    let token = stack.token("olga", &[Role::Operator]);
    let ok = login(token.clone()).await?;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()[header::LOCATION], "/ops/");
    let set = ok.headers()[header::SET_COOKIE].to_str()?.to_owned();
    let parts: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(parts.contains(&"HttpOnly"), "{set}");
    assert!(parts.contains(&"SameSite=Strict"), "{set}");
    assert!(parts.contains(&"Path=/ops"), "{set}");
    assert!(!set.contains(&token), "the token is not in the cookie");
    let cookie = parts[0].to_owned();
    let id = cookie.strip_prefix("souk_ops=").unwrap_or_default();
    assert_eq!(id.len(), 64, "256 random bits: {cookie}");

    let get = |path: &str| http.get(format!("{}{path}", stack.base)).header(header::COOKIE, &cookie).send();
    let page = get("/ops/").await?;
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await?;
    let csrf = csrf_of(&html)?;
    assert!(
        html.contains("orders-place") && html.contains("data-pool=\"orders\""),
        "pools and consumers shown"
    );
    // Another session has another CSRF token: one session's token is no good in another.
    let other = login(stack.token("olga", &[Role::Operator])).await?;
    let other_cookie =
        other.headers()[header::SET_COOKIE].to_str()?.split(';').next().unwrap_or_default().to_owned();
    assert_ne!(other_cookie, cookie);
    let other_csrf = csrf_of(
        &http
            .get(format!("{}/ops/", stack.base))
            .header(header::COOKIE, &other_cookie)
            .send()
            .await?
            .text()
            .await?,
    )?;
    assert_ne!(other_csrf, csrf);

    let post = |path: &str, form: Vec<(&str, String)>| {
        http.post(format!("{}{path}", stack.base)).header(header::COOKIE, &cookie).form(&form).send()
    };
    let seq = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom: no address").await?;
    let kept = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom: no parcel").await?;
    let redrive = |csrf: &str, confirmed: bool| {
        let mut form =
            vec![("csrf", csrf.to_owned()), ("scope", "selected".into()), ("seq", seq.to_string())];
        if confirmed {
            form.push(("confirmed", "yes".into()));
        }
        post("/ops/dlq/redrive", form)
    };
    // Another session's token, confirmed: refused, nothing done.
    assert_eq!(redrive(&other_csrf, true).await?.status(), StatusCode::FORBIDDEN);
    // Not confirmed: a confirmation page naming the letter, nothing done.
    let asked = redrive(&csrf, false).await?;
    assert_eq!(asked.status(), StatusCode::OK);
    let asked = asked.text().await?;
    assert!(
        asked.contains("Redrive dead letters?") && asked.contains(&format!("#{seq} fulfilment")),
        "{asked}"
    );
    assert!(asked.contains(r#"name="confirmed" value="yes""#), "{asked}");
    let listed = get("/ops/dlq").await?.text().await?;
    assert!(listed.contains(&format!("data-seq=\"{seq}\"")), "still there before the confirmation");
    assert!(actions(&stack).await?.is_empty());
    // Confirmed with the session's token: done and recorded.
    let done = redrive(&csrf, true).await?;
    assert_eq!(done.status(), StatusCode::OK);
    assert!(done.text().await?.contains("1 redriven, 0 failed"));
    let listed = get("/ops/dlq").await?.text().await?;
    assert!(!listed.contains(&format!("data-seq=\"{seq}\"")), "gone after the redrive");
    assert!(listed.contains(&format!("data-seq=\"{kept}\"")), "the other one stays");

    // Purge of a selection: confirmation first, then exactly the selection.
    let purge = |confirmed: bool| {
        let mut form = vec![("csrf", csrf.clone()), ("scope", "selected".into()), ("seq", kept.to_string())];
        if confirmed {
            form.push(("confirmed", "yes".into()));
        }
        post("/ops/dlq/purge", form)
    };
    assert!(purge(false).await?.text().await?.contains("cannot be recovered"));
    assert!(get("/ops/dlq").await?.text().await?.contains(&format!("data-seq=\"{kept}\"")));
    assert!(purge(true).await?.text().await?.contains("1 purged"));
    assert!(!get("/ops/dlq").await?.text().await?.contains(&format!("data-seq=\"{kept}\"")));

    // Pause a pool: confirmation first, then every process follows.
    let pause = |confirmed: bool| {
        let mut form = vec![("csrf", csrf.clone()), ("action", "pause".into())];
        if confirmed {
            form.push(("confirmed", "yes".into()));
        }
        post("/ops/pools/fulfilment", form)
    };
    assert!(pause(false).await?.text().await?.contains("Pause pool fulfilment"));
    assert!(
        souk_topologies::control::read_all(&stack.js)
            .await?
            .iter()
            .all(|(pool, s)| pool != "fulfilment" || !s.paused),
        "not paused before the confirmation"
    );
    assert!(pause(true).await?.text().await?.contains("Pool fulfilment: paused"));
    eventually(Duration::from_secs(20), || async {
        let page = get("/ops/").await?.text().await?;
        anyhow::Ok(page.contains("paused by olga").then_some(()))
    })
    .await?;
    assert_eq!(
        actions(&stack).await?,
        [
            ("olga", "dlq.redrive-begun", "fulfilment"),
            ("olga", "dlq.redrive", "fulfilment"),
            ("olga", "dlq.purge-begun", "fulfilment"),
            ("olga", "dlq.purge", "fulfilment"),
            ("olga", "pool.pause", "fulfilment")
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
    let listed = get("/ops/actions").await?.text().await?;
    assert!(listed.contains("pool.pause") && listed.contains("olga"));

    // Logged out: the session is gone.
    let out = post("/ops/logout", vec![("csrf", csrf.clone())]).await?;
    assert_eq!(out.status(), StatusCode::SEE_OTHER);
    assert_eq!(get("/ops/").await?.status(), StatusCode::UNAUTHORIZED);
    Ok(())
}

/// The confirmed redrive of dead letter `seq`, as the confirmation page posts it.
fn confirmed_redrive(
    stack: &souk_testkit::Stack,
    http: &reqwest::Client,
    cookie: &str,
    csrf: &str,
    seq: u64,
) -> reqwest::RequestBuilder {
    let form = [
        ("csrf", csrf.to_owned()),
        ("scope", "selected".into()),
        ("seq", seq.to_string()),
        ("confirmed", "yes".into()),
    ];
    http.post(format!("{}/ops/dlq/redrive", stack.base)).header(header::COOKIE, cookie).form(&form)
}

/// Log olga (an operator) in: her session cookie and its CSRF token.
async fn logged_in(stack: &souk_testkit::Stack, http: &reqwest::Client) -> anyhow::Result<(String, String)> {
    let ok = http
        .post(format!("{}/ops/login", stack.base))
        .form(&[("token", stack.token("olga", &[Role::Operator]))])
        .send()
        .await?;
    let cookie = ok.headers()[header::SET_COOKIE].to_str()?.split(';').next().unwrap_or_default().to_owned();
    let page = http.get(format!("{}/ops/", stack.base)).header(header::COOKIE, &cookie).send().await?;
    let csrf = csrf_of(&page.text().await?)?;
    Ok((cookie, csrf))
}

/// The value of the hidden field `name` in a confirmation page.
fn hidden(html: &str, name: &str) -> anyhow::Result<String> {
    let tag = format!(r#"name="{name}" value=""#);
    let at = html.find(&tag).ok_or_else(|| anyhow::anyhow!("no {name} field in {html}"))?;
    let rest = &html[at + tag.len()..];
    Ok(rest[..rest.find('"').unwrap_or(0)].to_owned())
}

/// Found in review: the confirmed post re-ran the filter, so "Purge 1" purged every
/// letter that matched by the time of the click — letters nobody had seen, lost.
#[tokio::test]
async fn a_confirmed_purge_of_a_filter_takes_only_the_letters_the_confirmation_counted() -> anyhow::Result<()>
{
    let stack = stack().await?;
    let http = client()?;
    let (cookie, csrf) = logged_in(&stack, &http).await?;
    let get = |path: &str| http.get(format!("{}{path}", stack.base)).header(header::COOKIE, &cookie).send();
    let post = |form: Vec<(String, String)>| {
        http.post(format!("{}/ops/dlq/purge", stack.base)).header(header::COOKIE, &cookie).form(&form).send()
    };
    let seen = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom: seen").await?;
    let filter = vec![
        ("csrf".to_owned(), csrf.clone()),
        ("scope".into(), "filter".into()),
        ("consumer".into(), "fulfilment".into()),
    ];
    let page = post(filter.clone()).await?.text().await?;
    assert!(page.contains("Yes, purge 1"), "{page}");
    let (upto, dlq) = (hidden(&page, "upto")?, hidden(&page, "dlq")?);
    assert_eq!(upto, seen.to_string());
    // A letter arrives while the operator reads the confirmation.
    let unseen = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom: unseen").await?;
    let mut confirmed = filter.clone();
    confirmed.extend([
        ("upto".into(), upto),
        ("dlq".into(), dlq.clone()),
        ("confirmed".into(), "yes".into()),
    ]);
    let done = post(confirmed).await?.text().await?;
    assert!(done.contains("1 purged"), "{done}");
    let listed = get("/ops/dlq").await?.text().await?;
    assert!(!listed.contains(&format!("data-seq=\"{seen}\"")), "the letter seen is purged");
    assert!(listed.contains(&format!("data-seq=\"{unseen}\"")), "the one that came after stays: {listed}");
    // A confirmed filter without the page's bound, or for another stream: nothing done.
    let mut unbounded = filter.clone();
    unbounded.push(("confirmed".into(), "yes".into()));
    assert_eq!(post(unbounded).await?.status(), StatusCode::BAD_REQUEST);
    let mut no_stream = filter.clone();
    no_stream.extend([("upto".into(), unseen.to_string()), ("confirmed".into(), "yes".into())]);
    assert_eq!(post(no_stream).await?.status(), StatusCode::BAD_REQUEST, "the DLQ seen is named too");
    let mut other = filter;
    other.extend([
        ("upto".into(), unseen.to_string()),
        ("dlq".into(), "1".into()),
        ("confirmed".into(), "yes".into()),
    ]);
    assert_eq!(post(other).await?.status(), StatusCode::CONFLICT);
    assert!(get("/ops/dlq").await?.text().await?.contains(&format!("data-seq=\"{unseen}\"")));
    Ok(())
}

/// Found in review: a client that hung up mid-action (a closed tab, a proxy's read
/// timeout) dropped the handler, cutting the action off after the work and before its
/// `operator_actions` row; and a row that could not be written read as "nothing done".
#[tokio::test]
async fn a_redrive_whose_client_hangs_up_is_still_recorded_and_one_not_recorded_says_what_was_done()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let http = client()?;
    let (cookie, csrf) = logged_in(&stack, &http).await?;
    let seq = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom").await?;
    // Whether dead letter `seq` is still in the DLQ (a redriven copy the pools cannot
    // read comes back as a new letter, under a new sequence).
    let js = &stack.js;
    let kept = |seq: u64| async move {
        match js.get_stream("DLQ").await?.get_raw_message(seq).await {
            Ok(_) => anyhow::Ok(true),
            Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    };

    // The outcome's record waits behind a lock (on the dead letters' records, written in
    // its transaction) while the client gives up.
    let mut lock = stack.db.pool.begin().await?;
    sqlx::query("lock table dead_letters in exclusive mode").execute(&mut *lock).await?;
    let client = tokio::spawn(confirmed_redrive(&stack, &http, &cookie, &csrf, seq).send());
    eventually(Duration::from_secs(20), || async { anyhow::Ok((!kept(seq).await?).then_some(())) }).await?;
    client.abort();
    let _ = client.await;
    lock.rollback().await?;
    eventually(Duration::from_secs(20), || async {
        let done = actions(&stack)
            .await?
            .iter()
            .any(|(actor, action, _)| actor == "olga" && action == "dlq.redrive");
        anyhow::Ok(done.then_some(()))
    })
    .await?;

    // A row Postgres refuses after the work: the error names what was done.
    let again = dead_letter(&stack, "fulfilment", "souk.cmd.fulfilment.ship", "boom again").await?;
    sqlx::query(
        "create function refuse() returns trigger language plpgsql as $$ begin raise exception 'refused'; end $$",
    )
    .execute(&stack.db.pool)
    .await?;
    sqlx::query(
        "create trigger refuse before insert on operator_actions for each row
         when (new.action = 'dlq.redrive') execute function refuse()",
    )
    .execute(&stack.db.pool)
    .await?;
    let selection = souk_topologies::dead_letters::Selection::Seqs(vec![again]);
    let actor = souk_stores::operate::Actor("olga".into());
    let publisher = souk_topologies::publisher::Publisher::new(stack.client.clone(), Duration::from_secs(2));
    let err = souk_stores::operate::redrive(&publisher, &stack.db.pool, &actor, &selection)
        .await
        .expect_err("not recorded");
    assert!(
        matches!(&err, souk_stores::operate::Error::NotRecorded(m) if m.contains(&format!("redriven ([{again}])"))),
        "{err:?}"
    );
    assert!(!kept(again).await?, "it was done");
    Ok(())
}

/// Found in review: a node stopped (a deploy) while a dashboard redrive ran, after its
/// browser hung up, dropped the action half done with no record. The node now waits for
/// it, and it is on record as begun before it acts.
#[tokio::test]
async fn a_node_stopped_during_an_action_lets_it_finish_and_record_it() -> anyhow::Result<()> {
    let mut stack = souk_testkit::Stack::start_with(souk_testkit::StackOptions {
        dashboard: Some(Duration::from_millis(500)),
        write_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await?;
    let http = client()?;
    let (cookie, csrf) = logged_in(&stack, &http).await?;
    // A stream that stores without acking: the redrive waits for its PubAck (the write
    // timeout), as a long redrive of many letters is still running.
    stack
        .js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "HOLD".into(),
            subjects: vec!["hold.>".into()],
            no_ack: true,
            ..Default::default()
        })
        .await?;
    let seq = dead_letter(&stack, "fulfilment", "hold.x", "boom").await?;
    let client = tokio::spawn(confirmed_redrive(&stack, &http, &cookie, &csrf, seq).send());
    eventually(Duration::from_secs(20), || async {
        let begun = actions(&stack).await?.iter().any(|(_, action, _)| action == "dlq.redrive-begun");
        anyhow::Ok(begun.then_some(()))
    })
    .await?;
    client.abort();
    let _ = client.await;
    stack.stop_node().await;
    let recorded: Vec<String> = actions(&stack).await?.into_iter().map(|(_, action, _)| action).collect();
    assert_eq!(recorded, ["dlq.redrive-begun", "dlq.redrive"], "stopping waited for the action's outcome");
    Ok(())
}

/// Found in review: behind a proxy that rewrites `Host` (nginx's default), `Origin` is
/// the public name and `Host` the upstream's: every POST, login included, was a 403.
#[tokio::test]
async fn a_login_through_a_proxy_that_rewrites_host_is_accepted_and_cross_site_posts_are_not()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let http = client()?;
    let token = stack.token("olga", &[Role::Operator]);
    let login = |extra: Vec<(&'static str, &'static str)>| {
        let mut request = http.post(format!("{}/ops/login", stack.base)).form(&[("token", token.clone())]);
        for (name, value) in extra {
            request = request.header(name, value);
        }
        request.send()
    };
    let public = "https://ops.example.com";
    // A browser behind the proxy: Sec-Fetch-Site says same-origin.
    let ok = login(vec![("origin", public), ("sec-fetch-site", "same-origin")]).await?;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    // An older browser without Sec-Fetch-Site, through a proxy that says the public host.
    let ok = login(vec![("origin", public), ("x-forwarded-host", "ops.example.com")]).await?;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    // Still refused: another site's page, by either header.
    let refused = login(vec![("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")]).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused = login(vec![("origin", "https://evil.example")]).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let refused = login(vec![("origin", public), ("sec-fetch-site", "same-site")]).await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    Ok(())
}

/// Found in review: the live event stream, checked only when it opened, went on
/// streaming the pipeline's status to a tab whose operator had logged out.
#[tokio::test]
async fn the_live_stream_of_a_session_ends_when_it_logs_out() -> anyhow::Result<()> {
    let stack = stack().await?;
    let http = client()?;
    let (cookie, csrf) = logged_in(&stack, &http).await?;
    let mut events =
        http.get(format!("{}/ops/events", stack.base)).header(header::COOKIE, &cookie).send().await?;
    assert_eq!(events.status(), StatusCode::OK);
    let first = events.chunk().await?.expect("a first event");
    assert!(String::from_utf8_lossy(&first).contains("event: live"), "{first:?}");
    let out = http
        .post(format!("{}/ops/logout", stack.base))
        .header(header::COOKIE, &cookie)
        .form(&[("csrf", csrf)])
        .send()
        .await?;
    assert!(out.status().is_success() || out.status().is_redirection(), "{}", out.status());
    // The stream ends at its next refresh (twice a second here); the bound is generous.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while events.chunk().await?.is_some() {}
        anyhow::Ok(())
    })
    .await;
    assert!(matches!(ended, Ok(Ok(()))), "the stream went on after the logout: {ended:?}");
    Ok(())
}
