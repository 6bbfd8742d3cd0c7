//! Anonymous accounts: a session without an address, for an app that lets people start before
//! they sign up. Such an account is a user record without an email (rules see
//! `auth.anonymous == true` and `auth.email == null`), under its own id, so what it writes is
//! owned like any user's. Upgrading it (an address and a password, or a passwordless sign-in
//! while signed in as it) keeps the id, and so every document and file it owns.
//!
//! An anonymous account that nobody uses for `auth.anonymous_ttl_secs` is deleted by the
//! pruning pass: its sessions end; what it owns stays, owned by an id no one signs in as again
//! (rules like `doc.owner == auth.id` never match it; an admin or a function may clean up).
//! Each refresh moves the deadline on.

use super::identity::email_key;
use super::records::{check_email_length, normalize_email, to_json, User, UserRecord};
use super::{rate_limited, Accounts, Session};
use crate::auth::error::{AuthError, Result};
use crate::auth::password::check_password;
use crate::auth::Principal;
use crate::model::unix_secs;
use crate::store::{KvWrite, Space, StoreError};
use serde_json::Map;

impl UserRecord {
    /// Whether this is an anonymous account: one made by `sign_in_anonymously` and not yet
    /// upgraded (an account from a provider may lack an address without being anonymous).
    pub(super) fn is_anonymous(&self) -> bool {
        self.anonymous_until.is_some()
    }
}

impl Accounts {
    fn anonymous_ttl(&self) -> u64 {
        self.config.anonymous_ttl_secs
    }

    /// Starts an anonymous account and signs it in. Counted with signups per client address.
    pub async fn sign_in_anonymously(&self, client_ip: &str) -> Result<Session> {
        self.signup_ips
            .acquire(client_ip)
            .await
            .map_err(|wait| rate_limited(wait, "too many signups from this address"))?;
        let user = UserRecord {
            id: ulid::Ulid::new().to_string(),
            email: String::new(),
            role: "user".into(),
            created_at: crate::model::now_rfc3339(),
            email_verified: false,
            password_hash: String::new(),
            token_version: 1,
            disabled: false,
            profile: Map::new(),
            totp: None,
            anonymous_until: Some(unix_secs() + self.anonymous_ttl()),
            identities: Vec::new(),
        };
        let write = KvWrite::default()
            .check(Space::Users, user.id.as_bytes(), None)
            .put(Space::Users, user.id.as_bytes(), to_json(&user)?)
            .event(user.event("signup"));
        let (session, write) = self.new_session(&user, write)?;
        self.store.kv_write(write).await?;
        Ok(session)
    }

    /// Gives the signed-in anonymous account an address and a password: the same id, now a
    /// regular account (sessions stay). `409` when the address has an account.
    pub async fn upgrade(&self, who: &Principal, email: &str, password: String) -> Result<User> {
        let Principal::User { id, .. } = who else {
            return Err(AuthError::Unauthenticated("sign in first".into()));
        };
        check_email_length(email)?;
        let email = normalize_email(email)?;
        check_password(&password, &email)?;
        let hash = self.hasher.hash(password).await?;
        self.attach_email(id, &email, Some(hash), false).await
    }

    /// Turns anonymous account `id` into the account of `email` (with `password_hash`, if
    /// given): the address must be free.
    pub(super) async fn attach_email(
        &self,
        id: &str,
        email: &str,
        password_hash: Option<String>,
        verified: bool,
    ) -> Result<User> {
        let key = email_key(email);
        for _ in 0..8 {
            let (user, bytes) = self
                .load_user(id)
                .await?
                .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into()))?;
            if !user.is_anonymous() {
                return Err(AuthError::BadRequest(
                    "this account already has an address".into(),
                ));
            }
            if self.user_by_email(email).await?.is_some() {
                return Err(AuthError::EmailTaken);
            }
            let mut upgraded = user.clone();
            upgraded.email = email.to_string();
            upgraded.email_verified = verified;
            upgraded.anonymous_until = None;
            if let Some(hash) = &password_hash {
                upgraded.password_hash = hash.clone();
            }
            let write = KvWrite::default()
                .check(Space::Users, id.as_bytes(), Some(bytes))
                .check(Space::Emails, key.as_bytes(), None)
                .put(Space::Users, id.as_bytes(), to_json(&upgraded)?)
                .put(Space::Emails, key.as_bytes(), id.as_bytes());
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(upgraded.public()),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict(
            "the account changed concurrently; retry".into(),
        ))
    }

    /// The id of `who` when it is a signed-in anonymous account.
    pub(super) async fn anonymous_caller(&self, who: &Principal) -> Result<Option<String>> {
        let Principal::User { id, .. } = who else {
            return Ok(None);
        };
        Ok(self
            .load_user(id)
            .await?
            .filter(|(u, _)| u.is_anonymous())
            .map(|(u, _)| u.id))
    }

    /// After a refresh of an anonymous account, moves its deadline on when less than half of
    /// it is left (so most refreshes write nothing more). Its own write, retried on a
    /// concurrent change: folded into the refresh's compare-and-set, a profile edit racing it
    /// would have read as a reused refresh token and revoked the login.
    pub(super) async fn keep_anonymous(&self, user: &UserRecord) -> Result<()> {
        let ttl = self.anonymous_ttl();
        let due = user
            .anonymous_until
            .is_some_and(|until| until.saturating_sub(unix_secs()) < ttl / 2);
        if due {
            self.update_user(&user.id, |u| {
                if u.is_anonymous() {
                    u.anonymous_until = Some(unix_secs() + ttl);
                }
            })
            .await?;
        }
        Ok(())
    }
}

/// Whether a stored user is an anonymous account past its deadline (for pruning).
pub(super) fn abandoned(user: &UserRecord, now: u64) -> bool {
    user.is_anonymous() && user.anonymous_until.is_some_and(|until| until <= now)
}
