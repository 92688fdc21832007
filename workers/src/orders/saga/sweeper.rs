//! The sweeper: no saga stays stuck. A saga past its deadline (its reply lost, a pool
//! down) gets its step's command again — safe, every handler is idempotent — up to
//! [`MAX_ATTEMPTS`] sends, then compensates; a step that moves money or awaits sellers
//! is sent again until answered, less and less often (`State::gives_up`,
//! `State::wait_after`). A saga with a command or answer still waiting in the outbox
//! (the broker down, no relay; not a parked row, which waits for an operator) only has
//! its deadline moved: no reply could have come, so the wait spends none of its
//! attempts. So does a saga whose step's command, or whose reply, waits for a pool that
//! is not handling anything now ([`Stalled`]: paused by an operator, or its breaker
//! open, in every live process running it) — pausing the inventory pool for two minutes
//! cancelled every order being reserved (review, eleventh session). Run periodically by
//! every worker process (`cli::node`'s housekeeping loop); `skip locked` makes several
//! processes share the work without acting twice on one saga.

use chrono::{DateTime, Utc};
use souk_stores::postgres::{self as pg, sagas};
use sqlx::PgPool;

use super::{
    advance::{Cause, advance},
    machine::{Effect, Event, State, fulfil_step, timed_out_reason},
};

/// Sends of one step's command before the saga gives up on it and compensates (in a
/// state that [`State::gives_up`]).
pub use sagas::MAX_ATTEMPTS;

/// Most sagas one sweep handles in one transaction (the next sweep takes the rest).
pub const SWEEP_BATCH: i64 = 200;

/// How long a saga in a state this release does not know is left before it is looked
/// at again (see [`sweep`]).
const UNKNOWN_STATE_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The outbox aggregates of a saga's messages: its own commands and the payments
/// pool's answers (under the order id), the inventory's and the fulfilment's answers.
fn message_aggregates(saga: &sagas::Saga) -> [String; 3] {
    [
        saga.order_id.to_string(),
        crate::inventory::aggregate_id(&saga.tenant, saga.order_id),
        crate::fulfilment::aggregate_id(&saga.tenant, saga.order_id),
    ]
}

/// The steps the state's commands are logged as: one per seller still awaited for the
/// fulfilment requests (`fulfil <seller>`), else the effect's step.
pub(super) fn open_steps(state: State, saga: &sagas::Saga) -> Vec<String> {
    let mut steps = Vec::new();
    for effect in state.step_effects() {
        match effect {
            Effect::RequestFulfilment => {
                steps.extend(saga.awaiting_sellers.iter().map(|seller| fulfil_step(seller)));
            }
            e => steps.extend(e.step().map(str::to_owned)),
        }
    }
    steps
}

/// What cannot be handled now: the subject filters of the consumers whose pools are
/// paused or hold their messages behind an open breaker in every live process (and,
/// with `replies`, the pool of the saga's replies is one of them) — read from the
/// pipeline status by the caller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stalled {
    pub commands: Vec<String>,
    /// The pool that takes the saga's replies (`orders-saga`) is stalled.
    pub replies: bool,
}

impl Stalled {
    /// Whether a saga in `state` waits on a stalled pool: no answer can come meanwhile.
    pub fn holds(&self, state: State) -> bool {
        self.replies
            || state
                .step_effects()
                .iter()
                .filter_map(|e| e.subject())
                .any(|s| self.commands.iter().any(|filter| subject_matches(filter, s)))
    }
}

/// Whether NATS subject `filter` (`*`: one token, `>`: the rest) takes `subject`.
fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut tokens = subject.split('.');
    for f in filter.split('.') {
        match (f, tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (f, Some(t)) if f == t => {}
            _ => return false,
        }
    }
    tokens.next().is_none()
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    /// Sagas whose step's command was sent again.
    pub resent: u64,
    /// Sagas past their attempts, now compensating (or cancelled, when already compensating).
    pub compensated: u64,
    /// Sagas with a message still waiting in the outbox, or for a stalled pool: their
    /// deadline moved, no attempt spent.
    pub waiting: u64,
}

