//! The dashboard over a whole test stack (its own nats-server and database, the node
//! `souk dev` runs, the dashboard mounted under `/ops/`).

mod browser;
mod routes;
mod session;
mod trace;

use souk_testkit::{Stack, StackOptions};
use std::time::Duration;

/// A stack serving the dashboard, refreshing its live view twice a second.
async fn stack() -> anyhow::Result<Stack> {
    Stack::start_with(StackOptions { dashboard: Some(Duration::from_millis(500)), ..Default::default() })
        .await
}

/// An HTTP client that shows redirects instead of following them, and keeps no cookie.
fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?)
}

/// The CSRF token a page renders in its forms.
fn csrf_of(html: &str) -> anyhow::Result<String> {
    let at = html.find(r#"name="csrf" value=""#).ok_or_else(|| anyhow::anyhow!("no csrf field in {html}"))?;
    let rest = &html[at + r#"name="csrf" value=""#.len()..];
    Ok(rest[..rest.find('"').unwrap_or(0)].to_owned())
}

/// A dead letter of `consumer` as the runtime writes one (original `subject`, error,
/// attempts); returns its DLQ sequence.
async fn dead_letter(stack: &Stack, consumer: &str, subject: &str, error: &str) -> anyhow::Result<u64> {
    let mut h = async_nats::HeaderMap::new();
    h.insert("souk-dlq-consumer", consumer);
    h.insert("souk-dlq-subject", subject);
    h.insert("souk-dlq-attempts", "5");
    h.insert("souk-dlq-error", error);
    let ack = stack
        .js
        .publish_with_headers(format!("souk.dlq.{consumer}"), h, r#"{"order":"o-1","note":"kept"}"#.into())
        .await?
        .await?;
    Ok(ack.sequence)
}

/// `(actor, action, target)` of every operator action, oldest first.
async fn actions(stack: &Stack) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as("select actor, action, target from operator_actions order by id")
        .fetch_all(&stack.db.pool)
        .await?)
}
