//! Passwordless sign-in by email: one mail carries a 6-digit code and a link (a token), either
//! of which signs in once, within `auth.passwordless_ttl_secs`.
//!
//! A request answers the same whether or not the address has an account, and in the same time:
//! only the throttles (per address and per client, shared with the other mails) run on the
//! request path; the lookup, the record and the mail happen in the background. The record is
//! kept per address (`Space::Passwordless`, by the lower-case address): a new request replaces
//! it, so only the latest mail works. The code and the link's secret are stored as SHA-256
//! hashes; five wrong codes void the record, and wrong codes count as failed logins. Proving
//! the address verifies it; an unknown address gets an account (unless
//! `auth.passwordless_signup` is off), without a password until one is set by a reset.

use super::identity::email_key;
use super::mfa::LoginResult;
use super::records::{
    check_email_length, from_json, new_user, normalize_email, sha256_hex, to_json,
};
use super::Accounts;
use crate::auth::error::{invalid, AuthError, Result};
use crate::auth::{generate_secret, Principal};
use crate::model::unix_secs;
use crate::store::{KvWrite, Space, StoreError};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// Wrong codes a request takes before it is void.
const MAX_WRONG: u32 = super::mfa::MAX_WRONG;

/// The pending sign-in of one address.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct PasswordlessRecord {
    /// The address as typed, for an account made on success.
    email: String,
    code_sha256: String,
    link_sha256: String,
    expires_at: u64,
    wrong: u32,
}

/// What proves the address: the code from the mail (with the address), or the link's token.
#[derive(Debug, Clone)]
pub enum PasswordlessProof {
    Code { email: String, code: String },
    Link { token: String },
}

/// Whether a stored sign-in has expired (for pruning).
pub(super) fn expired(bytes: &[u8], now: u64) -> bool {
    from_json::<PasswordlessRecord>(bytes).is_ok_and(|r| r.expires_at <= now)
}

fn void() -> AuthError {
    AuthError::Unauthenticated("invalid, expired or used code or link".into())
}

fn equal(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The link token of an address: its lower-case form (to find the record) and a secret.
fn link_token(key: &str) -> (String, String) {
    let secret = generate_secret("");
    let address = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key);
    (format!("eblink_{address}.{secret}"), secret)
}

/// The lower-case address and the secret of a link token.
fn read_link(token: &str) -> Option<(String, String)> {
    let (address, secret) = token.strip_prefix("eblink_")?.split_once('.')?;
    let address = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(address)
        .ok()?;
    Some((String::from_utf8(address).ok()?, secret.to_string()))
}

impl Accounts {
    /// Mails a sign-in code and link to `email`, if it may sign in; answers the same either
    /// way. `redirect_url` (allow-listed in `auth.redirect_urls`) is where the link goes, with
    /// `?token=` added; without it the mail says how to use the token.
    pub async fn request_passwordless(
        self: &Arc<Self>,
        email: &str,
        redirect_url: Option<&str>,
        client_ip: &str,
    ) -> Result<()> {
        check_email_length(email)?;
        let email = normalize_email(email)?;
        let allowed = |u: &str| crate::auth::oauth::redirect_allowed(&self.config.redirect_urls, u);
        if let Some(url) = redirect_url.filter(|u| !allowed(u)) {
            return Err(invalid(
                format!("redirect_url {url:?} is not in auth.redirect_urls"),
                "redirect_url",
            ));
        }
        self.limit_mail(client_ip, &email).await?;
        let Ok(permit) = self.mail_jobs.clone().try_acquire_owned() else {
            tracing::warn!("too many sign-in mails in progress; one was dropped");
            return Ok(());
        };
        let this = self.clone();
        let redirect = redirect_url.map(str::to_owned);
        tokio::spawn(async move {
            if let Err(e) = this.send_passwordless(&email, redirect.as_deref()).await {
                tracing::error!(error = %e, "cannot send a sign-in mail");
            }
            drop(permit);
        });
        Ok(())
    }

    async fn send_passwordless(&self, email: &str, redirect: Option<&str>) -> Result<()> {
        let user = self.user_by_email(email).await?.map(|(u, _)| u);
        match &user {
            Some(u) if u.disabled => return Ok(()),
            None if !self.config.passwordless_signup => return Ok(()),
            _ => {}
        }
        // Mail goes to the account's own address, as stored.
        let to = user.map_or_else(|| email.to_string(), |u| u.email);
        let key = email_key(&to);
        let code = format!(
            "{:06}",
            rand::Rng::gen_range(&mut rand::rngs::OsRng, 0..1_000_000)
        );
        let (token, secret) = link_token(&key);
        let ttl = self.config.passwordless_ttl_secs;
        let record = PasswordlessRecord {
            email: to.clone(),
            code_sha256: sha256_hex(&code),
            link_sha256: sha256_hex(&secret),
            expires_at: unix_secs() + ttl,
            wrong: 0,
        };
        self.store
            .kv_write(KvWrite::default().put(
                Space::Passwordless,
                key.as_bytes(),
                to_json(&record)?,
            ))
            .await?;
        let link = match redirect {
            Some(url) => {
                let joiner = if url.contains('?') { '&' } else { '?' };
                format!("Or open this link: {url}{joiner}token={token}")
            }
            None => format!(
                "Or use this token: {token}\n(POST {}/v1/auth/passwordless/verify with {{\"token\": \"{token}\"}})",
                self.config.public_url.trim_end_matches('/')
            ),
        };
        let body = format!(
            "Your sign-in code for {to} is {code}\n\n{link}\n\nIt works once, for {} minutes. If you did not ask for it, ignore this message.\n",
            ttl.div_ceil(60)
        );
        self.mailer
            .send(&to, "Your sign-in code", body)
            .await
            .map_err(AuthError::from)
    }

