//! The checkout run's figures, the ratios against Restate and the targets, and
//! how they print (a table, or one JSON object).

use serde::Serialize;
use std::{collections::BTreeMap, fmt::Write};

use super::restate::RestateRun;
use crate::{
    cpu::Share,
    diag::Timing,
    floor::{self, Commits, Floor, Messages, PerOperation},
    report::Latency,
};

/// CPU of one phase per confirmed checkout, in µs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PerCheckout {
    /// The whole machine's busy time (every process, other agents' included).
    pub machine_us: f64,
    /// This process: souk (ingress, pools, relay, sandboxes) and the load generator.
    pub souk_us: f64,
    pub postgres_us: f64,
    pub nats_server_us: f64,
}

impl PerCheckout {
    pub fn of(cpu: &Share, checkouts: u64) -> Option<PerCheckout> {
        if checkouts == 0 {
            return None;
        }
        // Shares are of the machine's CPU time over the window (all CPUs, busy or idle).
        let machine_s = if cpu.busy > 0.0 { cpu.busy_cpu_s / cpu.busy } else { 0.0 };
        let us = |share: f64| share * machine_s * 1e6 / checkouts as f64;
        Some(PerCheckout {
            machine_us: cpu.busy_cpu_s * 1e6 / checkouts as f64,
            souk_us: us(cpu.this_process),
            postgres_us: us(cpu.postgres),
            nats_server_us: us(cpu.nats_server),
        })
    }

    /// souk's own processes, as Restate's figure counts its own.
    pub fn processes_us(&self) -> f64 {
        self.souk_us + self.postgres_us + self.nats_server_us
    }
}

/// One souk phase: closed loop at a concurrency, or open loop at half the saturation.
#[derive(Debug, Clone, Serialize)]
pub struct SoukPhase {
    pub name: String,
    pub concurrency: Option<usize>,
    /// Open loop only: checkouts offered per second.
    pub offered_per_s: Option<f64>,
    /// Checkouts confirmed inside the measured window, and per second.
    pub confirmed: u64,
    pub checkouts_per_s: f64,
    /// `POST /v1/checkout` → `OrderConfirmed` received.
    pub latency: Latency,
    /// Failed checkouts by class (`cancelled`, `checkout 503`, `timeout`, …).
    pub errors: BTreeMap<String, u64>,
    /// Open loop: arrivals never sent because every slot stayed busy.
    pub unsent: u64,
    /// Checkouts confirmed while the CPU window was open (the divisor of `cpu_per_checkout`).
    pub cpu_checkouts: u64,
    pub cpu: Option<Share>,
    pub cpu_per_checkout: Option<PerCheckout>,
    /// souk's handler time per pool and per HTTP route over the phase, per checkout (ms).
    pub pool_ms_per_checkout: BTreeMap<String, f64>,
    pub route_ms_per_checkout: BTreeMap<String, f64>,
    pub loadavg: Option<[f64; 3]>,
    /// Transactions committed in the run's database (`xact_commit`: read-only ones and
    /// this harness's polls included), and messages stored in CMD and EVT, per confirmed
    /// checkout.
    pub transactions_per_checkout: Option<f64>,
    pub messages_per_checkout: Option<f64>,
    /// Of those transactions, the ones that wrote (transaction ids assigned: the whole
    /// Postgres server's counter).
    pub writes_per_checkout: Option<f64>,
    /// Those × the cheapest (j)'s CPU per message and (c)'s CPU per commit, beside this
    /// phase's machine CPU per checkout and ÷ Restate's CPU per run at its concurrency.
    pub floor: Option<Floor>,
}

impl SoukPhase {
    pub fn timings(pools: &BTreeMap<String, Timing>, checkouts: u64) -> BTreeMap<String, f64> {
        pools
            .iter()
            .filter(|_| checkouts > 0)
            .map(|(k, t)| (k.clone(), t.total_s * 1e3 / checkouts as f64))
            .collect()
    }
}

/// (i) The settled stack with nothing to do.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Idle {
    pub seconds: f64,
    pub cpu: Share,
    /// CPU milliseconds per second of this process, Postgres and nats-server.
    pub souk_ms_per_s: f64,
    pub postgres_ms_per_s: f64,
    pub nats_server_ms_per_s: f64,
}

impl Idle {
    pub fn new(cpu: Share, window: std::time::Duration) -> Idle {
        let machine_s = if cpu.busy > 0.0 { cpu.busy_cpu_s / cpu.busy } else { 0.0 };
        let per_s = |share: f64| share * machine_s * 1e3 / window.as_secs_f64().max(1e-9);
        Idle {
            seconds: window.as_secs_f64(),
            cpu,
            souk_ms_per_s: per_s(cpu.this_process),
            postgres_ms_per_s: per_s(cpu.postgres),
            nats_server_ms_per_s: per_s(cpu.nats_server),
        }
    }
}

