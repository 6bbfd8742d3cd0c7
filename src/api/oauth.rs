//! `/v1/auth/oauth/...` and `/v1/auth/identities/...`: sign-in with a provider (OAuth2 and
//! OpenID Connect), by redirect or with an ID token an app already holds, and linking
//! identities to an account; `/v1/admin/auth/providers`: the providers.

use super::error::ErrorBody;
use super::extract::{client_ip, Caller, JsonBody};
use super::AppState;
use crate::auth::{LoginResult, OAuthProviderInfo, ProviderSecrets, SignInProvider, User};
use crate::config::OAuthProviderConfig;
use crate::error::Error;
use crate::model::SecretComparison;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

/// The query of a redirect sign-in's start.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthorizeQuery {
    /// Where the browser returns when the sign-in ends, with `?code=` or `?error=`: one of the
    /// provider's `redirect_urls` (or `auth.redirect_urls`).
    redirect_url: String,
    /// A PKCE S256 challenge of a verifier the app keeps: the code's exchange then takes it.
    code_challenge: Option<String>,
}

/// What the provider sends back (in the query, or as a form for Apple). Other parameters
/// providers add (`scope`, `iss`...) are ignored.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    /// The provider's error (`access_denied` when the user declined).
    error: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ExchangeRequest {
    /// The `code` the redirect to the app carried (`ebauth_...`).
    code: String,
    /// The verifier of the `code_challenge` the sign-in started with, if it did.
    code_verifier: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct IdTokenRequest {
    /// An ID token from the provider's platform SDK (Sign in with Apple, Google Sign-In...).
    id_token: String,
    /// The nonce given to the SDK, if one was; the token's `nonce` is it or its SHA-256 (hex).
    nonce: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LinkRequest {
    /// Where the browser returns, with `?linked=<provider>` or `?error=`.
    redirect_url: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AuthorizeUrl {
    /// Send the browser here.
    authorize_url: String,
}

fn see_other(location: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header(("Location", location))
        .insert_header(("Cache-Control", "no-store"))
        .finish()
}

/// The providers an app can offer sign-in buttons for.
#[utoipa::path(
    tag = "auth",
    responses((status = 200, description = "The providers", body = [SignInProvider]))
)]
#[get("/v1/auth/oauth/providers")]
pub(super) async fn oauth_providers(state: web::Data<AppState>) -> Result<HttpResponse, Error> {
    let providers = state.auth.accounts().sign_in_providers().await?;
    Ok(HttpResponse::Ok().json(providers))
}

/// Start a sign-in with a provider: open this URL in the browser (a redirect to the provider,
/// with PKCE, `state` and `nonce`). The browser comes back to `redirect_url` with a one-time
/// `code` for `POST /v1/auth/oauth/exchange` (or with `error` and `error_description`); never
/// with tokens.
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name"), AuthorizeQuery),
    responses(
        (status = 302, description = "To the provider's sign-in page"),
        (status = 400, description = "A redirect_url not allowed for the provider, or a malformed code_challenge", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 429, description = "Too many sign-ins started from this address; see Retry-After", body = ErrorBody),
        (status = 502, description = "The provider's discovery document cannot be read", body = ErrorBody),
    )
)]
#[get("/v1/auth/oauth/{provider}/authorize")]
pub(super) async fn oauth_authorize(
    state: web::Data<AppState>,
    req: HttpRequest,
    provider: web::Path<String>,
    query: web::Query<AuthorizeQuery>,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let url = state
        .auth
        .accounts()
        .oauth_start(
            &provider,
            &query.redirect_url,
            query.code_challenge.as_deref(),
            None,
            &ip,
        )
        .await?;
    Ok(see_other(&url))
}

async fn callback(
    state: &AppState,
    req: &HttpRequest,
    provider: &str,
    params: &CallbackParams,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(req, &state.config.http.trusted_proxies);
    let url = state
        .auth
        .accounts()
        .oauth_callback(
            provider,
            params.state.as_deref(),
            params.code.as_deref(),
            params.error.as_deref(),
            &ip,
        )
        .await?;
    Ok(see_other(&url))
}

