//! The transactional outbox in Postgres, and its [`Outbox`] implementation for the relay.
//!
//! The relay lease is a Postgres advisory lock held on a dedicated connection, plus an
//! epoch in `outbox_lease` that each new holder increments: marks check, in their own
//! statement, that the epoch is still the one this relay took, so a relay that lost
//! the lease mid-round (its connection dropped, another took over) cannot mark rows.
//!
//! Each insert notifies the relay (`LISTEN souk_outbox`) with the highest seq it
//! inserted. A round reads rows committed just before it, and their notifications
//! arrive after it: [`Outbox::wait_for_new`] sleeps on through notifications for rows
//! this outbox has already read instead of waking an empty round.
//!
//! Rows that can never be published are parked ([`Outbox::park`], fenced on the epoch
//! like marks): they, and the later rows of their aggregate, stop being pending until
//! [`PgOutbox::requeue`].

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::outbox::{Outbox, OutboxMessage, Published};
use sqlx::{
    ConnectOptions, Connection, PgConnection, PgPool, Row,
    postgres::{PgConnectOptions, PgListener},
};
use std::{str::FromStr, sync::Arc, time::Duration};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::Error;

/// Advisory-lock key of the relay lease (any constant unique to this use).
const RELAY_LOCK_KEY: i64 = 0x50_55_4b_5f_52_4c_59; // "SOUK_RLY"
const CHANNEL: &str = "souk_outbox";
/// Longest wait for Postgres when checking or taking the relay lease.
const LEASE_CHECK: Duration = Duration::from_secs(5);
/// Longest the lease connection may sit idle before Postgres ends its session (and so
/// releases the lock). A holder pings it at the start of every round, so a healthy one
/// is never idle for longer than a round (cut at 30 s) and the pause after it; one that
/// went silent (its host died, a partition) leaves a session Postgres would otherwise
/// keep — with the lease — until TCP keepalive gives up, two hours by default.
const SET_LEASE_IDLE_TIMEOUT: &str = "set idle_session_timeout = '60s'";
/// `application_name` of the lease connection (operators can find the holder by it).
pub const LEASE_APPLICATION_NAME: &str = "souk-relay-lease";

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
    /// Seqs of the rows [`PgOutbox::pending_rows`] read lately (see [`RecentlyRead`]).
    read: Arc<std::sync::Mutex<RecentlyRead>>,
    /// The lease connection (holding the advisory lock) and the epoch taken with it.
    lease: Arc<Mutex<Option<(PgConnection, i64)>>>,
}

