//! Function secrets: values (API keys and the like) an admin sets per function and its guest
//! reads with the `env` host operation, so they stay out of modules and configs.
//!
//! Values are write-only through the API (a list gives names and times) and sealed at rest with
//! AES-256-GCM under a key that is not in the store: `functions.secrets_key` (required in a
//! cluster, where every node must open what another sealed), or else `secrets_key` in the data
//! directory's `functions/` (made on first start, owner-only). The function and secret names
//! are the sealed value's associated data, so a value cannot be moved to another name. A keyed
//! hash of each value (HMAC-SHA-256 under a key derived from the same secret) is kept beside
//! it, so a value can be compared without being opened. A run's output (its log lines, result
//! and error) has every value it read replaced by `[secret]` before it is logged or recorded.

use super::{check_name, Functions, FunctionsError, Result};
use crate::auth::Principal;
use crate::model::SecretComparison;
use crate::store::{KvWrite, Space, Store};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use subtle::ConstantTimeEq;

/// The most secrets one function may have.
const MAX_SECRETS: usize = 100;
/// The largest value, in bytes.
const MAX_VALUE_BYTES: usize = 8 * 1024;
/// Values shorter than this are not replaced in output (a one-letter value would mangle it).
const MIN_REDACTED: usize = 4;

/// A secret as the API lists it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionSecret {
    pub name: String,
    pub updated_at: String,
}

/// A sealed value, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SecretRecord {
    nonce: String,
    sealed: String,
    /// HMAC-SHA-256 of the value under the hash key, hex.
    hash: String,
    updated_at: String,
}

/// The keys that seal and hash secret values.
pub(crate) struct SecretBox {
    seal: LessSafeKey,
    hash: Vec<u8>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// A subkey of `master` for `purpose`.
fn derive(master: &[u8], purpose: &str) -> Vec<u8> {
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(master)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

impl SecretBox {
    /// The key from `configured` (32 bytes in base64), or else from (or made into)
    /// `<data_dir>/functions/secrets_key`.
    pub(crate) fn load(
        configured: &str,
        data_dir: &Path,
    ) -> std::result::Result<SecretBox, String> {
        let master = if configured.is_empty() {
            Self::key_file(&data_dir.join("functions").join("secrets_key"))?
        } else {
            decode_key(configured).map_err(|e| format!("functions.secrets_key: {e}"))?
        };
        SecretBox::new(&master)
    }

    fn new(master: &[u8]) -> std::result::Result<SecretBox, String> {
        let seal = UnboundKey::new(
            &AES_256_GCM,
            &derive(master, "emberbase function secrets: seal"),
        )
        .map_err(|_| "cannot make the sealing key".to_string())?;
        Ok(SecretBox {
            seal: LessSafeKey::new(seal),
            hash: derive(master, "emberbase function secrets: hash"),
        })
    }

    /// Reads the key file, or makes it (owner-only) when there is none.
    fn key_file(path: &Path) -> std::result::Result<Vec<u8>, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => decode_key(text.trim()).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
                // Written aside and renamed, so a crash never leaves half a key.
                let tmp = path.with_extension("tmp");
                crate::auth::write_private(&tmp, b64().encode(key).as_bytes())
                    .and_then(|()| std::fs::rename(&tmp, path))
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                Ok(key.to_vec())
            }
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn seal(&self, aad: &[u8], value: &str) -> std::result::Result<SecretRecord, String> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        let mut sealed = value.as_bytes().to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut sealed,
            )
            .map_err(|_| "cannot seal the value".to_string())?;
        Ok(SecretRecord {
            nonce: b64().encode(nonce),
            sealed: b64().encode(sealed),
            hash: self.keyed_hash(value),
            updated_at: crate::model::now_rfc3339(),
        })
    }

    fn open(&self, aad: &[u8], record: &SecretRecord) -> std::result::Result<String, String> {
        let nonce: [u8; NONCE_LEN] = b64()
            .decode(&record.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or("a stored secret has a bad nonce")?;
        let mut sealed = b64()
            .decode(&record.sealed)
            .map_err(|_| "a stored secret is not base64")?;
        let plain = self
            .seal
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
            .map_err(|_| {
                "a stored secret cannot be opened: it was sealed with another key (functions.secrets_key)"
            })?;
        String::from_utf8(plain.to_vec()).map_err(|_| "a stored secret is not UTF-8".into())
    }

    /// The keyed hash of a value (hex), to compare values without opening them.
    pub(crate) fn keyed_hash(&self, value: &str) -> String {
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.hash)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(value.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn decode_key(text: &str) -> std::result::Result<Vec<u8>, String> {
    match b64().decode(text) {
        Ok(key) if key.len() == 32 => Ok(key),
        _ => Err("must be 32 bytes in base64 (for example `openssl rand -base64 32`)".into()),
    }
}

/// Whether `name` may name a secret: like an environment variable, `A-Z`, `0-9` and `_`, not
/// starting with a digit, at most 64.
fn check_secret_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(FunctionsError::Invalid {
            message: format!(
                "invalid secret name {name:?}: use 1 to 64 of A-Z 0-9 _, not starting with a digit"
            ),
            field: "name".into(),
        })
    }
}

