//! What Postgres knows about one order, for `souk trace` ([`souk_pipelines::follow`]):
//! the [`Journal`] (which order an id names, outbox rows by aggregate, inbox records by
//! `(consumer, message id)`) and one [`Source`] per pipeline, each reading its own
//! tables by index. A pipeline joins the trace with one more entry in [`sources`].

use chrono::{DateTime, Utc};
use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    follow::{
        AfterFailure, DeadLetterRecord, DeadLettered, Entry, FailedAttempt, FailureClass, FailureLog,
        Followed, Handling, Journal, Kind, OutboxRow, Source, SourceError,
    },
    orders::place_message_id,
    payments::{Operation, idempotency_key},
    subjects,
};
use sqlx::{PgPool, Row};
use std::sync::Arc;
use uuid::Uuid;

/// Every pipeline's source, in the order they are asked.
pub fn sources(pool: &PgPool) -> Vec<Arc<dyn Source>> {
    vec![
        Arc::new(Orders(pool.clone())),
        Arc::new(Saga(pool.clone())),
        Arc::new(Inventory(pool.clone())),
        Arc::new(Payments(pool.clone())),
        Arc::new(Fulfilment(pool.clone())),
    ]
}

fn boxed(e: sqlx::Error) -> SourceError {
    Box::new(e)
}

fn seq(v: Option<i64>) -> Option<u64> {
    v.and_then(|v| u64::try_from(v).ok())
}

/// The deployment's journal in Postgres.
#[derive(Debug, Clone)]
pub struct PgJournal(pub PgPool);

impl PgJournal {
    async fn resolve_id(&self, id: &str) -> Result<Option<Followed>, sqlx::Error> {
        // An order row (also by the trace id it was placed with: 32 hex digits, which
        // also read as a UUID); else an order whose command is claimed but not handled
        // yet (only its claim names it).
        let by_order = Uuid::parse_str(id).ok();
        let row = sqlx::query(
            "select order_id, tenant, trace_id,
                    array(select distinct l->>'seller' from jsonb_array_elements(lines) l
                          where l->>'seller' is not null) as sellers
             from orders where order_id = $1 or trace_id = $2
             order by order_id = $1 desc nulls last limit 1",
        )
        .bind(by_order)
        .bind(id.to_ascii_lowercase())
        .fetch_optional(&self.0)
        .await?;
        if let Some(r) = row {
            return Ok(Some(Followed {
                order_id: r.try_get("order_id")?,
                tenant: r.try_get("tenant")?,
                trace_id: r.try_get("trace_id")?,
                sellers: r.try_get("sellers")?,
            }));
        }
        let Some(order_id) = by_order else { return Ok(None) };
        let tenant: Option<String> =
            sqlx::query_scalar("select tenant from idempotency_keys where order_id = $1 limit 1")
                .bind(order_id)
                .fetch_optional(&self.0)
                .await?;
        Ok(tenant.map(|tenant| Followed { order_id, tenant, trace_id: None, sellers: Vec::new() }))
    }

    async fn outbox_rows(&self, aggregates: &[String]) -> Result<Vec<OutboxRow>, sqlx::Error> {
        let rows = sqlx::query(
            "select id, aggregate_id, subject, created_at, published_at, stream, stream_seq, parked_at, last_error
             from outbox where aggregate_id = any($1) order by seq",
        )
        .bind(aggregates)
        .fetch_all(&self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    aggregate_id: r.try_get("aggregate_id")?,
                    subject: r.try_get("subject")?,
                    created_at: r.try_get("created_at")?,
                    published_at: r.try_get("published_at")?,
                    stream: r.try_get("stream")?,
                    stream_seq: seq(r.try_get("stream_seq")?),
                    parked_at: r.try_get("parked_at")?,
                    last_error: r.try_get("last_error")?,
                })
            })
            .collect()
    }

    async fn inbox(&self, pairs: &[(String, String)]) -> Result<Vec<Handling>, sqlx::Error> {
        let (consumers, ids): (Vec<&str>, Vec<&str>) =
            pairs.iter().map(|(c, m)| (c.as_str(), m.as_str())).unzip();
        let rows = sqlx::query(
            "select consumer, message_id, handled_at, stream, stream_seq, delivered from inbox
             where (consumer, message_id) in (select * from unnest($1::text[], $2::text[]))",
        )
        .bind(&consumers)
        .bind(&ids)
        .fetch_all(&self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Handling {
                    consumer: r.try_get("consumer")?,
                    message_id: r.try_get("message_id")?,
                    at: r.try_get("handled_at")?,
                    stream: r.try_get("stream")?,
                    stream_seq: seq(r.try_get("stream_seq")?),
                    delivered: r.try_get::<Option<i32>, _>("delivered")?.and_then(|d| u64::try_from(d).ok()),
                })
            })
            .collect()
    }
}

