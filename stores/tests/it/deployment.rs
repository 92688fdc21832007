//! Which deployment a database belongs to: the first claim wins, the owner's own claims
//! agree, another deployment is refused unless it may take over.

use souk_stores::postgres::{
    self as pg,
    deployment::{Claim, claim},
};
use souk_testkit::TestDb;

#[tokio::test]
async fn a_database_is_claimed_by_one_deployment_and_refused_to_others() -> anyhow::Result<()> {
    let db = TestDb::create().await?;
    pg::migrate(&db.pool).await?;
    assert_eq!(claim(&db.pool, "a", false).await?, Claim::Claimed);
    assert_eq!(claim(&db.pool, "a", false).await?, Claim::Ours);
    let Claim::Foreign { owner, claimed_at } = claim(&db.pool, "b", false).await? else {
        anyhow::bail!("b must be refused");
    };
    assert_eq!(owner, "a");
    assert!(!claimed_at.is_empty());
    assert_eq!(claim(&db.pool, "a", false).await?, Claim::Ours, "a refused claim changes nothing");
    assert_eq!(claim(&db.pool, "b", true).await?, Claim::TakenOver { previous: "a".into() });
    assert!(matches!(claim(&db.pool, "a", false).await?, Claim::Foreign { .. }));
    let owners: i64 = sqlx::query_scalar("select count(*) from deployment").fetch_one(&db.pool).await?;
    assert_eq!(owners, 1);
    Ok(())
}
