//! `/v1/collections/{collection}/docs` and `/v1/batch`.

use super::error::ErrorBody;
use super::extract::{body_as, Caller, IfMatch, JsonBody};
use super::AppState;
use crate::docs::{AggregateParams, Aggregates, BatchOp, ExpandedDocument, ListParams};
use crate::error::Error;
use crate::model::Document;
use actix_web::http::header;
use actix_web::{delete, get, patch, post, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn etag(version: u64) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{version}\""))
}

fn document_response(mut builder: actix_web::HttpResponseBuilder, doc: &Document) -> HttpResponse {
    builder.insert_header(etag(doc.version)).json(doc)
}

/// Create a document with a generated id.
#[utoipa::path(
    tag = "documents",
    params(("collection" = String, Path, description = "Collection name, `[A-Za-z0-9_-]{1,64}`")),
    request_body(content = Object, description = "The document's data: any JSON object"),
    responses(
        (status = 201, description = "Created", body = Document),
        (status = 400, description = "Bad name or malformed JSON", body = ErrorBody),
        (status = 403, description = "The create rule denies it", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[post("/v1/collections/{collection}/docs")]
pub(super) async fn create_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: JsonBody<Value>,
) -> Result<HttpResponse, Error> {
    let doc = state.docs.create(&caller.0, &path, body.0).await?;
    Ok(document_response(HttpResponse::Created(), &doc))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct GetQuery {
    /// Relation fields whose documents to embed under `expand`, nested with dots, e.g.
    /// `author,comments.author` (at most 8, each at most 3 deep).
    expand: Option<String>,
}

/// Read a document. The `ETag` header is its version. With `expand`, the documents its
/// relation fields reference come embedded, each checked against its own collection's read
/// rule (`null` when gone or unreadable).
#[utoipa::path(
    tag = "documents",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Document id, `[A-Za-z0-9_-]{1,128}`"),
        GetQuery,
    ),
    responses(
        (status = 200, description = "The document", body = ExpandedDocument,
            headers(("ETag" = String, description = "The version as a strong entity tag"))),
        (status = 400, description = "Bad name, id or expand", body = ErrorBody),
        (status = 403, description = "The read rule denies it", body = ErrorBody),
        (status = 404, description = "No such document", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/collections/{collection}/docs/{id}")]
pub(super) async fn get_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    query: web::Query<GetQuery>,
) -> Result<HttpResponse, Error> {
    let (collection, id) = path.into_inner();
    if let Some(expand) = query.expand.as_deref().filter(|e| !e.trim().is_empty()) {
        let doc = state.docs.get(&caller.0, &collection, &id).await?;
        let version = doc.version;
        let mut expanded = state
            .docs
            .expand(&caller.0, &collection, vec![doc], expand)
            .await?;
        let doc = expanded
            .pop()
            .ok_or_else(|| Error::internal("expand lost the document"))?;
        return Ok(HttpResponse::Ok().insert_header(etag(version)).json(doc));
    }
    let raw = state.docs.get_raw(&caller.0, &collection, &id).await?;
    Ok(HttpResponse::Ok()
        .insert_header(etag(raw.version()))
        .content_type("application/json")
        .body(raw.into_json()))
}

/// Create or replace a document.
#[utoipa::path(
    tag = "documents",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Document id"),
        ("If-Match" = Option<String>, Header, description = "Write only if the stored version is this one"),
    ),
    request_body(content = Object, description = "The document's new data"),
    responses(
        (status = 200, description = "Replaced", body = Document),
        (status = 201, description = "Created", body = Document),
        (status = 400, description = "Bad name, id or JSON", body = ErrorBody),
        (status = 403, description = "A rule denies it", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[put("/v1/collections/{collection}/docs/{id}")]
pub(super) async fn set_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    if_match: IfMatch,
    body: JsonBody<Value>,
) -> Result<HttpResponse, Error> {
    let (collection, id) = path.into_inner();
    let (doc, created) = state
        .docs
        .set(&caller.0, &collection, &id, body.0, if_match.0)
        .await?;
    let builder = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(document_response(builder, &doc))
}

/// The content type of an update that carries atomic field transforms beside its patch.
const TRANSFORM_UPDATE: &str = "application/vnd.emberbase.update+json";

/// An update with atomic field transforms (`Content-Type: application/vnd.emberbase.update+json`).
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TransformUpdate {
    /// A merge patch applied first (optional).
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    /// `{"path": {"$op": argument}}`, applied in the commit to the stored values, in order:
    /// `{"$inc": n}`, `{"$serverTime": true}`, `{"$arrayUnion": [...]}`,
    /// `{"$arrayRemove": [...]}`, `{"$delete": true}`. A path is dotted field names under the
    /// data (`likes`, `stats.views`).
    #[schema(value_type = Option<Object>)]
    transforms: Option<Value>,
}

/// Update a document with a JSON merge patch (RFC 7386), or, with `Content-Type:
/// application/vnd.emberbase.update+json`, with a patch and atomic field transforms that apply
/// to the stored values in the commit (concurrent increments never lose one another). The
/// update rule and the schema see the result.
#[utoipa::path(
    tag = "documents",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Document id"),
        ("If-Match" = Option<String>, Header, description = "Write only if the stored version is this one"),
    ),
    request_body(
        description = "A merge patch (`null` removes a field), or a patch with transforms",
        content((Object = "application/merge-patch+json"), (TransformUpdate = "application/vnd.emberbase.update+json"))
    ),
    responses(
        (status = 200, description = "Updated", body = Document),
        (status = 400, description = "Bad JSON or transforms, or a transform that does not fit the stored value", body = ErrorBody),
        (status = 403, description = "The update rule denies it", body = ErrorBody),
        (status = 404, description = "No such document", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[patch("/v1/collections/{collection}/docs/{id}")]
pub(super) async fn update_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    if_match: IfMatch,
    req: HttpRequest,
    body: JsonBody<Value>,
) -> Result<HttpResponse, Error> {
    let (collection, id) = path.into_inner();
    let transformed = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(TRANSFORM_UPDATE));
    let (patch, transforms) = if transformed {
        let update: TransformUpdate = body_as(&body.0)?;
        (update.data, update.transforms)
    } else {
        (Some(body.0), None)
    };
    let doc = state
        .docs
        .update_with(
            &caller.0,
            &collection,
            &id,
            patch,
            transforms.as_ref(),
            if_match.0,
        )
        .await?;
    Ok(document_response(HttpResponse::Ok(), &doc))
}

/// Delete a document.
#[utoipa::path(
    tag = "documents",
    params(
        ("collection" = String, Path, description = "Collection name"),
        ("id" = String, Path, description = "Document id"),
        ("If-Match" = Option<String>, Header, description = "Delete only if the stored version is this one"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "The delete rule denies it", body = ErrorBody),
        (status = 404, description = "No such document", body = ErrorBody),
        (status = 412, description = "If-Match does not match", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[delete("/v1/collections/{collection}/docs/{id}")]
pub(super) async fn delete_document(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    if_match: IfMatch,
) -> Result<HttpResponse, Error> {
    let (collection, id) = path.into_inner();
    state
        .docs
        .delete(&caller.0, &collection, &id, if_match.0)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// A filter expression, e.g. `data.n > 5 && owner == null`.
    filter: Option<String>,
    /// Comma list of paths, `-` for descending, e.g. `-data.n,created_at`. Default `id`.
    sort: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    limit: Option<String>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
    /// `true` adds `total`: how many documents match and may be read, over all pages.
    count: Option<String>,
    /// Relation fields whose documents to embed under `expand` (see the single-document read).
    expand: Option<String>,
}

/// One page of a list, its documents expanded when `expand` asks.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ExpandedPage {
    items: Vec<ExpandedDocument>,
    /// Pass as `cursor` for the next page; null on the last page.
    next_cursor: Option<String>,
    /// With `count=true`: how many documents match the filter and may be read, over all pages.
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<u64>,
}

/// A `true`/`false` query parameter (absent or empty is `false`).
fn flag(name: &str, value: Option<&str>) -> Result<bool, Error> {
    match value {
        None | Some("") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(Error::bad_request(format!("{name} must be true or false"))),
    }
}

/// List the documents of a collection that match a filter and that the caller may read.
#[utoipa::path(
    tag = "documents",
    params(("collection" = String, Path, description = "Collection name"), ListQuery),
    responses(
        (status = 200, description = "One page", body = ExpandedPage),
        (status = 400, description = "Bad filter, sort, limit, cursor or count, or a count that would examine more than `limits.max_scan_documents`", body = ErrorBody),
        (status = 403, description = "The read rule denies every document", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/collections/{collection}/docs")]
pub(super) async fn list_documents(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Error> {
    let limit = match query.limit.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<usize>()
                .map_err(|_| Error::bad_request("limit must be a whole number from 1 to 1000"))?,
        ),
    };
    let params = ListParams {
        filter: query.filter.as_deref(),
        sort: query.sort.as_deref(),
        limit,
        cursor: query.cursor.as_deref(),
        count: flag("count", query.count.as_deref())?,
    };
    let list = state.docs.prepare_list(&path, &params)?;
    let principal = caller.0;
    let expand = query.expand.clone().filter(|e| !e.trim().is_empty());
    let bounded = state.docs.is_bounded(&principal, &list);
    let docs = state.docs.clone();
    let run = async move {
        let Some(expand) = expand else {
            return Ok(docs.list_raw(&principal, &list).await?.to_json());
        };
        let page = docs.list_prepared(&principal, &list).await?;
        let items = docs
            .expand(&principal, list.collection(), page.items, &expand)
            .await?;
        let page = ExpandedPage {
            items,
            next_cursor: page.next_cursor,
            total: page.total,
        };
        serde_json::to_vec(&page).map_err(Error::internal)
    };
    let body = if bounded {
        run.await?
    } else {
        // A query that may scan the whole collection runs on the blocking pool, off the
        // async workers (this worker's runtime still drives its I/O).
        let runtime = tokio::runtime::Handle::current();
        web::block(move || runtime.block_on(run))
            .await
            .map_err(Error::internal)??
    };
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AggregateQuery {
    /// Which documents, e.g. `data.status == "paid"` (all by default).
    filter: Option<String>,
    /// Comma list of at most 4 paths to group by, e.g. `data.country,data.status`.
    group_by: Option<String>,
    /// Comma list of at most 16 of `count`, `count:PATH`, `sum:PATH`, `avg:PATH`, `min:PATH`,
    /// `max:PATH` (default `count`).
    ops: Option<String>,
}

/// Count and aggregate the documents that match a filter and that the caller may read, in
/// groups. The read rule applies per document, as for lists; the filter uses an index where
/// one serves it; an aggregate examines at most `limits.max_scan_documents` documents.
#[utoipa::path(
    tag = "documents",
    params(("collection" = String, Path, description = "Collection name"), AggregateQuery),
    responses(
        (status = 200, description = "The groups, ordered by key (one group without `group_by`)", body = Aggregates),
        (status = 400, description = "Bad filter, group_by or ops, more than 1000 groups, or more documents to examine than allowed", body = ErrorBody),
        (status = 403, description = "The read rule denies every document", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/collections/{collection}/aggregate")]
pub(super) async fn aggregate(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<AggregateQuery>,
) -> Result<HttpResponse, Error> {
    let docs = state.docs.clone();
    let principal = caller.0;
    let query = query.into_inner();
    // An aggregate reads its whole range: on the blocking pool, off the async workers.
    let runtime = tokio::runtime::Handle::current();
    let result = web::block(move || {
        let params = AggregateParams {
            filter: query.filter.as_deref(),
            group_by: query.group_by.as_deref(),
            ops: query.ops.as_deref(),
        };
        runtime.block_on(docs.aggregate(&principal, &path, &params))
    })
    .await
    .map_err(Error::internal)??;
    Ok(HttpResponse::Ok().json(result))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchRequest {
    /// At most `limits.max_batch_ops` (default 500) ops.
    ops: Vec<BatchOp>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BatchResponse {
    /// One entry per op: the document written, or null for a delete.
    results: Vec<Option<Document>>,
}

/// Apply several writes atomically: if one op fails, none is applied and `details.op` names it.
#[utoipa::path(
    tag = "documents",
    request_body = BatchRequest,
    responses(
        (status = 200, description = "Every op applied", body = BatchResponse),
        (status = 400, description = "A malformed op (`details.op`)", body = ErrorBody),
        (status = 403, description = "A rule denies an op (`details.op`)", body = ErrorBody),
        (status = 404, description = "An op's document does not exist (`details.op`)", body = ErrorBody),
        (status = 409, description = "A create's id exists (`details.op`)", body = ErrorBody),
        (status = 412, description = "An `if_version` does not match (`details.op`)", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[post("/v1/batch")]
pub(super) async fn batch(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<BatchRequest>,
) -> Result<HttpResponse, Error> {
    let results = state.docs.batch(&caller.0, body.0.ops).await?;
    Ok(HttpResponse::Ok().json(BatchResponse { results }))
}
