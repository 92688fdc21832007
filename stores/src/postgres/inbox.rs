//! The inbox: which messages a consumer has already handled.

use sqlx::PgConnection;

use super::Error;

/// Record that `consumer` handles `message_id` in the current transaction. Returns
/// false if it was already handled (the caller then commits nothing and acks).
///
/// A concurrent duplicate blocks on the primary key until the first transaction ends,
/// then sees the conflict, so two deliveries racing each other still apply once.
pub async fn record(tx: &mut PgConnection, consumer: &str, message_id: &str) -> Result<bool, Error> {
    let inserted =
        sqlx::query("insert into inbox (consumer, message_id) values ($1, $2) on conflict do nothing")
            .bind(consumer)
            .bind(message_id)
            .execute(tx)
            .await?
            .rows_affected();
    Ok(inserted == 1)
}

/// [`record`] for many messages in one statement. Returns the ids that were new (each
/// once, even if repeated in `message_ids`).
pub async fn record_many(
    tx: &mut PgConnection,
    consumer: &str,
    message_ids: &[String],
) -> Result<std::collections::HashSet<String>, Error> {
    let new: Vec<String> = sqlx::query_scalar(
        "insert into inbox (consumer, message_id) select $1, unnest($2::text[])
         on conflict do nothing returning message_id",
    )
    .bind(consumer)
    .bind(message_ids)
    .fetch_all(tx)
    .await?;
    Ok(new.into_iter().collect())
}
