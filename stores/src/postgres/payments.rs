//! The payments ledger (migration 0018): authorizations, captures, voids and refunds
//! per order; the answer recorded per payment command; and the log of provider calls
//! that may have moved money (written before each call, so a crash leaves a trace).

use sqlx::{PgConnection, PgPool, types::Uuid};

use super::Error;

/// What the ledger holds for one order.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Authorization {
    pub order_id: Uuid,
    pub provider: String,
    pub provider_payment_id: String,
    pub amount_minor: i64,
    pub currency: String,
    /// The capture, if any.
    pub captured_minor: Option<i64>,
    pub refunded_minor: i64,
    pub voided: bool,
}

/// The authorization of order `$N` and what happened to it since, as [`Authorization`].
macro_rules! authorization_sql {
    ($order:literal) => {
        concat!(
            "select a.order_id, a.provider, a.provider_payment_id, a.amount_minor, a.currency,
                c.amount_minor as captured_minor,
                coalesce((select sum(r.amount_minor) from payment_refunds r where r.order_id = a.order_id), 0)::bigint
                    as refunded_minor,
                exists (select 1 from payment_voids v where v.order_id = a.order_id) as voided
             from payment_authorizations a left join payment_captures c using (order_id)
             where a.order_id = ",
            $order
        )
    };
}

/// The order's authorization and what happened to it since.
pub async fn authorization(conn: &mut PgConnection, order_id: Uuid) -> Result<Option<Authorization>, Error> {
    Ok(sqlx::query_as(authorization_sql!("$1")).bind(order_id).fetch_optional(conn).await?)
}

/// What a payment command's handler must know before it calls a provider, read in one
/// query (one round trip, one transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// The message is in `consumer`'s inbox: handled before.
    pub handled: bool,
    /// The command's answer is recorded ([`result_recorded`]): answered before, under
    /// another message id.
    pub answered: bool,
    /// The order's [`authorization`], when asked for.
    pub authorization: Option<Authorization>,
    /// [`providers_maybe_charged`] under the command's key, as of this read.
    pub maybe_charged: Vec<String>,
}

/// [`Seen`] for message `message_id` of `consumer`, carrying command `key`, with the
/// authorization of `authorization_of` (none when `None`).
pub async fn seen(
    pool: &PgPool,
    consumer: &str,
    message_id: &str,
    key: &str,
    authorization_of: Option<Uuid>,
) -> Result<Seen, Error> {
    use sqlx::Row;
    let sql = concat!(
        "select exists (select 1 from inbox where consumer = $1 and message_id = $2) as handled,
                exists (select 1 from payment_results where idempotency_key = $3) as answered,
                array(select distinct provider from payment_attempts
                      where idempotency_key = $3 and outcome <> 'not_processed' order by provider)
                    as maybe_charged,
                a.*
         from (values (1)) as one (x) left join lateral (",
        authorization_sql!("$4"),
        ") a on true"
    );
    let row = sqlx::query(sql)
        .bind(consumer)
        .bind(message_id)
        .bind(key)
        .bind(authorization_of)
        .fetch_one(pool)
        .await?;
    let order_id: Option<Uuid> = row.try_get("order_id")?;
    let authorization = match order_id {
        None => None,
        Some(_) => Some(<Authorization as sqlx::FromRow<_>>::from_row(&row)?),
    };
    Ok(Seen {
        handled: row.try_get("handled")?,
        answered: row.try_get("answered")?,
        authorization,
        maybe_charged: row.try_get("maybe_charged")?,
    })
}

/// A new authorization.
#[derive(Debug, Clone)]
pub struct NewAuthorization<'a> {
    pub order_id: Uuid,
    pub tenant: &'a str,
    pub provider: &'a str,
    pub provider_payment_id: &'a str,
    pub amount_minor: i64,
    pub currency: &'a str,
    pub idempotency_key: &'a str,
}

