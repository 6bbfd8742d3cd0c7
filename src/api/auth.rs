//! `/v1/auth/...`: accounts, sessions, email verification and password reset.

use super::error::ErrorBody;
use super::extract::{client_ip, Caller, JsonBody};
use super::AppState;
use crate::auth::{LoginResult, Principal, Session, SessionList, User};
use crate::error::Error;
use actix_web::{delete, get, patch, post, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Credentials {
    pub(super) email: String,
    /// At least 8 characters; very common passwords are refused.
    pub(super) password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignupRequest {
    email: String,
    /// At least 8 characters; very common passwords are refused.
    password: String,
    /// What the app keeps about the user: any JSON object of at most 4 KiB (rules read it as
    /// `auth.profile`).
    #[serde(default, deserialize_with = "crate::model::json_object")]
    #[schema(value_type = HashMap<String, Value>, example = json!({"name": "Ada", "avatar": "https://example.com/ada.png"}))]
    profile: Map<String, Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct MeUpdate {
    /// A JSON merge patch (RFC 7386) applied to the profile: keys set to `null` are removed.
    /// The result may take at most 4 KiB as JSON.
    #[serde(deserialize_with = "crate::model::json_object")]
    #[schema(value_type = HashMap<String, Value>, example = json!({"name": "Ada L.", "avatar": null}))]
    profile: Map<String, Value>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RefreshRequest {
    refresh_token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TokenRequest {
    /// The token from the mail.
    token: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailRequest {
    email: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResetConfirm {
    token: String,
    new_password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordChange {
    current_password: String,
    new_password: String,
}

/// Create an account and sign in, optionally with a profile.
#[utoipa::path(
    tag = "auth",
    request_body = SignupRequest,
    responses(
        (status = 201, description = "Signed up", body = Session),
        (status = 400, description = "Invalid email, a short or common password, or a profile over 4 KiB", body = ErrorBody),
        (status = 409, description = "The email is already registered", body = ErrorBody),
        (status = 429, description = "Too many signups from this address; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/signup")]
pub(super) async fn signup(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody<SignupRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let session = state
        .auth
        .accounts()
        .signup_with_profile(&body.email, body.password, body.profile, &ip)
        .await?;
    Ok(HttpResponse::Created().json(session))
}

/// Sign in with email and password. An unknown email and a wrong password answer alike.
#[utoipa::path(
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Signed in: the session; or, when the account has MFA on, `{\"mfa_required\": true, \"mfa_token\", \"methods\"}` to answer at `POST /v1/auth/mfa/verify`", body = LoginResult),
        (status = 401, description = "Invalid email or password", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
        (status = 429, description = "Too many failures for this account or address; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/login")]
pub(super) async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody<Credentials>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let session = state
        .auth
        .accounts()
        .login(&body.email, body.password, &ip)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}

/// Exchange a refresh token for a new pair. The old refresh token stops working; reusing it
/// revokes the whole login.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new session", body = Session),
        (status = 401, description = "Invalid, expired, reused or revoked refresh token", body = ErrorBody),
    )
)]
#[post("/v1/auth/refresh")]
pub(super) async fn refresh(
    state: web::Data<AppState>,
    body: JsonBody<RefreshRequest>,
) -> Result<HttpResponse, Error> {
    let session = state.auth.accounts().refresh(&body.0.refresh_token).await?;
    Ok(HttpResponse::Ok().json(session))
}

/// Sign out: revoke the login this refresh token belongs to.
#[utoipa::path(
    tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The refresh token belongs to another user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/logout")]
pub(super) async fn logout(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<RefreshRequest>,
) -> Result<HttpResponse, Error> {
    state
        .auth
        .accounts()
        .logout(&caller.0, &body.0.refresh_token)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The signed-in user.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 200, description = "The user", body = User),
        (status = 401, description = "No valid access token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/auth/me")]
pub(super) async fn me(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.auth.accounts().me(&caller.0).await?))
}

/// The signed-in user's live sessions (logins), newest first: when and where each began and
/// when it was last refreshed.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 200, description = "Their sessions", body = SessionList),
        (status = 401, description = "No valid access token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/auth/sessions")]
