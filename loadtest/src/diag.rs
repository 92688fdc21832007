//! What souk's own metrics say about a phase: how big group-commit batches got, how
//! often batches fell back to single publishes, what the workers did. Read from an
//! in-process Prometheus recorder, as the difference between two snapshots, so these
//! figures explain the rates (a rate that is low because batches stayed small looks
//! different from one that is low because Postgres is saturated).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use std::collections::BTreeMap;

/// Install the recorder souk's metrics go to.
pub fn install() -> anyhow::Result<PrometheusHandle> {
    Ok(PrometheusBuilder::new().install_recorder()?)
}

/// Every sample of one rendering: `name{labels}` → value.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(BTreeMap<String, f64>);

impl Snapshot {
    pub fn take(handle: &PrometheusHandle) -> Snapshot {
        handle.run_upkeep();
        Snapshot::parse(&handle.render())
    }

    fn parse(text: &str) -> Snapshot {
        Snapshot(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' '))
                .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                .collect(),
        )
    }

    /// Sum of the samples named `name` whose labels contain every one of `labels`
    /// (`key="value"` strings).
    fn sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.0
            .iter()
            .filter(|(k, _)| {
                let (n, l) = k.split_once('{').unwrap_or((k, ""));
                n == name && labels.iter().all(|want| l.contains(want))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

/// Souk's metrics over one phase.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Diagnostics {
    /// JetStream atomic batches the ingress group committer sent, and their mean size.
    pub group_commit_batches: f64,
    pub group_commit_mean_size: Option<f64>,
    /// Mean wait for an atomic batch's PubAck (seconds).
    pub atomic_ack_mean_s: Option<f64>,
    /// Batches rejected for a duplicate id and republished one by one.
    pub batch_fallbacks: f64,
    /// Idempotency-claim statements and their mean size.
    pub claim_batches: f64,
    pub claim_mean_size: Option<f64>,
    /// Mean duration of one claim statement, commit included (seconds).
    pub claim_mean_s: Option<f64>,
    /// Ingress outcomes (accepted, replayed, unavailable, key_reused).
    pub ingress_outcomes: BTreeMap<String, f64>,
    /// Orders-pool outcomes (ack, retry, dead_letter, …) and mean handler time (seconds).
    pub worker_outcomes: BTreeMap<String, f64>,
    pub worker_handle_mean_s: Option<f64>,
    pub dead_letters: f64,
    /// Events the outbox relay published.
    pub relay_published: f64,
}

impl Diagnostics {
    pub fn between(before: &Snapshot, after: &Snapshot) -> Diagnostics {
        let d = |name: &str, labels: &[&str]| after.sum(name, labels) - before.sum(name, labels);
        let mean = |name: &str, labels: &[&str]| {
            let count = d(&format!("{name}_count"), labels);
            (count > 0.0).then(|| d(&format!("{name}_sum"), labels) / count)
        };
        let by_label = |name: &str, label: &str| -> BTreeMap<String, f64> {
            let prefix = format!("{label}=\"");
            after
                .0
                .keys()
                .filter(|k| k.split_once('{').is_some_and(|(n, _)| n == name))
                .filter_map(|k| {
                    let value = k.split(&prefix).nth(1)?.split('"').next()?;
                    let want = format!("{label}=\"{value}\"");
                    Some((value.to_owned(), d(name, &[want.as_str()])))
                })
                .filter(|(_, n)| *n > 0.0)
                .collect()
        };
        Diagnostics {
            group_commit_batches: d("souk_publisher_group_commit_size_count", &[]),
            group_commit_mean_size: mean("souk_publisher_group_commit_size", &[]),
            atomic_ack_mean_s: mean("souk_publisher_ack_seconds", &["mode=\"atomic\""]),
            batch_fallbacks: d("souk_publisher_batch_fallbacks_total", &[]),
            claim_batches: d("souk_ingress_claim_batch_size_count", &[]),
            claim_mean_size: mean("souk_ingress_claim_batch_size", &[]),
            claim_mean_s: mean("souk_ingress_claim_seconds", &[]),
            ingress_outcomes: by_label("souk_ingress_orders_total", "outcome"),
            worker_outcomes: by_label("souk_worker_messages_total", "outcome"),
            worker_handle_mean_s: mean("souk_worker_handle_seconds", &[]),
            dead_letters: d("souk_worker_dead_letters_total", &[]),
            relay_published: d("souk_relay_published_total", &[]),
        }
    }
}

/// Time one histogram spent per value of one label over a phase (a handler's time per
/// pool, a request's per route): where souk's own clock says the work went.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Timing {
    pub count: f64,
    /// Seconds summed over every observation (concurrent ones add up).
    pub total_s: f64,
}

