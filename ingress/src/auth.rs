//! Authentication: HS256 JWT bearer tokens with a tenant and roles.
//!
//! Keys carry a `kid`. Several keys verify at once (a token names its key in its
//! header), so a new key can be rolled out to every verifier before issuers sign with
//! it, and the old one removed once its tokens have expired: rotation without downtime.
//! The first key signs (`souk token`). Production processes load their keys from
//! configured files; only `souk dev` generates one (32 random bytes in its data dir,
//! never committed, never printed).
//!
//! Verification refuses what it does not understand: unknown `crit` header parameters
//! (RFC 7515 §4.1.11), a token without a `kid` or with an unknown one, `nbf` in the
//! future, and claims the rest of the system cannot carry — an empty, overlong or
//! control-character `sub` or `tenant` would otherwise fail a shared Postgres batch or
//! a NATS header after the request was accepted.
//!
//! A seller principal carries the seller ids it may act for (`sellers`, checked like
//! `sub`, at most [`MAX_SELLERS`]); an admin may act for any seller. `staff` is the role
//! internal teams use for jobs.

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::{path::Path, sync::Arc};

use crate::{AppState, Problem};

const ISSUER: &str = "souk";
const AUDIENCE: &str = "souk-api";

/// Longest `sub` and `tenant` accepted, in bytes. Both end up in primary keys, message
/// ids and NATS headers.
pub const MAX_CLAIM_LEN: usize = 128;

/// Most seller ids one token may carry.
pub const MAX_SELLERS: usize = 64;

/// Shortest signing secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

/// The `kid` of the key `souk dev` generates.
pub const DEV_KID: &str = "dev";

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Buyer,
    Seller,
    Support,
    Admin,
    /// Internal teams: jobs (imports, reindex).
    Staff,
    /// Operators: dead-letter redrives and purges, pool pause/resume/scale, the
    /// dashboard (issue 11).
    Operator,
}

/// The claims souk issues and accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub roles: Vec<Role>,
    pub iss: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
    /// Not valid before (seconds since the epoch), if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The sellers this principal may act for (with the `seller` role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sellers: Vec<String>,
}

