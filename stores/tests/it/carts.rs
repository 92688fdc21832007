//! Carts: the emptying after a checkout takes out what the checkout read, nothing else.

use souk_stores::postgres::carts::{self, Put};
use uuid::Uuid;

use crate::db;

/// Review (tenth session): the emptying matched lines by SKU and quantity only, so a
/// line the buyer removed and put back after the checkout read the cart — not part of
/// the order — was emptied with it.
#[tokio::test]
async fn a_line_put_back_after_the_checkout_read_the_cart_stays_in_it() -> anyhow::Result<()> {
    let db = db().await?;
    let eur = "EUR".parse()?;
    let put = |sku: &'static str| carts::put_item(&db.pool, "t", "b", sku, 1, (100, eur), 100);
    assert_eq!(put("MUG").await?, Put::Stored);
    assert_eq!(put("TEA").await?, Put::Stored);
    let read = carts::items(&db.pool, "t", "b").await?;
    assert!(carts::remove_item(&db.pool, "t", "b", "MUG").await?);
    assert_eq!(put("MUG").await?, Put::Stored);

    let order = Uuid::now_v7();
    carts::checked_out(&db.pool, "t", "b", "k", order, &read).await?;
    let left: Vec<String> = carts::items(&db.pool, "t", "b").await?.into_iter().map(|i| i.sku).collect();
    assert_eq!(left, ["MUG"], "the mug put back after the read stays; the tea was ordered");
    let taken = carts::checkout_lines(&db.pool, "t", "b", order).await?;
    assert_eq!(taken, Some(vec![("MUG".into(), 1), ("TEA".into(), 1)]), "what the order took");
    // Recorded again (a retry): nothing more is emptied.
    carts::checked_out(&db.pool, "t", "b", "k", order, &carts::items(&db.pool, "t", "b").await?).await?;
    assert_eq!(carts::items(&db.pool, "t", "b").await?.len(), 1);
    Ok(())
}
