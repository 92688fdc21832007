//! # souk-dashboard — the operators' dashboard
//!
//! Server-rendered HTML (maud templates, checked at compile time; a little inline CSS
//! and a few lines of inline JavaScript for live updates, nothing fetched from
//! anywhere) over the engine's status model (`souk_topologies::status::model`):
//! streams, consumers with lag and trend, pools with a red/amber/green health and the
//! rule that set it, outbox backlog, dead letters, charts of the last hour from the
//! model's history, live by server-sent events (`/ops/events`). Operators browse,
//! redrive and purge dead letters and pause, resume and scale pools; every action goes
//! through `souk_stores::operate`, as `souk dlq`/`souk pool` do, and is recorded in
//! `operator_actions`.
//!
//! Every route is declared once in [`routes::ROUTES`], which both builds the router and
//! tells the tests what to walk, with the access it needs: operator routes need an
//! `operator` JWT (a session cookie from `POST /ops/login`, or a bearer token), and
//! every state-changing POST also a same-origin request, the session's CSRF token and
//! a confirmation step (see [`auth`]).
//!
//! `souk dev` mounts [`router`] beside the API on the same listener; `souk dashboard`
//! serves it alone. Pipelines plug in by declaring themselves: pools, consumers and
//! streams come from the topology and the model, never from a list here.

use souk_ingress::Keys;
use souk_stores::postgres::outbox::PgOutbox;
use souk_topologies::{Topology, control::Controls, publisher::Publisher};
use std::{sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub mod auth;
mod charts;
mod form;
pub mod health;
mod pages;
pub mod routes;

pub use routes::{Access, ROUTES, Route};

/// What the dashboard reads and acts on.
pub struct DashboardOptions {
    pub nats: async_nats::Client,
    pub pool: sqlx::PgPool,
    /// For the outbox backlog ([`PgOutbox`]).
    pub database_url: String,
    pub topology: Topology,
    /// The API's keys: operator tokens are verified with them.
    pub keys: Keys,
    /// Longest a redrive waits for JetStream's PubAck.
    pub write_timeout: Duration,
    /// How often `/ops/events` sends a fresh overview.
    pub refresh: Duration,
    /// Ends the live streams (the server's graceful shutdown waits for open requests).
    pub cancel: CancellationToken,
    /// Where operators' dead-letter actions run, each in a task of its own: a stopping
    /// process waits for them ([`finish_actions`]) after its server stopped, so one
    /// whose browser hung up still finishes and is recorded.
    pub actions: TaskTracker,
}

/// How long a stopping process waits for operators' actions still running.
pub const ACTIONS_DRAIN: Duration = Duration::from_secs(30);

/// Let the actions running in `actions` finish, for at most `bound`. One cut off still
/// has its `-begun` row (`souk_stores::operate`).
pub async fn finish_actions(actions: &TaskTracker, bound: Duration) {
    actions.close();
    if tokio::time::timeout(bound, actions.wait()).await.is_err() {
        tracing::warn!(
            running = actions.len(),
            "operators' actions still running at exit: cut off (each is on record as begun)"
        );
    }
}

impl std::fmt::Debug for DashboardOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DashboardOptions").field("refresh", &self.refresh).finish_non_exhaustive()
    }
}

/// How often the live overview refreshes by default: heartbeats come every 2 s.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(2);

pub(crate) struct State {
    pub js: async_nats::jetstream::Context,
    pub publisher: Publisher,
    pub db: sqlx::PgPool,
    pub outbox: PgOutbox,
    pub topology: Topology,
    pub keys: Keys,
    pub sessions: auth::Sessions,
    /// Opened at the first pool change: building a dashboard creates nothing.
    pub controls: tokio::sync::OnceCell<Controls>,
    pub refresh: Duration,
    pub cancel: CancellationToken,
    pub actions: TaskTracker,
}

impl State {
    pub async fn controls(&self) -> souk_topologies::Result<&Controls> {
        let replicas = self.topology.streams.iter().map(|s| s.replicas).max().unwrap_or(1);
        self.controls.get_or_try_init(|| Controls::open(&self.js, replicas)).await
    }
}

/// The dashboard's routes (every path under `/ops/`), ready to merge into another
/// router or to serve alone.
pub fn router(options: DashboardOptions) -> axum::Router {
    let publisher = Publisher::new(options.nats.clone(), options.write_timeout);
    let state = Arc::new(State {
        js: publisher.jetstream().clone(),
        outbox: PgOutbox::new(options.pool.clone(), &options.database_url),
        publisher,
        db: options.pool,
        topology: options.topology,
        keys: options.keys,
        sessions: auth::Sessions::new(),
        controls: tokio::sync::OnceCell::new(),
        refresh: options.refresh,
        cancel: options.cancel,
        actions: options.actions,
    });
    routes::build(state)
}
