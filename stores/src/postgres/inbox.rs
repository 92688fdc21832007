//! The inbox: which messages a consumer has already handled.

use sqlx::PgConnection;

use super::Error;

/// Record, in the current transaction, that `consumer` handles these messages. Returns
/// the ids that were new (each once, even if repeated in `message_ids`); the others were
/// handled before, and the caller writes nothing for them.
///
/// A concurrent duplicate blocks on the primary key until the first transaction ends,
/// then sees the conflict, so two deliveries racing each other still apply once.
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

/// Whether `consumer` has handled `message_id` (read outside any transaction: a
/// handler that calls out before its transaction skips the call for a known message).
pub async fn contains(pool: &sqlx::PgPool, consumer: &str, message_id: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar("select exists (select 1 from inbox where consumer = $1 and message_id = $2)")
        .bind(consumer)
        .bind(message_id)
        .fetch_one(pool)
        .await?)
}