impl PgJournal {
    async fn letters(&self, ids: &[String]) -> Result<Vec<DeadLetterRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "select consumer, message_id, dlq_stream, dlq_seq, at, redriven_at from dead_letters
             where message_id = any($1) order by at",
        )
        .bind(ids)
        .fetch_all(&self.0)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeadLetterRecord {
                    consumer: r.try_get("consumer")?,
                    message_id: r.try_get("message_id")?,
                    dlq_stream: r.try_get("dlq_stream")?,
                    dlq_seq: seq(r.try_get("dlq_seq")?).unwrap_or_default(),
                    at: r.try_get("at")?,
                    redriven_at: r.try_get("redriven_at")?,
                })
            })
            .collect()
    }

    async fn record_letter(&self, l: &DeadLettered) -> Result<(), sqlx::Error> {
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        sqlx::query(
            "insert into dead_letters (dlq_stream, dlq_seq, consumer, message_id, stream, stream_seq, attempts, error)
             values ($1, $2, $3, $4, $5, $6, $7, $8)
             on conflict (dlq_stream, dlq_seq) do update
                 set consumer = excluded.consumer, message_id = excluded.message_id, stream = excluded.stream,
                     stream_seq = excluded.stream_seq, attempts = excluded.attempts, error = excluded.error,
                     at = excluded.at, redriven_at = null",
        )
        .bind(&l.dlq_stream)
        .bind(big(l.dlq_seq))
        .bind(&l.consumer)
        .bind(&l.message_id)
        .bind(&l.stream)
        .bind(big(l.stream_seq))
        .bind(i32::try_from(l.attempts).unwrap_or(i32::MAX))
        .bind(&l.error)
        .execute(&self.0)
        .await?;
        Ok(())
    }
}

impl PgJournal {
    /// Write `attempts` in one statement.
    async fn record_failed(&self, attempts: &[FailedAttempt]) -> Result<(), sqlx::Error> {
        let big = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let mut cols = AttemptColumns::default();
        for a in attempts {
            cols.consumer.push(a.consumer.as_str());
            cols.message_id.push(a.message_id.as_deref());
            cols.stream.push(a.stream.as_str());
            cols.stream_seq.push(big(a.stream_seq));
            cols.delivery.push(i32::try_from(a.delivery).unwrap_or(i32::MAX));
            cols.class.push(a.class.as_str());
            cols.code.push(a.code.as_str());
            cols.error.push(a.error.as_str());
            cols.then.push(a.then.as_str());
            cols.at.push(a.at);
        }
        sqlx::query(
            "insert into failed_attempts
                 (consumer, message_id, stream, stream_seq, delivery, class, code, error, then_did, at)
             select * from unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::text[],
                                  $7::text[], $8::text[], $9::text[], $10::timestamptz[])",
        )
        .bind(&cols.consumer)
        .bind(&cols.message_id)
        .bind(&cols.stream)
        .bind(&cols.stream_seq)
        .bind(&cols.delivery)
        .bind(&cols.class)
        .bind(&cols.code)
        .bind(&cols.error)
        .bind(&cols.then)
        .bind(&cols.at)
        .execute(&self.0)
        .await?;
        Ok(())
    }

    async fn failed(&self, pairs: &[(String, String)]) -> Result<Vec<FailedAttempt>, sqlx::Error> {
        let (consumers, ids): (Vec<&str>, Vec<&str>) =
            pairs.iter().map(|(c, m)| (c.as_str(), m.as_str())).unzip();
        let rows = sqlx::query(
            "select consumer, message_id, stream, stream_seq, delivery, class, code, error, then_did, at
             from failed_attempts
             where (consumer, message_id) in (select * from unnest($1::text[], $2::text[]))
             order by at, id",
        )
        .bind(&consumers)
        .bind(&ids)
        .fetch_all(&self.0)
        .await?;
        let corrupt =
            |what: &str, v: String| sqlx::Error::Decode(format!("failed_attempts.{what}: {v:?}").into());
        rows.iter()
            .map(|r| {
                let class: String = r.try_get("class")?;
                let then: String = r.try_get("then_did")?;
                Ok(FailedAttempt {
                    consumer: r.try_get("consumer")?,
                    message_id: r.try_get("message_id")?,
                    stream: r.try_get("stream")?,
                    stream_seq: seq(r.try_get("stream_seq")?).unwrap_or_default(),
                    delivery: u64::try_from(r.try_get::<i32, _>("delivery")?).unwrap_or_default(),
                    class: FailureClass::parse(&class).ok_or_else(|| corrupt("class", class.clone()))?,
                    code: r.try_get("code")?,
                    error: r.try_get("error")?,
                    then: AfterFailure::parse(&then).ok_or_else(|| corrupt("then_did", then.clone()))?,
                    at: r.try_get("at")?,
                })
            })
            .collect()
    }
}

