//! The stored records of accounts (users, refresh tokens, login families, one-time email
//! tokens), what the API shows of them, and the checks on an email address.

use super::oauth::LinkedIdentity;
use crate::auth::error::{internal, invalid, AuthError, Result};
use crate::error::StorageError;
use crate::model::AccountEvent;
use crate::store::{KvWrite, Space};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most a user's profile may take, as JSON.
pub(super) const MAX_PROFILE_BYTES: usize = 4096;

/// A user as the API shows it. Never a hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    /// Null for an anonymous account, and for one made by a sign-in with a provider that did
    /// not vouch for its address.
    pub email: Option<String>,
    /// An account without an address, from `POST /v1/auth/anonymous`, until it is upgraded.
    #[serde(default)]
    pub anonymous: bool,
    /// `user` or `admin`.
    pub role: String,
    pub created_at: String,
    pub email_verified: bool,
    /// Disabled users cannot sign in, and their tokens stop working.
    pub disabled: bool,
    /// Whether signing in also takes a code from an authenticator app (TOTP).
    #[serde(default)]
    pub mfa_enabled: bool,
    /// What the app keeps about the user (a display name, an avatar URL...): any JSON object
    /// of at most 4 KiB, set at signup and with `PATCH /v1/auth/me`. Rules read it as
    /// `auth.profile`.
    #[schema(value_type = HashMap<String, serde_json::Value>, example = json!({"name": "Ada"}))]
    pub profile: Map<String, Value>,
    /// Sign-in providers linked to the account.
    #[serde(default)]
    pub identities: Vec<LinkedIdentity>,
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
pub(super) struct UserRecord {
    pub(super) id: String,
    pub(super) email: String,
    pub(super) role: String,
    pub(super) created_at: String,
    pub(super) email_verified: bool,
    pub(super) password_hash: String,
    pub(super) token_version: u64,
    pub(super) disabled: bool,
    #[serde(default)]
    pub(super) profile: Map<String, Value>,
    /// The TOTP factor, pending or confirmed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) totp: Option<super::mfa::TotpRecord>,
    /// For an anonymous account: when it is deleted unless refreshed (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) anonymous_until: Option<u64>,
    /// Provider identities linked to the account (each also in `Space::Identities`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) identities: Vec<LinkedIdentity>,
}

impl UserRecord {
    pub(super) fn public(&self) -> User {
        User {
            id: self.id.clone(),
            email: (!self.email.is_empty()).then(|| self.email.clone()),
            anonymous: self.is_anonymous(),
            role: self.role.clone(),
            created_at: self.created_at.clone(),
            email_verified: self.email_verified,
            disabled: self.disabled,
            mfa_enabled: self
                .totp
                .as_ref()
                .is_some_and(super::mfa::TotpRecord::confirmed),
            profile: self.profile.clone(),
            identities: self.identities.clone(),
        }
    }

    /// An account event about this user, for the webhooks that deliver them.
    pub(super) fn event(&self, kind: &'static str) -> AccountEvent {
        AccountEvent {
            kind,
            user: serde_json::to_value(self.public()).unwrap_or(Value::Null),
            time: crate::model::now_rfc3339(),
            trace: crate::trace::current(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct RefreshRecord {
    pub(super) user_id: String,
    pub(super) family: String,
    pub(super) used: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FamilyRecord {
    pub(super) user_id: String,
    pub(super) token_version: u64,
    /// Unix seconds: the absolute end of the login.
    pub(super) expires_at: u64,
    pub(super) revoked: bool,
    /// Unix seconds: when the login began (0 for logins recorded before this was).
    #[serde(default)]
    pub(super) created_at: u64,
    /// Unix seconds: the login's last refresh, or its beginning (0 when unknown).
    #[serde(default)]
    pub(super) last_used_at: u64,
    /// The `User-Agent` of the request that signed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) user_agent: Option<String>,
    /// The address of the client that signed in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) ip: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum EmailTokenKind {
    Verify,
    Reset,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct EmailTokenRecord {
    pub(super) kind: EmailTokenKind,
    pub(super) user_id: String,
    pub(super) expires_at: u64,
}

/// An account an admin creates (`POST /v1/admin/users`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub email: String,
    /// Checked against the password policy, as at signup.
    pub password: String,
    /// `user` (the default) or `admin`.
    #[serde(default = "default_role")]
    pub role: String,
    /// What the app keeps about the user, at most 4 KiB as JSON.
    #[serde(default, deserialize_with = "crate::model::json_object")]
    #[schema(value_type = Object)]
    pub profile: Map<String, Value>,
    /// Whether the address counts as verified (default false: the user verifies it by mail).
    #[serde(default)]
    pub email_verified: bool,
}

fn default_role() -> String {
    "user".into()
}

/// A page of users.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    pub items: Vec<User>,
    pub next_cursor: Option<String>,
}

pub(super) use crate::auth::sha256_hex;

pub(super) fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(internal)
}

pub(super) fn from_json<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes)
        .map_err(|e| AuthError::Storage(StorageError::Corrupt(e.to_string())))
}

/// A new user record, and the write that creates it if (and only if) its email is still free.
pub(super) fn new_user(
    email: &str,
    role: &str,
    password_hash: String,
    email_verified: bool,
    profile: Map<String, Value>,
) -> Result<(UserRecord, KvWrite)> {
    check_profile(&profile)?;
    let user = UserRecord {
        id: ulid::Ulid::new().to_string(),
        email: email.to_string(),
        role: role.to_string(),
        created_at: crate::model::now_rfc3339(),
        email_verified,
        password_hash,
        token_version: 1,
        disabled: false,
        profile,
        totp: None,
        anonymous_until: None,
        identities: Vec::new(),
    };
    let key = super::identity::email_key(email);
    let write = KvWrite::default()
        .check(Space::Emails, key.as_bytes(), None)
        .put(Space::Emails, key.as_bytes(), user.id.as_bytes())
        .put(Space::Users, user.id.as_bytes(), to_json(&user)?)
        .event(user.event("signup"));
    Ok((user, write))
}

/// Refuses a profile over [`MAX_PROFILE_BYTES`].
pub(super) fn check_profile(profile: &Map<String, Value>) -> Result<()> {
    let size = serde_json::to_vec(profile).map_or(usize::MAX, |v| v.len());
    if size > MAX_PROFILE_BYTES {
        return Err(invalid(
            format!("the profile is {size} bytes as JSON, over the limit of {MAX_PROFILE_BYTES}"),
            "profile",
        ));
    }
    Ok(())
}

/// Trims an email and lower-cases its domain (the address as stored and shown); refuses what
/// cannot be an address. Accounts are found by the whole address in lower case
/// (`identity::email_key`).
pub(super) fn normalize_email(raw: &str) -> Result<String> {
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

/// The longest email address (RFC 5321), checked before anything else is done with one.
pub(super) const MAX_EMAIL_BYTES: usize = 254;

pub(super) fn check_email_length(raw: &str) -> Result<()> {
    if raw.len() > MAX_EMAIL_BYTES {
        return Err(invalid(
            format!("an email address is at most {MAX_EMAIL_BYTES} bytes"),
            "email",
        ));
    }
    Ok(())
}
