//! Hold expiry: the two durable timers souk could use, measured in one run on one
//! machine (`souk-loadtest holds`).
//!
//! - **deadline table** (what souk runs): `--holds` reservations held in Postgres with
//!   their `hold_until` spread evenly over `--spread`, starting `--lead` from now; the
//!   inventory sweeper (`workers::inventory::expiry::run`, shipped options: a sweep at
//!   least every second) expires them, each in its own transaction with its
//!   `StockReleased` outbox row. Lateness = `decided_at - hold_until` of each hold.
//! - **JetStream message schedules** (nats-server ≥ 2.12): one `@at` schedule message
//!   per hold (`Nats-Schedule: @at <time>`, `Nats-Schedule-Target`) on a stream with
//!   `allow_msg_schedules`, the same deadlines; lateness = arrival of the fired
//!   message at a subscriber − its deadline. This is only the timer: the fired message
//!   would still need the same expiry transaction in a pool.
//!
//! Each reports the lateness percentiles and the machine's busy CPU from the first
//! deadline to the last expiry (per 10,000 holds), besides the setup's cost.

use anyhow::Context;
use async_nats::jetstream::{self, stream};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use souk_stores::postgres as pg;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use crate::{Args, cpu, env};

/// Options of `souk-loadtest holds`.
#[derive(Debug, clap::Args)]
pub struct HoldsArgs {
    /// Holds to expire with each timer.
    #[arg(long, default_value_t = 10_000)]
    pub holds: usize,
    /// Time from the setup to the first deadline (room for the setup to finish).
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    pub lead: Duration,
    /// The deadlines are spread evenly over this long.
    #[arg(long, default_value = "5s", value_parser = crate::parse_duration)]
    pub spread: Duration,
}

/// One timer's figures.
struct Figures {
    name: &'static str,
    setup: Duration,
    late_ms: Vec<f64>,
    cpu: Option<cpu::Share>,
    window: Duration,
}

impl Figures {
    fn print(&mut self, holds: usize) {
        self.late_ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            self.late_ms.get(((self.late_ms.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(f64::NAN)
        };
        // CPU seconds per 10,000 holds of a share of the machine over the window.
        let cpus = std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64);
        let per_10k = |share: f64| share * cpus * self.window.as_secs_f64() * 10_000.0 / holds as f64;
        let cpu = self.cpu.map_or("n/a".into(), |c| {
            format!(
                "machine busy {:.2} s, nats-server {:.2} s, postgres {:.2} s, this process {:.2} s",
                per_10k(c.busy),
                per_10k(c.nats_server),
                per_10k(c.postgres),
                per_10k(c.this_process)
            )
        });
        println!(
            "{:<24} setup {:>6.0} ms  lateness p50 {:>6.1} ms  p99 {:>6.1} ms  max {:>6.1} ms\n{:<24} CPU per 10k holds: {cpu}",
            self.name,
            self.setup.as_secs_f64() * 1000.0,
            at(0.5),
            at(0.99),
            at(1.0),
            "",
        );
    }
}

fn deadlines(h: &HoldsArgs) -> Vec<DateTime<Utc>> {
    let first = Utc::now() + h.lead;
    let step = h.spread.as_secs_f64() / h.holds.max(1) as f64;
    (0..h.holds).map(|i| first + Duration::from_secs_f64(step * i as f64)).collect()
}

/// Run both timers and print their figures.
pub async fn run(args: &Args, h: &HoldsArgs) -> anyhow::Result<()> {
    let server = env::server_url(args);
    let db = env::Database::create(&server).await?;
    let nats =
        env::Nats::start(&env::nats_binary(args.nats_server.as_deref())?, args.store_dir.as_deref()).await?;
    let result = async {
        let mut table = deadline_table(&db.url, h).await.context("deadline table")?;
        let mut schedules = message_schedules(&nats.url, h).await.context("message schedules")?;
        println!("{} holds, deadlines spread over {:?}", h.holds, h.spread);
        table.print(h.holds);
        schedules.print(h.holds);
        anyhow::Ok(())
    }
    .await;
    nats.stop().await;
    db.drop().await?;
    result
}

async fn deadline_table(url: &str, h: &HoldsArgs) -> anyhow::Result<Figures> {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(url).await?;
    pg::migrate(&pool).await?;
    let started = std::time::Instant::now();
    let deadlines = deadlines(h);
    let n = h.holds as i64;
    let mut tx = pool.begin().await?;
    sqlx::query("insert into stock (tenant, sku, on_hand, held) values ('bench', 'SKU', $1, $1)")
        .bind(n)
        .execute(&mut *tx)
        .await?;
    let ids: Vec<uuid::Uuid> = (0..h.holds).map(|_| uuid::Uuid::now_v7()).collect();
    sqlx::query(
        "insert into stock_reservations (tenant, order_id, state, hold_until)
         select 'bench', id, 'held', t from unnest($1::uuid[], $2::timestamptz[]) as x(id, t)",
    )
    .bind(&ids)
    .bind(&deadlines)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "insert into stock_holds (tenant, order_id, sku, quantity) select 'bench', id, 'SKU', 1 from unnest($1::uuid[]) as x(id)",
    )
    .bind(&ids)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let setup = started.elapsed();