/// Columns of a multi-row insert into `failed_attempts`.
#[derive(Default)]
struct AttemptColumns<'a> {
    consumer: Vec<&'a str>,
    message_id: Vec<Option<&'a str>>,
    stream: Vec<&'a str>,
    stream_seq: Vec<i64>,
    delivery: Vec<i32>,
    class: Vec<&'a str>,
    code: Vec<&'a str>,
    error: Vec<&'a str>,
    then: Vec<&'a str>,
    at: Vec<DateTime<Utc>>,
}

/// The runtime's record of failed attempts and of where each dead letter is.
impl FailureLog for PgJournal {
    fn record_attempts<'a>(
        &'a self,
        attempts: &'a [FailedAttempt],
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        async move { self.record_failed(attempts).await.map_err(boxed) }.boxed()
    }

    fn record_dead_letter<'a>(&'a self, letter: &'a DeadLettered) -> BoxFuture<'a, Result<(), SourceError>> {
        async move { self.record_letter(letter).await.map_err(boxed) }.boxed()
    }
}

/// Dead letters purged by an operator (`dlq_stream` sequences `seqs`): their records go.
pub async fn forget_dead_letters<'e>(
    db: impl sqlx::PgExecutor<'e>,
    dlq_stream: &str,
    seqs: &[u64],
) -> Result<u64, sqlx::Error> {
    let seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
    Ok(sqlx::query("delete from dead_letters where dlq_stream = $1 and dlq_seq = any($2)")
        .bind(dlq_stream)
        .bind(&seqs)
        .execute(db)
        .await?
        .rows_affected())
}

/// Dead letters an operator redrove (they left the DLQ): their records say when.
pub async fn mark_redriven<'e>(
    db: impl sqlx::PgExecutor<'e>,
    dlq_stream: &str,
    seqs: &[u64],
) -> Result<u64, sqlx::Error> {
    let seqs: Vec<i64> = seqs.iter().filter_map(|&s| i64::try_from(s).ok()).collect();
    Ok(sqlx::query(
        "update dead_letters set redriven_at = now()
         where dlq_stream = $1 and dlq_seq = any($2) and redriven_at is null",
    )
    .bind(dlq_stream)
    .bind(&seqs)
    .execute(db)
    .await?
    .rows_affected())
}

/// The dead-letter stream `dlq_stream` as JetStream has it now: its first stored
/// sequence and when it was created. Records of dead letters below that sequence (the
/// stream dropped them: its limits, a max-age, a purge of the whole stream) or recorded
/// before the stream was created (a re-created stream numbers from 1 again) go: they
/// name nothing any more. Returns how many were deleted.
pub async fn forget_dropped_dead_letters(
    pool: &PgPool,
    dlq_stream: &str,
    first_seq: u64,
    created: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("delete from dead_letters where dlq_stream = $1 and (dlq_seq < $2 or at < $3)")
        .bind(dlq_stream)
        .bind(i64::try_from(first_seq).unwrap_or(i64::MAX))
        .bind(created)
        .execute(pool)
        .await?
        .rows_affected())
}

impl Journal for PgJournal {
    fn dead_letters<'a>(
        &'a self,
        ids: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<DeadLetterRecord>, SourceError>> {
        async move { self.letters(ids).await.map_err(boxed) }.boxed()
    }

    fn resolve<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Followed>, SourceError>> {
        async move { self.resolve_id(id).await.map_err(boxed) }.boxed()
    }

    fn outbox<'a>(&'a self, aggregates: &'a [String]) -> BoxFuture<'a, Result<Vec<OutboxRow>, SourceError>> {
        async move { self.outbox_rows(aggregates).await.map_err(boxed) }.boxed()
    }

