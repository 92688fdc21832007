//! Per-principal rate limits on writes: a token bucket per (tenant, subject), so one
//! misbehaving client cannot crowd out the others. Over the limit → 429 with
//! `Retry-After`, before anything is claimed or published.

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use std::{num::NonZeroU32, sync::Arc, time::Duration};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{Problem, auth::Claims};

/// A sustained rate with a burst allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

/// How often buckets of idle principals are dropped (memory stays bounded by the
/// principals active in the last interval).
const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct Limiter(Arc<DefaultKeyedRateLimiter<String>>);

impl Limiter {
    /// A limiter, with its idle-bucket cleanup running on `tasks` until `stop`.
    pub fn spawn(limit: RateLimit, tasks: &TaskTracker, stop: &CancellationToken) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        let limiter = Limiter(Arc::new(RateLimiter::keyed(quota)));
        let (cleanup, stop) = (limiter.clone(), stop.clone());
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(FORGET_IDLE_EVERY) => cleanup.0.retain_recent(),
                }
            }
        });
        limiter
    }

    /// Take one write from `principal`'s bucket, or say when to come back.
    pub fn check(&self, principal: &Claims) -> Result<(), Problem> {
        let key = format!("{}\0{}", principal.tenant, principal.sub);
        self.0.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::DefaultClock::default().now());
            metrics::counter!("souk_ingress_rate_limited_total").increment(1);
            Problem::too_many_requests(wait.as_secs().max(1))
        })
    }
}
