//! `/v1/auth/passwordless/...`: sign-in by a code or a link sent by email.

use super::error::ErrorBody;
use super::extract::{client_ip, Caller, JsonBody};
use super::AppState;
use crate::auth::{LoginResult, PasswordlessProof};
use crate::error::Error;
use actix_web::{post, web, HttpRequest, HttpResponse};
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordlessRequest {
    email: String,
    /// Where the mail's link goes, with `?token=` added; one of `auth.redirect_urls`. Without
    /// it, the mail gives the token to paste.
    redirect_url: Option<String>,
}

/// The code from the mail with its address, or the link's token.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct PasswordlessVerify {
    email: Option<String>,
    /// The 6-digit code.
    code: Option<String>,
    /// The `token` of the mail's link.
    token: Option<String>,
}

/// Mail a sign-in code and link, each good once for 15 minutes (`auth.passwordless_ttl_secs`);
/// an unknown address gets an account when it signs in (unless `auth.passwordless_signup` is
/// off). Answers the same, in the same time, whether or not the address has an account.
#[utoipa::path(
    tag = "auth",
    request_body = PasswordlessRequest,
    responses(
        (status = 202, description = "Sent if the address may sign in"),
        (status = 400, description = "Not an email address, or a redirect_url not allowed", body = ErrorBody),
        (status = 429, description = "Too many mails asked for from this client or to this address; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/passwordless/request")]
pub(super) async fn passwordless_request(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: JsonBody<PasswordlessRequest>,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let body = body.0;
    state
        .auth
        .accounts()
        .request_passwordless(&body.email, body.redirect_url.as_deref(), &ip)
        .await?;
    Ok(HttpResponse::Accepted().finish())
}

/// Sign in with a code and its address, or with a link's token. Answers like login: the
/// session, or the MFA challenge when the account has TOTP on. Five wrong codes void the
/// mail's code and link. Sent with the token of an anonymous account, an unknown address
/// becomes that account's (same id: an upgrade).
#[utoipa::path(
    tag = "auth",
    request_body = PasswordlessVerify,
    responses(
        (status = 200, description = "Signed in (an unknown address now has its account), or the MFA challenge", body = LoginResult),
        (status = 400, description = "Neither `email` and `code` nor `token`", body = ErrorBody),
        (status = 401, description = "A wrong, expired or used code or link", body = ErrorBody),
        (status = 403, description = "The account is disabled", body = ErrorBody),
        (status = 429, description = "Too many failures for this account or client; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/passwordless/verify")]
pub(super) async fn passwordless_verify(
    state: web::Data<AppState>,
    req: HttpRequest,
    caller: Caller,
    body: JsonBody<PasswordlessVerify>,
) -> Result<HttpResponse, Error> {
    let ip = client_ip(&req, &state.config.http.trusted_proxies);
    let proof = match body.0 {
        PasswordlessVerify {
            email: Some(email),
            code: Some(code),
            token: None,
        } => PasswordlessProof::Code { email, code },
        PasswordlessVerify {
            email: None,
            code: None,
            token: Some(token),
        } => PasswordlessProof::Link { token },
        _ => {
            return Err(Error::bad_request(
                "give `email` and `code`, or `token`".to_string(),
            ))
        }
    };
    let result = state
        .auth
        .accounts()
        .verify_passwordless(&caller.0, &proof, &ip)
        .await?;
    Ok(HttpResponse::Ok().json(result))
}
