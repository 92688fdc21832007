//! Where the machine's CPU went during a phase, read from `/proc`: how busy the machine
//! was, and the shares of this process (souk, when it runs, and the load generator),
//! of nats-server and of Postgres. A rate means little without it: a baseline that had
//! the machine to itself and a pipeline that shared it are not the same experiment.
//!
//! All figures are fractions of the whole machine (all CPUs): 0.5 on two CPUs is one
//! CPU's worth. Processes are found by name (`nats-server`, `postgres`), so an idle
//! server of the same name elsewhere on the machine is counted too. Each process counts
//! its own time plus that of its children it has reaped, so a Postgres backend that
//! exits before the second sample is still counted, through the postmaster, less what
//! it had used before the first sample; a process started between the samples counts
//! whole. Linux only; elsewhere there is
//! simply no CPU line.

use serde::Serialize;
use std::collections::HashMap;

/// Clock ticks per second of `/proc/stat` and `/proc/<pid>/stat` (USER_HZ: 100 on
/// every Linux architecture souk runs on).
const USER_HZ: f64 = 100.0;

/// Counters at one moment, in the kernel's clock ticks.
#[derive(Debug, Clone)]
pub struct Sample {
    total: u64,
    idle: u64,
    /// pid → (process name, CPU ticks).
    processes: HashMap<u32, (String, u64)>,
    this: u32,
}

/// Shares of the machine between two samples.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Share {
    pub busy: f64,
    /// CPU time the whole machine spent busy over the window, in seconds (all CPUs).
    pub busy_cpu_s: f64,
    pub this_process: f64,
    /// CPU time this process (souk and the load generator) spent over the window, in
    /// seconds: unlike `busy_cpu_s`, not inflated by other work on a shared machine.
    pub this_process_cpu_s: f64,
    pub nats_server: f64,
    pub postgres: f64,
}

/// Read the counters now; `None` where `/proc` is not there to read.
pub fn sample() -> Option<Sample> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> =
        stat.lines().next()?.split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    if cpu.len() < 5 {
        return None;
    }
    let processes = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, process_ticks(pid)?)))
        .collect();
    Some(Sample { total: cpu.iter().sum(), idle: cpu[3] + cpu[4], processes, this: std::process::id() })
}

