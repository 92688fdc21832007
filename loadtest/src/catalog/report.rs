//! The catalog run's figures, the ratios against the targets, and how they
//! print (a table, or one JSON object).

use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

use super::pipeline::Freshness;
use crate::{
    cpu::Share,
    floor::{self, Commits, Floor, Messages, PerOperation},
    report::Latency,
};

/// A throughput figure with its CPU cost.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub name: &'static str,
    pub items: u64,
    pub elapsed_s: f64,
    pub rate_per_s: f64,
    /// Busy CPU time of the whole machine ÷ items, in µs.
    pub cpu_per_item_us: Option<f64>,
    pub cpu: Option<Share>,
}

impl Throughput {
    pub fn new(name: &'static str, items: u64, elapsed_s: f64, cpu: Option<Share>) -> Throughput {
        let rate_per_s = if elapsed_s > 0.0 { items as f64 / elapsed_s } else { 0.0 };
        Throughput { name, items, elapsed_s, rate_per_s, cpu_per_item_us: per_item(cpu, items), cpu }
    }
}

/// A search phase: latency, rate and CPU per query.
#[derive(Debug, Clone, Serialize)]
pub struct Searching {
    pub name: &'static str,
    pub queries: u64,
    pub rate_per_s: f64,
    pub latency: Latency,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub cpu_per_query_us: Option<f64>,
    /// This process's CPU time (souk and the load generator) ÷ queries, in µs: not
    /// inflated by other work on a shared machine, as the machine's busy time is.
    pub process_cpu_per_query_us: Option<f64>,
    pub cpu: Option<Share>,
    /// Per query kind (text, typo, prefix, category, …).
    pub kinds: BTreeMap<&'static str, KindFigures>,
}

/// One kind of query: its latency within the mixed phase, and its cost run alone.
#[derive(Debug, Clone, Serialize)]
pub struct KindFigures {
    /// Latency of this kind's queries within the mix (what its clients saw there).
    pub in_mix: Option<Latency>,
    /// The kind's queries alone, at as many clients, for `--kind-duration`.
    pub alone: Option<Alone>,
}

/// A kind's queries run alone.
#[derive(Debug, Clone, Serialize)]
pub struct Alone {
    pub queries: u64,
    pub rate_per_s: f64,
    pub latency: Latency,
    /// The machine's busy CPU time ÷ queries, in µs.
    pub cpu_per_query_us: Option<f64>,
    /// This process's CPU time ÷ queries, in µs.
    pub process_cpu_per_query_us: Option<f64>,
}

impl Alone {
    pub fn new(t: &crate::load::Tally, cpu: Option<Share>) -> Alone {
        Alone {
            queries: t.ops,
            rate_per_s: t.rate(),
            latency: Latency::of(&t.latency),
            cpu_per_query_us: per_item(cpu, t.ops),
            process_cpu_per_query_us: per_item_of_process(cpu, t.ops),
        }
    }
}

fn per_item_of_process(cpu: Option<Share>, items: u64) -> Option<f64> {
    cpu.filter(|_| items > 0).map(|c| c.this_process_cpu_s * 1e6 / items as f64)
}

fn per_item(cpu: Option<Share>, items: u64) -> Option<f64> {
    cpu.filter(|_| items > 0).map(|c| c.busy_cpu_s * 1e6 / items as f64)
}

impl Searching {
    pub fn new(name: &'static str, t: &crate::load::Tally, cpu: Option<Share>) -> Searching {
        Searching {
            name,
            queries: t.ops,
            rate_per_s: t.rate(),
            latency: Latency::of(&t.latency),
            errors: t.errors.clone(),
            cpu_per_query_us: per_item(cpu, t.ops),
            process_cpu_per_query_us: per_item_of_process(cpu, t.ops),
            cpu,
            kinds: t
                .by_label
                .iter()
                .map(|(kind, h)| (*kind, KindFigures { in_mix: Some(Latency::of(h)), alone: None }))
                .collect(),
        }
    }
}

impl Searching {
    /// Record `kind`'s queries run alone.
    pub fn alone(&mut self, kind: &'static str, t: &crate::load::Tally, cpu: Option<Share>) {
        let figures = self.kinds.entry(kind).or_insert_with(|| KindFigures { in_mix: None, alone: None });
        figures.alone = Some(Alone::new(t, cpu));
    }
}

/// One figure against its target.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub figure: &'static str,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub target: &'static str,
    pub met: Option<bool>,
}

