//! `/v1/admin/backups`: make a backup of the whole server, list, download (also through a
//! short-lived link) and delete them.

use super::error::ErrorBody;
use super::extract::Caller;
use super::files::{SignedQuery, SignedUrlBody};
use super::AppState;
use crate::backup::BackupInfo;
use crate::error::Error;
use actix_web::body::SizedStream;
use actix_web::http::header;
use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::Serialize;

/// Start a backup: a consistent snapshot of every document, file, account, function and
/// configuration, written as one archive while the server keeps serving (writes acknowledged
/// after it starts are not in it). Answers at once; the list says when it is `ready`.
#[utoipa::path(
    tag = "backups",
    responses(
        (status = 202, description = "Started", body = BackupInfo),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "A backup is still running on this node (`details.running` names it)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/backups")]
pub(super) async fn create_backup(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Accepted().json(state.backups.create(&caller.0).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BackupList {
    items: Vec<BackupInfo>,
}

/// Every archive, newest first, with the backup being written and recent failures.
#[utoipa::path(
    tag = "backups",
    responses(
        (status = 200, description = "The backups", body = BackupList),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/backups")]
pub(super) async fn list_backups(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.backups.list(&caller.0).await?;
    Ok(HttpResponse::Ok().json(BackupList { items }))
}

/// Download a ready archive (`application/gzip`: a tar with a `manifest.json` of checksums).
/// Restore it with `emberbase restore ARCHIVE --data-dir DIR`. With `expires` and `signature`
/// from `POST /v1/admin/backups/{name}/link`, no token is needed.
#[utoipa::path(
    tag = "backups",
    params(("name" = String, Path, description = "The archive's name"), SignedQuery),
    responses(
        (status = 200, description = "The archive", content_type = "application/gzip", body = Vec<u8>),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not an admin, or the link is invalid or has expired", body = ErrorBody),
        (status = 404, description = "No such archive (or not ready yet)", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/admin/backups/{name}")]
pub(super) async fn download_backup(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<SignedQuery>,
) -> Result<HttpResponse, Error> {
    let (size, body) = match (&query.expires, &query.signature) {
        (None, None) => state.backups.open(&caller.0, &name).await?,
        (Some(expires), Some(signature)) => {
            state.backups.open_signed(&name, expires, signature).await?
        }
        _ => {
            return Err(Error::forbidden(
                "the download link is invalid or has expired",
            ))
        }
    };
    Ok(HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, "application/gzip"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{name}\""),
        ))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(SizedStream::new(size, body)))
}

/// Get a link that downloads a ready archive without a token for five minutes: a browser given
/// it saves the archive to disk as it arrives (the admin console's Download does this).
#[utoipa::path(
    tag = "backups",
    params(("name" = String, Path, description = "The archive's name")),
    responses(
        (status = 200, description = "The link", body = SignedUrlBody),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such archive (or not ready yet)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/backups/{name}/link")]
pub(super) async fn link_backup(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let signed = state.backups.link(&caller.0, &name).await?;
    Ok(HttpResponse::Ok().json(SignedUrlBody::absolute(&req, signed)))
}

/// Delete an archive.
#[utoipa::path(
    tag = "backups",
    params(("name" = String, Path, description = "The archive's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No credentials", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such archive", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/backups/{name}")]
pub(super) async fn delete_backup(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    state.backups.delete(&caller.0, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}
