//! Access tokens (JWT, HS256) and their signing keys.
//!
//! Keys are a server secret (`jwt_keys.json`, see `secrets`: a file of the data directory, or a
//! record of a cluster's shared store), generated on first start, or come from
//! `auth.jwt_secret`. Every token names its key in the `kid` header; the newest key signs, and
//! every kept key verifies, so rotating adds a key without logging anyone out. Validation pins
//! the algorithm, checks `exp`, `nbf`, `iss`, `aud` and the token type with at most 5 s of
//! leeway; whether the user still exists, is enabled and has not revoked its tokens is checked
//! by the caller against the user record.

use super::error::{internal, AuthError};
use crate::model::unix_secs;
use crate::secrets::{Secrets, JWT_KEYS};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

/// Keys kept for verification after a rotation.
const KEPT_KEYS: usize = 3;
/// Clock skew tolerated on `exp` and `nbf`, in seconds.
pub(crate) const LEEWAY_SECS: u64 = 5;
/// How often a node of a cluster reads the keys again for a token signed with a key it does
/// not know (another node rotated), at most.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

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
    /// Where the keys are kept, unless they come from the configuration.
    secrets: Option<Secrets>,
    /// When the keys were last read again for an unknown `kid`.
    reloaded: Mutex<Option<Instant>>,
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
    /// Loads the keys: the configured secret, or the stored keys (created on first start).
    pub(crate) async fn load(
        secrets: &Secrets,
        configured_secret: &str,
        issuer: &str,
        audience: &str,
        ttl_secs: u64,
    ) -> std::io::Result<TokenIssuer> {
        let (keys, secrets) = if configured_secret.is_empty() {
            let first = || {
                serde_json::to_vec_pretty(&KeyFile {
                    keys: vec![new_stored_key()],
                })
            };
            let stored = secrets
                .get_or_create(JWT_KEYS, || first().unwrap_or_default())
                .await?;
            (parse_keys(&stored)?, Some(secrets.clone()))
        } else {
            (
                vec![Key::new("config".into(), configured_secret.as_bytes())],
                None,
            )
        };
        Ok(TokenIssuer {
            keys: RwLock::new(keys),
            secrets,
            reloaded: Mutex::new(None),
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

    /// Checks a token's signature, algorithm, times, issuer, audience and type. In a cluster,
    /// a key this node does not know yet (another node rotated) is read from the shared store.
    pub(crate) async fn verify(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let invalid = || AuthError::Unauthenticated("invalid or expired token".into());
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        if header.alg != Algorithm::HS256 {
            return Err(invalid());
        }
        let kid = header.kid.ok_or_else(invalid)?;
        if !self.knows(&kid)? && self.may_reload() {
            self.reload().await?;
        }
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

    fn knows(&self, kid: &str) -> Result<bool, AuthError> {
        let keys = self
            .keys
            .read()
            .map_err(|_| internal("key lock poisoned"))?;
        Ok(keys.iter().any(|k| k.kid == kid))
    }

    /// Whether an unknown `kid` may read the shared keys again now: in a cluster, at most once
    /// a second, so that forged `kid`s cannot load the store.
    fn may_reload(&self) -> bool {
        if !self.secrets.as_ref().is_some_and(Secrets::is_shared) {
            return false;
        }
        let mut last = self.reloaded.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < RELOAD_EVERY) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    /// Reads the stored keys again (another node of a cluster may have rotated them).
    pub(crate) async fn reload(&self) -> Result<(), AuthError> {
        let Some(secrets) = &self.secrets else {
            return Ok(());
        };
        if let Some(stored) = secrets.get(JWT_KEYS).await.map_err(internal)? {
            self.install(parse_keys(&stored).map_err(internal)?)?;
        }
        Ok(())
    }

    fn install(&self, keys: Vec<Key>) -> Result<(), AuthError> {
        *self
            .keys
            .write()
            .map_err(|_| internal("key lock poisoned"))? = keys;
        Ok(())
    }

    /// Adds a new signing key; tokens signed by the previous keys stay valid until they expire.
    /// Returns the new key's id.
    pub(crate) async fn rotate(&self) -> Result<String, AuthError> {
        let Some(secrets) = &self.secrets else {
            return Err(AuthError::BadRequest(
                "the signing key comes from auth.jwt_secret; change it in the configuration".into(),
            ));
        };
        loop {
            let current = secrets.get(JWT_KEYS).await.map_err(internal)?;
            let mut stored: KeyFile = match &current {
                Some(bytes) => serde_json::from_slice(bytes).map_err(internal)?,
                None => KeyFile::default(),
            };
            let fresh = new_stored_key();
            stored.keys.push(fresh.clone());
            let excess = stored.keys.len().saturating_sub(KEPT_KEYS);
            stored.keys.drain(..excess);
            let json = serde_json::to_vec_pretty(&stored).map_err(internal)?;
            if secrets
                .replace(JWT_KEYS, current.as_deref(), json.clone())
                .await
                .map_err(internal)?
            {
                self.install(parse_keys(&json).map_err(internal)?)?;
                return Ok(fresh.kid);
            }
            // Another node rotated at the same moment: add ours after theirs.
        }
    }
}

/// The keys of a stored key file, oldest first.
fn parse_keys(bytes: &[u8]) -> std::io::Result<Vec<Key>> {
    let stored: KeyFile = serde_json::from_slice(bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    if stored.keys.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "jwt_keys.json holds no key",
        ));
    }
    Ok(stored
        .keys
        .iter()
        .map(|k| Key::new(k.kid.clone(), &decode_secret(k)))
        .collect())
}