impl Claims {
    /// Claims for `sub` in `tenant` with `roles`, valid for `ttl` from now.
    pub fn new(sub: &str, tenant: &str, roles: Vec<Role>, ttl: std::time::Duration) -> Self {
        let now = jsonwebtoken::get_current_timestamp();
        Claims {
            sub: sub.to_owned(),
            tenant: tenant.to_owned(),
            roles,
            iss: ISSUER.into(),
            aud: AUDIENCE.into(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            nbf: None,
            sellers: Vec::new(),
        }
    }

    /// The same claims, acting for `sellers`.
    pub fn with_sellers(mut self, sellers: Vec<String>) -> Self {
        self.sellers = sellers;
        self
    }

    /// Whether this principal may write the listings of `seller`: a seller acting for
    /// it, or an admin (any seller).
    pub fn may_act_for(&self, seller: &str) -> bool {
        self.has(Role::Admin) || (self.has(Role::Seller) && self.sellers.iter().any(|s| s == seller))
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// `sub` and `tenant` are fit to become key columns, message ids and headers.
    pub fn check_identity(&self) -> Result<(), &'static str> {
        check_identifier(&self.sub).map_err(|why| match why {
            Bad::Empty => "token subject is empty",
            Bad::Long => "token subject is too long",
            Bad::Control => "token subject contains control characters",
        })?;
        check_identifier(&self.tenant).map_err(|why| match why {
            Bad::Empty => "token tenant is empty",
            Bad::Long => "token tenant is too long",
            Bad::Control => "token tenant contains control characters",
        })?;
        if self.sellers.len() > MAX_SELLERS {
            return Err("token carries too many sellers");
        }
        for seller in &self.sellers {
            check_identifier(seller).map_err(|why| match why {
                Bad::Empty => "token seller id is empty",
                Bad::Long => "token seller id is too long",
                Bad::Control => "token seller id contains control characters",
            })?;
        }
        Ok(())
    }
}

enum Bad {
    Empty,
    Long,
    Control,
}

fn check_identifier(value: &str) -> Result<(), Bad> {
    if value.trim().is_empty() {
        return Err(Bad::Empty);
    }
    if value.len() > MAX_CLAIM_LEN {
        return Err(Bad::Long);
    }
    // NUL cannot be stored in a Postgres text column, CR/LF cannot be in a NATS header,
    // and no other control character belongs in an identifier.
    if value.chars().any(char::is_control) {
        return Err(Bad::Control);
    }
    Ok(())
}

/// One verification key (and, for the first of a set, the signing key).
#[derive(Clone)]
struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// The signing and verification keys: the first signs, all verify.
#[derive(Clone)]
pub struct Keys(Arc<Vec<Key>>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key ids only: never the secrets.
        f.debug_tuple("Keys").field(&self.kids()).finish()
    }
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("JWT key {0} must hold at least {MIN_SECRET_LEN} bytes")]
    TooShort(String),
    #[error("JWT key id {0:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")]
    BadKid(String),
    #[error("JWT key id {0:?} is given twice")]
    DuplicateKid(String),
    #[error("no JWT signing keys configured")]
    None,
    #[error("generating a JWT key: {0}")]
    Random(String),
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token has no key id (kid)")]
    NoKid,
    #[error("token signed with an unknown key")]
    UnknownKid,
    #[error("token has critical header parameters this API does not understand")]
    UnknownCritical,
    #[error("{0}")]
    Jwt(#[from] jsonwebtoken::errors::Error),
    #[error("{0}")]
    Claims(&'static str),
}

impl Keys {
    /// Keys from `(kid, secret)` pairs: the first signs, all verify.
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<Self, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::None);
        }
        let mut out: Vec<Key> = Vec::with_capacity(keys.len());
        for (kid, secret) in keys {
            let kid_ok = !kid.is_empty()
                && kid.len() <= 64
                && kid.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !kid_ok {
                return Err(KeyError::BadKid(kid));
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::TooShort(kid));
            }
            if out.iter().any(|k| k.kid == kid) {
                return Err(KeyError::DuplicateKid(kid));
            }
            out.push(Key {
                encoding: EncodingKey::from_secret(&secret),
                decoding: DecodingKey::from_secret(&secret),
                kid,
            });
        }
        Ok(Keys(Arc::new(out)))
    }

    /// One key (`kid` "default") from a shared secret of at least 32 bytes. For tests
    /// and the benchmark.
    pub fn from_secret(secret: &[u8]) -> Self {
        let key = Key {
            kid: "default".into(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        };
        Keys(Arc::new(vec![key]))
    }

    /// Keys read from files, `(kid, path)`: the first signs, all verify.
    pub fn from_files(files: &[(String, std::path::PathBuf)]) -> Result<Self, KeyError> {
        let mut keys = Vec::with_capacity(files.len());
        for (kid, path) in files {
            let secret = std::fs::read(path)
                .map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
            keys.push((kid.clone(), trim_line_end(secret)));
        }
        Keys::new(keys)
    }

    /// The development key at `path` (`kid` "dev"), generated (mode 0600) if missing.
    /// Only `souk dev` calls this (and `souk token`, once the file exists).
    ///
    /// Safe against a concurrent first start (two processes on one data dir, or
    /// `souk token` reading while `souk dev` writes): the file appears whole or not at
    /// all ([`publish_private`]), and the process that loses the race to create it
    /// reads the winner's key instead of replacing it.
    pub fn load_or_generate_dev(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        if !path.exists() {
            let mut random = [0u8; MIN_SECRET_LEN];
            aws_lc_rs::rand::fill(&mut random).map_err(|e| KeyError::Random(e.to_string()))?;
            // Hex, not the raw bytes: a key file's final newline is trimmed when it is
            // read (`trim_line_end`), and raw random bytes end in \n or \r one time in
            // 128, leaving 31 bytes ("must hold at least 32 bytes").
            let secret: String = random.iter().map(|b| format!("{b:02x}")).collect();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            publish_private(path, secret.as_bytes()).map_err(io)?;
        }
        Keys::from_files(&[(DEV_KID.into(), path.to_owned())])
    }

    /// The key ids, signing key first.
    pub fn kids(&self) -> Vec<&str> {
        self.0.iter().map(|k| k.kid.as_str()).collect()
    }

    /// A signed token for `claims`, its header naming the signing key.
    pub fn mint(&self, claims: &Claims) -> String {
        let Some(key) = self.0.first() else { return String::new() };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        // HS256 signing with a valid key cannot fail.
        jsonwebtoken::encode(&header, claims, &key.encoding).unwrap_or_default()
    }

    /// Verify header, signature, expiry, not-before, issuer, audience and identity.
    pub fn verify(&self, token: &str) -> Result<Claims, VerifyError> {
        let header = jsonwebtoken::decode_header(token)?;
        // We understand no extension header parameter, so any listed as critical must
        // make the token invalid (RFC 7515 §4.1.11).
        if header.crit.is_some() {
            return Err(VerifyError::UnknownCritical);
        }
        let kid = header.kid.ok_or(VerifyError::NoKid)?;
        let key = self.0.iter().find(|k| k.kid == kid).ok_or(VerifyError::UnknownKid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &validation)?.claims;
        claims.check_identity().map_err(VerifyError::Claims)?;
        Ok(claims)
    }
}

