//! `/v1/auth/anonymous` and `/v1/auth/upgrade`: accounts without an address, and giving them
//! one.

use super::auth::Credentials;
use super::error::ErrorBody;
use super::extract::{client_ip, Caller, JsonBody};
use super::AppState;
use crate::auth::{Session, User};
use crate::error::Error;
use actix_web::{post, web, HttpRequest, HttpResponse};

/// Start an anonymous account and sign in: a user without an address (`email` null, rules
/// see `auth.anonymous == true`), which `POST /v1/auth/upgrade` (or a passwordless sign-in
/// sent with its token) turns into a regular account with the same id. One nobody refreshes
/// for `auth.anonymous_ttl_secs` (30 days) is deleted; what it owns stays.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 201, description = "Signed in", body = Session),
        (status = 429, description = "Too many signups from this address; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/anonymous")]
pub(super) async fn anonymous(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let session = state.auth.accounts().sign_in_anonymously(&ip).await?;
    Ok(HttpResponse::Created().json(session))
}

/// Give the signed-in anonymous account an address and a password. The id, and so everything
/// it owns, stays; so do its sessions.
#[utoipa::path(
    tag = "auth",
    request_body = Credentials,
    responses(
        (status = 200, description = "Upgraded", body = User),
        (status = 400, description = "Invalid email, a short or common password, or not an anonymous account", body = ErrorBody),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 409, description = "The email is already registered", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/upgrade")]
pub(super) async fn upgrade(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<Credentials>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let user = state
        .auth
        .accounts()
        .upgrade(&caller.0, &body.email, body.password)
        .await?;
    Ok(HttpResponse::Ok().json(user))
}