pub(super) async fn my_sessions(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let id = own_id(&caller.0)?;
    Ok(HttpResponse::Ok().json(state.auth.accounts().list_sessions(&caller.0, id).await?))
}

/// End one of the signed-in user's sessions (for example a lost phone's).
#[utoipa::path(
    tag = "auth",
    params(("session" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 404, description = "No live session of theirs with this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/auth/sessions/{session}")]
pub(super) async fn end_my_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let id = own_id(&caller.0)?;
    state
        .auth
        .accounts()
        .revoke_session(&caller.0, id, &path)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The signed-in user's id, or `401` for any other caller.
fn own_id(who: &Principal) -> Result<&str, Error> {
    match who {
        Principal::User { id, .. } => Ok(id),
        _ => Err(Error::unauthenticated(
            "sign in as a user to see your sessions",
        )),
    }
}

/// Update the signed-in user's profile with a JSON merge patch.
#[utoipa::path(
    tag = "auth",
    request_body = MeUpdate,
    responses(
        (status = 200, description = "The user, with the new profile", body = User),
        (status = 400, description = "The profile would be over 4 KiB, or the caller is not a user", body = ErrorBody),
        (status = 401, description = "No valid access token", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[patch("/v1/auth/me")]
pub(super) async fn update_me(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<MeUpdate>,
) -> Result<HttpResponse, Error> {
    let user = state
        .auth
        .accounts()
        .update_profile(&caller.0, body.0.profile)
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Mail the signed-in user a token that confirms their email.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 202, description = "Sent (or already verified)"),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 429, description = "Too many mails asked for; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/verify/request")]
pub(super) async fn verify_request(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    state
        .auth
        .accounts()
        .request_verification(&caller.0, &ip)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// Confirm an email with the mailed token (single use).
#[utoipa::path(
    tag = "auth",
    request_body = TokenRequest,
    responses(
        (status = 200, description = "Verified", body = User),
        (status = 400, description = "Invalid, used or expired token", body = ErrorBody),
    )
)]
#[post("/v1/auth/verify/confirm")]
pub(super) async fn verify_confirm(
    state: web::Data<AppState>,
    body: JsonBody<TokenRequest>,
) -> Result<HttpResponse, Error> {
    let user = state
        .auth
        .accounts()
        .confirm_verification(&body.0.token)
        .await?;
    Ok(HttpResponse::Ok().json(user))
}

/// Mail a password reset token. Answers the same whether or not the email has an account.
#[utoipa::path(
    tag = "auth",
    request_body = EmailRequest,
    responses(
        (status = 202, description = "Sent if the account exists"),
        (status = 400, description = "An email address over 254 bytes", body = ErrorBody),
        (status = 429, description = "Too many mails asked for from this client or to this address; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/password/reset/request")]
pub(super) async fn reset_request(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody<EmailRequest>,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    state
        .auth
        .accounts()
        .request_reset(&body.0.email, &ip)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// Set a new password with a reset token (single use). Every token of the user is revoked.
#[utoipa::path(
    tag = "auth",
    request_body = ResetConfirm,
    responses(
        (status = 204, description = "Password set"),
        (status = 400, description = "Invalid, used or expired token, or a weak password", body = ErrorBody),
    )
)]
#[post("/v1/auth/password/reset/confirm")]
pub(super) async fn reset_confirm(
    state: web::Data<AppState>,
    body: JsonBody<ResetConfirm>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    state
        .auth
        .accounts()
        .confirm_reset(&body.token, body.new_password)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Change the password (the current one is required). Every other token of the user is
/// revoked; the answer is a fresh session for this client.
#[utoipa::path(
    tag = "auth",
    request_body = PasswordChange,
    responses(
        (status = 200, description = "Changed", body = Session),
        (status = 400, description = "A weak new password", body = ErrorBody),
        (status = 401, description = "No valid access token", body = ErrorBody),
        (status = 403, description = "The current password is wrong", body = ErrorBody),
        (status = 429, description = "Too many wrong current passwords for this account; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/password/change")]
pub(super) async fn password_change(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<PasswordChange>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let session = state
        .auth
        .accounts()
        .change_password(&caller.0, body.current_password, body.new_password)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}
