//! `operator_actions`: who did what, newest first.

use axum::{
    Extension,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use souk_stores::postgres::operator_actions::{self, OperatorAction};
use std::sync::Arc;

use super::{failure, layout};
use crate::{State as AppState, auth::Operator};

pub(crate) async fn page(State(state): State<Arc<AppState>>, Extension(op): Extension<Operator>) -> Response {
    match operator_actions::recent(&state.db, None, 200).await {
        Ok(rows) => layout::page(
            "souk ops: operator actions",
            &op,
            false,
            html! { h2 { "Operator actions" } (table(&rows)) },
        )
        .into_response(),
        Err(e) => {
            failure(StatusCode::SERVICE_UNAVAILABLE, &format!("operator_actions could not be read: {e}"))
        }
    }
}

pub(crate) fn table(rows: &[OperatorAction]) -> Markup {
    html! {
        @if rows.is_empty() { p.rule { "No operator action yet." } } @else {
            div.scroll { table #actions {
                thead { tr { th { "#" } th { "when" } th { "who" } th { "what" } th { "target" } th { "details" } } }
                tbody { @for a in rows {
                    tr {
                        td { (a.id) } td { (a.at.format("%Y-%m-%d %H:%M:%S UTC")) } td.who { (a.actor) }
                        td.what { (a.action) } td { (a.target) }
                        td { span.rule { (summary(&a.details)) } }
                    }
                } }
            } }
        }
    }
}

/// The details, shortened: a redrive of 10,000 letters lists them all in the row.
fn summary(details: &serde_json::Value) -> String {
    let text = details.to_string();
    match text.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text,
    }
}
