//! The router walk: every route of `souk_dashboard::ROUTES` (the table the router is
//! built from, so a new route cannot escape), with no principal, with tokens lacking
//! the operator role, and every POST without a CSRF token, with a wrong one and from
//! another site.

use reqwest::{Method, StatusCode};
use souk_dashboard::{Access, ROUTES};
use souk_ingress::Role;

use super::{actions, client, csrf_of, stack};

/// A concrete path for a route's pattern.
fn concrete(path: &str) -> String {
    path.replace("{seq}", "1").replace("{pool}", "orders")
}

#[tokio::test]
async fn every_route_refuses_strangers_and_non_operators_and_every_post_needs_same_origin_and_csrf()
-> anyhow::Result<()> {
    let stack = stack().await?;
    let http = client()?;
    let operator = stack.token("olga", &[Role::Operator]);
    // Every role but operator, at once: none of them opens the dashboard.
    let others = stack.token("root", &[Role::Admin, Role::Staff, Role::Support, Role::Seller, Role::Buyer]);
    let foreign = souk_ingress::Keys::from_secret(&[7u8; 32]).mint(&souk_ingress::Claims::new(
        "eve",
        "t1",
        vec![Role::Operator],
        std::time::Duration::from_secs(60),
    ));
    let page = http.get(format!("{}/ops/", stack.base)).bearer_auth(&operator).send().await?;
    assert_eq!(page.status(), StatusCode::OK);
    let csrf = csrf_of(&page.text().await?)?;

    let mut walked = Vec::new();
    for route in ROUTES {
        let url = format!("{}{}", stack.base, concrete(route.path));
        let what = format!("{} {}", route.method, route.path);
        let post = route.method == Method::POST;
        let send = |token: Option<&str>, form: &[(&str, &str)], headers: &[(&str, &str)]| {
            let mut r = http.request(route.method.clone(), &url);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            for (k, v) in headers {
                r = r.header(*k, *v);
            }
            if post {
                r = r.form(form);
            }
            r.send()
        };
        match route.access {
            Access::Public => {
                if post {
                    let cross =
                        send(None, &[("token", &operator)], &[("origin", "https://evil.example")]).await?;
                    assert_eq!(cross.status(), StatusCode::FORBIDDEN, "{what} from another Origin");
                    let fetch =
                        send(None, &[("token", &operator)], &[("sec-fetch-site", "cross-site")]).await?;
                    assert_eq!(
                        fetch.status(),
                        StatusCode::FORBIDDEN,
                        "{what} with Sec-Fetch-Site: cross-site"
                    );
                }
            }
            Access::Operator => {
                let none = send(None, &[], &[]).await?;
                assert_eq!(none.status(), StatusCode::UNAUTHORIZED, "{what} without a principal");
                let cookie = send(None, &[], &[("cookie", "souk_ops=0123456789abcdef")]).await?;
                assert_eq!(cookie.status(), StatusCode::UNAUTHORIZED, "{what} with an unknown session");
                let forged = send(Some(&foreign), &[], &[]).await?;
                assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "{what} with a token of another key");
                let other = send(Some(&others), &[("csrf", &csrf)], &[]).await?;
                assert_eq!(other.status(), StatusCode::FORBIDDEN, "{what} without the operator role");
                if post {
                    let missing = send(Some(&operator), &[("confirmed", "yes")], &[]).await?;
                    assert_eq!(missing.status(), StatusCode::FORBIDDEN, "{what} without a CSRF token");
                    let wrong = send(Some(&operator), &[("csrf", "0000"), ("confirmed", "yes")], &[]).await?;
                    assert_eq!(wrong.status(), StatusCode::FORBIDDEN, "{what} with a wrong CSRF token");
                    let form = [("csrf", csrf.as_str()), ("confirmed", "yes")];
                    let cross = send(Some(&operator), &form, &[("origin", "https://evil.example")]).await?;
                    assert_eq!(cross.status(), StatusCode::FORBIDDEN, "{what} from another Origin");
                    let fetch = send(Some(&operator), &form, &[("sec-fetch-site", "cross-site")]).await?;
                    assert_eq!(
                        fetch.status(),
                        StatusCode::FORBIDDEN,
                        "{what} with Sec-Fetch-Site: cross-site"
                    );
                    // Past the guards with the right token (the handler then refuses the
                    // empty form, or logs out): not a 401/403.
                    let same = stack.base.clone();
                    let ok = send(Some(&operator), &[("csrf", &csrf)], &[("origin", &same)]).await?;
                    assert!(
                        !matches!(ok.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN),
                        "{what} from the same origin with the CSRF token: {}",
                        ok.status()
                    );
                } else {
                    let ok = send(Some(&operator), &[], &[]).await?;
                    assert!(
                        matches!(ok.status(), StatusCode::OK | StatusCode::NOT_FOUND),
                        "{what} as an operator: {}",
                        ok.status()
                    );
                }
            }
        }
        walked.push(what);
    }
    assert_eq!(walked.len(), ROUTES.len());

    // A browser asking for a page is sent to the login page; a script is not.
    let browser = http.get(format!("{}/ops/", stack.base)).header("accept", "text/html").send().await?;
    assert_eq!(browser.status(), StatusCode::SEE_OTHER);
    assert_eq!(browser.headers()["location"], "/ops/login");
    assert!(actions(&stack).await?.is_empty(), "no guarded POST acted");
    Ok(())
}