    fn handled<'a>(
        &'a self,
        pairs: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<Handling>, SourceError>> {
        async move { self.inbox(pairs).await.map_err(boxed) }.boxed()
    }

    fn attempts<'a>(
        &'a self,
        pairs: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Vec<FailedAttempt>, SourceError>> {
        async move { self.failed(pairs).await.map_err(boxed) }.boxed()
    }
}

/// The intake: the request (its idempotency claim), the `PlaceOrder` command the
/// ingress published, a checkout that emptied a cart, and the order row.
struct Orders(PgPool);

impl Orders {
    async fn read(&self, order: &Followed) -> Result<Vec<Entry>, sqlx::Error> {
        let mut out = Vec::new();
        let claims = sqlx::query(
            "select principal, key, created_at from idempotency_keys where order_id = $1 order by created_at",
        )
        .bind(order.order_id)
        .fetch_all(&self.0)
        .await?;
        for c in &claims {
            let (principal, key): (String, String) = (c.try_get("principal")?, c.try_get("key")?);
            let at: DateTime<Utc> = c.try_get("created_at")?;
            out.push(Entry::new(
                at,
                "orders",
                Kind::Request,
                format!("request by {principal}, Idempotency-Key {key:?}"),
            ));
        }
        let row = sqlx::query(
            "select buyer_id, status, reason, placed_at, created_at, updated_at from orders where order_id = $1",
        )
        .bind(order.order_id)
        .fetch_optional(&self.0)
        .await?;
        // The ingress publishes the command right after its key's claim (a retry under
        // the key republishes the same message); an order placed without a claim has
        // only the time the ingress priced it.
        let placed_at = match (claims.first(), &row) {
            (Some(c), _) => Some(c.try_get::<DateTime<Utc>, _>("created_at")?),
            (None, Some(r)) => Some(r.try_get::<DateTime<Utc>, _>("placed_at")?),
            (None, None) => None,
        };
        if let Some(at) = placed_at {
            let id = place_message_id(&order.tenant, order.order_id);
            out.push(
                Entry::new(at, "orders", Kind::Command, "published by the ingress (202 after its PubAck)")
                    .message(subjects::ORDERS_PLACE, &id),
            );
        }
        if let Some(r) = row {
            let buyer: String = r.try_get("buyer_id")?;
            let status: String = r.try_get("status")?;
            let created: DateTime<Utc> = r.try_get("created_at")?;
            let updated: DateTime<Utc> = r.try_get("updated_at")?;
            let reason: Option<String> = r.try_get("reason")?;
            let checkout: Option<DateTime<Utc>> = sqlx::query_scalar(
                "select checked_out_at from cart_checkouts where tenant = $1 and buyer_id = $2 and order_id = $3",
            )
            .bind(&order.tenant)
            .bind(&buyer)
            .bind(order.order_id)
            .fetch_optional(&self.0)
            .await?;
            if let Some(at) = checkout {
                out.push(Entry::new(at, "orders", Kind::Record, "checkout emptied the cart"));
            }
            out.push(Entry::new(
                created,
                "orders",
                Kind::Record,
                format!("order row written for buyer {buyer}"),
            ));
            let now = Entry::new(updated, "orders", Kind::Record, format!("order is {status}"));
            out.push(match reason {
                Some(reason) => now.outcome(reason),
                None => now.outcome(status),
            });
        }
        Ok(out)
    }
}

impl Source for Orders {
    fn pipeline(&self) -> &'static str {
        "orders"
    }

    /// `OrderAccepted`, the saga's commands and events, and the payments results.
    fn aggregates(&self, order: &Followed) -> Vec<String> {
        vec![order.order_id.to_string()]
    }

    fn entries<'a>(&'a self, order: &'a Followed) -> BoxFuture<'a, Result<Vec<Entry>, SourceError>> {
        async move { self.read(order).await.map_err(boxed) }.boxed()
    }
}

/// The order saga: each step sent and its reply (`saga_steps`), and where it is now.
struct Saga(PgPool);

