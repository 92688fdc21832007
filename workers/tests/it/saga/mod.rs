//! The order saga against a real nats-server and Postgres: the orders and orders-saga
//! pools and the outbox relay run; the inventory, payments and fulfilment pools do not
//! — each test publishes their replies onto EVT as they would (schema header, own
//! `Nats-Msg-Id`) and reads the commands the saga sent from CMD.

mod failures;
mod flow;
mod never_given_up;
mod operators;

use async_nats::{HeaderMap, jetstream::stream::RawMessageErrorKind};
use chrono::Utc;
use souk_pipelines::{
    Message, encode, headers,
    orders::{PlaceOrder, PricedLine},
    payments::{Operation, PaymentFailure, PaymentResult},
    subjects,
};
use souk_stores::postgres::{
    self as pg,
    outbox::PgOutbox,
    sagas::{self, SagaView},
};
use souk_testkit::{NatsServer, TestDb, drained, eventually, test_topology};
use souk_topologies::{
    Topology,
    apply::Mode,
    publisher::{OutgoingMessage, Publisher},
    relay::{Relay, RelayOptions},
    runtime::Runtime,
    spec::{ConsumerSpec, subject_covers},
};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The commands the saga sends.
const SAGA_COMMANDS: [&str; 6] = [
    subjects::INVENTORY_RESERVE,
    subjects::INVENTORY_RELEASE,
    subjects::INVENTORY_COMMIT,
    subjects::PAYMENTS_AUTHORIZE,
    subjects::PAYMENTS_SETTLE,
    subjects::FULFILMENT_REQUEST,
];

/// The test topology, with CMD taking the saga's commands: the inventory, payments and
/// fulfilment pools' consumers take them once they are in the shipped topology; until
/// then one consumer no pool runs stands in (nothing is purged from under the test).
fn saga_topology() -> anyhow::Result<Topology> {
    let mut t = test_topology()?;
    let uncovered: Vec<String> = SAGA_COMMANDS
        .iter()
        .filter(|s| {
            !t.consumers
                .iter()
                .any(|c| c.stream == "CMD" && c.filter_subjects.iter().any(|f| subject_covers(f, s)))
        })
        .map(|s| (*s).to_owned())
        .collect();
    if !uncovered.is_empty() {
        let cmd = t.streams.iter_mut().find(|s| s.name == "CMD").ok_or_else(|| anyhow::anyhow!("no CMD"))?;
        cmd.subjects.extend(uncovered.iter().cloned());
        t.consumers.push(ConsumerSpec {
            name: "saga-test-commands".into(),
            stream: "CMD".into(),
            filter_subjects: uncovered,
            ack_wait: Duration::from_secs(30),
            max_deliver: 5,
            backoff: vec![Duration::from_secs(1)],
            max_ack_pending: 1000,
        });
    }
    for p in &mut t.pools {
        p.drain_timeout = Duration::from_millis(200);
    }
    Ok(t)
}

type Task = (CancellationToken, JoinHandle<()>);

pub(crate) struct SagaEnv {
    _nats: NatsServer,
    pub db: TestDb,
    js: async_nats::jetstream::Context,
    publisher: Publisher,
    topology: Topology,
    pools: Option<Task>,
    relay: Option<Task>,
}

impl SagaEnv {
    pub async fn start() -> anyhow::Result<SagaEnv> {
        let (nats, db) = tokio::try_join!(NatsServer::start(), TestDb::create())?;
        pg::migrate(&db.pool).await?;
        let client = nats.client().await?;
        let js = async_nats::jetstream::new(client.clone());
        let topology = saga_topology()?;
        souk_topologies::apply::apply(&js, &topology, Mode::Apply).await?;
        let publisher = Publisher::new(client, Duration::from_secs(2));
        let mut env = SagaEnv { _nats: nats, db, js, publisher, topology, pools: None, relay: None };
        env.start_pools().await?;
        env.start_relay();
        Ok(env)
    }

    /// Start the outbox relay (again).
    pub fn start_relay(&mut self) {
        let outbox = PgOutbox::new(self.db.pool.clone(), &self.db.url);
        let cancel = CancellationToken::new();
        let relay = Relay::new(outbox, self.publisher.clone(), RelayOptions::default());
        self.relay = Some((cancel.clone(), tokio::spawn(relay.run(cancel))));
    }

