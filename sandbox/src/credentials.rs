//! A sandbox's API credentials: a random key kept in a file, generated at first start
//! (by `souk dev`, into its data dir) and read by the server and its clients alike.
//! The key is never printed or logged: it is only ever read from the file.

use std::{io::Write, path::Path};

/// The key in `path`, generated (32 random bytes, hex) if the file does not exist.
/// A new file is readable by its owner only.
pub fn load_or_generate(path: &Path) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(key) => {
            let key = key.trim().to_owned();
            if key.len() < 16 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: a sandbox API key must be at least 16 characters", path.display()),
                ));
            }
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut rng = fastrand::Rng::new();
            let key: String = (0..32).map(|_| format!("{:02x}", rng.u8(..))).collect();
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    file.write_all(key.as_bytes())?;
                    Ok(key)
                }
                // Another process (the other sandbox of `souk dev`) wrote it first.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_generate(path),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Read a key from `path` (it must exist).
pub fn load(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_owned())
}
