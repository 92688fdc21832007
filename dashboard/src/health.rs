//! Red, amber or green per pool, always with the rule that decided it written beside
//! it: an operator sees why, not only a colour. Read from the status model alone.

use souk_topologies::{
    runtime::BreakerState,
    status::model::{ConsumerModel, PoolModel, SinkModel},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Green,
    Amber,
    Red,
}

impl Level {
    pub fn css(self) -> &'static str {
        match self {
            Level::Green => "green",
            Level::Amber => "amber",
            Level::Red => "red",
        }
    }
}

/// Error ratio over 5 minutes above which a pool is red / amber.
pub const RED_ERROR_RATIO: f64 = 0.05;
pub const AMBER_ERROR_RATIO: f64 = 0.01;
/// How long a consumer's lag may grow before its pool is red / amber.
pub const RED_LAG_GROWING_SECS: f64 = 300.0;
pub const AMBER_LAG_GROWING_SECS: f64 = 60.0;

/// The rules, as the page's legend shows them.
pub const RULES: &[(Level, &str)] = &[
    (Level::Red, "no live worker process runs the pool (and it is not paused)"),
    (Level::Red, "breaker open"),
    (Level::Red, "error rate above 5% over 5 minutes"),
    (Level::Red, "lag has grown for 5 minutes"),
    (Level::Amber, "paused by an operator"),
    (Level::Amber, "breaker half-open (probing)"),
    (Level::Amber, "error rate above 1% over 5 minutes"),
    (Level::Amber, "lag has grown for 1 minute"),
    (Level::Amber, "dead letters waiting"),
    (Level::Green, "none of the above"),
];

/// The rules for sinks (the search index), as the legend shows them.
pub const SINK_RULES: &[(Level, &str)] = &[
    (Level::Red, "writes failing: above 5% of write calls over 5 minutes"),
    (Level::Amber, "a write failed in the last 5 minutes"),
    (Level::Green, "none of the above"),
];

/// A sink's health (see [`SINK_RULES`]).
pub fn of_sink(sink: &SinkModel) -> Health {
    let five = sink.rates.iter().find(|r| r.window_secs == 300);
    let (level, reason) = match five.and_then(|r| r.error_ratio.map(|e| (r.errors, e))) {
        Some((n, ratio)) if ratio > RED_ERROR_RATIO => {
            (Level::Red, format!("{n} failed writes, {:.1}% above 5% over 5 minutes", ratio * 100.0))
        }
        Some((n, ratio)) if n > 0 => {
            (Level::Amber, format!("{n} failed write(s) over 5 minutes ({:.1}%)", ratio * 100.0))
        }
        _ => (Level::Green, "no failed writes over 5 minutes".into()),
    };
    let mut reasons = vec![reason];
    if level != Level::Green
        && let Some(e) = &sink.last_error
    {
        reasons.push(format!("last: {}", e.error));
    }
    Health { level, reasons }
}

/// A pool's health: the worst level any rule gives, and every rule that fired (worst
/// first).
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    pub level: Level,
    pub reasons: Vec<String>,
}

