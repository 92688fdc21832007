//! `souk.cmd.payments.authorize` and `souk.cmd.payments.settle` → the provider call(s)
//! → ledger row + recorded answer + inbox record + `PaymentResult` outbox row (and the
//! answering call's log line closed), in ONE transaction after the calls; acked after
//! commit. On the happy path a command costs three transactions: one read (inbox,
//! answer, authorization, providers that may hold money), the call's log line written
//! before the call, and that one.
//!
//! The provider call cannot be inside the transaction (it is not Postgres), so a
//! delivery first skips what is known to be done — its message id in the inbox; its
//! idempotency key's answer recorded (the same command under another message id) is
//! answered again from the record, with no call — and then asks the gateway, whose
//! calls carry the step's idempotency key: a delivery repeated after a crash between
//! the call and the commit gets the provider's first answer again, and the money moves
//! once.
//!
//! Errors: an unreadable or inconsistent command is poison (dead-lettered); a provider
//! that may hold money and cannot say is a dependency fault (held, never
//! dead-lettered); store failures are classified by `store::store_error`.

use super::{
    gateway::{Decision, Gateway, GatewayError},
    provider::{Charge, Reply, Settle},
};
use crate::store::store_error;
use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Currency, Message, encode, headers,
    payments::{AuthorizePayment, Operation, PaymentFailure, PaymentResult, SettlePayment, idempotency_key},
};
use souk_stores::postgres::{self as pg, inbox, outbox, payments};
use souk_topologies::{
    runtime::{Delivery, Handler, HandlerError, Outcome},
    trace,
};
use sqlx::{PgPool, types::Uuid};
use std::sync::Arc;

/// When a command whose key another delivery may be charging with is tried again.
const KEY_BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a command waits for the one provider it needs (whose breaker is open, or
/// that cannot say whether it holds money under the key) before trying again.
const PROVIDER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Which command a handler takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Authorize,
    Settle,
}

/// Handles the payments pool's commands of one [`Kind`].
#[derive(Debug, Clone)]
pub struct PaymentsHandler {
    pool: PgPool,
    consumer: String,
    gateway: Arc<Gateway>,
    kind: Kind,
}

/// A payment command, either kind.
struct Command {
    tenant: String,
    order_id: Uuid,
    operation: Operation,
    amount_minor: i64,
    currency: Currency,
    key: String,
    token: Option<String>,
    /// The authorize's token looks like a card number (dropped: `token` is `None`).
    card_number: bool,
}

impl PaymentsHandler {
    pub fn new(pool: PgPool, consumer: impl Into<String>, gateway: Arc<Gateway>, kind: Kind) -> Self {
        PaymentsHandler { pool, consumer: consumer.into(), gateway, kind }
    }

    fn command(&self, d: &Delivery) -> Result<Command, HandlerError> {
        let undecodable = |e: souk_pipelines::DecodeError| match e.is_newer_version() {
            true => HandlerError::too_new("schema_too_new", e),
            false => HandlerError::poison("undecodable", e),
        };
        let cmd = match self.kind {
            Kind::Authorize => {
                let c: AuthorizePayment = d.decode().map_err(undecodable)?;
                // Never echo it, keep it or send it on: it could be a card number. Nor
                // dead-letter the command (the dead letter would keep the number): it
                // is answered as declined, and the saga cancels the order.
                let card_number = souk_pipelines::pan::looks_like_pan(&c.payment_token);
                Command {
                    tenant: c.tenant,
                    order_id: c.order_id,
                    operation: Operation::Authorize,
                    amount_minor: c.amount_minor,
                    currency: c.currency,
                    key: c.idempotency_key,
                    token: (!card_number).then_some(c.payment_token),
                    card_number,
                }
            }
            Kind::Settle => {
                let c: SettlePayment = d.decode().map_err(undecodable)?;
                if c.operation == Operation::Authorize {
                    return Err(HandlerError::poison("invalid_payment", "a settle command cannot authorize"));
                }
                Command {
                    tenant: c.tenant,
                    order_id: c.order_id,
                    operation: c.operation,
                    amount_minor: c.amount_minor,
                    currency: c.currency,
                    key: c.idempotency_key,
                    token: None,
                    card_number: false,
                }
            }
        };
        if cmd.tenant.is_empty() {
            return Err(HandlerError::poison("invalid_payment", "the tenant is required"));
        }
        let void = cmd.operation == Operation::Void;
        if cmd.amount_minor < 0 || (cmd.amount_minor == 0 && !void) {
            return Err(HandlerError::poison(
                "invalid_payment",
                format!("invalid amount {}", cmd.amount_minor),
            ));
        }
        // The key is the step's, derived by the saga: any other would not protect it.
        if cmd.key != idempotency_key(cmd.order_id, cmd.operation) {
            return Err(HandlerError::poison("invalid_payment", "the idempotency key is not the step's"));
        }
        Ok(cmd)
    }