/// Act on up to `limit` sagas whose deadline is before `now` (the clock is a parameter
/// so that tests need not wait for deadlines); `stalled`: the pools that handle nothing
/// now (see [`Stalled`]).
pub async fn sweep(
    pool: &PgPool,
    now: DateTime<Utc>,
    limit: i64,
    stalled: &Stalled,
) -> Result<Swept, pg::Error> {
    let mut tx = pg::begin(pool).await?;
    let due = sagas::lock_due(&mut tx, now, limit).await?;
    let aggregates: Vec<[String; 3]> = due.iter().map(message_aggregates).collect();
    let unsent = sagas::with_unsent_messages(&mut tx, aggregates.as_flattened()).await?;
    let mut swept = Swept::default();
    for (saga, aggregates) in due.iter().zip(&aggregates) {
        let Some(state) = State::parse(&saga.state) else {
            // A state of a newer release (a rolling deploy): that release's sweeper acts
            // on it. Left alone here, a minute on, rather than failing the whole sweep
            // (the other sagas of the batch would never be swept by this process).
            tracing::warn!(order_id = %saga.order_id, state = %saga.state, "a saga in a state this release does not know; left to a newer release");
            sagas::postpone(&mut tx, saga.order_id, now + UNKNOWN_STATE_WAIT).await?;
            continue;
        };
        if (aggregates.iter().any(|a| unsent.contains(a)) || stalled.holds(state))
            && let Some(wait) = state.step_timeout()
        {
            // A NATS outage, or a pool paused or down, must not cancel orders: each
            // sweep would add a copy of the command behind the first, then give up and
            // compensate what never failed.
            sagas::postpone(&mut tx, saga.order_id, now + wait).await?;
            swept.waiting += 1;
            continue;
        }
        let give_up = saga.attempt >= MAX_ATTEMPTS && state.gives_up();
        let outcome = match give_up {
            true => format!("no reply after {} attempts", saga.attempt),
            false => "no reply in time: sent again".to_owned(),
        };
        for step in open_steps(state, saga) {
            sagas::finish_step(&mut tx, saga.order_id, &step, &outcome).await?;
        }
        let event = match give_up {
            true => Event::GiveUp(timed_out_reason(state).into_owned()),
            false => Event::Resend,
        };
        let cause = Cause::local(format!("sweeper:{}:{}", saga.order_id, saga.version));
        advance(&mut tx, saga, &event, None, &cause, now).await?;
        match give_up {
            true => swept.compensated += 1,
            false => swept.resent += 1,
        }
    }
    tx.commit().await?;
    if swept.resent + swept.compensated > 0 {
        metrics::counter!("souk_saga_sweeper_resent_total").increment(swept.resent);
        metrics::counter!("souk_saga_sweeper_compensated_total").increment(swept.compensated);
    }
    if swept.waiting > 0 {
        metrics::counter!("souk_saga_sweeper_waiting_total").increment(swept.waiting);
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_filters_match_as_nats_does() {
        let cases = [
            ("souk.cmd.inventory.reserve", "souk.cmd.inventory.reserve", true),
            ("souk.cmd.inventory.*", "souk.cmd.inventory.reserve", true),
            ("souk.cmd.>", "souk.cmd.inventory.reserve", true),
            ("souk.cmd.inventory", "souk.cmd.inventory.reserve", false),
            ("souk.cmd.inventory.reserve.x", "souk.cmd.inventory.reserve", false),
            ("souk.cmd.*", "souk.cmd.inventory.reserve", false),
            ("souk.cmd.payments.settle", "souk.cmd.payments.authorize", false),
        ];
        for (filter, subject, expected) in cases {
            assert_eq!(subject_matches(filter, subject), expected, "{filter} {subject}");
        }
        let stalled = Stalled { commands: vec!["souk.cmd.inventory.*".into()], replies: false };
        assert!(stalled.holds(State::Reserving) && stalled.holds(State::Committing));
        assert!(!stalled.holds(State::Authorizing) && !stalled.holds(State::Capturing));
        assert!(Stalled { replies: true, ..Stalled::default() }.holds(State::Capturing));
    }
}
