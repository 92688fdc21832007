//! The floor: what the messages and transactions one operation needs cost on this
//! machine's JetStream and Postgres alone, measured in the same run as souk.
//!
//! Where a throughput ratio cannot be met on a small machine the project's rule is to
//! show the CPU arithmetic and aim at cost per operation. The catalog and checkout
//! benchmarks count, from the servers' own counters over souk's phase, the JetStream
//! messages (stored in `CMD` and `EVT`) and the Postgres transactions (`xact_commit`)
//! one product or one checkout takes; this module measures what one of each costs with
//! nothing of souk in between, and multiplies:
//!
//! `messages × CPU per message + transactions × CPU per commit = floor`
//!
//! beside souk's measured CPU per operation. No implementation that keeps the design's
//! hops (every message stored, delivered and acknowledged; every transaction committed)
//! can cost less on this machine, so the floor divided by the reference the target is
//! a ratio of (raw tantivy's CPU per document, Restate's CPU per run) says whether the
//! target is within reach at all.
//!
//! - **CPU per message**: the machine's busy CPU over a raw publish phase (a stream
//!   configured like `CMD`, PubAck awaited: one message per publish, or souk's atomic
//!   batches) ÷ the messages the stream stored, plus the busy CPU of pulling them all
//!   back (a durable pull consumer, [`FETCH_BATCH`] per pull, each message acked as a
//!   pool acks it) ÷ the messages pulled: publish + deliver + ack. The floor takes the
//!   cheaper of the two publish shapes. Not in it: the bulk purge of handled commands,
//!   a second consumer of the same event (the outcome listener, say), the payload's
//!   encoding: all make souk's real cost higher, never lower.
//! - **CPU per commit**: the machine's busy CPU over the raw Postgres phase (one
//!   `orders`-shaped row per autocommit INSERT, `--pg-connections` connections) ÷ the
//!   transactions the database committed over it (its own `xact_commit`: the warm-up,
//!   the table's create and drop included).
//!
//! `xact_commit` counts read-only transactions too, each priced here as a write's
//! commit; the transactions that wrote are counted apart (transaction ids assigned), and
//! the same sum with the writes alone — reads free — is the strict floor, the one the
//! verdict on the target uses.

use anyhow::Context;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use serde::Serialize;
use souk_topologies::{Topology, batcher::BatchOptions, publisher::MAX_ATOMIC_BATCH};
use sqlx::PgPool;
use std::{collections::BTreeMap, fmt::Write, time::Duration};
use tokio::time::Instant;

use crate::{
    baselines,
    cpu::{Share, Window},
    load::{Mode, Plan, Tally},
    payload::Sample,
    report::Latency,
};

/// Messages one pull asks for at most: the catalog pool's `fetch-batch` (the saga's
/// pools use 32 to 128).
pub const FETCH_BATCH: usize = 64;

/// Longest the pull-and-ack of one JetStream baseline may take (it normally takes a
/// fraction of its publish phase).
const CONSUME_TIMEOUT: Duration = Duration::from_secs(300);

/// How long to wait for Postgres to publish its backends' counters after their commits:
/// a busy backend flushes them about once a second, one that exits as it goes. (One
/// that goes idle less than a second after its last flush keeps the rest for up to
/// 10 s: up to a second of its commits can be missed at the end of a phase.)
pub const STATS_DELAY: Duration = Duration::from_millis(1500);

/// How the raw publishes are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// One message per publish, each awaiting its PubAck ([`baselines::raw_single`]).
    Single { in_flight: usize },
    /// souk's atomic batches ([`baselines::raw_atomic`]), one PubAck per batch.
    Atomic { batch: usize, in_flight: usize },
}

impl Publish {
    /// The two shapes souk publishes in, at `concurrency` messages in flight: single
    /// publishes, and atomic batches as the ingress's group committer would send them
    /// (its batches in flight, `concurrency ÷` that many messages each).
    pub fn shapes(concurrency: usize) -> [Publish; 2] {
        let in_flight = BatchOptions::default().max_in_flight.max(1);
        let batch = concurrency.div_ceil(in_flight).clamp(1, MAX_ATOMIC_BATCH);
        [Publish::Single { in_flight: concurrency.max(1) }, Publish::Atomic { batch, in_flight }]
    }