/// One figure against its target, at one concurrency.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub figure: String,
    pub value: Option<f64>,
    pub unit: &'static str,
    pub target: &'static str,
    pub met: Option<bool>,
}

/// Everything one checkout run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckoutReport {
    pub skus: usize,
    pub sellers: usize,
    pub lines: usize,
    pub cpus: usize,
    /// (c) the raw Postgres commit rate of this run, and its CPU per commit.
    pub postgres: Option<Commits>,
    /// (j1), (j2): raw JetStream publishes then pull and ack, CPU per message.
    pub jetstream_floor: Vec<Messages>,
    pub idle: Option<Idle>,
    pub saturation: Vec<SoukPhase>,
    pub half: Option<SoukPhase>,
    pub restate: Vec<RestateRun>,
    /// restate-server's version and durability line, as run.sh printed them.
    pub restate_setup: Option<String>,
    /// Why the peer did not run (or failed), if it did not.
    pub restate_skipped: Option<String>,
    pub targets: Vec<Target>,
    pub error: Option<String>,
}

impl CheckoutReport {
    /// Judge souk against Restate at each concurrency both ran.
    pub fn finish(&mut self) {
        self.targets.clear();
        for s in self.saturation.iter_mut().chain(&mut self.half) {
            let counted =
                s.messages_per_checkout.zip(s.transactions_per_checkout).map(|(m, t)| PerOperation {
                    messages: m,
                    transactions: t,
                    // Not read: price every transaction as a write.
                    writes: s.writes_per_checkout.unwrap_or(t),
                });
            let floor = Floor::new(
                counted,
                &self.jetstream_floor,
                self.postgres.as_ref(),
                s.cpu_per_checkout.map(|p| p.machine_us),
            );
            s.floor = floor.map(|f| match s.concurrency {
                Some(c) => {
                    let r = self.restate.iter().find(|r| r.concurrency == c).map(|r| r.cpu_per_run_us);
                    f.against(format!("Restate CPU per run at {c}"), r, RATE_TARGET)
                }
                None => f,
            });
        }
        for s in &self.saturation {
            let Some(c) = s.concurrency else { continue };
            let r = self.restate.iter().find(|r| r.concurrency == c);
            let rate = r.filter(|r| r.runs_per_s > 0.0).map(|r| s.checkouts_per_s / r.runs_per_s);
            self.targets.push(Target {
                figure: format!("checkouts/s ÷ Restate runs/s at {c}"),
                value: rate,
                unit: "×",
                target: "≥ 1.5",
                met: rate.map(|v| v >= RATE_TARGET),
            });
            let p99 = r.filter(|_| s.latency.count > 0).map(|r| s.latency.p99_ms / r.p99_ms);
            self.targets.push(Target {
                figure: format!("p99 ÷ Restate's p99 at {c}"),
                value: p99,
                unit: "×",
                target: "< 1",
                met: p99.map(|v| v < 1.0),
            });
            let cpu = r.zip(s.cpu_per_checkout).map(|(r, p)| p.processes_us() / r.cpu_per_run_us);
            self.targets.push(Target {
                figure: format!("CPU per checkout ÷ Restate's per run at {c}"),
                value: cpu,
                unit: "×",
                target: "(reported)",
                met: None,
            });
        }
    }

