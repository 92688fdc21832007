//! Per-principal rate limits: token buckets per (tenant, subject), one set for writes
//! and a separate one for reads, so one misbehaving client cannot crowd out the others
//! and a client polling its orders does not use up its budget for placing them. Over
//! the limit → 429 with `Retry-After`, before any I/O.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use std::{num::NonZeroU32, sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{AppState, Problem, auth::Claims};

/// Sustained rates with burst allowances, per principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Writes (`POST /v1/orders`) per second.
    pub per_second: NonZeroU32,
    /// Writes a principal may send at once above the sustained rate.
    pub burst: NonZeroU32,
    /// Reads (`GET /v1/orders/{id}`) per second, a budget of their own.
    pub reads_per_second: NonZeroU32,
    pub reads_burst: NonZeroU32,
}

/// How often buckets of idle principals are dropped (memory stays bounded by the
/// principals active in the last interval).
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

type Buckets = Arc<DefaultKeyedRateLimiter<String>>;

#[derive(Clone)]
pub(crate) struct Limiter {
    writes: Buckets,
    reads: Buckets,
}

impl Limiter {
    /// A limiter, with its idle-bucket cleanup running on `tasks` until `stop`.
    pub fn spawn(limit: RateLimit, tasks: &TaskTracker, stop: &CancellationToken) -> Self {
        let buckets = |rate, burst| Arc::new(RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)));
        let limiter = Limiter {
            writes: buckets(limit.per_second, limit.burst),
            reads: buckets(limit.reads_per_second, limit.reads_burst),
        };
        let (cleanup, stop) = (limiter.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(FORGET_IDLE_EVERY) => {
                        cleanup.writes.retain_recent();
                        cleanup.reads.retain_recent();
                    }
                }
            }
        });
        limiter
    }

    /// Take one write from `principal`'s bucket, or say when to come back.
    pub fn check_write(&self, principal: &Claims) -> Result<(), Problem> {
        check(&self.writes, principal, "write")
    }

    /// Take one read of a caller without a token (a public read) from the read bucket
    /// of its address, or say when to come back.
    pub fn check_anonymous_read(&self, tenant: &str, peer: std::net::IpAddr) -> Result<(), Problem> {
        check_key(&self.reads, format!("{tenant}\u{1}{peer}"), "read")
    }

    /// Take one read from `principal`'s read bucket, or say when to come back.
    pub fn check_read(&self, principal: &Claims) -> Result<(), Problem> {
        check(&self.reads, principal, "read")
    }
}

fn check(buckets: &Buckets, principal: &Claims, kind: &'static str) -> Result<(), Problem> {
    check_key(buckets, format!("{}\0{}", principal.tenant, principal.sub), kind)
}

/// Principals' keys are `tenant NUL sub`, anonymous ones `tenant SOH address`: tenants
/// and subjects hold no control characters, so the two kinds never meet.
fn check_key(buckets: &Buckets, key: String, kind: &'static str) -> Result<(), Problem> {
    buckets.check_key(&key).map_err(|not_until| {
        let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
        metrics::counter!("souk_ingress_rate_limited_total", "kind" => kind).increment(1);
        Problem::too_many_requests(kind, wait.as_secs().max(1))
    })
}

impl AppState {
    /// One write from `claims`' budget (429 over it), when rate limits are on.
    pub(crate) fn check_write(&self, claims: &Claims) -> Result<(), Problem> {
        self.limiter.as_ref().map_or(Ok(()), |limiter| limiter.check_write(claims))
    }

    /// One read from `claims`' read budget (429 over it), when rate limits are on.
    pub(crate) fn check_read(&self, claims: &Claims) -> Result<(), Problem> {
        self.limiter.as_ref().map_or(Ok(()), |limiter| limiter.check_read(claims))
    }
}