    pub fn describe(&self) -> String {
        match self {
            Publish::Single { in_flight } => format!("single publishes, {in_flight} in flight"),
            Publish::Atomic { batch, in_flight } => {
                format!("atomic batches of {batch}, {in_flight} in flight")
            }
        }
    }
}

/// One raw JetStream baseline: publish for the phase, then pull and ack every message.
#[derive(Debug, Clone, Serialize)]
pub struct Messages {
    pub name: String,
    /// Messages stored over the publish window (the stream's count: warm-up included).
    pub published: u64,
    /// Messages per second acknowledged inside the measured window.
    pub publish_per_s: f64,
    pub publish_latency: Latency,
    pub publish_errors: BTreeMap<String, u64>,
    pub publish_cpu: Option<Share>,
    /// Messages pulled and acked back, and how fast.
    pub consumed: u64,
    pub consume_per_s: f64,
    pub consume_cpu: Option<Share>,
    /// Machine CPU per message, µs: publish, deliver + ack, and their sum.
    pub publish_us: Option<f64>,
    pub deliver_ack_us: Option<f64>,
    pub cpu_per_message_us: Option<f64>,
}

impl Messages {
    fn new(
        name: String,
        tally: &Tally,
        published: u64,
        publish_cpu: Option<Share>,
        consumed: u64,
        consume_s: f64,
        consume_cpu: Option<Share>,
    ) -> Messages {
        let publish_us = per_unit_us(publish_cpu, published);
        let deliver_ack_us = per_unit_us(consume_cpu, consumed);
        Messages {
            name,
            published,
            publish_per_s: tally.rate(),
            publish_latency: Latency::of(&tally.latency),
            publish_errors: tally.errors.clone(),
            publish_cpu,
            consumed,
            consume_per_s: if consume_s > 0.0 { consumed as f64 / consume_s } else { 0.0 },
            consume_cpu,
            publish_us,
            deliver_ack_us,
            cpu_per_message_us: publish_us.zip(deliver_ack_us).map(|(p, d)| p + d),
        }
    }
}

/// The machine's busy CPU over a window ÷ `units`, in µs (`None` without CPU figures or
/// units).
pub fn per_unit_us(cpu: Option<Share>, units: u64) -> Option<f64> {
    cpu.filter(|_| units > 0).map(|c| c.busy_cpu_s * 1e6 / units as f64)
}

/// Each shape of [`Publish::shapes`]`(concurrency)` on a fresh `BENCH` stream (a copy
/// of `CMD`), publishing for `plan`'s warm-up and duration (its cap too; the shape sets
/// the concurrency), then pulling and acking every message it stored; the stream is
/// deleted after each, so souk starts on a clean server.
pub async fn jetstream(
    client: &async_nats::Client,
    topology: &Topology,
    concurrency: usize,
    plan: Plan,
    progress: fn(&str),
) -> anyhow::Result<Vec<Messages>> {
    let sample = Sample::new()?;
    let mut out = Vec::new();
    for (i, shape) in Publish::shapes(concurrency).into_iter().enumerate() {
        let name = format!("(j{}) raw JetStream, {}, + pull/ack", i + 1, shape.describe());
        progress(&name);
        baselines::create_stream(client, topology).await?;
        let measured = messages(client, &sample, shape, plan, name).await;
        let deleted = baselines::delete_stream(client).await;
        out.push(measured?);
        deleted?;
    }
    client.flush().await.ok();
    Ok(out)
}

