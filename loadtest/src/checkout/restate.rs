//! The peer: the same saga shape on Restate (`../shared/peers/restate-bench/run.sh`:
//! Restate server 1.7 from npm, a 3-step workflow with the `restate-sdk` crate, WAL
//! fsync on), run from here at souk's concurrencies, its output parsed.
//!
//! `run.sh` prints one line per concurrency:
//! `N=2000 C=16 ok=2000 errors=0 wall_s=6.8 runs_per_s=293.0 p50_ms=48.6 p99_ms=121.2
//! max_ms=155.0 server_cpu_s=7.20 (107% of 1 core, 3.60 ms/run) svc_cpu_s=0.80
//! driver_cpu_s=0.21+0.09 loadavg_before=3.1`. Its CPU figures are per process
//! (restate-server, the saga service, the driver), so the comparable souk figure is the
//! sum of souk's processes, not the machine's busy time.

use anyhow::Context;
use serde::Serialize;
use std::{path::Path, process::Stdio};

/// One concurrency's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RestateRun {
    pub concurrency: usize,
    pub runs: u64,
    pub ok: u64,
    pub errors: u64,
    pub runs_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// restate-server + the saga service, CPU seconds per completed run, in µs.
    pub cpu_per_run_us: f64,
    /// The same with the driver (the load generator) added, as souk's figure has it.
    pub cpu_per_run_with_driver_us: Option<f64>,
    pub loadavg_before: Option<f64>,
}

/// Run `dir/run.sh` with `N=runs` and `CONCS` = `concurrencies`, its working copy in
/// `work` when given (`RESTATE_BENCH_DIR`), and parse its result lines. Its stderr
/// (install and build progress) goes to ours.
pub async fn run(
    dir: &Path,
    work: Option<&Path>,
    runs: u64,
    concurrencies: &[usize],
) -> anyhow::Result<(Vec<RestateRun>, String)> {
    let script = dir.join("run.sh");
    anyhow::ensure!(script.is_file(), "{} not found", script.display());
    let concs: Vec<String> = concurrencies.iter().map(ToString::to_string).collect();
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(&script)
        .env("N", runs.to_string())
        .env("CONCS", concs.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // run.sh stops its own servers on TERM; if this run is dropped, stop it.
        .kill_on_drop(true);
    if let Some(work) = work {
        command.env("RESTATE_BENCH_DIR", work);
    }
    let out = command.output().await.with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "{} failed ({}); its output:\n{}",
        script.display(),
        out.status,
        tail(&stdout, 20)
    );
    let parsed: Vec<RestateRun> = stdout.lines().filter_map(parse).collect();
    anyhow::ensure!(
        !parsed.is_empty(),
        "{} printed no result line; its output:\n{}",
        script.display(),
        tail(&stdout, 20)
    );
    let header = stdout
        .lines()
        .filter(|l| l.starts_with("restate-server:") || l.starts_with("durability:"))
        .collect::<Vec<_>>()
        .join("; ");
    Ok((parsed, header))
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One result line of `run.sh` (see the module doc), or `None` for any other line.
pub fn parse(line: &str) -> Option<RestateRun> {
    if !line.starts_with("N=") {
        return None;
    }
    let field = |key: &str| -> Option<&str> {
        line.split_whitespace().find_map(|t| t.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
    };
    let num = |key: &str| field(key).and_then(|v| v.parse::<f64>().ok());
    let ok = field("ok")?.parse().ok()?;
    let server = num("server_cpu_s")?;
    let svc = num("svc_cpu_s")?;
    // `driver_cpu_s=U+S` (user + system), from /usr/bin/time.
    let driver = field("driver_cpu_s").and_then(|v| {
        let (u, s) = v.split_once('+')?;
        Some(u.parse::<f64>().ok()? + s.parse::<f64>().ok()?)
    });
    let per_run = |cpu_s: f64| if ok > 0 { cpu_s * 1e6 / ok as f64 } else { f64::NAN };
    Some(RestateRun {
        concurrency: field("C")?.parse().ok()?,
        runs: field("N")?.parse().ok()?,
        ok,
        errors: field("errors")?.parse().ok()?,
        runs_per_s: num("runs_per_s")?,
        p50_ms: num("p50_ms")?,
        p99_ms: num("p99_ms")?,
        max_ms: num("max_ms")?,
        cpu_per_run_us: per_run(server + svc),
        cpu_per_run_with_driver_us: driver.map(|d| per_run(server + svc + d)),
        loadavg_before: num("loadavg_before"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_is_parsed_and_other_lines_are_not() {
        let line = "N=2000 C=16 ok=2000 errors=0 wall_s=6.826 runs_per_s=293.0 p50_ms=48.60 \
                    p99_ms=121.20 max_ms=155.00 server_cpu_s=7.20 (107% of 1 core, 3.60 ms/run) \
                    svc_cpu_s=0.80 driver_cpu_s=0.21+0.09 loadavg_before=3.10";
        let r = parse(line).expect("parsed");
        assert_eq!((r.concurrency, r.runs, r.ok, r.errors), (16, 2000, 2000, 0));
        assert_eq!((r.runs_per_s, r.p50_ms, r.p99_ms, r.max_ms), (293.0, 48.6, 121.2, 155.0));
        // (7.20 + 0.80) s over 2000 runs; with the driver's 0.30 s.
        assert!((r.cpu_per_run_us - 4000.0).abs() < 1e-6, "{}", r.cpu_per_run_us);
        assert!((r.cpu_per_run_with_driver_us.unwrap_or_default() - 4150.0).abs() < 1e-6);
        assert_eq!(r.loadavg_before, Some(3.1));
        assert_eq!(parse("# restate peer bench 2026-11-30T09:00:00Z"), None);
        assert_eq!(parse("N=2000 C=16 ok=oops"), None, "a broken line is no result");
    }
}
