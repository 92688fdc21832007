//! Authentication: HS256 JWT bearer tokens with a tenant and roles.
//!
//! The signing key is 32 random bytes generated at first start into the data dir
//! (never committed, never printed); `souk token` mints tokens with it for development.

use axum::{extract::FromRequestParts, http::request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::{path::Path, sync::Arc};

use crate::{AppState, Problem};

const ISSUER: &str = "souk";
const AUDIENCE: &str = "souk-api";

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Buyer,
    Seller,
    Support,
    Admin,
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
        }
    }

    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

/// The signing and verification keys.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("JWT key file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("JWT key file {0} must hold at least 32 bytes")]
    TooShort(String),
    #[error("generating a JWT key: {0}")]
    Random(String),
}

impl Keys {
    /// Keys from a shared secret (at least 32 bytes).
    pub fn from_secret(secret: &[u8]) -> Self {
        Keys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret) }
    }

    /// Load the key at `path`, generating it (mode 0600) on first start.
    pub fn load_or_generate(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io { path: path.display().to_string(), source };
        if !path.exists() {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret).map_err(|e| KeyError::Random(e.to_string()))?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            write_private(path, &secret).map_err(io)?;
        }
        let secret = std::fs::read(path).map_err(io)?;
        if secret.len() < 32 {
            return Err(KeyError::TooShort(path.display().to_string()));
        }
        Ok(Keys::from_secret(&secret))
    }

    /// A signed token for `claims`.
    pub fn mint(&self, claims: &Claims) -> String {
        // HS256 signing with a valid key cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).unwrap_or_default()
    }

    /// Verify signature, expiry, issuer and audience.
    pub fn verify(&self, token: &str) -> Result<Claims, jsonwebtoken::errors::Error> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Ok(jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)?.claims)
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// An authenticated caller (extractor): a valid bearer token or a 401.
#[derive(Debug, Clone)]
pub struct Principal(pub Claims);

impl FromRequestParts<Arc<AppState>> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<AppState>) -> Result<Self, Problem> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer token"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .ok_or_else(|| Problem::unauthorized("Authorization must be a Bearer token"))?;
        let claims = state.keys.verify(token.trim()).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            Problem::unauthorized(match e.kind() {
                ErrorKind::ExpiredSignature => "token expired",
                ErrorKind::InvalidSignature => "token signature invalid",
                ErrorKind::InvalidIssuer | ErrorKind::InvalidAudience => "token not issued for this API",
                _ => "token invalid",
            })
        })?;
        Ok(Principal(claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tokens_round_trip_and_forgeries_fail() {
        let keys = Keys::from_secret(&[7u8; 32]);
        let claims = Claims::new("u1", "t1", vec![Role::Buyer], Duration::from_secs(60));
        assert_eq!(keys.verify(&keys.mint(&claims)).ok(), Some(claims.clone()));
        let other = Keys::from_secret(&[8u8; 32]);
        assert!(keys.verify(&other.mint(&claims)).is_err());
        let mut expired = claims;
        expired.exp = 1;
        assert!(keys.verify(&keys.mint(&expired)).is_err());
    }

    #[test]
    fn key_file_is_generated_once_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/jwt.key");
        let a = Keys::load_or_generate(&path).expect("generated");
        let b = Keys::load_or_generate(&path).expect("loaded");
        let claims = Claims::new("u", "t", vec![Role::Admin], Duration::from_secs(60));
        assert!(b.verify(&a.mint(&claims)).is_ok());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