    async fn handle_command(&self, d: &Delivery, cmd: &Command) -> Result<(), HandlerError> {
        let message_id = d.dedupe_id();
        let store = |e: pg::Error| store_error(&e);
        if cmd.card_number {
            let reply = Reply::Declined {
                code: "card_number".into(),
                message: "the payment token looks like a card number: souk takes provider tokens only".into(),
                soft: false,
            };
            return self.commit(d, cmd, Decision::Answered { provider: String::new(), reply }).await;
        }
        // One read (a pooled connection only for it): handled before, answered before,
        // and the order's authorization (what a settle acts on; an authorize's own).
        let seen = payments::seen(&self.pool, &self.consumer, &message_id, &cmd.key, Some(cmd.order_id))
            .await
            .map_err(store)?;
        if seen.handled {
            return Ok(());
        }
        if seen.answered {
            // The same step under another message id (the sweeper's re-send after a
            // reply was lost, an operator's retry): no provider call, the recorded
            // answer again — the saga waits for it, and ignores a copy it has had.
            return self.answer_again(d, cmd).await;
        }
        if cmd.operation == Operation::Authorize
            && let Some(auth) = &seen.authorization
        {
            // Authorized, and the answer's record gone with the retention while a copy
            // lived on (a dead letter redriven, an outbox row requeued): the ledger,
            // kept for good, answers — no provider asked to authorize the money again
            // (review: the primary, which never saw the key, would; and the ledger's
            // refusal of a second authorization dead-lettered the copy).
            return self.answer_from_ledger(d, cmd, auth).await;
        }
        let decision = match self.decide(cmd, seen.authorization, &seen.maybe_charged, &message_id).await {
            Ok(decision) => decision,
            // One provider's trouble, for this key: this message waits for that provider
            // (never dead-lettered, no attempt spent, its slot given up meanwhile) while
            // the pool goes on with the others — a dependency fault would hold it in its
            // slot and stop the whole pool, and a provider's outage then filled the slots
            // with its own deliveries and stopped the captures of orders authorized at
            // the other provider too (review, tenth session).
            //
            // Each waits on its step's key: a re-sent copy of the step that comes to wait
            // beside it in this pool is acked, and this one answers for both.
            Err(GatewayError::Unknown(e)) => {
                let waiting = HandlerError::waiting("payment_state_unknown", e).after(PROVIDER_WAIT);
                return Err(waiting.on_work(&cmd.key));
            }
            Err(GatewayError::Unavailable(e)) => {
                let waiting = HandlerError::waiting("payment_provider_unavailable", e).after(PROVIDER_WAIT);
                return Err(waiting.on_work(&cmd.key));
            }
            // This message alone waits (the other delivery ends within a handler
            // timeout): retried after a pause, while the pool handles the others, and
            // without spending an attempt (two deliveries of a key could otherwise
            // take turns waiting on each other into the dead-letter stream: review).
            Err(GatewayError::KeyBusy(e)) => {
                return Err(HandlerError::waiting("payment_key_busy", e)
                    .after(KEY_BUSY_RETRY)
                    .on_work(&cmd.key));
            }
            Err(GatewayError::Store(e)) => return Err(store(e)),
        };
        self.commit(d, cmd, decision).await
    }

