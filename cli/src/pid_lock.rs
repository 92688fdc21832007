//! An advisory lock on a file that records its holder's pid: how a `souk dev` data dir
//! and an embedded search index each get one process at a time. The OS drops the lock
//! when the process dies, so a crash never leaves it held.

use anyhow::Context;
use std::{
    fs::File,
    io::{Seek, Write},
    path::Path,
};

/// Lock `path` for this process and write its pid there; `Ok(Err(pid))` with the pid
/// the holder wrote when another process holds it.
pub fn lock(path: &Path) -> anyhow::Result<Result<File, String>> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)?;
            file.seek(std::io::SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            Ok(Ok(file))
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            Ok(Err(std::fs::read_to_string(path).unwrap_or_default().trim().to_owned()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("locking {}", path.display())),
    }
}
