//! The protocol side of sign-in with a provider: discovery, the authorization URL (with PKCE,
//! `state` and `nonce`), the code exchange, ID-token validation against the issuer's keys, and
//! the user of an OAuth2 provider without ID tokens (GitHub, Discord).
//!
//! Every request goes through the outbound policy (`crate::outbound`): no private addresses
//! unless allow-listed. Discovery documents are kept for an hour; an issuer's keys until a
//! token names a key they lack, when they are fetched again (at most once a second), so a key
//! rotated at the provider is picked up on first use.

use super::{ClientSecret, Kind, Provider};
use crate::auth::error::{AuthError, Result};
use base64::Engine as _;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a discovery document is used before it is read again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The least time between two fetches of an issuer's keys.
const KEYS_REFETCH: Duration = Duration::from_secs(1);
/// The most a provider's answer may take.
const MAX_BODY: usize = 1 << 20;
/// What an answer from a provider may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProviderIdentity {
    /// The provider's stable id of the user (`sub`, or GitHub's numeric id).
    pub(crate) subject: String,
    pub(crate) email: Option<String>,
    /// Whether the provider vouches for the address. Only a verified address links accounts.
    pub(crate) email_verified: bool,
    pub(crate) name: Option<String>,
    pub(crate) picture: Option<String>,
    /// When the ID token it came from expires (Unix seconds); 0 without one.
    pub(crate) expires_at: u64,
}

/// What the token endpoint gave for a code.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct TokenSet {
    pub(crate) access_token: String,
    #[serde(default)]
    pub(crate) id_token: Option<String>,
}

/// The parts of an issuer's discovery document used here.
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    userinfo_endpoint: Option<String>,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

struct KeySet {
    fetched: Instant,
    keys: Vec<Jwk>,
}

