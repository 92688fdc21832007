//! Follow an order: everything souk did with one order (or the order a trace id names)
//! across its pipelines, in time order — the page form of `souk trace`, rendered from
//! the same engine call (`souk_stores::operate::trace`).

use axum::{
    Extension,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use souk_pipelines::follow::{Entry, Trace};
use souk_topologies::follow::FollowError;
use std::sync::Arc;

use super::{failure, layout};
use crate::{State as AppState, auth::Operator};

#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct TraceQuery {
    /// An order id or a trace id.
    id: Option<String>,
}

pub(crate) async fn page(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Query(query): Query<TraceQuery>,
) -> Response {
    let id = query.id.as_deref().map(str::trim).unwrap_or_default();
    let form = html! {
        h2 { "Follow an order" }
        form method="get" action="/ops/trace" {
            label for="trace-id" { "Order id or trace id " }
            input #trace-id type="text" name="id" value=(id) size="40" required;
            " " button type="submit" { "Follow" }
        }
    };
    if id.is_empty() {
        return layout::page("souk ops: follow an order", &op, false, form).into_response();
    }
    let (status, body) = match souk_stores::operate::trace(&state.js, &state.topology, &state.db, id).await {
        Ok(trace) => (StatusCode::OK, rendered(&trace)),
        Err(FollowError::NotFound(_)) => {
            (StatusCode::NOT_FOUND, html! { p.rule #not-found { "No order is known by " code { (id) } "." } })
        }
        Err(e @ FollowError::Store(_)) => {
            return failure(StatusCode::SERVICE_UNAVAILABLE, &format!("the trace could not be read: {e}"));
        }
    };
    let page = layout::page("souk ops: follow an order", &op, false, html! { (form) (body) });
    (status, page).into_response()
}

fn rendered(trace: &Trace) -> Markup {
    let first = trace.entries.first().map(|e| e.at);
    html! {
        p {
            "Order " code #order { (trace.order_id) } " (tenant " (trace.tenant) ")"
            @if let Some(t) = &trace.trace_id { ", trace " code { (t) } }
            " — " (trace.entries.len()) " entries, oldest first."
        }
        @for problem in &trace.problems { p.rule.problem { "Incomplete: " (problem) } }
        @if trace.entries.is_empty() { p.rule { "Nothing recorded yet." } } @else {
            div.scroll { table #trace {
                thead { tr {
                    th { "after" } th { "pipeline" } th { "what" } th { "message" } th { "where" }
                    th { "consumer" } th { "delivery" } th { "detail" } th { "outcome" }
                } }
                tbody { @for e in &trace.entries { (row(e, first)) } }
            } }
        }
    }
}

fn row(e: &Entry, first: Option<chrono::DateTime<chrono::Utc>>) -> Markup {
    let after = first.map_or(0.0, |f| (e.at - f).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6);
    let place = match (&e.stream, e.stream_seq) {
        (Some(stream), Some(seq)) => format!("{stream}#{seq}"),
        _ => String::new(),
    };
    html! {
        tr class=(e.kind.as_str()) {
            td title=(e.at.to_rfc3339()) { (format!("+{after:.3} s")) }
            td { (e.pipeline) }
            td { (e.kind.as_str()) }
            td { (e.subject.as_deref().unwrap_or("")) }
            td { (place) }
            td { (e.consumer.as_deref().unwrap_or("")) }
            td { @if let Some(n) = e.delivery { (n) } }
            td { (e.detail) }
            td {
                (e.outcome.as_deref().unwrap_or(""))
                @if let Some(error) = &e.error { br; span.error { (error) } }
            }
        }
    }
}
