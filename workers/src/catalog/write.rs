//! `souk.cmd.catalog.write` → the product in Postgres, the write's outcome, and a
//! `ProductChanged` outbox row, in one transaction.
//!
//! Runs under [`Deduplicated`](crate::dedupe::Deduplicated): the inbox records the
//! command's message id in the same transaction. Writes of one SKU serialise on its
//! lock (`products::lock`), so each decides on what the previous one committed:
//!
//! - a SKU owned by another seller, a write requested before the one the product holds
//!   (superseded: it arrived late, after a retry or redelivery), an `expected_version` (`If-Match`) that is not the
//!   stored version, a patch or delete of a missing or deleted product, or a patch that
//!   leaves the product invalid is **rejected**: the outcome is recorded with the
//!   reason, nothing else changes, and the command is acked (a business answer, not a
//!   failure: it is not dead-lettered);
//! - anything else is **applied** at the stored version + 1 (1 for a new SKU; a delete
//!   takes a version too and keeps the row), with one `ProductChanged` carrying the
//!   whole product (`None` for a delete). Its outbox aggregate is the product, so the
//!   relay publishes one product's changes in version order.
//!
//! An unreadable command is poison (dead-lettered); a store outage holds it
//! (`store::store_error`). A write id already decided (a replay under another message
//! id) changes nothing.

use futures::{FutureExt, future::BoxFuture};
use souk_pipelines::{
    Message,
    catalog::{FieldError, Product, ProductChange, ProductChanged, WriteProduct},
    encode, headers,
};
use souk_stores::postgres::{
    self as pg, inventory, outbox,
    products::{self, Outcome, StoredProduct},
};
use souk_topologies::{runtime::Delivery, trace};
use sqlx::PgConnection;

use crate::dedupe::{Apply, ApplyError};

/// Applies `WriteProduct` commands.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteProductHandler;

/// What a write does, decided on the locked row.
enum Decision {
    /// Store these fields.
    Store {
        fields: souk_pipelines::catalog::ProductFields,
    },
    Delete,
    Reject(String),
}

impl Apply for WriteProductHandler {
    fn tables(&self) -> &'static [&'static str] {
        &["products", "catalog_writes", "stock", "outbox"]
    }

    /// A command of a newer schema waits for the upgrade instead of being dead-lettered.
    fn too_new(&self, d: &Delivery) -> Option<String> {
        crate::schema::too_new::<WriteProduct>(d)
    }

    /// The SKU: writes of one SKU serialise on its lock (`products::lock`). Read from
    /// the payload's two key fields alone (the whole command is decoded once, in
    /// `apply`); an unreadable payload has no key and fails in `apply`.
    fn lock_key(&self, d: &Delivery) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Key<'a> {
            #[serde(borrow)]
            tenant: std::borrow::Cow<'a, str>,
            #[serde(borrow)]
            sku: std::borrow::Cow<'a, str>,
        }
        let key: Key<'_> = serde_json::from_slice(&d.payload).ok()?;
        Some(format!("{}/{}", key.tenant, key.sku))
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        d: &'a Delivery,
    ) -> BoxFuture<'a, Result<(), ApplyError>> {
        async move {
            let cmd: WriteProduct =
                d.decode().map_err(|e| ApplyError::Message(format!("unreadable catalog write: {e}")))?;
            apply(tx, &cmd).await.map_err(ApplyError::from)
        }
        .boxed()
    }
}

/// Apply `cmd` in the transaction `tx` (see the module docs).
pub async fn apply(tx: &mut PgConnection, cmd: &WriteProduct) -> Result<(), pg::Error> {
    let stored = products::lock(tx, &cmd.tenant, &cmd.sku).await?;
    if products::write_decided(tx, &cmd.tenant, cmd.write_id).await? {
        return Ok(());
    }
    let version = stored.as_ref().map_or(1, |s| s.product.version + 1);
    let (outcome, product) = match decide(cmd, stored.as_ref()) {
        Decision::Reject(reason) => {
            metrics::counter!("souk_catalog_writes_total", "outcome" => "rejected").increment(1);
            tracing::info!(sku = %cmd.sku, write_id = %cmd.write_id, reason = %reason, "catalog write rejected");
            (Outcome::Rejected { reason }, None)
        }
        Decision::Store { fields } => {
            let product =
                products::put(tx, &cmd.tenant, &cmd.sku, &cmd.seller, &fields, version, cmd.requested_at)
                    .await?;
            // The units available follow the seller's stock, in this transaction (units
            // held for checkouts stay promised beside them: `inventory::set_available`)
            // — but only when this write states it. A patch of the price keeps the
            // stored fields' stock, which is the seller's last figure, not what is left
            // after sales: setting it again would put sold units back on sale.
            // A product created again after its deletion starts its shelf afresh.
            if cmd.change.states_stock() {
                let revived = stored.as_ref().is_none_or(|s| s.is_deleted())
                    || cmd.stock_basis.is_some_and(|b| b.revives);
                inventory::set_available(tx, &cmd.tenant, &cmd.sku, fields.stock, cmd.stock_basis, revived)
                    .await?;
            }
            (Outcome::Applied { version }, Some(Some(product)))
        }
        Decision::Delete => {
            products::mark_deleted(tx, &cmd.tenant, &cmd.sku, version, cmd.requested_at).await?;
            inventory::withdraw_all(tx, &cmd.tenant, &cmd.sku).await?;
            (Outcome::Applied { version }, Some(None))
        }
    };
    products::record_outcome(tx, &cmd.tenant, cmd.write_id, &cmd.seller, &cmd.sku, &cmd.actor, &outcome)
        .await?;
    if let Some(product) = product {
        metrics::counter!("souk_catalog_writes_total", "outcome" => "applied").increment(1);
        outbox::enqueue(tx, changed_event(cmd, version, product)).await?;
    }
    Ok(())
}