/// Everything one catalog run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatalogReport {
    pub products: usize,
    pub sellers: usize,
    pub seed: u64,
    pub cpus: usize,
    pub raw_index: Option<Throughput>,
    pub pipeline_writes: Option<Throughput>,
    pub pipeline: Option<Throughput>,
    /// Products searchable when the wait ended (all of them unless it timed out).
    pub searchable: u64,
    /// Products given up on (not accepted), by the last answer's class.
    pub write_errors: std::collections::BTreeMap<String, u64>,
    /// The ingress's catalog admission bound (0: none).
    pub catalog_max_backlog_ms: u64,
    /// Threads the tantivy store ran queries on, in (q) and (s).
    pub search_threads: usize,
    /// 503 answers to product writes (each retried after `Retry-After`, same key).
    pub write_refusals: u64,
    /// Products refused at least once before they were accepted.
    pub writes_retried: u64,
    pub freshness: Option<Freshness>,
    /// Queries of each kind in the set (text, typo, prefix, category, …).
    pub query_mix: std::collections::BTreeMap<&'static str, usize>,
    pub raw_search: Option<Searching>,
    pub http_search: Option<Searching>,
    /// Queries whose HTTP and in-process totals differ (should be 0).
    pub totals_differ: Option<u64>,
    pub targets: Vec<Target>,
    /// (j1), (j2): raw JetStream publishes then pull and ack, CPU per message.
    pub floor_messages: Vec<Messages>,
    /// (c): raw Postgres commits, CPU per commit.
    pub floor_commits: Option<Commits>,
    /// JetStream messages stored (`CMD` and `EVT`), Postgres transactions committed
    /// (`xact_commit`, reads and the harness's few included) and of those the writes
    /// (transaction ids assigned) over (w)+(p), per product accepted.
    pub per_product: Option<PerOperation>,
    /// messages × CPU per message + transactions × CPU per commit, beside (p)'s CPU per
    /// product and ÷ (r)'s CPU per document.
    pub floor: Option<Floor>,
    /// Why the run stopped early, if it did (the figures before it are kept).
    pub error: Option<String>,
}

impl CatalogReport {
    /// Judge the figures against the targets.
    pub fn finish(&mut self) {
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).filter(|(_, b)| *b > 0.0).map(|(a, b)| a / b);
        let pipeline = ratio(
            self.pipeline.as_ref().map(|p| p.rate_per_s),
            self.raw_index.as_ref().map(|r| r.rate_per_s),
        );
        let http_p99 = self.http_search.as_ref().map(|s| s.latency.p99_ms);
        let raw_p99 = self.raw_search.as_ref().map(|s| s.latency.p99_ms);
        let fresh_p99 = self.freshness.as_ref().filter(|f| f.latency.count > 0).map(|f| f.latency.p99_ms);
        self.floor = Floor::new(
            self.per_product,
            &self.floor_messages,
            self.floor_commits.as_ref(),
            self.pipeline.as_ref().and_then(|p| p.cpu_per_item_us),
        )
        .map(|f| {
            let raw = self.raw_index.as_ref().and_then(|r| r.cpu_per_item_us);
            f.against("(r) raw tantivy CPU per doc".into(), raw, PIPELINE_TARGET)
        });
        self.targets = vec![
            target("pipeline products/s ÷ raw tantivy docs/s", pipeline, "×", "≥ 0.5", |v| {
                v >= PIPELINE_TARGET
            }),
            target("freshness p99, 202 → searchable", fresh_p99, "ms", "≤ 1000 ms", |v| v <= 1000.0),
            target("HTTP search p99", http_p99, "ms", "≤ 20 ms", |v| v <= 20.0),
            target("HTTP search p99 ÷ raw tantivy p99", ratio(http_p99, raw_p99), "×", "≤ 3", |v| {
                v <= 3.0
            }),
        ];
    }

    pub fn json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "catalog: {} products, {} sellers, seed {}, {} CPUs\n",
            self.products, self.sellers, self.seed, self.cpus
        );
        let _ = writeln!(out, "{:<48} {:>14} {:>12} {:>16}", "throughput", "rate", "elapsed", "CPU per item");
        for t in [&self.raw_index, &self.pipeline_writes, &self.pipeline].into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:<48} {:>10.0} /s {:>10.1} s {:>16}",
                t.name,
                t.rate_per_s,
                t.elapsed_s,
                us(t.cpu_per_item_us)
            );
        }
        if self.pipeline_writes.is_some() {
            let _ = writeln!(
                out,
                "searchable at the end: {} (of {} products, plus the freshness probe's one)",
                self.searchable, self.products
            );
            let _ = writeln!(
                out,
                "admission bound (catalog-max-backlog): {}; writes refused with 503 and retried: {} ({} products refused at least once)",
                match self.catalog_max_backlog_ms {
                    0 => "none".to_owned(),
                    ms => format!("{ms} ms"),
                },
                self.write_refusals,
                self.writes_retried
            );
        }
        if !self.write_errors.is_empty() {
            let _ = writeln!(out, "write errors (products not written): {:?}", self.write_errors);
        }
        if let Some(f) = &self.freshness {
            let _ = writeln!(
                out,
                "\nfreshness, 202 → searchable: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} probes, {} timed out, {} refused)",
                f.latency.p50_ms, f.latency.p99_ms, f.latency.max_ms, f.probes, f.timed_out, f.refused
            );
            if !f.failed.is_empty() {
                let _ = writeln!(out, "probe writes failed (not 503): {:?}", f.failed);
            }
        }
        self.floor_table(&mut out);
        let _ = writeln!(
            out,
            "\n{:<48} {:>10} {:>9} {:>9} {:>9} {:>14} {:>14}",
            "search", "queries/s", "p50", "p99", "max", "CPU per query", "(this process)"
        );
        for s in [&self.raw_search, &self.http_search].into_iter().flatten() {
            let _ = writeln!(
                out,
                "{:<48} {:>10.0} {:>6.2} ms {:>6.2} ms {:>6.1} ms {:>14} {:>14}{}",
                s.name,
                s.rate_per_s,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.max_ms,
                us(s.cpu_per_query_us),
                us(s.process_cpu_per_query_us),
                if s.errors.is_empty() { String::new() } else { format!("  errors {:?}", s.errors) }
            );
        }
        if self.raw_search.is_some() || self.http_search.is_some() {
            let _ = writeln!(
                out,
                "queries run on {} search threads, the rest wait their turn",
                self.search_threads
            );
        }
        kinds_table(&mut out, [&self.raw_search, &self.http_search]);
        let mix: Vec<String> = self.query_mix.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "query set: {}", mix.join(", "));
        if let Some(d) = self.totals_differ {
            let _ = writeln!(out, "queries whose HTTP and in-process totals differ: {d}");
        }
        let _ = writeln!(out, "\n{:<48} {:>10} {:>12}  verdict", "figure", "value", "target");
        for t in &self.targets {
            let value = t.value.map_or("n/a".to_owned(), |v| format!("{v:.2} {}", t.unit));
            let verdict = match t.met {
                Some(true) => "met",
                Some(false) => "NOT MET",
                None => "n/a",
            };
            let _ = writeln!(out, "{:<48} {:>10} {:>12}  {verdict}", t.figure, value, t.target);
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "\nSTOPPED EARLY: {e}");
        }
        let _ = writeln!(out, "\nCPU, as shares of the whole machine over each phase:");
        let phases = [
            self.raw_index.as_ref().map(|t| (t.name, t.cpu)),
            self.pipeline.as_ref().map(|t| (t.name, t.cpu)),
            self.raw_search.as_ref().map(|s| (s.name, s.cpu)),
            self.http_search.as_ref().map(|s| (s.name, s.cpu)),
        ];
        for (name, cpu) in phases.into_iter().flatten() {
            if let Some(cpu) = cpu {
                let _ = writeln!(out, "{name:<48} {cpu}");
            }
        }
        out
    }
}

