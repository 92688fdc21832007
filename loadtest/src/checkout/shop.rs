//! The checkout benchmark's shop and its buyers: the products on sale, the clients'
//! operation (cart → checkout → confirmed), and the listener that tells each client its
//! order's outcome from the `EVT` stream.
//!
//! A client learns that its order is confirmed from `OrderConfirmed` on `EVT`, read by
//! ONE ordered consumer for every client, rather than by polling `GET /v1/orders/{id}`:
//! polls would cost souk CPU (an HTTP request and a query each) and add up to the poll
//! interval to every latency. The event is published by the outbox relay after the
//! saga's last transaction committed, so it arrives no earlier than a poll could see
//! `confirmed`.

use anyhow::Context;
use async_nats::jetstream::{self, consumer::DeliverPolicy};
use futures::{FutureExt, StreamExt};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use souk_ingress::{Claims, Keys, Role};
use souk_pipelines::{catalog::ProductFields, subjects};
use souk_stores::postgres::{inventory, products};
use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::{sync::oneshot, time::Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{load::Op, payload::TENANT};

/// Units of each SKU: far more than any run sells, so no checkout is refused for stock
/// and the figures are those of the happy path.
pub const STOCK: i64 = 1_000_000_000;

/// SKU `i` of the shop.
pub fn sku(i: usize) -> String {
    format!("BENCH-SKU-{i:06}")
}

/// Put `skus` products on sale, spread round robin over `sellers` sellers, each with
/// [`STOCK`] units on hand (as the catalog pool writes a product: the product row and
/// its stock row), and analyze the two tables.
pub async fn seed(pool: &sqlx::PgPool, skus: usize, sellers: usize) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for i in 0..skus {
        let sku = sku(i);
        let seller = format!("bench-seller-{}", i % sellers.max(1));
        let fields = ProductFields {
            title: format!("bench product {i}"),
            description: format!("{sku}, sold by {seller}"),
            category: "home/kitchen/mugs".into(),
            attributes: Default::default(),
            price_minor: 500 + (i as i64 % 50) * 100,
            currency: "EUR".parse()?,
            stock: STOCK,
            images: Vec::new(),
        };
        products::put(&mut tx, TENANT, &sku, &seller, &fields, 1, chrono::Utc::now()).await?;
        inventory::set_available(&mut tx, TENANT, &sku, STOCK, None, false).await?;
    }
    tx.commit().await?;
    // Statistics, as a shop that has been running has them: the run is over before
    // autovacuum's first look (a minute), and the planner's guesses for empty tables
    // (a catalog read that scans every product of the tenant) would be measured instead.
    sqlx::query("analyze products, stock").execute(pool).await?;
    Ok(())
}

/// One buyer: its JWT. Each buyer has one cart, so one checkout in flight at a time.
#[derive(Debug, Clone)]
pub struct Buyer {
    token: String,
}

/// `n` buyer tokens valid for `ttl`.
pub fn buyers(keys: &Keys, n: usize, ttl: Duration) -> Vec<Buyer> {
    (0..n)
        .map(|i| {
            let claims = Claims::new(&format!("checkout-buyer-{i}"), TENANT, vec![Role::Buyer], ttl);
            Buyer { token: keys.mint(&claims) }
        })
        .collect()
}

/// How an order ended, as `EVT` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Confirmed,
    Cancelled,
}

enum Entry {
    /// A client waits for this order.
    Waiting(oneshot::Sender<(Outcome, Instant)>),
    /// The event came before the client registered (the 202 was still on its way).
    Arrived(Outcome, Instant),
}

/// Orders' outcomes, handed from the one listener to the client waiting for each.
#[derive(Default)]
pub struct Outcomes {
    entries: Mutex<HashMap<Uuid, Entry>>,
}

impl Outcomes {
    /// Wait for `order`'s outcome: (outcome, when the event arrived).
    pub fn wait(&self, order: Uuid) -> oneshot::Receiver<(Outcome, Instant)> {
        let (tx, rx) = oneshot::channel();
        let Ok(mut entries) = self.entries.lock() else { return rx };
        match entries.remove(&order) {
            Some(Entry::Arrived(outcome, at)) => {
                let _ = tx.send((outcome, at));
            }
            _ => {
                entries.insert(order, Entry::Waiting(tx));
            }
        }
        rx
    }

    /// `order` ended with `outcome` at `at`.
    pub fn arrived(&self, order: Uuid, outcome: Outcome, at: Instant) {
        let Ok(mut entries) = self.entries.lock() else { return };
        match entries.remove(&order) {
            Some(Entry::Waiting(tx)) => {
                let _ = tx.send((outcome, at));
            }
            // A repeated event (the relay publishes at least once) is kept, harmlessly.
            _ => {
                entries.insert(order, Entry::Arrived(outcome, at));
            }
        }
    }

    /// Forget everything (between phases: a timed-out client's order may still end).
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

/// Follow `OrderConfirmed` and `OrderCancelled` on `EVT` from now on, until `stop`.
pub async fn listen(
    js: &jetstream::Context,
    outcomes: Arc<Outcomes>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let stream = js.get_stream("EVT").await.context("reading stream EVT")?;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subjects: vec![subjects::ORDERS_CONFIRMED.into(), subjects::ORDERS_CANCELLED.into()],
            deliver_policy: DeliverPolicy::New,
            ..Default::default()
        })
        .await
        .context("creating the outcome consumer on EVT")?;
    let mut messages = consumer.messages().await?;
    Ok(tokio::spawn(async move {
        #[derive(serde::Deserialize)]
        struct Event {
            order_id: Uuid,
        }
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break,
                next = messages.next() => next,
            };
            let Some(Ok(msg)) = next else {
                eprintln!("warning: the outcome consumer on EVT ended");
                break;
            };
            let at = Instant::now();
            let outcome = if msg.subject.as_str() == subjects::ORDERS_CONFIRMED {
                Outcome::Confirmed
            } else {
                Outcome::Cancelled
            };
            if let Ok(e) = serde_json::from_slice::<Event>(&msg.payload) {
                outcomes.arrived(e.order_id, outcome, at);
            }
        }
    }))
}