/// Publish per `shape` and `plan` into the (empty) benchmark stream, then pull it back.
async fn messages(
    client: &async_nats::Client,
    sample: &Sample,
    shape: Publish,
    plan: Plan,
    name: String,
) -> anyhow::Result<Messages> {
    let js = jetstream::new(client.clone());
    let mut stream = js.get_stream(baselines::STREAM).await.context("reading the BENCH stream")?;
    let stored_before = stream.info().await?.state.messages;
    let cpu = Window::open();
    let tally = match shape {
        Publish::Single { in_flight } => {
            let plan = Plan { mode: Mode::Closed { concurrency: in_flight }, ..plan };
            baselines::raw_single(client, sample, plan).await?
        }
        Publish::Atomic { batch, in_flight } => {
            let plan = Plan { mode: Mode::Closed { concurrency: in_flight }, ..plan };
            baselines::raw_atomic(client, sample, plan, batch).await?
        }
    };
    let publish_cpu = cpu.close();
    let published = stream.info().await?.state.messages.saturating_sub(stored_before);

    let cpu = Window::open();
    let started = Instant::now();
    let consumed = pull_all(&stream, published).await?;
    let consume_s = started.elapsed().as_secs_f64();
    let consume_cpu = cpu.close();
    Ok(Messages::new(name, &tally, published, publish_cpu, consumed, consume_s, consume_cpu))
}

/// Pull `expected` messages through a durable pull consumer as a pool does (explicit
/// acks, at most [`FETCH_BATCH`] per pull), ack each, and wait until the server has
/// taken every ack (they are fire and forget, as the pools' are) so their cost falls
/// inside the caller's window.
async fn pull_all(stream: &jetstream::stream::Stream, expected: u64) -> anyhow::Result<u64> {
    let mut consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("bench-floor".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 2048,
            ..Default::default()
        })
        .await
        .context("creating the floor's pull consumer")?;
    let deadline = Instant::now() + CONSUME_TIMEOUT;
    let mut consumed = 0u64;
    while consumed < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pulled {consumed} of {expected} messages in {CONSUME_TIMEOUT:?}"
        );
        // No more than are left: a pull for more would wait out its expiry.
        let wanted = usize::try_from(expected - consumed).unwrap_or(usize::MAX).min(FETCH_BATCH);
        let mut batch = consumer
            .batch()
            .max_messages(wanted)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .map_err(|e| anyhow::anyhow!("pull request: {e}"))?;
        while let Some(msg) = batch.next().await {
            let msg = msg.map_err(|e| anyhow::anyhow!("pull: {e}"))?;
            msg.ack().await.map_err(|e| anyhow::anyhow!("ack: {e}"))?;
            consumed += 1;
        }
    }
    loop {
        let info = consumer.info().await?;
        if info.num_ack_pending == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{} acks never reached the server", info.num_ack_pending);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(consumed)
}

/// A raw Postgres baseline: single-row commits, and what each cost the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Commits {
    pub connections: u32,
    pub commits_per_s: f64,
    pub latency: Latency,
    pub cpu: Option<Share>,
    /// Transactions the database committed over the CPU window (its own `xact_commit`).
    pub commits: Option<u64>,
    pub cpu_per_commit_us: Option<f64>,
}

/// Run [`baselines::raw_postgres`] per `plan` (closed loop: its concurrency is the
/// connections) on the database at `db_url`, counting its commits through `observer`
/// (a connection to the same database).
pub async fn postgres(db_url: &str, observer: &PgPool, plan: Plan) -> anyhow::Result<Commits> {
    let Mode::Closed { concurrency } = plan.mode else {
        anyhow::bail!("the Postgres baseline is closed-loop only");
    };
    let before = transactions(observer).await?;
    let cpu = Window::open();
    let t = baselines::raw_postgres(db_url, &Sample::new()?, plan).await?;
    let usage = cpu.close();
    // Its connections are closed: their backends flush their counters as they exit.
    tokio::time::sleep(STATS_DELAY).await;
    let commits = u64::try_from(transactions(observer).await? - before).ok();
    Ok(Commits {
        connections: u32::try_from(concurrency)?,
        commits_per_s: t.rate(),
        latency: Latency::of(&t.latency_ok),
        cpu: usage,
        commits,
        cpu_per_commit_us: commits.and_then(|n| per_unit_us(usage, n)),
    })
}

/// Transactions committed in the database `pool` is connected to (read-only ones
/// included), as Postgres's statistics have them.
pub async fn transactions(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("select xact_commit from pg_stat_database where datname = current_database()")
        .fetch_one(pool)
        .await?)
}

/// What souk's servers did, by their own counters: transactions committed in the run's
/// database, transaction ids the Postgres server has assigned, and messages ever stored
/// in `CMD` and `EVT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub transactions: i64,
    pub xids: i64,
    pub messages: u64,
}

