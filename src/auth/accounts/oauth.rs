//! Sign-in with a provider (OAuth2 and OpenID Connect), on the account side: the providers
//! (from the config file, or added through the admin API), the redirect flow (start, callback,
//! and the app's exchange of a one-time code), the exchange of an ID token an app already holds,
//! and linking and unlinking identities.
//!
//! **Redirect flow.** `start` keeps a record under the SHA-256 of a random `state` (ten minutes)
//! with the PKCE verifier, the `nonce`, where the app wants the browser back, and the app's own
//! PKCE challenge if it sent one. The provider sends the browser to `callback`, which spends the
//! state (once), exchanges the code, validates what the provider says, and sends the browser to
//! the app with a one-time code (two minutes; never tokens in a URL), which the app exchanges,
//! with its verifier, for a session or an MFA challenge.
//!
//! **Accounts.** An identity is the provider's name and its subject. A known one signs in as its
//! user. A new one joins the account of its address only when the provider vouches for the
//! address (`email_verified`, GitHub's verified primary address); if that account's own address
//! was never verified, whoever set its password had not proved the address, so the password is
//! removed and its sessions end (Firebase does the same). Otherwise a new account is made: with
//! the address when it is vouched for, without one when it is not (an unverified address never
//! claims an account).

use super::identity::email_key;
use super::mfa::LoginResult;
use super::records::{from_json, normalize_email, sha256_hex, to_json, User, UserRecord};
use super::{rate_limited, Accounts};
use crate::auth::error::{invalid, AuthError, Result};
use crate::auth::oauth::{Nonce, Provider, ProviderIdentity};
use crate::auth::{generate_secret, Principal};
use crate::config::OAuthProviderConfig;
use crate::model::{unix_secs, SecretComparison};
use crate::store::{KvWrite, Space, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use subtle::ConstantTimeEq;

/// How long a started sign-in waits for the provider's callback.
const STATE_TTL: u64 = 600;
/// How long the app has to exchange the code of a finished sign-in.
const CODE_TTL: u64 = 120;

/// A provider identity linked to an account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkedIdentity {
    /// The provider's name in this server's configuration.
    pub provider: String,
    /// The provider's id of the user.
    pub subject: String,
    /// The address the provider gave, if any, and whether it vouched for it.
    pub email: Option<String>,
    pub email_verified: bool,
    pub linked_at: String,
}

/// A provider apps can offer a sign-in button for (`GET /v1/auth/oauth/providers`).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SignInProvider {
    pub name: String,
    pub display_name: String,
    /// `oidc`, `google`, `apple`, `microsoft`, `gitlab`, `github` or `discord`.
    pub kind: String,
    /// Whether apps may also exchange an ID token from a platform SDK
    /// (`POST /v1/auth/oauth/{provider}/token`): OpenID Connect providers.
    pub id_tokens: bool,
}

/// A provider as admins see it: its settings without secrets.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OAuthProviderInfo {
    pub name: String,
    /// `config` (the config file; read-only through the API) or `api`.
    pub source: String,
    pub kind: String,
    pub display_name: String,
    /// The callback to register with the provider.
    pub callback_url: String,
    /// The settings as given, with `client_secret` and `apple_private_key` left empty.
    pub settings: OAuthProviderConfig,
    pub has_client_secret: bool,
    pub has_apple_private_key: bool,
}

/// A provider's secrets to compare with the ones it has; each is optional.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderSecrets {
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub apple_private_key: Option<String>,
}

/// A sign-in with a provider waiting for its callback.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StateRecord {
    provider: String,
    redirect_url: String,
    verifier: String,
    nonce: String,
    /// The app's PKCE challenge (S256) for the exchange of the final code.
    app_challenge: Option<String>,
    /// Set when a signed-in user links the identity instead of signing in with it.
    link_user: Option<String>,
    expires_at: u64,
}

/// A finished redirect sign-in waiting for the app to exchange its code.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CodeRecord {
    user_id: String,
    app_challenge: Option<String>,
    expires_at: u64,
}

/// An ID token an app exchanged, kept until it expires so it works once.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UsedRecord {
    expires_at: u64,
}

