//! Carts: the emptying after a checkout takes out what the checkout read, nothing else.

use souk_stores::postgres::carts::{self, Put};
use uuid::Uuid;

use crate::db;

/// Review (twelfth session): a PUT that repeats a line's quantity (an HTTP client's
/// retry, an app syncing its cart) stamped the line as put anew, so a checkout that
/// had read it before left it in the cart under its order — and a second checkout
/// ordered and charged it again. A PUT is safe to repeat: the line stays the one read.
#[tokio::test]
async fn a_line_put_again_unchanged_after_the_checkout_read_the_cart_is_emptied() -> anyhow::Result<()> {
    let db = db().await?;
    let eur = "EUR".parse()?;
    let put = |sku: &'static str, quantity: i64, price: i64| {
        carts::put_item(&db.pool, "t", "b", sku, quantity, (price, eur), 100)
    };
    assert_eq!(put("MUG", 1, 100).await?, Put::Stored);
    assert_eq!(put("TEA", 2, 100).await?, Put::Stored);
    let read = carts::items(&db.pool, "t", "b").await?;
    assert_eq!(put("MUG", 1, 120).await?, Put::Stored, "the same quantity (the price seen anew)");
    assert_eq!(put("TEA", 3, 100).await?, Put::Stored, "another quantity: not what was ordered");
    carts::checked_out(&db.pool, "t", "b", "k", Uuid::now_v7(), &read).await?;
    let left: Vec<(String, i64)> =
        carts::items(&db.pool, "t", "b").await?.into_iter().map(|i| (i.sku, i.quantity)).collect();
    assert_eq!(left, [("TEA".to_owned(), 3)], "the repeated mug went with the order");
    Ok(())
}

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

/// Second review (twelfth session): a request that gave its claim of the cart up (it
/// placed nothing) released it by key, also when a retry under the key had renewed it
/// meanwhile — and that retry's order might be stored with the cart still full, so a
/// checkout under another key could order it again. Only the claim a request made is
/// given up.
#[tokio::test]
async fn giving_a_claim_up_leaves_the_claim_a_retry_renewed() -> anyhow::Result<()> {
    use carts::CheckoutClaim;
    let db = db().await?;
    let hold = std::time::Duration::from_secs(300);
    let (first, until) = carts::begin_checkout(&db.pool, "t", "b", "k1", hold).await?;
    assert_eq!(first, CheckoutClaim::Fresh);
    let (retry, _) = carts::begin_checkout(&db.pool, "t", "b", "k1", hold).await?;
    assert_eq!(retry, CheckoutClaim::Renewed);
    carts::end_checkout(&db.pool, "t", "b", "k1", until.expect("claimed")).await?;
    let (other, _) = carts::begin_checkout(&db.pool, "t", "b", "k2", hold).await?;
    assert_eq!(other, CheckoutClaim::Busy, "the retry still holds the cart");
    Ok(())
}