    /// The providers' decision — or the ledger's, for a settle it refuses outright
    /// (`auth`: the order's authorization as read before, for a settle; `maybe_charged`:
    /// the providers that may hold money under the key, read with it; `delivery`: the
    /// message id, logged with each call).
    ///
    /// No pooled connection is held here, across a gateway call: the gateway logs each
    /// attempt through the same pool, so a handler holding a connection while it calls
    /// would wait for a second one — with as many handlers in flight as the pool has
    /// connections, every connection is held by a handler waiting for another, and
    /// nothing moves until the acquire timeout (an "outage" that trips the breaker and
    /// repeats on every retry).
    async fn decide(
        &self,
        cmd: &Command,
        auth: Option<payments::Authorization>,
        maybe_charged: &[String],
        delivery: &str,
    ) -> Result<Decision, GatewayError> {
        let token = cmd.token.as_deref().unwrap_or_default();
        if cmd.operation == Operation::Authorize {
            let charge = Charge {
                key: &cmd.key,
                token,
                amount_minor: cmd.amount_minor,
                currency: cmd.currency.code(),
            };
            return self.gateway.authorize(&charge, maybe_charged, delivery).await;
        }
        let declined = |code: &str, message: String| Decision::Answered {
            provider: String::new(),
            reply: Reply::Declined { code: code.to_owned(), message, soft: false },
        };
        let Some(auth) = auth else {
            return Ok(declined("no_authorization", format!("order {} has no authorization", cmd.order_id)));
        };
        let refused = match cmd.operation {
            _ if auth.currency != cmd.currency.code() => {
                Some(("currency_mismatch", format!("the authorization is in {}", auth.currency)))
            }
            Operation::Capture | Operation::Void if auth.voided => {
                Some(("voided", "the authorization was voided".into()))
            }
            Operation::Capture | Operation::Void if auth.captured_minor.is_some() => {
                Some((souk_pipelines::payments::ALREADY_CAPTURED, "the payment was captured".into()))
            }
            Operation::Capture if cmd.amount_minor > auth.amount_minor => Some((
                "amount_exceeds_authorization",
                format!("capture of {} above the authorized {}", cmd.amount_minor, auth.amount_minor),
            )),
            Operation::Refund => match auth.captured_minor {
                None => Some(("not_captured", "nothing was captured".into())),
                Some(c) if auth.refunded_minor + cmd.amount_minor > c => Some((
                    "amount_exceeds_capture",
                    format!(
                        "refund of {} above what is left of the capture ({})",
                        cmd.amount_minor,
                        c - auth.refunded_minor
                    ),
                )),
                Some(_) => None,
            },
            _ => None,
        };
        if let Some((code, message)) = refused {
            return Ok(declined(code, message));
        }
        let settle = Settle {
            key: &cmd.key,
            operation: cmd.operation,
            payment_id: &auth.provider_payment_id,
            amount_minor: cmd.amount_minor,
        };
        let decision = self.gateway.settle(&auth.provider, &settle, delivery).await?;
        // The answer names the provider's payment: the one the ledger holds.
        Ok(match decision {
            Decision::Answered { provider, reply: Reply::Approved { .. } } => Decision::Answered {
                provider,
                reply: Reply::Approved { payment_id: auth.provider_payment_id.clone() },
            },
            other => other,
        })
    }

    /// One transaction: inbox record, the recorded answer (see [`is_the_keys_answer`]),
    /// the ledger row and the `PaymentResult` outbox row.
    async fn commit(&self, d: &Delivery, cmd: &Command, decision: Decision) -> Result<(), HandlerError> {
        let store = |e: pg::Error| store_error(&e);
        let Some(mut tx) = self.begin_recorded(d).await? else { return Ok(()) };
        let id = d.dedupe_id();
        if let Decision::Answered { provider, .. } = &decision
            && !provider.is_empty()
        {
            payments::attempts_answered(&mut tx, &cmd.key, provider).await.map_err(store)?;
        }
        let event = result_event(cmd, &decision);
        let succeeded = event.failure.is_none();
        let json = serde_json::to_value(&event).map_err(|e| HandlerError::poison("unencodable", e))?;
        let op = cmd.operation.as_str();
        let first = if is_the_keys_answer(cmd, &decision) {
            payments::record_result(&mut tx, &cmd.key, cmd.order_id, op, succeeded, &json)
                .await
                .map_err(store)?
        } else {
            true
        };
        if first {
            if let (true, Decision::Answered { provider, reply: Reply::Approved { payment_id } }) =
                (succeeded, &decision)
            {
                self.record_ledger(&mut tx, cmd, provider, payment_id).await.map_err(store)?;
            }
            metrics::counter!("souk_payments_results_total", "operation" => op,
                "outcome" => outcome_label(&event))
            .increment(1);
            outbox::enqueue(&mut tx, result_row(cmd, &event, id)).await.map_err(store)?;
        }
        tx.commit().await.map_err(|e| store(e.into()))?;
        Ok(())
    }

