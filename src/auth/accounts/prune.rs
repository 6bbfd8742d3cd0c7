//! Removing account records that can no longer be used: logins (families) that ended, were
//! revoked or were cut off by a password change; refresh tokens of logins that are gone;
//! expired email tokens, MFA challenges, passwordless sign-ins and the records of sign-ins with a
//! provider; anonymous accounts nobody
//! refreshed in `auth.anonymous_ttl_secs` (what they own stays); mail beyond the newest `mail.outbox_kept`; and a cluster's shared
//! throttling windows once their events are old. Each record is deleted
//! only if it is unchanged since it was read (compare-and-set), so pruning never races a
//! refresh or a logout; what a race leaves is pruned next time.

use super::records::{from_json, EmailTokenRecord, FamilyRecord, RefreshRecord, UserRecord};
use super::Accounts;
use crate::auth::error::Result;
use crate::model::unix_secs;
use crate::store::{KvEntry, KvWrite, Space, StoreError};

/// Records read, and deleted in one write, per step.
const PAGE: usize = 512;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pruned {
    pub families: usize,
    pub refresh_tokens: usize,
    pub email_tokens: usize,
    pub mfa_challenges: usize,
    pub passwordless: usize,
    /// Sign-ins with a provider never finished, codes never exchanged, used ID tokens expired.
    pub oauth: usize,
    pub anonymous_users: usize,
    pub mails: usize,
    /// Shared throttling windows (a cluster's) whose events are all old.
    pub throttle_windows: usize,
}

impl Pruned {
    pub(crate) fn total(&self) -> usize {
        self.families
            + self.refresh_tokens
            + self.email_tokens
            + self.mfa_challenges
            + self.passwordless
            + self.oauth
            + self.anonymous_users
            + self.mails
            + self.throttle_windows
    }
}

impl Accounts {
    /// One pass over every space that grows with use.
    pub(crate) async fn prune(&self, outbox_kept: usize) -> Result<Pruned> {
        let now = unix_secs();
        let families = self.prune_space(Space::Families, now).await?;
        self.prune_space(Space::UserFamilies, now).await?;
        let refresh_tokens = self.prune_space(Space::RefreshTokens, now).await?;
        let email_tokens = self.prune_space(Space::EmailTokens, now).await?;
        let mfa_challenges = self.prune_space(Space::MfaChallenges, now).await?;
        let passwordless = self.prune_space(Space::Passwordless, now).await?;
        let mut oauth = 0;
        for space in [Space::OAuthStates, Space::OAuthCodes, Space::OAuthUsed] {
            oauth += self.prune_space(space, now).await?;
        }
        let anonymous_users = self.prune_space(Space::Users, now).await?;
        let mails = self.prune_outbox(outbox_kept).await?;
        let throttle_windows = self.prune_space(Space::Throttle, now).await?;
        Ok(Pruned {
            families,
            refresh_tokens,
            email_tokens,
            mfa_challenges,
            passwordless,
            oauth,
            anonymous_users,
            mails,
            throttle_windows,
        })
    }

    /// Whether a record of `space` has ended: a family revoked, expired or of a user whose
    /// tokens were revoked since; a refresh token of a family that is gone; an expired email
    /// token.
    async fn is_dead(&self, space: Space, bytes: &[u8], now: u64) -> bool {
        match space {
            Space::Families => {
                let Ok(family) = from_json::<FamilyRecord>(bytes) else {
                    return false;
                };
                let user_ok = self
                    .load_user(&family.user_id)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|(user, _)| user.token_version == family.token_version);
                family.revoked || family.expires_at <= now || !user_ok
            }
            // A user's index entry of a family that is gone.
            Space::UserFamilies => {
                matches!(self.store.kv_get(Space::Families, bytes).await, Ok(None))
            }
            Space::RefreshTokens => match from_json::<RefreshRecord>(bytes) {
                Ok(r) => matches!(
                    self.store
                        .kv_get(Space::Families, r.family.as_bytes())
                        .await,
                    Ok(None)
                ),
                Err(_) => false,
            },
            Space::EmailTokens => {
                from_json::<EmailTokenRecord>(bytes).is_ok_and(|t| t.expires_at <= now)
            }
            Space::MfaChallenges => super::mfa::expired(bytes, now),
            Space::Passwordless => super::passwordless::expired(bytes, now),
            Space::OAuthStates | Space::OAuthCodes | Space::OAuthUsed => {
                super::oauth::expired(bytes, now)
            }
            Space::Users => from_json::<super::records::UserRecord>(bytes)
                .is_ok_and(|u| super::guest::abandoned(&u, now)),
            // A shared throttling window whose newest event has left the longest window.
            Space::Throttle => {
                let longest = self.config.failure_window_secs.max(3600);
                crate::auth::throttle::newest_event(bytes)
                    .is_none_or(|newest| newest / 1000 + longest <= now)
            }
            _ => false,
        }
    }

    /// Deletes the records of `space` that have ended (see `is_dead`), page by page.
    async fn prune_space(&self, space: Space, now: u64) -> Result<usize> {
        let mut after: Option<Vec<u8>> = None;
        let mut removed = 0;
        loop {
            let page = self.store.kv_scan(space, after.as_deref(), PAGE).await?;
            let Some((last, _)) = page.last() else {
                return Ok(removed);
            };
            after = Some(last.clone());
            let mut doomed: Vec<KvEntry> = Vec::new();
            for (key, value) in page {
                if self.is_dead(space, &value, now).await {
                    doomed.push((key, value));
                }
            }
            removed += self.delete_unchanged(space, doomed).await?;
        }
    }

    /// Deletes all but the newest `kept` mails (their ids are ULIDs, so keys sort by age),
    /// except those still queued for SMTP: their delivery writes their record again when it
    /// ends, and would bring back one pruned meanwhile.
    async fn prune_outbox(&self, kept: usize) -> Result<usize> {
        let mut after: Option<Vec<u8>> = None;
        let mut total = 0;
        loop {
            let page = self
                .store
                .kv_scan(Space::Outbox, after.as_deref(), PAGE)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            total += page.len();
        }
        let mut excess = total.saturating_sub(kept);
        let mut after: Option<Vec<u8>> = None;
        let mut removed = 0;
        while excess > 0 {
            let oldest = self
                .store
                .kv_scan(Space::Outbox, after.as_deref(), excess.min(PAGE))
                .await?;
            let Some((last, _)) = oldest.last() else {
                break;
            };
            after = Some(last.clone());
            excess = excess.saturating_sub(oldest.len());
            let done = oldest
                .into_iter()
                .filter(|(_, bytes)| !crate::mail::is_queued(bytes))
                .collect();
            // One that changed since it was read is left for the next pass.
            removed += self.delete_unchanged(Space::Outbox, done).await?;
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
                // An expired guest leaves like any deleted account: its webhooks hear of it.
                let w = match (space, from_json::<UserRecord>(&bytes)) {
                    (Space::Users, Ok(user)) => w.event(user.event("delete")),
                    _ => w,
                };
                w.check(space, key.clone(), Some(bytes)).delete(space, key)
            });
        match self.store.kv_write(write).await {
            Ok(()) => Ok(n),
            Err(StoreError::CasFailed) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}
