//! `/v1/auth/mfa/...`: TOTP enrollment, the second step of a login, and turning it off; and the
//! admin's reset.

use super::error::ErrorBody;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::auth::{MfaAnswer, RecoveryCodes, Session, TotpEnrollment, User};
use crate::error::Error;
use actix_web::{delete, post, web, HttpResponse};
use serde::Deserialize;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CodeRequest {
    /// The 6-digit code the authenticator app shows now.
    code: String,
}

/// A code from the app, or one of the recovery codes (each works once).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AnswerRequest {
    code: Option<String>,
    recovery_code: Option<String>,
}

impl From<AnswerRequest> for MfaAnswer {
    fn from(a: AnswerRequest) -> MfaAnswer {
        MfaAnswer {
            code: a.code,
            recovery_code: a.recovery_code,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct VerifyRequest {
    /// The `mfa_token` a login answered with.
    mfa_token: String,
    code: Option<String>,
    recovery_code: Option<String>,
}

/// Start TOTP enrollment: a new secret, as text, an `otpauth://` URI and a QR code (SVG) for an
/// authenticator app. Nothing changes at login until a first code confirms it.
#[utoipa::path(
    tag = "auth",
    responses(
        (status = 200, description = "The secret, pending confirmation", body = TotpEnrollment),
        (status = 401, description = "Not signed in", body = ErrorBody),
        (status = 409, description = "TOTP is already on", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/mfa/totp/enroll")]
pub(super) async fn totp_enroll(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.auth.accounts().enroll_totp(&caller.0).await?))
}

/// Confirm TOTP enrollment with a first code: from now on, signing in takes a code too. Answers
/// the recovery codes, this once; five wrong codes void the enrollment.
#[utoipa::path(
    tag = "auth",
    request_body = CodeRequest,
    responses(
        (status = 200, description = "TOTP is on", body = RecoveryCodes),
        (status = 400, description = "No enrollment is pending", body = ErrorBody),
        (status = 401, description = "Not signed in, or a wrong code", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/auth/mfa/totp/confirm")]
pub(super) async fn totp_confirm(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<CodeRequest>,
) -> Result<HttpResponse, Error> {
    let codes = state
        .auth
        .accounts()
        .confirm_totp(&caller.0, &body.0.code)
        .await?;
    Ok(HttpResponse::Ok().json(codes))
}

/// Turn TOTP off, proved with a current code or a recovery code.
#[utoipa::path(
    tag = "auth",
    request_body = AnswerRequest,
    responses(
        (status = 204, description = "TOTP is off"),
        (status = 400, description = "TOTP is not on, or neither or both of code and recovery_code", body = ErrorBody),
        (status = 401, description = "Not signed in, or a wrong code", body = ErrorBody),
        (status = 429, description = "Too many wrong codes; see Retry-After", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/auth/mfa/totp")]
pub(super) async fn totp_disable(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<AnswerRequest>,
) -> Result<HttpResponse, Error> {
    state
        .auth
        .accounts()
        .disable_totp(&caller.0, &body.0.into())
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The second step of a login with MFA on: the `mfa_token` the login answered with, and a code
/// (or a recovery code). A right one answers the session; the challenge lasts five minutes,
/// works once, and five wrong codes void it.
#[utoipa::path(
    tag = "auth",
    request_body = VerifyRequest,
    responses(
        (status = 200, description = "Signed in", body = Session),
        (status = 400, description = "Neither or both of code and recovery_code", body = ErrorBody),
        (status = 401, description = "A wrong code, or an invalid, expired or used token", body = ErrorBody),
        (status = 429, description = "Too many wrong codes; see Retry-After", body = ErrorBody),
    )
)]
#[post("/v1/auth/mfa/verify")]
pub(super) async fn mfa_verify(
    state: web::Data<AppState>,
    body: JsonBody<VerifyRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let answer = MfaAnswer {
        code: body.code,
        recovery_code: body.recovery_code,
    };
    let session = state
        .auth
        .accounts()
        .verify_mfa(&body.mfa_token, &answer)
        .await?;
    Ok(HttpResponse::Ok().json(session))
}

/// Turn a user's MFA off, for one who lost their device and recovery codes.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "MFA is off", body = User),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/users/{id}/mfa/reset")]
pub(super) async fn mfa_reset(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.auth.accounts().reset_mfa(&caller.0, &path).await?))
}
