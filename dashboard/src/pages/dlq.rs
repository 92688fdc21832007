//! Dead letters: browse with filters (consumer, error text, time range), open one,
//! redrive or purge a selection (chosen sequences, everything the filter matches, or
//! all) after a confirmation page that lists what the selection holds now.

use axum::{
    Extension,
    body::Bytes,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use maud::{Markup, html};
use souk_stores::operate::{self, Actor};
use souk_topologies::dead_letters::{self, DeadLetter, Filter, Selection};
use std::sync::Arc;

use super::{failure, layout};
use crate::{State as AppState, auth::Operator, form::Form};

/// Most dead letters one list page shows.
const PAGE_LIMIT: usize = 500;
/// Most dead letters a confirmation page names one by one.
const CONFIRM_SHOWN: usize = 50;

/// The filter fields, as the list's query string and the action forms carry them.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct FilterFields {
    consumer: Option<String>,
    error: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

impl FilterFields {
    fn from_form(form: &Form) -> FilterFields {
        let get = |n| form.get(n).map(str::to_owned);
        FilterFields {
            consumer: get("consumer"),
            error: get("error"),
            since: get("since"),
            until: get("until"),
        }
    }

    fn filter(&self) -> Result<Filter, String> {
        let some =
            |v: &Option<String>| v.as_deref().map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned);
        Ok(Filter {
            consumer: some(&self.consumer),
            error: some(&self.error),
            since: some(&self.since).as_deref().map(operate::parse_time).transpose()?,
            until: some(&self.until).as_deref().map(operate::parse_time).transpose()?,
        })
    }

    fn hidden(&self) -> Markup {
        html! {
            @for (name, value) in [("consumer", &self.consumer), ("error", &self.error), ("since", &self.since), ("until", &self.until)] {
                @if let Some(v) = value { input type="hidden" name=(name) value=(v); }
            }
        }
    }
}

pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Query(fields): Query<FilterFields>,
) -> Response {
    let filter = match fields.filter() {
        Ok(f) => f,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &e),
    };
    let letters = match dead_letters::list_filtered(&state.js, &filter, PAGE_LIMIT).await {
        Ok(l) => l,
        Err(e) => {
            return failure(StatusCode::SERVICE_UNAVAILABLE, &format!("the DLQ could not be read: {e}"));
        }
    };
    let consumers: Vec<&str> = state.topology.consumers.iter().map(|c| c.name.as_str()).collect();
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    layout::page(
        "souk ops: dead letters",
        &op,
        false,
        html! {
            h2 { "Dead letters" }
            form.filters method="get" action="/ops/dlq" {
                label { "consumer" select name="consumer" {
                    option value="" { "any" }
                    @for c in &consumers { option value=(c) selected[fields.consumer.as_deref() == Some(*c)] { (c) } }
                } }
                label { "error contains" input type="text" name="error" value=(v(&fields.error)); }
                label { "since (RFC 3339 or 2h)" input type="text" name="since" value=(v(&fields.since)) size="12"; }
                label { "until" input type="text" name="until" value=(v(&fields.until)) size="12"; }
                button type="submit" { "Filter" }
            }
            p.rule { (letters.len()) " shown" @if letters.len() == PAGE_LIMIT { " (the first " (PAGE_LIMIT) "; narrow the filter)" } }
            form #letters method="post" action="/ops/dlq/redrive" {
                (layout::csrf(&op))
                input type="hidden" name="scope" value="selected";
                div.scroll { table #dead-letters {
                    thead { tr {
                        th { "" } th { "#" } th { "consumer" } th { "reason" } th { "attempts" } th { "redrives" }
                        th { "first failure" } th { "last failure" } th { "trace id" }
                    } }
                    tbody { @for d in &letters { (row(d)) } }
                } }
                @if !letters.is_empty() {
                    p {
                        button #redrive-selected type="submit" { "Redrive selected" } " "
                        button.danger #purge-selected type="submit" formaction="/ops/dlq/purge" { "Purge selected" }
                    }
                }
            }
            @if !letters.is_empty() {
                form.inline method="post" action="/ops/dlq/redrive" {
                    (layout::csrf(&op)) (fields.hidden())
                    input type="hidden" name="scope" value=(if filter.is_empty() { "all" } else { "filter" });
                    button #redrive-all type="submit" { @if filter.is_empty() { "Redrive all" } @else { "Redrive all matching the filter" } }
                    " "
                    button.danger type="submit" formaction="/ops/dlq/purge" { @if filter.is_empty() { "Purge all" } @else { "Purge all matching the filter" } }
                }
            }
        },
    )
    .into_response()
}

