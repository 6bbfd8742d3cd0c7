//! Sessions: signup, login, refresh-token rotation with reuse detection, logout, resolving an
//! access token to its user, and password change.

use super::mfa::LoginResult;
use super::records::{
    check_email_length, check_profile, from_json, new_user, normalize_email, sha256_hex, to_json,
    FamilyRecord, RefreshRecord, Session, User, UserRecord,
};
use super::{rate_limited, Accounts};
use crate::auth::error::{AuthError, Result};
use crate::auth::password::check_password;
use crate::auth::{generate_secret, Principal};
use crate::model::{merge_patch, unix_secs};
use crate::store::{KvWrite, Space, StoreError};
use serde_json::{Map, Value};

impl Accounts {
    /// A new login family and its first refresh token, as a write to add to the caller's.
    pub(super) fn new_session(
        &self,
        user: &UserRecord,
        write: KvWrite,
    ) -> Result<(Session, KvWrite)> {
        let family_id = ulid::Ulid::new().to_string();
        let now = unix_secs();
        let device = crate::auth::device();
        let family = FamilyRecord {
            user_id: user.id.clone(),
            token_version: user.token_version,
            expires_at: now + self.config.refresh_token_ttl_days * 86_400,
            revoked: false,
            created_at: now,
            last_used_at: now,
            user_agent: device.user_agent,
            ip: device.ip,
        };
        let write = write
            .put(Space::Families, family_id.as_bytes(), to_json(&family)?)
            .put(
                Space::UserFamilies,
                super::logins::index_key(&user.id, &family_id),
                family_id.clone().into_bytes(),
            );
        self.next_refresh_token(user, &family_id, write)
    }

    /// The next refresh token of a family, and a fresh access token.
    pub(super) fn next_refresh_token(
        &self,
        user: &UserRecord,
        family: &str,
        write: KvWrite,
    ) -> Result<(Session, KvWrite)> {
        let refresh_token = generate_secret("ebrt_");
        let record = RefreshRecord {
            user_id: user.id.clone(),
            family: family.to_string(),
            used: false,
        };
        let write = write.put(
            Space::RefreshTokens,
            sha256_hex(&refresh_token).as_bytes(),
            to_json(&record)?,
        );
        let access_token =
            self.tokens
                .issue(&user.id, &user.email, &user.role, user.token_version)?;
        Ok((
            Session {
                user: user.public(),
                access_token,
                refresh_token,
                token_type: "Bearer".into(),
                expires_in: self.tokens.ttl_secs(),
            },
            write,
        ))
    }

    /// Creates an account and signs it in.
    pub async fn signup(&self, email: &str, password: String, client_ip: &str) -> Result<Session> {
        self.signup_with_profile(email, password, Map::new(), client_ip)
            .await
    }

    /// Like [`Accounts::signup`], with the new user's profile (at most 4 KiB as JSON).
    pub async fn signup_with_profile(
        &self,
        email: &str,
        password: String,
        profile: Map<String, Value>,
        client_ip: &str,
    ) -> Result<Session> {
        check_email_length(email)?;
        check_profile(&profile)?;
        self.signup_ips
            .acquire(client_ip)
            .await
            .map_err(|wait| rate_limited(wait, "too many signups from this address"))?;
        let email = normalize_email(email)?;
        check_password(&password, &email)?;
        if self.user_by_email(&email).await?.is_some() {
            return Err(AuthError::EmailTaken);
        }
        let hash = self.hasher.hash(password).await?;
        let (user, write) = new_user(&email, "user", hash, false, profile)?;
        let (session, write) = self.new_session(&user, write)?;
        match self.store.kv_write(write).await {
            Ok(()) => Ok(session),
            Err(StoreError::CasFailed) => Err(AuthError::EmailTaken),
            Err(e) => Err(e.into()),
        }
    }

    /// Counts a password attempt against the account and, for logins, the client address,
    /// before the password is hashed: concurrent attempts cannot all pass the check. A right
    /// password takes the attempt back.
    pub(super) async fn attempt(&self, account_key: &str, ip_key: Option<&str>) -> Result<()> {
        let what = "too many failed sign-in attempts";
        self.account_failures
            .acquire(account_key)
            .await
            .map_err(|wait| rate_limited(wait, what))?;
        if let Some(ip) = ip_key {
            if let Err(wait) = self.ip_failures.acquire(ip).await {
                self.account_failures.release(account_key).await;
                return Err(rate_limited(wait, what));
            }
        }
        Ok(())
    }