/// A key file written by `echo` ends with a newline that is not part of the secret.
fn trim_line_end(mut secret: Vec<u8>) -> Vec<u8> {
    while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        secret.pop();
    }
    secret
}

/// Create `path` holding `bytes`, readable by its owner only (0600), atomically: the
/// bytes go to a temporary file in the same directory (synced), which is then linked
/// into place. A reader never sees the file empty or half written; linking, unlike a
/// rename, fails if `path` exists, so a concurrent writer's file is kept (and this call
/// succeeds: the caller reads what is there).
#[cfg(unix)]
fn publish_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // Unique per call: threads of one process may publish at once too.
    static CALLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = dir.join(format!(".{name}.{}.{call}.tmp", std::process::id()));
    let written = (|| {
        let mut f =
            std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    let linked = written.and_then(|()| match std::fs::hard_link(&temp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    });
    let _ = std::fs::remove_file(&temp);
    linked
}

#[cfg(not(unix))]
fn publish_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
        Ok(mut f) => std::io::Write::write_all(&mut f, bytes),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// An authenticated caller (extractor): a valid bearer token or a 401 (400 when the
/// request carries more than one `Authorization` header: which one counts would be a
/// guess, and a proxy and souk guessing differently is how requests get smuggled).
#[derive(Debug, Clone)]
pub struct Principal(pub Claims);

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let header = crate::problem::single_header(&parts.headers, axum::http::header::AUTHORIZATION)?
            .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Problem::unauthorized("Authorization must be a Bearer token"))?;
        let claims = state.keys.verify(token.trim()).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Problem::unauthorized(match &e {
                VerifyError::Jwt(e) => match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                    ErrorKind::InvalidSignature => "token signature invalid",
                    ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => "token not issued for this API",
                    _ => "token invalid",
                },
                VerifyError::NoKid => "token has no key id (kid)",
                VerifyError::UnknownKid => "token signed with an unknown key",
                VerifyError::UnknownCritical => "token has unsupported critical header parameters",
                VerifyError::Claims(why) => why,
            })
        })?;
        Ok(Principal(claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn claims() -> Claims {
        Claims::new("u1", "t1", vec![Role::Buyer], Duration::from_secs(60))
    }

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let keys = Keys::from_secret(&[7u8; 32]);
        let claims = claims();
        assert_eq!(keys.verify(&keys.mint(&claims)).ok(), Some(claims.clone()));
        let other = Keys::from_secret(&[8u8; 32]);
        assert!(keys.verify(&other.mint(&claims)).is_err());
        let mut expired = claims;
        expired.exp = 1;
        assert!(keys.verify(&keys.mint(&expired)).is_err());
    }

    #[test]
    fn seller_tokens_carry_checked_seller_ids_and_admins_act_for_any_seller() {
        let keys = Keys::from_secret(&[7u8; 32]);
        let seller = Claims::new("u1", "t1", vec![Role::Seller], Duration::from_secs(60))
            .with_sellers(vec!["s1".into(), "s2".into()]);
        let verified = keys.verify(&keys.mint(&seller)).expect("valid");
        assert_eq!(verified.sellers, ["s1", "s2"]);
        assert!(verified.may_act_for("s2") && !verified.may_act_for("s3"));
        let admin = Claims::new("root", "t1", vec![Role::Admin], Duration::from_secs(60));
        assert!(admin.may_act_for("anyone"));
        let buyer = claims().with_sellers(vec!["s1".into()]);
        assert!(!buyer.may_act_for("s1"), "sellers count with the seller role only");
        // Old tokens (no sellers) still verify; an empty list is not written.
        assert!(!keys.mint(&claims()).is_empty());
        assert!(serde_json::to_value(claims()).is_ok_and(|v| v.get("sellers").is_none()));
        for (sellers, why) in [
            (vec![String::new()], "empty"),
            (vec!["x".repeat(MAX_CLAIM_LEN + 1)], "too long"),
            (vec!["s\n1".into()], "control"),
            (vec!["s".into(); MAX_SELLERS + 1], "too many"),
        ] {
            let bad = seller.clone().with_sellers(sellers);
            let e = keys.verify(&keys.mint(&bad)).expect_err(why);
            assert!(e.to_string().contains(why), "{why}: {e}");
        }
    }

    #[test]
    fn dev_key_file_is_generated_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/jwt.key");
        let a = Keys::load_or_generate_dev(&path).expect("generated");
        let b = Keys::load_or_generate_dev(&path).expect("loaded");
        assert_eq!(b.kids(), vec![DEV_KID]);
        assert!(b.verify(&a.mint(&claims())).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    /// Processes starting together on one data dir each get the one key: none reads a
    /// file another is still writing (the flaky "must hold at least 32 bytes"), none
    /// replaces a key another already uses.
    #[test]
    fn concurrent_first_starts_all_load_the_same_whole_dev_key() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("keys/jwt.key");
            let loaded: Vec<Keys> = std::thread::scope(|s| {
                let starts: Vec<_> = (0..8).map(|_| s.spawn(|| Keys::load_or_generate_dev(&path))).collect();
                starts.into_iter().map(|t| t.join().expect("joined").expect("loaded")).collect()
            });
            let token = loaded[0].mint(&claims());
            assert!(loaded.iter().all(|k| k.verify(&token).is_ok()), "one key for all");
            let files: Vec<_> = std::fs::read_dir(path.parent().expect("dir")).expect("dir").collect();
            assert_eq!(files.len(), 1, "no temporary file left behind");
        }
    }

    /// Rotation: verifiers take the new key beside the old one, issuers then sign with
    /// the new one; tokens of both verify until the old key is removed.
    #[test]
    fn several_keys_verify_at_once_and_the_kid_picks_the_key() {
        let old = Keys::new(vec![("k1".into(), vec![1u8; 32])]).expect("old");
        let both = Keys::new(vec![("k2".into(), vec![2u8; 32]), ("k1".into(), vec![1u8; 32])]).expect("both");
        let new = Keys::new(vec![("k2".into(), vec![2u8; 32])]).expect("new");
        let (old_token, new_token) = (old.mint(&claims()), both.mint(&claims()));
        assert!(both.verify(&old_token).is_ok());
        assert!(both.verify(&new_token).is_ok());
        assert!(new.verify(&new_token).is_ok());
        assert!(matches!(new.verify(&old_token), Err(VerifyError::UnknownKid)));
        // A token naming k1 but signed with k2's secret is a forgery.
        let impostor = Keys::new(vec![("k1".into(), vec![2u8; 32])]).expect("impostor");
        assert!(matches!(both.verify(&impostor.mint(&claims())), Err(VerifyError::Jwt(_))));
    }

    #[test]
    fn bad_key_sets_are_refused() {
        assert!(matches!(Keys::new(vec![]), Err(KeyError::None)));
        assert!(matches!(Keys::new(vec![("a".into(), vec![1u8; 31])]), Err(KeyError::TooShort(_))));
        assert!(matches!(Keys::new(vec![("a b".into(), vec![1u8; 32])]), Err(KeyError::BadKid(_))));
        let twice = vec![("a".into(), vec![1u8; 32]), ("a".into(), vec![2u8; 32])];
        assert!(matches!(Keys::new(twice), Err(KeyError::DuplicateKid(_))));
    }
}
