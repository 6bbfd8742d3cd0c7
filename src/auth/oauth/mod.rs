//! Sign-in providers (OAuth2 and OpenID Connect): what a configured provider resolves to (its
//! kind's presets filled in and checked), and the protocol client that talks to it
//! (`client`). The flows that turn a proven identity into an account are in
//! `auth::accounts::oauth`.

mod client;

pub(crate) use client::{pkce_challenge, Nonce, OAuthClient, ProviderIdentity};

use crate::config::{AuthConfig, OAuthProviderConfig};

/// How a provider proves who signed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// OpenID Connect: an ID token, checked against the issuer's keys.
    Oidc,
    Google,
    Apple,
    Microsoft,
    Gitlab,
    /// OAuth2 without ID tokens: the user from the provider's API with the access token.
    Github,
    Discord,
}

impl Kind {
    fn parse(kind: &str) -> Option<Kind> {
        Some(match kind {
            "oidc" => Kind::Oidc,
            "google" => Kind::Google,
            "apple" => Kind::Apple,
            "microsoft" => Kind::Microsoft,
            "gitlab" => Kind::Gitlab,
            "github" => Kind::Github,
            "discord" => Kind::Discord,
            _ => return None,
        })
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Oidc => "oidc",
            Kind::Google => "google",
            Kind::Apple => "apple",
            Kind::Microsoft => "microsoft",
            Kind::Gitlab => "gitlab",
            Kind::Github => "github",
            Kind::Discord => "discord",
        }
    }

    /// Whether the provider issues ID tokens (OpenID Connect).
    pub(crate) fn is_oidc(self) -> bool {
        !matches!(self, Kind::Github | Kind::Discord)
    }

    fn display_name(self) -> &'static str {
        match self {
            Kind::Oidc => "",
            Kind::Google => "Google",
            Kind::Apple => "Apple",
            Kind::Microsoft => "Microsoft",
            Kind::Gitlab => "GitLab",
            Kind::Github => "GitHub",
            Kind::Discord => "Discord",
        }
    }

    fn scopes(self) -> &'static [&'static str] {
        match self {
            Kind::Github => &["read:user", "user:email"],
            Kind::Discord => &["identify", "email"],
            Kind::Apple => &["openid", "email", "name"],
            _ => &["openid", "email", "profile"],
        }
    }
}

/// Where an OAuth2 provider (no discovery) takes its requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoints {
    pub(crate) authorization: String,
    pub(crate) token: String,
    pub(crate) userinfo: String,
}

/// How the client proves itself at the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientSecret {
    Plain(String),
    /// Apple: an ES256 JWT signed with the developer's key, made for each request.
    AppleKey {
        team_id: String,
        key_id: String,
        pem: String,
    },
}

/// A provider, ready to use: presets filled in, everything checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Provider {
    pub(crate) name: String,
    pub(crate) kind: Kind,
    pub(crate) display_name: String,
    /// OpenID Connect: the issuer whose discovery document names the endpoints and keys.
    pub(crate) issuer: Option<String>,
    /// OAuth2 without discovery.
    pub(crate) endpoints: Option<Endpoints>,
    pub(crate) client_id: String,
    pub(crate) secret: ClientSecret,
    pub(crate) scopes: Vec<String>,
    pub(crate) redirect_urls: Vec<String>,
    pub(crate) audiences: Vec<String>,
    pub(crate) callback_url: String,
}

/// Whether `name` may name a provider: it is a path segment of its URLs.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn check_url(what: &str, url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        _ => Err(format!("{what} must be an http or https URL, not {url:?}")),
    }
}

fn or(value: &str, default: impl FnOnce() -> String) -> String {
    if value.is_empty() {
        default()
    } else {
        value.to_string()
    }
}