    /// Signs in. An unknown email and a wrong password answer the same, in about the same time.
    /// With TOTP on, a right password answers with the challenge that
    /// [`Accounts::verify_mfa`] ends.
    pub async fn login(
        &self,
        email: &str,
        password: String,
        client_ip: &str,
    ) -> Result<LoginResult> {
        check_email_length(email)?;
        let address = normalize_email(email).unwrap_or_else(|_| email.trim().to_string());
        // Failures count per account, whatever case the address is typed in.
        let account_key = super::identity::email_key(&address);
        let ip_key = client_ip.to_string();
        self.attempt(&account_key, Some(&ip_key)).await?;
        let found = self.user_by_email(&address).await?;
        // An account without a password (made by a passwordless sign-in) is checked against
        // the dummy hash, like an unknown address: same answer, same time.
        let hash = found
            .as_ref()
            .map(|(u, _)| u.password_hash.clone())
            .filter(|h| !h.is_empty());
        // An imported bcrypt hash is replaced by an argon2id one at the first right password.
        let upgrade = hash
            .as_deref()
            .is_some_and(crate::auth::password::is_bcrypt)
            .then(|| password.clone());
        let matched = self.hasher.verify(password, hash).await?;
        // A wrong password leaves its attempt counted.
        let (user, stored) = match (matched, found) {
            (true, Some(found)) => found,
            _ => {
                return Err(AuthError::Unauthenticated(
                    "invalid email or password".into(),
                ))
            }
        };
        self.account_failures.clear(&account_key).await;
        self.ip_failures.release(&ip_key).await;
        if let Some(password) = upgrade {
            self.upgrade_hash(&user, stored, password).await;
        }
        self.finish_login(&user).await
    }

    /// Stores an argon2id hash of the password in place of the account's imported one. A
    /// failure (the record changed meanwhile) leaves the old hash, which the next sign-in
    /// upgrades; the sign-in itself goes on.
    async fn upgrade_hash(&self, user: &UserRecord, stored: Vec<u8>, password: String) {
        let upgraded = async {
            let mut record = user.clone();
            record.password_hash = self.hasher.hash(password).await?;
            let write = KvWrite::default()
                .check(Space::Users, user.id.as_bytes(), Some(stored))
                .put(Space::Users, user.id.as_bytes(), to_json(&record)?);
            self.store.kv_write(write).await?;
            Ok::<_, AuthError>(())
        };
        if let Err(e) = upgraded.await {
            tracing::warn!(user = %user.id, error = %e, "could not replace an imported password hash");
        }
    }

    /// The end of a sign-in whose first factor held (a password, a mailed code): refused for a
    /// disabled account, the MFA challenge with TOTP on, else the session.
    pub(super) async fn finish_login(&self, user: &UserRecord) -> Result<LoginResult> {
        if user.disabled {
            return Err(AuthError::Forbidden("this account is disabled".into()));
        }
        if user
            .totp
            .as_ref()
            .is_some_and(super::mfa::TotpRecord::confirmed)
        {
            return Ok(LoginResult::Mfa(self.challenge(user).await?));
        }
        let (session, write) =
            self.new_session(user, KvWrite::default().event(user.event("login")))?;
        self.store.kv_write(write).await?;
        Ok(LoginResult::Session(session))
    }