/// Where the provider sends the browser back (register this URL with it). Ends the sign-in and
/// sends the browser to the app's `redirect_url`: with `code`, with `linked=<provider>` for a
/// link, or with `error` and `error_description`.
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name"), CallbackParams),
    responses(
        (status = 302, description = "To the app's redirect_url"),
        (status = 400, description = "An unknown, expired or used state: start again", body = ErrorBody),
    )
)]
#[get("/v1/auth/oauth/{provider}/callback")]
pub(super) async fn oauth_callback(
    state: web::Data<AppState>,
    req: HttpRequest,
    provider: web::Path<String>,
    query: web::Query<CallbackParams>,
) -> Result<HttpResponse, Error> {
    callback(&state, &req, &provider, &query).await
}

/// The same callback as a form post (Apple's `response_mode=form_post`).
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name")),
    request_body(content = inline(CallbackForm), content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 302, description = "To the app's redirect_url"),
        (status = 400, description = "An unknown, expired or used state: start again", body = ErrorBody),
    )
)]
#[post("/v1/auth/oauth/{provider}/callback")]
pub(super) async fn oauth_callback_form(
    state: web::Data<AppState>,
    req: HttpRequest,
    provider: web::Path<String>,
    form: web::Form<CallbackForm>,
) -> Result<HttpResponse, Error> {
    let params = CallbackParams {
        code: form.0.code,
        state: form.0.state,
        error: form.0.error,
    };
    callback(&state, &req, &provider, &params).await
}

/// The callback's fields as a form.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CallbackForm {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Exchange the one-time code of a finished redirect sign-in (within two minutes, once) for a
/// session, or the MFA challenge when the account has TOTP on.
#[utoipa::path(
    tag = "auth",
    request_body = ExchangeRequest,
    responses(
        (status = 200, description = "Signed in, or the MFA challenge", body = LoginResult),
        (status = 401, description = "A wrong, expired or used code, or a code_verifier that does not match", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
    )
)]
#[post("/v1/auth/oauth/exchange")]
pub(super) async fn oauth_exchange(
    state: web::Data<AppState>,
    body: JsonBody<ExchangeRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let result = state
        .auth
        .accounts()
        .oauth_exchange(&body.code, body.code_verifier.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(result))
}

/// Sign in with an ID token a mobile app got from the provider's platform SDK (OpenID Connect
/// providers). The token must be for the provider's client id or one of its `audiences`,
/// unexpired, signed by the provider, and is accepted once.
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name")),
    request_body = IdTokenRequest,
    responses(
        (status = 200, description = "Signed in, or the MFA challenge", body = LoginResult),
        (status = 400, description = "The provider issues no ID tokens", body = ErrorBody),
        (status = 401, description = "An invalid, expired, foreign or used ID token, or a wrong nonce", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 502, description = "The provider's keys cannot be read", body = ErrorBody),
    )
)]
#[post("/v1/auth/oauth/{provider}/token")]
pub(super) async fn oauth_token(
    state: web::Data<AppState>,
    req: HttpRequest,
    provider: web::Path<String>,
    body: JsonBody<IdTokenRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let result = state
        .auth
        .accounts()
        .oauth_token_sign_in(&provider, &body.id_token, body.nonce.as_deref(), &ip)
        .await?;
    Ok(HttpResponse::Ok().json(result))
}