pub async fn record_authorization(tx: &mut PgConnection, a: &NewAuthorization<'_>) -> Result<(), Error> {
    sqlx::query(
        "insert into payment_authorizations
           (order_id, tenant, provider, provider_payment_id, amount_minor, currency, idempotency_key)
         values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(a.order_id)
    .bind(a.tenant)
    .bind(a.provider)
    .bind(a.provider_payment_id)
    .bind(a.amount_minor)
    .bind(a.currency)
    .bind(a.idempotency_key)
    .execute(tx)
    .await?;
    Ok(())
}

pub async fn record_capture(
    tx: &mut PgConnection,
    order_id: Uuid,
    amount_minor: i64,
    key: &str,
) -> Result<(), Error> {
    sqlx::query("insert into payment_captures (order_id, amount_minor, idempotency_key) values ($1, $2, $3)")
        .bind(order_id)
        .bind(amount_minor)
        .bind(key)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn record_void(tx: &mut PgConnection, order_id: Uuid, key: &str) -> Result<(), Error> {
    sqlx::query("insert into payment_voids (order_id, idempotency_key) values ($1, $2)")
        .bind(order_id)
        .bind(key)
        .execute(tx)
        .await?;
    Ok(())
}

pub async fn record_refund(
    tx: &mut PgConnection,
    order_id: Uuid,
    amount_minor: i64,
    key: &str,
) -> Result<(), Error> {
    sqlx::query("insert into payment_refunds (order_id, amount_minor, idempotency_key) values ($1, $2, $3)")
        .bind(order_id)
        .bind(amount_minor)
        .bind(key)
        .execute(tx)
        .await?;
    Ok(())
}

/// Whether a payment command's answer is recorded (it was emitted with it).
pub async fn result_recorded(conn: &mut PgConnection, key: &str) -> Result<bool, Error> {
    Ok(sqlx::query_scalar("select exists (select 1 from payment_results where idempotency_key = $1)")
        .bind(key)
        .fetch_one(conn)
        .await?)
}

/// The answer recorded for `key` (the `PaymentResult` it was emitted as), if any.
pub async fn recorded_result(conn: &mut PgConnection, key: &str) -> Result<Option<serde_json::Value>, Error> {
    let row: Option<sqlx::types::Json<serde_json::Value>> =
        sqlx::query_scalar("select result from payment_results where idempotency_key = $1")
            .bind(key)
            .fetch_optional(conn)
            .await?;
    Ok(row.map(|j| j.0))
}

/// Record a command's answer; `false` if one was recorded already (write nothing else).
pub async fn record_result(
    tx: &mut PgConnection,
    key: &str,
    order_id: Uuid,
    operation: &str,
    succeeded: bool,
    result: &serde_json::Value,
) -> Result<bool, Error> {
    let done = sqlx::query(
        "insert into payment_results (idempotency_key, order_id, operation, succeeded, result)
         values ($1, $2, $3, $4, $5) on conflict do nothing",
    )
    .bind(key)
    .bind(order_id)
    .bind(operation)
    .bind(succeeded)
    .bind(sqlx::types::Json(result))
    .execute(tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How a provider call ended, as far as the caller knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// No answer: it may have moved money.
    Ambiguous,
    /// The provider answered (approved or declined).
    Answered,
    /// Refused before processing (connection refused, 503): nothing moved.
    NotProcessed,
}

impl AttemptOutcome {
    fn as_str(self) -> &'static str {
        match self {
            AttemptOutcome::Ambiguous => "ambiguous",
            AttemptOutcome::Answered => "answered",
            AttemptOutcome::NotProcessed => "not_processed",
        }
    }
}

/// Log a call about to be made by the delivery of message `message_id` (its own
/// transaction: it must survive a crash).
pub async fn attempt_started(
    pool: &PgPool,
    key: &str,
    provider: &str,
    message_id: &str,
) -> Result<Uuid, Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "insert into payment_attempts (id, idempotency_key, provider, message_id) values ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(key)
    .bind(provider)
    .bind(message_id)
    .execute(pool)
    .await?;
    Ok(id)
}

/// Log an authorize call about to be made at `provider` — unless another provider may
/// hold money under `key` that the caller has not checked (`checked`: the providers
/// whose lines it read and asked the status of): a line logged since its read (another
/// delivery of the key, in another process), or one still `pending` from the last
/// `in_flight` (a call that may not have reached its provider yet). `None` when
/// refused. Under the key's lock (migration 0025), so of two deliveries failing over
/// in opposite directions at once, the second to log sees the first. The line records
/// the delivering message (`message_id`, migration 0029); a line of the same message
/// counts like any other (migration 0030: one message can be live twice).
pub async fn authorize_attempt_started(
    pool: &PgPool,
    key: &str,
    provider: &str,
    checked: &[String],
    in_flight: std::time::Duration,
    message_id: &str,
) -> Result<Option<Uuid>, Error> {
    let id = Uuid::now_v7();
    let logged: bool =
        sqlx::query_scalar("select payment_attempt_start($1, $2, $3, $4, make_interval(secs => $5), $6)")
            .bind(id)
            .bind(key)
            .bind(provider)
            .bind(checked)
            .bind(in_flight.as_secs_f64())
            .bind(message_id)
            .fetch_one(pool)
            .await?;
    Ok(logged.then_some(id))
}

/// Whether a call under `key` logged in the last `in_flight` is still `pending`:
/// another delivery's call the provider may not have answered yet (or answered, with
/// its transaction not yet committed). A delivery out of budget must not record the
/// key's answer while one may still move money under it. A line of the same message
/// counts too (migration 0030): one message can be live twice at once (a re-publish
/// after the dedupe window, a dead letter redriven twice), and a delivery that died
/// mid-call left a line older than the window by the time its message comes back
/// (payments consumers' shipped ack wait is more than 1.5 × the window).
pub async fn call_in_flight(pool: &PgPool, key: &str, in_flight: std::time::Duration) -> Result<bool, Error> {
    Ok(sqlx::query_scalar(
        "select exists (select 1 from payment_attempts
         where idempotency_key = $1 and outcome = 'pending'
           and at > clock_timestamp() - make_interval(secs => $2))",
    )
    .bind(key)
    .bind(in_flight.as_secs_f64())
    .fetch_one(pool)
    .await?)
}