    /// Stop the relay: what the saga writes stays in the outbox, as while the broker is
    /// down or no process holds the relay's lease.
    pub async fn stop_relay(&mut self) -> anyhow::Result<()> {
        if let Some((cancel, task)) = self.relay.take() {
            cancel.cancel();
            task.await?;
        }
        Ok(())
    }

    /// Start the orders and orders-saga pools (again).
    pub async fn start_pools(&mut self) -> anyhow::Result<()> {
        let registry = souk_workers::registry(self.db.pool.clone());
        let only = vec!["orders".to_owned(), "orders-saga".to_owned()];
        let runtime = Runtime::build(&self.publisher, &self.topology, &registry, &only).await?;
        let cancel = CancellationToken::new();
        self.pools = Some((cancel.clone(), tokio::spawn(runtime.run(cancel))));
        Ok(())
    }

    /// Stop the pools: in-flight handlers are abandoned after the short drain.
    pub async fn stop_pools(&mut self) -> anyhow::Result<()> {
        if let Some((cancel, task)) = self.pools.take() {
            cancel.cancel();
            task.await?;
        }
        Ok(())
    }

    async fn publish(
        &self,
        subject: &str,
        msg_id: String,
        schema: String,
        tenant: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        let mut h = HeaderMap::new();
        h.insert(headers::SCHEMA, schema.as_str());
        h.insert(headers::TENANT, tenant);
        self.publisher
            .publish(OutgoingMessage { subject: subject.into(), msg_id, headers: h, payload: payload.into() })
            .await?;
        Ok(())
    }

    /// Publish `PlaceOrder` as the ingress does.
    pub async fn place(&self, cmd: &PlaceOrder) -> anyhow::Result<()> {
        let id = format!("orders.place:{}:{}", cmd.tenant, cmd.order_id);
        self.publish(PlaceOrder::SUBJECT, id, PlaceOrder::schema_header(), &cmd.tenant, encode(cmd)).await
    }

    /// Publish a reply event onto EVT as its pool's relay would (its own message id).
    pub async fn reply<M: Message>(&self, event: &M) -> anyhow::Result<()> {
        self.reply_as(event, Uuid::now_v7().to_string()).await
    }

    /// [`reply`](Self::reply) with a chosen message id (to send one twice).
    pub async fn reply_as<M: Message>(&self, event: &M, msg_id: String) -> anyhow::Result<()> {
        self.publish(M::SUBJECT, msg_id, M::schema_header(), "t1", encode(event)).await
    }

    /// The commands sent for `order_id` so far, in order: (subject, payload).
    pub async fn commands(&self, order_id: Uuid) -> anyhow::Result<Vec<(String, serde_json::Value)>> {
        let stream = self.js.get_stream("CMD").await?;
        let last = stream.get_info().await?.state.last_sequence;
        let mut found = Vec::new();
        for seq in 1..=last {
            let msg = match stream.get_raw_message(seq).await {
                Ok(m) => m,
                // Handled PlaceOrder commands are purged; nothing else is.
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => continue,
                Err(e) => return Err(e.into()),
            };
            if !SAGA_COMMANDS.contains(&msg.subject.as_str()) {
                continue;
            }
            let body: serde_json::Value = serde_json::from_slice(&msg.payload)?;
            if body["order_id"] == order_id.to_string() {
                found.push((msg.subject.to_string(), body));
            }
        }
        Ok(found)
    }

    /// The subjects of [`commands`](Self::commands), short (`inventory.reserve`,
    /// `payments.settle:capture`, `fulfilment.request:s1`).
    pub async fn sent(&self, order_id: Uuid) -> anyhow::Result<Vec<String>> {
        Ok(self
            .commands(order_id)
            .await?
            .into_iter()
            .map(|(s, body)| {
                let short = s.trim_start_matches("souk.cmd.").to_owned();
                match (body["operation"].as_str(), body["seller"].as_str()) {
                    (Some(op), _) => format!("{short}:{op}"),
                    (_, Some(seller)) => format!("{short}:{seller}"),
                    _ => short,
                }
            })
            .collect())
    }