impl Saga {
    async fn read(&self, order: &Followed) -> Result<Vec<Entry>, sqlx::Error> {
        let mut out = Vec::new();
        let steps = sqlx::query(
            "select step, attempt, started_at, finished_at, outcome from saga_steps where order_id = $1 order by id",
        )
        .bind(order.order_id)
        .fetch_all(&self.0)
        .await?;
        for s in &steps {
            let step: String = s.try_get("step")?;
            let attempt: i32 = s.try_get("attempt")?;
            let started: DateTime<Utc> = s.try_get("started_at")?;
            let finished: Option<DateTime<Utc>> = s.try_get("finished_at")?;
            let outcome: Option<String> = s.try_get("outcome")?;
            match (finished, outcome) {
                // A reply the saga ignored is one finished row, started when it arrived.
                (Some(at), Some(o)) if at == started => {
                    out.push(Entry::new(at, "saga", Kind::Step, format!("{step}: reply taken")).outcome(o))
                }
                (finished, outcome) => {
                    out.push(Entry::new(
                        started,
                        "saga",
                        Kind::Step,
                        format!("{step}: sent (attempt {attempt})"),
                    ));
                    if let Some(at) = finished {
                        let e = Entry::new(at, "saga", Kind::Step, format!("{step}: reply taken"));
                        out.push(match outcome {
                            Some(o) => e.outcome(o),
                            None => e,
                        });
                    }
                }
            }
        }
        let saga = sqlx::query("select state, reason, updated_at from sagas where order_id = $1")
            .bind(order.order_id)
            .fetch_optional(&self.0)
            .await?;
        if let Some(s) = saga {
            let state: String = s.try_get("state")?;
            let e = Entry::new(s.try_get("updated_at")?, "saga", Kind::Record, format!("saga is {state}"));
            out.push(match s.try_get::<Option<String>, _>("reason")? {
                Some(r) => e.outcome(r),
                None => e.outcome(state),
            });
        }
        Ok(out)
    }
}

impl Source for Saga {
    fn pipeline(&self) -> &'static str {
        "saga"
    }

    fn entries<'a>(&'a self, order: &'a Followed) -> BoxFuture<'a, Result<Vec<Entry>, SourceError>> {
        async move { self.read(order).await.map_err(boxed) }.boxed()
    }
}

/// Inventory: the order's stock reservation (its lines, how it was decided).
struct Inventory(PgPool);

impl Inventory {
    async fn read(&self, order: &Followed) -> Result<Vec<Entry>, sqlx::Error> {
        let row = sqlx::query(
            "select r.state, r.hold_until, r.reserved_at, r.decided_at, r.shortages::text as shortages,
                    coalesce((select string_agg(h.sku || ' x' || h.quantity, ', ' order by h.sku)
                              from stock_holds h where h.tenant = r.tenant and h.order_id = r.order_id), '') as lines
             from stock_reservations r where r.tenant = $1 and r.order_id = $2",
        )
        .bind(&order.tenant)
        .bind(order.order_id)
        .fetch_optional(&self.0)
        .await?;
        let Some(r) = row else { return Ok(Vec::new()) };
        let state: String = r.try_get("state")?;
        let reserved: DateTime<Utc> = r.try_get("reserved_at")?;
        let decided: DateTime<Utc> = r.try_get("decided_at")?;
        let hold_until: DateTime<Utc> = r.try_get("hold_until")?;
        let lines: String = r.try_get("lines")?;
        let mut out = Vec::new();
        match r.try_get::<Option<String>, _>("shortages")? {
            Some(shortages) => out.push(
                Entry::new(reserved, "inventory", Kind::Record, "stock reservation refused")
                    .outcome(shortages),
            ),
            None => out.push(
                Entry::new(
                    reserved,
                    "inventory",
                    Kind::Record,
                    format!("stock held: {lines} (until {})", hold_until.format("%H:%M:%S")),
                )
                .outcome("held"),
            ),
        }
        if state != "held" && state != "rejected" {
            out.push(
                Entry::new(decided, "inventory", Kind::Record, format!("stock hold {state}")).outcome(state),
            );
        }
        Ok(out)
    }
}

impl Source for Inventory {
    fn pipeline(&self) -> &'static str {
        "inventory"
    }

    /// The inventory pool's events (`workers::inventory::aggregate_id`).
    fn aggregates(&self, order: &Followed) -> Vec<String> {
        vec![format!("inventory:{}:{}", order.tenant, order.order_id)]
    }

    fn entries<'a>(&'a self, order: &'a Followed) -> BoxFuture<'a, Result<Vec<Entry>, SourceError>> {
        async move { self.read(order).await.map_err(boxed) }.boxed()
    }
}

/// Payments: each provider call (`payment_attempts`), each step's answer
/// (`payment_results`) and the ledger rows — found by the steps' idempotency keys and
/// the order id.
struct Payments(PgPool);