/// How an ID token's `nonce` is checked.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Nonce<'a> {
    /// The redirect flow: the nonce this server sent.
    Sent(&'a str),
    /// A token an app brings: the nonce it gave its platform SDK, if any (equal, or the
    /// SHA-256 hex of it, as Apple and Google's SDKs take hashed nonces).
    Given(Option<&'a str>),
}

fn failed(what: impl std::fmt::Display) -> AuthError {
    AuthError::Provider(what.to_string())
}

fn refused(what: impl std::fmt::Display) -> AuthError {
    AuthError::Unauthenticated(what.to_string())
}

/// The PKCE challenge (S256) of a verifier.
pub(crate) fn pkce_challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The protocol client, shared by every provider.
pub(crate) struct OAuthClient {
    http: reqwest::Client,
    policy: crate::outbound::Policy,
    leeway: u64,
    discovery: tokio::sync::Mutex<HashMap<String, (Instant, Arc<Discovery>)>>,
    keys: tokio::sync::Mutex<HashMap<String, KeySet>>,
}

impl OAuthClient {
    pub(crate) fn new(policy: &crate::outbound::Policy, leeway: u64) -> OAuthClient {
        OAuthClient {
            http: policy.client(TIMEOUT, 0),
            policy: policy.clone(),
            leeway,
            discovery: Default::default(),
            keys: Default::default(),
        }
    }

    /// A request to `url` if the outbound policy allows it. The client's resolver checks the
    /// addresses of names; an IP literal is checked here.
    fn request(&self, method: reqwest::Method, url: &str) -> Result<reqwest::RequestBuilder> {
        let parsed =
            reqwest::Url::parse(url).map_err(|_| failed(format!("{url:?} is not a URL")))?;
        self.policy
            .check(&parsed)
            .map_err(|refused| failed(format!("cannot reach {url}: {refused}")))?;
        Ok(self.http.request(method, parsed))
    }

    /// Reads a JSON answer of at most `MAX_BODY` bytes.
    async fn read_json(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let mut response = request
            .header("Accept", "application/json")
            .header(
                "User-Agent",
                concat!("emberbase/", env!("CARGO_PKG_VERSION")),
            )
            .send()
            .await
            .map_err(|e| {
                failed(format!(
                    "cannot reach {what}: {}",
                    crate::outbound::describe(&e)
                ))
            })?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| failed(format!("{what} broke off its answer: {e}")))?
        {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(failed(format!(
                    "{what} answered more than {MAX_BODY} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        let json: Value = serde_json::from_slice(&body)
            .map_err(|_| failed(format!("{what} answered {status} without JSON")))?;
        if let Some(error) = json.get("error").and_then(Value::as_str) {
            let detail = json
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(refused(
                format!("{what} refused: {error} {detail}")
                    .trim_end()
                    .to_string(),
            ));
        }
        if !status.is_success() {
            return Err(failed(format!("{what} answered {status}")));
        }
        Ok(json)
    }

    async fn discover(&self, provider: &Provider) -> Result<Arc<Discovery>> {
        let issuer = provider
            .issuer
            .as_deref()
            .ok_or_else(|| AuthError::Internal("an OAuth2 provider has no issuer".into()))?;
        let mut cache = self.discovery.lock().await;
        if let Some((at, found)) = cache.get(issuer) {
            if at.elapsed() < DISCOVERY_TTL {
                return Ok(found.clone());
            }
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        );
        let json = self
            .read_json(
                self.request(reqwest::Method::GET, &url)?,
                "the provider's discovery document",
            )
            .await?;
        let found: Discovery = serde_json::from_value(json).map_err(|e| {
            failed(format!(
                "the discovery document at {url} is not usable: {e}"
            ))
        })?;
        // Microsoft's multi-tenant endpoints publish a template (`{tenantid}`), filled in from
        // each token's `tid`.
        if found.issuer.trim_end_matches('/') != issuer.trim_end_matches('/')
            && !found.issuer.contains("{tenantid}")
        {
            return Err(failed(format!(
                "the discovery document at {url} names issuer {:?}, not {issuer:?}",
                found.issuer
            )));
        }
        let found = Arc::new(found);
        cache.insert(issuer.to_string(), (Instant::now(), found.clone()));
        Ok(found)
    }

    /// Checks that a provider can be used now (its discovery document, for OpenID Connect).
    pub(crate) async fn probe(&self, provider: &Provider) -> Result<()> {
        if provider.kind.is_oidc() {
            self.discover(provider).await?;
        }
        Ok(())
    }

    /// Where to send the browser to sign in.
    pub(crate) async fn authorize_url(
        &self,
        provider: &Provider,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String> {
        let endpoint = match &provider.endpoints {
            Some(e) => e.authorization.clone(),
            None => self
                .discover(provider)
                .await?
                .authorization_endpoint
                .clone(),
        };
        let mut url = url::Url::parse(&endpoint).map_err(|_| {
            failed(format!(
                "the authorization endpoint {endpoint:?} is not a URL"
            ))
        })?;
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &provider.client_id)
                .append_pair("redirect_uri", &provider.callback_url)
                .append_pair("scope", &provider.scopes.join(" "))
                .append_pair("state", state)
                .append_pair("code_challenge", &pkce_challenge(verifier))
                .append_pair("code_challenge_method", "S256");
            if provider.kind.is_oidc() {
                query.append_pair("nonce", nonce);
            }
            // Apple posts the answer back when it is asked for the address or the name.
            if provider.kind == Kind::Apple
                && provider.scopes.iter().any(|s| s == "email" || s == "name")
            {
                query.append_pair("response_mode", "form_post");
            }
        }
        Ok(url.into())
    }

    /// Exchanges an authorization code (with its PKCE verifier) for tokens.
    pub(crate) async fn exchange(
        &self,
        provider: &Provider,
        code: &str,
        verifier: &str,
    ) -> Result<TokenSet> {
        let (endpoint, basic) = match &provider.endpoints {
            Some(e) => (e.token.clone(), false),
            None => {
                let found = self.discover(provider).await?;
                // `client_secret_basic` is the default when a provider does not say (RFC 8414).
                let basic = provider.kind != Kind::Apple
                    && found
                        .token_endpoint_auth_methods_supported
                        .as_ref()
                        .is_none_or(|m| m.iter().any(|m| m == "client_secret_basic"));
                (found.token_endpoint.clone(), basic)
            }
        };
        let secret = self.client_secret(provider)?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", provider.callback_url.as_str()),
            ("code_verifier", verifier),
            ("client_id", provider.client_id.as_str()),
        ];
        let mut request = self.request(reqwest::Method::POST, &endpoint)?;
        if basic {
            // RFC 6749 2.3.1: each part form-encoded, then joined and base64-encoded.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = format!("{}:{}", enc(&provider.client_id), enc(&secret));
            request = request.header(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            );
        } else {
            form.push(("client_secret", secret.as_str()));
        }
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let json = self
            .read_json(
                request
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(body),
                "the provider's token endpoint",
            )
            .await?;
        serde_json::from_value(json)
            .map_err(|e| failed(format!("the token endpoint's answer is not usable: {e}")))
    }

    /// The client secret to send: the configured one, or for Apple a fresh JWT signed with the
    /// developer's key.
    fn client_secret(&self, provider: &Provider) -> Result<String> {
        match &provider.secret {
            ClientSecret::Plain(secret) => Ok(secret.clone()),
            ClientSecret::AppleKey {
                team_id,
                key_id,
                pem,
            } => apple_client_secret(team_id, key_id, pem, &provider.client_id),
        }
    }

    /// The keys of an issuer, with one named `kid` (fetched again when it is missing).
    async fn key(&self, jwks_uri: &str, kid: Option<&str>) -> Result<Jwk> {
        let mut cache = self.keys.lock().await;
        let pick = |set: &KeySet| -> Option<Jwk> {
            match kid {
                Some(kid) => set
                    .keys
                    .iter()
                    .find(|k| k.common.key_id.as_deref() == Some(kid))
                    .cloned(),
                None if set.keys.len() == 1 => set.keys.first().cloned(),
                None => None,
            }
        };
        if let Some(set) = cache.get(jwks_uri) {
            if let Some(key) = pick(set) {
                return Ok(key);
            }
            if set.fetched.elapsed() < KEYS_REFETCH {
                return Err(refused(
                    "the ID token is signed with a key the provider does not publish",
                ));
            }
        }
        let json = self
            .read_json(
                self.request(reqwest::Method::GET, jwks_uri)?,
                "the provider's key set",
            )
            .await?;
        // Keys this library cannot read (encryption keys, new types) are skipped, not fatal.
        let keys: Vec<Jwk> = json
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| failed("the provider's key set has no keys"))?
            .iter()
            .filter_map(|k| serde_json::from_value(k.clone()).ok())
            .collect();
        let set = KeySet {
            fetched: Instant::now(),
            keys,
        };
        let found = pick(&set);
        cache.insert(jwks_uri.to_string(), set);
        found.ok_or_else(|| {
            refused("the ID token is signed with a key the provider does not publish")
        })
    }

    /// Validates an ID token: signature from the issuer's keys, issuer, audience (one of
    /// `audiences`), expiry with the configured leeway, and nonce.
    pub(crate) async fn verify_id_token(
        &self,
        provider: &Provider,
        token: &str,
        audiences: &[String],
        nonce: Nonce<'_>,
    ) -> Result<ProviderIdentity> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| refused("the ID token is not a JWT"))?;
        let asymmetric = matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        );
        if !asymmetric {
            return Err(refused(format!(
                "the ID token is signed with {:?}; only the provider's public keys are accepted",
                header.alg
            )));
        }
        let found = self.discover(provider).await?;
        let jwk = self.key(&found.jwks_uri, header.kid.as_deref()).await?;
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| failed(format!("the provider's key cannot be read: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.leeway = self.leeway;
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                refused(match e.kind() {
                    K::ExpiredSignature => "the ID token has expired".to_string(),
                    K::InvalidAudience => "the ID token is for another client".to_string(),
                    K::InvalidSignature => "the ID token's signature is wrong".to_string(),
                    _ => format!("the ID token is not valid: {e}"),
                })
            })?
            .claims;
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(str::to_string);
        let expected_issuer = match text("tid") {
            Some(tid) => found.issuer.replace("{tenantid}", &tid),
            None => found.issuer.clone(),
        };
        if text("iss").as_deref().map(|i| i.trim_end_matches('/'))
            != Some(expected_issuer.trim_end_matches('/'))
        {
            return Err(refused("the ID token is from another issuer"));
        }
        // With several audiences, the party it was issued to must be one of ours (OIDC 3.1.3.7).
        let several = claims
            .get("aud")
            .and_then(Value::as_array)
            .is_some_and(|a| a.len() > 1);
        if let Some(azp) = text("azp").filter(|_| several) {
            if !audiences.contains(&azp) {
                return Err(refused("the ID token is for another client"));
            }
        }
        let claimed = text("nonce");
        let nonce_ok = match nonce {
            Nonce::Sent(sent) => claimed.as_deref() == Some(sent),
            Nonce::Given(None) => claimed.is_none(),
            Nonce::Given(Some(given)) => claimed
                .as_deref()
                .is_some_and(|c| c == given || c == crate::auth::sha256_hex(given)),
        };
        if !nonce_ok {
            return Err(refused("the ID token's nonce does not match"));
        }
        let subject = text("sub").ok_or_else(|| refused("the ID token has no subject"))?;
        let standard = Claims(&claims);
        Ok(ProviderIdentity {
            subject,
            email: text("email"),
            email_verified: standard.verified(),
            name: text("name"),
            picture: text("picture"),
            expires_at: claims.get("exp").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// Fills in the address (and name and picture) of an identity whose ID token has none from
    /// the provider's userinfo endpoint: providers that follow the specification to the letter
    /// put scope claims only there when they issue an access token. The answer must be about
    /// the same subject (OIDC Core 5.3.2).
    pub(crate) async fn with_userinfo(
        &self,
        provider: &Provider,
        access_token: &str,
        mut identity: ProviderIdentity,
    ) -> Result<ProviderIdentity> {
        if identity.email.is_some() {
            return Ok(identity);
        }
        let Some(endpoint) = self.discover(provider).await?.userinfo_endpoint.clone() else {
            return Ok(identity);
        };
        let info = self
            .read_json(
                self.request(reqwest::Method::GET, &endpoint)?
                    .bearer_auth(access_token),
                "the provider's userinfo endpoint",
            )
            .await?;
        if info.get("sub").and_then(Value::as_str) != Some(identity.subject.as_str()) {
            return Err(failed(
                "the userinfo endpoint answered about another subject",
            ));
        }
        let claims = Claims(&info);
        identity.email = claims.text("email");
        identity.email_verified = claims.verified();
        identity.name = identity.name.or_else(|| claims.text("name"));
        identity.picture = identity.picture.or_else(|| claims.text("picture"));
        Ok(identity)
    }

    /// The user of an OAuth2 provider without ID tokens, read from its API.
    pub(crate) async fn oauth2_identity(
        &self,
        provider: &Provider,
        access_token: &str,
    ) -> Result<ProviderIdentity> {
        let endpoints = provider
            .endpoints
            .as_ref()
            .ok_or_else(|| AuthError::Internal("an OpenID provider has no user endpoint".into()))?;
        let get = |url: &str| {
            self.request(reqwest::Method::GET, url)
                .map(|r| r.bearer_auth(access_token))
        };
        let user = self
            .read_json(get(&endpoints.userinfo)?, "the provider's user endpoint")
            .await?;
        let id = match user.get("id") {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(failed("the provider's user has no id")),
        };
        let text = |name: &str| user.get(name).and_then(Value::as_str).map(str::to_string);
        match provider.kind {
            Kind::Github => {
                // The profile's address is public and unverified; the verified primary one
                // comes from the emails endpoint.
                let emails = self
                    .read_json(
                        get(&format!(
                            "{}/emails",
                            endpoints.userinfo.trim_end_matches('/')
                        ))?,
                        "the provider's emails endpoint",
                    )
                    .await?;
                let primary = emails.as_array().and_then(|all| {
                    all.iter()
                        .find(|e| e.get("primary") == Some(&Value::Bool(true)))
                });
                let email = primary
                    .and_then(|e| e.get("email"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| text("email"));
                let email_verified =
                    primary.is_some_and(|e| e.get("verified") == Some(&Value::Bool(true)));
                Ok(ProviderIdentity {
                    subject: id,
                    email,
                    email_verified,
                    name: text("name").or_else(|| text("login")),
                    picture: text("avatar_url"),
                    expires_at: 0,
                })
            }
            _ => Ok(ProviderIdentity {
                picture: text("avatar")
                    .map(|a| format!("https://cdn.discordapp.com/avatars/{id}/{a}.png")),
                subject: id,
                email: text("email"),
                email_verified: user.get("verified") == Some(&Value::Bool(true)),
                name: text("global_name").or_else(|| text("username")),
                expires_at: 0,
            }),
        }
    }
}

/// Standard claims, from an ID token or a userinfo answer.
struct Claims<'a>(&'a Value);

impl Claims<'_> {
    fn text(&self, name: &str) -> Option<String> {
        self.0.get(name).and_then(Value::as_str).map(str::to_string)
    }

    /// `email_verified`, which Apple sends as a string.
    fn verified(&self) -> bool {
        match self.0.get("email_verified") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => s == "true",
            _ => false,
        }
    }
}

