//! Accounts: signup, login, refresh-token rotation, logout, email verification, password reset
//! and change, and the admin operations on users.
//!
//! Records are system records of the store, written with compare-and-set through the single
//! writer, so "this email is free", "this refresh token is unused" and "this one-time token
//! exists" are checked atomically with the write that depends on them.
//!
//! Refresh tokens are opaque secrets stored only as SHA-256 hashes. Each login starts a
//! *family*; every refresh marks the presented token used and issues the next one of the same
//! family. Presenting a used token again means it leaked: the whole family is revoked. A
//! family ends 30 days (configurable) after the login, however often it is refreshed. A user's
//! `token_version` is in every access token and every family; changing the password, a reset,
//! disabling or deleting the user bumps or removes it, which invalidates every token at once.

mod prune;

pub use prune::Pruned;

use super::mail::{Mail, Mailer};
use super::password::{check_password, PasswordHasherPool};
use super::throttle::WindowLimiter;
use super::tokens::TokenIssuer;
use super::{generate_secret, Principal};
use crate::config::AuthConfig;
use super::error::{internal, invalid, AuthError, Result};
use crate::error::StorageError;
use crate::model::unix_secs;
use crate::store::{KvWrite, Space, Store, StoreError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// A user as the API shows it. Never a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    /// `user` or `admin`.
    pub role: String,
    pub created_at: String,
    pub email_verified: bool,
    /// Disabled users cannot sign in, and their tokens stop working.
    pub disabled: bool,
}

/// What signup, login and refresh return.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Session {
    pub user: User,
    /// A short-lived JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// An opaque secret for `POST /v1/auth/refresh`; single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct UserRecord {
    id: String,
    email: String,
    role: String,
    created_at: String,
    email_verified: bool,
    password_hash: String,
    token_version: u64,
    disabled: bool,
}