    pub fn json(&self) -> anyhow::Result<String> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "checkout: {} SKUs, {} sellers, {} line(s) per cart, {} CPUs; payment sandbox: latency 0, no faults\n",
            self.skus, self.sellers, self.lines, self.cpus
        );
        floor::baselines_table(&mut out, &self.jetstream_floor, self.postgres.as_ref());
        if let Some(i) = &self.idle {
            let _ = writeln!(
                out,
                "(i) souk stack idle for {:.0} s: CPU ms per second: souk {:.0}, postgres {:.0}, nats-server {:.0}  [{}]",
                i.seconds, i.souk_ms_per_s, i.postgres_ms_per_s, i.nats_server_ms_per_s, i.cpu
            );
        }
        let _ = writeln!(
            out,
            "\n{:<34} {:>12} {:>9} {:>9} {:>9} {:>12} {:>24}",
            "souk: POST /v1/checkout → confirmed",
            "checkouts/s",
            "p50",
            "p99",
            "max",
            "CPU/checkout",
            "souk / postgres / nats"
        );
        for s in self.saturation.iter().chain(&self.half) {
            let (machine, split) = match s.cpu_per_checkout {
                Some(p) => (
                    format!("{:.0} µs", p.machine_us),
                    format!("{:.0} / {:.0} / {:.0} µs", p.souk_us, p.postgres_us, p.nats_server_us),
                ),
                None => ("n/a".into(), "n/a".into()),
            };
            let _ = writeln!(
                out,
                "{:<34} {:>12.1} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>12} {:>24}",
                s.name,
                s.checkouts_per_s,
                s.latency.p50_ms,
                s.latency.p99_ms,
                s.latency.max_ms,
                machine,
                split
            );
            let mut notes = Vec::new();
            if let Some(l) = s.loadavg {
                notes.push(format!("load average {:.2} {:.2} {:.2}", l[0], l[1], l[2]));
            }
            if let Some(c) = s.cpu {
                notes.push(format!("{c}"));
            }
            if !s.errors.is_empty() {
                notes.push(format!("errors {:?}", s.errors));
            }
            if let (Some(c), Some(m)) = (s.transactions_per_checkout, s.messages_per_checkout) {
                let writes = s.writes_per_checkout.map_or(String::new(), |w| format!("; {w:.1} wrote"));
                notes.push(format!(
                    "per checkout: {c:.1} Postgres transactions (reads included{writes}), {m:.1} JetStream messages"
                ));
            }
            if s.unsent > 0 {
                notes.push(format!("{} arrivals not sent", s.unsent));
            }
            let _ = writeln!(out, "{:<34} {}", "", notes.join("; "));
            if !s.pool_ms_per_checkout.is_empty() {
                let pools: Vec<String> =
                    s.pool_ms_per_checkout.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
                let _ = writeln!(out, "{:<34} handler ms per checkout: {}", "", pools.join(", "));
            }
            if !s.route_ms_per_checkout.is_empty() {
                let routes: Vec<String> =
                    s.route_ms_per_checkout.iter().map(|(k, v)| format!("{k} {v:.2}")).collect();
                let _ = writeln!(out, "{:<34} HTTP ms per checkout: {}", "", routes.join(", "));
            }
            if let Some(f) = &s.floor {
                let _ = writeln!(out, "{:<34} floor (this run's JetStream and Postgres alone):", "");
                out.push_str(&f.lines("checkout", "souk measured (machine)", &" ".repeat(35)));
            }
        }
        if !self.restate.is_empty() {
            let _ = writeln!(
                out,
                "\n{:<34} {:>12} {:>9} {:>9} {:>9} {:>12} {:>24}",
                "Restate: POST …/run (3 steps)", "runs/s", "p50", "p99", "max", "CPU/run", "with driver"
            );
            for r in &self.restate {
                let _ = writeln!(
                    out,
                    "{:<34} {:>12.1} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>9.0} µs {:>21} µs",
                    format!("closed loop, {} concurrent", r.concurrency),
                    r.runs_per_s,
                    r.p50_ms,
                    r.p99_ms,
                    r.max_ms,
                    r.cpu_per_run_us,
                    r.cpu_per_run_with_driver_us.map_or("n/a".into(), |v| format!("{v:.0}")),
                );
                let _ = writeln!(
                    out,
                    "{:<34} {} of {} runs ok, {} errors; load average before {}",
                    "",
                    r.ok,
                    r.runs,
                    r.errors,
                    r.loadavg_before.map_or("n/a".into(), |l| format!("{l:.2}"))
                );
            }
            if let Some(s) = &self.restate_setup {
                let _ = writeln!(out, "{:<34} {s}", "");
            }
        }
        if let Some(why) = &self.restate_skipped {
            let _ = writeln!(out, "\nRestate peer: not measured: {why}");
        }
        if !self.targets.is_empty() {
            let _ = writeln!(out, "\n{:<48} {:>10} {:>12}  verdict", "figure", "value", "target");
            for t in &self.targets {
                let value = t.value.map_or("n/a".to_owned(), |v| format!("{v:.2} {}", t.unit));
                let verdict = match t.met {
                    Some(true) => "met",
                    Some(false) => "NOT MET",
                    None => "",
                };
                let _ = writeln!(out, "{:<48} {:>10} {:>12}  {verdict}", t.figure, value, t.target);
            }
            let _ = writeln!(
                out,
                "(CPU ratios: souk's three processes — load generator included — per checkout ÷ \
                 restate-server + saga service per run)"
            );
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "\nSTOPPED EARLY: {e}");
        }
        out
    }
}

