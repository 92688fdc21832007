//! The operators' view under load (`souk-loadtest ops`, issue 11): the dashboard's pages
//! and the status model with `--consumers` consumers and `--dead-letters` dead letters.
//!
//! One run on its own nats-server and database: the shipped topology plus synthetic
//! consumers on EVT up to `--consumers` in all, `--dead-letters` dead letters spread over
//! them (written as the runtime writes them: the original subject, error, attempts,
//! trace id), the dashboard served alone on a loopback port. Then, one request at a time
//! (render time is what an operator waits for), `--requests` of each page — overview,
//! dead-letter list, one consumer's dead letters, one dead letter, `status.json` — with
//! their p50/p99; and `--refreshes` reads of the status model (what every page and
//! `souk status` refresh costs), with the machine's busy CPU per refresh and its split
//! between this process and nats-server (the model is JetStream's own info: stream and
//! consumer infos, the DLQ's per-subject counts, heartbeats, the history).

use anyhow::Context;
use async_nats::HeaderMap;
use souk_ingress::{Claims, Keys, Role};
use souk_pipelines::headers;
use souk_topologies::{apply, spec::Topology, status};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

use crate::{Args, cpu, env};

/// Options of `souk-loadtest ops`.
#[derive(Debug, clap::Args)]
pub struct OpsArgs {
    /// Consumers in the topology (the shipped ones plus synthetic ones on EVT).
    #[arg(long, default_value_t = 50)]
    pub consumers: usize,
    /// Dead letters, spread evenly over the consumers.
    #[arg(long, default_value_t = 10_000)]
    pub dead_letters: usize,
    /// Requests of each page (one at a time).
    #[arg(long, default_value_t = 200)]
    pub requests: usize,
    /// Reads of the status model for its CPU per refresh.
    #[arg(long, default_value_t = 200)]
    pub refreshes: usize,
}

/// Timings of one page, in milliseconds.
struct Timed {
    name: String,
    ms: Vec<f64>,
    bytes: usize,
}

impl Timed {
    fn at(&self, q: f64) -> f64 {
        let mut v = self.ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN)
    }
}

pub async fn run(args: &Args, o: &OpsArgs) -> anyhow::Result<()> {
    let server = env::server_url(args);
    let db = env::Database::create(&server).await?;
    let nats =
        env::Nats::start(&env::nats_binary(args.nats_server.as_deref())?, args.store_dir.as_deref()).await?;
    let result = measure(&db.url, &nats.url, o).await;
    nats.stop().await;
    db.drop().await?;
    result
}

