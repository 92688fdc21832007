//! souk-jobs end to end: the shipped topology, a real nats-server and a database per
//! test, the node's job worker (or one the test starts and kills).

mod http;
mod import;
mod races;
mod reindex;
mod support;
