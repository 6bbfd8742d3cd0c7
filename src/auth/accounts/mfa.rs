//! TOTP multi-factor authentication (RFC 6238: SHA-1, 6 digits, 30-second steps, what
//! authenticator apps expect).
//!
//! A user enrolls (a new secret, its `otpauth://` URI and a QR code), then confirms with a
//! first code, which turns it on and hands out ten recovery codes, shown once and stored as
//! SHA-256 hashes. From then on a right password (or, later, an OAuth sign-in) answers with an
//! MFA challenge instead of tokens: a short-lived, single-use token that a code (or a recovery
//! code) exchanges for the session. A code is accepted for the step before, the current and the
//! next (clock drift), and never twice: the last accepted step is stored and a code of the
//! same or an earlier step is refused. Each challenge and each pending enrollment takes at most
//! five wrong codes, then is void; wrong codes also count against the account's failed-login
//! window.

use super::records::{from_json, sha256_hex, to_json, Session, UserRecord};
use super::Accounts;
use crate::auth::error::{AuthError, Result};
use crate::auth::{generate_secret, Principal};
use crate::model::unix_secs;
use crate::store::{KvWrite, Space, StoreError};
use serde::{Deserialize, Serialize};
use totp_rs::{Algorithm, TOTP};

const DIGITS: usize = 6;
const STEP_SECS: u64 = 30;
/// Wrong codes a challenge or a pending enrollment takes before it is void.
pub(super) const MAX_WRONG: u32 = 5;
/// How long a challenge may be answered.
const CHALLENGE_SECS: u64 = 300;
const RECOVERY_CODES: usize = 10;

/// A user's TOTP factor, in the user record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct TotpRecord {
    /// The shared secret, base32 (RFC 4648, no padding).
    secret: String,
    /// Whether a first code confirmed it (only then does login ask for codes).
    confirmed: bool,
    /// The last step a code was accepted for; codes of it or earlier are refused.
    #[serde(default)]
    last_step: u64,
    /// Wrong codes while pending confirmation.
    #[serde(default)]
    wrong: u32,
    /// SHA-256 of each unused recovery code.
    #[serde(default)]
    recovery: Vec<String>,
}

impl TotpRecord {
    pub(super) fn confirmed(&self) -> bool {
        self.confirmed
    }
}

/// A pending second step of a login, stored under the SHA-256 of its token.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChallengeRecord {
    user_id: String,
    token_version: u64,
    expires_at: u64,
    wrong: u32,
}

/// What enrolling returns: the secret in the forms an authenticator app takes.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TotpEnrollment {
    /// The secret, base32, for typing into an app.
    pub secret: String,
    /// `otpauth://totp/...`, for a link or a QR code.
    pub otpauth_uri: String,
    /// The URI as a QR code, an SVG document.
    pub qr_svg: String,
}

/// What confirming returns: the recovery codes, shown this once.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Each signs in once in place of a code.
    pub recovery_codes: Vec<String>,
}

/// What a right password answers when the account has MFA on: no tokens yet.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MfaChallenge {
    /// Always true.
    pub mfa_required: bool,
    /// For `POST /v1/auth/mfa/verify`, with a code; valid for five minutes, once.
    pub mfa_token: String,
    /// What can answer it: `totp`, `recovery_code`.
    pub methods: Vec<String>,
}

/// What a login answers: the session, or, with MFA on, the challenge to answer first.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum LoginResult {
    Session(Session),
    Mfa(MfaChallenge),
}

/// What answering a challenge takes: a code from the app, or a recovery code.
#[derive(Debug, Clone, Default)]
pub struct MfaAnswer {
    pub code: Option<String>,
    pub recovery_code: Option<String>,
}

/// Whether a stored challenge has expired (for pruning).
pub(super) fn expired(bytes: &[u8], now: u64) -> bool {
    from_json::<ChallengeRecord>(bytes).is_ok_and(|c| c.expires_at <= now)
}

