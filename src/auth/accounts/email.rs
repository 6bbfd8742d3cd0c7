//! Flows by email: verification and password reset, with single-use tokens and throttled
//! mail.

use super::records::{
    check_email_length, from_json, normalize_email, sha256_hex, to_json, EmailTokenKind,
    EmailTokenRecord, User, UserRecord,
};
use super::{rate_limited, Accounts};
use crate::auth::error::{AuthError, Result};
use crate::auth::password::check_password;
use crate::auth::{generate_secret, Principal};
use crate::model::unix_secs;
use crate::store::{KvWrite, Space, StoreError};
use std::sync::Arc;

impl Accounts {
    pub(super) async fn issue_email_token(
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
    pub(super) async fn consume_email_token(
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
        if user.email.is_empty() {
            return Err(AuthError::BadRequest(
                "this account has no address to verify; an anonymous one can be upgraded".into(),
            ));
        }
        self.limit_mail(client_ip, &user.email).await?;
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
            .map_err(AuthError::from)
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
        self.limit_mail(client_ip, &email).await?;
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
    pub(super) async fn limit_mail(&self, client_ip: &str, email: &str) -> Result<()> {
        self.mail_ips
            .acquire(client_ip)
            .await
            .map_err(|wait| rate_limited(wait, "too many mails asked for from this address"))?;
        // Per account, whatever case the address is typed in.
        self.mail_addresses
            .acquire(&super::identity::email_key(email))
            .await
            .map_err(|wait| rate_limited(wait, "too many mails asked for to this email address"))
    }

    pub(super) async fn send_reset(&self, email: &str) -> Result<()> {
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
            .map_err(AuthError::from)
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
}
