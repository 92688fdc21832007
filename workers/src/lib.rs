//! # souk-workers — the domain handlers
//!
//! Each module handles one consumer's messages: decode, apply the change to Postgres
//! together with the inbox record and the outbox rows in ONE transaction, and answer
//! with an [`Outcome`](souk_topologies::runtime::Outcome). Handlers never publish:
//! the outbox relay does, after commit.
//!
//! Handlers that are not keyed by their own aggregate — every event handler — wrap
//! their changes in [`dedupe::Deduplicated`], which applies each message id once.
//!
//! [`registry`] names every handler the way topology pools refer to them.

pub mod catalog;
mod dead_letter;
pub mod dedupe;
pub mod fulfilment;
pub mod inventory;
pub mod orders;
pub mod payments;
mod schema;
mod store;

use souk_stores::search::SearchStore;
use souk_topologies::runtime::Registry;
use sqlx::PgPool;
use std::sync::Arc;

/// What handlers need besides Postgres. A handler whose dependency is missing is not
/// registered (a pool asking for it fails at start, naming it).
#[derive(Clone, Default)]
pub struct Dependencies {
    /// The search index, for `catalog.index`.
    pub search: Option<Arc<dyn SearchStore>>,
    /// The payment providers (primary first), for `payments.authorize` and `payments.settle`.
    pub payments: Option<Arc<payments::Gateway>>,
}

/// Every handler that needs only Postgres, under the names the topology's pools use.
pub fn registry(pool: PgPool) -> Registry {
    registry_with(pool, &Dependencies::default())
}

/// Every handler, under the names the topology's pools use.
pub fn registry_with(pool: PgPool, dependencies: &Dependencies) -> Registry {
    let mut registry = Registry::default();
    if let Some(store) = &dependencies.search {
        registry.register(catalog::INDEX_HANDLER, catalog::IndexProducts::new(store.clone()));
    }
    if let Some(gateway) = &dependencies.payments {
        for (name, consumer, kind) in [
            (payments::AUTHORIZE_HANDLER, payments::AUTHORIZE_CONSUMER, payments::Kind::Authorize),
            (payments::SETTLE_HANDLER, payments::SETTLE_CONSUMER, payments::Kind::Settle),
        ] {
            registry.register(
                name,
                payments::PaymentsHandler::new(pool.clone(), consumer, gateway.clone(), kind),
            );
        }
    }
    registry.register(
        orders::PLACE_HANDLER,
        orders::PlaceOrderHandler::new(pool.clone(), orders::PLACE_CONSUMER),
    );
    registry.register(
        orders::DEAD_LETTERED_HANDLER,
        dedupe::Deduplicated::new(pool.clone(), orders::DEAD_LETTERED_CONSUMER, orders::OrderDeadLettered),
    );
    registry.register(
        orders::saga::HANDLER,
        dedupe::Deduplicated::new(pool.clone(), orders::saga::CONSUMER, orders::saga::SagaReplies),
    );
    registry.register(
        catalog::DEAD_LETTERED_HANDLER,
        dedupe::Deduplicated::new(pool.clone(), catalog::DEAD_LETTERED_CONSUMER, catalog::WriteDeadLettered),
    );
    registry.register(
        inventory::HANDLER,
        dedupe::Deduplicated::new(pool.clone(), inventory::CONSUMER, inventory::InventoryHandler),
    );
    registry.register(
        fulfilment::HANDLER,
        dedupe::Deduplicated::new(pool.clone(), fulfilment::CONSUMER, fulfilment::FulfilmentHandler),
    );
    registry.register(
        catalog::WRITE_HANDLER,
        dedupe::Deduplicated::new(pool, catalog::WRITE_CONSUMER, catalog::WriteProductHandler),
    );
    registry
}
