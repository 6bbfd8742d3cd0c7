//! Accounts: signup, login, refresh-token rotation, logout, email verification, password reset
//! and change, and the admin operations on users.
//!
//! Records are system records of the store, written by compare-and-set transactions, so "this
//! email is free", "this refresh token is unused" and "this one-time token exists" are checked
//! atomically with the write that depends on them.
//!
//! Refresh tokens are opaque secrets stored only as SHA-256 hashes. Each login starts a
//! *family*; every refresh marks the presented token used and issues the next one of the same
//! family. Presenting a used token again means it leaked: the whole family is revoked. A
//! family ends 30 days (configurable) after the login, however often it is refreshed. A user's
//! `token_version` is in every access token and every family; changing the password, a reset,
//! disabling or deleting the user bumps or removes it, which invalidates every token at once.

mod admin;
mod email;
mod guest;
mod identity;
mod logins;
mod mfa;
mod oauth;
mod passwordless;
mod prune;
mod records;
mod sessions;
mod transfer;

pub use identity::{CollidingUser, EmailCollision};
pub use logins::{SessionInfo, SessionList};
pub use mfa::{LoginResult, MfaAnswer, MfaChallenge, RecoveryCodes, TotpEnrollment};
pub use oauth::{LinkedIdentity, OAuthProviderInfo, ProviderSecrets, SignInProvider};
pub use passwordless::PasswordlessProof;
pub use records::{NewUser, Session, User, UserPage};
pub use transfer::{ImportReport, PortableUser, PortableUserPage, Skipped};

use records::{from_json, to_json, UserRecord};

use super::error::{AuthError, Result};
use super::oauth::OAuthClient;
use super::password::PasswordHasherPool;
use super::throttle::WindowLimiter;
use super::tokens::TokenIssuer;
use crate::config::AuthConfig;
use crate::mail::Mailer;
use crate::store::{KvWrite, Space, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// The account service ([`Server::accounts`](crate::Server::accounts)): signup, login,
/// refresh-token rotation, email flows, and the admin operations on users. An embedding program
/// also uses it to turn a bearer token into the [`Principal`](crate::Principal) the other
/// services take.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = emberbase::Server::builder().data_dir(dir.path()).bind("127.0.0.1:0").start().await?;
/// use emberbase::{AuthError, Principal};
///
/// let accounts = server.accounts();
/// let session = accounts.signup("ada@example.com", "correct horse battery".into(), "127.0.0.1").await?;
/// assert_eq!(session.user.role, "user");
///
/// // An access token resolves to its user, checked against the stored account.
/// let who = accounts.authenticate(&session.access_token).await?;
/// assert!(matches!(&who, Principal::User { email, admin: false, .. } if email == "ada@example.com"));
/// assert_eq!(accounts.me(&who).await?.id, session.user.id);
///
/// // A wrong password is refused like an unknown email; a refresh token works once.
/// let wrong = accounts.login("ada@example.com", "not the password".into(), "127.0.0.1").await;
/// assert!(matches!(wrong, Err(AuthError::Unauthenticated(_))));
/// let next = accounts.refresh(&session.refresh_token).await?;
/// assert!(accounts.refresh(&session.refresh_token).await.is_err());
/// assert_ne!(next.refresh_token, session.refresh_token);
///
/// // Admin operations take an admin caller.
/// let promoted = accounts.set_role(&Principal::Service, &session.user.id, "admin").await?;
/// assert_eq!(promoted.role, "admin");
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
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
    /// Sign-ins with a provider started, per client address.
    oauth_ips: WindowLimiter,
    /// The protocol client of sign-in providers.
    oauth: OAuthClient,
}

/// Reset requests handled at once in the background; more are dropped (and logged).
const MAIL_JOBS: usize = 32;

fn rate_limited(wait: Duration, what: &str) -> AuthError {
    AuthError::RateLimited {
        message: format!("{what}; try again later"),
        retry_after: wait.as_secs().max(1),
    }
}

impl Accounts {
    pub(crate) fn new(
        store: Store,
        hasher: PasswordHasherPool,
        tokens: TokenIssuer,
        config: AuthConfig,
        mailer: Mailer,
        outbound: &crate::outbound::Policy,
    ) -> Self {
        let window = Duration::from_secs(config.failure_window_secs);
        let hour = Duration::from_secs(3600);
        Accounts {
            oauth_ips: WindowLimiter::new(config.oauth_starts_per_ip_per_hour, hour)
                .shared_in(&store, "oauth-ip"),
            oauth: OAuthClient::new(outbound, config.id_token_leeway_secs),
            account_failures: WindowLimiter::new(config.max_failures_per_account, window)
                .shared_in(&store, "login-account"),
            ip_failures: WindowLimiter::new(config.max_failures_per_ip, window)
                .shared_in(&store, "login-ip"),
            signup_ips: WindowLimiter::new(config.signups_per_ip_per_hour, hour)
                .shared_in(&store, "signup-ip"),
            mail_addresses: WindowLimiter::new(config.mails_per_address_per_hour, hour)
                .shared_in(&store, "mail-address"),
            mail_ips: WindowLimiter::new(config.mail_requests_per_ip_per_hour, hour)
                .shared_in(&store, "mail-ip"),
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

    /// Reads, changes and writes back a user record, retrying on a concurrent change.
    async fn update_user(&self, id: &str, change: impl Fn(&mut UserRecord)) -> Result<UserRecord> {
        self.try_update_user(id, |user| {
            change(user);
            Ok(())
        })
        .await
    }

    /// Like `update_user`, for a change that may refuse (then nothing is written).
    async fn try_update_user(
        &self,
        id: &str,
        change: impl Fn(&mut UserRecord) -> Result<()>,
    ) -> Result<UserRecord> {
        for _ in 0..8 {
            let (mut user, bytes) = self
                .load_user(id)
                .await?
                .ok_or_else(|| AuthError::UserNotFound(id.into()))?;
            change(&mut user)?;
            let write = KvWrite::default()
                .check(Space::Users, id.as_bytes(), Some(bytes))
                .put(Space::Users, id.as_bytes(), to_json(&user)?);
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(user),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict(
            "the user changed concurrently; retry".into(),
        ))
    }
}