impl Work {
    pub async fn read(pool: &PgPool, js: &jetstream::Context) -> anyhow::Result<Work> {
        let transactions = transactions(pool).await?;
        // The next transaction id to be assigned: only a transaction that writes takes
        // one. Read at once (no statistics delay), but for the whole server.
        let xids = sqlx::query_scalar("select pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
            .fetch_one(pool)
            .await?;
        let mut messages = 0;
        for name in ["CMD", "EVT"] {
            let mut stream = js.get_stream(name).await.with_context(|| format!("reading stream {name}"))?;
            messages += stream.info().await?.state.last_sequence;
        }
        Ok(Work { transactions, xids, messages })
    }

    /// What each of `operations` took from `before` to `self`; `None` for none.
    pub fn per(self, before: Work, operations: u64) -> Option<PerOperation> {
        let n = (operations > 0).then_some(operations as f64)?;
        let delta = |after: i64, before: i64| (after - before).max(0) as f64 / n;
        Some(PerOperation {
            messages: self.messages.saturating_sub(before.messages) as f64 / n,
            transactions: delta(self.transactions, before.transactions),
            writes: delta(self.xids, before.xids),
        })
    }
}

/// What one operation took, by the servers' counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PerOperation {
    /// JetStream messages stored in `CMD` and `EVT`.
    pub messages: f64,
    /// Postgres transactions committed in the run's database (`xact_commit`: read-only
    /// ones and the harness's few readings included).
    pub transactions: f64,
    /// Transaction ids assigned (transactions that wrote; the whole server's counter, so
    /// another database's writes count too).
    pub writes: f64,
}

/// `messages × CPU per message + transactions × CPU per commit = floor` for one
/// operation, beside souk's measured CPU per operation and, when there is one, the
/// reference its throughput target is a ratio of. Read-only transactions are priced as
/// a write's commit in it; the same sum with the writes alone (reads free) is the
/// strict floor, and the one the reference's verdict uses.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    /// Per operation, counted by the servers over souk's phase.
    pub messages: f64,
    pub transactions: f64,
    /// Of those transactions, the ones that wrote (at most all of them).
    pub writes: f64,
    /// The cheapest JetStream baseline's CPU per message (publish + deliver + ack), and
    /// which baseline that was.
    pub cpu_per_message_us: f64,
    pub message_baseline: String,
    pub cpu_per_commit_us: f64,
    /// `messages × cpu_per_message_us`, `transactions × cpu_per_commit_us`, their sum.
    pub messages_us: f64,
    pub transactions_us: f64,
    pub floor_us: f64,
    /// `messages_us + writes × cpu_per_commit_us`: the floor with reads free.
    pub writes_floor_us: f64,
    /// souk's machine CPU per operation, what is above the floor, and the floor's share
    /// of it.
    pub measured_us: Option<f64>,
    pub above_floor_us: Option<f64>,
    pub floor_share: Option<f64>,
    pub reference: Option<Reference>,
}

/// The figure a throughput target divides by, in CPU terms.
#[derive(Debug, Clone, Serialize)]
pub struct Reference {
    /// What it is (`raw tantivy CPU per doc`, `Restate CPU per run at 64`).
    pub name: String,
    pub cpu_us: f64,
    /// The throughput target: souk's rate ≥ `target_rate_ratio` × the reference's.
    pub target_rate_ratio: f64,
    /// floor ÷ the reference's CPU per operation, and the same with reads free.
    pub floor_ratio: f64,
    pub writes_floor_ratio: f64,
    /// The largest CPU ratio the target allows when both are CPU-bound on the same
    /// machine (rate = CPUs ÷ CPU per operation): 1 ÷ `target_rate_ratio`.
    pub at_most: f64,
    /// Whether the strict floor (reads free) leaves the target within reach at all.
    pub reachable: bool,
}

