//! `souk.dlq.catalog-write` → the write reads `failed`, with the reason.
//!
//! A dead-lettered catalog write would otherwise read `pending` for ever (and, once its
//! claim expired, vanish): the client was told 202 and nothing else would happen. This
//! handler reads the dead letter (the original command's body and headers, plus
//! `souk-dlq-error`) and records the write `failed` in one transaction with its inbox
//! record ([`Deduplicated`](crate::dedupe::Deduplicated)). A write decided already (a
//! worker that committed and died before acking; a redrive that succeeded first) is
//! left alone, and a redrive that succeeds later replaces `failed` with its outcome.
//!
//! It only reads the dead-letter stream: `DLQ` is a limits stream, so acks here move
//! this consumer's floor and remove nothing; dead letters stay for `souk dlq`.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::catalog::WriteProduct;
use souk_stores::postgres::products;
use souk_topologies::runtime::Delivery;
use sqlx::PgConnection;

use crate::{
    dead_letter,
    dedupe::{Apply, ApplyError},
};

/// Records dead-lettered `catalog.write` commands as failed writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteDeadLettered;

impl Apply for WriteDeadLettered {
    fn tables(&self) -> &'static [&'static str] {
        &["catalog_writes"]
    }

    /// The dead letter of a command in a newer schema waits for the upgrade: taken as
    /// unreadable, it would lose its seller and SKU.
    fn too_new(&self, d: &Delivery) -> Option<String> {
        crate::schema::too_new::<WriteProduct>(d)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            let reason = dead_letter::reason(d);
            let failed = match d.decode::<WriteProduct>() {
                Ok(cmd) => {
                    let write = products::FailedWrite {
                        tenant: &cmd.tenant,
                        write_id: cmd.write_id,
                        seller: &cmd.seller,
                        sku: &cmd.sku,
                        actor: &cmd.actor,
                    };
                    products::mark_failed(tx, &write, &reason).await?
                }
                // Unreadable: the write id is the last part of its message id
                // (`catalog.write:<tenant>:<write id>`; a redrive keeps it as the
                // causation id), its sender in its claim.
                Err(e) => match dead_letter::original_id(d) {
                    Some(write_id) => {
                        products::mark_failed_from_claim(tx, write_id, &format!("{reason} ({e})")).await?
                    }
                    None => false,
                },
            };
            if failed {
                metrics::counter!("souk_catalog_writes_total", "outcome" => "failed").increment(1);
                tracing::warn!(reason = %reason, "catalog write marked failed: its command was dead-lettered");
            } else {
                tracing::info!(reason = %reason, "dead-lettered catalog write: decided already, or unknown");
            }
            Ok(())
        }
        .boxed()
    }
}