    let stop = CancellationToken::new();
    let sweeper =
        tokio::spawn(souk_workers::inventory::expiry::run(pool.clone(), Default::default(), stop.clone()));
    wait_until(deadlines[0]).await;
    let window = cpu::Window::open();
    loop {
        let held: i64 = sqlx::query_scalar("select count(*) from stock_reservations where state = 'held'")
            .fetch_one(&pool)
            .await?;
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = window.close();
    let window = (Utc::now() - deadlines[0]).to_std().unwrap_or_default();
    stop.cancel();
    sweeper.await?;
    let late_ms: Vec<f64> = sqlx::query_scalar(
        "select (extract(epoch from decided_at - hold_until) * 1000)::float8 from stock_reservations",
    )
    .fetch_all(&pool)
    .await?;
    pool.close().await;
    Ok(Figures { name: "deadline table (souk)", setup, late_ms, cpu, window })
}

async fn message_schedules(url: &str, h: &HoldsArgs) -> anyhow::Result<Figures> {
    let client = async_nats::connect(url).await?;
    let js = jetstream::new(client.clone());
    let stream = js
        .create_stream(stream::Config {
            name: "SCHED".into(),
            subjects: vec!["sched.hold.>".into(), "sched.expire".into()],
            allow_message_schedules: true,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: "sched.expire".into(),
            ..Default::default()
        })
        .await?;
    let mut fired = consumer.messages().await?;
    let started = std::time::Instant::now();
    let deadlines = deadlines(h);
    let mut acks = Vec::with_capacity(h.holds);
    for (i, at) in deadlines.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Schedule",
            format!("@at {}", at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)).as_str(),
        );
        headers.insert("Nats-Schedule-Target", "sched.expire");
        let body = at.timestamp_micros().to_string();
        acks.push(js.publish_with_headers(format!("sched.hold.{i}"), headers, body.into()).await?);
        if acks.len() >= 256 {
            for ack in acks.drain(..) {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let setup = started.elapsed();
    wait_until(deadlines[0]).await;
    let window = cpu::Window::open();
    let mut late_ms = Vec::with_capacity(h.holds);
    let give_up = tokio::time::Instant::now() + h.spread + Duration::from_secs(60);
    while late_ms.len() < h.holds {
        let next =
            tokio::time::timeout_at(give_up, fired.next()).await.context("not every schedule fired")?;
        let msg = next.context("consumer ended")??;
        let due: i64 = std::str::from_utf8(&msg.payload)?.parse()?;
        let late = Utc::now().timestamp_micros() - due;
        late_ms.push(late as f64 / 1000.0);
    }
    let cpu = window.close();
    let window = (Utc::now() - deadlines[0]).to_std().unwrap_or_default();
    Ok(Figures { name: "JetStream @at schedules", setup, late_ms, cpu, window })
}

async fn wait_until(at: DateTime<Utc>) {
    if let Ok(d) = (at - Utc::now()).to_std() {
        tokio::time::sleep(d).await;
    }
}
