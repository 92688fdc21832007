//! Postgres: connection, migrations, and the repositories of the system of record.

pub mod carts;
mod config;
pub mod deployment;
pub mod follow;
pub mod fulfilments;
pub mod idempotency;
pub mod inbox;
pub mod inventory;
pub mod operator_actions;
pub mod orders;
pub mod outbox;
pub mod payments;
pub mod products;
pub mod sagas;
mod store;

pub use config::{PgOptions, database_for_dir, redact};
pub use store::{
    Error, Housekeeping, LOST_REASON, begin, begin_snapshot, connect, drop_database, ensure_database,
    housekeeping, migrate, schema_versions,
};
