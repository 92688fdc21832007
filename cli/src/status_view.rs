//! `souk status` as text: the engine's status model ([`souk_topologies::status::Model`])
//! rendered as tables, coloured only on a terminal (and never with `NO_COLOR`).
//! Nothing is computed here that the model does not hold.

use souk_topologies::{
    runtime::{Activity, BreakerState},
    status::model::{Model, short_duration},
};
use souk_workers::catalog::lag::IndexLag;
use std::fmt::Write as _;

/// Red, amber or green for a cell.
#[derive(Clone, Copy, PartialEq)]
enum Health {
    Good,
    Warn,
    Bad,
}

struct Paint(bool);

impl Paint {
    fn cell(&self, text: String, health: Health) -> String {
        let code = match health {
            Health::Good => "32",
            Health::Warn => "33",
            Health::Bad => "31",
        };
        if self.0 { format!("\x1b[{code}m{text}\x1b[0m") } else { text }
    }
}

fn breaker_health(b: Option<BreakerState>) -> Health {
    match b {
        Some(BreakerState::Closed) => Health::Good,
        Some(BreakerState::HalfOpen) | None => Health::Warn,
        Some(BreakerState::Open) => Health::Bad,
    }
}

/// The whole status as text.
pub fn render(model: &Model, indexes: &[IndexLag], colour: bool) -> String {
    let paint = Paint(colour);
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "{:<10} {:>12} {:>14} {:>12} {:>12} {:>10}",
        "STREAM", "MESSAGES", "BYTES", "FIRST SEQ", "LAST SEQ", "OLDEST"
    );
    for s in &model.streams {
        let _ = writeln!(
            w,
            "{:<10} {:>12} {:>14} {:>12} {:>12} {:>10}",
            s.name,
            s.messages,
            s.bytes,
            s.first_seq,
            s.last_seq,
            short_duration(s.oldest_unhandled_secs)
        );
    }
    let _ = writeln!(
        w,
        "\n{:<22} {:<6} {:>9} {:>11} {:>11} {:>6} {:>8} {:>10} {:>11}  BREAKER",
        "CONSUMER",
        "STREAM",
        "LAG",
        "ACK PENDING",
        "REDELIVERED",
        "DLQ",
        "OLDEST",
        "TREND/MIN",
        "LAST ACTIVE",
    );
    for c in &model.consumers {
        let lag_health = match (c.lag, c.lag_growing_secs) {
            (0, _) => Health::Good,
            (_, s) if s >= 300.0 => Health::Bad,
            _ => Health::Warn,
        };
        let lag = paint.cell(format!("{:>9}", c.lag), lag_health);
        let dlq_health = if c.dead_letters == 0 { Health::Good } else { Health::Bad };
        let dlq = paint.cell(format!("{:>6}", c.dead_letters), dlq_health);
        let trend = c.lag_per_min.map_or("-".into(), |t| format!("{t:+.1}"));
        let active = c.last_active_secs.map_or("never".into(), |s| format!("{} ago", short_duration(s)));
        let breaker = paint.cell(
            c.breaker.map_or("- (no live worker)".into(), |b| b.as_str().to_owned()),
            breaker_health(c.breaker),
        );
        let _ = writeln!(
            w,
            "{:<22} {:<6} {lag} {:>11} {:>11} {dlq} {:>8} {:>10} {:>11}  {breaker}",
            c.name,
            c.stream,
            c.ack_pending,
            c.redelivered,
            short_duration(c.oldest_unhandled_secs),
            trend,
            active,
        );
    }
    let _ = writeln!(
        w,
        "\n{:<22} {:>4} {:<8} {:>5} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}  BREAKER",
        "POOL", "LIVE", "STATE", "CONC", "IN FLIGHT", "MSG/S 1M", "5M", "15M", "ERR% 5M", "P50 MS", "P99 MS"
    );
    for p in &model.pools {
        let rate = |secs: u64| p.rates.iter().find(|r| r.window_secs == secs);
        let per_sec = |secs: u64| rate(secs).map_or("-".into(), |r| format!("{:.1}", r.per_sec));
        let error_ratio = rate(300).and_then(|r| r.error_ratio);
        let err = paint.cell(
            format!("{:>8}", error_ratio.map_or("-".into(), |e| format!("{:.1}", e * 100.0))),
            match error_ratio {
                Some(e) if e > 0.05 => Health::Bad,
                Some(e) if e > 0.0 => Health::Warn,
                _ => Health::Good,
            },
        );
        let live = paint.cell(
            format!("{:>4}", p.live_processes),
            if p.live_processes == 0 { Health::Bad } else { Health::Good },
        );
        // Paused, pausing (draining) or running, and the concurrency in force, as the
        // live processes' heartbeats report them.
        let state = paint.cell(
            format!("{:<8}", p.controls.map_or("-", |c| c.activity.as_str())),
            match p.controls.map(|c| c.activity) {
                Some(Activity::Running) => Health::Good,
                Some(_) => Health::Warn,
                None => Health::Good,
            },
        );
        let conc = p.controls.map_or("-".into(), |c| c.concurrency.to_string());
        let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        let breaker =
            paint.cell(p.breaker.map_or("-".into(), |b| b.as_str().to_owned()), breaker_health(p.breaker));
        let _ = writeln!(
            w,
            "{:<22} {live} {state} {:>5} {:>9} {:>8} {:>8} {:>8} {err} {:>8} {:>8}  {breaker}",
            p.name,
            conc,
            p.in_flight,
            per_sec(60),
            per_sec(300),
            per_sec(900),
            ms(p.p50_ms),
            ms(p.p99_ms),
        );
        if let (Some(b), Some(e)) = (p.breaker.filter(|b| *b != BreakerState::Closed), &p.last_error) {
            let _ = writeln!(w, "  pool {}: breaker {b}: {e}", p.name);
        }
        if p.waiting > 0 {
            let _ = writeln!(
                w,
                "  pool {}: {} of its in-flight deliveries wait to be tried again (slots given up)",
                p.name, p.waiting
            );
        }
        // What an operator set (also while no process runs the pool).
        if let Some(s) = &p.settings {
            let _ = writeln!(
                w,
                "  pool {}: {}{} (set by {} at {})",
                p.name,
                if s.paused { "paused" } else { "running" },
                s.concurrency.map(|n| format!(", concurrency {n}")).unwrap_or_default(),
                s.changed_by,
                s.changed_at
            );
        }
    }
    if !indexes.is_empty() {
        let _ =
            writeln!(w, "\n{:<10} {:<18} {:>12} {:>12}", "INDEX", "CONSUMER", "LAG EVENTS", "LAG SECONDS");
        for i in indexes {
            let _ = writeln!(w, "{:<10} {:<18} {:>12} {:>12.1}", i.index, i.consumer, i.events, i.seconds);
        }
    }
    if !model.sinks.is_empty() {
        let _ = writeln!(
            w,
            "\n{:<10} {:<11} {:>4} {:>10} {:>10} {:>10} {:>9} {:>8} {:>8}",
            "SINK", "BACKEND", "LIVE", "ITEMS/S 1M", "5M", "WRITES 5M", "ERRORS 5M", "P50 MS", "P99 MS"
        );
        for s in &model.sinks {
            let rate = |secs: u64| s.rates.iter().find(|r| r.window_secs == secs);
            let items = |secs: u64| rate(secs).map_or("-".into(), |r| format!("{:.1}", r.items_per_sec));
            let five = rate(300);
            let errors = five.map_or(0, |r| r.errors);
            let error_ratio = five.and_then(|r| r.error_ratio);
            let err = paint.cell(
                format!("{errors:>9}"),
                match error_ratio {
                    Some(e) if e > 0.05 => Health::Bad,
                    Some(e) if e > 0.0 => Health::Warn,
                    _ => Health::Good,
                },
            );
            let writes = five.map_or("-".into(), |r| r.writes.to_string());
            let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let _ = writeln!(
                w,
                "{:<10} {:<11} {:>4} {:>10} {:>10} {:>10} {err} {:>8} {:>8}",
                s.name,
                s.backend,
                s.live_processes,
                items(60),
                items(300),
                writes,
                ms(s.p50_ms),
                ms(s.p99_ms),
            );
            if let Some(e) = &s.last_error {
                let ago = (model.at_ms - e.at_ms) as f64 / 1e3;
                let _ = writeln!(w, "  sink {}: last error {} ago: {}", s.name, short_duration(ago), e.error);
            }
        }
    }
    match &model.outbox {
        Some(o) => {
            let oldest = o.oldest_secs.map_or(String::new(), |s| format!(", oldest {}", short_duration(s)));
            let health = match o.oldest_secs {
                Some(s) if s > 300.0 => Health::Bad,
                _ if o.parked > 0 => Health::Warn,
                _ => Health::Good,
            };
            let line = format!("outbox: {} unpublished, {} parked{oldest}", o.unpublished, o.parked);
            let _ = writeln!(w, "\n{}", paint.cell(line, health));
        }
        None => _ = writeln!(w, "\noutbox: unknown (Postgres unreachable)"),
    }
    let _ = writeln!(w, "history: {} points", model.history.len());
    for problem in &model.problems {
        let _ = writeln!(w, "{}", paint.cell(format!("incomplete: {problem}"), Health::Bad));
    }
    out
}