impl UserRecord {
    fn public(&self) -> User {
        User {
            id: self.id.clone(),
            email: self.email.clone(),
            role: self.role.clone(),
            created_at: self.created_at.clone(),
            email_verified: self.email_verified,
            disabled: self.disabled,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct RefreshRecord {
    user_id: String,
    family: String,
    used: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct FamilyRecord {
    user_id: String,
    token_version: u64,
    /// Unix seconds: the absolute end of the login.
    expires_at: u64,
    revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EmailTokenKind {
    Verify,
    Reset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EmailTokenRecord {
    kind: EmailTokenKind,
    user_id: String,
    expires_at: u64,
}

/// A page of users.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    pub next_cursor: Option<String>,
}

fn sha256_hex(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(internal)
}

fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| AuthError::Storage(StorageError::Corrupt(e.to_string())))
}

/// A new user record, and the write that creates it if (and only if) its email is still free.
fn new_user(
    email: &str,
    role: &str,
    password_hash: String,
    email_verified: bool,
) -> Result<(UserRecord, KvWrite)> {
    let user = UserRecord {
        id: ulid::Ulid::new().to_string(),
        email: email.to_string(),
        role: role.to_string(),
        created_at: crate::model::now_rfc3339(),
        email_verified,
        password_hash,
        token_version: 1,
        disabled: false,
    };
    let write = KvWrite::default()
        .check(Space::Emails, email.as_bytes(), None)
        .put(Space::Emails, email.as_bytes(), user.id.as_bytes())
        .put(Space::Users, user.id.as_bytes(), to_json(&user)?);
    Ok((user, write))
}

/// Trims an email and lower-cases its domain; refuses what cannot be an address.
pub fn normalize_email(raw: &str) -> Result<String> {
    let email = raw.trim();
    let invalid = || invalid("not a valid email address", "email");
    let (local, domain) = email.rsplit_once('@').ok_or_else(invalid)?;
    let plausible = !local.is_empty()
        && local.len() <= 64
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && !domain.contains('@');
    if !plausible {
        return Err(invalid());
    }
    Ok(format!("{local}@{}", domain.to_ascii_lowercase()))
}

pub struct Accounts {
    store: Store,
    hasher: PasswordHasherPool,
    tokens: TokenIssuer,
    config: AuthConfig,
    account_failures: WindowLimiter,
    ip_failures: WindowLimiter,
    /// Every signup, per client address.
    signup_ips: WindowLimiter,
    /// Every reset or verification mail asked for, per email address and per client address.
    mail_addresses: WindowLimiter,
    mail_ips: WindowLimiter,
    /// Reset requests being handled off the request path.
    mail_jobs: Arc<tokio::sync::Semaphore>,
    mailer: Mailer,
}

/// The longest email address (RFC 5321), checked before anything else is done with one.
const MAX_EMAIL_BYTES: usize = 254;

/// Reset requests handled at once in the background; more are dropped (and logged).
const MAIL_JOBS: usize = 32;

fn check_email_length(raw: &str) -> Result<()> {
    if raw.len() > MAX_EMAIL_BYTES {
        return Err(invalid(
            format!("an email address is at most {MAX_EMAIL_BYTES} bytes"),
            "email",
        ));
    }
    Ok(())
}

fn rate_limited(wait: Duration, what: &str) -> AuthError {
    AuthError::RateLimited {
        message: format!("{what}; try again later"),
        retry_after: wait.as_secs().max(1),
    }
}

impl Accounts {
    pub fn new(
        store: Store,
        hasher: PasswordHasherPool,
        tokens: TokenIssuer,
        config: AuthConfig,
        mailer: Mailer,
    ) -> Self {
        let window = Duration::from_secs(config.failure_window_secs);
        let hour = Duration::from_secs(3600);
        Accounts {
            account_failures: WindowLimiter::new(config.max_failures_per_account, window),
            ip_failures: WindowLimiter::new(config.max_failures_per_ip, window),
            signup_ips: WindowLimiter::new(config.signups_per_ip_per_hour, hour),
            mail_addresses: WindowLimiter::new(config.mails_per_address_per_hour, hour),
            mail_ips: WindowLimiter::new(config.mail_requests_per_ip_per_hour, hour),
            mail_jobs: Arc::new(tokio::sync::Semaphore::new(MAIL_JOBS)),
            store,
            hasher,
            tokens,
            config,
            mailer,
        }
    }

    async fn load_user(&self, id: &str) -> Result<Option<(UserRecord, Vec<u8>)>> {
        match self.store.kv_get(Space::Users, id.as_bytes()).await? {
            Some(bytes) => Ok(Some((from_json(&bytes)?, bytes))),
            None => Ok(None),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<(UserRecord, Vec<u8>)>> {
        match self.store.kv_get(Space::Emails, email.as_bytes()).await? {
            Some(id) => self.load_user(&String::from_utf8_lossy(&id)).await,
            None => Ok(None),
        }
    }

    /// A new login family and its first refresh token, as a write to add to the caller's.
    fn new_session(&self, user: &UserRecord, write: KvWrite) -> Result<(Session, KvWrite)> {
        let family_id = ulid::Ulid::new().to_string();
        let family = FamilyRecord {
            user_id: user.id.clone(),
            token_version: user.token_version,
            expires_at: unix_secs() + self.config.refresh_token_ttl_days * 86_400,
            revoked: false,
        };
        let write = write.put(Space::Families, family_id.as_bytes(), to_json(&family)?);
        self.next_refresh_token(user, &family_id, write)
    }

    /// The next refresh token of a family, and a fresh access token.
    fn next_refresh_token(
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
        check_email_length(email)?;
        self.signup_ips
            .acquire(client_ip)
            .map_err(|wait| rate_limited(wait, "too many signups from this address"))?;
        let email = normalize_email(email)?;
        check_password(&password, &email)?;
        if self
            .store
            .kv_get(Space::Emails, email.as_bytes())
            .await?
            .is_some()
        {
            return Err(AuthError::EmailTaken);
        }
        let hash = self.hasher.hash(password).await?;
        let (user, write) = new_user(&email, "user", hash, false)?;
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
    fn attempt(&self, account_key: &str, ip_key: Option<&str>) -> Result<()> {
        let what = "too many failed sign-in attempts";
        self.account_failures
            .acquire(account_key)
            .map_err(|wait| rate_limited(wait, what))?;
        if let Some(ip) = ip_key {
            if let Err(wait) = self.ip_failures.acquire(ip) {
                self.account_failures.release(account_key);
                return Err(rate_limited(wait, what));
            }
        }
        Ok(())
    }

    /// Signs in. An unknown email and a wrong password answer the same, in about the same time.
    pub async fn login(&self, email: &str, password: String, client_ip: &str) -> Result<Session> {
        check_email_length(email)?;
        let account_key = normalize_email(email).unwrap_or_else(|_| email.trim().to_string());
        let ip_key = client_ip.to_string();
        self.attempt(&account_key, Some(&ip_key))?;
        let found = self.user_by_email(&account_key).await?;
        let hash = found.as_ref().map(|(u, _)| u.password_hash.clone());
        let matched = self.hasher.verify(password, hash).await?;
        // A wrong password leaves its attempt counted.
        let user = match (matched, found) {
            (true, Some((user, _))) => user,
            _ => return Err(AuthError::Unauthenticated("invalid email or password".into())),
        };
        self.account_failures.clear(&account_key);
        self.ip_failures.release(&ip_key);
        if user.disabled {
            return Err(AuthError::Forbidden("this account is disabled".into()));
        }
        let (session, write) = self.new_session(&user, KvWrite::default())?;
        self.store.kv_write(write).await?;
        Ok(session)
    }

    /// Exchanges a refresh token for a new pair. The presented token stops working; presenting
    /// it again revokes its whole family.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Session> {
        let invalid = || AuthError::Unauthenticated("invalid, expired or revoked refresh token".into());
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
        let write = KvWrite::default()
            .check(Space::RefreshTokens, hash.as_bytes(), Some(record_bytes))
            .check(
                Space::Families,
                record.family.as_bytes(),
                Some(family_bytes),
            )
            .put(Space::RefreshTokens, hash.as_bytes(), to_json(&used)?);
        let (session, write) = self.next_refresh_token(&user, &record.family, write)?;
        match self.store.kv_write(write).await {
            Ok(()) => Ok(session),
            // Another refresh with the same token won the race: this one is a reuse.
            Err(StoreError::CasFailed) => {
                self.revoke_family(&record.family).await?;
                Err(invalid())
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn revoke_family(&self, family_id: &str) -> Result<()> {
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
        Err(AuthError::Conflict("the login changed concurrently; retry".into()))
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
    pub async fn authenticate_until(&self, token: &str) -> Result<(Principal, u64)> {
        let claims = self.tokens.verify(token)?;
        let invalid = || AuthError::Unauthenticated("invalid or expired token".into());
        let (user, _) = self.load_user(&claims.sub).await?.ok_or_else(invalid)?;
        if user.disabled || user.token_version != claims.tv {
            return Err(invalid());
        }
        let who = Principal::User {
            admin: user.role == "admin",
            id: user.id,
            email: user.email,
        };
        Ok((who, claims.exp))
    }

    pub async fn me(&self, who: &Principal) -> Result<User> {
        match who {
            Principal::User { id, .. } => self
                .load_user(id)
                .await?
                .map(|(u, _)| u.public())
                .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into())),
            Principal::Service | Principal::Function { .. } => {
                Err(AuthError::BadRequest("the service key is not a user".into()))
            }
            Principal::Anonymous => Err(AuthError::Unauthenticated("sign in first".into())),
        }
    }

    /// Reads, changes and writes back a user record, retrying on a concurrent change.
    async fn update_user(&self, id: &str, change: impl Fn(&mut UserRecord)) -> Result<UserRecord> {
        for _ in 0..8 {
            let (mut user, bytes) = self
                .load_user(id)
                .await?
                .ok_or_else(|| AuthError::UserNotFound(id.into()))?;
            change(&mut user);
            let write = KvWrite::default()
                .check(Space::Users, id.as_bytes(), Some(bytes))
                .put(Space::Users, id.as_bytes(), to_json(&user)?);
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(user),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict("the user changed concurrently; retry".into()))
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
        self.attempt(&account_key, None)?;
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
        self.account_failures.release(&account_key);
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

    async fn issue_email_token(
        &self,
        kind: EmailTokenKind,
        user: &UserRecord,
        ttl_secs: u64,
    ) -> Result<String> {
        let token = generate_secret("ebet_");
        let record = EmailTokenRecord {
            kind,
            user_id: user.id.clone(),
            expires_at: unix_secs() + ttl_secs,
        };
        self.store
            .kv_write(KvWrite::default().put(
                Space::EmailTokens,
                sha256_hex(&token).as_bytes(),
                to_json(&record)?,
            ))
            .await?;
        Ok(token)
    }

    /// Consumes a one-time token of `kind`: it works once, before it expires.
    async fn consume_email_token(
        &self,
        kind: EmailTokenKind,
        token: &str,
    ) -> Result<EmailTokenRecord> {
        let invalid = || AuthError::BadRequest("invalid or expired token".into());
        let hash = sha256_hex(token);
        let bytes = self
            .store
            .kv_get(Space::EmailTokens, hash.as_bytes())
            .await?
            .ok_or_else(invalid)?;
        let record: EmailTokenRecord = from_json(&bytes)?;
        if record.kind != kind || record.expires_at <= unix_secs() {
            return Err(invalid());
        }
        let write = KvWrite::default()
            .check(Space::EmailTokens, hash.as_bytes(), Some(bytes))
            .delete(Space::EmailTokens, hash.as_bytes());
        match self.store.kv_write(write).await {
            Ok(()) => Ok(record),
            Err(StoreError::CasFailed) => Err(invalid()),
            Err(e) => Err(e.into()),
        }
    }

    /// Sends the signed-in user a link to confirm their email.
    pub async fn request_verification(&self, who: &Principal, client_ip: &str) -> Result<()> {
        let Principal::User { id, .. } = who else {
            return Err(AuthError::Unauthenticated("sign in first".into()));
        };
        let (user, _) = self
            .load_user(id)
            .await?
            .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into()))?;
        if user.email_verified {
            return Ok(());
        }
        self.limit_mail(client_ip, &user.email)?;
        let token = self
            .issue_email_token(
                EmailTokenKind::Verify,
                &user,
                self.config.verify_token_ttl_secs,
            )
            .await?;
        let body = format!(
            "Confirm your email address for {}.\n\nToken: {token}\n\nPOST {}/v1/auth/verify/confirm with {{\"token\": \"{token}\"}}.\nIt works once, for {} hours.\n",
            user.email,
            self.config.public_url.trim_end_matches('/'),
            self.config.verify_token_ttl_secs / 3600
        );
        self.mailer
            .send(&user.email, "Confirm your email", body)
            .await
    }

    pub async fn confirm_verification(&self, token: &str) -> Result<User> {
        let record = self
            .consume_email_token(EmailTokenKind::Verify, token)
            .await?;
        Ok(self
            .update_user(&record.user_id, |u| u.email_verified = true)
            .await?
            .public())
    }

    /// Sends a reset link if the email belongs to an account; answers the same either way.
    pub async fn request_reset(self: &Arc<Self>, email: &str, client_ip: &str) -> Result<()> {
        check_email_length(email)?;
        let Ok(email) = normalize_email(email) else {
            return Ok(());
        };
        self.limit_mail(client_ip, &email)?;
        // The lookup, the token and the mail happen off the request path, so the answer takes
        // the same time whether or not the address has an account.
        let Ok(permit) = self.mail_jobs.clone().try_acquire_owned() else {
            tracing::warn!("too many password reset requests in progress; one was dropped");
            return Ok(());
        };
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.send_reset(&email).await {
                tracing::error!(error = %e, "cannot send a password reset mail");
            }
            drop(permit);
        });
        Ok(())
    }

    /// Counts a mail asked for, per client address and per email address (whether or not the
    /// address has an account, so a 429 reveals nothing).
    fn limit_mail(&self, client_ip: &str, email: &str) -> Result<()> {
        self.mail_ips
            .acquire(client_ip)
            .map_err(|wait| rate_limited(wait, "too many mails asked for from this address"))?;
        self.mail_addresses
            .acquire(email)
            .map_err(|wait| rate_limited(wait, "too many mails asked for to this email address"))
    }

    async fn send_reset(&self, email: &str) -> Result<()> {
        let Some((user, _)) = self.user_by_email(email).await? else {
            return Ok(());
        };
        if user.disabled {
            return Ok(());
        }
        let token = self
            .issue_email_token(
                EmailTokenKind::Reset,
                &user,
                self.config.reset_token_ttl_secs,
            )
            .await?;
        let body = format!(
            "Someone asked to reset the password of {}. If it was not you, ignore this message.\n\nToken: {token}\n\nPOST {}/v1/auth/password/reset/confirm with {{\"token\": \"{token}\", \"new_password\": \"...\"}}.\nIt works once, for {} minutes.\n",
            user.email,
            self.config.public_url.trim_end_matches('/'),
            self.config.reset_token_ttl_secs / 60
        );
        self.mailer
            .send(&user.email, "Reset your password", body)
            .await
    }

    /// Sets a new password with a reset token and revokes every token of the user.
    pub async fn confirm_reset(&self, token: &str, new_password: String) -> Result<()> {
        let hash = sha256_hex(token);
        let record: EmailTokenRecord = match self
            .store
            .kv_get(Space::EmailTokens, hash.as_bytes())
            .await?
        {
            Some(bytes) => from_json(&bytes)?,
            None => return Err(AuthError::BadRequest("invalid or expired token".into())),
        };
        let (user, _) = self
            .load_user(&record.user_id)
            .await?
            .ok_or_else(|| AuthError::BadRequest("invalid or expired token".into()))?;
        check_password(&new_password, &user.email)?;
        let record = self
            .consume_email_token(EmailTokenKind::Reset, token)
            .await?;
        let password_hash = self.hasher.hash(new_password).await?;
        self.update_user(&record.user_id, |u| {
            u.password_hash = password_hash.clone();
            u.token_version += 1;
            // Receiving the reset mail proves the address.
            u.email_verified = true;
        })
        .await?;
        Ok(())
    }

    fn require_admin(who: &Principal) -> Result<()> {
        Ok(who.require_admin("manage users and read the outbox")?)
    }

    /// Users in id (creation) order.
    pub async fn list_users(
        &self,
        who: &Principal,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UserPage> {
        Self::require_admin(who)?;
        if !(1..=1000).contains(&limit) {
            return Err(AuthError::BadRequest("limit must be between 1 and 1000".into()));
        }
        let rows = self
            .store
            .kv_scan(Space::Users, cursor.map(str::as_bytes), limit + 1)
            .await?;
        let mut items: Vec<User> = rows
            .iter()
            .map(|(_, v)| from_json::<UserRecord>(v).map(|u| u.public()))
            .collect::<Result<_>>()?;
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|u| u.id.clone())
        } else {
            None
        };
        Ok(UserPage { items, next_cursor })
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
            .delete(Space::Emails, user.email.as_bytes());
        match self.store.kv_write(write).await {
            Ok(()) => Ok(()),
            Err(StoreError::CasFailed) => Err(AuthError::Conflict("the user changed concurrently; retry".into())),
            Err(e) => Err(e.into()),
        }
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
        let (user, write) = new_user(&email, "admin", hash, true)?;
        self.store.kv_write(write).await?;
        Ok((user.public(), true))
    }

    /// Whether a user with this email exists.
    pub async fn email_exists(&self, email: &str) -> Result<bool> {
        let email = normalize_email(email)?;
        Ok(self
            .store
            .kv_get(Space::Emails, email.as_bytes())
            .await?
            .is_some())
    }

    pub async fn outbox(&self, who: &Principal, limit: usize) -> Result<Vec<Mail>> {
        Self::require_admin(who)?;
        self.mailer.outbox(limit.clamp(1, 1000)).await
    }

    /// Adds a new JWT signing key (admins only); earlier tokens stay valid until they expire.
    pub fn rotate_signing_key(&self, who: &Principal) -> Result<String> {
        Self::require_admin(who)?;
        self.tokens.rotate()
    }
}