fn decide(cmd: &WriteProduct, stored: Option<&StoredProduct>) -> Decision {
    if let Some(s) = stored
        && s.product.seller != cmd.seller
    {
        return Decision::Reject(format!("sku {} is owned by another seller", cmd.sku));
    }
    if let Some(expected) = cmd.expected_version {
        // A deleted product is no product to a condition, as at the ingress (its GET is
        // 404, so no client holds its version as a current ETag).
        let found = stored.filter(|s| !s.is_deleted()).map(|s| s.product.version);
        if found != Some(expected) {
            let found = found.map_or("no product".to_owned(), |v| format!("version {v}"));
            return Decision::Reject(format!("version conflict: expected version {expected}, found {found}"));
        }
    }
    // Writes of one SKU can reach the pool out of the order they were sent (a retry
    // after a transient error or a redelivery runs after a later write): one requested
    // before the write the product holds would put an older intent over a newer one.
    // Equal times (the rows of one import) apply in arrival order.
    if let Some(last) = stored.and_then(|s| s.requested_at)
        && cmd.requested_at < last
    {
        return Decision::Reject(format!(
            "superseded: a write of sku {} requested later ({}) was applied first",
            cmd.sku,
            last.to_rfc3339()
        ));
    }
    if let Err(errors) = cmd.validate() {
        return Decision::Reject(format!("invalid: {}", describe(&errors)));
    }
    let live = stored.filter(|s| !s.is_deleted());
    match (&cmd.change, live) {
        (ProductChange::Put { fields }, _) => Decision::Store { fields: fields.clone() },
        (ProductChange::Patch { .. }, None) => {
            Decision::Reject(format!("patch of a missing or deleted product: {}", cmd.sku))
        }
        (ProductChange::Patch { patch }, Some(s)) => {
            let patched = patch.apply_to(&s.product.fields);
            match patched.validate() {
                Ok(()) => Decision::Store { fields: patched },
                Err(errors) => Decision::Reject(format!("invalid after the patch: {}", describe(&errors))),
            }
        }
        (ProductChange::Delete, None) => {
            Decision::Reject(format!("delete of a missing or deleted product: {}", cmd.sku))
        }
        (ProductChange::Delete, Some(_)) => Decision::Delete,
    }
}

fn describe(errors: &[FieldError]) -> String {
    errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; ")
}

/// The outbox aggregate of a product: its changes are published in the order written.
pub fn aggregate_id(tenant: &str, sku: &str) -> String {
    format!("product:{tenant}:{sku}")
}

fn changed_event(cmd: &WriteProduct, version: i64, product: Option<Product>) -> outbox::NewMessage {
    let mut h = trace::outbox_context(&trace::current_context_pairs(), ProductChanged::SUBJECT);
    let event = ProductChanged {
        tenant: cmd.tenant.clone(),
        sku: cmd.sku.clone(),
        seller: cmd.seller.clone(),
        version,
        changed_at: product.as_ref().map_or_else(chrono::Utc::now, |p| p.updated_at),
        product,
    };
    h.push((headers::SCHEMA.into(), ProductChanged::schema_header()));
    h.push((headers::TENANT.into(), cmd.tenant.clone()));
    h.push((headers::CAUSATION_ID.into(), cmd.message_id()));
    outbox::NewMessage {
        aggregate_id: aggregate_id(&cmd.tenant, &cmd.sku),
        subject: ProductChanged::SUBJECT.into(),
        headers: h,
        payload: encode(&event),
    }
}
