//! Order intake: idempotency claim in Postgres, then the command to JetStream, both
//! group-committed across concurrent requests.
//!
//! 1. The request's key is claimed (`idempotency_keys`, first writer wins). The claim
//!    fixes the order id and the hash of the canonical body.
//! 2. Same key, other body → conflict (422). Same key, same body → the same order id,
//!    and the command is published again with the same `Nats-Msg-Id` (derived from the
//!    order id): if the first attempt reached JetStream this is a de-duplicated no-op,
//!    if it did not (its client got a 503) this is the publish that counts. Either way
//!    one order.
//! 3. The answer waits for the PubAck; nothing is acknowledged to the client before
//!    JetStream stored the command.

use async_nats::HeaderMap;
use bytes::Bytes;
use futures::FutureExt;
use souk_pipelines::{
    Message,
    catalog::WriteProduct,
    encode, headers,
    orders::{CheckedOutCart, PlaceOrder},
    pricing::PricedOrder,
};
use souk_stores::postgres::idempotency::{self, Claim, Record};
use souk_topologies::{
    batcher::{BatchOptions, Batcher},
    group_commit::{GroupCommitOptions, GroupCommitter},
    publisher::{OutgoingMessage, Publisher},
    trace,
};
use sqlx::PgPool;
use std::{sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;
use uuid::Uuid;

use crate::auth::Claims;

/// Tuning of the intake batchers.
#[derive(Debug, Clone, Default)]
pub struct IntakeOptions {
    /// Idempotency claims per Postgres statement.
    pub claims: BatchOptions,
    /// Commands per JetStream atomic batch (small batches go as single publishes).
    pub publishes: GroupCommitOptions,
    /// Refuse catalog writes while the catalog pool is this far behind (`None`: never).
    pub catalog_backlog: Option<crate::backlog::BacklogLimit>,
}

/// Why an order was not accepted.
#[derive(Debug)]
pub(crate) enum IntakeError {
    /// The key was used before with a different body.
    KeyReused,
    /// Postgres or JetStream did not answer in time, or refused: nothing was accepted,
    /// though the command may be stored (a PubAck lost, a timeout after the publish).
    Unavailable(String),
    /// The key could not be claimed: nothing was published.
    NotClaimed(String),
}

/// An order to place: priced from the catalog, with the token to pay with.
#[derive(Debug, Clone)]
pub(crate) struct NewOrder {
    pub priced: PricedOrder,
    pub payment_token: String,
    /// A checkout's cart lines, for the orders pool to empty with the order.
    pub cart: Option<CheckedOutCart>,
}

/// An accepted order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Accepted {
    pub order_id: Uuid,
    /// A repeat of an earlier request with the same key and body.
    pub replay: bool,
}

pub(crate) struct Intake {
    claims: Batcher<Claim, Result<Record, String>>,
    commits: GroupCommitter,
    timeout: Duration,
}

impl Intake {
    pub fn spawn(
        pool: PgPool,
        nats: async_nats::Client,
        options: IntakeOptions,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> (Intake, TaskTracker) {
        let (claims, claim_tasks) = Batcher::spawn(
            options.claims,
            cancel.clone(),
            Arc::new(move |batch: Vec<Claim>| {
                let pool = pool.clone();
                async move {
                    let n = batch.len();
                    metrics::histogram!("souk_ingress_claim_batch_size").record(n as f64);
                    let started = std::time::Instant::now();
                    // A batch refused because of one claim is retried without it.
                    let claimed = idempotency::claim_isolating(&pool, &batch).await;
                    metrics::histogram!("souk_ingress_claim_seconds").record(started.elapsed().as_secs_f64());
                    match claimed {
                        Ok(records) => records.into_iter().map(|r| r.map_err(|e| e.to_string())).collect(),
                        Err(e) => vec![Err(e.to_string()); n],
                    }
                }
                .boxed()
            }),
        );
        let (commits, commit_tasks) =
            GroupCommitter::spawn(Publisher::new(nats, timeout), options.publishes, cancel);
        let tracker = TaskTracker::new();
        tracker.spawn(async move {
            claim_tasks.wait().await;
            commit_tasks.wait().await;
        });
        (Intake { claims, commits, timeout }, tracker)
    }

    /// Accept `order` from `principal` under idempotency `key` (`request_hash`: the
    /// hash of the canonical request, which a replay of the key must repeat), within
    /// the write timeout. `POST /v1/orders` and `POST /v1/checkout` both place orders
    /// here, under one key space: a key cannot make two orders, whichever route it
    /// was sent to.
    pub async fn place(
        &self,
        principal: &Claims,
        key: &str,
        request_hash: Vec<u8>,
        order: &NewOrder,
    ) -> Result<Accepted, IntakeError> {
        tokio::time::timeout(self.timeout, self.claim_and_publish(principal, key, request_hash, order))
            .await
            .unwrap_or_else(|_| {
                Err(IntakeError::Unavailable(format!("no acknowledgement within {:?}", self.timeout)))
            })
    }

    async fn claim_and_publish(
        &self,
        principal: &Claims,
        key: &str,
        request_hash: Vec<u8>,
        order: &NewOrder,
    ) -> Result<Accepted, IntakeError> {
        let record = self.claim(principal, key.to_owned(), request_hash).await?;
        let command = PlaceOrder {
            order_id: record.order_id,
            tenant: principal.tenant.clone(),
            buyer_id: principal.sub.clone(),
            currency: order.priced.currency,
            lines: order.priced.lines.clone(),
            total_minor: order.priced.total_minor,
            payment_token: Some(order.payment_token.clone()),
            placed_at: chrono::Utc::now(),
            cart: order.cart.clone(),
        };
        let mut h = HeaderMap::new();
        // The command continues the trace from its own span, which lasts until the PubAck.
        let publish = tracing::info_span!("publish", subject = PlaceOrder::SUBJECT);
        publish.in_scope(|| trace::inject_current(&mut h));
        h.insert(headers::SCHEMA, PlaceOrder::schema_header().as_str());
        h.insert(headers::TENANT, principal.tenant.as_str());
        let msg_id = message_id(&principal.tenant, record.order_id);
        h.insert(headers::CAUSATION_ID, msg_id.as_str());
        let ack = self
            .commits
            .publish(OutgoingMessage {
                subject: PlaceOrder::SUBJECT.into(),
                msg_id,
                headers: h,
                payload: Bytes::from(encode(&command)),
            })
            .instrument(publish)
            .await
            .map_err(|e| IntakeError::Unavailable(format!("JetStream: {e}")))?;
        tracing::debug!(order_id = %record.order_id, seq = ack.sequence, duplicate = ack.duplicate, "order command stored");
        Ok(Accepted { order_id: record.order_id, replay: !record.fresh })
    }
}

/// A catalog write the ingress accepted.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptedWrite {
    pub write_id: Uuid,
    /// A repeat of an earlier request with the same key and body.
    pub replay: bool,
}

