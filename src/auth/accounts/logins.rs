//! A user's logins ("sessions"): each refresh-token family, listed from a per-user index with
//! when and where it began and when it was last refreshed, and revoked one by one. The index
//! (`Space::UserFamilies`) is written with each family; an entry whose family is gone is
//! skipped and pruned later. Families from before the index existed are indexed once at start.

use super::records::{from_json, FamilyRecord, UserRecord};
use super::Accounts;
use crate::auth::error::{AuthError, Result};
use crate::auth::Principal;
use crate::model::{unix_rfc3339 as rfc3339, unix_secs};
use crate::store::{KvWrite, Space, StoreError};
use serde::Serialize;

/// The most logins listed for one user, newest first.
const MAX_LISTED: usize = 1000;
/// The `Space::AccountsMeta` key recorded once every family is in the per-user index.
const INDEXED: &[u8] = b"families-indexed";

/// One live login of a user: a refresh-token family.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionInfo {
    /// The login's id (its refresh-token family).
    pub id: String,
    /// When it began (RFC 3339); absent for logins from before this was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// When its refresh token was last used, or when it began.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<String>,
    /// When it ends, however often it is refreshed.
    pub expires_at: String,
    /// The `User-Agent` of the request that signed in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The client address that signed in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A user's live logins, newest first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionList {
    pub items: Vec<SessionInfo>,
}

/// The index key of a user's family.
pub(super) fn index_key(user_id: &str, family_id: &str) -> Vec<u8> {
    let mut key = index_prefix(user_id);
    key.extend_from_slice(family_id.as_bytes());
    key
}

fn index_prefix(user_id: &str) -> Vec<u8> {
    let mut key = user_id.as_bytes().to_vec();
    key.push(0);
    key
}

fn time(secs: u64) -> Option<String> {
    (secs > 0).then(|| rfc3339(secs))
}

impl Accounts {
    /// A user's live logins, newest first (at most 1000). Admins may list anyone's; a user
    /// their own.
    pub async fn list_sessions(&self, who: &Principal, user_id: &str) -> Result<SessionList> {
        let user = self.session_owner(who, user_id).await?;
        let items = self
            .live_families(&user)
            .await?
            .into_iter()
            .map(|(id, family)| SessionInfo {
                id,
                created_at: time(family.created_at),
                last_used_at: time(family.last_used_at),
                expires_at: rfc3339(family.expires_at),
                user_agent: family.user_agent,
                ip: family.ip,
            })
            .collect();
        Ok(SessionList { items })
    }

    /// Ends one login of a user: its refresh token stops working (access tokens already issued
    /// run out within their short lifetime). Admins may end anyone's; a user their own.
    pub async fn revoke_session(&self, who: &Principal, user_id: &str, id: &str) -> Result<()> {
        let user = self.session_owner(who, user_id).await?;
        let live = match self.store.kv_get(Space::Families, id.as_bytes()).await? {
            Some(bytes) => is_live(&from_json::<FamilyRecord>(&bytes)?, &user),
            None => false,
        };
        if !live {
            return Err(AuthError::SessionNotFound(id.into()));
        }
        self.revoke_family(id).await
    }

    /// Ends every login of a user at once, and every access token issued to them (admins, or
    /// the user themselves).
    pub async fn revoke_sessions(&self, who: &Principal, user_id: &str) -> Result<()> {
        self.session_owner(who, user_id).await?;
        self.update_user(user_id, |u| u.token_version += 1).await?;
        Ok(())
    }

    /// The user whose logins `who` may see and end: any, for an admin; only their own, for a
    /// user.
    async fn session_owner(&self, who: &Principal, user_id: &str) -> Result<UserRecord> {
        let own = matches!(who, Principal::User { id, .. } if id == user_id);
        if !own {
            Self::require_admin(who)?;
        }
        self.load_user(user_id)
            .await?
            .map(|(user, _)| user)
            .ok_or_else(|| AuthError::UserNotFound(user_id.into()))
    }

    /// The user's families that still sign in, newest first, with their ids.
    async fn live_families(&self, user: &UserRecord) -> Result<Vec<(String, FamilyRecord)>> {
        let rows = self
            .store
            .kv_prefix_last(Space::UserFamilies, &index_prefix(&user.id), MAX_LISTED)
            .await?;
        let mut live = Vec::new();
        for (_, family_id) in rows {
            let Some(bytes) = self.store.kv_get(Space::Families, &family_id).await? else {
                continue;
            };
            let family: FamilyRecord = from_json(&bytes)?;
            if is_live(&family, user) {
                live.push((String::from_utf8_lossy(&family_id).into_owned(), family));
            }
        }
        Ok(live)
    }

    /// Indexes by user every family written before the index existed, once per data
    /// directory; a no-op afterwards.
    pub(crate) async fn index_families(&self) -> Result<()> {
        if self
            .store
            .kv_get(Space::AccountsMeta, INDEXED)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let mut after: Option<Vec<u8>> = None;
        let mut indexed = 0usize;
        loop {
            let rows = self
                .store
                .kv_scan(Space::Families, after.as_deref(), 1024)
                .await?;
            let Some((last, _)) = rows.last() else { break };
            after = Some(last.clone());
            let mut write = KvWrite::default();
            for (family_id, bytes) in rows {
                let family: FamilyRecord = from_json(&bytes)?;
                let family_id = String::from_utf8_lossy(&family_id).into_owned();
                write = write.put(
                    Space::UserFamilies,
                    index_key(&family.user_id, &family_id),
                    family_id.into_bytes(),
                );
                indexed += 1;
            }
            self.store.kv_write(write).await?;
        }
        let write = KvWrite::default().put(Space::AccountsMeta, INDEXED, b"1".to_vec());
        match self.store.kv_write(write).await {
            // Another node of the cluster finished it meanwhile.
            Ok(()) | Err(StoreError::CasFailed) => {}
            Err(e) => return Err(e.into()),
        }
        if indexed > 0 {
            tracing::info!(indexed, "logins are now listed per user (sessions)");
        }
        Ok(())
    }
}

/// Whether a family still signs its user in.
fn is_live(family: &FamilyRecord, user: &UserRecord) -> bool {
    family.user_id == user.id
        && !family.revoked
        && family.expires_at > unix_secs()
        && family.token_version == user.token_version
        && !user.disabled
}
