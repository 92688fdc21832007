//! # souk-cli — the `souk` binary and the node it runs
//!
//! The binary (`src/main.rs`) only parses arguments and configuration. [`node`] holds
//! the wiring of a running process (ingress, pools, relay, housekeeping) so that the
//! binary, the end-to-end tests and the benchmark all start exactly the same thing.

pub mod node;
pub mod pid_lock;