/// The checkout's target: checkouts/s ≥ this × Restate's runs/s.
const RATE_TARGET: f64 = 1.5;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::floor::tests::{baseline, commits};

    fn phase(concurrency: Option<usize>, machine_us: f64) -> SoukPhase {
        SoukPhase {
            name: "closed loop, 64 concurrent".into(),
            concurrency,
            offered_per_s: None,
            confirmed: 1_000,
            checkouts_per_s: 100.0,
            latency: Latency::of(&crate::load::Tally::empty().latency),
            errors: BTreeMap::new(),
            unsent: 0,
            cpu_checkouts: 1_000,
            cpu: None,
            cpu_per_checkout: Some(PerCheckout { machine_us, ..PerCheckout::default() }),
            pool_ms_per_checkout: BTreeMap::new(),
            route_ms_per_checkout: BTreeMap::new(),
            loadavg: None,
            transactions_per_checkout: Some(21.0),
            messages_per_checkout: Some(12.0),
            writes_per_checkout: Some(9.0),
            floor: None,
        }
    }

    #[test]
    fn each_phase_gets_its_floor_and_the_closed_loops_restates() {
        let restate = |concurrency, cpu_per_run_us| RestateRun {
            concurrency,
            runs: 2_000,
            ok: 2_000,
            errors: 0,
            runs_per_s: 1_000.0,
            p50_ms: 10.0,
            p99_ms: 20.0,
            max_ms: 30.0,
            cpu_per_run_us,
            cpu_per_run_with_driver_us: None,
            loadavg_before: None,
        };
        let mut r = CheckoutReport {
            // 30 µs per message (atomic), 150 µs per commit.
            jetstream_floor: vec![
                baseline("(j1) single", 1.0, 10_000, 0.2, 10_000),
                baseline("(j2) atomic", 0.2, 10_000, 0.1, 10_000),
            ],
            postgres: Some(commits(1.5, 10_000)),
            saturation: vec![phase(Some(64), 18_000.0), phase(Some(16), 26_000.0)],
            half: Some(phase(None, 20_000.0)),
            restate: vec![restate(64, 1_500.0)],
            ..CheckoutReport::default()
        };
        r.finish();
        // 12 × 30 + 21 × 150 = 3,510 µs.
        let at_64 = r.saturation[0].floor.as_ref().expect("floor at 64");
        assert!((at_64.floor_us - 3_510.0).abs() < 1e-6);
        assert!((at_64.above_floor_us.unwrap_or_default() - 14_490.0).abs() < 1e-6);
        // With reads free: 12 × 30 + 9 × 150 = 1,710 µs.
        assert!((at_64.writes_floor_us - 1_710.0).abs() < 1e-6);
        let restate_64 = at_64.reference.as_ref().expect("Restate ran at 64");
        assert!((restate_64.floor_ratio - 2.34).abs() < 1e-9);
        assert!((restate_64.writes_floor_ratio - 1.14).abs() < 1e-9);
        assert!(!restate_64.reachable, "3,510 µs > 1,500 µs ÷ 1.5");
        assert!(r.saturation[1].floor.as_ref().expect("floor at 16").reference.is_none(), "no Restate at 16");
        assert!(r.half.as_ref().and_then(|h| h.floor.as_ref()).expect("open loop").reference.is_none());
        let table = r.table();
        assert!(table.contains("(j1) single: "), "{table}");
        assert!(table.contains("(c) raw Postgres insert+commit, 32 connections"), "{table}");
        assert!(
            table.contains("per checkout: 12.00 messages × 30 µs + 21.00 transactions × 150 µs = 360 µs + 3150 µs = 3510 µs floor"),
            "{table}"
        );
        assert!(
            table.contains("souk measured (machine): 18000 µs per checkout; the floor is 20 % of it"),
            "{table}"
        );
        assert!(
            table.contains("floor ÷ Restate CPU per run at 64 (1500 µs) = 2.34 × (1.14 × with reads free)"),
            "{table}"
        );
        assert!(table.contains("21.0 Postgres transactions (reads included; 9.0 wrote)"), "{table}");
        assert!(table.contains("OUT OF REACH"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&r.json().expect("json")).expect("parses");
        assert_eq!(
            json["saturation"][0]["floor"]["reference"]["at_most"].as_f64().map(|v| (v * 100.0).round()),
            Some(67.0)
        );
        assert_eq!(json["jetstream_floor"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn cpu_per_checkout_splits_the_machine_by_process() {
        // 2 CPUs, 10 s window: 20 CPU-s in all, 15 busy; this process 40%, postgres 20%,
        // nats-server 10% of the machine; 1,000 checkouts.
        let cpu = Share {
            busy: 0.75,
            busy_cpu_s: 15.0,
            this_process: 0.4,
            this_process_cpu_s: 8.0,
            nats_server: 0.1,
            postgres: 0.2,
        };
        let p = PerCheckout::of(&cpu, 1_000).expect("figures");
        assert!((p.machine_us - 15_000.0).abs() < 1e-6);
        assert!((p.souk_us - 8_000.0).abs() < 1e-6);
        assert!((p.postgres_us - 4_000.0).abs() < 1e-6);
        assert!((p.nats_server_us - 2_000.0).abs() < 1e-6);
        assert!(PerCheckout::of(&cpu, 0).is_none());
    }
}
