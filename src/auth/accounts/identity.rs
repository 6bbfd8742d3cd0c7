//! An email address is one identity whatever its case: `Ada@Example.com` and `ada@example.com`
//! are one account, as in Firebase and PocketBase. The index (`Space::Emails`) is keyed by the
//! whole address lower-cased (`email_key`); the user record keeps the address as typed, for
//! display and for mail.
//!
//! Data directories written before kept the local part's case in the key. `migrate` moves each
//! entry to its lower-case key once, at start. Two accounts whose addresses differ only in case
//! cannot both have it: they are a *collision*. Both keep their exact keys (and sign in with
//! their exact addresses), the collision is recorded (`Space::EmailCollisions`) and listed for
//! admins, and deleting one or giving it another address settles it: the account left moves to
//! the lower-case key. Nothing is merged without an admin.

use super::records::{from_json, normalize_email, to_json, UserRecord};
use super::Accounts;
use crate::auth::error::{AuthError, Result};
use crate::auth::Principal;
use crate::store::{KvWrite, Space, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The key an address is found by.
pub(super) fn email_key(email: &str) -> String {
    email.to_lowercase()
}

/// The `Space::AccountsMeta` key recorded once the index is keyed in lower case.
const MIGRATED: &[u8] = b"emails-case-insensitive";

/// Accounts whose addresses differ only in case, found when addresses became case-insensitive.
/// Each signs in with its exact address until an admin deletes one or gives it another.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailCollision {
    /// The address in lower case, which none of them can be found by.
    pub email: String,
    pub users: Vec<CollidingUser>,
}

/// One account of a collision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CollidingUser {
    pub id: String,
    /// Its address as stored, which it signs in with.
    pub email: String,
}

/// What the migration did.
#[derive(Debug, Default)]
struct Migrated {
    moved: usize,
    collisions: usize,
}

