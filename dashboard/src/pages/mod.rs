//! The pages. Each handler reads what it shows (the status model, the DLQ, the
//! `operator_actions` table) and renders it with [`layout`]; actions go through
//! `souk_stores::operate` after a confirmation page.

pub mod actions;
pub mod dlq;
pub mod layout;
pub mod overview;
pub mod pools;
pub mod trace;

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};

/// A failure shown as a page (the principal is not needed to say what went wrong).
pub(crate) fn failure(status: StatusCode, what: &str) -> Response {
    (status, layout::bare("souk ops: error", what)).into_response()
}