async fn measure(db_url: &str, nats_url: &str, o: &OpsArgs) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(8).connect(db_url).await?;
    souk_stores::postgres::migrate(&pool).await?;
    let client = async_nats::connect(nats_url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let topology = topology(o.consumers)?;
    apply::apply(&js, &topology, apply::Mode::Apply).await.context("applying the topology")?;
    eprintln!("souk-loadtest ops: writing {} dead letters over {} consumers …", o.dead_letters, o.consumers);
    let consumers: Vec<String> = topology.consumers.iter().map(|c| c.name.clone()).collect();
    let mut acks = Vec::with_capacity(1024);
    let mut last_seq = 0;
    for i in 0..o.dead_letters {
        let consumer = &consumers[i % consumers.len()];
        let mut h = HeaderMap::new();
        h.insert(headers::DLQ_CONSUMER, consumer.as_str());
        h.insert(headers::DLQ_SUBJECT, format!("souk.evt.bench.{}", i % consumers.len()).as_str());
        h.insert(headers::DLQ_STREAM_SEQ, (i + 1).to_string().as_str());
        h.insert(headers::DLQ_ATTEMPTS, "5");
        h.insert(headers::DLQ_ERROR, format!("handler failed: bench error {}", i % 7).as_str());
        h.insert(headers::DLQ_TRACE_ID, format!("{:032x}", i + 1).as_str());
        let body = format!(
            r#"{{"order_id":"{}","n":{i},"note":"a dead letter of the ops benchmark"}}"#,
            uuid::Uuid::now_v7()
        );
        acks.push(js.publish_with_headers(format!("souk.dlq.{consumer}"), h, body.into()).await?);
        if acks.len() == 1024 {
            for a in acks.drain(..) {
                last_seq = a.await?.sequence;
            }
        }
    }
    for a in acks.drain(..) {
        last_seq = a.await?.sequence;
    }

    let keys = Keys::from_secret(uuid::Uuid::new_v4().as_bytes());
    let token =
        keys.mint(&Claims::new("bench-operator", "public", vec![Role::Operator], Duration::from_secs(3600)));
    let cancel = CancellationToken::new();
    let router = souk_dashboard::router(souk_dashboard::DashboardOptions {
        nats: client.clone(),
        pool: pool.clone(),
        database_url: db_url.to_owned(),
        topology: topology.clone(),
        keys,
        write_timeout: Duration::from_secs(5),
        refresh: souk_dashboard::DEFAULT_REFRESH,
        cancel: cancel.clone(),
        actions: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serve = tokio::spawn(axum::serve(listener, router).into_future());
    let http = reqwest::Client::new();
    let one = consumers[0].clone();
    let pages = [
        ("overview /ops/".to_owned(), "/ops/".to_owned()),
        ("dead letters /ops/dlq".into(), "/ops/dlq".into()),
        (format!("one consumer's /ops/dlq?consumer={one}"), format!("/ops/dlq?consumer={one}")),
        ("one dead letter /ops/dlq/{seq}".into(), format!("/ops/dlq/{last_seq}")),
        ("status model /ops/status.json".into(), "/ops/status.json".into()),
    ];
    let mut timed = Vec::new();
    for (name, path) in pages {
        eprintln!("souk-loadtest ops: {name} × {} …", o.requests);
        let mut t = Timed { name, ms: Vec::with_capacity(o.requests), bytes: 0 };
        for i in 0..=o.requests {
            let started = Instant::now();
            let r = http.get(format!("http://{addr}{path}")).bearer_auth(&token).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            anyhow::ensure!(status.is_success(), "GET {path}: {status} {}", String::from_utf8_lossy(&body));
            // The first request warms the connection and the caches: not counted.
            if i > 0 {
                t.ms.push(started.elapsed().as_secs_f64() * 1000.0);
                t.bytes = body.len();
            }
        }
        timed.push(t);
    }
    cancel.cancel();
    serve.abort();

    eprintln!("souk-loadtest ops: the status model × {} …", o.refreshes);
    let outbox = souk_stores::postgres::outbox::PgOutbox::new(pool.clone(), db_url);
    let window = cpu::Window::open();
    let started = Instant::now();
    let mut model_ms = Vec::with_capacity(o.refreshes);
    for _ in 0..o.refreshes {
        let t = Instant::now();
        let model = status::model::read(&js, &topology, Some(&outbox), true).await?;
        model_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(model.consumers.len() == o.consumers.max(consumers.len()), "every consumer read");
    }
    let elapsed = started.elapsed();
    let share = window.close();
    let model = Timed { name: "status::model::read".into(), ms: model_ms, bytes: 0 };

    println!(
        "ops: {} consumers, {} dead letters, {} requests per page one at a time, 2 CPUs\n",
        consumers.len(),
        o.dead_letters,
        o.requests
    );
    println!("{:<58} {:>9} {:>9} {:>9} {:>9}", "page", "p50", "p99", "max", "size");
    for t in &timed {
        let max = t.ms.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<58} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>6} kB   p99 ≤ 200 ms: {}",
            t.name,
            t.at(0.5),
            t.at(0.99),
            max,
            t.bytes / 1024,
            if t.at(0.99) <= 200.0 { "met" } else { "NOT MET" }
        );
    }
    let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
    let per = |share: f64| share * cpus * elapsed.as_secs_f64() * 1000.0 / o.refreshes as f64;
    println!("\n{:<58} {:>6.1} ms {:>6.1} ms (wall, per refresh)", model.name, model.at(0.5), model.at(0.99));
    match share {
        Some(s) => println!(
            "status model CPU per refresh: machine {:.2} ms (this process {:.2} ms, nats-server {:.2} ms, postgres {:.2} ms)",
            per(s.busy),
            per(s.this_process),
            per(s.nats_server),
            per(s.postgres)
        ),
        None => println!("status model CPU per refresh: n/a (no /proc)"),
    }
    Ok(())
}

/// The shipped topology with synthetic consumers on EVT up to `consumers` in all.
fn topology(consumers: usize) -> anyhow::Result<Topology> {
    let mut topology = Topology::parse(include_str!("../../topologies/marketplace.toml"))?;
    let template = topology.consumers.first().cloned().context("the shipped topology has consumers")?;
    let mut i = 0;
    while topology.consumers.len() < consumers {
        let mut c = template.clone();
        c.name = format!("bench-{i}");
        c.stream = "EVT".into();
        c.filter_subjects = vec![format!("souk.evt.bench.{i}")];
        topology.consumers.push(c);
        i += 1;
    }
    Ok(topology)
}