    /// Signs in with the code (and its address) or the link token from a sign-in mail: the
    /// session, or, with TOTP on, its challenge. An unknown address becomes the account of
    /// `who` when it is an anonymous account (an upgrade: same id), else a new account.
    pub async fn verify_passwordless(
        &self,
        who: &Principal,
        proof: &PasswordlessProof,
        client_ip: &str,
    ) -> Result<LoginResult> {
        let key = match proof {
            PasswordlessProof::Code { email, .. } => {
                check_email_length(email)?;
                email_key(&normalize_email(email).map_err(|_| void())?)
            }
            PasswordlessProof::Link { token } => read_link(token).ok_or_else(void)?.0,
        };
        self.attempt(&key, Some(client_ip)).await?;
        let Some(bytes) = self
            .store
            .kv_get(Space::Passwordless, key.as_bytes())
            .await?
        else {
            return Err(void());
        };
        let record: PasswordlessRecord = from_json(&bytes)?;
        if record.expires_at <= unix_secs() {
            return Err(void());
        }
        let proved = match proof {
            PasswordlessProof::Code { code, .. } => {
                equal(&sha256_hex(code.trim()), &record.code_sha256)
            }
            PasswordlessProof::Link { token } => read_link(token)
                .is_some_and(|(_, secret)| equal(&sha256_hex(&secret), &record.link_sha256)),
        };
        let write = KvWrite::default().check(Space::Passwordless, key.as_bytes(), Some(bytes));
        if !proved {
            let mut counted = record;
            counted.wrong += 1;
            let write = if counted.wrong >= MAX_WRONG {
                write.delete(Space::Passwordless, key.as_bytes())
            } else {
                write.put(Space::Passwordless, key.as_bytes(), to_json(&counted)?)
            };
            match self.store.kv_write(write).await {
                Ok(()) | Err(StoreError::CasFailed) => {}
                Err(e) => return Err(e.into()),
            }
            return Err(void());
        }
        // Spent first: whatever happens next, the code and link work once.
        match self
            .store
            .kv_write(write.delete(Space::Passwordless, key.as_bytes()))
            .await
        {
            Ok(()) => {}
            Err(StoreError::CasFailed) => return Err(void()),
            Err(e) => return Err(e.into()),
        }
        self.account_failures.clear(&key).await;
        self.ip_failures.release(client_ip).await;
        let known = self.user_by_email(&record.email).await?.is_some();
        let upgrading = match known {
            true => None,
            false => self.anonymous_caller(who).await?,
        };
        let user = match (known, upgrading) {
            (true, _) => self.verified_by_mail(&record.email).await?,
            (false, Some(id)) => {
                self.attach_email(&id, &record.email, None, true).await?;
                self.load_user(&id).await?.ok_or_else(void)?.0
            }
            (false, None) => {
                let (user, write) = new_user(
                    &record.email,
                    "user",
                    String::new(),
                    true,
                    Default::default(),
                )?;
                match self.store.kv_write(write).await {
                    Ok(()) => user,
                    // Someone signed up with the address meanwhile: that account it is.
                    Err(StoreError::CasFailed) => self.verified_by_mail(&record.email).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        self.finish_login(&user).await
    }

    /// The account of `email`, marked verified: receiving the mail proved the address.
    async fn verified_by_mail(&self, email: &str) -> Result<super::records::UserRecord> {
        let (user, _) = self.user_by_email(email).await?.ok_or_else(void)?;
        if user.email_verified {
            return Ok(user);
        }
        self.update_user(&user.id, |u| u.email_verified = true)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_token_names_its_address_and_nothing_else_reads_as_one() {
        let (token, secret) = link_token("ada@example.com");
        assert_eq!(
            read_link(&token),
            Some(("ada@example.com".to_string(), secret))
        );
        for bad in [
            "",
            "eblink_",
            "eblink_nodot",
            "ebet_abc.def",
            "eblink_!!!.x",
        ] {
            assert_eq!(read_link(bad), None, "{bad}");
        }
    }
}
