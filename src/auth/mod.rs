//! Who is calling: accounts and their tokens, the [`Principal`] of a request, and the service
//! key.
//!
//! The service key is a secret that acts as an admin, for scripts and server-to-server use. It
//! comes from `auth.service_key`, or is generated on first start into `<data_dir>/service_key`
//! with owner-only permissions. It is compared in constant time.

pub(crate) mod accounts;
mod error;
pub(crate) mod oauth;
pub(crate) mod password;
pub(crate) mod throttle;
pub(crate) mod tokens;

pub use accounts::{
    Accounts, CollidingUser, EmailCollision, LinkedIdentity, LoginResult, MfaAnswer, MfaChallenge,
    OAuthProviderInfo, PasswordlessProof, ProviderSecrets, RecoveryCodes, Session, SignInProvider,
    TotpEnrollment, User, UserPage,
};
pub use accounts::{ImportReport, PortableUser, PortableUserPage, Skipped};
pub use accounts::{NewUser, SessionInfo, SessionList};

use crate::model::Actor;
use crate::secrets::{Secrets, SERVICE_KEY};
pub use error::AuthError;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Where a request that may sign in comes from: recorded with each login it starts, for the
/// user's list of sessions.
#[derive(Debug, Clone, Default)]
pub(crate) struct Device {
    /// The `User-Agent` header, at most [`MAX_USER_AGENT`] bytes of it.
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// The most of a `User-Agent` a login keeps.
pub(crate) const MAX_USER_AGENT: usize = 256;

tokio::task_local! {
    static DEVICE: Device;
}

/// The device of the request the current task serves (empty outside one).
pub(crate) fn device() -> Device {
    DEVICE.try_with(Clone::clone).unwrap_or_default()
}

/// Runs `work` as a request from `device`.
pub(crate) async fn with_device<F: std::future::Future>(device: Device, work: F) -> F::Output {
    DEVICE.scope(device, work).await
}

/// Why a caller may not do something; every domain error has both as variants.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Denied {
    /// No credentials, and they are required (`401`).
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that do not allow it (`403`).
    #[error("{0}")]
    Forbidden(String),
}

/// The caller of an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// No credentials.
    Anonymous,
    /// The service key: an admin without a user.
    Service,
    /// A signed-in user.
    User {
        id: String,
        email: String,
        admin: bool,
        /// The user's profile, as rules read it (`auth.profile`).
        profile: serde_json::Map<String, Value>,
        /// An anonymous account (`POST /v1/auth/anonymous`), until it is upgraded.
        anonymous: bool,
    },
    /// A function handling an event of depth `depth - 1` (or an HTTP call, depth 1): acts with
    /// admin rights; its writes cause events of depth `depth`.
    Function { name: String, depth: u32 },
}

impl Principal {
    /// Admins bypass every rule.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Principal::Service | Principal::Function { .. } | Principal::User { admin: true, .. }
        )
    }

    /// Admins only: a caller without credentials gets `401` (a token is required), a signed-in
    /// one that is not an admin `403`. `what` completes "only admins ...".
    pub(crate) fn require_admin(&self, what: &str) -> Result<(), Denied> {
        match self {
            _ if self.is_admin() => Ok(()),
            Principal::Anonymous => Err(Denied::Unauthenticated(format!(
                "only admins {what}; send an admin token or the service key"
            ))),
            _ => Err(Denied::Forbidden(format!("only admins {what}"))),
        }
    }

    /// The depth of the events this caller's writes cause: 0 unless it is a function.
    pub(crate) fn depth(&self) -> u32 {
        match self {
            Principal::Function { depth, .. } => *depth,
            _ => 0,
        }
    }

    /// A signed-in user with an empty profile.
    pub fn user(id: impl Into<String>, email: impl Into<String>, admin: bool) -> Principal {
        Principal::User {
            id: id.into(),
            email: email.into(),
            admin,
            profile: serde_json::Map::new(),
            anonymous: false,
        }
    }

    /// The value rules see as `auth`: `null`, or `{"id", "email", "role", "profile",
    /// "anonymous"}` (`email` is null for an account without an address: an anonymous one,
    /// or one from a provider that did not vouch for its address).
    pub(crate) fn auth_value(&self) -> Value {
        match self {
            Principal::Anonymous => Value::Null,
            Principal::Service => json!({"id": null, "email": null, "role": "service"}),
            Principal::User {
                id,
                email,
                admin,
                profile,
                anonymous,
            } => json!({
                "id": id, "email": (!email.is_empty()).then_some(email),
                "role": if *admin { "admin" } else { "user" },
                "profile": profile, "anonymous": anonymous,
            }),
            Principal::Function { name, .. } => {
                json!({"id": null, "email": null, "role": "function", "function": name})
            }
        }
    }

    /// Who the change feed records as having made a write.
    pub(crate) fn actor(&self) -> Option<Actor> {
        match self {
            Principal::Anonymous => None,
            Principal::Service => Some(Actor::service()),
            Principal::User {
                id, email, admin, ..
            } => Some(Actor {
                id: Some(id.clone()),
                email: (!email.is_empty()).then(|| email.clone()),
                role: if *admin { "admin" } else { "user" }.into(),
                function: None,
            }),
            Principal::Function { name, .. } => Some(Actor {
                id: None,
                email: None,
                role: "function".into(),
                function: Some(name.clone()),
            }),
        }
    }
}