    /// A transaction holding `d`'s inbox record — `None` (nothing begun) when the
    /// inbox has it already: handled before, by a delivery whose ack was lost.
    async fn begin_recorded(
        &self,
        d: &Delivery,
    ) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, HandlerError> {
        let store = |e: pg::Error| store_error(&e);
        let mut tx = pg::begin(&self.pool).await.map_err(store)?;
        let new =
            inbox::record_many(&mut tx, &self.consumer, &[crate::store::received(d)]).await.map_err(store)?;
        Ok((!new.is_empty()).then_some(tx))
    }

    /// A command whose key was answered before: its inbox record and the recorded
    /// answer again, as a new `PaymentResult` caused by this delivery, in one
    /// transaction.
    async fn answer_again(&self, d: &Delivery, cmd: &Command) -> Result<(), HandlerError> {
        let store = |e: pg::Error| store_error(&e);
        let Some(mut tx) = self.begin_recorded(d).await? else { return Ok(()) };
        let Some(recorded) = payments::recorded_result(&mut tx, &cmd.key).await.map_err(store)? else {
            // Read as answered a moment ago and gone now: answers are never deleted.
            return Err(HandlerError::retryable("payment_result_missing", "the recorded answer vanished"));
        };
        let event: PaymentResult = serde_json::from_value(recorded)
            .map_err(|e| HandlerError::poison("payment_result_unreadable", e))?;
        answered_again(tx, d, cmd, &event).await
    }

    /// An authorize whose order's authorization is in the ledger: its inbox record,
    /// the ledger's authorization as the answer (recorded as the key's answer again)
    /// and its `PaymentResult`, in one transaction.
    async fn answer_from_ledger(
        &self,
        d: &Delivery,
        cmd: &Command,
        auth: &payments::Authorization,
    ) -> Result<(), HandlerError> {
        let store = |e: pg::Error| store_error(&e);
        let Some(mut tx) = self.begin_recorded(d).await? else { return Ok(()) };
        let decision = Decision::Answered {
            provider: auth.provider.clone(),
            reply: Reply::Approved { payment_id: auth.provider_payment_id.clone() },
        };
        let event = PaymentResult { amount_minor: auth.amount_minor, ..result_event(cmd, &decision) };
        let json = serde_json::to_value(&event).map_err(|e| HandlerError::poison("unencodable", e))?;
        payments::record_result(&mut tx, &cmd.key, cmd.order_id, cmd.operation.as_str(), true, &json)
            .await
            .map_err(store)?;
        answered_again(tx, d, cmd, &event).await
    }

    async fn record_ledger(
        &self,
        tx: &mut sqlx::PgConnection,
        cmd: &Command,
        provider: &str,
        payment_id: &str,
    ) -> Result<(), pg::Error> {
        match cmd.operation {
            Operation::Authorize => {
                let a = payments::NewAuthorization {
                    order_id: cmd.order_id,
                    tenant: &cmd.tenant,
                    provider,
                    provider_payment_id: payment_id,
                    amount_minor: cmd.amount_minor,
                    currency: cmd.currency.code(),
                    idempotency_key: &cmd.key,
                };
                payments::record_authorization(tx, &a).await
            }
            Operation::Capture => {
                payments::record_capture(tx, cmd.order_id, cmd.amount_minor, &cmd.key).await
            }
            Operation::Void => payments::record_void(tx, cmd.order_id, &cmd.key).await,
            Operation::Refund => payments::record_refund(tx, cmd.order_id, cmd.amount_minor, &cmd.key).await,
        }
    }
}

/// Emit `event` again as the answer to `d` (a new `PaymentResult` caused by this
/// delivery) and commit `tx`, which holds `d`'s inbox record.
async fn answered_again(
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    d: &Delivery,
    cmd: &Command,
    event: &PaymentResult,
) -> Result<(), HandlerError> {
    let store = |e: pg::Error| store_error(&e);
    metrics::counter!("souk_payments_results_total", "operation" => cmd.operation.as_str(),
        "outcome" => "answered_again")
    .increment(1);
    outbox::enqueue(&mut tx, result_row(cmd, event, d.dedupe_id())).await.map_err(store)?;
    tx.commit().await.map_err(|e| store(e.into()))?;
    Ok(())
}