/// Whether a state, code or used-token record has expired (for pruning).
pub(super) fn expired(bytes: &[u8], now: u64) -> bool {
    #[derive(Deserialize)]
    struct Expiring {
        expires_at: u64,
    }
    from_json::<Expiring>(bytes).is_ok_and(|r| r.expires_at <= now)
}

/// The longest subject and address of an identity that are kept (provider answers are capped
/// at 1 MiB; these end up in keys and user records).
const MAX_SUBJECT_BYTES: usize = 255;

/// Refuses an identity whose subject or address is longer than any real one.
fn check_identity(identity: &ProviderIdentity) -> Result<()> {
    let long_email = identity
        .email
        .as_ref()
        .is_some_and(|e| e.len() > super::records::MAX_EMAIL_BYTES);
    if identity.subject.is_empty() || identity.subject.len() > MAX_SUBJECT_BYTES || long_email {
        return Err(AuthError::Provider(
            "the provider's subject or address is empty or too long".into(),
        ));
    }
    Ok(())
}

/// The index key of an identity.
pub(super) fn identity_key(provider: &str, subject: &str) -> Vec<u8> {
    let mut key = provider.as_bytes().to_vec();
    key.push(0);
    key.extend_from_slice(subject.as_bytes());
    key
}

fn unknown_sign_in() -> AuthError {
    AuthError::BadRequest("unknown, expired or used sign-in; start again".into())
}

fn void_code() -> AuthError {
    AuthError::Unauthenticated("invalid, expired or used code".into())
}

/// Whether `challenge` can be a PKCE S256 challenge (43 base64url characters).
fn plausible_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `url` with `pairs` added to its query.
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            u.query_pairs_mut().extend_pairs(pairs);
            u.into()
        }
        Err(_) => url.to_string(),
    }
}

/// The error code and description a failed callback sends the app.
fn callback_error(e: &AuthError) -> (&'static str, String) {
    let code = match e {
        AuthError::Unauthenticated(_) => "access_denied",
        AuthError::Forbidden(_) => "account_disabled",
        AuthError::Conflict(_) | AuthError::EmailTaken => "identity_conflict",
        AuthError::RateLimited { .. } => "rate_limited",
        AuthError::Provider(_) => "provider_failed",
        _ => "server_error",
    };
    (code, e.to_string())
}

impl Accounts {
    /// The provider of this name: from the config file, else added through the admin API.
    async fn provider(&self, name: &str) -> Result<Provider> {
        let config = match self.config.providers.get(name) {
            Some(config) => config.clone(),
            None => self
                .stored_provider(name)
                .await?
                .ok_or_else(|| AuthError::ProviderNotFound(name.into()))?,
        };
        Provider::resolve(name, &config, &self.config)
            .map_err(|e| AuthError::Internal(format!("provider {name}: {e}")))
    }

