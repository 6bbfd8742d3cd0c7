//! `/v1/admin/import/...` and `/v1/admin/export/buckets`: what `emberbase export` and `import`
//! (and the PocketBase and Firestore importers) move documents and files with. Accounts move
//! through `/v1/admin/export/users` and `/v1/admin/import/users` (see `users`).

use super::error::ErrorBody;
use super::extract::{Caller, JsonBody};
use super::files::FileBytes;
use super::AppState;
use crate::error::Error;
use crate::model::{DocumentImportReport, FileInfo, PortableDocument};
use crate::store::Recorded;
use actix_web::{get, post, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

/// Documents to make.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct DocumentImport {
    /// At most 1000, each as `emberbase export` writes it.
    documents: Vec<PortableDocument>,
}

/// Make documents as exported (`emberbase import`, or from another system): ids, owners,
/// versions and times kept. Written together in one commit, less those that cannot be made
/// (an id that exists, data that breaks the collection's schema), which are skipped with the
/// reason. References are not checked, so collections can come in any order. Imports run no
/// before-write hook, trigger or webhook; realtime subscribers see them as creates.
#[utoipa::path(
    tag = "admin",
    params(("collection" = String, Path, description = "Collection name")),
    request_body = DocumentImport,
    responses(
        (status = 200, description = "What was made and what was skipped", body = DocumentImportReport),
        (status = 400, description = "A bad collection name, or more than 1000 documents", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/import/collections/{collection}")]
pub(super) async fn import_documents(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody<DocumentImport>,
) -> Result<HttpResponse, Error> {
    let report = state
        .docs
        .import(&caller.0, &path, body.0.documents)
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// What a file import keeps.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub(super) struct FileImportQuery {
    /// The id of the user who uploaded it; absent: none.
    owner: Option<String>,
    /// RFC 3339; absent: now.
    created_at: Option<String>,
    /// RFC 3339; absent: `created_at`.
    updated_at: Option<String>,
}

/// Make a file as exported, with its owner and times: the body is its bytes, as for an
/// upload. The path must be free. The bucket's type and size limits apply; its write rule
/// does not (admins only). No trigger or webhook fires.
#[utoipa::path(
    tag = "admin",
    params(
        ("bucket" = String, Path, description = "Bucket name, `[A-Za-z0-9_-]{1,64}`"),
        ("path" = String, Path, description = "File path: `/`-separated segments of `[A-Za-z0-9._-]`, at most 1024 bytes"),
        FileImportQuery,
    ),
    request_body(content = FileBytes, content_type = "*/*", description = "The file's bytes; may be empty (a zero-byte file)"),
    responses(
        (status = 201, description = "Made", body = FileInfo),
        (status = 400, description = "Bad bucket, path or time", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "The path holds a file", body = ErrorBody),
        (status = 413, description = "Over the size limit", body = ErrorBody),
        (status = 415, description = "A type the bucket does not accept", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/import/files/{bucket}/{path:.*}")]
pub(super) async fn import_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<FileImportQuery>,
    mut payload: web::Payload,
) -> HttpResponse {
    let query = query.into_inner();
    let now = crate::model::now_rfc3339();
    let created_at = query.created_at.unwrap_or(now);
    let recorded = Recorded {
        owner: query.owner,
        version: 1,
        updated_at: query.updated_at.unwrap_or_else(|| created_at.clone()),
        created_at,
    };
    match super::files::receive(&state, &req, &mut payload, Some(recorded)).await {
        Ok(response) => response,
        Err(e) => super::files::refuse(e, payload),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BucketNames {
    items: Vec<String>,
}

/// The names of the buckets that hold files, configured or not, in order: what `emberbase
/// export` walks.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "The bucket names", body = BucketNames),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/export/buckets")]
pub(super) async fn export_buckets(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.files.buckets_with_files(&caller.0).await?;
    Ok(HttpResponse::Ok().json(BucketNames { items }))
}
