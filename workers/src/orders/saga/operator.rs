//! What operators do to one saga (`souk sagas retry|compensate`): the same transitions
//! the sweeper makes, on demand, each recorded in `operator_actions` with who did it,
//! in the transaction of the change.

use souk_stores::postgres::{self as pg, operator_actions, sagas};
use sqlx::PgPool;
use uuid::Uuid;

use super::{
    advance::{Advanced, Cause, advance},
    machine::{Event, State},
};

/// Why an operator's action was not done.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("no saga for order {0}")]
    NotFound(Uuid),
    /// The saga's state does not allow it (the message says why).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] pg::Error),
}

/// Send the current step's command again, with fresh attempts (a reply lost, a pool
/// that was down). Returns the state the saga is in.
pub async fn retry(pool: &PgPool, order_id: Uuid, actor: &str) -> Result<State, OperatorError> {
    act(pool, order_id, actor, "saga.retry", |state| match state {
        s if s.is_final() => Err(format!("the saga is {}: nothing to retry", s.as_str())),
        _ => Ok(Event::Resend),
    })
    .await
}

/// Stop the saga and compensate what it did (release stock, void the payment), ending
/// `cancelled`. A confirmed order is paid and with its sellers: it is refused here.
pub async fn compensate(pool: &PgPool, order_id: Uuid, actor: &str) -> Result<State, OperatorError> {
    act(pool, order_id, actor, "saga.compensate", |state| match state {
        s if s.is_final() => Err(format!("the saga is {}: nothing to compensate", s.as_str())),
        // Forcing it on to cancelled would skip the compensation's own reply.
        s
        @ (State::Releasing | State::Unwinding | State::Voiding | State::VoidingLate | State::Refunding) => {
            Err(format!(
                "the saga is already compensating ({}): `souk sagas retry` sends its compensation again",
                s.as_str()
            ))
        }
        State::Fulfilling => Err(
            "the order is confirmed (paid, with its sellers): cancel it with a refund, not a compensation"
                .into(),
        ),
        _ => Ok(Event::GiveUp("cancelled by souk support".into())),
    })
    .await
}

async fn act(
    pool: &PgPool,
    order_id: Uuid,
    actor: &str,
    action: &str,
    event_for: impl FnOnce(State) -> Result<Event, String>,
) -> Result<State, OperatorError> {
    let mut tx = pg::begin(pool).await?;
    let mut saga = sagas::lock(&mut tx, order_id).await?.ok_or(OperatorError::NotFound(order_id))?;
    let state =
        State::parse(&saga.state).ok_or_else(|| pg::Error::Corrupt(format!("saga state {}", saga.state)))?;
    let event = event_for(state).map_err(OperatorError::Refused)?;
    if matches!(event, Event::Resend) {
        // Fresh attempts: the sweeper counts from this send.
        saga.attempt = 0;
    }
    // The step lines awaiting a reply are closed as the sweeper closes them: a reply
    // closes only the newest line of its step, so a line replaced by a re-send stayed
    // "awaiting reply" for ever (review, twelfth session).
    let outcome = match event {
        Event::Resend => format!("sent again by {actor}"),
        _ => format!("given up by {actor}"),
    };
    for step in super::sweeper::open_steps(state, &saga) {
        sagas::finish_step(&mut tx, order_id, &step, &outcome).await?;
    }
    let cause = Cause::local(format!("operator:{actor}:{order_id}:{}", saga.version));
    let advanced = advance(&mut tx, &saga, &event, None, &cause, chrono::Utc::now()).await?;
    let Advanced::Moved { to, .. } = advanced else {
        return Err(OperatorError::Refused(format!("the saga is {}: nothing to do", state.as_str())));
    };
    let step = action.trim_start_matches("saga.");
    sagas::note(&mut tx, order_id, step, 1, &format!("by {actor}: {} → {}", state.as_str(), to.as_str()))
        .await?;
    let details = serde_json::json!({"from": state.as_str(), "to": to.as_str(), "version": saga.version});
    operator_actions::record(&mut *tx, actor, action, &order_id.to_string(), &details).await?;
    tx.commit().await.map_err(pg::Error::from)?;
    Ok(to)
}