pub fn of_pool(pool: &PoolModel, consumer: Option<&ConsumerModel>) -> Health {
    let mut fired: Vec<(Level, String)> = Vec::new();
    let paused = pool.settings.as_ref().is_some_and(|s| s.paused) || pool.controls.is_some_and(|c| c.paused);
    if paused {
        let by = pool.settings.as_ref().map(|s| format!(" by {} at {}", s.changed_by, s.changed_at));
        fired.push((Level::Amber, format!("paused{}: nothing is fetched", by.unwrap_or_default())));
    } else if pool.live_processes == 0 {
        fired.push((Level::Red, "no live worker process runs it".into()));
    }
    match pool.breaker {
        Some(BreakerState::Open) => fired.push((
            Level::Red,
            format!(
                "breaker open{}",
                pool.last_error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        )),
        Some(BreakerState::HalfOpen) => fired.push((Level::Amber, "breaker half-open (probing)".into())),
        _ => {}
    }
    if let Some(ratio) = pool.rates.iter().find(|r| r.window_secs == 300).and_then(|r| r.error_ratio) {
        let pct = ratio * 100.0;
        if ratio > RED_ERROR_RATIO {
            fired.push((Level::Red, format!("error rate {pct:.1}% above 5% over 5 minutes")));
        } else if ratio > AMBER_ERROR_RATIO {
            fired.push((Level::Amber, format!("error rate {pct:.1}% above 1% over 5 minutes")));
        }
    }
    if let Some(c) = consumer {
        let mins = c.lag_growing_secs / 60.0;
        if c.lag_growing_secs >= RED_LAG_GROWING_SECS {
            fired.push((Level::Red, format!("lag has grown for {mins:.0} minutes (5 or more)")));
        } else if c.lag_growing_secs >= AMBER_LAG_GROWING_SECS {
            fired.push((Level::Amber, format!("lag has grown for {mins:.0} minute(s) (1 or more)")));
        }
        if c.dead_letters > 0 {
            fired.push((Level::Amber, format!("{} dead letter(s) waiting", c.dead_letters)));
        }
    }
    let level = fired.iter().map(|(l, _)| *l).max().unwrap_or(Level::Green);
    // Every rule that fired, worst first: a paused pool that also failed says both.
    fired.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut reasons: Vec<String> = fired.into_iter().map(|(_, r)| r).collect();
    if reasons.is_empty() {
        reasons.push("workers live, errors ≤ 1% over 5 min, lag not growing, no dead letters".into());
    }
    Health { level, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;
    use souk_topologies::{
        control::PoolSettings,
        runtime::Counters,
        status::model::{ProcessModel, Rate},
    };

    fn pool(live: usize, error_ratio_5m: Option<f64>) -> PoolModel {
        let process = ProcessModel {
            process: "p".into(),
            host: "h".into(),
            pid: 1,
            beat_age_secs: 1.0,
            uptime_secs: 60.0,
            in_flight: 0,
            waiting: 0,
            breaker: BreakerState::Closed,
            controls: None,
        };
        PoolModel {
            name: "orders".into(),
            consumer: "orders-place".into(),
            processes: vec![process; live],
            live_processes: live,
            in_flight: 0,
            waiting: 0,
            breaker: (live > 0).then_some(BreakerState::Closed),
            last_error: None,
            totals: Counters::default(),
            rates: vec![Rate { window_secs: 300, per_sec: 10.0, error_ratio: error_ratio_5m }],
            p50_ms: None,
            p99_ms: None,
            controls: None,
            settings: None,
        }
    }

    fn consumer(lag_growing_secs: f64, dead_letters: u64) -> ConsumerModel {
        ConsumerModel {
            stream: "CMD".into(),
            name: "orders-place".into(),
            pending: 0,
            ack_pending: 0,
            redelivered: 0,
            waiting: 1,
            lag: 0,
            oldest_unhandled_secs: 0.0,
            last_active_secs: None,
            lag_per_min: None,
            lag_growing_secs,
            dead_letters,
            breaker: None,
        }
    }

    #[test]
    fn each_rule_sets_its_level_and_says_why() {
        let green = of_pool(&pool(1, Some(0.0)), Some(&consumer(0.0, 0)));
        assert_eq!(green.level, Level::Green);
        let dead = of_pool(&pool(0, None), None);
        assert_eq!((dead.level, dead.reasons[0].as_str()), (Level::Red, "no live worker process runs it"));
        let errors = of_pool(&pool(2, Some(0.06)), None);
        assert_eq!(errors.level, Level::Red);
        assert!(errors.reasons[0].contains("6.0% above 5% over 5 minutes"), "{errors:?}");
        assert_eq!(of_pool(&pool(1, Some(0.02)), None).level, Level::Amber);
        let growing = of_pool(&pool(1, None), Some(&consumer(301.0, 0)));
        assert_eq!(growing.level, Level::Red);
        assert!(growing.reasons[0].starts_with("lag has grown for 5 minutes"), "{growing:?}");
        assert_eq!(of_pool(&pool(1, None), Some(&consumer(61.0, 0))).level, Level::Amber);
        let letters = of_pool(&pool(1, None), Some(&consumer(0.0, 3)));
        assert_eq!((letters.level, letters.reasons[0].as_str()), (Level::Amber, "3 dead letter(s) waiting"));
        // Paused by an operator: amber, not red for having nothing running.
        let mut paused = pool(0, None);
        paused.settings =
            Some(PoolSettings { paused: true, changed_by: "olga".into(), ..Default::default() });
        let paused = of_pool(&paused, None);
        assert_eq!(paused.level, Level::Amber);
        assert!(paused.reasons[0].starts_with("paused by olga"), "{paused:?}");
    }

    fn sink(writes_5m: u64, errors_5m: u64) -> SinkModel {
        use souk_topologies::{
            runtime::{SinkCounters, SinkError},
            status::model::SinkRate,
        };
        SinkModel {
            name: "search".into(),
            backend: "tantivy".into(),
            live_processes: 1,
            totals: SinkCounters::default(),
            rates: vec![SinkRate {
                window_secs: 300,
                items_per_sec: 10.0,
                writes: writes_5m,
                writes_per_sec: writes_5m as f64 / 300.0,
                errors: errors_5m,
                error_ratio: (writes_5m > 0).then(|| errors_5m as f64 / writes_5m as f64),
            }],
            p50_ms: None,
            p99_ms: None,
            last_error: (errors_5m > 0).then(|| SinkError { at_ms: 0, error: "disk full".into() }),
        }
    }

    #[test]
    fn a_sink_is_red_above_five_percent_failed_writes_and_amber_for_any() {
        let green = of_sink(&sink(100, 0));
        assert_eq!(green.level, Level::Green, "{green:?}");
        assert_eq!(of_sink(&sink(0, 0)).level, Level::Green, "no writes: nothing failed");
        let amber = of_sink(&sink(100, 2));
        assert_eq!(amber.level, Level::Amber, "{amber:?}");
        assert!(amber.reasons.iter().any(|r| r == "last: disk full"), "{amber:?}");
        let red = of_sink(&sink(100, 6));
        assert_eq!(red.level, Level::Red, "{red:?}");
        assert!(red.reasons[0].contains("6 failed writes, 6.0%"), "{red:?}");
    }
}