impl Payments {
    async fn read(&self, order: &Followed) -> Result<Vec<Entry>, sqlx::Error> {
        let keys: Vec<String> =
            [Operation::Authorize, Operation::Capture, Operation::Void, Operation::Refund]
                .into_iter()
                .map(|op| idempotency_key(order.order_id, op))
                .collect();
        let mut out = Vec::new();
        let attempts = sqlx::query(
            "select idempotency_key, provider, outcome, at from payment_attempts
             where idempotency_key = any($1) order by at",
        )
        .bind(&keys)
        .fetch_all(&self.0)
        .await?;
        for a in &attempts {
            let key: String = a.try_get("idempotency_key")?;
            let provider: String = a.try_get("provider")?;
            let outcome: String = a.try_get("outcome")?;
            let e =
                Entry::new(a.try_get("at")?, "payments", Kind::Record, format!("call to {provider} ({key})"));
            out.push(e.outcome(outcome));
        }
        let results = sqlx::query(
            "select operation, succeeded, result::text as result, at from payment_results
             where idempotency_key = any($1) order by at",
        )
        .bind(&keys)
        .fetch_all(&self.0)
        .await?;
        for r in &results {
            let operation: String = r.try_get("operation")?;
            let succeeded: bool = r.try_get("succeeded")?;
            let result: String = r.try_get("result")?;
            let e = Entry::new(
                r.try_get("at")?,
                "payments",
                Kind::Record,
                format!("{operation} answered: {result}"),
            );
            out.push(e.outcome(if succeeded { "succeeded" } else { "failed" }));
        }
        let ledger = sqlx::query(
            "select 'authorized ' || amount_minor || ' ' || currency || ' at ' || provider as what, at
               from payment_authorizations where order_id = $1
             union all select 'captured ' || amount_minor, at from payment_captures where order_id = $1
             union all select 'voided', at from payment_voids where order_id = $1
             union all select 'refunded ' || amount_minor, at from payment_refunds where order_id = $1
             order by at",
        )
        .bind(order.order_id)
        .fetch_all(&self.0)
        .await?;
        for l in &ledger {
            let what: String = l.try_get("what")?;
            out.push(Entry::new(l.try_get("at")?, "payments", Kind::Record, format!("ledger: {what}")));
        }
        Ok(out)
    }
}

impl Source for Payments {
    fn pipeline(&self) -> &'static str {
        "payments"
    }

    fn entries<'a>(&'a self, order: &'a Followed) -> BoxFuture<'a, Result<Vec<Entry>, SourceError>> {
        async move { self.read(order).await.map_err(boxed) }.boxed()
    }
}

/// Fulfilment: each seller's part of the order, requested and shipped.
struct Fulfilment(PgPool);

impl Fulfilment {
    async fn read(&self, order: &Followed) -> Result<Vec<Entry>, sqlx::Error> {
        let rows = sqlx::query(
            "select seller, status, tracking, requested_at, shipped_at from fulfilments
             where tenant = $1 and seller = any($2) and order_id = $3 order by requested_at",
        )
        .bind(&order.tenant)
        .bind(&order.sellers)
        .bind(order.order_id)
        .fetch_all(&self.0)
        .await?;
        let mut out = Vec::new();
        for r in &rows {
            let seller: String = r.try_get("seller")?;
            out.push(
                Entry::new(
                    r.try_get("requested_at")?,
                    "fulfilment",
                    Kind::Record,
                    format!("fulfilment requested of {seller}"),
                )
                .outcome("requested"),
            );
            if let Some(at) = r.try_get::<Option<DateTime<Utc>>, _>("shipped_at")? {
                let tracking: Option<String> = r.try_get("tracking")?;
                let detail = match tracking {
                    Some(t) => format!("{seller} shipped (tracking {t})"),
                    None => format!("{seller} shipped"),
                };
                out.push(Entry::new(at, "fulfilment", Kind::Record, detail).outcome("shipped"));
            }
        }
        Ok(out)
    }
}

impl Source for Fulfilment {
    fn pipeline(&self) -> &'static str {
        "fulfilment"
    }

    /// `SellerShipped` (`workers::fulfilment`).
    fn aggregates(&self, order: &Followed) -> Vec<String> {
        vec![format!("fulfilment:{}:{}", order.tenant, order.order_id)]
    }

    fn entries<'a>(&'a self, order: &'a Followed) -> BoxFuture<'a, Result<Vec<Entry>, SourceError>> {
        async move { self.read(order).await.map_err(boxed) }.boxed()
    }
}