fn row(d: &DeadLetter) -> Markup {
    html! {
        tr data-seq=(d.seq) {
            td { input type="checkbox" name="seq" value=(d.seq) aria-label={"select #" (d.seq)}; }
            td { a href={"/ops/dlq/" (d.seq)} { (d.seq) } }
            td { (d.consumer) br; span.rule { (d.subject) } }
            td { (d.error) }
            td { (d.attempts) } td { (d.redrives) }
            td { (d.first_failure) } td { (d.last_failure) }
            td { code { (d.trace_id) } }
        }
    }
}

pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    Path(seq): Path<u64>,
) -> Response {
    let detail = match dead_letters::show(&state.js, seq).await {
        Ok(d) => d,
        Err(souk_topologies::Error::NotFound(m)) => return failure(StatusCode::NOT_FOUND, &m),
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let l = &detail.letter;
    let body = match (&detail.body_json, &detail.body_text) {
        (Some(v), _) => serde_json::to_string_pretty(v).unwrap_or_default(),
        (None, Some(t)) => t.clone(),
        (None, None) => format!("({} bytes, not text)", l.payload_bytes),
    };
    layout::page(
        &format!("souk ops: dead letter #{seq}"),
        &op,
        false,
        html! {
            h2 { "Dead letter #" (l.seq) " of " (l.consumer) }
            p { "subject " code { (l.subject) } "; attempts " (l.attempts) ", redrives " (l.redrives) "; trace " code { (l.trace_id) } }
            p { "first failure " (l.first_failure) ", last " (l.last_failure) }
            p.problems { (l.error) }
            form.inline method="post" action="/ops/dlq/redrive" {
                (layout::csrf(&op))
                input type="hidden" name="scope" value="selected";
                input type="hidden" name="seq" value=(l.seq);
                button #redrive-one type="submit" { "Redrive" } " "
                button.danger type="submit" formaction="/ops/dlq/purge" { "Purge" }
            }
            h2 { "Headers" }
            div.scroll { table { tbody { @for (name, value) in &detail.headers { tr { th { (name) } td { code { (value) } } } } } } }
            h2 { "Body (" (l.payload_bytes) " bytes)" }
            pre #body { (body) }
        },
    )
    .into_response()
}

/// The selection a form names: `scope` = selected (the `seq` fields), filter, or all.
fn selection(form: &Form) -> Result<Selection, String> {
    match form.get("scope") {
        Some("selected") => {
            let seqs: Result<Vec<u64>, _> = form.all("seq").map(str::parse).collect();
            let seqs = seqs.map_err(|_| "a selected sequence is not a number".to_owned())?;
            if seqs.is_empty() {
                return Err("no dead letter selected: tick some first".into());
            }
            Ok(Selection::Seqs(seqs))
        }
        Some("filter") => {
            let filter = FilterFields::from_form(form).filter()?;
            if filter.is_empty() {
                return Err("an empty filter selects everything: use \"all\"".into());
            }
            Ok(Selection::Matching(filter))
        }
        Some("all") => Ok(Selection::All),
        _ => Err("scope must be selected, filter or all".into()),
    }
}

/// What an action's task did.
enum Done {
    Redrive(operate::RedriveReport),
    Purge(operate::PurgeReport),
}

#[derive(Clone, Copy, PartialEq)]
enum Act {
    Redrive,
    Purge,
}

pub(crate) async fn redrive(state: State<Arc<AppState>>, op: Extension<Operator>, body: Bytes) -> Response {
    act(state, op, body, Act::Redrive).await
}

pub(crate) async fn purge(state: State<Arc<AppState>>, op: Extension<Operator>, body: Bytes) -> Response {
    act(state, op, body, Act::Purge).await
}

async fn act(
    State(state): State<Arc<AppState>>,
    Extension(op): Extension<Operator>,
    body: Bytes,
    act: Act,
) -> Response {
    let form = Form::parse(&body);
    let mut selection = match selection(&form) {
        Ok(s) => s,
        Err(e) => return failure(StatusCode::BAD_REQUEST, &e),
    };
    // The DLQ this page looks at: a confirmation names it, so that letters of a stream
    // re-created since (the same sequences, other letters) are not acted on.
    let dlq = match state.js.get_stream(dead_letters::STREAM).await {
        Ok(stream) => stream.cached_info().created.unix_timestamp_nanos().to_string(),
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, &format!("the dead-letter stream: {e}")),
    };
    let confirmed = form.get("confirmed") == Some("yes");
    if confirmed && form.get("dlq").is_some_and(|seen| seen != dlq) {
        return failure(
            StatusCode::CONFLICT,
            "the dead-letter stream was re-created since the confirmation page: nothing done; look again",
        );
    }
    // What the selection holds now: shown to confirm, and exactly what is acted on.
    let mut letters = match operate::purge_preview(&state.js, &selection).await {
        Ok(l) => l,
        Err(operate::Error::Input(e)) => return failure(StatusCode::BAD_REQUEST, &e),
        Err(e) => return failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    // A filter or "all" is confirmed for the letters the confirmation page counted —
    // up to the last sequence it saw — never for letters that arrived after it (found
    // in review: a purge confirmed for 3 letters purged the 200 that came meanwhile).
    if confirmed && !matches!(selection, Selection::Seqs(_)) {
        let (Some(Ok(upto)), Some(_)) = (form.get("upto").map(str::parse::<u64>), form.get("dlq")) else {
            return failure(
                StatusCode::BAD_REQUEST,
                "confirm from the confirmation page (it names the last letter seen)",
            );
        };
        letters.retain(|d| d.seq <= upto);
        selection = Selection::Seqs(letters.iter().map(|d| d.seq).collect());
    }
    let (verb, path) = match act {
        Act::Redrive => ("Redrive", "/ops/dlq/redrive"),
        Act::Purge => ("Purge", "/ops/dlq/purge"),
    };
    if letters.is_empty() {
        return layout::done(&op, "Nothing to do", html! { p { "No dead letter matches." } }, "/ops/dlq")
            .into_response();
    }
    if !confirmed {
        let what = html! {
            p { (verb) " " strong { (letters.len()) } " dead letter(s)"
                @match act {
                    Act::Redrive => " back to their original subjects (each with a new message id and its redrive count + 1)?",
                    Act::Purge => "? They cannot be recovered.",
                }
            }
            ul { @for d in letters.iter().take(CONFIRM_SHOWN) { li { "#" (d.seq) " " (d.consumer) ": " (d.error) } } }
            @if letters.len() > CONFIRM_SHOWN { p.rule { "… and " (letters.len() - CONFIRM_SHOWN) " more" } }
        };
        let button = format!("Yes, {} {}", verb.to_lowercase(), letters.len());
        let mut fields: Vec<(String, String)> =
            form.fields().iter().filter(|(n, _)| n != "upto" && n != "dlq").cloned().collect();
        fields.push(("dlq".into(), dlq));
        if let Some(last) = letters.last() {
            fields.push(("upto".into(), last.seq.to_string()));
        }
        return layout::confirm(
            &op,
            &format!("{verb} dead letters?"),
            what,
            path,
            &fields,
            &button,
            "/ops/dlq",
        )
        .into_response();
    }
    let actor = Actor(op.sub.clone());
    // In a task of its own: a client that hangs up (a closed tab, a proxy's read
    // timeout) drops this handler, and would otherwise cut a long redrive or purge off
    // half done and unrecorded (found in review). A stopping process waits for it.
    let task = {
        let (state, actor) = (state.clone(), actor.clone());
        state.clone().actions.spawn(async move {
            let outcome = match act {
                Act::Redrive => {
                    operate::redrive(&state.publisher, &state.db, &actor, &selection).await.map(Done::Redrive)
                }
                Act::Purge => {
                    operate::purge(&state.js, &state.db, &actor, &selection, &letters).await.map(Done::Purge)
                }
            };
            // Also when nobody is left to read the answer (the client hung up).
            if let Err(e) = &outcome {
                tracing::warn!(actor = %actor.0, error = %e, "a dashboard dead-letter action failed");
            }
            outcome
        })
    };
    let outcome = match task.await {
        Ok(outcome) => outcome,
        Err(e) => return failure(StatusCode::INTERNAL_SERVER_ERROR, &format!("the action failed: {e}")),
    };
    let outcome = match outcome {
        Ok(Done::Redrive(r)) => Ok(html! {
            p { (r.redriven.len()) " redriven, " (r.failed.len()) " failed; recorded as operator action " (r.action_id) " by " (actor.0) "." }
            @for (seq, e) in &r.failed { p.problems { "#" (seq) " kept in the DLQ: " (e) } }
        }),
        Ok(Done::Purge(r)) => Ok(html! {
            p { (r.purged.deleted.len()) " purged, " (r.purged.gone.len()) " already gone; recorded as operator action " (r.action_id) " by " (actor.0) "." }
            @if let Some(e) = &r.purged.error { p.problems { "purge stopped: " (e) } }
        }),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(what) => layout::done(&op, &format!("{verb}: done"), what, "/ops/dlq").into_response(),
        Err(operate::Error::Input(e)) => failure(StatusCode::BAD_REQUEST, &e),
        Err(e) => failure(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}
