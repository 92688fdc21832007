//! Small inline SVG charts of the last hour, from the model's history (one point per
//! 10 s): throughput, lag and errors, summed over the pipeline. No script, no library.

use maud::{Markup, html};
use souk_topologies::status::history::Point;

/// (unix ms, value) per history point.
type Series = Vec<(i64, f64)>;

pub fn throughput(history: &[Point]) -> Series {
    history.iter().map(|p| (p.at_ms, p.pools.values().map(|q| q.per_sec).sum())).collect()
}

pub fn lag(history: &[Point]) -> Series {
    history.iter().map(|p| (p.at_ms, p.consumers.values().map(|c| c.lag as f64).sum())).collect()
}

/// Items written to sinks per second (all sinks).
pub fn sink_writes(history: &[Point]) -> Series {
    history.iter().map(|p| (p.at_ms, p.sinks.values().map(|s| s.items_per_sec).sum())).collect()
}

/// Errors per second (each pool's rate × its error ratio over the 10 s).
pub fn errors(history: &[Point]) -> Series {
    history
        .iter()
        .map(|p| (p.at_ms, p.pools.values().map(|q| q.per_sec * q.error_ratio.unwrap_or(0.0)).sum()))
        .collect()
}

const W: f64 = 300.0;
const H: f64 = 60.0;
const HOUR_MS: f64 = 3_600_000.0;

/// A line chart of `series` over the hour ending `now_ms`, titled, with its latest and
/// highest values.
pub fn chart(title: &str, unit: &str, series: &[(i64, f64)], now_ms: i64) -> Markup {
    let max = series.iter().map(|(_, v)| *v).fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let points: Vec<String> = series
        .iter()
        .map(|(at, v)| {
            let x = (W - (now_ms - at) as f64 / HOUR_MS * W).clamp(0.0, W);
            let y = H - (v / top) * (H - 4.0) - 2.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let last = series.last().map_or(0.0, |(_, v)| *v);
    html! {
        figure.chart {
            figcaption { (title) ": " strong { (fmt(last)) } " " (unit) " now, max " (fmt(max)) " (last hour)" }
            svg viewBox={"0 0 " (W) " " (H)} preserveAspectRatio="none" role="img" aria-label=(title) {
                line x1="0" y1=(H - 2.0) x2=(W) y2=(H - 2.0) class="axis" {}
                @if points.len() > 1 {
                    polyline points=(points.join(" ")) {}
                } @else {
                    text x="4" y="34" { "collecting history (a point every 10 s)" }
                }
            }
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() { format!("{v:.0}") } else { format!("{v:.2}") }
}