/// `provider` answered for `key`: its calls still logged as under way end `answered`
/// — in the transaction recording the answer, so a happy call costs no transaction of
/// its own to close its log line. (Until then the line reads `pending`, which counts as
/// "may hold money" exactly as `answered` does.)
pub async fn attempts_answered(tx: &mut PgConnection, key: &str, provider: &str) -> Result<(), Error> {
    sqlx::query(
        "update payment_attempts set outcome = 'answered'
         where idempotency_key = $1 and provider = $2 and outcome = 'pending'",
    )
    .bind(key)
    .bind(provider)
    .execute(tx)
    .await?;
    Ok(())
}

/// How the call `id` ended.
pub async fn attempt_ended(pool: &PgPool, id: Uuid, outcome: AttemptOutcome) -> Result<(), Error> {
    sqlx::query("update payment_attempts set outcome = $2 where id = $1")
        .bind(id)
        .bind(outcome.as_str())
        .execute(pool)
        .await?;
    Ok(())
}

/// The providers that may hold money moved under `key`: any call to them for it that
/// was not refused before processing.
pub async fn providers_maybe_charged(pool: &PgPool, key: &str) -> Result<Vec<String>, Error> {
    Ok(sqlx::query_scalar(
        "select distinct provider from payment_attempts
         where idempotency_key = $1 and outcome <> 'not_processed' order by provider",
    )
    .bind(key)
    .fetch_all(pool)
    .await?)
}