/// Apple's client secret: a JWT (ES256) from the team, for the client, valid five minutes.
fn apple_client_secret(team_id: &str, key_id: &str, pem: &str, client_id: &str) -> Result<String> {
    let key = jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes())
        .map_err(|e| AuthError::Internal(format!("apple_private_key: {e}")))?;
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some(key_id.to_string());
    let now = crate::model::unix_secs();
    let claims = serde_json::json!({
        "iss": team_id, "iat": now, "exp": now + 300,
        "aud": "https://appleid.apple.com", "sub": client_id,
    });
    jsonwebtoken::encode(&header, &claims, &key)
        .map_err(|e| AuthError::Internal(format!("cannot sign Apple's client secret: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pkce_challenge_is_rfc_7636s() {
        // RFC 7636, appendix B.
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn apples_client_secret_is_signed_by_the_team_for_the_client() {
        // A P-256 key made for this test only.
        let pem = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgi49Xl9zhj/KGDolH
A11G1WrS4jZe2UkxvFUVnAsn17ihRANCAARI1LXuWFty6KfN3WwEgRxE/36WyjrR
Syt83+nM2vCDmS4OB6B5OdzqW1LRCQjMcQektJQaZjnab5yHl5ZqH2fo
-----END PRIVATE KEY-----
";
        let secret = apple_client_secret("TEAM", "KEY1", pem, "com.example.app").unwrap();
        let header = jsonwebtoken::decode_header(&secret).unwrap();
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some("KEY1"));
        let payload = secret.split('.').nth(1).unwrap();
        let claims: Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(claims["iss"], "TEAM");
        assert_eq!(claims["sub"], "com.example.app");
        assert_eq!(claims["aud"], "https://appleid.apple.com");
    }
}