    async fn stored_provider(&self, name: &str) -> Result<Option<OAuthProviderConfig>> {
        match self
            .store
            .kv_get(Space::OAuthProviders, name.as_bytes())
            .await?
        {
            Some(bytes) => Ok(Some(from_json(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Every provider, from the config file and from the admin API, by name.
    async fn all_providers(&self) -> Result<Vec<(String, OAuthProviderConfig, &'static str)>> {
        let mut all: Vec<_> = self
            .config
            .providers
            .iter()
            .map(|(name, config)| (name.clone(), config.clone(), "config"))
            .collect();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = self
                .store
                .kv_scan(Space::OAuthProviders, after.as_deref(), 100)
                .await?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (key, bytes) in page {
                let name = String::from_utf8_lossy(&key).into_owned();
                if !self.config.providers.contains_key(&name) {
                    all.push((name, from_json(&bytes)?, "api"));
                }
            }
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(all)
    }

    /// The providers apps can offer (those whose settings resolve).
    pub async fn sign_in_providers(&self) -> Result<Vec<SignInProvider>> {
        Ok(self
            .all_providers()
            .await?
            .into_iter()
            .filter_map(|(name, config, _)| Provider::resolve(&name, &config, &self.config).ok())
            .map(|p| SignInProvider {
                id_tokens: p.kind.is_oidc(),
                kind: p.kind.as_str().into(),
                name: p.name,
                display_name: p.display_name,
            })
            .collect())
    }

    fn provider_info(
        &self,
        name: &str,
        config: &OAuthProviderConfig,
        source: &str,
    ) -> OAuthProviderInfo {
        let resolved = Provider::resolve(name, config, &self.config);
        OAuthProviderInfo {
            name: name.into(),
            source: source.into(),
            kind: resolved
                .as_ref()
                .map_or_else(|_| config.kind.clone(), |p| p.kind.as_str().into()),
            display_name: resolved
                .as_ref()
                .map_or_else(|_| name.into(), |p| p.display_name.clone()),
            callback_url: resolved
                .as_ref()
                .map_or_else(|_| String::new(), |p| p.callback_url.clone()),
            has_client_secret: !config.client_secret.is_empty(),
            has_apple_private_key: !config.apple_private_key.is_empty(),
            settings: OAuthProviderConfig {
                client_secret: String::new(),
                apple_private_key: String::new(),
                ..config.clone()
            },
        }
    }

    /// Every provider with its settings (admins only; secrets left out).
    pub async fn list_oauth_providers(&self, who: &Principal) -> Result<Vec<OAuthProviderInfo>> {
        Self::require_admin(who)?;
        Ok(self
            .all_providers()
            .await?
            .iter()
            .map(|(name, config, source)| self.provider_info(name, config, source))
            .collect())
    }

    /// Adds or replaces a provider (admins only). A secret left empty keeps the stored one, so
    /// settings can be changed without sending secrets again. The settings are checked, and an
    /// OpenID Connect provider's discovery document read, before anything is stored. Providers
    /// of the config file cannot be changed here (`409`).
    pub async fn put_oauth_provider(
        &self,
        who: &Principal,
        name: &str,
        mut config: OAuthProviderConfig,
    ) -> Result<OAuthProviderInfo> {
        Self::require_admin(who)?;
        if self.config.providers.contains_key(name) {
            return Err(AuthError::Conflict(format!(
                "provider {name} is set in the config file; change it there"
            )));
        }
        if let Some(stored) = self.stored_provider(name).await? {
            if config.client_secret.is_empty() && config.apple_private_key.is_empty() {
                config.client_secret = stored.client_secret;
                config.apple_private_key = stored.apple_private_key;
            }
        }
        let provider =
            Provider::resolve(name, &config, &self.config).map_err(|e| invalid(e, "provider"))?;
        // Settings that point at no usable provider are wrong settings, said at once.
        self.oauth.probe(&provider).await.map_err(|e| match e {
            AuthError::Provider(why) | AuthError::Unauthenticated(why) => invalid(why, "issuer"),
            other => other,
        })?;
        self.store
            .kv_write(KvWrite::default().put(
                Space::OAuthProviders,
                name.as_bytes(),
                to_json(&config)?,
            ))
            .await?;
        Ok(self.provider_info(name, &config, "api"))
    }

    /// Whether each given secret of a provider (`client_secret`, `apple_private_key`) is the
    /// one it has (admins only), compared in constant time and never shown: what `emberbase
    /// plan` uses to tell a changed secret.
    pub async fn compare_oauth_secrets(
        &self,
        who: &Principal,
        name: &str,
        secrets: &ProviderSecrets,
    ) -> Result<BTreeMap<String, SecretComparison>> {
        Self::require_admin(who)?;
        let config = self
            .all_providers()
            .await?
            .into_iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, config, _)| config)
            .ok_or_else(|| AuthError::ProviderNotFound(name.into()))?;
        let compare = |given: &str, stored: &str| {
            if stored.is_empty() {
                SecretComparison::Absent
            } else if bool::from(given.as_bytes().ct_eq(stored.as_bytes())) {
                SecretComparison::Same
            } else {
                SecretComparison::Different
            }
        };
        let mut out = BTreeMap::new();
        if let Some(given) = &secrets.client_secret {
            out.insert(
                "client_secret".into(),
                compare(given, &config.client_secret),
            );
        }
        if let Some(given) = &secrets.apple_private_key {
            out.insert(
                "apple_private_key".into(),
                compare(given, &config.apple_private_key),
            );
        }
        Ok(out)
    }

    /// Removes a provider added through the admin API. Identities stay linked; they sign in
    /// again if a provider of that name returns.
    pub async fn delete_oauth_provider(&self, who: &Principal, name: &str) -> Result<()> {
        Self::require_admin(who)?;
        if self.config.providers.contains_key(name) {
            return Err(AuthError::Conflict(format!(
                "provider {name} is set in the config file; remove it there"
            )));
        }
        if self.stored_provider(name).await?.is_none() {
            return Err(AuthError::ProviderNotFound(name.into()));
        }
        self.store
            .kv_write(KvWrite::default().delete(Space::OAuthProviders, name.as_bytes()))
            .await?;
        Ok(())
    }

    /// Starts a redirect sign-in: where to send the browser. `redirect_url` (allow-listed) is
    /// where the browser returns, with `?code=` (or `?error=`); `app_challenge`, a PKCE S256
    /// challenge, makes the exchange of that code take its verifier. With `link_to`, the
    /// identity is linked to that signed-in user instead.
    pub async fn oauth_start(
        &self,
        provider: &str,
        redirect_url: &str,
        app_challenge: Option<&str>,
        link_to: Option<&Principal>,
        client_ip: &str,
    ) -> Result<String> {
        let provider = self.provider(provider).await?;
        if !provider.redirect_allowed(redirect_url) {
            return Err(invalid(
                format!(
                    "redirect_url {redirect_url:?} is not allowed for {} (its redirect_urls, or auth.redirect_urls)",
                    provider.name
                ),
                "redirect_url",
            ));
        }
        if app_challenge.is_some_and(|c| !plausible_challenge(c)) {
            return Err(invalid(
                "code_challenge must be a PKCE S256 challenge (43 base64url characters)",
                "code_challenge",
            ));
        }
        let link_user = match link_to {
            None => None,
            Some(Principal::User { id, .. }) => Some(id.clone()),
            Some(_) => {
                return Err(AuthError::BadRequest(
                    "only a signed-in user can link an identity".into(),
                ))
            }
        };
        self.oauth_ips
            .acquire(client_ip)
            .await
            .map_err(|wait| rate_limited(wait, "too many sign-ins started from this address"))?;
        let state = generate_secret("");
        let record = StateRecord {
            provider: provider.name.clone(),
            redirect_url: redirect_url.to_string(),
            verifier: generate_secret(""),
            nonce: generate_secret(""),
            app_challenge: app_challenge.map(str::to_owned),
            link_user,
            expires_at: unix_secs() + STATE_TTL,
        };
        let url = self
            .oauth
            .authorize_url(&provider, &state, &record.nonce, &record.verifier)
            .await?;
        self.store
            .kv_write(KvWrite::default().put(
                Space::OAuthStates,
                sha256_hex(&state).as_bytes(),
                to_json(&record)?,
            ))
            .await?;
        Ok(url)
    }

    /// The provider's redirect back: where to send the browser next. The app's `redirect_url`
    /// with `code` (a sign-in), `linked` (a link), or `error` and `error_description`. Without
    /// a known state there is nowhere safe to send it: an error.
    pub async fn oauth_callback(
        &self,
        provider: &str,
        state: Option<&str>,
        code: Option<&str>,
        provider_error: Option<&str>,
        client_ip: &str,
    ) -> Result<String> {
        let key = sha256_hex(state.ok_or_else(unknown_sign_in)?);
        let bytes = self
            .store
            .kv_get(Space::OAuthStates, key.as_bytes())
            .await?
            .ok_or_else(unknown_sign_in)?;
        let record: StateRecord = from_json(&bytes)?;
        if record.provider != provider || record.expires_at <= unix_secs() {
            return Err(unknown_sign_in());
        }
        let spend = KvWrite::default()
            .check(Space::OAuthStates, key.as_bytes(), Some(bytes))
            .delete(Space::OAuthStates, key.as_bytes());
        match self.store.kv_write(spend).await {
            Ok(()) => {}
            Err(StoreError::CasFailed) => return Err(unknown_sign_in()),
            Err(e) => return Err(e.into()),
        }
        let back = |pairs: &[(&str, &str)]| with_query(&record.redirect_url, pairs);
        if let Some(error) = provider_error {
            return Ok(back(&[
                ("error", error),
                ("error_description", "the provider did not sign the user in"),
            ]));
        }
        match self.finish_callback(&record, code, client_ip).await {
            Ok(pairs) => Ok(back(
                &pairs
                    .iter()
                    .map(|(k, v)| (*k, v.as_str()))
                    .collect::<Vec<_>>(),
            )),
            Err(e) => {
                tracing::info!(provider, error = %e, "a sign-in with a provider failed");
                let (code, description) = callback_error(&e);
                Ok(back(&[
                    ("error", code),
                    ("error_description", &description),
                ]))
            }
        }
    }

    async fn finish_callback(
        &self,
        record: &StateRecord,
        code: Option<&str>,
        client_ip: &str,
    ) -> Result<Vec<(&'static str, String)>> {
        let code = code
            .filter(|c| !c.is_empty())
            .ok_or_else(|| AuthError::Unauthenticated("the provider sent no code".into()))?;
        let provider = self.provider(&record.provider).await?;
        let tokens = self
            .oauth
            .exchange(&provider, code, &record.verifier)
            .await?;
        let identity = if provider.kind.is_oidc() {
            let id_token = tokens.id_token.as_deref().ok_or_else(|| {
                AuthError::Provider("the provider answered without an ID token".into())
            })?;
            let identity = self
                .oauth
                .verify_id_token(
                    &provider,
                    id_token,
                    std::slice::from_ref(&provider.client_id),
                    Nonce::Sent(&record.nonce),
                )
                .await?;
            self.oauth
                .with_userinfo(&provider, &tokens.access_token, identity)
                .await?
        } else {
            self.oauth
                .oauth2_identity(&provider, &tokens.access_token)
                .await?
        };
        if let Some(user_id) = &record.link_user {
            self.link_identity(user_id, &provider, &identity).await?;
            return Ok(vec![("linked", provider.name.clone())]);
        }
        let user = self
            .sign_in_identity(&provider, &identity, client_ip)
            .await?;
        if user.disabled {
            return Err(AuthError::Forbidden("this account is disabled".into()));
        }
        let code = generate_secret("ebauth_");
        let pending = CodeRecord {
            user_id: user.id,
            app_challenge: record.app_challenge.clone(),
            expires_at: unix_secs() + CODE_TTL,
        };
        self.store
            .kv_write(KvWrite::default().put(
                Space::OAuthCodes,
                sha256_hex(&code).as_bytes(),
                to_json(&pending)?,
            ))
            .await?;
        Ok(vec![("code", code)])
    }

    /// Exchanges the one-time code of a finished redirect sign-in (with the PKCE verifier when
    /// the sign-in was started with a challenge) for a session, or its MFA challenge.
    pub async fn oauth_exchange(&self, code: &str, verifier: Option<&str>) -> Result<LoginResult> {
        let key = sha256_hex(code);
        let bytes = self
            .store
            .kv_get(Space::OAuthCodes, key.as_bytes())
            .await?
            .ok_or_else(void_code)?;
        // Spent first: a wrong verifier voids the code too.
        let spend = KvWrite::default()
            .check(Space::OAuthCodes, key.as_bytes(), Some(bytes.clone()))
            .delete(Space::OAuthCodes, key.as_bytes());
        match self.store.kv_write(spend).await {
            Ok(()) => {}
            Err(StoreError::CasFailed) => return Err(void_code()),
            Err(e) => return Err(e.into()),
        }
        let record: CodeRecord = from_json(&bytes)?;
        if record.expires_at <= unix_secs() {
            return Err(void_code());
        }
        if let Some(challenge) = &record.app_challenge {
            let proof = verifier.map(crate::auth::oauth::pkce_challenge);
            let matches =
                proof.is_some_and(|p| bool::from(p.as_bytes().ct_eq(challenge.as_bytes())));
            if !matches {
                return Err(AuthError::Unauthenticated(
                    "the code_verifier does not match the sign-in's code_challenge".into(),
                ));
            }
        }
        let (user, _) = self
            .load_user(&record.user_id)
            .await?
            .ok_or_else(void_code)?;
        self.finish_login(&user).await
    }

    /// Checks an ID token an app got from a platform SDK and marks it used (it works once).
    async fn spend_id_token(
        &self,
        provider: &Provider,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<ProviderIdentity> {
        if !provider.kind.is_oidc() {
            return Err(AuthError::BadRequest(format!(
                "{} does not issue ID tokens; use the redirect flow",
                provider.name
            )));
        }
        let mut audiences = vec![provider.client_id.clone()];
        audiences.extend(provider.audiences.iter().cloned());
        let identity = self
            .oauth
            .verify_id_token(provider, id_token, &audiences, Nonce::Given(nonce))
            .await?;
        let key = sha256_hex(id_token);
        let used = UsedRecord {
            expires_at: identity.expires_at + self.config.id_token_leeway_secs,
        };
        let write = KvWrite::default()
            .check(Space::OAuthUsed, key.as_bytes(), None)
            .put(Space::OAuthUsed, key.as_bytes(), to_json(&used)?);
        match self.store.kv_write(write).await {
            Ok(()) => Ok(identity),
            Err(StoreError::CasFailed) => Err(AuthError::Unauthenticated(
                "this ID token was exchanged already".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Signs in with an ID token an app got from the provider's platform SDK (its `aud` is the
    /// provider's client id or one of its `audiences`); `nonce` is the one given to the SDK.
    pub async fn oauth_token_sign_in(
        &self,
        provider: &str,
        id_token: &str,
        nonce: Option<&str>,
        client_ip: &str,
    ) -> Result<LoginResult> {
        let provider = self.provider(provider).await?;
        let identity = self.spend_id_token(&provider, id_token, nonce).await?;
        let user = self
            .sign_in_identity(&provider, &identity, client_ip)
            .await?;
        self.finish_login(&user).await
    }

    /// Links the identity of an ID token to the signed-in user.
    pub async fn link_id_token(
        &self,
        who: &Principal,
        provider: &str,
        id_token: &str,
        nonce: Option<&str>,
    ) -> Result<User> {
        let Principal::User { id, .. } = who else {
            return Err(AuthError::Unauthenticated("sign in first".into()));
        };
        let provider = self.provider(provider).await?;
        let identity = self.spend_id_token(&provider, id_token, nonce).await?;
        Ok(self.link_identity(id, &provider, &identity).await?.public())
    }

    /// Unlinks the signed-in user's identity of `provider`, unless it is their only way in (no
    /// password, no address and no other identity: `409`).
    pub async fn unlink_identity(&self, who: &Principal, provider: &str) -> Result<User> {
        let Principal::User { id, .. } = who else {
            return Err(AuthError::Unauthenticated("sign in first".into()));
        };
        for _ in 0..8 {
            let (user, bytes) = self
                .load_user(id)
                .await?
                .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into()))?;
            let Some(linked) = user.identities.iter().find(|i| i.provider == provider) else {
                return Err(AuthError::ProviderNotFound(format!(
                    "{provider} (no identity of it is linked)"
                )));
            };
            let other_way = !user.password_hash.is_empty()
                || !user.email.is_empty()
                || user.identities.len() > 1;
            if !other_way {
                return Err(AuthError::Conflict(
                    "this identity is the account's only way to sign in; link another or set an address first"
                        .into(),
                ));
            }
            let key = identity_key(provider, &linked.subject);
            let mut next = user.clone();
            next.identities.retain(|i| i.provider != provider);
            let write = KvWrite::default()
                .check(Space::Users, id.as_bytes(), Some(bytes))
                .check(
                    Space::Identities,
                    key.as_slice(),
                    Some(id.as_bytes().to_vec()),
                )
                .delete(Space::Identities, key.as_slice())
                .put(Space::Users, id.as_bytes(), to_json(&next)?);
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(next.public()),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict(
            "the account changed concurrently; retry".into(),
        ))
    }

    /// The account an identity signs in as: its linked user, the account of its address when
    /// the provider vouches for it, or a new account.
    async fn sign_in_identity(
        &self,
        provider: &Provider,
        identity: &ProviderIdentity,
        client_ip: &str,
    ) -> Result<UserRecord> {
        check_identity(identity)?;
        let key = identity_key(&provider.name, &identity.subject);
        let vouched = identity
            .email
            .as_deref()
            .filter(|_| identity.email_verified)
            .and_then(|e| normalize_email(e).ok());
        let mut counted = false;
        for _ in 0..8 {
            if let Some(user_id) = self.store.kv_get(Space::Identities, &key).await? {
                let user_id = String::from_utf8_lossy(&user_id).into_owned();
                match self.load_user(&user_id).await? {
                    Some((user, _)) => return Ok(user),
                    None => {
                        // The user was deleted: the identity is free again.
                        let stale = KvWrite::default()
                            .check(
                                Space::Identities,
                                key.as_slice(),
                                Some(user_id.into_bytes()),
                            )
                            .delete(Space::Identities, key.as_slice());
                        match self.store.kv_write(stale).await {
                            Ok(()) | Err(StoreError::CasFailed) => continue,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            let linked = self.linked(provider, identity);
            if let Some(email) = &vouched {
                if let Some((user, bytes)) = self.user_by_email(email).await? {
                    let mut next = user.clone();
                    next.identities.push(linked);
                    if !user.email_verified {
                        next.password_hash = String::new();
                        next.token_version += 1;
                        next.email_verified = true;
                    }
                    let write = KvWrite::default()
                        .check(Space::Users, user.id.as_bytes(), Some(bytes))
                        .check(Space::Identities, key.as_slice(), None)
                        .put(Space::Identities, key.as_slice(), user.id.as_bytes())
                        .put(Space::Users, user.id.as_bytes(), to_json(&next)?);
                    match self.store.kv_write(write).await {
                        Ok(()) => return Ok(next),
                        Err(StoreError::CasFailed) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if !counted {
                self.signup_ips
                    .acquire(client_ip)
                    .await
                    .map_err(|wait| rate_limited(wait, "too many signups from this address"))?;
                counted = true;
            }
            let user = UserRecord {
                id: ulid::Ulid::new().to_string(),
                email: vouched.clone().unwrap_or_default(),
                role: "user".into(),
                created_at: crate::model::now_rfc3339(),
                email_verified: vouched.is_some(),
                password_hash: String::new(),
                token_version: 1,
                disabled: false,
                profile: profile_of(identity),
                totp: None,
                anonymous_until: None,
                identities: vec![linked],
            };
            let mut write = KvWrite::default()
                .check(Space::Identities, key.as_slice(), None)
                .put(Space::Identities, key.as_slice(), user.id.as_bytes())
                .put(Space::Users, user.id.as_bytes(), to_json(&user)?)
                .event(user.event("signup"));
            if let Some(email) = &vouched {
                let email_key = email_key(email);
                write = write.check(Space::Emails, email_key.as_bytes(), None).put(
                    Space::Emails,
                    email_key.as_bytes(),
                    user.id.as_bytes(),
                );
            }
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(user),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict(
            "the account changed concurrently; retry".into(),
        ))
    }

    /// Links an identity to user `user_id`. An anonymous account becomes a regular one (same
    /// id), taking the address the provider vouches for when no account has it.
    async fn link_identity(
        &self,
        user_id: &str,
        provider: &Provider,
        identity: &ProviderIdentity,
    ) -> Result<UserRecord> {
        check_identity(identity)?;
        let key = identity_key(&provider.name, &identity.subject);
        for _ in 0..8 {
            let (user, bytes) = self
                .load_user(user_id)
                .await?
                .ok_or_else(|| AuthError::Unauthenticated("invalid or expired token".into()))?;
            match self.store.kv_get(Space::Identities, &key).await? {
                Some(owner) if owner == user_id.as_bytes() => return Ok(user),
                Some(_) => {
                    return Err(AuthError::Conflict(format!(
                        "this {} account is linked to another user",
                        provider.display_name
                    )))
                }
                None => {}
            }
            if user.identities.iter().any(|i| i.provider == provider.name) {
                return Err(AuthError::Conflict(format!(
                    "another {} account is linked already; unlink it first",
                    provider.display_name
                )));
            }
            let mut next = user.clone();
            next.identities.push(self.linked(provider, identity));
            let mut write = KvWrite::default()
                .check(Space::Users, user_id.as_bytes(), Some(bytes))
                .check(Space::Identities, key.as_slice(), None)
                .put(Space::Identities, key.as_slice(), user_id.as_bytes());
            if user.is_anonymous() {
                next.anonymous_until = None;
                let vouched = identity
                    .email
                    .as_deref()
                    .filter(|_| identity.email_verified)
                    .and_then(|e| normalize_email(e).ok());
                if let Some(email) = vouched {
                    if self.user_by_email(&email).await?.is_none() {
                        let email_key = email_key(&email);
                        write = write.check(Space::Emails, email_key.as_bytes(), None).put(
                            Space::Emails,
                            email_key.as_bytes(),
                            user_id.as_bytes(),
                        );
                        next.email = email;
                        next.email_verified = true;
                    }
                }
            }
            let write = write.put(Space::Users, user_id.as_bytes(), to_json(&next)?);
            match self.store.kv_write(write).await {
                Ok(()) => return Ok(next),
                Err(StoreError::CasFailed) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AuthError::Conflict(
            "the account changed concurrently; retry".into(),
        ))
    }

    fn linked(&self, provider: &Provider, identity: &ProviderIdentity) -> LinkedIdentity {
        LinkedIdentity {
            provider: provider.name.clone(),
            subject: identity.subject.clone(),
            email: identity.email.clone(),
            email_verified: identity.email_verified,
            linked_at: crate::model::now_rfc3339(),
        }
    }

    /// The writes that free a user's identities, for deleting the user.
    pub(super) fn release_identities(write: KvWrite, user: &UserRecord) -> KvWrite {
        user.identities.iter().fold(write, |write, linked| {
            write.delete(
                Space::Identities,
                identity_key(&linked.provider, &linked.subject),
            )
        })
    }
}

/// A new account's profile from what the provider says: `name` and `picture`, when short.
fn profile_of(identity: &ProviderIdentity) -> Map<String, Value> {
    [("name", &identity.name), ("picture", &identity.picture)]
        .into_iter()
        .filter_map(|(key, value)| {
            let value = value.as_ref().filter(|v| v.len() <= 1024)?;
            Some((key.to_string(), Value::String(value.clone())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_key_is_the_provider_then_the_subject() {
        assert_eq!(identity_key("github", "42"), b"github\x0042");
    }

    #[test]
    fn identities_longer_than_any_real_one_are_refused() {
        let identity = |subject: &str, email: &str| ProviderIdentity {
            subject: subject.into(),
            email: Some(email.into()),
            email_verified: true,
            name: None,
            picture: None,
            expires_at: 0,
        };
        assert!(check_identity(&identity("42", "a@example.com")).is_ok());
        assert!(check_identity(&identity("", "a@example.com")).is_err());
        assert!(check_identity(&identity(&"s".repeat(256), "a@example.com")).is_err());
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(check_identity(&identity("42", &long)).is_err());
    }

    #[test]
    fn only_pkce_s256_challenges_are_taken() {
        assert!(plausible_challenge(&crate::auth::oauth::pkce_challenge(
            "v"
        )));
        assert!(!plausible_challenge("plain-verifier"));
        assert!(!plausible_challenge(&"=".repeat(43)));
    }

    #[test]
    fn the_app_gets_its_code_added_to_its_own_query() {
        assert_eq!(
            with_query("https://app.test/cb?tab=1", &[("code", "ebauth_x")]),
            "https://app.test/cb?tab=1&code=ebauth_x"
        );
    }
}