    /// Exchanges a refresh token for a new pair. The presented token stops working; presenting
    /// it again revokes its whole family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let invalid =
            || AuthError::Unauthenticated("invalid, expired or revoked refresh token".into());
        let hash = sha256_hex(refresh_token);
        let Some(record_bytes) = self
            .store
            .kv_get(Space::RefreshTokens, hash.as_bytes())
            .await?
        else {
            return Err(invalid());
        };
        let record: RefreshRecord = from_json(&record_bytes)?;
        let Some(family_bytes) = self
            .store
            .kv_get(Space::Families, record.family.as_bytes())
            .await?
        else {
            return Err(invalid());
        };
        let family: FamilyRecord = from_json(&family_bytes)?;
        if record.used {
            self.revoke_family(&record.family).await?;
            tracing::warn!(user = %record.user_id, "a rotated refresh token was reused; its login is revoked");
            return Err(invalid());
        }
        if family.revoked || family.expires_at <= unix_secs() {
            return Err(invalid());
        }
        let user = match self.load_user(&record.user_id).await? {
            Some((user, _)) if !user.disabled && user.token_version == family.token_version => user,
            _ => return Err(invalid()),
        };
        let used = RefreshRecord {
            used: true,
            ..record.clone()
        };
        let family = FamilyRecord {
            last_used_at: unix_secs(),
            ..family
        };
        let write = KvWrite::default()
            .check(Space::RefreshTokens, hash.as_bytes(), Some(record_bytes))
            .check(
                Space::Families,
                record.family.as_bytes(),
                Some(family_bytes),
            )
            .put(Space::RefreshTokens, hash.as_bytes(), to_json(&used)?)
            .put(Space::Families, record.family.as_bytes(), to_json(&family)?);
        let (session, write) = self.next_refresh_token(&user, &record.family, write)?;
        match self.store.kv_write(write).await {
            Ok(()) => {
                self.keep_anonymous(&user).await?;
                Ok(session)
            }
            // Another refresh with the same token won the race: this one is a reuse.
            Err(StoreError::CasFailed) => {
                self.revoke_family(&record.family).await?;
                Err(invalid())
            }
            Err(e) => Err(e.into()),
        }
    }

    pub(super) async fn revoke_family(&self, family_id: &str) -> Result<()> {
        for _ in 0..8 {
            let Some(bytes) = self
                .store
                .kv_get(Space::Families, family_id.as_bytes())
                .await?
            else {
                return Ok(());
            };
            let mut family: FamilyRecord = from_json(&bytes)?;
            if family.revoked {
                return Ok(());
            }
            family.revoked = true;
            let write = KvWrite::default()
                .check(Space::Families, family_id.as_bytes(), Some(bytes))
                .put(Space::Families, family_id.as_bytes(), to_json(&family)?);
            match self.store.kv_write(write).await {
                Err(StoreError::CasFailed) => continue,
                other => return other.map_err(AuthError::from),
            }
        }
        Err(AuthError::Conflict(
            "the login changed concurrently; retry".into(),
        ))
    }

    /// Revokes the login that `refresh_token` belongs to. Unknown tokens are ignored.
    pub async fn logout(&self, who: &Principal, refresh_token: &str) -> Result<()> {
        let Principal::User { id, .. } = who else {
            return Err(AuthError::Unauthenticated("sign in to sign out".into()));
        };
        let hash = sha256_hex(refresh_token);
        let Some(bytes) = self
            .store
            .kv_get(Space::RefreshTokens, hash.as_bytes())
            .await?
        else {
            return Ok(());
        };
        let record: RefreshRecord = from_json(&bytes)?;
        if &record.user_id != id {
            return Err(AuthError::Forbidden(
                "this refresh token belongs to another user".into(),
            ));
        }
        self.revoke_family(&record.family).await
    }

    /// Resolves an access token to its user, checking the user record: it must exist, be
    /// enabled, and not have revoked its tokens since.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        self.authenticate_until(token).await.map(|(who, _)| who)
    }

    /// Like [`Accounts::authenticate`], with the token's expiry (Unix seconds).
    pub(crate) async fn authenticate_until(&self, token: &str) -> Result<(Principal, u64)> {
        let claims = self.tokens.verify(token).await?;
        let invalid = || AuthError::Unauthenticated("invalid or expired token".into());
        let (user, _) = self.load_user(&claims.sub).await?.ok_or_else(invalid)?;
        if user.disabled || user.token_version != claims.tv {
            return Err(invalid());
        }
        Ok((principal(user), claims.exp))
    }

    /// The user `id` as a request signed in as them would be (admins only), for trying rules
    /// as that user; disabled or not.
    pub async fn principal_of(&self, who: &Principal, id: &str) -> Result<Principal> {
        Self::require_admin(who)?;
        let (user, _) = self
            .load_user(id)
            .await?
            .ok_or_else(|| AuthError::UserNotFound(id.into()))?;
        Ok(principal(user))
    }

    pub async fn me(&self, who: &Principal) -> Result<User> {
        match who {
            Principal::User { id, .. } => self
                .load_user(id)
                .await?
                .map(|(u, _)| u.public())
                .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into())),
            Principal::Service | Principal::Function { .. } => Err(AuthError::BadRequest(
                "the service key is not a user".into(),
            )),
            Principal::Anonymous => Err(AuthError::Unauthenticated("sign in first".into())),
        }
    }

    /// Applies a JSON merge patch (RFC 7386: `null` removes a key) to the signed-in user's
    /// profile; the result may take at most 4 KiB as JSON.
    pub async fn update_profile(&self, who: &Principal, patch: Map<String, Value>) -> Result<User> {
        let id = match who {
            Principal::User { id, .. } => id,
            Principal::Service | Principal::Function { .. } => {
                return Err(AuthError::BadRequest(
                    "the service key is not a user".into(),
                ))
            }
            Principal::Anonymous => return Err(AuthError::Unauthenticated("sign in first".into())),
        };
        let user = self
            .try_update_user(id, |user| {
                let mut profile = Value::Object(std::mem::take(&mut user.profile));
                merge_patch(&mut profile, &Value::Object(patch.clone()));
                if let Value::Object(profile) = profile {
                    user.profile = profile;
                }
                check_profile(&user.profile)
            })
            .await?;
        Ok(user.public())
    }

    /// Changes the password (the current one is required), revokes every other token of the
    /// user, and returns a fresh session for this client.
    pub async fn change_password(
        &self,
        who: &Principal,
        current: String,
        new: String,
    ) -> Result<Session> {
        let Principal::User { id, email, .. } = who else {
            return Err(AuthError::Unauthenticated("sign in first".into()));
        };
        check_password(&new, email)?;
        let account_key = email.clone();
        self.attempt(&account_key, None).await?;
        let (user, _) = self
            .load_user(id)
            .await?
            .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into()))?;
        if !self
            .hasher
            .verify(current, Some(user.password_hash))
            .await?
        {
            return Err(AuthError::Forbidden("the current password is wrong".into()));
        }
        self.account_failures.release(&account_key).await;
        let hash = self.hasher.hash(new).await?;
        let user = self
            .update_user(id, |u| {
                u.password_hash = hash.clone();
                u.token_version += 1;
            })
            .await?;
        let (session, write) = self.new_session(&user, KvWrite::default())?;
        self.store.kv_write(write).await?;
        Ok(session)
    }
}

/// The caller a user's record makes.
fn principal(user: UserRecord) -> Principal {
    Principal::User {
        admin: user.role == "admin",
        anonymous: user.is_anonymous(),
        id: user.id,
        email: user.email,
        profile: user.profile,
    }
}