/// The store key of a secret, and its sealed value's associated data.
fn secret_key(function: &str, name: &str) -> Vec<u8> {
    let mut key = super::dispatch::function_prefix(function);
    key.extend_from_slice(name.as_bytes());
    key
}

/// Reads the secrets of one function, for its runs.
#[derive(Clone)]
pub(crate) struct SecretReader {
    pub(super) store: Store,
    pub(super) keys: std::sync::Arc<SecretBox>,
    pub(super) function: String,
}

impl SecretReader {
    /// The value of secret `name`, or `None` when it is not set.
    pub(super) async fn get(&self, name: &str) -> Result<Option<String>> {
        check_secret_name(name)?;
        let key = secret_key(&self.function, name);
        let Some(bytes) = self.store.kv_get(Space::FunctionSecrets, &key).await? else {
            return Ok(None);
        };
        let record: SecretRecord =
            serde_json::from_slice(&bytes).map_err(|e| FunctionsError::Internal(e.to_string()))?;
        self.keys
            .open(&key, &record)
            .map(Some)
            .map_err(FunctionsError::Internal)
    }
}

/// Replaces every value in `revealed` found in `text` with `[secret]`.
pub(super) fn redact(text: &str, revealed: &[String]) -> String {
    revealed
        .iter()
        .filter(|v| v.len() >= MIN_REDACTED)
        .fold(text.to_string(), |text, value| {
            text.replace(value.as_str(), "[secret]")
        })
}

impl Functions {
    fn require_function(&self, name: &str) -> Result<()> {
        check_name(name)?;
        match self.loaded(name) {
            Some(_) => Ok(()),
            None => Err(FunctionsError::NotFound(name.into())),
        }
    }

    /// The names of a function's secrets (admins only); never their values.
    pub async fn list_secrets(
        &self,
        who: &Principal,
        function: &str,
    ) -> Result<Vec<FunctionSecret>> {
        Self::require_admin(who)?;
        self.require_function(function)?;
        let prefix = super::dispatch::function_prefix(function);
        self.inner
            .store
            .kv_prefix(Space::FunctionSecrets, &prefix, usize::MAX)
            .await?
            .into_iter()
            .map(|(key, bytes)| {
                let record: SecretRecord = serde_json::from_slice(&bytes)
                    .map_err(|e| FunctionsError::Internal(e.to_string()))?;
                Ok(FunctionSecret {
                    name: String::from_utf8_lossy(&key[prefix.len()..]).into_owned(),
                    updated_at: record.updated_at,
                })
            })
            .collect()
    }

