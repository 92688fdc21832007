//! Fault injection: what goes wrong, how often, drawn from a seeded generator so a run
//! can be reproduced. Set at start (`--fault key=value`) and at run time
//! (`PUT /admin/faults` with the same keys as JSON).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The faults a sandbox injects. Rates are per request, each in 0..=1, together ≤ 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Faults {
    /// Added before every API request is processed.
    #[serde(with = "humantime_serde")]
    pub latency: Duration,
    /// Requests that hang (for `hang`, then 503, unprocessed): the client times out.
    pub hang_rate: f64,
    /// Requests answered 503 before being processed.
    pub error_rate: f64,
    /// Requests answered 429 (rate limited) before being processed.
    pub throttle_rate: f64,
    /// Requests whose connection is reset before they are processed.
    pub reset_rate: f64,
    /// Money-moving requests that are processed (charged) and then lose their answer:
    /// the connection is reset instead of answered.
    pub lost_rate: f64,
    /// How long a hang lasts.
    #[serde(with = "humantime_serde")]
    pub hang: Duration,
    /// How long `tok_slow` payments take to answer (after they are processed).
    #[serde(with = "humantime_serde")]
    pub slow: Duration,
    /// Seed of the fault generator; setting it restarts the sequence.
    pub seed: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency: Duration::ZERO,
            hang_rate: 0.0,
            error_rate: 0.0,
            throttle_rate: 0.0,
            reset_rate: 0.0,
            lost_rate: 0.0,
            hang: Duration::from_secs(30),
            slow: Duration::from_secs(3),
            seed: 0,
        }
    }
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    Hang,
    Unavailable,
    Throttled,
    Reset,
    /// Processed, answer lost.
    Lost,
}

impl Faults {
    /// Check the values; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let rates = [
            ("hang-rate", self.hang_rate),
            ("error-rate", self.error_rate),
            ("throttle-rate", self.throttle_rate),
            ("reset-rate", self.reset_rate),
            ("lost-rate", self.lost_rate),
        ];
        for (name, rate) in rates {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{name} must be between 0 and 1, got {rate}"));
            }
        }
        if rates.iter().map(|(_, r)| r).sum::<f64>() > 1.0 + 1e-9 {
            return Err(
                "hang-rate + error-rate + throttle-rate + reset-rate + lost-rate must not exceed 1".into()
            );
        }
        if self.latency > Duration::from_secs(60) || self.hang > Duration::from_secs(600) {
            return Err("latency must be at most 60s and hang at most 600s".into());
        }
        Ok(())
    }

    /// Set one fault from `key=value` (a command-line flag), e.g. `error-rate=0.2`,
    /// `latency=50ms`, `seed=7`.
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (key, value) =
            assignment.split_once('=').ok_or_else(|| format!("expected key=value, got {assignment:?}"))?;
        let mut current = serde_json::to_value(&*self).map_err(|e| e.to_string())?;
        let parsed = match value.parse::<f64>() {
            Ok(n) if key != "latency" && key != "hang" && key != "slow" => serde_json::json!(n),
            _ => serde_json::json!(value),
        };
        let parsed = match (key, parsed.as_f64()) {
            ("seed", Some(n)) => serde_json::json!(n as u64),
            _ => parsed,
        };
        current.as_object_mut().ok_or("faults are an object")?.insert(key.to_owned(), parsed);
        let faults: Faults = serde_json::from_value(current).map_err(|e| format!("fault {key}: {e}"))?;
        faults.validate()?;
        *self = faults;
        Ok(())
    }

    /// Draw the fault of one request; `moves_money`: a lost answer is possible.
    pub(crate) fn draw(&self, rng: &mut fastrand::Rng, moves_money: bool) -> Fault {
        let r = rng.f64();
        let mut edge = self.hang_rate;
        if r < edge {
            return Fault::Hang;
        }
        edge += self.error_rate;
        if r < edge {
            return Fault::Unavailable;
        }
        edge += self.throttle_rate;
        if r < edge {
            return Fault::Throttled;
        }
        edge += self.reset_rate;
        if r < edge {
            return Fault::Reset;
        }
        edge += self.lost_rate;
        if r < edge && moves_money {
            return Fault::Lost;
        }
        Fault::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_set_faults_and_bad_values_are_refused() {
        let mut f = Faults::default();
        assert_eq!(f.set("error-rate=0.25"), Ok(()));
        assert_eq!(f.set("latency=50ms"), Ok(()));
        assert_eq!(f.set("seed=7"), Ok(()));
        assert_eq!((f.error_rate, f.latency, f.seed), (0.25, Duration::from_millis(50), 7));
        assert!(f.set("error-rate=2").is_err_and(|e| e.contains("error-rate")));
        assert!(f.set("reset-rate=0.9").is_err_and(|e| e.contains("exceed")));
        assert!(f.set("nonsense=1").is_err_and(|e| e.contains("nonsense")));
        assert!(f.set("latency").is_err());
    }

    #[test]
    fn the_same_seed_draws_the_same_faults() {
        let f = Faults { error_rate: 0.3, reset_rate: 0.3, ..Faults::default() };
        let draws = |seed| {
            let mut rng = fastrand::Rng::with_seed(seed);
            (0..50).map(|_| f.draw(&mut rng, true)).collect::<Vec<_>>()
        };
        assert_eq!(draws(9), draws(9));
        assert_ne!(draws(9), draws(10));
    }
}