impl Floor {
    /// The arithmetic from per-operation counts and the raw baselines (the cheapest
    /// JetStream one per message); `None` when a count or a cost is missing.
    pub fn new(
        counted: Option<PerOperation>,
        jetstream: &[Messages],
        postgres: Option<&Commits>,
        measured_us: Option<f64>,
    ) -> Option<Floor> {
        let PerOperation { messages, transactions, writes } = counted?;
        let writes = writes.min(transactions);
        let (message_baseline, cpu_per_message_us) = jetstream
            .iter()
            .filter_map(|m| Some((m.name.clone(), m.cpu_per_message_us?)))
            .min_by(|a, b| a.1.total_cmp(&b.1))?;
        let cpu_per_commit_us = postgres?.cpu_per_commit_us?;
        let messages_us = messages * cpu_per_message_us;
        let transactions_us = transactions * cpu_per_commit_us;
        let floor_us = messages_us + transactions_us;
        let writes_floor_us = messages_us + writes * cpu_per_commit_us;
        let measured_us = measured_us.filter(|m| *m > 0.0);
        Some(Floor {
            messages,
            transactions,
            writes,
            cpu_per_message_us,
            message_baseline,
            cpu_per_commit_us,
            messages_us,
            transactions_us,
            floor_us,
            writes_floor_us,
            measured_us,
            above_floor_us: measured_us.map(|m| m - floor_us),
            floor_share: measured_us.map(|m| floor_us / m),
            reference: None,
        })
    }

    /// Set the reference: `name` costing `cpu_us` per operation, souk's target being a
    /// rate ≥ `target_rate_ratio` × its rate. Nothing when either is missing or zero.
    pub fn against(mut self, name: String, cpu_us: Option<f64>, target_rate_ratio: f64) -> Floor {
        self.reference = cpu_us.filter(|c| *c > 0.0 && target_rate_ratio > 0.0).map(|cpu_us| {
            let (floor_ratio, writes_floor_ratio) = (self.floor_us / cpu_us, self.writes_floor_us / cpu_us);
            let at_most = 1.0 / target_rate_ratio;
            let reachable = writes_floor_ratio <= at_most;
            Reference { name, cpu_us, target_rate_ratio, floor_ratio, writes_floor_ratio, at_most, reachable }
        });
        self
    }

    /// The arithmetic as text: one line each for the sum, souk beside it and the
    /// reference, `per` naming the operation ("product", "checkout at 64"), each line
    /// after `indent`.
    pub fn lines(&self, per: &str, measured: &str, indent: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{indent}per {per}: {:.2} messages × {} + {:.2} transactions × {} = {} + {} = {} floor",
            self.messages,
            us(self.cpu_per_message_us),
            self.transactions,
            us(self.cpu_per_commit_us),
            us(self.messages_us),
            us(self.transactions_us),
            us(self.floor_us),
        );
        let _ = writeln!(
            out,
            "{indent}  of the transactions {:.2} wrote (transaction ids assigned, whole server): with reads \
             free the floor is {}",
            self.writes,
            us(self.writes_floor_us),
        );
        if let (Some(m), Some(share), Some(above)) = (self.measured_us, self.floor_share, self.above_floor_us)
        {
            let _ = writeln!(
                out,
                "{indent}  {measured}: {} per {per}; the floor is {:.0} % of it, {} above the floor",
                us(m),
                share * 100.0,
                us(above),
            );
        }
        if let Some(r) = &self.reference {
            let _ = writeln!(
                out,
                "{indent}  floor ÷ {} ({}) = {:.2} × ({:.2} × with reads free); a rate ≥ {} × its rate needs \
                 ≤ {:.2} × if both are CPU-bound: {}",
                r.name,
                us(r.cpu_us),
                r.floor_ratio,
                r.writes_floor_ratio,
                r.target_rate_ratio,
                r.at_most,
                if r.reachable {
                    "within reach of an implementation with these hops"
                } else {
                    "OUT OF REACH for any implementation with these hops"
                },
            );
        }
        out
    }
}

