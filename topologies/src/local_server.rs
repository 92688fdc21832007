//! A local nats-server child process with durable JetStream, for `souk dev` and tests.
//!
//! The server gets a config file with file storage under `dir`, `sync_interval: always`
//! (each write fsynced before it is acknowledged: the default 2-minute interval can
//! lose acknowledged writes on power loss) and a ports file, from which the port it
//! chose is read back — nothing is bound to a fixed port unless asked.
//!
//! The server never outlives its parent for long: on Linux it gets SIGTERM when the
//! process that started it dies, however it dies (SIGKILL, an OOM kill), and a start
//! first stops a server a previous run left on the same store (the ports file names its
//! pid), so two servers never share one store directory.

use serde_json::Value;
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::process::{Child, Command};

use crate::{Error, Result};

/// Find the nats-server binary: `SOUK_NATS_SERVER_BIN`, else `.souk/bin/nats-server`
/// under `root` or any of its ancestors (where `scripts/prepare` installs it).
pub fn find_binary(root: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("SOUK_NATS_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    root.ancestors().map(|d| d.join(".souk/bin/nats-server")).find(|p| p.exists())
}

/// The local server's JetStream file-store limit (1 TiB). Without one, nats-server
/// allows 75% of the disk's free space, and a stream reserves its `max-bytes` at
/// creation: the shipped topology (4 GiB CMD + 8 GiB EVT) was refused (err 10047,
/// insufficient storage) on a disk with less than ~17 GB free — a developer's laptop, or
/// a test machine crowded by build directories — whatever it would really hold. The
/// local server (`souk dev`, tests, the benchmark) writes far less than that; a disk
/// that really fills shows as failed writes. Production servers are configured by their
/// operators.
const MAX_FILE_STORE: u64 = 1 << 40;

/// Start nats-server with its store in `dir`, on `port` (or a free one), and wait until
/// it listens. Returns the child (killed when dropped) and its port.
///
/// A server still running on `dir` from an earlier start (its parent killed before it
/// could stop it) is stopped first: two servers on one store each rebuild the streams'
/// state from files the other is writing.
pub async fn spawn(bin: &Path, dir: &Path, port: Option<u16>) -> Result<(Child, u16)> {
    let io = |e: std::io::Error| Error::Nats(format!("nats-server in {}: {e}", dir.display()));
    // Absolute, so that the config path on the server's command line identifies this
    // store whatever directory a later start runs in (see `stop_leftover`).
    let dir = &std::fs::canonicalize(dir).map_err(io)?;
    let ports_dir = dir.join("ports");
    stop_leftover(&ports_dir, &dir.join("nats.conf")).await?;
    let _ = std::fs::remove_dir_all(&ports_dir);
    std::fs::create_dir_all(&ports_dir).map_err(io)?;
    let config = dir.join("nats.conf");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{port}\"\nports_file_dir: {ports:?}\n\
             jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n  max_file_store: {MAX_FILE_STORE}\n}}\n",
            port = port.map_or(-1, i32::from),
            ports = ports_dir.display().to_string(),
            store = dir.join("jetstream").display().to_string(),
        ),
    )
    .map_err(io)?;
    let log = std::fs::File::create(dir.join("nats-server.log")).map_err(io)?;
    let mut command = Command::new(bin);
    die_with_parent(&mut command);
    let mut child = command
        .arg("-c")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        // Its own process group: Ctrl-C in a terminal signals the whole foreground group,
        // and the server must outlive souk's drain (acks, relay, last publishes), then
        // be stopped by `stop`, not die with everyone else at the first signal.
        .process_group(0)
        .spawn()
        .map_err(|e| Error::Nats(format!("starting {}: {e}", bin.display())))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().map_err(io)? {
            return Err(Error::Nats(format!(
                "nats-server exited at start ({status}); see {}",
                dir.join("nats-server.log").display()
            )));
        }
        if let Some(port) = read_port(&ports_dir) {
            return Ok((child, port));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Nats("nats-server did not report its port within 30s".into()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The child gets SIGTERM when the thread that spawned it exits — in practice when the
/// process does (souk spawns from its main thread, tests from a runtime thread that
/// lives as long as the test): a server in its own process group does not see the
/// signals that kill its parent, and would otherwise keep the store after a SIGKILL.
///
/// Unsafe code, narrowly: running anything between fork and exec (`pre_exec`) is unsafe
/// by nature, and no safe API sets a parent-death signal. The alternatives were a
/// supervisor process (one more process to outlive, for the same syscall) or
/// util-linux's `setpriv --pdeathsig` (an external binary that may be missing).
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn die_with_parent(command: &mut Command) {
    use rustix::process::{Pid, Signal, getpid, getppid, set_parent_process_death_signal};
    let parent: Pid = getpid();
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe operations are allowed. It makes two system calls (prctl,
    // getppid) through rustix, which does not allocate or take locks, and its error is
    // built from a raw errno (no allocation). It captures a `Pid` (Copy) only.
    unsafe {
        command.pre_exec(move || {
            set_parent_process_death_signal(Some(Signal::TERM))?;
            // The parent may have died between fork and prctl; then the signal never
            // comes, so do not start at all.
            if getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

/// Elsewhere there is no parent-death signal; `stop_leftover` at the next start is
/// what keeps two servers off one store.
#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Stop a nats-server that an earlier start left running on this store: the pid is in
/// its ports file's name (`nats-server_<pid>.ports`), and it is only signalled if its
/// command line still names `config` (a pid can be reused by an unrelated process).
/// SIGTERM, so it closes the store cleanly; SIGKILL after 10 s. It is not our child,
/// so its exit is polled for.
async fn stop_leftover(ports_dir: &Path, config: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(ports_dir) else { return Ok(()) };
    let pids: Vec<i32> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_suffix(".ports")?.rsplit('_').next()?.parse().ok()
        })
        .collect();
    for raw in pids {
        let Some(pid) = rustix::process::Pid::from_raw(raw) else { continue };
        if !serves(raw, config) {
            continue;
        }
        tracing::warn!(pid = raw, config = %config.display(), "stopping a nats-server left running on this store");
        for (signal, wait) in [(rustix::process::Signal::TERM, 10), (rustix::process::Signal::KILL, 5)] {
            let _ = rustix::process::kill_process(pid, signal);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(wait);
            while serves(raw, config) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !serves(raw, config) {
                break;
            }
        }
        if serves(raw, config) {
            return Err(Error::Nats(format!(
                "a nats-server (pid {raw}) left on {} does not stop; stop it by hand",
                config.display()
            )));
        }
    }
    Ok(())
}

/// Whether process `pid` is a live nats-server started with `config` (a zombie's
/// command line is empty: it no longer serves anything).
fn serves(pid: i32, config: &Path) -> bool {
    let Some(config) = config.to_str() else { return false };
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(line) => String::from_utf8_lossy(&line).split('\0').any(|arg| arg == config),
        // No procfs (macOS, BSD): ask ps.
        Err(_) if !Path::new("/proc/self").exists() => std::process::Command::new("ps")
            .args(["-o", "command=", "-p", &pid.to_string()])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().any(|arg| arg == config)),
        Err(_) => false,
    }
}

/// The client port from the `<name>_<pid>.ports` file nats-server writes once it listens.
fn read_port(dir: &Path) -> Option<u16> {
    read_url(dir)?.rsplit(':').next()?.parse().ok()
}

/// The client URL (`nats://host:port`) a nats-server started by [`spawn`] in `dir`
/// reported, if it is listening: how other commands find a running `souk dev`.
pub fn running_url(dir: &Path) -> Option<String> {
    read_url(&dir.join("ports"))
}

fn read_url(ports_dir: &Path) -> Option<String> {
    let entry = std::fs::read_dir(ports_dir)
        .ok()?
        .flatten()
        .find(|e| e.path().extension().is_some_and(|x| x == "ports"))?;
    let ports: Value = serde_json::from_str(&std::fs::read_to_string(entry.path()).ok()?).ok()?;
    Some(ports.get("nats")?.get(0)?.as_str()?.to_owned())
}

/// Stop a server started by [`spawn`]: SIGTERM, so it closes its store cleanly, then
/// SIGKILL if it has not exited within 10 s.
pub async fn stop(mut child: Child) {
    if let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id.try_into().ok()?)) {
        // Our own child, by pid.
        let term = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if term.is_ok() && tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}
