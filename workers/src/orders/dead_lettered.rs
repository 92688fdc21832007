//! `souk.dlq.orders-place` → the order reads `failed`, with the reason.
//!
//! A dead-lettered intake command would otherwise leave its order `pending` for ever:
//! the client was told 202 and nothing else would ever happen. This handler reads the
//! dead letter (the original command's body and headers, plus `souk-dlq-error`) and
//! marks the order failed — writing its row when there is none — in one transaction
//! with its inbox record ([`Deduplicated`]). An order that got further (a worker that
//! committed and died before acking; a redrive that succeeded first) is left alone,
//! and a redrive that succeeds later moves a failed order on to `accepted`.
//!
//! It only reads the dead-letter stream: `DLQ` is a limits stream, so acks here move
//! this consumer's floor and remove nothing; dead letters stay for `souk dlq`.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::orders::PlaceOrder;
use souk_stores::postgres::orders;
use souk_topologies::runtime::Delivery;
use sqlx::PgConnection;

use crate::{
    dead_letter,
    dedupe::{Apply, ApplyError},
};

/// Marks the orders of dead-lettered `orders.place` commands failed.
#[derive(Debug, Clone, Copy, Default)]
pub struct OrderDeadLettered;

impl Apply for OrderDeadLettered {
    fn tables(&self) -> &'static [&'static str] {
        &["orders"]
    }

    /// The dead letter of a command in a newer schema (a new release dead-lettered it,
    /// this one cannot read it) waits for the upgrade: taken as unreadable, its order
    /// would be written with no lines and the dead letter recorded as done.
    fn too_new(&self, d: &Delivery) -> Option<String> {
        crate::schema::too_new::<PlaceOrder>(d)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            let reason = dead_letter::reason(d);
            let failed = match d.decode::<PlaceOrder>() {
                Ok(cmd) => orders::mark_failed(tx, &cmd, &reason).await?,
                // Unreadable: the order id is the last part of the ingress's message
                // id (`orders.place:<tenant>:<order id>`), its owner in its claim.
                Err(e) => match dead_letter::original_id(d) {
                    Some(order_id) => {
                        orders::mark_failed_unreadable(tx, order_id, &format!("{reason} ({e})")).await?
                    }
                    None => false,
                },
            };
            if failed {
                metrics::counter!("souk_orders_failed_total").increment(1);
                tracing::warn!(reason = %reason, "order marked failed: its command was dead-lettered");
            } else {
                tracing::info!(reason = %reason, "dead-lettered order command: its order is past failing, or unknown");
            }
            Ok(())
        }
        .boxed()
    }
}