/// The raw baselines the floor is made of, one line each.
pub fn baselines_table(out: &mut String, jetstream: &[Messages], postgres: Option<&Commits>) {
    for m in jetstream {
        let errors = if m.publish_errors.is_empty() {
            String::new()
        } else {
            format!("  errors {:?}", m.publish_errors)
        };
        let _ = writeln!(
            out,
            "{}: {:.0} msg/s published (p99 {:.2} ms), {} stored, {:.0} msg/s pulled+acked; CPU per message {} \
             (publish {} + deliver/ack {}){errors}",
            m.name,
            m.publish_per_s,
            m.publish_latency.p99_ms,
            m.published,
            m.consume_per_s,
            opt_us(m.cpu_per_message_us),
            opt_us(m.publish_us),
            opt_us(m.deliver_ack_us),
        );
    }
    if let Some(p) = postgres {
        let _ = writeln!(
            out,
            "(c) raw Postgres insert+commit, {} connections: {:.0} commits/s, p99 {:.2} ms, {} transactions; \
             CPU per commit {}{}",
            p.connections,
            p.commits_per_s,
            p.latency.p99_ms,
            p.commits.map_or("n/a".to_owned(), |n| n.to_string()),
            opt_us(p.cpu_per_commit_us),
            p.cpu.map_or(String::new(), |c| format!("  [{c}]")),
        );
    }
}

fn us(v: f64) -> String {
    if v.abs() >= 10.0 { format!("{v:.0} µs") } else { format!("{v:.1} µs") }
}

