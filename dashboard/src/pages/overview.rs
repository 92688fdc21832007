//! The overview: charts, pools with their health, consumers, streams, the outbox, and
//! the pool controls and recent operator actions. `#live` is re-rendered by the
//! server and sent over `/ops/events`; the controls stay put while it changes.

use axum::{
    Extension, Json,
    extract::State,
    http::StatusCode,
    response::{
        IntoResponse, Response,
        sse::{Event, KeepAlive, Sse},
    },
};
use futures::{Stream, StreamExt};
use maud::{Markup, html};
use souk_pipelines::outbox::OutboxStats;
use souk_stores::postgres::operator_actions;
use souk_topologies::{
    runtime::Activity,
    status::model::{self, Model, short_duration},
};
use std::{convert::Infallible, sync::Arc};

use super::{actions, failure, layout};
use crate::{State as AppState, auth::Operator, charts, health};

async fn read_model(state: &AppState) -> Result<Model, souk_topologies::Error> {
    let outbox: &dyn OutboxStats = &state.outbox;
    model::read(&state.js, &state.topology, Some(outbox), true).await
}

pub(crate) async fn page(State(state): State<Arc<AppState>>, Extension(op): Extension<Operator>) -> Response {
    let model = match read_model(&state).await {
        Ok(m) => m,
        Err(e) => {
            return failure(StatusCode::SERVICE_UNAVAILABLE, &format!("the status could not be read: {e}"));
        }
    };
    let recent = operator_actions::recent(&state.db, None, 10).await;
    layout::page(
        "souk ops",
        &op,
        true,
        html! {
            div #live { (live(&model)) }
            (controls(&op, &model))
            h2 { "Recent operator actions" }
            @match &recent {
                Ok(rows) => (actions::table(rows)),
                Err(e) => p.problems { "operator_actions could not be read: " (e) },
            }
            p { a href="/ops/actions" { "All operator actions" } }
            (legend())
        },
    )
    .into_response()
}

/// The model as JSON, for scripts (what `souk status --json` calls `pipeline`).
pub(crate) async fn json(State(state): State<Arc<AppState>>) -> Response {
    match read_model(&state).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}

/// `live` events: `#live` re-rendered at once, then every refresh, until the server
/// stops or the operator may no longer look (logged out, session or token expired:
/// found in review, an open tab went on streaming past both).
pub(crate) async fn events(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stop = state.cancel.clone().cancelled_owned();
    let ticks = futures::stream::unfold((state, true), move |(state, first)| {
        let op = op.clone();
        async move {
            if !first {
                tokio::time::sleep(state.refresh).await;
            }
            if !state.sessions.still_valid(&op) {
                return None;
            }
            let html = match read_model(&state).await {
                Ok(m) => live(&m).into_string(),
                Err(e) => html! { p.problems { "the status could not be read: " (e) } }.into_string(),
            };
            Some((Ok(Event::default().event("live").data(html)), (state, false)))
        }
    });
    Sse::new(ticks.take_until(stop)).keep_alive(KeepAlive::default())
}