impl Provider {
    /// Resolves a provider's configuration, or says what is wrong with it.
    pub(crate) fn resolve(
        name: &str,
        config: &OAuthProviderConfig,
        auth: &AuthConfig,
    ) -> Result<Provider, String> {
        if !valid_name(name) {
            return Err(format!(
                "{name:?} is not a provider name (1 to 32 of a-z, 0-9, - and _)"
            ));
        }
        let kind_name = match (config.kind.as_str(), Kind::parse(name)) {
            ("", Some(_)) => name,
            ("", None) => "oidc",
            (kind, _) => kind,
        };
        let kind = Kind::parse(kind_name).ok_or_else(|| {
            format!("kind {kind_name:?} is not one of oidc, google, apple, microsoft, gitlab, github, discord")
        })?;
        if config.client_id.is_empty() {
            return Err("client_id is required".into());
        }
        let issuer = match kind {
            Kind::Oidc if config.issuer.is_empty() => {
                return Err("issuer is required for an OpenID Connect provider".into())
            }
            Kind::Google => Some(or(&config.issuer, || "https://accounts.google.com".into())),
            Kind::Apple => Some(or(&config.issuer, || "https://appleid.apple.com".into())),
            Kind::Gitlab => Some(or(&config.issuer, || "https://gitlab.com".into())),
            Kind::Microsoft => Some(or(&config.issuer, || {
                let tenant = or(&config.tenant, || "common".into());
                format!("https://login.microsoftonline.com/{tenant}/v2.0")
            })),
            Kind::Oidc => Some(config.issuer.clone()),
            Kind::Github | Kind::Discord => None,
        };
        if let Some(issuer) = &issuer {
            check_url("issuer", issuer)?;
        }
        let endpoints = match kind {
            Kind::Github => Some(Endpoints {
                authorization: or(&config.authorization_url, || {
                    "https://github.com/login/oauth/authorize".into()
                }),
                token: or(&config.token_url, || {
                    "https://github.com/login/oauth/access_token".into()
                }),
                userinfo: or(&config.userinfo_url, || {
                    "https://api.github.com/user".into()
                }),
            }),
            Kind::Discord => Some(Endpoints {
                authorization: or(&config.authorization_url, || {
                    "https://discord.com/oauth2/authorize".into()
                }),
                token: or(&config.token_url, || {
                    "https://discord.com/api/oauth2/token".into()
                }),
                userinfo: or(&config.userinfo_url, || {
                    "https://discord.com/api/users/@me".into()
                }),
            }),
            _ => {
                let set = [
                    &config.authorization_url,
                    &config.token_url,
                    &config.userinfo_url,
                ];
                if set.iter().any(|u| !u.is_empty()) {
                    return Err(
                        "authorization_url, token_url and userinfo_url are for github and discord; an OpenID Connect provider publishes its own"
                            .into(),
                    );
                }
                None
            }
        };
        if let Some(e) = &endpoints {
            check_url("authorization_url", &e.authorization)?;
            check_url("token_url", &e.token)?;
            check_url("userinfo_url", &e.userinfo)?;
        }
        let apple = [
            &config.apple_team_id,
            &config.apple_key_id,
            &config.apple_private_key,
        ];
        let secret = if apple.iter().all(|v| v.is_empty()) {
            if config.client_secret.is_empty() {
                return Err("client_secret is required".into());
            }
            ClientSecret::Plain(config.client_secret.clone())
        } else {
            if kind != Kind::Apple {
                return Err(
                    "apple_team_id, apple_key_id and apple_private_key are for apple".into(),
                );
            }
            if apple.iter().any(|v| v.is_empty()) || !config.client_secret.is_empty() {
                return Err(
                    "give either client_secret, or all of apple_team_id, apple_key_id and apple_private_key"
                        .into(),
                );
            }
            jsonwebtoken::EncodingKey::from_ec_pem(config.apple_private_key.as_bytes())
                .map_err(|e| format!("apple_private_key is not an EC private key in PEM: {e}"))?;
            ClientSecret::AppleKey {
                team_id: config.apple_team_id.clone(),
                key_id: config.apple_key_id.clone(),
                pem: config.apple_private_key.clone(),
            }
        };
        if !config.tenant.is_empty() && kind != Kind::Microsoft {
            return Err("tenant is for microsoft".into());
        }
        for url in config.redirect_urls.iter() {
            check_url("each of redirect_urls", url)?;
        }
        let callback_url = or(&config.callback_url, || {
            format!(
                "{}/v1/auth/oauth/{name}/callback",
                auth.public_url.trim_end_matches('/')
            )
        });
        check_url("callback_url", &callback_url)?;
        let scopes = if config.scopes.is_empty() {
            kind.scopes().iter().map(|s| s.to_string()).collect()
        } else {
            config.scopes.clone()
        };
        if kind.is_oidc() && !scopes.iter().any(|s| s == "openid") {
            return Err("scopes must include openid for an OpenID Connect provider".into());
        }
        if scopes.iter().any(|s| s.is_empty() || s.contains(' ')) {
            return Err("each scope is one word".into());
        }
        Ok(Provider {
            name: name.to_string(),
            kind,
            display_name: or(&config.display_name, || {
                or(kind.display_name(), || name.to_string())
            }),
            issuer,
            endpoints,
            client_id: config.client_id.clone(),
            secret,
            scopes,
            redirect_urls: if config.redirect_urls.is_empty() {
                auth.redirect_urls.clone()
            } else {
                config.redirect_urls.clone()
            },
            audiences: config.audiences.clone(),
            callback_url,
        })
    }