/// `(name, utime + stime + cutime + cstime)` of one process, all its threads and its
/// reaped children included.
fn process_ticks(pid: u32) -> Option<(String, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (name) state ...`: the name may hold spaces and parentheses, so cut at the last ')'.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name come fields 3.. of proc(5): utime, stime, cutime, cstime are 14–17.
    let ticks = fields.get(11..15)?.iter().map(|f| f.parse::<u64>().ok()).sum::<Option<u64>>()?;
    Some((name, ticks))
}

/// One phase's CPU window: opened as the phase starts and closed as its work ends,
/// before it stops its servers. Closing after a shutdown would race it: a Postgres
/// backend reaped between the reading of the postmaster and its own would count as
/// gone (its earlier time subtracted) without showing up in the postmaster's reaped
/// time, and one run of (e) showed 8% for Postgres where top and every other run
/// showed 28%.
pub struct Window(Option<Sample>);

impl Window {
    pub fn open() -> Window {
        Window(sample())
    }

    /// The shares from the opening until now.
    pub fn close(self) -> Option<Share> {
        share(self.0.as_ref(), sample().as_ref())
    }
}

/// The shares from `before` to `after`; `None` if either is missing or no time passed.
pub fn share(before: Option<&Sample>, after: Option<&Sample>) -> Option<Share> {
    let (a, b) = (before?, after?);
    let total = b.total.checked_sub(a.total).filter(|t| *t > 0)? as f64;
    let used = |pick: &dyn Fn(u32, &str) -> bool| -> f64 {
        let grown: u64 = b
            .processes
            .iter()
            .filter(|(pid, (name, _))| pick(**pid, name))
            .map(|(pid, (_, ticks))| ticks.saturating_sub(a.processes.get(pid).map_or(0, |(_, t)| *t)))
            .sum();
        // A process gone by the second sample reappears whole in its parent's reaped
        // time; what it had used before the first sample was not in this window.
        let gone: u64 = a
            .processes
            .iter()
            .filter(|(pid, (name, _))| pick(**pid, name) && !b.processes.contains_key(pid))
            .map(|(_, (_, ticks))| ticks)
            .sum();
        grown.saturating_sub(gone) as f64 / total
    };
    let idle = b.idle.saturating_sub(a.idle) as f64 / total;
    let busy = (1.0 - idle).clamp(0.0, 1.0);
    let this_process = used(&|pid, _| pid == b.this);
    Some(Share {
        busy,
        // /proc/stat counts in USER_HZ, which Linux fixes at 100 for user space.
        busy_cpu_s: busy * total / USER_HZ,
        this_process,
        this_process_cpu_s: this_process * total / USER_HZ,
        nats_server: used(&|_, name| name == "nats-server"),
        postgres: used(&|_, name| name == "postgres"),
    })
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |v: f64| format!("{:.0}%", v * 100.0);
        write!(
            f,
            "busy {:>4}: this process {:>4}, nats-server {:>4}, postgres {:>4}",
            pct(self.busy),
            pct(self.this_process),
            pct(self.nats_server),
            pct(self.postgres)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(total: u64, idle: u64, processes: &[(u32, &str, u64)]) -> Sample {
        Sample {
            total,
            idle,
            processes: processes.iter().map(|(pid, name, t)| (*pid, ((*name).to_owned(), *t))).collect(),
            this: 1,
        }
    }

    #[test]
    fn shares_count_growth_new_processes_and_exited_children() {
        let before = at(
            1_000,
            600,
            &[(1, "souk-loadtest", 100), (2, "nats-server", 50), (3, "postgres", 10), (4, "postgres", 30)],
        );
        // Over 200 ticks: 50 idle; this process +40; nats +60; the postmaster (3) reaped
        // backend 4 (30 before, 45 at exit) and gained 5 of its own; backend 5 is new.
        let after = at(
            1_200,
            650,
            &[(1, "souk-loadtest", 140), (2, "nats-server", 110), (3, "postgres", 60), (5, "postgres", 20)],
        );
        let s = share(Some(&before), Some(&after)).expect("share");
        assert_eq!(s.busy, 0.75);
        assert_eq!(s.busy_cpu_s, 1.5, "150 busy ticks of 200");
        assert_eq!(s.this_process, 0.2);
        assert_eq!(s.this_process_cpu_s, 0.4, "40 ticks");
        assert_eq!(s.nats_server, 0.3);
        // 50 (postmaster, incl. the reaped 45) − 30 (backend 4 before) + 20 (new) = 40.
        assert_eq!(s.postgres, 0.2);
        assert!(share(Some(&before), Some(&before)).is_none(), "no time passed");
        assert!(share(None, Some(&after)).is_none());
    }

    #[test]
    fn this_process_is_read_from_proc() {
        let Some(first) = sample() else {
            assert!(!std::path::Path::new("/proc/stat").exists(), "no CPU figures on Linux");
            return;
        };
        let own = |s: &Sample| s.processes.get(&s.this).map(|(_, t)| *t);
        let start = own(&first).expect("this process is listed");
        // Spin until the kernel has charged us CPU time: waits on CPU, not on the clock,
        // so a busy machine only makes it slower.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        let later = loop {
            for _ in 0..1_000_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
            let now = sample().expect("sample");
            // Both counters: a process's time and the machine's (/proc/stat) are kept
            // apart and can move a tick apart (seen: our time grew, the total not yet;
            // and our time 2 ticks on while the total was 1 on, a share of 200 %): wait
            // for enough ticks that one of skew cannot push the share past the whole.
            if own(&now).is_some_and(|t| t > start) && now.total >= first.total + 20 {
                break now;
            }
            assert!(std::time::Instant::now() < deadline, "no CPU time charged in 60 s");
        };
        std::hint::black_box(x);
        let s = share(Some(&first), Some(&later)).expect("share");
        assert!(s.this_process > 0.0 && s.this_process <= 1.0, "{s}");
    }
}