/// Everything that changes: re-rendered for each event.
fn live(m: &Model) -> Markup {
    let now = m.at_ms;
    html! {
        @if !m.problems.is_empty() {
            div.problems { "Incomplete: " @for p in &m.problems { (p) "; " } }
        }
        p.rule { "As of " (chrono::DateTime::from_timestamp_millis(now).map(|t| t.format("%H:%M:%S UTC").to_string()).unwrap_or_default()) }
        div.charts {
            (charts::chart("Throughput", "msg/s", &charts::throughput(&m.history), now))
            (charts::chart("Lag", "messages", &charts::lag(&m.history), now))
            (charts::chart("Errors", "/s", &charts::errors(&m.history), now))
            @if !m.sinks.is_empty() {
                (charts::chart("Sink writes", "items/s", &charts::sink_writes(&m.history), now))
            }
        }
        h2 { "Pools" }
        div.scroll { table #pools {
            thead { tr {
                th { "pool" } th { "health" } th { "state" } th { "procs" } th { "in flight" }
                th { "conc" } th { "msg/s 1m" } th { "msg/s 5m" } th { "err 5m" } th { "p50/p99 ms" } th { "handled" }
            } }
            tbody { @for p in &m.pools {
                @let consumer = m.consumers.iter().find(|c| c.name == p.consumer);
                @let h = health::of_pool(p, consumer);
                @let rate = |w: u64| p.rates.iter().find(|r| r.window_secs == w);
                tr data-pool=(p.name) {
                    td { (p.name) br; span.rule { (p.consumer) } }
                    td.health { span class={"badge " (h.level.css())} { (h.level.css()) } br; span.rule { (h.reasons.join("; ")) } }
                    td.state { (state_of(p)) }
                    td.procs { (p.live_processes) }
                    td.inflight {
                        (p.in_flight)
                        @if p.waiting > 0 { br; span.rule title="waiting to be tried again, their slots given up" { (p.waiting) " waiting" } }
                    }
                    td { (p.controls.map(|c| c.concurrency.to_string()).unwrap_or_else(|| "–".into())) }
                    td { (rate(60).map(|r| format!("{:.1}", r.per_sec)).unwrap_or_else(|| "–".into())) }
                    td { (rate(300).map(|r| format!("{:.1}", r.per_sec)).unwrap_or_else(|| "–".into())) }
                    td { (rate(300).and_then(|r| r.error_ratio).map(|e| format!("{:.1}%", e * 100.0)).unwrap_or_else(|| "–".into())) }
                    td { (ms(p.p50_ms)) " / " (ms(p.p99_ms)) }
                    td.handled { (p.totals.handled) }
                }
            } }
        } }
        h2 { "Consumers" }
        div.scroll { table #consumers {
            thead { tr {
                th { "consumer" } th { "stream" } th { "pending" } th { "ack pending" } th { "redelivered" }
                th { "lag" } th { "trend" } th { "oldest" } th { "last active" } th { "dead letters" }
            } }
            tbody { @for c in &m.consumers {
                tr data-consumer=(c.name) {
                    td { (c.name) } td { (c.stream) } td { (c.pending) } td { (c.ack_pending) } td { (c.redelivered) }
                    td.lag { (c.lag) }
                    td { (trend(c.lag_per_min, c.lag_growing_secs)) }
                    td { (short_duration(c.oldest_unhandled_secs)) }
                    td { (c.last_active_secs.map(short_duration).map(|s| format!("{s} ago")).unwrap_or_else(|| "never".into())) }
                    td { @if c.dead_letters > 0 { a href={"/ops/dlq?consumer=" (c.name)} { (c.dead_letters) } } @else { "0" } }
                }
            } }
        } }
        h2 { "Streams" }
        div.scroll { table {
            thead { tr { th { "stream" } th { "messages" } th { "bytes" } th { "first" } th { "last" } th { "oldest unhandled" } } }
            tbody { @for s in &m.streams {
                tr { td { (s.name) } td { (s.messages) } td { (s.bytes) } td { (s.first_seq) } td { (s.last_seq) } td { (short_duration(s.oldest_unhandled_secs)) } }
            } }
        } }
        @if !m.sinks.is_empty() {
            h2 { "Sinks" }
            div.scroll { table #sinks {
                thead { tr {
                    th { "sink" } th { "health" } th { "procs" } th { "items/s 1m" } th { "items/s 5m" }
                    th { "writes 5m" } th { "failed 5m" } th { "p50/p99 ms" } th { "items written" }
                } }
                tbody { @for s in &m.sinks {
                    @let h = health::of_sink(s);
                    @let rate = |w: u64| s.rates.iter().find(|r| r.window_secs == w);
                    tr data-sink=(s.name) {
                        td { (s.name) br; span.rule { (s.backend) } }
                        td.health { span class={"badge " (h.level.css())} { (h.level.css()) } br; span.rule { (h.reasons.join("; ")) } }
                        td { (s.live_processes) }
                        td { (rate(60).map(|r| format!("{:.1}", r.items_per_sec)).unwrap_or_else(|| "–".into())) }
                        td { (rate(300).map(|r| format!("{:.1}", r.items_per_sec)).unwrap_or_else(|| "–".into())) }
                        td { (rate(300).map(|r| r.writes.to_string()).unwrap_or_else(|| "–".into())) }
                        td.failed { (rate(300).map_or(0, |r| r.errors)) }
                        td { (ms(s.p50_ms)) " / " (ms(s.p99_ms)) }
                        td.items { (s.totals.items) }
                    }
                } }
            } }
        }
        h2 { "Outbox" }
        @match &m.outbox {
            Some(o) => p { (o.unpublished) " unpublished, oldest " (o.oldest_secs.map(short_duration).unwrap_or_else(|| "–".into())) "; " (o.parked) " parked" },
            None => p.rule { "not read (see above)" },
        }
    }
}

fn state_of(p: &model::PoolModel) -> &'static str {
    match p.controls.map(|c| c.activity) {
        Some(Activity::Running) => "running",
        Some(Activity::Pausing) => "pausing",
        Some(Activity::Paused) => "paused",
        None if p.settings.as_ref().is_some_and(|s| s.paused) => "paused (no process)",
        None => "no process",
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.1}"))
}

fn trend(per_min: Option<f64>, growing_secs: f64) -> String {
    match per_min {
        None => "–".into(),
        Some(d) if d > 0.0 => format!("↑ +{d:.1}/min (growing {})", short_duration(growing_secs)),
        Some(d) if d < 0.0 => format!("↓ {d:.1}/min"),
        Some(_) => "→ steady".into(),
    }
}

/// Pause, resume and scale forms per pool (outside `#live`: typing is not disturbed).
fn controls(op: &Operator, m: &Model) -> Markup {
    html! {
        h2 { "Pool controls" }
        p.rule { "Every process running the pool follows within a pull (≤ 5 s). Each change asks for confirmation and is recorded." }
        div.scroll { table #controls {
            tbody { @for p in &m.pools {
                @let paused = p.settings.as_ref().is_some_and(|s| s.paused);
                tr data-pool=(p.name) {
                    td { (p.name) }
                    td { @if let Some(s) = &p.settings { span.rule { "set by " (s.changed_by) " at " (s.changed_at) } } }
                    td {
                        form.inline method="post" action={"/ops/pools/" (p.name)} {
                            (layout::csrf(op))
                            @if paused {
                                button name="action" value="resume" type="submit" { "Resume" }
                            } @else {
                                button name="action" value="pause" type="submit" { "Pause" }
                            }
                        }
                        " "
                        form.inline method="post" action={"/ops/pools/" (p.name)} {
                            (layout::csrf(op))
                            input type="hidden" name="action" value="scale";
                            input type="number" name="concurrency" min="1" max=(souk_topologies::control::MAX_CONCURRENCY) size="5" required
                                value=(p.controls.map(|c| c.concurrency).unwrap_or(1));
                            button type="submit" { "Scale" }
                        }
                    }
                }
            } }
        } }
    }
}

fn legend() -> Markup {
    html! {
        h2 { "Health rules" }
        ul.rule { @for (level, rule) in health::RULES { li { span class={"badge " (level.css())} { (level.css()) } " " (rule) } } }
        p.rule { "Sinks (stores written besides Postgres):" }
        ul.rule { @for (level, rule) in health::SINK_RULES { li { span class={"badge " (level.css())} { (level.css()) } " " (rule) } } }
    }
}
