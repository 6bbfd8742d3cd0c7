//! Removing account records that can no longer be used: logins (families) that ended, were
//! revoked or were cut off by a password change; refresh tokens of logins that are gone;
//! expired email tokens; and mail beyond the newest `mail.outbox_kept`. Each record is deleted
//! only if it is unchanged since it was read (compare-and-set), so pruning never races a
//! refresh or a logout; what a race leaves is pruned next time.

use super::{from_json, Accounts, EmailTokenRecord, FamilyRecord, RefreshRecord};
use crate::auth::tokens::now_secs;
use crate::error::Result;
use crate::store::{KvEntry, KvWrite, Space, StoreError};

/// Records read, and deleted in one write, per step.
const PAGE: usize = 512;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub families: usize,
    pub refresh_tokens: usize,
    pub email_tokens: usize,
    pub mails: usize,
}

impl Pruned {
    pub fn total(&self) -> usize {
        self.families + self.refresh_tokens + self.email_tokens + self.mails
    }
}

impl Accounts {
    /// One pass over every space that grows with use.
    pub async fn prune(&self, outbox_kept: usize) -> Result<Pruned> {
        let now = now_secs();
        let families = self
            .prune_space(Space::Families, |_, bytes| {
                let Ok(family) = from_json::<FamilyRecord>(bytes) else {
                    return false;
                };
                let user_ok = self
                    .load_user(&family.user_id)
                    .ok()
                    .flatten()
                    .is_some_and(|(user, _)| user.token_version == family.token_version);
                family.revoked || family.expires_at <= now || !user_ok
            })
            .await?;
        let refresh_tokens = self
            .prune_space(Space::RefreshTokens, |_, bytes| {
                from_json::<RefreshRecord>(bytes).is_ok_and(|r| {
                    matches!(
                        self.store.kv_get(Space::Families, r.family.as_bytes()),
                        Ok(None)
                    )
                })
            })
            .await?;
        let email_tokens = self
            .prune_space(Space::EmailTokens, |_, bytes| {
                from_json::<EmailTokenRecord>(bytes).is_ok_and(|t| t.expires_at <= now)
            })
            .await?;
        let mails = self.prune_outbox(outbox_kept).await?;
        Ok(Pruned {
            families,
            refresh_tokens,
            email_tokens,
            mails,
        })
    }

    /// Deletes the records of `space` that `dead` picks, page by page.
    async fn prune_space(
        &self,
        space: Space,
        dead: impl Fn(&[u8], &[u8]) -> bool,
    ) -> Result<usize> {
        let mut after: Option<Vec<u8>> = None;
        let mut removed = 0;
        loop {
            let page = self.store.kv_scan(space, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else {
                return Ok(removed);
            };
            after = Some(last.clone());
            let doomed: Vec<KvEntry> = page.into_iter().filter(|(k, v)| dead(k, v)).collect();
            removed += self.delete_unchanged(space, doomed).await?;
        }
    }

    /// Deletes all but the newest `kept` mails (their ids are ULIDs, so keys sort by age).
    async fn prune_outbox(&self, kept: usize) -> Result<usize> {
        let mut after: Option<Vec<u8>> = None;
        let mut total = 0;
        loop {
            let page = self.store.kv_scan(Space::Outbox, after.as_deref(), PAGE)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            total += page.len();
        }
        let mut excess = total.saturating_sub(kept);
        let mut removed = 0;
        while excess > 0 {
            let oldest = self.store.kv_scan(Space::Outbox, None, excess.min(PAGE))?;
            if oldest.is_empty() {
                break;
            }
            let n = self.delete_unchanged(Space::Outbox, oldest).await?;
            if n == 0 {
                break;
            }
            removed += n;
            excess = excess.saturating_sub(n);
        }
        Ok(removed)
    }

    /// Deletes `entries` in one write if none changed since it was read; 0 if one did.
    async fn delete_unchanged(&self, space: Space, entries: Vec<KvEntry>) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        let n = entries.len();
        let write = entries
            .into_iter()
            .fold(KvWrite::default(), |w, (key, bytes)| {
                w.check(space, key.clone(), Some(bytes)).delete(space, key)
            });
        match self.store.kv_write(write).await {
            Ok(()) => Ok(n),
            Err(StoreError::CasFailed) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