    /// How many of the order's commands were sent as `short` (see [`sent`](Self::sent)).
    pub async fn sent_count(&self, order_id: Uuid, short: &str) -> anyhow::Result<usize> {
        Ok(self.sent(order_id).await?.iter().filter(|c| *c == short).count())
    }

    /// Events on EVT of `subject` about `order_id`.
    pub async fn events(&self, subject: &str, order_id: Uuid) -> anyhow::Result<usize> {
        let stream = self.js.get_stream("EVT").await?;
        let last = stream.get_info().await?.state.last_sequence;
        let mut n = 0;
        for seq in 1..=last {
            let msg = stream.get_raw_message(seq).await?;
            let body: serde_json::Value = serde_json::from_slice(&msg.payload)?;
            n += usize::from(msg.subject.as_str() == subject && body["order_id"] == order_id.to_string());
        }
        Ok(n)
    }

    pub async fn saga(&self, order_id: Uuid) -> anyhow::Result<SagaView> {
        sagas::view(&self.db.pool, order_id).await?.ok_or_else(|| anyhow::anyhow!("no saga for {order_id}"))
    }

    pub async fn order_status(&self, order_id: Uuid) -> anyhow::Result<(String, Option<String>)> {
        Ok(sqlx::query_as("select status, reason from orders where order_id = $1")
            .bind(order_id)
            .fetch_one(&self.db.pool)
            .await?)
    }

    /// Wait until the saga is in `state` and everything it wrote is published.
    pub async fn until(&self, order_id: Uuid, state: &str) -> anyhow::Result<SagaView> {
        eventually(Duration::from_secs(20), || async {
            let saga = match sagas::view(&self.db.pool, order_id).await? {
                Some(s) if s.state == state => s,
                _ => return anyhow::Ok(None),
            };
            Ok(self.settled().await?.then_some(saga))
        })
        .await
    }

    /// Nothing left in flight for the saga: while neither stream stored anything new,
    /// the orders and orders-saga consumers were drained (`souk_testkit::drained`:
    /// nothing stored past their ack floors — a consumer's own counts can lag a publish
    /// already acked) and the outbox was published. A message handled before the check
    /// wrote its outbox rows before its ack; had the relay published them during the
    /// check, a stream would have grown.
    pub async fn settled(&self) -> anyhow::Result<bool> {
        let before = self.last_sequences().await?;
        for (stream, consumer) in [("CMD", "orders-place"), ("EVT", "orders-saga")] {
            if drained(&self.js, stream, consumer).await?.is_none() {
                return Ok(false);
            }
        }
        let unpublished: i64 = sqlx::query_scalar("select count(*) from outbox where published_at is null")
            .fetch_one(&self.db.pool)
            .await?;
        Ok(unpublished == 0 && self.last_sequences().await? == before)
    }

    async fn last_sequences(&self) -> anyhow::Result<(u64, u64)> {
        let mut last = [0; 2];
        for (i, stream) in ["CMD", "EVT"].into_iter().enumerate() {
            last[i] = self.js.get_stream(stream).await?.get_info().await?.state.last_sequence;
        }
        Ok((last[0], last[1]))
    }

    /// Rows of `operator_actions` on `target`: (actor, action).
    pub async fn operator_actions(&self, target: Uuid) -> anyhow::Result<Vec<(String, String)>> {
        Ok(sqlx::query_as("select actor, action from operator_actions where target = $1 order by id")
            .bind(target.to_string())
            .fetch_all(&self.db.pool)
            .await?)
    }

    pub async fn dead_letters(&self) -> anyhow::Result<u64> {
        Ok(self.js.get_stream("DLQ").await?.get_info().await?.state.messages)
    }
}

impl Drop for SagaEnv {
    fn drop(&mut self) {
        for (cancel, _) in [&self.pools, &self.relay].into_iter().flatten() {
            cancel.cancel();
        }
    }
}

/// A payable order (version 2): lines of (sku, seller, quantity, unit price).
pub(crate) fn order(lines: &[(&str, &str, i64, i64)]) -> PlaceOrder {
    let lines: Vec<PricedLine> = lines
        .iter()
        .map(|(sku, seller, quantity, unit)| PricedLine {
            sku: (*sku).into(),
            seller: (*seller).into(),
            quantity: *quantity,
            unit_price_minor: *unit,
        })
        .collect();
    PlaceOrder {
        order_id: Uuid::now_v7(),
        tenant: "t1".into(),
        buyer_id: "alice".into(),
        currency: "EUR".parse().expect("EUR"),
        total_minor: lines.iter().map(|l| l.quantity * l.unit_price_minor).sum(),
        lines,
        payment_token: Some("tok_ok".into()),
        placed_at: Utc::now(),
        cart: None,
    }
}