/// A parked outbox row, as an operator sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedRow {
    pub seq: i64,
    pub id: Uuid,
    pub aggregate_id: String,
    pub subject: String,
    pub tries: i32,
    pub last_error: Option<String>,
    pub parked_at: chrono::DateTime<chrono::Utc>,
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
        PgOutbox {
            pool,
            url: url.into(),
            listener: Arc::default(),
            read: Arc::default(),
            lease: Arc::default(),
        }
    }

    async fn pending_rows(&self, limit: i64, skip: &[String]) -> Result<Vec<OutboxMessage>, Error> {
        // A row behind a parked row of its aggregate waits with it: publishing it would
        // put a later event of the aggregate before an earlier one.
        let rows = sqlx::query(
            "select seq, id, aggregate_id, subject, headers, payload from outbox o
             where published_at is null and parked_at is null
               and not exists (select 1 from outbox p
                               where p.parked_at is not null and p.aggregate_id = o.aggregate_id
                                 and p.seq < o.seq)
               and aggregate_id <> all ($2)
             order by seq limit $1",
        )
        .bind(limit)
        .bind(skip)
        .fetch_all(&self.pool)
        .await?;
        let messages = rows
            .into_iter()
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
            .collect::<Result<Vec<_>, Error>>()?;
        let mut read = self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for m in &messages {
            read.insert(m.seq);
        }
        Ok(messages)
    }

    async fn lease_held(&self) -> Result<bool, Error> {
        let mut lease = self.lease.lock().await;
        if let Some((conn, _)) = lease.as_mut() {
            // A half-open connection would hang the ping for the kernel's retransmission
            // timeout; an unanswered ping within LEASE_CHECK counts as a lost lease.
            if matches!(tokio::time::timeout(LEASE_CHECK, conn.ping()).await, Ok(Ok(()))) {
                return Ok(true);
            }
            // The connection (and with it the advisory lock) is gone.
            *lease = None;
        }
        let attempt = async {
            let mut conn = PgConnectOptions::from_str(&self.url)?
                .application_name(LEASE_APPLICATION_NAME)
                .connect()
                .await?;
            // Postgres before 14 has no idle_session_timeout: the lease still works,
            // only without the bound on a silent holder.
            if let Err(e) = sqlx::query(SET_LEASE_IDLE_TIMEOUT).execute(&mut conn).await {
                tracing::warn!(error = %e, "no idle_session_timeout on the relay lease connection");
            }
            let got: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut conn)
                .await?;
            if !got {
                return Ok::<_, Error>(None);
            }
            // A new epoch fences the marks of whoever held the lease before: this waits
            // for a mark of theirs in flight, and every later one of theirs fails.
            let epoch: i64 = sqlx::query_scalar("update outbox_lease set epoch = epoch + 1 returning epoch")
                .fetch_one(&mut conn)
                .await?;
            Ok(Some((conn, epoch)))
        };
        let conn = tokio::time::timeout(LEASE_CHECK, attempt).await.map_err(|_| {
            Error::Unavailable(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no lease answer from Postgres within {LEASE_CHECK:?}"),
            )))
        })??;
        let got = conn.is_some();
        *lease = conn;
        if !got {
            // A standby does not wait for notifications: its LISTEN connection, never
            // read, would make Postgres keep every outbox notification for it until the
            // queue is full and every outbox write fails at commit. (The relay never
            // waits and takes the lease at once, so this cannot wait on `wait`.)
            *self.listener.lock().await = None;
        }
        Ok(got)
    }

    /// Mark `ids` published if the lease epoch this outbox took is still current — in
    /// one statement: the lease row is locked (shared) while the rows are marked, so a
    /// takeover's epoch increment either waits for this mark or makes it mark nothing.
    ///
    /// Planned afresh each time (not a prepared statement kept on the connection):
    /// Postgres settles a kept statement on a generic plan after five runs and keeps it
    /// until the table is next analyzed, and the plan it settles on while the outbox is
    /// a few rows — a hash join over a sequential scan — is what it then runs on a table
    /// grown by thousands of rows between purges: seen at 13 ms for one row on a
    /// 4,000-row outbox, the costliest statement of a checkout (instead of ~0.1 ms
    /// through the id index). Planning costs far less than that.
    async fn mark(&self, published: &[Published]) -> Result<(), Error> {
        let ids: Vec<Uuid> = published.iter().map(|p| p.id).collect();
        let streams: Vec<&str> = published.iter().map(|p| p.stream.as_str()).collect();
        let seqs: Vec<i64> =
            published.iter().map(|p| i64::try_from(p.stream_seq).unwrap_or(i64::MAX)).collect();
        let epoch = self.lease.lock().await.as_ref().map(|(_, e)| *e);
        let Some(epoch) = epoch else { return Err(Error::LeaseLost(0)) };
        let ours: bool = sqlx::query_scalar(
            "with lease as (select epoch from outbox_lease where epoch = $2 for share),
                  marked as (update outbox o set published_at = now(), stream = p.stream, stream_seq = p.seq
                             from unnest($1::uuid[], $3::text[], $4::int8[]) as p(id, stream, seq)
                             where o.id = p.id and exists (select 1 from lease))
             select exists (select 1 from lease)",
        )
        .bind(&ids)
        .bind(epoch)
        .bind(&streams)
        .bind(&seqs)
        .persistent(false)
        .fetch_one(&self.pool)
        .await?;
        if !ours {
            // Another relay holds the lease: let go of ours (if anything is left of it).
            *self.lease.lock().await = None;
            tracing::warn!(epoch, "outbox relay lease taken over; not marking");
            return Err(Error::LeaseLost(epoch));
        }
        Ok(())
    }

    /// Put parked rows back in line: those of `aggregate`, or all when `None`. Their
    /// tries start again from zero. Returns how many rows were requeued.
    pub async fn requeue(&self, aggregate: Option<&str>) -> Result<u64, Error> {
        let done = sqlx::query(
            "update outbox set parked_at = null, tries = 0
             where parked_at is not null and published_at is null
               and ($1::text is null or aggregate_id = $1)",
        )
        .bind(aggregate)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Up to `limit` parked rows, oldest first.
    pub async fn parked(&self, limit: i64) -> Result<Vec<ParkedRow>, Error> {
        let rows = sqlx::query(
            "select seq, id, aggregate_id, subject, tries, last_error, parked_at from outbox
             where parked_at is not null order by seq limit $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(ParkedRow {
                    seq: r.try_get("seq")?,
                    id: r.try_get("id")?,
                    aggregate_id: r.try_get("aggregate_id")?,
                    subject: r.try_get("subject")?,
                    tries: r.try_get("tries")?,
                    last_error: r.try_get("last_error")?,
                    parked_at: r.try_get("parked_at")?,
                })
            })
            .collect()
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
        let Some(l) = guard.as_mut() else {
            tokio::time::sleep(timeout).await;
            return;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, l.recv()).await {
                // Every committed insert notifies; wake only for rows not read yet.
                // (`next_buffered` only returns notifications buffered while the
                // listener was used as a connection, so a burst is mostly taken one per
                // pass: the first unread one wakes the round, and by the time the rest
                // are looked at the round has read them.)
                Ok(Ok(first)) => {
                    let read = self.read.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let mut new = !read.covers(first.payload());
                    while let Some(n) = l.next_buffered() {
                        new |= !read.covers(n.payload());
                    }
                    if new {
                        return;
                    }
                }
                Ok(Err(_)) => {
                    *guard = None;
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// The seqs of the rows read lately, the most recent [`RecentlyRead::KEEP`].
///
/// A notification names the highest seq its statement inserted, and a statement's rows
/// become visible together: if a round read that row, it read its lower rows too (it
/// reads the oldest pending rows first) — except rows it left out (a parked row's
/// aggregate, or one whose row cannot be published yet), which wait for their retry
/// anyway. So a notification for a seq read here is for rows a round has had.
/// Anything else — a seq not read, a payload that is not a seq — wakes the relay. A
/// wrong "read" could only delay rows until the relay's poll, never lose them.
#[derive(Debug, Default)]
struct RecentlyRead {
    order: std::collections::VecDeque<i64>,
    seqs: std::collections::HashSet<i64>,
}

impl RecentlyRead {
    /// Many rounds' worth (a round reads at most a few hundred rows).
    const KEEP: usize = 16_384;

    fn insert(&mut self, seq: i64) {
        if self.seqs.insert(seq) {
            self.order.push_back(seq);
            if self.order.len() > Self::KEEP
                && let Some(old) = self.order.pop_front()
            {
                self.seqs.remove(&old);
            }
        }
    }

    /// Whether a notification's payload names a row read here.
    fn covers(&self, payload: &str) -> bool {
        payload.parse::<i64>().is_ok_and(|seq| self.seqs.contains(&seq))
    }
}

impl Outbox for PgOutbox {
    type Error = Error;

    fn pending<'a>(
        &'a self,
        limit: i64,
        skip: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<OutboxMessage>, Error>> {
        self.pending_rows(limit, skip).boxed()
    }

    fn mark_published<'a>(&'a self, ids: &'a [Published]) -> BoxFuture<'a, Result<(), Error>> {
        self.mark(ids).boxed()
    }

    fn record_failure<'a>(&'a self, id: Uuid, error: &'a str) -> BoxFuture<'a, Result<u32, Error>> {
        async move {
            let tries: i32 = sqlx::query_scalar(
                "update outbox set tries = tries + 1, last_error = $2 where id = $1 returning tries",
            )
            .bind(id)
            .bind(error)
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or(0);
            Ok(u32::try_from(tries).unwrap_or(0))
        }
        .boxed()
    }

    fn park<'a>(&'a self, id: Uuid, error: &'a str) -> BoxFuture<'a, Result<u64, Error>> {
        async move {
            // Fenced like a mark: a relay that lost the lease must not park a row the new
            // holder may be publishing (it would end published and parked, holding back
            // its aggregate where `requeue` cannot reach it).
            let epoch = self.lease.lock().await.as_ref().map(|(_, e)| *e);
            let Some(epoch) = epoch else { return Err(Error::LeaseLost(0)) };
            let mut tx = super::begin(&self.pool).await?;
            let ours: Option<i64> =
                sqlx::query_scalar("select epoch from outbox_lease where epoch = $1 for share")
                    .bind(epoch)
                    .fetch_optional(&mut *tx)
                    .await?;
            if ours.is_none() {
                drop(tx);
                *self.lease.lock().await = None;
                tracing::warn!(epoch, "outbox relay lease taken over; not parking");
                return Err(Error::LeaseLost(epoch));
            }
            sqlx::query(
                "update outbox o
                 set parked_at = now(),
                     last_error = case when o.id = $1 then $2 else 'behind parked row ' || $1::text end
                 from outbox t
                 where t.id = $1 and o.aggregate_id = t.aggregate_id and o.seq >= t.seq
                   and o.published_at is null and o.parked_at is null",
            )
            .bind(id)
            .bind(error)
            .execute(&mut *tx)
            .await?;
            let parked: i64 = sqlx::query_scalar("select count(*) from outbox where parked_at is not null")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(u64::try_from(parked).unwrap_or(0))
        }
        .boxed()
    }

    fn parked_count(&self) -> BoxFuture<'_, Result<u64, Error>> {
        async move {
            let n: i64 = sqlx::query_scalar("select count(*) from outbox where parked_at is not null")
                .fetch_one(&self.pool)
                .await?;
            Ok(u64::try_from(n).unwrap_or(0))
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

impl souk_pipelines::outbox::OutboxStats for PgOutbox {
    fn backlog(
        &self,
    ) -> BoxFuture<'_, Result<souk_pipelines::outbox::OutboxBacklog, Box<dyn std::error::Error + Send + Sync>>>
    {
        async move {
            // The oldest age from Postgres's own clock, like `created_at` itself.
            let (unpublished, parked, oldest): (i64, i64, Option<f64>) = sqlx::query_as(
                "select count(*) filter (where parked_at is null),
                        count(*) filter (where parked_at is not null),
                        extract(epoch from now() - min(created_at) filter (where parked_at is null))::float8
                 from outbox where published_at is null",
            )
            .fetch_one(&self.pool)
            .await?;
            Ok(souk_pipelines::outbox::OutboxBacklog {
                unpublished: u64::try_from(unpublished).unwrap_or(0),
                parked: u64::try_from(parked).unwrap_or(0),
                oldest_secs: oldest.map(|s| s.max(0.0)),
            })
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::RecentlyRead;

    #[test]
    fn only_a_seq_read_lately_is_covered() {
        let mut read = RecentlyRead::default();
        read.insert(7);
        assert!(read.covers("7"));
        assert!(!read.covers("8"), "a seq not read");
        assert!(!read.covers(""), "a node whose trigger sends no seq");
        assert!(!read.covers("7,8"), "anything else");
        for seq in 100..100 + RecentlyRead::KEEP as i64 {
            read.insert(seq);
        }
        assert!(!read.covers("7"), "forgotten after KEEP newer reads");
        assert!(read.covers("100"));
        assert_eq!(read.seqs.len(), RecentlyRead::KEEP);
    }
}