impl Accounts {
    /// The user an address signs in as: the one kept under exactly this address by the
    /// migration (a collision), else the one its lower-case key names.
    pub(super) async fn user_by_email(&self, email: &str) -> Result<Option<(UserRecord, Vec<u8>)>> {
        let key = email_key(email);
        let keys = if key == email {
            vec![key]
        } else {
            vec![email.to_string(), key]
        };
        for key in keys {
            if let Some(id) = self.store.kv_get(Space::Emails, key.as_bytes()).await? {
                if let Some(found) = self.load_user(&String::from_utf8_lossy(&id)).await? {
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// Adds to `write` the removal of `user`'s index entries (checked to still be its own),
    /// and settles the collision it was part of: the one account left takes the lower-case
    /// key.
    pub(super) async fn release_email(
        &self,
        mut write: KvWrite,
        user: &UserRecord,
    ) -> Result<KvWrite> {
        let lower = email_key(&user.email);
        let mut keys = vec![lower.clone()];
        if user.email != lower {
            keys.push(user.email.clone());
        }
        for key in keys {
            let held = self.store.kv_get(Space::Emails, key.as_bytes()).await?;
            if held.as_deref() == Some(user.id.as_bytes()) {
                write = write
                    .check(Space::Emails, key.as_bytes(), held)
                    .delete(Space::Emails, key.as_bytes());
            }
        }
        let Some(bytes) = self
            .store
            .kv_get(Space::EmailCollisions, lower.as_bytes())
            .await?
        else {
            return Ok(write);
        };
        let mut collision: EmailCollision = from_json(&bytes)?;
        collision.users.retain(|u| u.id != user.id);
        write = write.check(Space::EmailCollisions, lower.as_bytes(), Some(bytes));
        if collision.users.len() > 1 {
            return Ok(write.put(
                Space::EmailCollisions,
                lower.as_bytes(),
                to_json(&collision)?,
            ));
        }
        write = write.delete(Space::EmailCollisions, lower.as_bytes());
        if let Some(last) = collision.users.first().filter(|u| u.email != lower) {
            // Deletes come before puts in a write, so this also replaces the key `user` held.
            write = write
                .check(
                    Space::Emails,
                    last.email.as_bytes(),
                    Some(last.id.as_bytes().to_vec()),
                )
                .delete(Space::Emails, last.email.as_bytes())
                .put(Space::Emails, lower.as_bytes(), last.id.as_bytes());
        }
        Ok(write)
    }

    /// Gives a user another address (admins only): to settle a collision, or when a user
    /// cannot. The address is unverified until the user verifies it; sessions stay.
    pub async fn set_email(&self, who: &Principal, id: &str, email: &str) -> Result<super::User> {
        Self::require_admin(who)?;
        let email = normalize_email(email)?;
        let key = email_key(&email);
        for _ in 0..8 {
            let (user, bytes) = self
                .load_user(id)
                .await?
                .ok_or_else(|| AuthError::UserNotFound(id.into()))?;
            if user.email == email {
                return Ok(user.public());
            }
            let mut renamed = user.clone();
            renamed.email = email.clone();
            renamed.email_verified = false;
            let taken = self.store.kv_get(Space::Emails, key.as_bytes()).await?;
            let own = taken.as_deref() == Some(user.id.as_bytes());
            // Another case of an address that collides is another account's too.
            let colliding = key == email_key(&user.email)
                && self
                    .store
                    .kv_get(Space::EmailCollisions, key.as_bytes())
                    .await?
                    .is_some();
            if (taken.is_some() && !own) || colliding {
                return Err(AuthError::EmailTaken);
            }
            let write = KvWrite::default()
                .check(Space::Users, id.as_bytes(), Some(bytes))
                .put(Space::Users, id.as_bytes(), to_json(&renamed)?);
            let write = self.release_email(write, &user).await?;
            // A key the release removed (it was the user's) is taken again by the put.
            let write = if own {
                write
            } else {
                write.check(Space::Emails, key.as_bytes(), None)
            }
            .put(Space::Emails, key.as_bytes(), id.as_bytes());
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(renamed.public()),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict(
            "the user changed concurrently; retry".into(),
        ))
    }

    /// The accounts whose addresses differ only in case (admins only).
    pub async fn email_collisions(&self, who: &Principal) -> Result<Vec<EmailCollision>> {
        Self::require_admin(who)?;
        self.store
            .kv_scan(Space::EmailCollisions, None, usize::MAX)
            .await?
            .into_iter()
            .map(|(_, bytes)| from_json(&bytes))
            .collect()
    }

    /// Keys the address index in lower case, once per data directory (see the module's
    /// documentation); a no-op afterwards. Logs what it did.
    pub(crate) async fn migrate_email_case(&self) -> Result<()> {
        if self
            .store
            .kv_get(Space::AccountsMeta, MIGRATED)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let mut groups: BTreeMap<String, Vec<(String, Vec<u8>)>> = BTreeMap::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let rows = self
                .store
                .kv_scan(Space::Emails, after.as_deref(), 1024)
                .await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            for (key, id) in rows {
                let exact = String::from_utf8_lossy(&key).into_owned();
                groups
                    .entry(email_key(&exact))
                    .or_default()
                    .push((exact, id));
            }
        }
        let mut done = Migrated::default();
        for (lower, entries) in groups {
            match entries.as_slice() {
                [(exact, _)] if *exact == lower => {}
                [(exact, id)] => {
                    let write = KvWrite::default()
                        .check(Space::Emails, exact.as_bytes(), Some(id.clone()))
                        .check(Space::Emails, lower.as_bytes(), None)
                        .delete(Space::Emails, exact.as_bytes())
                        .put(Space::Emails, lower.as_bytes(), id.clone());
                    match self.store.kv_write(write).await {
                        Ok(()) => done.moved += 1,
                        // Another node of the cluster moved it meanwhile.
                        Err(StoreError::CasFailed) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                _ => {
                    let collision = EmailCollision {
                        email: lower.clone(),
                        users: entries
                            .iter()
                            .map(|(exact, id)| CollidingUser {
                                id: String::from_utf8_lossy(id).into_owned(),
                                email: exact.clone(),
                            })
                            .collect(),
                    };
                    let ids: Vec<&str> = collision.users.iter().map(|u| u.id.as_str()).collect();
                    tracing::warn!(email = %lower, users = ?ids,
                        "accounts whose addresses differ only in case: each keeps signing in with its exact address \
                         until an admin deletes one or changes its address (GET /v1/admin/email-collisions)");
                    let write = KvWrite::default().put(
                        Space::EmailCollisions,
                        lower.as_bytes(),
                        to_json(&collision)?,
                    );
                    self.store.kv_write(write).await?;
                    done.collisions += 1;
                }
            }
        }
        let write = KvWrite::default().put(Space::AccountsMeta, MIGRATED, b"1".to_vec());
        self.store.kv_write(write).await?;
        if done.moved + done.collisions > 0 {
            tracing::info!(
                moved = done.moved,
                collisions = done.collisions,
                "email addresses are now case-insensitive: the address index was keyed in lower case"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::email_key;

    #[test]
    fn the_key_is_the_whole_address_in_lower_case() {
        assert_eq!(email_key("Ada@example.com"), "ada@example.com");
        assert_eq!(email_key("ÉLODIE@example.com"), "élodie@example.com");
    }
}
