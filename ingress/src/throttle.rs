//! Rate-limited logging: during a storm (Postgres or JetStream down, every request
//! answered 503) one line per interval with the number of lines it stands for, not one
//! line per request — a log that grows with the request rate is itself an outage.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Admits one log line per `every`; counts the ones it holds back.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    last: Option<Instant>,
    held_back: u64,
}

impl LogThrottle {
    pub const fn new(every: Duration) -> Self {
        LogThrottle { every, state: Mutex::new(State { last: None, held_back: 0 }) }
    }

    /// `Some(n)`: log this occurrence, which also stands for the `n` held back since
    /// the last line; `None`: hold it back.
    pub fn admit(&self) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else { return Some(0) };
        let now = Instant::now();
        match state.last {
            Some(last) if now.duration_since(last) < self.every => {
                state.held_back += 1;
                None
            }
            _ => {
                state.last = Some(now);
                Some(std::mem::take(&mut state.held_back))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_one_line_per_interval_with_the_count() {
        let throttle = LogThrottle::new(Duration::from_secs(3600));
        assert_eq!(throttle.admit(), Some(0));
        assert!((0..1000).all(|_| throttle.admit().is_none()));
        let zero = LogThrottle::new(Duration::ZERO);
        assert_eq!(zero.admit(), Some(0));
        assert_eq!(zero.admit(), Some(0));
    }
}
