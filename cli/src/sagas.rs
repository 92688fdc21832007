//! `souk sagas list|show|retry|compensate`: the order sagas, for operators.
//!
//! Like `souk jobs`, it talks to the deployment's Postgres directly (finding a running
//! `souk dev` by `--data-dir`, as `souk status` does). `retry` and `compensate` make
//! the same transitions as the sweeper (`souk_workers::orders::saga::operator`): the
//! commands they send go out through the outbox, which the deployment's relay
//! publishes; each is recorded in `operator_actions` with who did it.

use souk_stores::postgres::sagas::{self, SagaView};
use souk_workers::orders::saga::{
    State,
    operator::{self, OperatorError},
};
use std::process::ExitCode;
use uuid::Uuid;

use crate::{
    config::Config,
    jobs::{Exit, Result, database, exit, unavailable},
};

fn order_id(id: &str) -> Result<Uuid> {
    Uuid::parse_str(id).map_err(|_| Exit(exit::USAGE, anyhow::anyhow!("{id:?} is not an order id (a UUID)")))
}

fn store_error(e: souk_stores::postgres::Error) -> Exit {
    match e {
        souk_stores::postgres::Error::Unavailable(_) => unavailable(e),
        souk_stores::postgres::Error::Database(
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_),
        ) => unavailable(e),
        e => Exit(exit::FAILED, e.into()),
    }
}

fn line(s: &SagaView) -> String {
    format!(
        "{} {:<11} attempt={}{}{}{}",
        s.order_id,
        s.state,
        s.attempt,
        s.deadline.map(|d| format!(" deadline={}", d.format("%Y-%m-%dT%H:%M:%SZ"))).unwrap_or_default(),
        if s.stuck { " STUCK" } else { "" },
        s.reason.as_deref().map(|r| format!(" reason: {r}")).unwrap_or_default(),
    )
}

/// `souk sagas list`.
pub async fn list(
    config: &Config,
    state: Option<&str>,
    stuck: bool,
    limit: i64,
    json: bool,
) -> Result<ExitCode> {
    if let Some(s) = state
        && State::parse(s).is_none()
    {
        let known: Vec<_> = State::ALL.iter().map(|s| s.as_str()).collect();
        return Err(Exit(exit::USAGE, anyhow::anyhow!("--state {s:?}: one of {}", known.join(", "))));
    }
    let pool = database(config).await?;
    let found = sagas::list(&pool, state, stuck, limit).await.map_err(store_error)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&found).unwrap_or_default());
    } else if found.is_empty() {
        out!("no sagas");
    }
    if !json {
        for s in &found {
            out!("{}", line(s));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `souk sagas show ID`.
pub async fn show(config: &Config, id: &str, json: bool) -> Result<ExitCode> {
    let order_id = order_id(id)?;
    let pool = database(config).await?;
    let saga = sagas::view(&pool, order_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| Exit(exit::NOT_FOUND, anyhow::anyhow!("no saga for order {order_id}")))?;
    if json {
        out!("{}", serde_json::to_string_pretty(&saga).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    out!("{}", line(&saga));
    for s in &saga.steps {
        out!(
            "  {} {:<12} attempt={} {}",
            s.started_at.format("%H:%M:%S%.3f"),
            s.step,
            s.attempt,
            match (&s.finished_at, &s.outcome) {
                (Some(at), Some(o)) => format!("{} {o}", at.format("%H:%M:%S%.3f")),
                _ => "awaiting reply".into(),
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `souk sagas retry ID` and `souk sagas compensate ID`.
pub async fn act(config: &Config, id: &str, compensate: bool, token: Option<&str>) -> Result<ExitCode> {
    let order_id = order_id(id)?;
    // Who, as `souk dlq` and `souk pool` record it: the token's subject, else the local user.
    let actor = crate::operator::actor(config, token)?.0;
    let pool = database(config).await?;
    let done = match compensate {
        true => operator::compensate(&pool, order_id, &actor).await,
        false => operator::retry(&pool, order_id, &actor).await,
    };
    match done {
        Ok(state) => {
            let verb = if compensate { "compensating" } else { "step sent again" };
            out!("{order_id}: {verb}; the saga is {} (recorded as done by {actor})", state.as_str());
            Ok(ExitCode::SUCCESS)
        }
        Err(OperatorError::NotFound(_)) => {
            Err(Exit(exit::NOT_FOUND, anyhow::anyhow!("no saga for order {order_id}")))
        }
        Err(OperatorError::Refused(why)) => Err(Exit(exit::USAGE, anyhow::anyhow!("{order_id}: {why}"))),
        Err(OperatorError::Store(e)) => Err(store_error(e)),
    }
}
