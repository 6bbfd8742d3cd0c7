//! What admins do with accounts: list, read, disable, promote and delete users, bootstrap an
//! admin, read the mail outbox, rotate the signing key.

use super::records::{from_json, new_user, normalize_email, NewUser, User, UserPage, UserRecord};
use super::Accounts;
use crate::auth::error::{invalid, AuthError, Result};
use crate::auth::password::check_password;
use crate::auth::Principal;
use crate::mail::Mail;
use crate::store::{KvWrite, Space, StoreError};
use serde_json::Map;

impl Accounts {
    pub(super) fn require_admin(who: &Principal) -> Result<()> {
        Ok(who.require_admin("manage users and read the outbox")?)
    }

    /// Users in id (creation) order.
    pub async fn list_users(
        &self,
        who: &Principal,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UserPage> {
        let (records, next_cursor) = self.user_records(who, limit, cursor).await?;
        let items = records.iter().map(UserRecord::public).collect();
        Ok(UserPage { items, next_cursor })
    }

    /// A page of user records in id order (admins only), and the cursor of the next page.
    pub(super) async fn user_records(
        &self,
        who: &Principal,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<(Vec<UserRecord>, Option<String>)> {
        Self::require_admin(who)?;
        if !(1..=1000).contains(&limit) {
            return Err(AuthError::BadRequest(
                "limit must be between 1 and 1000".into(),
            ));
        }
        let rows = self
            .store
            .kv_scan(Space::Users, cursor.map(str::as_bytes), limit + 1)
            .await?;
        let mut records: Vec<UserRecord> = rows
            .iter()
            .map(|(_, v)| from_json::<UserRecord>(v))
            .collect::<Result<_>>()?;
        let next_cursor = if records.len() > limit {
            records.truncate(limit);
            records.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok((records, next_cursor))
    }

    /// Users whose address starts with `prefix` (in any case), in address order, and the cursor
    /// of the next page (the last address of this one).
    pub async fn search_users(
        &self,
        who: &Principal,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UserPage> {
        Self::require_admin(who)?;
        if !(1..=1000).contains(&limit) {
            return Err(AuthError::BadRequest(
                "limit must be between 1 and 1000".into(),
            ));
        }
        let prefix = super::identity::email_key(prefix.trim());
        let rows = match cursor {
            // Addresses sort together by prefix: the page goes on after the cursor while they
            // still start with it.
            Some(after) => self
                .store
                .kv_scan(Space::Emails, Some(after.as_bytes()), limit + 1)
                .await?
                .into_iter()
                .take_while(|(key, _)| key.starts_with(prefix.as_bytes()))
                .collect(),
            None => {
                self.store
                    .kv_prefix(Space::Emails, prefix.as_bytes(), limit + 1)
                    .await?
            }
        };
        let more = rows.len() > limit;
        let mut items = Vec::new();
        let mut last = None;
        for (key, id) in rows.into_iter().take(limit) {
            if let Some((user, _)) = self.load_user(&String::from_utf8_lossy(&id)).await? {
                items.push(user.public());
            }
            last = Some(String::from_utf8_lossy(&key).into_owned());
        }
        Ok(UserPage {
            items,
            next_cursor: if more { last } else { None },
        })
    }

    /// Creates an account with a password, as an admin: its address counts as verified when
    /// `verified` says so, and no session starts.
    pub async fn create_user(&self, who: &Principal, new: NewUser) -> Result<User> {
        Self::require_admin(who)?;
        let email = normalize_email(&new.email)?;
        if new.role != "user" && new.role != "admin" {
            return Err(invalid("role is `user` or `admin`", "role"));
        }
        if self.user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        check_password(&new.password, &email)?;
        let hash = self.hasher.hash(new.password).await?;
        let (user, write) = new_user(&email, &new.role, hash, new.email_verified, new.profile)?;
        match self.store.kv_write(write).await {
            Ok(()) => Ok(user.public()),
            Err(StoreError::CasFailed) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_user(&self, who: &Principal, id: &str) -> Result<User> {
        Self::require_admin(who)?;
        self.load_user(id)
            .await?
            .map(|(u, _)| u.public())
            .ok_or_else(|| AuthError::UserNotFound(id.into()))
    }

    /// Disables or enables a user. Disabling revokes every token at once.
    pub async fn set_disabled(&self, who: &Principal, id: &str, disabled: bool) -> Result<User> {
        Self::require_admin(who)?;
        let user = self
            .update_user(id, |u| {
                if disabled && !u.disabled {
                    u.token_version += 1;
                }
                u.disabled = disabled;
            })
            .await?;
        Ok(user.public())
    }

    pub async fn set_role(&self, who: &Principal, id: &str, role: &str) -> Result<User> {
        Self::require_admin(who)?;
        if role != "user" && role != "admin" {
            return Err(invalid("role is `user` or `admin`", "role"));
        }
        Ok(self
            .update_user(id, |u| u.role = role.to_string())
            .await?
            .public())
    }

    /// Deletes a user; their tokens stop working at once. Their documents stay.
    pub async fn delete_user(&self, who: &Principal, id: &str) -> Result<()> {
        Self::require_admin(who)?;
        let (user, bytes) = self
            .load_user(id)
            .await?
            .ok_or_else(|| AuthError::UserNotFound(id.into()))?;
        let write = KvWrite::default()
            .check(Space::Users, id.as_bytes(), Some(bytes))
            .delete(Space::Users, id.as_bytes())
            .event(user.event("delete"));
        let write = Self::release_identities(self.release_email(write, &user).await?, &user);
        match self.store.kv_write(write).await {
            Ok(()) => Ok(()),
            Err(StoreError::CasFailed) => Err(AuthError::Conflict(
                "the user changed concurrently; retry".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// [`Accounts::upsert_admin`] for a caller who must be an admin (the service key, for the
    /// `emberbase admin create --url` command).
    pub async fn put_admin(
        &self,
        who: &Principal,
        email: &str,
        password: String,
    ) -> Result<(User, bool)> {
        Self::require_admin(who)?;
        self.upsert_admin(email, password).await
    }

    /// Creates an admin, or promotes (and re-passwords) the existing user with that email.
    /// Returns the user and whether it was created.
    pub async fn upsert_admin(&self, email: &str, password: String) -> Result<(User, bool)> {
        let email = normalize_email(email)?;
        check_password(&password, &email)?;
        let hash = self.hasher.hash(password).await?;
        if let Some((user, _)) = self.user_by_email(&email).await? {
            let user = self
                .update_user(&user.id, |u| {
                    u.role = "admin".into();
                    u.password_hash = hash.clone();
                    u.disabled = false;
                })
                .await?;
            return Ok((user.public(), false));
        }
        let (user, write) = new_user(&email, "admin", hash, true, Map::new())?;
        self.store.kv_write(write).await?;
        Ok((user.public(), true))
    }

    /// Whether a user with this email exists.
    pub async fn email_exists(&self, email: &str) -> Result<bool> {
        let email = normalize_email(email)?;
        Ok(self.user_by_email(&email).await?.is_some())
    }

    pub async fn outbox(&self, who: &Principal, limit: usize) -> Result<Vec<Mail>> {
        Self::require_admin(who)?;
        Ok(self.mailer.outbox(limit.clamp(1, 1000)).await?)
    }

    /// Adds a new JWT signing key (admins only); earlier tokens stay valid until they expire.
    /// Reads the signing keys again, which another node of a cluster may have rotated.
    pub(crate) async fn reload_keys(&self) -> Result<()> {
        self.tokens.reload().await
    }

    pub async fn rotate_signing_key(&self, who: &Principal) -> Result<String> {
        Self::require_admin(who)?;
        self.tokens.rotate().await
    }
}
