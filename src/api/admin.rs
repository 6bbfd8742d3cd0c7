//! `/v1/admin/collections`: rules and indexes (admins and the service key only).

use super::error::ErrorBody;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::error::Error;
use crate::model::{CollectionConfig, CollectionInfo, Nonconforming};
use actix_web::{delete, get, put, web, HttpResponse};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ConfigureQuery {
    /// Refuse a schema that documents already stored break (nothing changes then).
    #[serde(default)]
    require_conforming: bool,
}

/// Set a collection's access rules, indexes and JSON Schema. New indexes are built in the
/// background (`index_states`); with a schema, `schema_report` says how many stored documents
/// do not conform (they stay; writes from now on must conform).
#[utoipa::path(
    tag = "admin",
    params(("collection" = String, Path, description = "Collection name"), ConfigureQuery),
    request_body = CollectionConfig,
    responses(
        (status = 200, description = "The stored config", body = CollectionInfo),
        (status = 400, description = "A rule, index field or schema does not compile, or (with require_conforming) stored documents break the schema", body = ErrorBody),
        (status = 401, description = "Missing or invalid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/collections/{collection}")]
pub(super) async fn put_collection(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<ConfigureQuery>,
    body: JsonBody<CollectionConfig>,
) -> Result<HttpResponse, Error> {
    let info = state
        .docs
        .configure_strict(&caller.0, &path, body.0, query.require_conforming)
        .await?;
    Ok(HttpResponse::Ok().json(info))
}

/// A collection's stored config and its exact document count.
#[utoipa::path(
    tag = "admin",
    params(("collection" = String, Path, description = "Collection name")),
    responses(
        (status = 200, description = "The config", body = CollectionInfo),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "The collection has neither a config nor documents", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/collections/{collection}")]
pub(super) async fn get_collection(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.docs.collection_config(&caller.0, &path).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct CollectionList {
    items: Vec<CollectionInfo>,
}

/// Every collection that has documents, a config or a delete under way, with its exact
/// document count, by name.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "The collections", body = CollectionList),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/collections")]
pub(super) async fn list_collections(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.docs.collections(&caller.0).await?;
    Ok(HttpResponse::Ok().json(CollectionList { items }))
}

/// Delete a collection: every document created before this call (each with a delete change
/// that realtime subscribers and triggers see), then its rules and indexes. The delete runs in
/// the background, in chunks, while writes go on; the collection shows `deleting: true` until
/// it is done, and a restart resumes it. Documents created after this call survive it.
#[utoipa::path(
    tag = "admin",
    params(("collection" = String, Path, description = "Collection name")),
    responses(
        (status = 202, description = "The delete has started (or was already under way)", body = CollectionInfo),
        (status = 400, description = "Not a valid collection name", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "The collection has neither a config nor documents", body = ErrorBody),
        (status = 409, description = "A `restrict` relation of another collection references its documents", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/collections/{collection}")]
pub(super) async fn delete_collection(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let mut info = state.docs.collection_config(&caller.0, &path).await?;
    state.docs.delete_collection(&caller.0, &path).await?;
    info.deleting = true;
    Ok(HttpResponse::Accepted().json(info))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct NonconformingQuery {
    /// How many to return, 1 to 1000 (default 50).
    limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NonconformingList {
    items: Vec<Nonconforming>,
    /// Pass as `cursor` for the next page; absent at the end of the collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// The stored documents that do not conform to the collection's schema, each with what is
/// wrong, in id order. A page stops after `limit` of them or after checking 10,000 documents;
/// `next_cursor` continues.
#[utoipa::path(
    tag = "admin",
    params(("collection" = String, Path, description = "Collection name"), NonconformingQuery),
    responses(
        (status = 200, description = "One page", body = NonconformingList),
        (status = 400, description = "The collection has no schema, or a bad limit", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/collections/{collection}/nonconforming")]
pub(super) async fn nonconforming(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<NonconformingQuery>,
) -> Result<HttpResponse, Error> {
    let (items, next_cursor) = state
        .docs
        .nonconforming(
            &caller.0,
            &path,
            query.cursor.as_deref(),
            query.limit.unwrap_or(50),
        )
        .await?;
    Ok(HttpResponse::Ok().json(NonconformingList { items, next_cursor }))
}
