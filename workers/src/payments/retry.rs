//! Retry timing: exponential backoff (backon's builder) with full jitter — each wait
//! drawn uniformly from zero to the exponential step, so retries of many payments
//! spread out instead of arriving together — within a time budget per command.

use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::Duration;
use tokio::time::Instant;

/// How a payment command retries.
#[derive(Debug, Clone)]
pub struct RetryOptions {
    /// Longest a command spends on providers, retries and failover included. Shorter
    /// than the pool's handler timeout, with room for the last call and a status query.
    pub budget: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Consecutive failures that open a provider's breaker, and for how long.
    pub breaker_failures: u32,
    pub breaker_open_for: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            budget: Duration::from_secs(8),
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            breaker_failures: 5,
            breaker_open_for: Duration::from_secs(10),
        }
    }
}

/// The waits of one command, and its deadline.
pub struct Schedule {
    steps: backon::ExponentialBackoff,
    deadline: Instant,
}

impl Schedule {
    pub fn new(options: &RetryOptions) -> Schedule {
        let steps = ExponentialBuilder::default()
            .with_min_delay(options.first_delay)
            .with_max_delay(options.max_delay)
            .with_factor(2.0)
            .without_max_times()
            .build();
        Schedule { steps, deadline: Instant::now() + options.budget }
    }

    /// Wait before the next try; `false` (without waiting) when the wait would end past
    /// the deadline.
    pub async fn wait(&mut self) -> bool {
        let step = self.steps.next().unwrap_or(Duration::from_secs(1));
        let wait = full_jitter(step);
        if Instant::now() + wait >= self.deadline {
            return false;
        }
        tokio::time::sleep(wait).await;
        true
    }
}

/// A wait drawn uniformly from `0..=step`.
fn full_jitter(step: Duration) -> Duration {
    let nanos = u64::try_from(step.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_jitter_stays_within_the_step_and_varies() {
        let step = Duration::from_millis(100);
        let draws: Vec<_> = (0..200).map(|_| full_jitter(step)).collect();
        assert!(draws.iter().all(|d| *d <= step));
        assert!(draws.iter().any(|d| *d < step / 2) && draws.iter().any(|d| *d > step / 2));
    }
}
