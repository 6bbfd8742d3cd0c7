//! Accounts in and out of a server with their password hashes, so that people keep signing in
//! with the passwords they have: what `emberbase export` and `import` move, and where accounts
//! from other systems come in (a bcrypt hash, as PocketBase and many others keep, is accepted
//! and replaced by an argon2id one at the account's next sign-in).

use super::records::{normalize_email, to_json, UserRecord};
use super::Accounts;
use crate::auth::error::{invalid, Result};
use crate::auth::password::is_known_hash;
use crate::auth::{LinkedIdentity, Principal};
use crate::store::{KvWrite, Space};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The most accounts one import call takes.
const MAX_IMPORT: usize = 1000;

/// An account with everything needed to make it again elsewhere, its password hash included.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PortableUser {
    /// Kept on import, so that documents and files owned by the account stay its own.
    pub id: String,
    pub email: String,
    /// `user` or `admin`.
    #[serde(default = "user_role")]
    pub role: String,
    /// When absent on import: now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default)]
    pub email_verified: bool,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default, deserialize_with = "crate::model::json_object")]
    pub profile: Map<String, Value>,
    /// An argon2 PHC string (`$argon2id$...`) or a bcrypt hash (`$2a$`, `$2b$`, `$2y$`); empty
    /// for an account without a password (one that signs in by mailed code or a provider).
    #[serde(default)]
    pub password_hash: String,
    /// The TOTP factor as this server stores it (opaque), so two-factor sign-in survives a
    /// move between Emberbase servers.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::model::optional_json_object"
    )]
    #[schema(value_type = Option<Object>)]
    pub totp: Option<Map<String, Value>>,
    /// Provider identities linked to the account.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<LinkedIdentity>,
}

fn user_role() -> String {
    "user".into()
}

/// A page of exported accounts.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PortableUserPage {
    pub items: Vec<PortableUser>,
    /// Pass as `cursor` for the next page; absent at the end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// What an import did with each account.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ImportReport {
    /// Accounts made.
    pub imported: usize,
    /// Accounts left out, each with why (an id or address taken, a hash of an unknown kind).
    pub skipped: Vec<Skipped>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Skipped {
    pub id: String,
    pub email: String,
    pub reason: String,
}

impl Accounts {
    /// A page of accounts with their password hashes, in id order (admins only). Guest
    /// accounts, which expire, are left out.
    pub async fn export_users(
        &self,
        who: &Principal,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<PortableUserPage> {
        let (records, next_cursor) = self.user_records(who, limit, cursor).await?;
        let items = records
            .into_iter()
            .filter(|user| !user.is_anonymous())
            .map(|user| PortableUser {
                totp: user
                    .totp
                    .as_ref()
                    .and_then(|t| match serde_json::to_value(t) {
                        Ok(Value::Object(map)) => Some(map),
                        _ => None,
                    }),
                id: user.id,
                email: user.email,
                role: user.role,
                created_at: Some(user.created_at),
                email_verified: user.email_verified,
                disabled: user.disabled,
                profile: user.profile,
                password_hash: user.password_hash,
                identities: user.identities,
            })
            .collect();
        Ok(PortableUserPage { items, next_cursor })
    }

    /// Makes accounts as given (admins only), ids and password hashes kept. An account whose
    /// id, address or linked identity is taken, or whose data is not valid, is skipped with
    /// the reason; the others are made, each in a write of its own.
    pub async fn import_users(
        &self,
        who: &Principal,
        users: Vec<PortableUser>,
    ) -> Result<ImportReport> {
        Self::require_admin(who)?;
        if users.len() > MAX_IMPORT {
            return Err(invalid(
                format!("import at most {MAX_IMPORT} accounts at once"),
                "users",
            ));
        }
        let mut report = ImportReport::default();
        for user in users {
            let (id, email) = (user.id.clone(), user.email.clone());
            match self.import_user(user).await {
                Ok(()) => report.imported += 1,
                Err(reason) => report.skipped.push(Skipped { id, email, reason }),
            }
        }
        Ok(report)
    }

    /// One account; `Err` is why it was skipped (a storage failure is a reason too: the
    /// account is not made, and the others go on).
    async fn import_user(&self, user: PortableUser) -> std::result::Result<(), String> {
        let valid_id = (1..=64).contains(&user.id.len())
            && user
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid_id {
            return Err("the id must be 1 to 64 of A-Z, a-z, 0-9, _ and -".into());
        }
        let email = normalize_email(&user.email).map_err(|e| e.to_string())?;
        if !["user", "admin"].contains(&user.role.as_str()) {
            return Err(format!("unknown role {:?}: user or admin", user.role));
        }
        if !user.password_hash.is_empty() && !is_known_hash(&user.password_hash) {
            return Err("the password hash is neither argon2 nor bcrypt".into());
        }
        super::records::check_profile(&user.profile).map_err(|e| e.to_string())?;
        let totp = match user.totp {
            Some(map) => Some(
                serde_json::from_value(Value::Object(map))
                    .map_err(|e| format!("totp is not this server's TOTP record: {e}"))?,
            ),
            None => None,
        };
        let created_at = match user.created_at {
            Some(at) if crate::query::parse_time(&at).is_some() => at,
            Some(at) => return Err(format!("created_at {at:?} is not an RFC 3339 time")),
            None => crate::model::now_rfc3339(),
        };
        let record = UserRecord {
            id: user.id,
            email: email.clone(),
            role: user.role,
            created_at,
            email_verified: user.email_verified,
            password_hash: user.password_hash,
            token_version: 1,
            disabled: user.disabled,
            profile: user.profile,
            totp,
            anonymous_until: None,
            identities: user.identities,
        };
        let email_key = super::identity::email_key(&email);
        let mut write = KvWrite::default()
            .check(Space::Users, record.id.as_bytes(), None)
            .check(Space::Emails, email_key.as_bytes(), None)
            .put(Space::Emails, email_key.as_bytes(), record.id.as_bytes());
        for identity in &record.identities {
            let key = super::oauth::identity_key(&identity.provider, &identity.subject);
            write = write.check(Space::Identities, key.as_slice(), None).put(
                Space::Identities,
                key,
                record.id.as_bytes(),
            );
        }
        let bytes = to_json(&record).map_err(|e| e.to_string())?;
        write = write.put(Space::Users, record.id.as_bytes(), bytes);
        self.store.kv_write(write).await.map_err(|e| match e {
            crate::store::StoreError::CasFailed => {
                "an account with this id, address or linked identity exists".to_string()
            }
            e => e.to_string(),
        })
    }
}