fn outcome_label(event: &PaymentResult) -> &'static str {
    match &event.failure {
        None => "succeeded",
        Some(PaymentFailure::Declined { .. }) => "declined",
        Some(PaymentFailure::Exhausted { .. }) => "exhausted",
    }
}

/// Whether `decision` is the answer to `cmd`'s idempotency key for good, recorded so
/// that the key is never sent again. Two are not:
/// - the ledger's own refusal of a settle (no provider was called): judged again on the
///   ledger as it is then. A void refused for want of an authorization must not use up
///   the void's key: the authorization may still arrive (a held authorize completing
///   after the saga gave up), and the saga voids it with the same key.
/// - a void or refund whose retry budget ran out: sent again (the saga's refunding
///   step, re-sent by the sweeper), it tries the provider again under the same key
///   (which the provider honours), instead of repeating the failure.
///
/// An authorize's or a capture's exhausted answer is recorded: the saga moves on from
/// it (compensating) and never asks again, so only a stale copy of the command — a
/// sweeper's re-send still queued — could send it again, and must not move money the
/// saga has given up on (found in review: a capture copy charged a cancelling order).
fn is_the_keys_answer(cmd: &Command, decision: &Decision) -> bool {
    match decision {
        Decision::Answered { provider, .. } => !provider.is_empty(),
        Decision::Exhausted { .. } => !matches!(cmd.operation, Operation::Void | Operation::Refund),
    }
}

fn result_event(cmd: &Command, decision: &Decision) -> PaymentResult {
    let (failure, provider, payment_id) = match decision {
        Decision::Answered { provider, reply: Reply::Approved { payment_id } } => {
            (None, Some(provider.clone()), Some(payment_id.clone()))
        }
        Decision::Answered { provider, reply: Reply::Declined { code, message, .. } } => (
            Some(PaymentFailure::Declined { code: code.clone(), message: message.clone() }),
            (!provider.is_empty()).then(|| provider.clone()),
            None,
        ),
        Decision::Exhausted { attempts, last_error } => (
            Some(PaymentFailure::Exhausted { attempts: *attempts, last_error: last_error.clone() }),
            None,
            None,
        ),
    };
    PaymentResult {
        tenant: cmd.tenant.clone(),
        order_id: cmd.order_id,
        operation: cmd.operation,
        failure,
        provider,
        provider_payment_id: payment_id,
        amount_minor: cmd.amount_minor,
        currency: cmd.currency,
        at: chrono::Utc::now(),
    }
}

fn result_row(cmd: &Command, event: &PaymentResult, causation_id: String) -> outbox::NewMessage {
    let mut h = trace::outbox_context(&trace::current_context_pairs(), PaymentResult::SUBJECT);
    h.push((headers::SCHEMA.into(), PaymentResult::schema_header()));
    h.push((headers::TENANT.into(), cmd.tenant.clone()));
    h.push((headers::CAUSATION_ID.into(), causation_id));
    outbox::NewMessage {
        // One order's events in the order written (the saga's aggregate).
        aggregate_id: cmd.order_id.to_string(),
        subject: PaymentResult::SUBJECT.into(),
        headers: h,
        payload: encode(event),
    }
}

impl Handler for PaymentsHandler {
    fn too_new(&self, d: &Delivery) -> Option<String> {
        match self.kind {
            Kind::Authorize => crate::schema::too_new::<AuthorizePayment>(d),
            Kind::Settle => crate::schema::too_new::<SettlePayment>(d),
        }
    }

    /// Postgres takes writes to the ledger, and some provider answers.
    fn probe(&self) -> BoxFuture<'_, Result<(), HandlerError>> {
        async move {
            let tables = ["inbox", "outbox", "payment_results", "payment_attempts", "payment_authorizations"];
            crate::store::probe_writable(&self.pool, &tables).await?;
            self.gateway
                .any_provider_answers()
                .await
                .map_err(|e| HandlerError::dependency("payment_providers_down", e))
        }
        .boxed()
    }

    fn handle<'a>(&'a self, d: &'a Delivery) -> BoxFuture<'a, Outcome> {
        async move {
            let cmd = match self.command(d) {
                Ok(cmd) => cmd,
                Err(refused) => return refused.into(),
            };
            match self.handle_command(d, &cmd).await {
                Ok(()) => Outcome::Ack,
                Err(e) => e.into(),
            }
        }
        .boxed()
    }
}