impl Intake {
    /// Claim `key` for `principal` with the hash of its request (batched with the
    /// concurrent claims): the record fixes the id of the order or write; the same key
    /// with another request is `KeyReused`.
    async fn claim(
        &self,
        principal: &Claims,
        key: String,
        request_hash: Vec<u8>,
    ) -> Result<Record, IntakeError> {
        let claim = Claim {
            tenant: principal.tenant.clone(),
            principal: principal.sub.clone(),
            key,
            request_hash: request_hash.clone(),
            order_id: Uuid::now_v7(),
        };
        let record = self
            .claims
            .call(claim)
            .await
            .map_err(|e| IntakeError::NotClaimed(e.to_string()))?
            .map_err(|e| IntakeError::NotClaimed(format!("idempotency store: {e}")))?;
        if record.request_hash != request_hash {
            return Err(IntakeError::KeyReused);
        }
        Ok(record)
    }

    /// Accept a catalog write from `principal` under idempotency `key`: claim the key
    /// (its record fixes the write id; keys live apart from order keys, see
    /// `idempotency::CATALOG_WRITE_PREFIX`), build the command with that id, publish it
    /// through the same group committer as orders and wait for its PubAck.
    pub async fn write_product(
        &self,
        principal: &Claims,
        key: &str,
        request_hash: Vec<u8>,
        command: impl FnOnce(Uuid) -> WriteProduct,
    ) -> Result<AcceptedWrite, IntakeError> {
        let work = async {
            let record = self
                .claim(principal, format!("{}{key}", idempotency::CATALOG_WRITE_PREFIX), request_hash)
                .await?;
            let cmd = command(record.order_id);
            let publish = tracing::info_span!("publish", subject = WriteProduct::SUBJECT);
            let msg = publish.in_scope(|| OutgoingMessage::command(&cmd, cmd.message_id(), &cmd.tenant));
            let ack = self
                .commits
                .publish(msg)
                .instrument(publish)
                .await
                .map_err(|e| IntakeError::Unavailable(format!("JetStream: {e}")))?;
            tracing::debug!(write_id = %cmd.write_id, seq = ack.sequence, duplicate = ack.duplicate, "catalog write stored");
            Ok(AcceptedWrite { write_id: record.order_id, replay: !record.fresh })
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(IntakeError::Unavailable(format!("no acknowledgement within {:?}", self.timeout)))
        })
    }
}

impl Intake {
    /// Publish a seller's ship (after the claim of its `key`, when one was sent: the
    /// same key with another request is `KeyReused`) through the group committer and
    /// wait for its PubAck. Its message id is the order and seller's, so shipping twice
    /// stores one command (JetStream's dedupe window, then the pool's inbox). Returns
    /// whether it repeats a claimed request.
    pub async fn mark_shipped(
        &self,
        principal: &Claims,
        key: Option<&str>,
        request_hash: Vec<u8>,
        cmd: &souk_pipelines::fulfilment::MarkShipped,
    ) -> Result<bool, IntakeError> {
        let work = async {
            let mut replay = false;
            if let Some(key) = key {
                let key = format!("{}{key}", idempotency::FULFILMENT_SHIP_PREFIX);
                replay = !self.claim(principal, key, request_hash).await?.fresh;
            }
            let msg_id = format!("fulfilment.ship:{}:{}:{}", cmd.tenant, cmd.order_id, cmd.seller);
            let publish = tracing::info_span!("publish", subject = souk_pipelines::subjects::FULFILMENT_SHIP);
            let msg = publish.in_scope(|| OutgoingMessage::command(cmd, msg_id, &cmd.tenant));
            self.commits
                .publish(msg)
                .instrument(publish)
                .await
                .map_err(|e| IntakeError::Unavailable(format!("JetStream: {e}")))?;
            Ok(replay)
        };
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(IntakeError::Unavailable(format!("no acknowledgement within {:?}", self.timeout)))
        })
    }
}

/// SHA-256 of `bytes` (the canonical form of a request, for its idempotency claim).
pub(crate) fn request_hash(bytes: &[u8]) -> Vec<u8> {
    sha256(bytes)
}

/// `Nats-Msg-Id` of an order command (see [`souk_pipelines::orders::place_message_id`]).
fn message_id(tenant: &str, order_id: Uuid) -> String {
    souk_pipelines::orders::place_message_id(tenant, order_id)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref().to_vec()
}
