//! End-to-end flows through a whole node (ingress → JetStream → workers → Postgres →
//! relay → JetStream), each test with its own nats-server and database.

mod binary;
mod crash;
mod orders;
mod outage;
