//! Access tokens (JWT, HS256) and their signing keys.
//!
//! Keys live in `<data_dir>/jwt_keys.json` (owner-only), generated on first start, or come from
//! `auth.jwt_secret`. Every token names its key in the `kid` header; the newest key signs, and
//! every kept key verifies, so rotating adds a key without logging anyone out. Validation pins
//! the algorithm, checks `exp`, `nbf`, `iss`, `aud` and the token type with at most 5 s of
//! leeway; whether the user still exists, is enabled and has not revoked its tokens is checked
//! by the caller against the user record.

use super::error::{internal, AuthError};
use crate::model::unix_secs;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// Keys kept for verification after a rotation.
const KEPT_KEYS: usize = 3;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 5;
const KEY_FILE: &str = "jwt_keys.json";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AccessClaims {
    pub sub: String,
    pub email: String,
    pub role: String,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
    pub iss: String,
    pub aud: String,
    /// Always `access`: a refresh token or any other token type is refused.
    pub typ: String,
    /// The user's token version when issued; a password change bumps it.
    pub tv: u64,
}

#[derive(Serialize, Deserialize, Clone)]
struct StoredKey {
    kid: String,
    secret: String,
    created_at: String,
}

#[derive(Serialize, Deserialize, Default)]
struct KeyFile {
    /// Oldest first; the last one signs.
    keys: Vec<StoredKey>,
}

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl Key {
    fn new(kid: String, secret: &[u8]) -> Key {
        Key {
            kid,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        }
    }
}

pub(crate) struct TokenIssuer {
    keys: RwLock<Vec<Key>>,
    file: Option<PathBuf>,
    issuer: String,
    audience: String,
    ttl_secs: u64,
}

fn new_stored_key() -> StoredKey {
    StoredKey {
        kid: ulid::Ulid::new().to_string(),
        secret: super::generate_secret(""),
        created_at: crate::model::now_rfc3339(),
    }
}

fn decode_secret(stored: &StoredKey) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&stored.secret)
        .unwrap_or_else(|_| stored.secret.as_bytes().to_vec())
}

impl TokenIssuer {
    /// Loads the keys: the configured secret, or the key file in `data_dir` (created on first
    /// start).
    pub(crate) fn load(
        data_dir: &Path,
        configured_secret: &str,
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> std::io::Result<TokenIssuer> {
        let (keys, file) = if configured_secret.is_empty() {
            let path = data_dir.join(KEY_FILE);
            let mut stored: KeyFile = match std::fs::read(&path) {
                Ok(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeyFile::default(),
                Err(e) => return Err(e),
            };
            if stored.keys.is_empty() {
                stored.keys.push(new_stored_key());
                write_key_file(&path, &stored)?;
            }
            let keys = stored
                .keys
                .iter()
                .map(|k| Key::new(k.kid.clone(), &decode_secret(k)))
                .collect();
            (keys, Some(path))
        } else {
            (
                vec![Key::new("config".into(), configured_secret.as_bytes())],
                None,
            )
        };
        Ok(TokenIssuer {
            keys: RwLock::new(keys),
            file,
            issuer: issuer.to_string(),
            audience: audience.to_string(),
            ttl_secs,
        })
    }

    pub(crate) fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Signs an access token for a user.
    pub(crate) fn issue(
        &self,
        user_id: &str,
        email: &str,
        role: &str,
        token_version: u64,
    ) -> Result<String, AuthError> {
        let now = unix_secs();
        let claims = AccessClaims {
            sub: user_id.to_string(),
            email: email.to_string(),
            role: role.to_string(),
            exp: now + self.ttl_secs,
            iat: now,
            nbf: now,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            typ: "access".into(),
            tv: token_version,
        };
        let keys = self
            .keys
            .read()
            .map_err(|_| internal("key lock poisoned"))?;
        let key = keys.last().ok_or_else(|| internal("no signing key"))?;
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, &claims, &key.encoding).map_err(internal)
    }

    /// Checks a token's signature, algorithm, times, issuer, audience and type.
    pub(crate) fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let invalid = || AuthError::Unauthenticated("invalid or expired token".into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        let keys = self
            .keys
            .read()
            .map_err(|_| internal("key lock poisoned"))?;
        let key = keys.iter().find(|k| k.kid == kid).ok_or_else(invalid)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub", "iss", "aud"]);
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation)
            .map_err(|_| invalid())?;
        if data.claims.typ != "access" {
            return Err(invalid());
        }
        Ok(data.claims)
    }

    /// Adds a new signing key; tokens signed by the previous keys stay valid until they expire.
    /// Returns the new key's id.
    pub(crate) fn rotate(&self) -> Result<String, AuthError> {
        let Some(path) = &self.file else {
            return Err(AuthError::BadRequest(
                "the signing key comes from auth.jwt_secret; change it in the configuration".into(),
            ));
        };
        let mut stored: KeyFile = std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let fresh = new_stored_key();
        stored.keys.push(fresh.clone());
        let excess = stored.keys.len().saturating_sub(KEPT_KEYS);
        stored.keys.drain(..excess);
        write_key_file(path, &stored).map_err(internal)?;
        let mut keys = self
            .keys
            .write()
            .map_err(|_| internal("key lock poisoned"))?;
        *keys = stored
            .keys
            .iter()
            .map(|k| Key::new(k.kid.clone(), &decode_secret(k)))
            .collect();
        Ok(fresh.kid)
    }
}

fn write_key_file(path: &Path, keys: &KeyFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(keys).map_err(std::io::Error::other)?;
    let tmp = path.with_extension("tmp");
    super::write_private(&tmp, &json)?;
    std::fs::rename(tmp, path)
}
