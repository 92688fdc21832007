//! Postgres connection options, and the names of per-deployment databases.

use serde::Deserialize;
use std::time::Duration;

/// How to reach Postgres.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct PgOptions {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Connections in the pool.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Longest wait for a pooled connection (then the caller gets a retryable error).
    #[serde(default = "default_acquire_timeout", with = "humantime_serde")]
    pub acquire_timeout: Duration,
}

fn default_max_connections() -> u32 {
    16
}
fn default_acquire_timeout() -> Duration {
    Duration::from_secs(2)
}

impl PgOptions {
    /// Options for `url` with default pool settings.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            max_connections: default_max_connections(),
            acquire_timeout: default_acquire_timeout(),
        }
    }
}

/// `url` naming the database `<its database>_<8 hex digits>` (a stable hash of `dir`):
/// the database of one `souk dev` data dir on the server of `url` (`dir` should be
/// canonical, so that one directory always gets one database). A URL without a database
/// counts as naming `souk`. The base name is cut so the result fits Postgres' 63-byte
/// identifiers, which it would otherwise cut itself, losing the suffix.
pub fn database_for_dir(url: &str, dir: &std::path::Path) -> String {
    let suffix = format!("_{:08x}", fnv1a(dir.as_os_str().as_encoded_bytes()) as u32);
    let authority = url.find("://").map_or(0, |s| s + 3);
    let path = url[authority..].find('/').map(|p| authority + p);
    let query = url.find('?').filter(|&q| q >= authority);
    let end = query.unwrap_or(url.len());
    let (head, base) = match path.filter(|&p| p < end) {
        Some(p) if p + 1 < end => (&url[..p], &url[p + 1..end]),
        Some(p) => (&url[..p], "souk"),
        None => (&url[..end], "souk"),
    };
    let mut cut = base.len().min(63 - suffix.len());
    while !base.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{head}/{}{suffix}{}", &base[..cut], &url[end..])
}

/// 64-bit FNV-1a: small, and stable across Rust versions and platforms (std's hasher is
/// neither promised), so a data dir keeps its database across upgrades.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// `url` with its password replaced by `***`, for messages and printed config: in the
/// user info (`user:secret@`) and as a `password=` query parameter, which libpq and
/// sqlx accept too.
pub fn redact(url: &str) -> String {
    let mut out = match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].split_once(':') {
            Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    };
    if let Some(q) = out.find('?') {
        let query: Vec<String> = out[q + 1..]
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{}?{}", &out[..q], query.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{database_for_dir, redact};
    use std::path::Path;

    #[test]
    fn each_directory_gets_its_own_database_on_the_same_server() {
        let a = database_for_dir("postgres://u:pw@h:5432/souk?sslmode=disable", Path::new("/srv/a"));
        let b = database_for_dir("postgres://u:pw@h:5432/souk?sslmode=disable", Path::new("/srv/b"));
        assert_ne!(a, b);
        assert_eq!(a, database_for_dir("postgres://u:pw@h:5432/souk?sslmode=disable", Path::new("/srv/a")));
        let (prefix, rest) = a.split_once("/souk_").expect("suffixed");
        assert_eq!(prefix, "postgres://u:pw@h:5432");
        let (hex, query) = rest.split_once('?').expect("query kept");
        assert!(hex.len() == 8 && hex.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        assert_eq!(query, "sslmode=disable");
        // Stable across builds: a data dir keeps its database after an upgrade.
        assert_eq!(database_for_dir("postgres://h/souk", Path::new("/srv/a")), "postgres://h/souk_700eaeb7");
        assert!(database_for_dir("postgres://h", Path::new("/x")).starts_with("postgres://h/souk_"));
        assert!(database_for_dir("postgres://h/", Path::new("/x")).starts_with("postgres://h/souk_"));
        let long = database_for_dir(&format!("postgres://h/{}", "d".repeat(80)), Path::new("/x"));
        assert_eq!(long.len() - "postgres://h/".len(), 63, "fits an identifier: {long}");
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            redact("postgres://u@h/db?sslmode=require&password=secret&x=1"),
            "postgres://u@h/db?sslmode=require&password=***&x=1"
        );
    }
}