    /// Sets (or replaces) a secret of a function (admins only). The value is sealed before it
    /// is stored, and is never shown again.
    pub async fn put_secret(
        &self,
        who: &Principal,
        function: &str,
        name: &str,
        value: &str,
    ) -> Result<FunctionSecret> {
        Self::require_admin(who)?;
        self.require_function(function)?;
        check_secret_name(name)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(FunctionsError::Invalid {
                message: format!("a secret's value is at most {MAX_VALUE_BYTES} bytes"),
                field: "value".into(),
            });
        }
        let key = secret_key(function, name);
        let existing = self.list_secrets(who, function).await?;
        if existing.len() >= MAX_SECRETS && !existing.iter().any(|s| s.name == name) {
            return Err(FunctionsError::Invalid {
                message: format!("a function has at most {MAX_SECRETS} secrets"),
                field: "name".into(),
            });
        }
        let record = self
            .inner
            .secrets
            .seal(&key, value)
            .map_err(FunctionsError::Internal)?;
        let bytes =
            serde_json::to_vec(&record).map_err(|e| FunctionsError::Internal(e.to_string()))?;
        self.inner
            .store
            .kv_write(KvWrite::default().put(Space::FunctionSecrets, key, bytes))
            .await?;
        Ok(FunctionSecret {
            name: name.into(),
            updated_at: record.updated_at,
        })
    }

    /// Whether each given value is the one stored under its name (admins only), by the keyed
    /// hash kept beside the sealed value, so nothing is opened and no value is shown: what
    /// `emberbase plan` says about secrets.
    pub async fn compare_secrets(
        &self,
        who: &Principal,
        function: &str,
        values: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, SecretComparison>> {
        Self::require_admin(who)?;
        self.require_function(function)?;
        let mut out = BTreeMap::new();
        for (name, value) in values {
            check_secret_name(name)?;
            let stored = self
                .inner
                .store
                .kv_get(Space::FunctionSecrets, &secret_key(function, name))
                .await?;
            let comparison = match stored {
                None => SecretComparison::Absent,
                Some(bytes) => {
                    let record: SecretRecord = serde_json::from_slice(&bytes)
                        .map_err(|e| FunctionsError::Internal(e.to_string()))?;
                    let hash = self.inner.secrets.keyed_hash(value);
                    if bool::from(hash.as_bytes().ct_eq(record.hash.as_bytes())) {
                        SecretComparison::Same
                    } else {
                        SecretComparison::Different
                    }
                }
            };
            out.insert(name.clone(), comparison);
        }
        Ok(out)
    }

    /// Removes a secret of a function (admins only).
    pub async fn delete_secret(&self, who: &Principal, function: &str, name: &str) -> Result<()> {
        Self::require_admin(who)?;
        self.require_function(function)?;
        check_secret_name(name)?;
        let key = secret_key(function, name);
        if self
            .inner
            .store
            .kv_get(Space::FunctionSecrets, &key)
            .await?
            .is_none()
        {
            return Err(FunctionsError::Invalid {
                message: format!("function {function} has no secret {name}"),
                field: "name".into(),
            });
        }
        self.inner
            .store
            .kv_write(KvWrite::default().delete(Space::FunctionSecrets, key))
            .await?;
        Ok(())
    }

    /// What the runs of `function` read its secrets with.
    pub(super) fn secret_reader(&self, function: &str) -> SecretReader {
        SecretReader {
            store: self.inner.store.clone(),
            keys: self.inner.secrets.clone(),
            function: function.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_under_its_own_name_and_key() {
        let keys = SecretBox::new(&[7; 32]).unwrap();
        let record = keys.seal(b"f\0API_KEY", "sk_live_123").unwrap();
        assert!(!record.sealed.contains("sk_live_123"));
        assert_eq!(keys.open(b"f\0API_KEY", &record).unwrap(), "sk_live_123");
        assert!(keys.open(b"f\0OTHER", &record).is_err());
        let other = SecretBox::new(&[8; 32]).unwrap();
        assert!(other.open(b"f\0API_KEY", &record).is_err());
        // The keyed hash compares values without opening them, and depends on the key.
        assert_eq!(record.hash, keys.keyed_hash("sk_live_123"));
        assert_ne!(record.hash, other.keyed_hash("sk_live_123"));
    }

    #[test]
    fn names_are_like_environment_variables_and_keys_are_32_bytes() {
        for good in ["STRIPE_KEY", "A", "_X1"] {
            assert!(check_secret_name(good).is_ok(), "{good}");
        }
        for bad in ["", "lower", "1ST", "WITH-DASH", &"A".repeat(65)] {
            assert!(check_secret_name(bad).is_err(), "{bad}");
        }
        assert!(decode_key(&b64().encode([1u8; 32])).is_ok());
        assert!(decode_key(&b64().encode([1u8; 16])).is_err());
        assert!(decode_key("not base64!").is_err());
    }

    #[test]
    fn output_loses_the_values_a_run_read() {
        let revealed = vec!["sk_live_123".to_string(), "ab".to_string()];
        assert_eq!(redact("key=sk_live_123 ab", &revealed), "key=[secret] ab");
    }
}
