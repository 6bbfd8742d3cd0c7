//! `/v1/files`, `/v1/sign` and `/v1/admin/buckets`: streamed uploads, ranged downloads served
//! safely, listings, signed URLs and bucket configuration.

use super::error::{from_actix, ErrorBody};
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::error::{Error, ErrorCode};
use crate::files::{FilePage, OpenFile, SignedUrl};
use crate::model::{BucketConfig, BucketInfo, FileInfo};
use actix_web::body::{BodySize, MessageBody, SizedStream};
use actix_web::http::header::{self, HeaderValue};
use actix_web::{delete, get, head, post, put, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Raw bytes, in any `Content-Type`.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(super) struct Binary(#[allow(dead_code)] Vec<u8>);

/// A file's content: any bytes under any `Content-Type` (JSON, text or binary alike), so its
/// schema constrains nothing.
#[derive(utoipa::ToSchema)]
#[schema(value_type = Value)]
pub(super) struct FileBytes(#[allow(dead_code)] Vec<u8>);

/// An upload's body may be empty (a zero-byte file), which the derive cannot say of a body
/// whose schema is not an `Option`.
pub(super) fn document_empty_uploads(api: &mut utoipa::openapi::OpenApi) {
    for route in [
        "/v1/files/{bucket}/{path}",
        "/v1/admin/import/files/{bucket}/{path}",
    ] {
        let body = api
            .paths
            .paths
            .get_mut(route)
            .and_then(|item| item.put.as_mut())
            .and_then(|op| op.request_body.as_mut());
        if let Some(utoipa::openapi::RefOr::T(body)) = body {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

/// The bucket and path of a file route, taken from the raw request path: a percent-encoded
/// byte is refused by the path check instead of being decoded into `.` or `/`.
fn target(req: &HttpRequest, prefix: &str) -> Result<(String, String), Error> {
    let raw = req.uri().path();
    let rest = raw.strip_prefix(prefix).unwrap_or("");
    let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
    crate::files::check_bucket(bucket)?;
    crate::files::check_path(path)?;
    Ok((bucket.to_string(), path.to_string()))
}

fn header_str(req: &HttpRequest, name: header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Upload a file: the raw body is stored with the request's `Content-Type`. Streamed to disk,
/// never held in memory; `413` as soon as it passes the bucket's size limit.
#[utoipa::path(
    operation_id = "upload_file",
    tag = "files",
    params(
        ("bucket" = String, Path, description = "Bucket name, `[A-Za-z0-9_-]{1,64}`"),
        ("path" = String, Path, description = "File path: `/`-separated segments of `[A-Za-z0-9._-]`, at most 1024 bytes"),
    ),
    request_body(content = FileBytes, content_type = "*/*", description = "The file's bytes; may be empty (a zero-byte file)"),
    responses(
        (status = 200, description = "Replaced", body = FileInfo),
        (status = 201, description = "Created", body = FileInfo),
        (status = 400, description = "Bad bucket or path", body = ErrorBody),
        (status = 403, description = "The write rule denies it", body = ErrorBody),
        (status = 413, description = "Over the size limit", body = ErrorBody),
        (status = 415, description = "A type the bucket does not accept", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[put("/v1/files/{bucket}/{path:.*}")]
pub(super) async fn upload(
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> HttpResponse {
    match receive(&state, &req, &mut payload, None).await {
        Ok(response) => response,
        Err(e) => refuse(e, payload),
    }
}

/// Receives an upload's body; with `import`, a file imported as recorded (see
/// `transfer::import_file`), under that route.
pub(super) async fn receive(
    state: &AppState,
    req: &HttpRequest,
    payload: &mut web::Payload,
    import: Option<crate::store::Recorded>,
) -> Result<HttpResponse, Error> {
    let caller = state
        .auth
        .authenticate(super::extract::bearer(req)?)
        .await?;
    let prefix = match import {
        Some(_) => "/v1/admin/import/files/",
        None => "/v1/files/",
    };
    let (bucket, path) = target(req, prefix)?;
    let declared = match req.headers().get(header::CONTENT_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::bad_request("invalid Content-Length"))?,
        ),
    };
    let content_type = match req.headers().get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .map_err(|_| Error::new(ErrorCode::UnsupportedMediaType, "invalid Content-Type"))?,
        ),
    };
    let mut incoming = match import {
        Some(recorded) => {
            let files = &state.files;
            let target = (bucket.as_str(), path.as_str());
            files
                .begin_import(&caller, target, content_type, declared, recorded)
                .await?
        }
        None => {
            let files = &state.files;
            files
                .begin_upload(&caller, &bucket, &path, content_type, declared)
                .await?
        }
    };
    while let Some(piece) = payload.next().await {
        let piece = piece.map_err(|e| from_actix(&e.into()))?;
        incoming.write(&piece).await?;
    }
    let (info, created) = incoming.commit().await?;
    state
        .metrics
        .file_bytes
        .with_label_values(&["in"])
        .inc_by(info.size);
    let mut builder = if created {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    Ok(builder.json(info))
}

/// The error response to an upload, which closes the connection without reading the rest of
/// the body.
pub(super) fn refuse(err: Error, payload: web::Payload) -> HttpResponse {
    super::refusal::close_with(
        actix_web::ResponseError::error_response(&err),
        payload.into_inner(),
    )
}

/// The body of a HEAD response: the length of what GET would send, and no bytes (actix never
/// writes a body for HEAD, but takes `Content-Length` from the body's size).
struct HeadBody(u64);

impl MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0)
    }

    fn poll_next(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<web::Bytes, Self::Error>>> {
        Poll::Ready(None)
    }
}

/// The query of a signed URL.
#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct SignedQuery {
    /// Unix seconds after which the signed URL stops working.
    pub(super) expires: Option<String>,
    /// The server's signature of what the URL serves and its expiry.
    pub(super) signature: Option<String>,
}

/// Opens the file of a GET or HEAD: by signed URL when the query has a signature, otherwise
/// as the caller, after the bucket's read rule.
async fn open(state: &AppState, req: &HttpRequest, query: &SignedQuery) -> Result<OpenFile, Error> {
    let (bucket, path) = target(req, "/v1/files/")?;
    match (&query.expires, &query.signature) {
        (None, None) => {
            let caller = state
                .auth
                .authenticate(super::extract::bearer(req)?)
                .await?;
            Ok(state.files.open(&caller, &bucket, &path).await?)
        }
        (Some(expires), Some(signature)) => Ok(state
            .files
            .open_signed(&bucket, &path, expires, signature)
            .await?),
        _ => Err(Error::forbidden("the signed URL is invalid or has expired")),
    }
}

/// Whether an `If-None-Match` list names the entity tag (or is `*`).
fn none_match(req: &HttpRequest, etag: &str) -> Option<bool> {
    let value = header_str(req, header::IF_NONE_MATCH)?;
    Some(
        value
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag),
    )
}

fn http_date(rfc3339: &str) -> Option<(String, i64)> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    let date = std::time::SystemTime::from(t);
    Some((header::HttpDate::from(date).to_string(), t.unix_timestamp()))
}

/// The response to a GET or HEAD of a file.
fn file_response(
    state: &AppState,
    req: &HttpRequest,
    opened: OpenFile,
) -> Result<HttpResponse, Error> {
    let OpenFile { info, inline, body } = opened;
    let etag = format!("\"{}\"", info.sha256);
    let modified = http_date(&info.updated_at);
    let name = info.path.rsplit('/').next().unwrap_or("file");
    let disposition = if inline { "inline" } else { "attachment" };

    let mut builder = HttpResponse::Ok();
    builder
        .insert_header((header::ETAG, etag.as_str()))
        .insert_header((header::ACCEPT_RANGES, "bytes"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::CONTENT_SECURITY_POLICY, "sandbox"))
        .insert_header((header::CACHE_CONTROL, "private, no-cache"))
        .insert_header((
            header::CONTENT_DISPOSITION,
            format!("{disposition}; filename=\"{name}\""),
        ));
    if let Some((date, _)) = &modified {
        builder.insert_header((header::LAST_MODIFIED, date.as_str()));
    }

    let not_modified = match none_match(req, &etag) {
        Some(matched) => matched,
        None => match (header_str(req, header::IF_MODIFIED_SINCE), &modified) {
            (Some(since), Some((_, at))) => since
                .parse::<header::HttpDate>()
                .ok()
                .and_then(|d| {
                    std::time::SystemTime::from(d)
                        .duration_since(std::time::UNIX_EPOCH)
                        .ok()
                })
                .is_some_and(|d| d.as_secs() as i64 >= *at),
            _ => false,
        },
    };
    if not_modified {
        builder.status(actix_web::http::StatusCode::NOT_MODIFIED);
        return Ok(builder.finish());
    }

    let size = info.size;
    let mut start = 0;
    let mut len = size;
    let if_range_ok = header_str(req, header::IF_RANGE).is_none_or(|v| v.trim() == etag);
    if let (Some(range), true) = (header_str(req, header::RANGE), if_range_ok) {
        // A Range header that does not parse is ignored (RFC 9110), and so is a multi-range
        // request: the whole file is a valid answer to both.
        if let Ok(parsed) = http_range_header::parse_range_header(range) {
            match parsed.validate(size) {
                Ok(ranges) if ranges.len() == 1 => {
                    let (first, last) = (*ranges[0].start(), *ranges[0].end());
                    start = first;
                    len = last - first + 1;
                    builder
                        .status(actix_web::http::StatusCode::PARTIAL_CONTENT)
                        .insert_header((
                            header::CONTENT_RANGE,
                            format!("bytes {first}-{last}/{size}"),
                        ));
                }
                Ok(_) => {}
                Err(_) => {
                    let mut res = actix_web::ResponseError::error_response(&Error::new(
                        ErrorCode::RangeNotSatisfiable,
                        format!("the range is outside the file's {size} bytes"),
                    ));
                    if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                        res.headers_mut().insert(header::CONTENT_RANGE, v);
                    }
                    return Ok(res);
                }
            }
        }
    }
    builder.content_type(info.content_type.as_str());
    if req.method() == actix_web::http::Method::HEAD {
        return Ok(builder.body(HeadBody(len)));
    }
    state
        .metrics
        .file_bytes
        .with_label_values(&["out"])
        .inc_by(len);
    Ok(builder.body(SizedStream::new(len, body.stream(start, len))))
}

const DOWNLOAD_HEADERS: &str = "Always `X-Content-Type-Options: nosniff` and `Content-Security-Policy: sandbox`; `Content-Disposition` is `inline` only for images (not SVG), audio, video, PDF and plain text whose bytes do not look like markup, otherwise `attachment`.";

/// Download a file. `Range` (one range) gives `206`, `If-None-Match` `304`. With `expires` and
/// `signature` from `POST /v1/sign/...`, no token is needed.
#[utoipa::path(
    tag = "files",
    description = DOWNLOAD_HEADERS,
    params(
        ("bucket" = String, Path, description = "Bucket name"),
        ("path" = String, Path, description = "File path"),
        ("Range" = Option<String>, Header, description = "One byte range, e.g. `bytes=0-1023`"),
        ("If-None-Match" = Option<String>, Header, description = "The `ETag` already held"),
        SignedQuery,
    ),
    responses(
        (status = 200, description = "The bytes", content_type = "*/*", body = FileBytes,
            headers(
                ("ETag" = String, description = "The SHA-256 of the bytes, quoted"),
                ("Content-Disposition" = String, description = "inline or attachment"),
                ("Last-Modified" = String, description = "When the file was last written"),
            )),
        (status = 206, description = "The requested range", content_type = "*/*", body = FileBytes),
        (status = 304, description = "Not modified"),
        (status = 400, description = "Bad bucket or path", body = ErrorBody),
        (status = 403, description = "The read rule denies it, or the signed URL is invalid or expired", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/files/{bucket}/{path:.*}")]
pub(super) async fn download(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<SignedQuery>,
) -> Result<HttpResponse, Error> {
    let opened = open(&state, &req, &query).await?;
    file_response(&state, &req, opened)
}

/// A file's headers, as `GET` would send them, with no body.
#[utoipa::path(
    tag = "files",
    description = DOWNLOAD_HEADERS,
    params(
        ("bucket" = String, Path, description = "Bucket name"),
        ("path" = String, Path, description = "File path"),
        SignedQuery,
    ),
    responses(
        (status = 200, description = "The headers of the file"),
        (status = 304, description = "Not modified"),
        (status = 403, description = "The read rule denies it"),
        (status = 404, description = "No such file"),
    ),
    security((), ("bearer" = []))
)]
#[head("/v1/files/{bucket}/{path:.*}")]
pub(super) async fn head_file(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<SignedQuery>,
) -> Result<HttpResponse, Error> {
    let opened = open(&state, &req, &query).await?;
    file_response(&state, &req, opened)
}

/// Delete a file; its bytes are removed from disk.
#[utoipa::path(
    tag = "files",
    params(
        ("bucket" = String, Path, description = "Bucket name"),
        ("path" = String, Path, description = "File path"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Bad bucket or path", body = ErrorBody),
        (status = 403, description = "The delete rule denies it", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[delete("/v1/files/{bucket}/{path:.*}")]
pub(super) async fn delete_file(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let (bucket, path) = target(&req, "/v1/files/")?;
    state.files.delete(&caller.0, &bucket, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct ListQuery {
    /// Only paths that start with this.
    prefix: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// List a bucket's files in path order (only those the read rule allows).
#[utoipa::path(
    tag = "files",
    params(("bucket" = String, Path, description = "Bucket name"), ListQuery),
    responses(
        (status = 200, description = "A page of files", body = FilePage),
        (status = 400, description = "Bad bucket, prefix, limit or cursor", body = ErrorBody),
        (status = 403, description = "The read rule denies it", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/files/{bucket}")]
pub(super) async fn list_files(
    state: web::Data<AppState>,
    caller: Caller,
    bucket: web::Path<String>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Error> {
    let q = query.into_inner();
    let page = state
        .files
        .list(
            &caller.0,
            &bucket,
            q.prefix.as_deref(),
            q.limit,
            q.cursor.as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(page))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SignRequest {
    /// Seconds the URL works for, 1 to 604800 (7 days). Default 3600.
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct SignedUrlBody {
    /// An absolute URL that serves the file (or archive) without a token.
    url: String,
    expires_at: String,
}

impl SignedUrlBody {
    /// The signed URL on the address the request came to.
    pub(super) fn absolute(req: &HttpRequest, signed: SignedUrl) -> SignedUrlBody {
        let conn = req.connection_info();
        SignedUrlBody {
            url: format!(
                "{}://{}{}",
                conn.scheme(),
                conn.host(),
                signed.path_and_query
            ),
            expires_at: signed.expires_at,
        }
    }
}

/// Get a URL that serves a file without a token until it expires. The caller needs read
/// access, and the file must exist.
#[utoipa::path(
    tag = "files",
    params(
        ("bucket" = String, Path, description = "Bucket name"),
        ("path" = String, Path, description = "File path"),
    ),
    request_body = SignRequest,
    responses(
        (status = 200, description = "The signed URL", body = SignedUrlBody),
        (status = 400, description = "Bad bucket, path or expiry", body = ErrorBody),
        (status = 403, description = "The read rule denies it", body = ErrorBody),
        (status = 404, description = "No such file", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[post("/v1/sign/{bucket}/{path:.*}")]
pub(super) async fn sign(
    state: web::Data<AppState>,
    caller: Caller,
    req: HttpRequest,
    body: JsonBody<SignRequest>,
) -> Result<HttpResponse, Error> {
    let (bucket, path) = target(&req, "/v1/sign/")?;
    let expires_in = body.0.expires_in.unwrap_or(3600);
    let signed = state
        .files
        .sign(&caller.0, &bucket, &path, expires_in)
        .await?;
    Ok(HttpResponse::Ok().json(SignedUrlBody::absolute(&req, signed)))
}

/// Set a bucket's access rules, size limit and allowed types.
#[utoipa::path(
    tag = "admin",
    params(("bucket" = String, Path, description = "Bucket name")),
    request_body = BucketConfig,
    responses(
        (status = 200, description = "The stored config", body = BucketInfo),
        (status = 400, description = "A rule does not parse, or a limit is invalid", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/buckets/{bucket}")]
pub(super) async fn put_bucket(
    state: web::Data<AppState>,
    caller: Caller,
    bucket: web::Path<String>,
    body: JsonBody<BucketConfig>,
) -> Result<HttpResponse, Error> {
    let info = state.files.configure(&caller.0, &bucket, body.0).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// A bucket's stored config.
#[utoipa::path(
    tag = "admin",
    params(("bucket" = String, Path, description = "Bucket name")),
    responses(
        (status = 200, description = "The config", body = BucketInfo),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No config was set", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/buckets/{bucket}")]
pub(super) async fn get_bucket(
    state: web::Data<AppState>,
    caller: Caller,
    bucket: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.files.bucket_config(&caller.0, &bucket).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BucketList {
    items: Vec<BucketInfo>,
}

/// Every bucket that has a config.
#[utoipa::path(
    tag = "admin",
    responses(
        (status = 200, description = "The configs", body = BucketList),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/buckets")]
pub(super) async fn list_buckets(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.files.buckets(&caller.0).await?;
    Ok(HttpResponse::Ok().json(BucketList { items }))
}
