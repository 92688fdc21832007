//! `GET /v1/orders/{id}`: the order and its saga as of one moment.

use souk_ingress::Role;
use souk_pipelines::orders::{PlaceOrder, PricedLine};
use souk_stores::postgres::{orders, sagas};
use std::time::Duration;
use uuid::Uuid;

use crate::env;

/// Review (twelfth session): the order and its saga were read apart, so a reply
/// committed between the two reads made one answer say `accepted` beside a saga
/// already `fulfilling`. Here the change (saga and order, one transaction) commits
/// while the read waits for the saga table, after it read the order.
#[tokio::test]
async fn an_order_and_its_saga_are_read_as_of_one_moment() -> anyhow::Result<()> {
    let env = env().await?;
    let cmd = PlaceOrder {
        order_id: Uuid::now_v7(),
        tenant: "t1".into(),
        buyer_id: "u1".into(),
        currency: "EUR".parse()?,
        lines: vec![PricedLine { sku: "A".into(), seller: "s1".into(), quantity: 1, unit_price_minor: 100 }],
        total_minor: 100,
        payment_token: Some("tok_ok".into()),
        placed_at: chrono::Utc::now(),
        cart: None,
    };
    let mut tx = env.db.pool.begin().await?;
    orders::insert_accepted_many(&mut tx, &[(&cmd, None)]).await?;
    let saga = sagas::NewSaga {
        order_id: cmd.order_id,
        tenant: "t1".into(),
        state: "capturing".into(),
        deadline: None,
        reason: None,
        payment_token: None,
        hold_until: chrono::Utc::now(),
    };
    sagas::insert_many(&mut tx, &[saga]).await?;
    tx.commit().await?;

    // The capture's reply, held open with the saga table locked.
    let mut reply = env.db.pool.begin().await?;
    sqlx::query("lock table sagas in access exclusive mode").execute(&mut *reply).await?;
    sqlx::query("update sagas set state = 'fulfilling' where order_id = $1")
        .bind(cmd.order_id)
        .execute(&mut *reply)
        .await?;
    sqlx::query("update orders set status = 'confirmed' where order_id = $1")
        .bind(cmd.order_id)
        .execute(&mut *reply)
        .await?;
    let token = env.token(&[Role::Buyer]);
    let path = format!("/v1/orders/{}", cmd.order_id);
    let read = tokio::spawn({
        let env_router = env.router();
        let token = token.clone();
        async move {
            let request = axum::http::Request::get(path.as_str())
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())?;
            crate::send(env_router, request).await
        }
    });
    // The read waits on the saga table: it has read the order.
    souk_testkit::eventually(Duration::from_secs(10), || async {
        let waiting: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and wait_event_type = 'Lock' and query like '%from sagas%'",
        )
        .fetch_one(&env.db.pool)
        .await?;
        anyhow::Ok((waiting > 0).then_some(()))
    })
    .await?;
    reply.commit().await?;
    let (status, _, body) = read.await??;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["status"].as_str(), body["saga"]["state"].as_str()),
        (Some("accepted"), Some("capturing")),
        "one moment: {body}"
    );
    // Read again: the change, whole.
    let (_, body) = env.call(&token, "GET", &format!("/v1/orders/{}", cmd.order_id), None, None).await?;
    assert_eq!(
        (body["status"].as_str(), body["saga"]["state"].as_str()),
        (Some("confirmed"), Some("fulfilling"))
    );
    Ok(())
}
