//! `/v1/admin/users`, the outbox and signing keys (admins and the service key only).

use super::error::ErrorBody;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::auth::{
    accounts::UserPage, EmailCollision, ImportReport, NewUser, PortableUser, PortableUserPage,
    SessionList, User,
};
use crate::error::Error;
use crate::mail::Mail;
use actix_web::{delete, get, post, put, web, HttpResponse};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct PageQuery {
    /// Page size, 1 to 1000 (default 50).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UserQuery {
    /// Only users whose address starts with this, in any case (`ada`, `ada@exa`); the page is
    /// then in address order.
    email: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Users in creation order, or those whose address starts with `email`.
#[utoipa::path(
    tag = "admin",
    params(UserQuery),
    responses(
        (status = 200, description = "One page", body = UserPage),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/users")]
pub(super) async fn list_users(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<UserQuery>,
) -> Result<HttpResponse, Error> {
    let accounts = state.auth.accounts();
    let limit = query.limit.unwrap_or(50);
    let cursor = query.cursor.as_deref();
    let page = match query.email.as_deref() {
        Some(prefix) => {
            accounts
                .search_users(&caller.0, prefix, limit, cursor)
                .await?
        }
        None => accounts.list_users(&caller.0, limit, cursor).await?,
    };
    Ok(HttpResponse::Ok().json(page))
}

/// Create an account with a password (no session starts; the user signs in themselves).
#[utoipa::path(
    tag = "admin",
    request_body = NewUser,
    responses(
        (status = 201, description = "Created", body = User),
        (status = 400, description = "A bad address, role, profile or password", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "The address is taken", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/users")]
pub(super) async fn create_user(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<NewUser>,
) -> Result<HttpResponse, Error> {
    let user = state.auth.accounts().create_user(&caller.0, body.0).await?;
    Ok(HttpResponse::Created().json(user))
}

/// Accounts with their password hashes, in id order, to move them to another server
/// (`emberbase export`). Guest accounts are left out.
#[utoipa::path(
    tag = "admin",
    params(PageQuery),
    responses(
        (status = 200, description = "One page", body = PortableUserPage),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/export/users")]
pub(super) async fn export_users(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, Error> {
    let page = state
        .auth
        .accounts()
        .export_users(
            &caller.0,
            query.limit.unwrap_or(100),
            query.cursor.as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Accounts to make.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserImport {
    /// At most 1000.
    users: Vec<PortableUser>,
}

/// Make accounts as exported (`emberbase import`, or from another system): ids and password
/// hashes kept, argon2 or bcrypt; a bcrypt hash is replaced by an argon2id one at the
/// account's next sign-in. An account whose id, address or linked identity is taken, or that
/// is not valid, is skipped with the reason; no account event is sent for an import.
#[utoipa::path(
    tag = "admin",
    request_body = UserImport,
    responses(
        (status = 200, description = "What was made and what was skipped", body = ImportReport),
        (status = 400, description = "More than 1000 accounts", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/import/users")]
pub(super) async fn import_users(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<UserImport>,
) -> Result<HttpResponse, Error> {
    let report = state
        .auth
        .accounts()
        .import_users(&caller.0, body.0.users)
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// One user.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/users/{id}")]
pub(super) async fn get_user(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.auth.accounts().get_user(&caller.0, &path).await?))
}

/// Disable a user: they cannot sign in, and every token of theirs stops working.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Disabled", body = User),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/users/{id}/disable")]
pub(super) async fn disable_user(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(
        state
            .auth
            .accounts()
            .set_disabled(&caller.0, &path, true)
            .await?,
    ))
}

/// Enable a disabled user.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Enabled", body = User),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/users/{id}/enable")]
pub(super) async fn enable_user(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(
        state
            .auth
            .accounts()
            .set_disabled(&caller.0, &path, false)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RoleRequest {
    /// `user` or `admin`.
    role: String,
}

/// Set a user's role.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    request_body = RoleRequest,
    responses(
        (status = 200, description = "Updated", body = User),
        (status = 400, description = "Not a role", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/users/{id}/role")]
pub(super) async fn set_role(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody<RoleRequest>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(
        state
            .auth
            .accounts()
            .set_role(&caller.0, &path, &body.0.role)
            .await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EmailRequest {
    email: String,
}

/// Give a user another email address, unverified until they verify it; their sessions stay.
/// Settles a collision (see `GET /v1/admin/email-collisions`) the user was part of.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    request_body = EmailRequest,
    responses(
        (status = 200, description = "Updated", body = User),
        (status = 400, description = "Not an email address", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 409, description = "Another account has this address (in any case)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/users/{id}/email")]
pub(super) async fn set_email(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody<EmailRequest>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(
        state
            .auth
            .accounts()
            .set_email(&caller.0, &path, &body.0.email)
            .await?,
    ))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct EmailCollisionList {
    items: Vec<EmailCollision>,
}

/// Accounts whose addresses differ only in case. Addresses are case-insensitive; such accounts
/// come from data directories of earlier versions, which kept the local part's case. Each signs
/// in with its exact address until an admin deletes one or changes its address.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "The collisions", body = EmailCollisionList),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/email-collisions")]
pub(super) async fn email_collisions(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.auth.accounts().email_collisions(&caller.0).await?;
    Ok(HttpResponse::Ok().json(EmailCollisionList { items }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminRequest {
    email: String,
    /// At least 8 characters; very common passwords are refused.
    password: String,
}

/// Create an admin, or make the user with this email an admin with this password (enabled,
/// email verified). What `emberbase admin create --url` calls.
#[utoipa::path(
    tag = "admin",
    request_body = AdminRequest,
    responses(
        (status = 200, description = "The existing user is now an admin, with the new password", body = User),
        (status = 201, description = "Created", body = User),
        (status = 400, description = "Invalid email, or a short or common password", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/admins")]
pub(super) async fn put_admin(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<AdminRequest>,
) -> Result<HttpResponse, Error> {
    let body = body.0;
    let (user, created) = state
        .auth
        .accounts()
        .put_admin(&caller.0, &body.email, body.password)
        .await?;
    Ok(if created {
        HttpResponse::Created().json(user)
    } else {
        HttpResponse::Ok().json(user)
    })
}

/// Delete a user; every token of theirs stops working. Their documents stay.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/users/{id}")]
pub(super) async fn delete_user(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    state.auth.accounts().delete_user(&caller.0, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// A user's live sessions (logins), newest first: when and where each began and when it was
/// last refreshed.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 200, description = "Their sessions", body = SessionList),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/users/{id}/sessions")]
pub(super) async fn list_sessions(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let sessions = state
        .auth
        .accounts()
        .list_sessions(&caller.0, &path)
        .await?;
    Ok(HttpResponse::Ok().json(sessions))
}

/// End one session of a user: its refresh token stops working, and access tokens already
/// issued to it run out within their lifetime.
#[utoipa::path(
    tag = "admin",
    params(
        ("id" = String, Path, description = "User id"),
        ("session" = String, Path, description = "Session id"),
    ),
    responses(
        (status = 204, description = "Ended"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user, or no live session of theirs with this id", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/users/{id}/sessions/{session}")]
pub(super) async fn revoke_session(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (id, session) = path.into_inner();
    state
        .auth
        .accounts()
        .revoke_session(&caller.0, &id, &session)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// End every session of a user, and every access token issued to them, at once.
#[utoipa::path(
    tag = "admin",
    params(("id" = String, Path, description = "User id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/users/{id}/sessions")]
pub(super) async fn revoke_sessions(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    state
        .auth
        .accounts()
        .revoke_sessions(&caller.0, &path)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct MailList {
    items: Vec<Mail>,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LimitQuery {
    /// At most this many, newest first (default 50).
    limit: Option<usize>,
}

/// Mail sent by the server, newest first (the outbox works without SMTP).
#[utoipa::path(
    tag = "admin",
    params(LimitQuery),
    responses(
        (status = 200, description = "The outbox", body = MailList),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/outbox")]
pub(super) async fn outbox(
    state: web::Data<AppState>,
    caller: Caller,
    query: web::Query<LimitQuery>,
) -> Result<HttpResponse, Error> {
    let items = state
        .auth
        .accounts()
        .outbox(&caller.0, query.limit.unwrap_or(50))
        .await?;
    Ok(HttpResponse::Ok().json(MailList { items }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct RotatedKey {
    /// The id (`kid`) of the new signing key.
    kid: String,
}

/// Add a new access-token signing key. Tokens signed by earlier keys stay valid until they
/// expire, so nobody is signed out.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "Rotated", body = RotatedKey),
        (status = 400, description = "The key comes from the configuration", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/auth/rotate-key")]
pub(super) async fn rotate_key(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let kid = state.auth.accounts().rotate_signing_key(&caller.0).await?;
    Ok(HttpResponse::Ok().json(RotatedKey { kid }))
}
