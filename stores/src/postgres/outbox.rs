//! The transactional outbox in Postgres, and its [`Outbox`] implementation for the relay.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::outbox::{Outbox, OutboxMessage};
use sqlx::{Connection, PgConnection, PgPool, Row, postgres::PgListener};
use std::{sync::Arc, time::Duration};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::Error;

/// Advisory-lock key of the relay lease (any constant unique to this use).
const RELAY_LOCK_KEY: i64 = 0x50_55_4b_5f_52_4c_59; // "SOUK_RLY"
const CHANNEL: &str = "souk_outbox";
/// Longest wait for Postgres when checking or taking the relay lease.
const LEASE_CHECK: Duration = Duration::from_secs(5);

/// A message for the outbox, written inside the handler's transaction.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub aggregate_id: String,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: Vec<u8>,
}

/// Append `message` to the outbox in the current transaction. Returns its id (which
/// becomes its `Nats-Msg-Id`).
pub async fn enqueue(tx: &mut PgConnection, message: NewMessage) -> Result<Uuid, Error> {
    let ids = enqueue_many(tx, std::slice::from_ref(&message)).await?;
    ids.into_iter().next().ok_or_else(|| Error::Corrupt("outbox insert returned no id".into()))
}

/// [`enqueue`] for many messages in one statement, in order. Returns their ids.
pub async fn enqueue_many(tx: &mut PgConnection, messages: &[NewMessage]) -> Result<Vec<Uuid>, Error> {
    let ids: Vec<Uuid> = messages.iter().map(|_| Uuid::now_v7()).collect();
    let headers = messages
        .iter()
        .map(|m| serde_json::to_value(&m.headers))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Corrupt(e.to_string()))?;
    let column = |f: fn(&NewMessage) -> &String| messages.iter().map(f).cloned().collect::<Vec<_>>();
    let payloads: Vec<Vec<u8>> = messages.iter().map(|m| m.payload.clone()).collect();
    // `with ordinality` keeps seq order equal to the order given.
    sqlx::query(
        "insert into outbox (id, aggregate_id, subject, headers, payload)
         select id, aggregate_id, subject, headers, payload
         from unnest($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::bytea[])
              with ordinality as m(id, aggregate_id, subject, headers, payload, n)
         order by n",
    )
    .bind(&ids)
    .bind(column(|m| &m.aggregate_id))
    .bind(column(|m| &m.subject))
    .bind(&headers)
    .bind(&payloads)
    .execute(tx)
    .await?;
    Ok(ids)
}

/// The outbox table, as the relay drains it.
#[derive(Clone)]
pub struct PgOutbox {
    pool: PgPool,
    url: String,
    listener: Arc<Mutex<Option<PgListener>>>,
    lease: Arc<Mutex<Option<PgConnection>>>,
}

impl std::fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOutbox").finish_non_exhaustive()
    }
}

impl PgOutbox {
    /// An outbox over `pool`; `url` is used for the two long-lived connections the
    /// relay needs outside the pool (the lease and LISTEN).
    pub fn new(pool: PgPool, url: impl Into<String>) -> Self {
        PgOutbox { pool, url: url.into(), listener: Arc::default(), lease: Arc::default() }
    }

    async fn pending_rows(&self, limit: i64) -> Result<Vec<OutboxMessage>, Error> {
        let rows = sqlx::query(
            "select seq, id, aggregate_id, subject, headers, payload from outbox
             where published_at is null order by seq limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let headers: serde_json::Value = r.try_get("headers")?;
                Ok(OutboxMessage {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    aggregate_id: r.try_get("aggregate_id")?,
                    subject: r.try_get("subject")?,
                    headers: serde_json::from_value(headers).map_err(|e| Error::Corrupt(e.to_string()))?,
                    payload: r.try_get("payload")?,
                })
            })
            .collect()
    }

    async fn lease_held(&self) -> Result<bool, Error> {
        let mut lease = self.lease.lock().await;
        if let Some(conn) = lease.as_mut() {
            // A half-open connection would hang the ping for the kernel's retransmission
            // timeout; an unanswered ping within LEASE_CHECK counts as a lost lease.
            if matches!(tokio::time::timeout(LEASE_CHECK, conn.ping()).await, Ok(Ok(()))) {
                return Ok(true);
            }
            // The connection (and with it the advisory lock) is gone.
            *lease = None;
        }
        let attempt = async {
            let mut conn = PgConnection::connect(&self.url).await?;
            let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            Ok::<_, Error>(got.then_some(conn))
        };
        let conn = tokio::time::timeout(LEASE_CHECK, attempt).await.map_err(|_| {
            Error::Unavailable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no lease answer from Postgres within {LEASE_CHECK:?}"),
            )))
        })??;
        let got = conn.is_some();
        *lease = conn;
        Ok(got)
    }

    async fn wait(&self, timeout: Duration) {
        let mut guard = self.listener.lock().await;
        if guard.is_none() {
            match PgListener::connect(&self.url).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => *guard = Some(l),
                    Err(e) => tracing::debug!(error = %e, "outbox LISTEN failed; polling"),
                },
                Err(e) => tracing::debug!(error = %e, "outbox LISTEN connect failed; polling"),
            }
        }
        match guard.as_mut() {
            Some(l) => match tokio::time::timeout(timeout, l.recv()).await {
                // Every committed insert notifies: take the ones already here too, so a
                // burst wakes one round, not one round each.
                Ok(Ok(_)) => while l.next_buffered().is_some() {},
                Ok(Err(_)) => *guard = None,
                Err(_) => {}
            },
            None => tokio::time::sleep(timeout).await,
        }
    }
}

impl Outbox for PgOutbox {
    type Error = Error;

    fn pending(&self, limit: i64) -> BoxFuture<'_, Result<Vec<OutboxMessage>, Error>> {
        self.pending_rows(limit).boxed()
    }

    fn mark_published<'a>(&'a self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            sqlx::query("update outbox set published_at = now() where id = any($1)")
                .bind(ids)
                .execute(&self.pool)
                .await?;
            Ok(())
        }
        .boxed()
    }

    fn wait_for_new(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        self.wait(timeout).boxed()
    }

    fn try_lease(&self) -> BoxFuture<'_, Result<bool, Error>> {
        self.lease_held().boxed()
    }
}
