//! The follow-an-order page renders the engine's trace of an order placed through the
//! API: the request, its command with its CMD sequence, a failed attempt with its
//! error, the saga's steps; an unknown id is a 404 page, and the page is the operators'
//! only.

use reqwest::StatusCode;
use souk_ingress::Role;
use souk_testkit::{eventually, order_body};
use std::time::Duration;

use super::{client, stack};

#[tokio::test]
async fn the_trace_page_follows_an_order_through_its_pipelines_and_refuses_unknown_ids() -> anyhow::Result<()>
{
    let stack = stack().await?;
    // The order's first handling fails (a serialization failure: retried).
    sqlx::raw_sql(
        r#"create sequence order_insert_failures;
           create function fail_once() returns trigger language plpgsql as $$
           begin
               if nextval('order_insert_failures') = 1 then
                   raise exception 'lost a race once' using errcode = 'serialization_failure';
               end if;
               return new;
           end $$;
           create trigger fail_once before insert on orders for each row execute function fail_once();"#,
    )
    .execute(&stack.db.pool)
    .await?;
    stack.seed_skus(&["SKU-T"]).await?;
    let buyer = stack.token("tia", &[Role::Buyer]);
    let (status, body) = stack.place(&buyer, "trace-1", &order_body("SKU-T", 1)).await?;
    assert_eq!(status, 202, "{body}");
    let order_id = body["order_id"].as_str().unwrap_or_default().to_owned();
    let operator = stack.token("olga", &[Role::Operator]);
    let http = client()?;
    let get = |id: &str| {
        http.get(format!("{}/ops/trace", stack.base)).query(&[("id", id)]).bearer_auth(&operator).send()
    };
    // The saga runs on: wait until the page shows the order's reservation handled.
    let html = eventually(Duration::from_secs(60), || async {
        let page = get(&order_id).await.ok()?;
        let html = page.text().await.ok()?;
        (html.contains("souk.evt.inventory.reserved")
            && html.contains(r#"class="handled""#)
            && html.contains(r#"class="attempt""#))
        .then_some(html)
    })
    .await?;
    assert!(html.contains(&order_id), "names the order");
    assert!(
        html.contains("lost a race once") && html.contains("delivery 1 to orders-place failed"),
        "{html}"
    );
    for kind in ["request", "command", "attempt", "published", "handled", "step"] {
        assert!(html.contains(&format!(r#"<tr class="{kind}">"#)), "a {kind} row: {html}");
    }
    assert!(html.contains("souk.cmd.orders.place") && html.contains("CMD#"), "the command with its sequence");

    let unknown = get("00000000-0000-7000-8000-000000000000").await?;
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(unknown.text().await?.contains("No order is known by"));
    // The bare page is a form; a buyer is refused.
    assert_eq!(
        http.get(format!("{}/ops/trace", stack.base)).bearer_auth(&operator).send().await?.status(),
        200
    );
    let refused = http.get(format!("{}/ops/trace", stack.base)).bearer_auth(&buyer).send().await?;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    Ok(())
}