impl CatalogReport {
    /// The floor: its raw baselines, the counts per product, and the arithmetic.
    fn floor_table(&self, out: &mut String) {
        if self.floor_messages.is_empty() && self.floor_commits.is_none() && self.per_product.is_none() {
            return;
        }
        let _ = writeln!(
            out,
            "\nfloor: what a product's messages and transactions cost on this run's JetStream and Postgres alone"
        );
        floor::baselines_table(out, &self.floor_messages, self.floor_commits.as_ref());
        if let Some(n) = &self.per_product {
            let _ = writeln!(
                out,
                "counted over (w)+(p) by the servers: {:.2} JetStream messages (CMD + EVT) and {:.2} Postgres \
                 transactions (reads included; {:.2} wrote) per product",
                n.messages, n.transactions, n.writes
            );
        }
        match &self.floor {
            Some(f) => out.push_str(&f.lines("product", "(p) souk measured", "")),
            None => {
                let _ = writeln!(out, "per product: n/a (a count or a baseline is missing)");
            }
        }
    }
}

/// The pipeline's target: products/s ≥ this × raw tantivy's documents/s.
const PIPELINE_TARGET: f64 = 0.5;

fn target(
    figure: &'static str,
    value: Option<f64>,
    unit: &'static str,
    goal: &'static str,
    ok: fn(f64) -> bool,
) -> Target {
    Target { figure, value, unit, target: goal, met: value.map(ok) }
}

