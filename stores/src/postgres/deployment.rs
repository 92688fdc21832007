//! Which deployment a database belongs to (table `deployment`, one row): a process
//! claims the database for its deployment at start, so that two deployments — each
//! with its own JetStream — never share one outbox. Rows carry no deployment of their
//! own: the relay publishes every row, into the EVT of whichever deployment it runs in.

use sqlx::PgPool;

use super::Error;

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The database had no owner; now it is ours.
    Claimed,
    /// It was ours already.
    Ours,
    /// It belonged to `previous`, and `take_over` gave it to us.
    TakenOver { previous: String },
    /// It belongs to another deployment (claimed at `claimed_at`); nothing changed.
    Foreign { owner: String, claimed_at: String },
}

/// Claim the database for deployment `id`. A database owned by another deployment is
/// left alone ([`Claim::Foreign`]) unless `take_over`, which only a database private
/// to one deployment may use (a `souk dev` data dir's, whose JetStream was re-created).
pub async fn claim(pool: &PgPool, id: &str, take_over: bool) -> Result<Claim, Error> {
    let mut tx = super::begin(pool).await?;
    let inserted = sqlx::query("insert into deployment (id) values ($1) on conflict (singleton) do nothing")
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let claim = if inserted == 1 {
        Claim::Claimed
    } else {
        let (owner, claimed_at): (String, String) =
            sqlx::query_as("select id, claimed_at::text from deployment for update")
                .fetch_one(&mut *tx)
                .await?;
        if owner == id {
            Claim::Ours
        } else if take_over {
            sqlx::query("update deployment set id = $1, claimed_at = now()")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            Claim::TakenOver { previous: owner }
        } else {
            Claim::Foreign { owner, claimed_at }
        }
    };
    tx.commit().await?;
    Ok(claim)
}
