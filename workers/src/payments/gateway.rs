//! The decisions of one payment command across providers: retries with backoff on one
//! provider, its breaker, failover to the next — and, whenever a call ended without an
//! answer, asking the provider by key before deciding anything.
//!
//! Money moves at most once:
//! - every call for a step carries the step's idempotency key, so a retry on one
//!   provider can only get the first answer back;
//! - every call is logged before it is made (`payment_attempts`), so no process, not
//!   even one started after a crash, sends a key to a provider while another provider
//!   may hold money under it: it asks that provider first (found: used; not found:
//!   go ahead; cannot tell: hold the command — a dependency fault, never a guess);
//! - a provider that answered 503 or refused the connection processed nothing, so a
//!   key can fail over from an outage without a status query.
//!
//! A call that got an answer for good leaves its log line `pending` ("may hold
//! money", as `answered` reads): the caller closes it with
//! [`payments::attempts_answered`] in the transaction that records the answer, which
//! spares the happy path a transaction per call.

use super::{
    breaker::Breaker,
    provider::{CallError, Charge, PaymentProvider, Reply, Settle},
    retry::{RetryOptions, Schedule},
};
use souk_stores::postgres::{
    self as pg,
    payments::{self, AttemptOutcome},
};
use sqlx::PgPool;
use std::sync::Arc;

/// A provider and its breaker.
struct Endpoint {
    provider: Arc<dyn PaymentProvider>,
    breaker: Breaker,
}

/// How a command ended at the providers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `provider` answered for good (approved, or declined for good). Its log line is
    /// left `pending` for the caller's transaction to close
    /// ([`payments::attempts_answered`]).
    Answered { provider: String, reply: Reply },
    /// The budget is spent with no provider answering for good, and none holds money
    /// under the key.
    Exhausted { attempts: u32, last_error: String },
}

/// A command that cannot be decided now.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A provider may hold money under the key and cannot say: the command waits.
    #[error("payment state unknown: {0}")]
    Unknown(String),
    /// The one provider that can serve the command (a settle: the one holding the
    /// authorization) refuses calls for now (its breaker is open): the command waits.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// Another delivery of the key may be calling another provider right now: this one
    /// waits for it — not a dependency failure: the pool goes on with the others.
    #[error("payment key busy: {0}")]
    KeyBusy(String),
    #[error(transparent)]
    Store(#[from] pg::Error),
}

/// What [`Gateway::answered_elsewhere`] found.
enum Elsewhere {
    /// A provider holds the key's answer.
    Answered(Decision),
    /// The providers that may hold money under the key, as read; none of them (but the
    /// one excepted) answers for it.
    Checked(Vec<String>),
}

/// How long after it was logged a provider call may still change what a status query
/// answered: a `pending` line younger than this, at a provider the caller has checked,
/// may be a call the provider had not seen when it answered the caller's status query.
/// The call lands within one call timeout of its log line, and the status answer
/// reaches the caller within one call timeout of being decided, so two call timeouts
/// (`payments.call-timeout` is at most 10 s) and a margin. Older lines are a crashed
/// worker's, settled by the status query. (It was 15 s: review found the status
/// query's own latency missing.) A payments consumer's ack wait should be at least 1.5 ×
/// this, so the line of a delivery that died mid-call is older than this when JetStream
/// redelivers its message (a node warns of a shorter one: the redelivery waits).
pub const CALL_IN_FLIGHT: std::time::Duration = std::time::Duration::from_secs(25);

/// One provider call of a command.
#[derive(Clone, Copy)]
enum Call<'a> {
    Authorize(&'a Charge<'a>),
    Settle(&'a Settle<'a>),
}

impl Call<'_> {
    fn key(&self) -> &str {
        match self {
            Call::Authorize(c) => c.key,
            Call::Settle(s) => s.key,
        }
    }

    fn operation(&self) -> &'static str {
        match self {
            Call::Authorize(_) => "authorize",
            Call::Settle(s) => s.operation.as_str(),
        }
    }
}