/// Per kind, for each search phase: p50/p99 within the mix, and alone the rate and
/// this process's CPU per query (the machine's in brackets).
fn kinds_table(out: &mut String, phases: [&Option<Searching>; 2]) {
    let phases: Vec<&Searching> = phases.into_iter().flatten().filter(|s| !s.kinds.is_empty()).collect();
    let Some(first) = phases.first() else { return };
    let _ = writeln!(
        out,
        "\nby kind: p50 / p99 within the mix | run alone: queries/s, CPU per query of this process (machine)"
    );
    let mut header = format!("{:<10}", "kind");
    for s in &phases {
        let tag = s.name.split_whitespace().next().unwrap_or("");
        let _ = write!(header, " | {tag:<3} {:>8} {:>8} {:>7} {:>18}", "p50", "p99", "alone", "CPU/query");
    }
    let _ = writeln!(out, "{header}");
    for kind in first.kinds.keys() {
        let mut line = format!("{kind:<10}");
        for s in &phases {
            let Some(k) = s.kinds.get(kind) else {
                let _ = write!(line, " | {:>47}", "n/a");
                continue;
            };
            let (rate, cpu) = match &k.alone {
                Some(a) => (
                    format!("{:.0}/s", a.rate_per_s),
                    format!("{} ({})", us(a.process_cpu_per_query_us), us(a.cpu_per_query_us)),
                ),
                None => ("n/a".to_owned(), "n/a".to_owned()),
            };
            let (p50, p99) = k.in_mix.map_or(("n/a".to_owned(), "n/a".to_owned()), |l| {
                (format!("{:.2} ms", l.p50_ms), format!("{:.2} ms", l.p99_ms))
            });
            let _ = write!(line, " |     {p50:>8} {p99:>8} {rate:>7} {cpu:>18}");
        }
        let _ = writeln!(out, "{line}");
    }
}

fn us(v: Option<f64>) -> String {
    v.map_or("n/a".to_owned(), |v| format!("{v:.0} µs"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::tests::{baseline, commits, share};

    fn report() -> CatalogReport {
        CatalogReport {
            products: 1_000,
            // 0.024 s over 1,000 docs: 24 µs each; 1.9 s over 1,000 products: 1,900 µs.
            raw_index: Some(Throughput::new("(r) raw", 1_000, 0.1, Some(share(0.024)))),
            pipeline: Some(Throughput::new("(p) pipeline", 1_000, 1.0, Some(share(1.9)))),
            floor_messages: vec![
                baseline("(j1) single", 1.0, 10_000, 0.2, 10_000),
                baseline("(j2) atomic", 0.2, 10_000, 0.1, 10_000),
            ],
            floor_commits: Some(commits(1.5, 10_000)),
            per_product: crate::floor::tests::counted(),
            ..CatalogReport::default()
        }
    }

    #[test]
    fn the_floor_is_worked_out_per_product_against_raw_tantivy() {
        let mut r = report();
        r.finish();
        let f = r.floor.as_ref().expect("floor");
        assert!((f.floor_us - 690.0).abs() < 1e-6, "3 × 30 µs + 4 × 150 µs");
        assert!((f.measured_us.unwrap_or_default() - 1_900.0).abs() < 1e-6);
        let reference = f.reference.as_ref().expect("against (r)");
        assert!((reference.cpu_us - 24.0).abs() < 1e-6);
        assert!(!reference.reachable, "690 µs > 2 × 24 µs");
        let table = r.table();
        assert!(table.contains("\nfloor: what a product's messages"), "{table}");
        assert!(table.contains("(j2) atomic: "), "{table}");
        assert!(table.contains("CPU per commit 150 µs"), "{table}");
        assert!(
            table.contains("3.00 JetStream messages (CMD + EVT) and 4.00 Postgres transactions (reads included; 1.50 wrote)"),
            "{table}"
        );
        assert!(
            table.contains("per product: 3.00 messages × 30 µs + 4.00 transactions × 150 µs = 90 µs + 600 µs = 690 µs floor"),
            "{table}"
        );
        assert!(table.contains("(p) souk measured: 1900 µs per product"), "{table}");
        assert!(
            table.contains("floor ÷ (r) raw tantivy CPU per doc (24 µs) = 28.75 × (13.12 × with reads free)"),
            "{table}"
        );
        let json: serde_json::Value = serde_json::from_str(&r.json().expect("json")).expect("parses");
        assert_eq!(json["floor"]["floor_us"].as_f64().map(f64::round), Some(690.0));
        assert_eq!(json["floor"]["reference"]["reachable"], false);
        assert_eq!(json["floor_messages"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["per_product"]["messages"], 3.0);
        assert_eq!(json["per_product"]["writes"], 1.5);
    }

    #[test]
    fn without_the_floor_phases_nothing_is_printed_for_them() {
        let mut r =
            CatalogReport { floor_messages: Vec::new(), floor_commits: None, per_product: None, ..report() };
        r.finish();
        assert!(r.floor.is_none());
        assert!(!r.table().contains("floor"), "{}", r.table());
        // Counted but not measured (--no-floor): the counts print, the sum says n/a.
        let mut counted = CatalogReport { floor_messages: Vec::new(), floor_commits: None, ..report() };
        counted.finish();
        let table = counted.table();
        assert!(table.contains("3.00 JetStream messages"), "{table}");
        assert!(table.contains("per product: n/a"), "{table}");
    }
}