fn opt_us(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), us)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A share of a 2-CPU machine over one second with `busy_cpu_s` busy.
    pub fn share(busy_cpu_s: f64) -> Share {
        Share {
            busy: busy_cpu_s / 2.0,
            busy_cpu_s,
            this_process: 0.0,
            this_process_cpu_s: 0.0,
            nats_server: 0.0,
            postgres: 0.0,
        }
    }

    pub fn baseline(name: &str, publish_s: f64, published: u64, consume_s: f64, consumed: u64) -> Messages {
        let tally = Tally::empty();
        Messages::new(
            name.into(),
            &tally,
            published,
            Some(share(publish_s)),
            consumed,
            1.0,
            Some(share(consume_s)),
        )
    }

    pub fn commits(cpu_s: f64, commits: u64) -> Commits {
        let usage = Some(share(cpu_s));
        Commits {
            connections: 32,
            commits_per_s: 0.0,
            latency: Latency::of(&Tally::empty().latency),
            cpu: usage,
            commits: Some(commits),
            cpu_per_commit_us: per_unit_us(usage, commits),
        }
    }

    /// 3 messages and 4 transactions per operation, 1.5 of them writes.
    pub fn counted() -> Option<PerOperation> {
        Some(PerOperation { messages: 3.0, transactions: 4.0, writes: 1.5 })
    }

    #[test]
    fn a_message_costs_its_publish_and_its_delivery_and_ack() {
        // 1 s of CPU over 10,000 stored (100 µs each), 0.2 s over 10,000 pulled (20 µs).
        let m = baseline("(j1)", 1.0, 10_000, 0.2, 10_000);
        assert!((m.publish_us.unwrap_or_default() - 100.0).abs() < 1e-9);
        assert!((m.deliver_ack_us.unwrap_or_default() - 20.0).abs() < 1e-9);
        assert!((m.cpu_per_message_us.unwrap_or_default() - 120.0).abs() < 1e-9);
        assert!((m.consume_per_s - 10_000.0).abs() < 1e-9, "10,000 pulled in 1 s");
        // Nothing pulled: no per-message figure, rather than an infinite one.
        assert_eq!(baseline("(j1)", 1.0, 10_000, 0.2, 0).cpu_per_message_us, None);
        assert_eq!(per_unit_us(None, 10), None);
    }

    #[test]
    fn the_floor_is_messages_and_transactions_at_their_raw_costs() {
        // Single publishes 120 µs per message, atomic batches 30 µs: the floor takes 30.
        let js = [
            baseline("(j1) single", 1.0, 10_000, 0.2, 10_000),
            baseline("(j2) atomic", 0.2, 10_000, 0.1, 10_000),
        ];
        let pg = commits(1.5, 10_000); // 150 µs per commit
        let f = Floor::new(counted(), &js, Some(&pg), Some(1_900.0)).expect("floor");
        assert_eq!(f.message_baseline, "(j2) atomic");
        assert!((f.cpu_per_message_us - 30.0).abs() < 1e-9);
        assert!((f.messages_us - 90.0).abs() < 1e-9);
        assert!((f.transactions_us - 600.0).abs() < 1e-9);
        assert!((f.floor_us - 690.0).abs() < 1e-9);
        assert!((f.writes_floor_us - 315.0).abs() < 1e-9, "90 µs + 1.5 × 150 µs");
        assert!((f.above_floor_us.unwrap_or_default() - 1_210.0).abs() < 1e-9);
        assert!((f.floor_share.unwrap_or_default() - 690.0 / 1_900.0).abs() < 1e-12);
        // Without souk's figure the floor stands alone.
        let alone = Floor::new(counted(), &js, Some(&pg), None).expect("floor");
        assert_eq!((alone.above_floor_us, alone.floor_share), (None, None));
        // Any missing input: no floor.
        assert!(Floor::new(None, &js, Some(&pg), None).is_none());
        assert!(Floor::new(counted(), &[], Some(&pg), None).is_none());
        assert!(Floor::new(counted(), &js, None, None).is_none());
        // More writes than transactions (another database wrote): no more than all.
        let busy_server = Some(PerOperation { writes: 9.0, ..counted().unwrap_or_default() });
        assert_eq!(Floor::new(busy_server, &js, Some(&pg), None).map(|f| f.writes), Some(4.0));
        let nothing_pulled = [baseline("(j1)", 1.0, 10, 0.1, 0)];
        assert!(Floor::new(counted(), &nothing_pulled, Some(&pg), None).is_none());
    }

    #[test]
    fn the_reference_says_whether_the_rate_target_is_within_reach() {
        let js = [baseline("(j2)", 0.2, 10_000, 0.1, 10_000)];
        let pg = commits(1.5, 10_000);
        let floor = || Floor::new(counted(), &js, Some(&pg), Some(1_900.0)).expect("floor");
        // Catalog: rate ≥ 0.5 × raw tantivy's, at 24 µs per doc: CPU ≤ 48 µs needed.
        let r = floor().against("raw tantivy CPU per doc".into(), Some(24.0), 0.5).reference.expect("ref");
        assert!((r.floor_ratio - 690.0 / 24.0).abs() < 1e-9);
        assert!((r.writes_floor_ratio - 315.0 / 24.0).abs() < 1e-9);
        assert!((r.at_most - 2.0).abs() < 1e-12);
        assert!(!r.reachable);
        // Checkout: rate ≥ 1.5 × Restate's at 1,500 µs per run: ≤ 1,000 µs needed.
        let r = floor().against("Restate CPU per run".into(), Some(1_500.0), 1.5).reference.expect("ref");
        assert!((r.at_most - 1.0 / 1.5).abs() < 1e-12);
        assert!((r.floor_ratio - 0.46).abs() < 1e-9);
        assert!(r.reachable, "690 µs ≤ 1,000 µs");
        // The verdict is the strict floor's: 690 µs with reads priced, 315 µs without,
        // against 500 µs allowed.
        let r = floor().against("Restate CPU per run".into(), Some(750.0), 1.5).reference.expect("ref");
        assert!(r.floor_ratio > r.at_most && r.writes_floor_ratio <= r.at_most);
        assert!(r.reachable);
        assert!(floor().against("none".into(), None, 1.5).reference.is_none());
        assert!(floor().against("zero".into(), Some(0.0), 1.5).reference.is_none());
    }

    #[test]
    fn the_arithmetic_prints_as_a_sum_beside_souk_and_the_reference() {
        let js = [baseline("(j2)", 0.2, 10_000, 0.1, 10_000)];
        let pg = commits(1.5, 10_000);
        let f = Floor::new(counted(), &js, Some(&pg), Some(1_900.0)).expect("floor").against(
            "raw tantivy CPU per doc".into(),
            Some(24.0),
            0.5,
        );
        let text = f.lines("product", "souk measured", "");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "per product: 3.00 messages × 30 µs + 4.00 transactions × 150 µs = 90 µs + 600 µs = 690 µs floor",
                "  of the transactions 1.50 wrote (transaction ids assigned, whole server): with reads free the \
                 floor is 315 µs",
                "  souk measured: 1900 µs per product; the floor is 36 % of it, 1210 µs above the floor",
                "  floor ÷ raw tantivy CPU per doc (24 µs) = 28.75 × (13.12 × with reads free); a rate ≥ 0.5 × \
                 its rate needs ≤ 2.00 × if both are CPU-bound: OUT OF REACH for any implementation with these hops",
            ]
        );
        let within = Floor::new(counted(), &js, Some(&pg), None)
            .expect("floor")
            .against("Restate CPU per run at 64".into(), Some(1_500.0), 1.5)
            .lines("checkout at 64", "souk", "    ");
        assert_eq!(within.lines().count(), 3, "no souk line without souk's figure: {within}");
        assert!(within.starts_with("    per checkout at 64: "), "{within}");
        assert!(within.ends_with("within reach of an implementation with these hops\n"), "{within}");
    }

    #[test]
    fn work_is_divided_by_the_operations() {
        let before = Work { transactions: 1_000, xids: 70_000, messages: 500 };
        let after = Work { transactions: 3_100, xids: 70_900, messages: 1_100 };
        assert_eq!(
            after.per(before, 100),
            Some(PerOperation { messages: 6.0, transactions: 21.0, writes: 9.0 })
        );
        assert_eq!(after.per(before, 0), None);
        // A re-created stream (its count restarted) reads as no messages, not a wrap.
        let restarted = Work { messages: 10, ..before };
        assert_eq!(restarted.per(before, 10), Some(PerOperation::default()));
    }

    /// Both shapes against a real server: every message stored is pulled and acked,
    /// each has a CPU figure (Linux), and the stream is gone afterwards.
    #[tokio::test]
    async fn the_jetstream_floor_pulls_back_every_message_it_published() -> anyhow::Result<()> {
        let nats = souk_testkit::NatsServer::start().await?;
        let client = async_nats::connect(nats.url()).await?;
        let plan = Plan {
            mode: Mode::Closed { concurrency: 1 },
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(300),
            max_ops: None,
        };
        let measured = jetstream(&client, &souk_testkit::test_topology()?, 8, plan, |_| {}).await?;
        assert_eq!(measured.len(), 2);
        for m in &measured {
            assert!(m.published > 0, "{m:?}");
            assert_eq!(m.consumed, m.published, "{}", m.name);
            assert!(m.publish_errors.is_empty(), "{:?}", m.publish_errors);
            if std::path::Path::new("/proc/stat").exists() {
                assert!(m.cpu_per_message_us.is_some_and(|c| c > 0.0), "{m:?}");
            }
        }
        let batch = 8_usize.div_ceil(BatchOptions::default().max_in_flight);
        let atomic = format!("(j2) raw JetStream, atomic batches of {batch}, ");
        assert!(measured[1].name.starts_with(&atomic), "{}", measured[1].name);
        let js = jetstream::new(client);
        assert!(js.get_stream(baselines::STREAM).await.is_err(), "the BENCH stream is deleted");
        Ok(())
    }

    /// The Postgres floor counts the database's own commits: at least the measured ones.
    #[tokio::test]
    async fn the_postgres_floor_counts_the_commits_of_its_window() -> anyhow::Result<()> {
        let db = souk_testkit::TestDb::create().await?;
        souk_stores::postgres::migrate(&db.pool).await?;
        let plan = Plan {
            mode: Mode::Closed { concurrency: 4 },
            warmup: Duration::ZERO,
            duration: Duration::from_secs(5),
            max_ops: Some(200),
        };
        let c = postgres(&db.url, &db.pool, plan).await?;
        assert_eq!(c.connections, 4);
        assert!(c.commits.is_some_and(|n| n >= 200), "{c:?}");
        if std::path::Path::new("/proc/stat").exists() {
            assert!(c.cpu_per_commit_us.is_some_and(|v| v > 0.0), "{c:?}");
        }
        Ok(())
    }

    #[test]
    fn publish_shapes_follow_the_group_committer() {
        let in_flight = BatchOptions::default().max_in_flight;
        let [single, atomic] = Publish::shapes(64);
        assert_eq!(single, Publish::Single { in_flight: 64 });
        assert_eq!(atomic, Publish::Atomic { batch: 64_usize.div_ceil(in_flight), in_flight });
        assert_eq!(Publish::shapes(1)[1], Publish::Atomic { batch: 1, in_flight });
        assert_eq!(single.describe(), "single publishes, 64 in flight");
    }
}