fn totp(secret: &[u8], account: &str, issuer: &str) -> Result<TOTP> {
    TOTP::new(
        Algorithm::SHA1,
        DIGITS,
        1,
        STEP_SECS,
        secret.to_vec(),
        Some(issuer.to_string()),
        account.to_string(),
    )
    .map_err(|e| AuthError::BadRequest(format!("cannot make a TOTP: {e:?}")))
}

fn secret_bytes(record: &TotpRecord) -> Result<Vec<u8>> {
    totp_rs::Secret::Encoded(record.secret.clone())
        .to_bytes()
        .map_err(|e| {
            AuthError::Storage(crate::error::StorageError::Corrupt(format!(
                "a TOTP secret: {e:?}"
            )))
        })
}

/// The code of `step` for `secret`, with `digits` digits (RFC 6238 with SHA-1).
pub(super) fn code_at(secret: &[u8], step: u64, digits: usize) -> String {
    TOTP::new_unchecked(
        Algorithm::SHA1,
        digits,
        0,
        STEP_SECS,
        secret.to_vec(),
        None,
        String::new(),
    )
    .generate(step * STEP_SECS)
}

/// The step `code` is right for, among the one before `now`'s, `now`'s and the next, if it is
/// later than `after` (a code is used once).
fn accepted_step(secret: &[u8], code: &str, now: u64, after: u64) -> Option<u64> {
    use subtle::ConstantTimeEq;
    let current = now / STEP_SECS;
    let code = code.trim();
    [current.saturating_sub(1), current, current + 1]
        .into_iter()
        .filter(|step| *step > after)
        .find(|step| {
            let expected = code_at(secret, *step, DIGITS);
            expected.len() == code.len() && bool::from(expected.as_bytes().ct_eq(code.as_bytes()))
        })
}