/// Start linking a provider to the signed-in account: open the URL it answers in the browser.
/// The browser comes back to `redirect_url` with `linked=<provider>` (or `error`). An
/// anonymous account linked this way becomes a regular one, with the same id.
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name")),
    request_body = LinkRequest,
    responses(
        (status = 200, description = "Where to send the browser", body = AuthorizeUrl),
        (status = 400, description = "A redirect_url not allowed for the provider", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/identities/{provider}/authorize")]
pub(super) async fn identity_authorize(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    provider: web::Path<String>,
    body: JsonBody<LinkRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let accounts = state.auth.accounts();
    // Checked here, so the link is refused before the browser goes anywhere.
    accounts.me(&caller.0).await?;
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let authorize_url = accounts
        .oauth_start(&provider, &body.redirect_url, None, Some(&caller.0), &ip)
        .await?;
    Ok(HttpResponse::Ok().json(AuthorizeUrl { authorize_url }))
}

/// Link the identity of an ID token (from the provider's platform SDK) to the signed-in
/// account.
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name")),
    request_body = IdTokenRequest,
    responses(
        (status = 200, description = "Linked", body = User),
        (status = 401, description = "Not signed in, or an invalid, expired, foreign or used ID token", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 409, description = "The identity is linked to another user, or the account has one of this provider already", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/identities/{provider}")]
pub(super) async fn identity_link(
    state: web::Data<AppState>,
    caller: Caller,
    provider: web::Path<String>,
    body: JsonBody<IdTokenRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let user = state
        .auth
        .accounts()
        .link_id_token(&caller.0, &provider, &body.id_token, body.nonce.as_deref())
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Unlink the signed-in account's identity of a provider, unless it is the only way to sign in.
#[utoipa::path(
    tag = "auth",
    params(("provider" = String, Path, description = "The provider's name")),
    responses(
        (status = 200, description = "Unlinked", body = User),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 404, description = "No identity of this provider is linked", body = ErrorBody),
        (status = 409, description = "It is the account's only way to sign in", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/auth/identities/{provider}")]
pub(super) async fn identity_unlink(
    state: web::Data<AppState>,
    caller: Caller,
    provider: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let user = state
        .auth
        .accounts()
        .unlink_identity(&caller.0, &provider)
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Every sign-in provider with its settings (secrets left out), from the config file and from
/// this API.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "The providers", body = [OAuthProviderInfo]),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/auth/providers")]
pub(super) async fn list_auth_providers(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let providers = state
        .auth
        .accounts()
        .list_oauth_providers(&caller.0)
        .await?;
    Ok(HttpResponse::Ok().json(providers))
}

/// Add or replace a sign-in provider. Secrets left empty keep the stored ones. The settings
/// are checked, and an OpenID Connect provider's discovery document read, before anything is
/// stored. Providers of the config file are changed there.
#[utoipa::path(
    tag = "admin",
    params(("name" = String, Path, description = "The provider's name (a-z, 0-9, - and _), in its URLs")),
    request_body = OAuthProviderConfig,
    responses(
        (status = 200, description = "Stored", body = OAuthProviderInfo),
        (status = 400, description = "Settings that cannot work, and why (an issuer whose discovery document cannot be read, too)", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "The provider is set in the config file", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/auth/providers/{name}")]
pub(super) async fn put_auth_provider(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: JsonBody<OAuthProviderConfig>,
) -> Result<HttpResponse, Error> {
    let info = state
        .auth
        .accounts()
        .put_oauth_provider(&caller.0, &name, body.0)
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// Say whether each given secret (`client_secret`, `apple_private_key`) is the one the
/// provider has, without showing it (what `emberbase plan` uses to tell a changed secret).
#[utoipa::path(
    tag = "admin",
    params(("name" = String, Path, description = "The provider's name")),
    request_body = ProviderSecrets,
    responses(
        (status = 200, description = "Each given field with `same`, `different` or `absent`", body = BTreeMap<String, SecretComparison>),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/auth/providers/{name}/compare")]
pub(super) async fn compare_auth_provider_secrets(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: JsonBody<ProviderSecrets>,
) -> Result<HttpResponse, Error> {
    let compared = state
        .auth
        .accounts()
        .compare_oauth_secrets(&caller.0, &name, &body.0)
        .await?;
    Ok(HttpResponse::Ok().json(compared))
}

/// Remove a sign-in provider added through this API. Linked identities stay, and sign in
/// again if a provider of this name returns.
#[utoipa::path(
    tag = "admin",
    params(("name" = String, Path, description = "The provider's name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such provider", body = ErrorBody),
        (status = 409, description = "The provider is set in the config file", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/auth/providers/{name}")]
pub(super) async fn delete_auth_provider(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    state
        .auth
        .accounts()
        .delete_oauth_provider(&caller.0, &name)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}