/// The payments pool's answer to `operation` for `cmd`'s order.
/// A payments pool's answer after its retry budget ran out.
pub(crate) fn exhausted() -> Option<PaymentFailure> {
    Some(PaymentFailure::Exhausted { attempts: 5, last_error: "provider timed out".into() })
}

pub(crate) fn payment(
    cmd: &PlaceOrder,
    operation: Operation,
    failure: Option<PaymentFailure>,
) -> PaymentResult {
    PaymentResult {
        tenant: cmd.tenant.clone(),
        order_id: cmd.order_id,
        operation,
        provider: failure.is_none().then(|| "sandbox-a".into()),
        provider_payment_id: failure.is_none().then(|| format!("pay_{}", cmd.order_id.simple())),
        failure,
        amount_minor: cmd.total_minor,
        currency: cmd.currency,
        at: Utc::now(),
    }
}

pub(crate) mod replies {
    //! The inventory and fulfilment pools' answers.
    use chrono::Utc;
    use souk_pipelines::{
        fulfilment::SellerShipped,
        inventory::{Shortage, StockCommitted, StockRejected, StockReleased, StockReserved},
        orders::PlaceOrder,
    };

    pub fn reserved(cmd: &PlaceOrder) -> StockReserved {
        StockReserved { tenant: "t1".into(), order_id: cmd.order_id, hold_until: Utc::now(), at: Utc::now() }
    }

    pub fn rejected(cmd: &PlaceOrder, sku: &str) -> StockRejected {
        let shortages = vec![Shortage { sku: sku.into(), requested: 1, available: 0 }];
        StockRejected { tenant: "t1".into(), order_id: cmd.order_id, shortages, at: Utc::now() }
    }

    pub fn committed(cmd: &PlaceOrder, committed: bool) -> StockCommitted {
        StockCommitted {
            tenant: "t1".into(),
            order_id: cmd.order_id,
            committed,
            reason: (!committed).then(|| "the hold expired".into()),
            at: Utc::now(),
        }
    }

    pub fn released(cmd: &PlaceOrder) -> StockReleased {
        StockReleased {
            tenant: "t1".into(),
            order_id: cmd.order_id,
            expired: false,
            released: true,
            reason: "cancelled".into(),
            at: Utc::now(),
        }
    }

    pub fn shipped(cmd: &PlaceOrder, seller: &str) -> SellerShipped {
        SellerShipped { tenant: "t1".into(), order_id: cmd.order_id, seller: seller.into(), at: Utc::now() }
    }
}

/// Drive `cmd`'s saga (placed already) forward with successful replies until it is in
/// `state` (one of reserving, authorizing, committing, capturing, fulfilling).
pub(crate) async fn drive_to(env: &SagaEnv, cmd: &PlaceOrder, state: &str) -> anyhow::Result<()> {
    let id = cmd.order_id;
    env.until(id, "reserving").await?;
    if state == "reserving" {
        return Ok(());
    }
    env.reply(&replies::reserved(cmd)).await?;
    env.until(id, "authorizing").await?;
    if state == "authorizing" {
        return Ok(());
    }
    env.reply(&payment(cmd, Operation::Authorize, None)).await?;
    env.until(id, "committing").await?;
    if state == "committing" {
        return Ok(());
    }
    env.reply(&replies::committed(cmd, true)).await?;
    env.until(id, "capturing").await?;
    if state == "capturing" {
        return Ok(());
    }
    env.reply(&payment(cmd, Operation::Capture, None)).await?;
    env.until(id, "fulfilling").await?;
    Ok(())
}

/// Wait until nothing is in flight (see [`SagaEnv::settled`]).
pub(crate) async fn settle(env: &SagaEnv) -> anyhow::Result<()> {
    eventually(Duration::from_secs(10), || async { anyhow::Ok(env.settled().await?.then_some(())) }).await
}