/// Turns credentials into a principal.
pub(crate) struct Authenticator {
    service_key: String,
    accounts: Arc<Accounts>,
}

impl Authenticator {
    pub(crate) fn new(service_key: String, accounts: Arc<Accounts>) -> Self {
        Authenticator {
            service_key,
            accounts,
        }
    }

    pub(crate) fn accounts(&self) -> &Arc<Accounts> {
        &self.accounts
    }

    /// Resolves a bearer token. `None` is an anonymous caller; a token that is not valid is
    /// `401`, never anonymous.
    pub(crate) async fn authenticate(&self, bearer: Option<&str>) -> Result<Principal, AuthError> {
        self.authenticate_until(bearer).await.map(|(who, _)| who)
    }

    /// Like [`Authenticator::authenticate`], with the moment the credential stops being valid
    /// (Unix seconds): an access token's expiry, or `None` for the service key and anonymous
    /// callers. Long-lived streams end then.
    pub(crate) async fn authenticate_until(
        &self,
        bearer: Option<&str>,
    ) -> Result<(Principal, Option<u64>), AuthError> {
        if let Some(known) = self.without_lookup(bearer) {
            return Ok((known, None));
        }
        let token = bearer.unwrap_or_default();
        let (who, exp) = self.accounts.authenticate_until(token).await?;
        Ok((who, Some(exp)))
    }

    /// The caller when no account needs to be read: anonymous (no token) or the service key.
    /// `None` for a token to verify.
    pub(crate) fn without_lookup(&self, bearer: Option<&str>) -> Option<Principal> {
        match bearer {
            None => Some(Principal::Anonymous),
            Some(token) if bool::from(token.as_bytes().ct_eq(self.service_key.as_bytes())) => {
                Some(Principal::Service)
            }
            Some(_) => None,
        }
    }
}

/// Loads the service key, generating it on first start; returns it and where it is kept. A
/// node of a cluster also writes it to `<data_dir>/service_key` (owner-only), for its operator.
pub(crate) async fn load_or_create_service_key(
    secrets: &Secrets,
    data_dir: &Path,
) -> std::io::Result<(String, String)> {
    let key = secrets
        .get_or_create(SERVICE_KEY, || generate_secret("ebsk_").into_bytes())
        .await?;
    let key = String::from_utf8_lossy(key.trim_ascii()).into_owned();
    if secrets.is_shared() {
        write_private(&data_dir.join(SERVICE_KEY), key.as_bytes())?;
    }
    Ok((key, secrets.location(SERVICE_KEY)))
}

/// A random secret: a prefix that says what it is, then 32 random bytes in URL-safe base64.
pub(crate) fn generate_secret(prefix: &str) -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of a secret, in hex: how one-time secrets are stored and found.
pub(crate) fn sha256_hex(secret: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes a file only its owner can read, durably.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}