/// Buyers not in a checkout right now.
#[derive(Clone)]
struct Idle(Arc<Mutex<Vec<Buyer>>>);

/// A buyer taken from [`Idle`]; goes back when dropped (also when its operation times out).
struct Taken {
    buyer: Option<Buyer>,
    idle: Idle,
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let (Some(b), Ok(mut idle)) = (self.buyer.take(), self.idle.0.lock()) {
            idle.push(b);
        }
    }
}

/// POST → confirmed latencies of one phase: (when confirmed, µs).
pub type Confirmations = Arc<Mutex<Vec<(Instant, u64)>>>;

/// The clients' operation: an idle buyer puts `lines` SKUs in its cart
/// (`PUT /v1/cart/items/{sku}`), checks out (`POST /v1/checkout`, `tok_ok`, a fresh
/// `Idempotency-Key`), and waits for its order's outcome. `Ok(1)` when confirmed; the
/// POST → confirmed time goes to `confirmed`.
pub struct Checkout {
    pub client: reqwest::Client,
    pub base: String,
    pub skus: usize,
    pub lines: usize,
    pub outcomes: Arc<Outcomes>,
}

impl Checkout {
    pub fn op(self, buyers: Vec<Buyer>, confirmed: Confirmations) -> Op {
        let idle = Idle(Arc::new(Mutex::new(buyers)));
        let run = crate::http::key_run();
        let next = Arc::new(AtomicU64::new(0));
        let this = Arc::new(self);
        Arc::new(move || {
            let n = next.fetch_add(1, Ordering::Relaxed);
            let buyer = idle.0.lock().ok().and_then(|mut b| b.pop());
            let taken = Taken { buyer, idle: idle.clone() };
            let (this, confirmed, key) = (this.clone(), confirmed.clone(), format!("bench-{run}-{n}"));
            async move {
                let Some(buyer) = taken.buyer.as_ref() else { return Err("no idle buyer".to_owned()) };
                let bearer = format!("Bearer {}", buyer.token);
                // Spread over the SKUs (a multiplicative hash of n), `lines` distinct ones.
                let first = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) as usize % this.skus;
                for line in 0..this.lines {
                    let sku = sku((first + line * this.skus / this.lines.max(1)) % this.skus);
                    let r = this
                        .client
                        .put(format!("{}/v1/cart/items/{sku}", this.base))
                        .header(AUTHORIZATION, &bearer)
                        .header(CONTENT_TYPE, "application/json")
                        .body(r#"{"quantity":1}"#)
                        .send()
                        .await
                        .map_err(classify)?;
                    let status = r.status();
                    r.bytes().await.map_err(classify)?;
                    if !status.is_success() {
                        return Err(format!("cart {}", status.as_u16()));
                    }
                }
                let posted = Instant::now();
                let r = this
                    .client
                    .post(format!("{}/v1/checkout", this.base))
                    .header(AUTHORIZATION, &bearer)
                    .header("idempotency-key", key)
                    .header(CONTENT_TYPE, "application/json")
                    .body(r#"{"payment_token":"tok_ok"}"#)
                    .send()
                    .await
                    .map_err(classify)?;
                let status = r.status();
                let body = r.bytes().await.map_err(classify)?;
                if status != reqwest::StatusCode::ACCEPTED {
                    return Err(format!("checkout {}", status.as_u16()));
                }
                #[derive(serde::Deserialize)]
                struct Accepted {
                    order_id: Uuid,
                }
                let order = serde_json::from_slice::<Accepted>(&body)
                    .map_err(|_| "checkout answer without an order id".to_owned())?
                    .order_id;
                let (outcome, at) =
                    this.outcomes.wait(order).await.map_err(|_| "outcome listener gone".to_owned())?;
                if outcome == Outcome::Cancelled {
                    return Err("cancelled".into());
                }
                let micros =
                    u64::try_from(at.saturating_duration_since(posted).as_micros()).unwrap_or(u64::MAX);
                if let Ok(mut c) = confirmed.lock() {
                    c.push((at, micros.max(1)));
                }
                drop(taken);
                Ok(1)
            }
            .boxed()
        })
    }
}

fn classify(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connect".into()
    } else {
        "transport".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_outcome_reaches_its_client_whether_it_comes_before_or_after_the_wait() {
        let outcomes = Outcomes::default();
        let (early, late) = (Uuid::new_v4(), Uuid::new_v4());
        let t = Instant::now();
        outcomes.arrived(early, Outcome::Confirmed, t);
        assert_eq!(outcomes.wait(early).await.ok(), Some((Outcome::Confirmed, t)));
        let waiting = outcomes.wait(late);
        outcomes.arrived(late, Outcome::Cancelled, t);
        assert_eq!(waiting.await.ok(), Some((Outcome::Cancelled, t)));
        assert!(outcomes.entries.lock().map(|e| e.is_empty()).unwrap_or(false), "nothing left over");
    }
}
