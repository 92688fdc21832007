//! `souk trace ORDER_ID|TRACE_ID`: everything souk did with one order, one line per
//! step in time order, times relative to the first (`--json`: the engine's `Trace`).
//! A failed handler attempt is a line of its own (`attempt`: stream#seq, which delivery
//! to which consumer failed and how, what the runtime did then, the error).
//! Finds a running `souk dev` by `--data-dir`, as `souk status` does.

use souk_pipelines::follow::{Entry, Trace};
use souk_topologies::follow::FollowError;
use std::process::ExitCode;

use crate::{
    app,
    config::Config,
    jobs::{Exit, Result, database, exit, unavailable},
};

/// `souk trace`.
pub async fn trace(config: &Config, id: &str, json: bool) -> Result<ExitCode> {
    if id.trim().is_empty() {
        return Err(Exit(exit::USAGE, anyhow::anyhow!("give an order id or a trace id")));
    }
    let topology = app::load_topology(config).map_err(|e| Exit(exit::FAILED, e))?;
    let url = app::nats_url(&app::operated_database(config).map_err(unavailable)?).map_err(unavailable)?;
    let nats = app::connect_nats(&url).await.map_err(unavailable)?;
    let js = app::jetstream(&nats);
    let pool = database(config).await?;
    let trace = match souk_stores::operate::trace(&js, &topology, &pool, id).await {
        Ok(t) => t,
        Err(e @ FollowError::NotFound(_)) => return Err(Exit(exit::NOT_FOUND, e.into())),
        Err(e @ FollowError::Store(_)) => return Err(unavailable(e)),
    };
    if json {
        out!("{}", serde_json::to_string_pretty(&trace).map_err(|e| Exit(exit::FAILED, e.into()))?);
    } else {
        out_raw!("{}", render(&trace));
    }
    for problem in &trace.problems {
        eprintln!("trace incomplete: {problem}");
    }
    Ok(if trace.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The trace as text: a header, then one line per entry.
pub fn render(trace: &Trace) -> String {
    let mut s = format!(
        "order {} (tenant {}{})\n",
        trace.order_id,
        trace.tenant,
        trace.trace_id.as_deref().map(|t| format!(", trace {t}")).unwrap_or_default()
    );
    let Some(first) = trace.entries.first().map(|e| e.at) else {
        s.push_str("  nothing recorded yet\n");
        return s;
    };
    for e in &trace.entries {
        let since = (e.at - first).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        s.push_str(&format!("{:>+10.3}s {:<10} {:<11} {}\n", since, e.pipeline, e.kind.as_str(), line(e)));
    }
    s
}

fn line(e: &Entry) -> String {
    let mut parts = Vec::new();
    if let Some(subject) = &e.subject {
        parts.push(subject.clone());
    }
    if let (Some(stream), Some(seq)) = (&e.stream, e.stream_seq) {
        parts.push(format!("{stream}#{seq}"));
    }
    parts.push(e.detail.clone());
    if let Some(o) = &e.outcome {
        parts.push(format!("→ {o}"));
    }
    if let Some(error) = &e.error {
        parts.push(format!("({error})"));
    }
    parts.join(" ")
}