/// How one provider's tries ended.
enum Tried {
    Decided(Decision),
    BreakerOpen,
    BudgetSpent,
}

#[derive(Default)]
struct Tally {
    attempts: u32,
    last_error: String,
}

/// The providers, in order of preference (the first is the primary).
pub struct Gateway {
    endpoints: Vec<Endpoint>,
    options: RetryOptions,
    pool: PgPool,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.endpoints.iter().map(|e| (e.provider.name(), e.breaker.state())).collect();
        f.debug_struct("Gateway").field("providers", &names).finish()
    }
}

impl Gateway {
    /// `providers` in order of preference; each gets a breaker.
    pub fn new(providers: Vec<Arc<dyn PaymentProvider>>, options: RetryOptions, pool: PgPool) -> Gateway {
        let endpoints = providers
            .into_iter()
            .map(|provider| Endpoint {
                breaker: Breaker::new(provider.name(), options.breaker_failures, options.breaker_open_for),
                provider,
            })
            .collect();
        Gateway { endpoints, options, pool }
    }

    /// The breaker of `provider`'s state (`closed`, `half_open`, `open`).
    pub fn breaker_state(&self, provider: &str) -> Option<&'static str> {
        self.endpoint(provider).map(|e| e.breaker.state())
    }

    /// Whether any provider answers (the pool's probe).
    pub async fn any_provider_answers(&self) -> Result<(), String> {
        let mut errors = Vec::new();
        for e in &self.endpoints {
            match e.provider.health().await {
                Ok(()) => return Ok(()),
                Err(err) => errors.push(format!("{}: {err}", e.provider.name())),
            }
        }
        Err(errors.join("; "))
    }

    fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.provider.name() == name)
    }

    /// Authorize, failing over from provider to provider. `maybe_charged`: the
    /// providers that may hold money under the key ([`payments::providers_maybe_charged`])
    /// as the caller read them just before — the first provider's check uses it instead
    /// of reading again; each failover reads afresh (this call has logged attempts since).
    /// `delivery`: the message id of the delivery calling, logged with each call (a
    /// redelivery of the same message does not wait on its own earlier calls).
    pub async fn authorize(
        &self,
        charge: &Charge<'_>,
        maybe_charged: &[String],
        delivery: &str,
    ) -> Result<Decision, GatewayError> {
        let call = Call::Authorize(charge);
        let mut schedule = Schedule::new(&self.options);
        let mut tally = Tally::default();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let name = endpoint.provider.name();
            // Before a key goes here: no other provider may hold money under it.
            let read_before = (i == 0).then_some(maybe_charged);
            let checked = match self.answered_elsewhere(charge.key, Some(name), read_before).await? {
                Elsewhere::Answered(found) => return Ok(found),
                Elsewhere::Checked(names) => names,
            };
            if i > 0 {
                metrics::counter!("souk_payments_failovers_total", "to" => name.to_owned()).increment(1);
                tracing::warn!(provider = name, key = charge.key, "payment failing over");
            }
            match self
                .try_endpoint(endpoint, call, Some(&checked), delivery, &mut schedule, &mut tally)
                .await?
            {
                Tried::Decided(decision) => return Ok(decision),
                Tried::BreakerOpen => continue,
                Tried::BudgetSpent => break,
            }
        }
        self.exhausted(charge.key, tally).await
    }

    /// Capture, void or refund at `provider`, the one holding the authorization (a
    /// payment cannot move to another provider). `delivery` as for [`Gateway::authorize`].
    pub async fn settle(
        &self,
        provider: &str,
        settle: &Settle<'_>,
        delivery: &str,
    ) -> Result<Decision, GatewayError> {
        let endpoint = self.endpoint(provider).ok_or_else(|| {
            GatewayError::Unknown(format!("the authorization is at {provider}, which is not configured"))
        })?;
        let mut schedule = Schedule::new(&self.options);
        let mut tally = Tally::default();
        match self
            .try_endpoint(endpoint, Call::Settle(settle), None, delivery, &mut schedule, &mut tally)
            .await?
        {
            Tried::Decided(decision) => Ok(decision),
            // No other provider can settle this payment: while its breaker is open the
            // command waits for it (see the handler) instead of failing — a capture
            // given up this way unwound a paid order, a void left the authorization held.
            Tried::BreakerOpen => Err(GatewayError::Unavailable(tally.last_error)),
            Tried::BudgetSpent => self.exhausted(settle.key, tally).await,
        }
    }

    /// Try `call` on one provider until it answers for good, its breaker opens, or the
    /// budget is spent. `checked` (an authorize): the other providers whose lines the
    /// caller read and asked the status of — a call is not made while another provider
    /// may hold money under the key beyond those (see
    /// [`payments::authorize_attempt_started`]).
    async fn try_endpoint(
        &self,
        endpoint: &Endpoint,
        call: Call<'_>,
        checked: Option<&[String]>,
        delivery: &str,
        schedule: &mut Schedule,
        tally: &mut Tally,
    ) -> Result<Tried, GatewayError> {
        let name = endpoint.provider.name();
        let key = call.key();
        loop {
            if !endpoint.breaker.permits() {
                tally.last_error = format!("{name}: circuit open");
                return Ok(Tried::BreakerOpen);
            }
            tally.attempts += 1;
            let attempt = match checked {
                None => payments::attempt_started(&self.pool, key, name, delivery).await?,
                Some(checked) => payments::authorize_attempt_started(
                    &self.pool,
                    key,
                    name,
                    checked,
                    CALL_IN_FLIGHT,
                    delivery,
                )
                .await?
                .ok_or_else(|| {
                    metrics::counter!("souk_payments_calls_refused_total", "provider" => name.to_owned())
                        .increment(1);
                    GatewayError::KeyBusy(format!(
                        "another delivery of {key} may be calling another provider; not calling {name}"
                    ))
                })?,
            };
            let result = match call {
                Call::Authorize(c) => endpoint.provider.authorize(c).await,
                Call::Settle(s) => endpoint.provider.settle(s).await,
            };
            let count = |outcome: &'static str| {
                metrics::counter!("souk_payments_provider_calls_total",
                    "provider" => name.to_owned(), "operation" => call.operation(), "outcome" => outcome)
                .increment(1);
            };
            match result {
                Ok(Reply::Declined { code, soft: true, .. }) => {
                    count("soft_declined");
                    endpoint.breaker.success();
                    payments::attempt_ended(&self.pool, attempt, AttemptOutcome::Answered).await?;
                    tally.last_error = format!("{name}: soft decline ({code})");
                }
                Ok(reply) => {
                    count(if matches!(reply, Reply::Approved { .. }) { "approved" } else { "declined" });
                    endpoint.breaker.success();
                    // The log line stays `pending`: the caller's transaction closes it.
                    return Ok(Tried::Decided(Decision::Answered { provider: name.to_owned(), reply }));
                }
                Err(CallError::Refused { status, code, message }) => {
                    // Our request, not the provider, is at fault: the provider is up.
                    count("refused");
                    endpoint.breaker.success();
                    payments::attempt_ended(&self.pool, attempt, AttemptOutcome::NotProcessed).await?;
                    let code =
                        if code.is_empty() { format!("refused_{status}") } else { code.to_ascii_lowercase() };
                    // Its words are about souk's request (credentials, a field), not the
                    // buyer's card: logged for operators, never the buyer's reason (found
                    // in review: "missing or wrong API credentials" reached buyers).
                    tracing::warn!(provider = name, key, status, %code, provider_message = %message, "the provider refused the request");
                    let message = "the payment provider refused the request".to_owned();
                    let reply = Reply::Declined { code, message, soft: false };
                    return Ok(Tried::Decided(Decision::Answered { provider: name.to_owned(), reply }));
                }
                Err(CallError::NotProcessed(e)) => {
                    count("not_processed");
                    endpoint.breaker.failure();
                    payments::attempt_ended(&self.pool, attempt, AttemptOutcome::NotProcessed).await?;
                    tally.last_error = format!("{name}: {e}");
                }
                Err(CallError::Ambiguous(e)) => {
                    count("ambiguous");
                    endpoint.breaker.failure();
                    payments::attempt_ended(&self.pool, attempt, AttemptOutcome::Ambiguous).await?;
                    tally.last_error = format!("{name}: {e}");
                    // It may have been processed: ask before deciding anything.
                    match endpoint.provider.status(key).await {
                        Ok(Some(reply @ (Reply::Approved { .. } | Reply::Declined { soft: false, .. }))) => {
                            tracing::info!(
                                provider = name,
                                key,
                                "a call without an answer was processed: its answer is used"
                            );
                            metrics::counter!("souk_payments_found_by_status_total", "provider" => name.to_owned())
                                .increment(1);
                            return Ok(Tried::Decided(Decision::Answered {
                                provider: name.to_owned(),
                                reply,
                            }));
                        }
                        // Not processed (so far): a retry under the same key is safe.
                        Ok(_) => {}
                        Err(status_error) => {
                            tally.last_error = format!("{name}: {e}; status query: {status_error}")
                        }
                    }
                }
            }
            if !schedule.wait().await {
                return Ok(Tried::BudgetSpent);
            }
        }
    }

    /// The answer of a provider (other than `except`) that may hold money under `key`;
    /// `Unknown` when one may and cannot say. `read_before`: those providers as the
    /// caller just read them (else they are read here).
    async fn answered_elsewhere(
        &self,
        key: &str,
        except: Option<&str>,
        read_before: Option<&[String]>,
    ) -> Result<Elsewhere, GatewayError> {
        let maybe_charged = match read_before {
            Some(names) => names.to_vec(),
            None => payments::providers_maybe_charged(&self.pool, key).await?,
        };
        for name in &maybe_charged {
            if Some(name.as_str()) == except {
                continue;
            }
            let endpoint = self.endpoint(name).ok_or_else(|| {
                GatewayError::Unknown(format!("{name} may hold a payment under {key} and is not configured"))
            })?;
            match endpoint.provider.status(key).await {
                Ok(Some(reply @ (Reply::Approved { .. } | Reply::Declined { soft: false, .. }))) => {
                    return Ok(Elsewhere::Answered(Decision::Answered { provider: name.clone(), reply }));
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(GatewayError::Unknown(format!(
                        "{name} may hold a payment under {key} and its status cannot be read: {e}"
                    )));
                }
            }
        }
        Ok(Elsewhere::Checked(maybe_charged))
    }

    /// The budget is spent: exhausted, unless a provider turns out to hold money under
    /// the key (then its answer), or may and cannot say (then the command waits) — or
    /// another delivery's call under the key is still under way (then this one waits
    /// for it: found in review, a capture re-sent after an outage failed out of budget
    /// while the original's call was being approved, recorded "exhausted" as the key's
    /// answer, and the approval was dropped — the buyer charged for an order unwound).
    async fn exhausted(&self, key: &str, tally: Tally) -> Result<Decision, GatewayError> {
        if let Elsewhere::Answered(found) = self.answered_elsewhere(key, None, None).await? {
            return Ok(found);
        }
        if payments::call_in_flight(&self.pool, key, CALL_IN_FLIGHT).await? {
            return Err(GatewayError::KeyBusy(format!(
                "out of budget, but another delivery's call under {key} may still be answered; waiting for it"
            )));
        }
        let last_error = match tally.last_error.is_empty() {
            true => "no provider available".to_owned(),
            false => tally.last_error,
        };
        Ok(Decision::Exhausted { attempts: tally.attempts, last_error })
    }
}
