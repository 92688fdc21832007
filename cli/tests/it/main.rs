//! End-to-end flows through a whole node (ingress → JetStream → workers → Postgres →
//! relay → JetStream), each test with its own nats-server and database.

mod alerts;
mod binary;
mod catalog;
mod checkout;
mod crash;
mod dashboard;
mod dev;
mod events;
mod failed_orders;
mod fulfilment;
mod held;
mod jobs;
mod operator;
mod orders;
mod outage;
mod relay;
mod sagas;
mod search;
mod support;
mod trace;
mod traces;