    /// Whether the redirect flow may end at `url`: an exact URL of the allow-list, or under a
    /// prefix of it that ends in `/`.
    pub(crate) fn redirect_allowed(&self, url: &str) -> bool {
        redirect_allowed(&self.redirect_urls, url)
    }
}

/// Whether `url` is on an allow-list of exact URLs and prefixes ending in `/`.
pub(crate) fn redirect_allowed(allowed: &[String], url: &str) -> bool {
    allowed
        .iter()
        .any(|a| url == a || (a.ends_with('/') && url.starts_with(a.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: &str) -> OAuthProviderConfig {
        OAuthProviderConfig {
            kind: kind.into(),
            client_id: "id".into(),
            client_secret: "secret".into(),
            ..Default::default()
        }
    }

    #[test]
    fn presets_fill_in_issuers_endpoints_scopes_and_callbacks() {
        let auth = AuthConfig {
            public_url: "https://api.example.com/".into(),
            redirect_urls: vec!["https://app.example.com/".into()],
            ..Default::default()
        };
        let google = Provider::resolve("google", &config(""), &auth).unwrap();
        assert_eq!(google.kind, Kind::Google);
        assert_eq!(
            google.issuer.as_deref(),
            Some("https://accounts.google.com")
        );
        assert_eq!(google.display_name, "Google");
        assert_eq!(google.scopes, ["openid", "email", "profile"]);
        assert_eq!(
            google.callback_url,
            "https://api.example.com/v1/auth/oauth/google/callback"
        );
        assert!(google.redirect_allowed("https://app.example.com/done"));
        assert!(!google.redirect_allowed("https://app.example.com.evil.test/"));
        let work = Provider::resolve("work", &config("github"), &auth).unwrap();
        assert_eq!(work.issuer, None);
        let endpoints = work.endpoints.unwrap();
        assert_eq!(endpoints.userinfo, "https://api.github.com/user");
        let ms = OAuthProviderConfig {
            tenant: "organizations".into(),
            ..config("microsoft")
        };
        assert_eq!(
            Provider::resolve("ms", &ms, &auth)
                .unwrap()
                .issuer
                .as_deref(),
            Some("https://login.microsoftonline.com/organizations/v2.0")
        );
        let custom = OAuthProviderConfig {
            issuer: "https://id.example.com".into(),
            ..config("")
        };
        assert_eq!(
            Provider::resolve("corp", &custom, &auth).unwrap().kind,
            Kind::Oidc
        );
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_reason() {
        let auth = AuthConfig::default();
        let cases = [
            ("Bad Name", config("google"), "provider name"),
            ("x", config("myspace"), "not one of"),
            ("x", config("oidc"), "issuer is required"),
            (
                "x",
                OAuthProviderConfig {
                    client_secret: String::new(),
                    ..config("google")
                },
                "client_secret is required",
            ),
            (
                "x",
                OAuthProviderConfig {
                    scopes: vec!["email".into()],
                    ..config("google")
                },
                "openid",
            ),
            (
                "x",
                OAuthProviderConfig {
                    token_url: "https://x.test/token".into(),
                    ..config("google")
                },
                "for github and discord",
            ),
            (
                "x",
                OAuthProviderConfig {
                    apple_team_id: "T".into(),
                    ..config("apple")
                },
                "either client_secret",
            ),
            (
                "x",
                OAuthProviderConfig {
                    redirect_urls: vec!["javascript:alert(1)".into()],
                    ..config("github")
                },
                "redirect_urls",
            ),
        ];
        for (name, config, why) in cases {
            let err = Provider::resolve(name, &config, &auth).unwrap_err();
            assert!(err.contains(why), "{name}: {err}");
        }
    }
}
