//! The server's own secrets: the service key, the access-token signing keys and the
//! URL-signing key. A single node keeps each in a file of its data directory, readable by its
//! owner only. The nodes of a cluster share them as records of the shared store, so that any
//! node accepts what another signed; the first node to store a secret decides it, and a change
//! is a compare-and-set, so two nodes rotating at once never lose a key.

use crate::store::{KvWrite, Space, Store, StoreError};
use std::io::{Error, ErrorKind, Result};
use std::path::PathBuf;

/// The admin secret for scripts (`auth`).
pub(crate) const SERVICE_KEY: &str = "service_key";
/// The access-token signing keys (`auth::tokens`).
pub(crate) const JWT_KEYS: &str = "jwt_keys.json";
/// The key of signed file URLs (`files::signing`).
pub(crate) const URL_SIGNING_KEY: &str = "url_signing_key";
/// Every secret, by the name of its file in a single node's data directory.
pub(crate) const ALL: [&str; 3] = [SERVICE_KEY, JWT_KEYS, URL_SIGNING_KEY];

#[derive(Clone)]
pub(crate) struct Secrets {
    dir: PathBuf,
    shared: Option<Store>,
}

fn store_error(e: StoreError) -> Error {
    Error::other(format!("the shared store: {e}"))
}

impl Secrets {
    /// Secrets in `dir`, or in `store` if other nodes share it.
    pub(crate) fn new(dir: PathBuf, store: &Store) -> Secrets {
        Secrets {
            dir,
            shared: store.is_shared().then(|| store.clone()),
        }
    }

    /// Whether other nodes can change the secrets.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Where a secret is kept, for the startup log.
    pub(crate) fn location(&self, name: &str) -> String {
        match self.shared {
            Some(_) => format!("the shared store (secret {name:?})"),
            None => self.dir.join(name).display().to_string(),
        }
    }

    /// The secret `name`, if it exists.
    pub(crate) async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match &self.shared {
            Some(store) => store
                .kv_get(Space::Secrets, name.as_bytes())
                .await
                .map_err(store_error),
            None => match std::fs::read(self.dir.join(name)) {
                Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(None),
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        }
    }

    /// The secret `name`, stored as `create()` makes it if it does not exist yet.
    pub(crate) async fn get_or_create(
        &self,
        name: &str,
        create: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>> {
        if let Some(existing) = self.get(name).await? {
            return Ok(existing);
        }
        let fresh = create();
        if self.replace(name, None, fresh.clone()).await? {
            return Ok(fresh);
        }
        // Another node stored it first: theirs it is.
        self.get(name)
            .await?
            .ok_or_else(|| Error::other(format!("the secret {name} vanished")))
    }

    /// Stores `value` if the secret still holds `current` (`None`: absent); `false` if it
    /// changed meanwhile.
    pub(crate) async fn replace(
        &self,
        name: &str,
        current: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<bool> {
        match &self.shared {
            Some(store) => {
                let write = KvWrite::default()
                    .check(Space::Secrets, name, current.map(<[u8]>::to_vec))
                    .put(Space::Secrets, name, value);
                match store.kv_write(write).await {
                    Ok(()) => Ok(true),
                    Err(StoreError::CasFailed) => Ok(false),
                    Err(e) => Err(store_error(e)),
                }
            }
            None => {
                // One process owns a data directory (sled's lock), so this needs no lock.
                if self.get(name).await?.as_deref() != current {
                    return Ok(false);
                }
                let path = self.dir.join(name);
                let tmp = path.with_extension("tmp");
                crate::auth::write_private(&tmp, &value)?;
                std::fs::rename(tmp, path)?;
                Ok(true)
            }
        }
    }
}
