//! The inbox: which messages a consumer has already handled.

use sqlx::PgConnection;

use super::Error;

/// One message being handled: its id, and where it sits in its stream (kept so that
/// `souk trace` can name the stored message without scanning the stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub message_id: String,
    pub stream: String,
    pub stream_seq: u64,
    /// The delivery that handled it (1: the first).
    pub delivered: u64,
}

/// Record, in the current transaction, that `consumer` handles these messages. Returns
/// the ids that were new (each once, even if repeated in `messages`); the others were
/// handled before, and the caller writes nothing for them.
///
/// A concurrent duplicate blocks on the primary key until the first transaction ends,
/// then sees the conflict, so two deliveries racing each other still apply once.
pub async fn record_many(
    tx: &mut PgConnection,
    consumer: &str,
    messages: &[Received],
) -> Result<std::collections::HashSet<String>, Error> {
    let new: Vec<String> = sqlx::query_scalar(
        "insert into inbox (consumer, message_id, stream, stream_seq, delivered)
         select $1, m, s, q, d from unnest($2::text[], $3::text[], $4::int8[], $5::int4[]) as x(m, s, q, d)
         on conflict do nothing returning message_id",
    )
    .bind(consumer)
    .bind(messages.iter().map(|m| m.message_id.clone()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| m.stream.clone()).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| i64::try_from(m.stream_seq).unwrap_or(i64::MAX)).collect::<Vec<_>>())
    .bind(messages.iter().map(|m| i32::try_from(m.delivered).unwrap_or(i32::MAX)).collect::<Vec<_>>())
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
