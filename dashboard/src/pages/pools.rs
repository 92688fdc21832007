//! Pause, resume or scale a pool: a confirmation page, then `operate::change_pool`
//! (the control bucket every process running the pool follows; recorded).

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::html;
use souk_stores::operate::{self, Actor};
use souk_topologies::control::Change;
use std::sync::Arc;

use super::{failure, layout};
use crate::{State as AppState, auth::Operator, form::Form};

pub(crate) async fn change(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Path(pool): Path<String>,
    body: Bytes,
) -> Response {
    let form = Form::parse(&body);
    let change = match (form.get("action"), form.get("concurrency").map(str::parse::<usize>)) {
        (Some("pause"), _) => Change::Pause,
        (Some("resume"), _) => Change::Resume,
        (Some("scale"), Some(Ok(n))) => Change::Scale(n),
        (Some("scale"), _) => {
            return failure(StatusCode::BAD_REQUEST, "scale needs a whole-number concurrency");
        }
        _ => return failure(StatusCode::BAD_REQUEST, "action must be pause, resume or scale"),
    };
    if state.topology.pool(&pool).is_none() {
        return failure(StatusCode::NOT_FOUND, &format!("no pool {pool:?} in the topology"));
    }
    let what = match change {
        Change::Pause => format!("Pause pool {pool}: every process stops fetching and drains what it holds."),
        Change::Resume => format!("Resume pool {pool}: every process fetches again."),
        Change::Scale(n) => format!("Scale pool {pool} to {n} messages at once in every process."),
    };
    if form.get("confirmed") != Some("yes") {
        return layout::confirm(
            &op,
            "Confirm",
            html! { p { (what) } },
            &format!("/ops/pools/{pool}"),
            form.fields(),
            "Yes, do it",
            "/ops/",
        )
        .into_response();
    }
    let controls = match state.controls().await {
        Ok(c) => c,
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, &format!("the pool control bucket: {e}")),
    };
    let actor = Actor(op.sub.clone());
    match operate::change_pool(controls, &state.topology, &state.db, &actor, &pool, change).await {
        Ok((_, after)) => layout::done(
            &op,
            "Done",
            html! {
                p { "Pool " (pool) ": " (if after.paused { "paused" } else { "running" })
                    @if let Some(n) = after.concurrency { ", concurrency " (n) } ". Recorded as done by " (actor.0) "." }
            },
            "/ops/",
        )
        .into_response(),
        Err(operate::Error::Input(e)) => failure(StatusCode::BAD_REQUEST, &e),
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