/// [`Timing`] of histogram `name` per value of `label`, from `before` to `after`.
pub fn timings(before: &Snapshot, after: &Snapshot, name: &str, label: &str) -> BTreeMap<String, Timing> {
    let prefix = format!("{label}=\"");
    let values: std::collections::BTreeSet<String> = after
        .0
        .keys()
        .filter(|k| k.split_once('{').is_some_and(|(n, _)| n == format!("{name}_count")))
        .filter_map(|k| Some(k.split(&prefix).nth(1)?.split('"').next()?.to_owned()))
        .collect();
    values
        .into_iter()
        .filter_map(|value| {
            let want = format!("{label}=\"{value}\"");
            let d = |suffix: &str| {
                let n = format!("{name}_{suffix}");
                after.sum(&n, &[want.as_str()]) - before.sum(&n, &[want.as_str()])
            };
            let t = Timing { count: d("count"), total_s: d("sum") };
            (t.count > 0.0).then_some((value, t))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_and_means_come_from_two_renderings() {
        let before = Snapshot::parse(
            "# TYPE x counter\nsouk_ingress_orders_total{outcome=\"accepted\"} 10\n\
             souk_publisher_group_commit_size_sum 100\nsouk_publisher_group_commit_size_count 10\n",
        );
        let after = Snapshot::parse(
            "souk_ingress_orders_total{outcome=\"accepted\"} 110\n\
             souk_ingress_orders_total{outcome=\"unavailable\"} 3\n\
             souk_publisher_group_commit_size_sum 1100\nsouk_publisher_group_commit_size_count 20\n",
        );
        let d = Diagnostics::between(&before, &after);
        assert_eq!(d.group_commit_batches, 10.0);
        assert_eq!(d.group_commit_mean_size, Some(100.0));
        assert_eq!(d.ingress_outcomes.get("accepted"), Some(&100.0));
        assert_eq!(d.ingress_outcomes.get("unavailable"), Some(&3.0));
        assert_eq!(d.claim_mean_size, None);
    }

    #[test]
    fn timings_are_split_by_label() {
        let before = Snapshot::parse(
            "souk_worker_handle_seconds_sum{pool=\"orders\"} 1\nsouk_worker_handle_seconds_count{pool=\"orders\"} 10\n",
        );
        let after = Snapshot::parse(
            "souk_worker_handle_seconds_sum{pool=\"orders\"} 3\nsouk_worker_handle_seconds_count{pool=\"orders\"} 30\n\
             souk_worker_handle_seconds_sum{pool=\"payments\"} 0.5\nsouk_worker_handle_seconds_count{pool=\"payments\"} 5\n\
             souk_worker_handle_seconds_sum{pool=\"idle\"} 0\nsouk_worker_handle_seconds_count{pool=\"idle\"} 0\n",
        );
        let t = timings(&before, &after, "souk_worker_handle_seconds", "pool");
        assert_eq!(t.keys().collect::<Vec<_>>(), ["orders", "payments"]);
        assert_eq!((t["orders"].count, t["orders"].total_s), (20.0, 2.0));
        assert_eq!((t["payments"].count, t["payments"].total_s), (5.0, 0.5));
    }
}