fn qr_svg(uri: &str) -> Result<String> {
    let code = qrcode::QrCode::new(uri.as_bytes())
        .map_err(|e| AuthError::BadRequest(format!("cannot make a QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}

fn wrong_code() -> AuthError {
    AuthError::Unauthenticated("wrong or already used code".into())
}

impl Accounts {
    fn signed_in(who: &Principal) -> Result<&str> {
        match who {
            Principal::User { id, .. } => Ok(id),
            Principal::Anonymous => Err(AuthError::Unauthenticated("sign in first".into())),
            _ => Err(AuthError::BadRequest(
                "the service key is not a user".into(),
            )),
        }
    }

    /// Starts enrolling the signed-in user in TOTP: a new secret, pending until confirmed.
    /// Enrolling again before confirming replaces the pending secret.
    pub async fn enroll_totp(&self, who: &Principal) -> Result<TotpEnrollment> {
        let id = Self::signed_in(who)?;
        let secret: [u8; 20] = rand::random();
        let encoded = match totp_rs::Secret::Raw(secret.to_vec()).to_encoded() {
            totp_rs::Secret::Encoded(s) => s,
            totp_rs::Secret::Raw(_) => return Err(AuthError::BadRequest("no secret".into())),
        };
        let user = self
            .try_update_user(id, |u| {
                if u.totp.as_ref().is_some_and(TotpRecord::confirmed) {
                    return Err(AuthError::Conflict(
                        "TOTP is already on; turn it off first".into(),
                    ));
                }
                u.totp = Some(TotpRecord {
                    secret: encoded.clone(),
                    confirmed: false,
                    last_step: 0,
                    wrong: 0,
                    recovery: Vec::new(),
                });
                Ok(())
            })
            .await?;
        let otp = totp(&secret, &user.email, &self.config.issuer)?;
        let otpauth_uri = otp.get_url();
        Ok(TotpEnrollment {
            secret: encoded,
            qr_svg: qr_svg(&otpauth_uri)?,
            otpauth_uri,
        })
    }

    /// Confirms a pending enrollment with a first code: TOTP is on from now, and the recovery
    /// codes are returned, this once.
    pub async fn confirm_totp(&self, who: &Principal, code: &str) -> Result<RecoveryCodes> {
        let id = Self::signed_in(who)?;
        let codes: Vec<String> = (0..RECOVERY_CODES)
            .map(|_| {
                let n: u64 = rand::random::<u64>() % 10_000_000_000;
                format!("{:05}-{:05}", n / 100_000, n % 100_000)
            })
            .collect();
        let hashes: Vec<String> = codes.iter().map(|c| sha256_hex(c)).collect();
        let updated = self
            .try_update_user(id, |u| {
                let Some(totp) = u.totp.as_mut().filter(|t| !t.confirmed) else {
                    return Err(AuthError::BadRequest(
                        "no TOTP enrollment is pending; enroll first".into(),
                    ));
                };
                let secret = secret_bytes(totp)?;
                match accepted_step(&secret, code, unix_secs(), 0) {
                    Some(step) => {
                        totp.confirmed = true;
                        totp.last_step = step;
                        totp.recovery = hashes.clone();
                    }
                    None => {
                        totp.wrong += 1;
                        if totp.wrong >= MAX_WRONG {
                            u.totp = None;
                        }
                    }
                }
                Ok(())
            })
            .await?;
        if !updated.totp.as_ref().is_some_and(TotpRecord::confirmed) {
            return Err(wrong_code());
        }
        Ok(RecoveryCodes {
            recovery_codes: codes,
        })
    }

    /// Turns TOTP off for the signed-in user, who proves it with a current code (or a
    /// recovery code).
    pub async fn disable_totp(&self, who: &Principal, answer: &MfaAnswer) -> Result<()> {
        let id = Self::signed_in(who)?;
        let (user, _) = self
            .load_user(id)
            .await?
            .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into()))?;
        if !user.totp.as_ref().is_some_and(TotpRecord::confirmed) {
            return Err(AuthError::BadRequest("TOTP is not on".into()));
        }
        self.account_attempt(&user).await?;
        let updated = self
            .try_update_user(id, |u| {
                if let Some(totp) = u.totp.as_mut() {
                    if spend(totp, answer)? {
                        u.totp = None;
                    }
                }
                Ok(())
            })
            .await?;
        self.settle_attempt(&user, updated.totp.is_none()).await
    }

    /// Turns a user's TOTP off (admins only), for a user who lost their device and codes.
    pub async fn reset_mfa(&self, who: &Principal, id: &str) -> Result<super::User> {
        Self::require_admin(who)?;
        Ok(self.update_user(id, |u| u.totp = None).await?.public())
    }

    /// The challenge a right password meets when the user has TOTP on.
    pub(super) async fn challenge(&self, user: &UserRecord) -> Result<MfaChallenge> {
        let token = generate_secret("ebmfa_");
        let record = ChallengeRecord {
            user_id: user.id.clone(),
            token_version: user.token_version,
            expires_at: unix_secs() + CHALLENGE_SECS,
            wrong: 0,
        };
        let write = KvWrite::default().put(
            Space::MfaChallenges,
            sha256_hex(&token).as_bytes(),
            to_json(&record)?,
        );
        self.store.kv_write(write).await?;
        Ok(MfaChallenge {
            mfa_required: true,
            mfa_token: token,
            methods: vec!["totp".into(), "recovery_code".into()],
        })
    }

    /// Answers a login's MFA challenge: a right code (or recovery code) ends it with the
    /// session; a wrong one counts, and the fifth voids the challenge.
    pub async fn verify_mfa(&self, mfa_token: &str, answer: &MfaAnswer) -> Result<Session> {
        let void = || AuthError::Unauthenticated("invalid, expired or used MFA token".into());
        let key = sha256_hex(mfa_token);
        let Some(bytes) = self
            .store
            .kv_get(Space::MfaChallenges, key.as_bytes())
            .await?
        else {
            return Err(void());
        };
        let challenge: ChallengeRecord = from_json(&bytes)?;
        if challenge.expires_at <= unix_secs() {
            return Err(void());
        }
        let Some((user, user_bytes)) = self.load_user(&challenge.user_id).await? else {
            return Err(void());
        };
        if user.disabled || user.token_version != challenge.token_version {
            return Err(void());
        }
        self.account_attempt(&user).await?;
        let mut updated = user.clone();
        let proved = match updated.totp.as_mut() {
            Some(totp) if totp.confirmed => spend(totp, answer)?,
            _ => return Err(void()),
        };
        let write = KvWrite::default().check(Space::MfaChallenges, key.as_bytes(), Some(bytes));
        if !proved {
            let mut counted = challenge.clone();
            counted.wrong += 1;
            let write = if counted.wrong >= MAX_WRONG {
                write.delete(Space::MfaChallenges, key.as_bytes())
            } else {
                write.put(Space::MfaChallenges, key.as_bytes(), to_json(&counted)?)
            };
            match self.store.kv_write(write).await {
                Ok(()) | Err(StoreError::CasFailed) => {}
                Err(e) => return Err(e.into()),
            }
            self.settle_attempt(&user, false).await?;
            return Err(wrong_code());
        }
        let write = write
            .delete(Space::MfaChallenges, key.as_bytes())
            .check(Space::Users, user.id.as_bytes(), Some(user_bytes))
            .put(Space::Users, user.id.as_bytes(), to_json(&updated)?)
            .event(user.event("login"));
        let (session, write) = self.new_session(&updated, write)?;
        match self.store.kv_write(write).await {
            Ok(()) => {}
            // The challenge was answered, or the user changed, meanwhile: sign in again.
            Err(StoreError::CasFailed) => return Err(void()),
            Err(e) => return Err(e.into()),
        }
        self.settle_attempt(&user, true).await?;
        Ok(session)
    }

    /// Counts a code attempt against the account's failed-login window before it is checked.
    async fn account_attempt(&self, user: &UserRecord) -> Result<()> {
        self.attempt(&failure_key(user), None).await
    }

    /// A right code takes its attempt back; a wrong one is refused (and stays counted).
    async fn settle_attempt(&self, user: &UserRecord, proved: bool) -> Result<()> {
        if proved {
            self.account_failures.release(&failure_key(user)).await;
            Ok(())
        } else {
            Err(wrong_code())
        }
    }
}

/// The failed-login window a user's wrong codes count in: its address's, as for passwords (an
/// account without one, its id).
fn failure_key(user: &UserRecord) -> String {
    if user.email.is_empty() {
        user.id.clone()
    } else {
        super::identity::email_key(&user.email)
    }
}

/// Checks an answer against a confirmed factor and spends it: the code's step becomes the
/// last used, or the recovery code is removed. False when it is wrong (or used).
fn spend(totp: &mut TotpRecord, answer: &MfaAnswer) -> Result<bool> {
    match (&answer.code, &answer.recovery_code) {
        (Some(code), None) => {
            let secret = secret_bytes(totp)?;
            match accepted_step(&secret, code, unix_secs(), totp.last_step) {
                Some(step) => {
                    totp.last_step = step;
                    Ok(true)
                }
                None => Ok(false),
            }
        }
        (None, Some(recovery)) => {
            let hash = sha256_hex(recovery.trim());
            let before = totp.recovery.len();
            totp.recovery.retain(|h| *h != hash);
            Ok(totp.recovery.len() < before)
        }
        _ => Err(AuthError::BadRequest(
            "give either `code` or `recovery_code`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238, appendix B, SHA-1 (8 digits, the seed "12345678901234567890").
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let seed = b"12345678901234567890";
        for (time, code) in [
            (59u64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(code_at(seed, time / STEP_SECS, 8), code, "T = {time}");
        }
    }

    #[test]
    fn a_code_is_taken_for_the_neighbouring_steps_and_only_after_the_last_used() {
        let seed = b"12345678901234567890";
        let now = 1_111_111_111;
        let step = now / STEP_SECS;
        for s in [step - 1, step, step + 1] {
            assert_eq!(accepted_step(seed, &code_at(seed, s, 6), now, 0), Some(s));
        }
        assert_eq!(
            accepted_step(seed, &code_at(seed, step - 2, 6), now, 0),
            None
        );
        assert_eq!(
            accepted_step(seed, &code_at(seed, step, 6), now, step),
            None
        );
        assert_eq!(accepted_step(seed, "12345", now, 0), None);
    }
}
