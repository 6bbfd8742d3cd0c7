//! `/v1/admin/functions` (upload, config, list, get, delete, invocations, secrets) and
//! `/v1/functions/{name}` (HTTP calls).

use super::error::{from_actix, ErrorBody};
use super::extract::{Caller, JsonBody};
use super::files::Binary;
use super::AppState;
use crate::error::{Error, ErrorCode};
use crate::functions::{
    FunctionConfig, FunctionInfo, FunctionSecret, FunctionVersion, Invocation, Language,
    UsageReport,
};
use crate::model::SecretComparison;
use actix_web::http::header;
use actix_web::{delete, get, post, put, web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// What an upload answers.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Uploaded {
    name: String,
    sha256: String,
    size: u64,
    /// The new version, now active.
    version: u32,
}

/// Upload (or replace) a function: a WebAssembly module (guest ABI v1, see docs/functions.md),
/// or with `Content-Type: text/javascript` an ES module whose default export handles each
/// event. It is validated and compiled (JavaScript: loaded, its top-level code run) before this
/// returns, and becomes the next version, active at once; in-flight invocations finish on the
/// old one, which stays kept for a rollback.
#[utoipa::path(
    operation_id = "upload_function",
    tag = "functions",
    params(("name" = String, Path, description = "Function name, `[A-Za-z0-9_-]{1,64}`")),
    request_body(
        description = "The module (`application/wasm` by convention; any type but JavaScript's), or JavaScript source (`text/javascript` or `application/javascript`, UTF-8)",
        content(
            (Binary = "application/wasm"),
            (Binary = "application/octet-stream"),
            (String = "text/javascript")
        )
    ),
    responses(
        (status = 200, description = "Stored and compiled", body = Uploaded),
        (status = 400, description = "Not a valid module, or it breaks the ABI; JavaScript that does not load (the message gives the line and column of a syntax error); the message says how", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 413, description = "Over the module size limit", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/functions/{name}")]
pub(super) async fn upload(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, Error> {
    let limit = state.config.functions.max_module_bytes;
    let too_large = || {
        Error::new(
            ErrorCode::PayloadTooLarge,
            format!("the module is over the limit of {limit} bytes"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        super::refusal::leave_unread(&req, payload.into_inner());
        return Err(too_large());
    }
    let mut wasm = Vec::new();
    while let Some(piece) = payload.next().await {
        let piece = piece.map_err(|e| from_actix(&e.into()))?;
        if wasm.len() + piece.len() > limit {
            super::refusal::leave_unread(&req, payload.into_inner());
            return Err(too_large());
        }
        wasm.extend_from_slice(&piece);
    }
    let javascript = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| v == "text/javascript" || v == "application/javascript");
    let declared = if javascript {
        Language::JavaScript
    } else {
        Language::Wasm
    };
    let info = state
        .functions
        .upload_source(&caller.0, &name, wasm, declared)
        .await?;
    Ok(HttpResponse::Ok().json(Uploaded {
        name: info.name,
        sha256: info.sha256,
        size: info.size,
        version: info.version,
    }))
}

/// Set a function's triggers and limits.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body = FunctionConfig,
    responses(
        (status = 200, description = "The function with its new config", body = FunctionInfo),
        (status = 400, description = "An invalid trigger, cron, name or number", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/functions/{name}/config")]
pub(super) async fn configure(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: JsonBody<FunctionConfig>,
) -> Result<HttpResponse, Error> {
    let info = state.functions.configure(&caller.0, &name, body.0).await?;
    Ok(HttpResponse::Ok().json(info))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct FunctionList {
    items: Vec<FunctionInfo>,
}

/// Every function.
#[utoipa::path(
    tag = "functions",
    responses(
        (status = 200, description = "The functions", body = FunctionList),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions")]
pub(super) async fn list(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.functions.list(&caller.0)?;
    Ok(HttpResponse::Ok().json(FunctionList { items }))
}

/// One function.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "The function", body = FunctionInfo),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}")]
pub(super) async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.functions.get(&caller.0, &name)?))
}

/// A secret's value.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretValue {
    /// At most 8 KiB. Sealed before it is stored; never shown again.
    value: String,
}

/// The names of a function's secrets, never their values.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "The secrets' names", body = [FunctionSecret]),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}/secrets")]
pub(super) async fn list_secrets(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let secrets = state.functions.list_secrets(&caller.0, &name).await?;
    Ok(HttpResponse::Ok().json(secrets))
}

/// Set a secret of a function, which its guest reads with the `env` host operation. The value
/// is sealed at rest (AES-256-GCM, with a key outside the store), never listed, and replaced
/// by `[secret]` in what a run that read it logs, returns or records.
#[utoipa::path(
    tag = "functions",
    params(
        ("name" = String, Path, description = "Function name"),
        ("secret" = String, Path, description = "Secret name: A-Z, 0-9 and _, not starting with a digit"),
    ),
    request_body = SecretValue,
    responses(
        (status = 200, description = "Set", body = FunctionSecret),
        (status = 400, description = "A bad name, a value over 8 KiB, or a 101st secret", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/functions/{name}/secrets/{secret}")]
pub(super) async fn put_secret(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: JsonBody<SecretValue>,
) -> Result<HttpResponse, Error> {
    let (name, secret) = path.into_inner();
    let set = state
        .functions
        .put_secret(&caller.0, &name, &secret, &body.0.value)
        .await?;
    Ok(HttpResponse::Ok().json(set))
}

/// Values to compare with a function's stored secrets.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SecretValues {
    /// Secret name to the value to compare (at most 100).
    values: BTreeMap<String, String>,
}

/// Say, for each given value, whether it is the one stored under its name, without showing
/// any stored value: the server compares a keyed hash of the value with the one it keeps
/// beside the sealed secret (what `emberbase plan` uses to tell a changed secret).
#[utoipa::path(
    operation_id = "compare_function_secrets",
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body = SecretValues,
    responses(
        (status = 200, description = "Each name with `same`, `different` or `absent`", body = BTreeMap<String, SecretComparison>),
        (status = 400, description = "A bad secret name, or more than 100 values", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/functions/{name}/secrets/compare")]
pub(super) async fn compare_secrets(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: JsonBody<SecretValues>,
) -> Result<HttpResponse, Error> {
    if body.0.values.len() > 100 {
        return Err(Error::validation(
            "compare at most 100 values at once",
            "values",
        ));
    }
    let compared = state
        .functions
        .compare_secrets(&caller.0, &name, &body.0.values)
        .await?;
    Ok(HttpResponse::Ok().json(compared))
}

/// Remove a secret of a function.
#[utoipa::path(
    tag = "functions",
    params(
        ("name" = String, Path, description = "Function name"),
        ("secret" = String, Path, description = "Secret name"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "The function has no such secret", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/functions/{name}/secrets/{secret}")]
pub(super) async fn delete_secret(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (name, secret) = path.into_inner();
    state
        .functions
        .delete_secret(&caller.0, &name, &secret)
        .await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Download the code the function runs (its active version), as uploaded: the module
/// (`application/wasm`) or the JavaScript source (`text/javascript`). `ETag` is its SHA-256.
#[utoipa::path(
    operation_id = "function_source",
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "The code", content(
            (Binary = "application/wasm"),
            (String = "text/javascript")
        )),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}/source")]
pub(super) async fn source(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let (info, bytes) = state.functions.source(&caller.0, &name).await?;
    let content_type = match info.language {
        Language::JavaScript => "text/javascript; charset=utf-8",
        Language::Wasm => "application/wasm",
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::ETAG, format!("\"{}\"", info.sha256)))
        .insert_header(("x-function-version", info.version.to_string()))
        .body(bytes))
}

/// Delete a function, its pending events, its invocation log and its secrets.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/functions/{name}")]
pub(super) async fn delete(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    state.functions.delete(&caller.0, &name).await?;
    Ok(HttpResponse::NoContent().finish())
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct InvocationQuery {
    /// How many, 1 to 1000 (default 50).
    limit: Option<usize>,
    /// Only records with this status: `ok`, `error`, `timeout`, `dead` or `dropped`.
    status: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct InvocationList {
    items: Vec<Invocation>,
}

/// The latest invocations of a function, newest first; with `status`, the latest with it.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name"), InvocationQuery),
    responses(
        (status = 200, description = "Invocations", body = InvocationList),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}/invocations")]
pub(super) async fn invocations(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<InvocationQuery>,
) -> Result<HttpResponse, Error> {
    let items = state
        .functions
        .invocations(
            &caller.0,
            &name,
            query.limit.unwrap_or(50),
            query.status.as_deref(),
        )
        .await?;
    Ok(HttpResponse::Ok().json(InvocationList { items }))
}

/// Follow a function's invocation log live, as Server-Sent Events: one `invocation` event per
/// new record (status, duration, error, the version that ran and its log lines), whichever
/// node ran it, with the record's id as the event id; `Last-Event-ID` resumes after a record.
#[utoipa::path(
    tag = "functions",
    params(
        ("name" = String, Path, description = "Function name"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this record id"),
    ),
    responses(
        (status = 200, description = "The stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "A Last-Event-ID that is not a record id", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}/logs")]
pub(super) async fn logs(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    let after = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty());
    let tail = state.functions.tail(&caller.0, &name, after).await?;
    Ok(super::realtime::sse(futures_util::stream::unfold(
        tail,
        |mut tail| async move {
            let bytes = tail.next().await?;
            Some((Ok::<_, std::convert::Infallible>(bytes), tail))
        },
    )))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct UsageQuery {
    /// How many days back, 1 to 366 (default 30).
    days: Option<usize>,
}

/// What a function used per UTC day (runs, failures, fuel, wall and CPU time, host calls),
/// newest first, with its daily quota and whether the quota pauses it now.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name"), UsageQuery),
    responses(
        (status = 200, description = "Usage", body = UsageReport),
        (status = 400, description = "An invalid number of days", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}/usage")]
pub(super) async fn usage(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    query: web::Query<UsageQuery>,
) -> Result<HttpResponse, Error> {
    let report = state
        .functions
        .usage(&caller.0, &name, query.days.unwrap_or(30))
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct VersionList {
    items: Vec<FunctionVersion>,
}

/// A function's kept versions, newest first (`functions.versions_kept`; the active one is
/// always kept). Each upload is a new version.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    responses(
        (status = 200, description = "Versions", body = VersionList),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/functions/{name}/versions")]
pub(super) async fn versions(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
) -> Result<HttpResponse, Error> {
    let items = state.functions.versions(&caller.0, &name).await?;
    Ok(HttpResponse::Ok().json(VersionList { items }))
}

/// Make a kept version the active one (a rollback, or a roll forward): events dispatched and
/// calls made from now on run its module, and their records name it. The config stays as it
/// is.
#[utoipa::path(
    tag = "functions",
    params(
        ("name" = String, Path, description = "Function name"),
        ("version" = u32, Path, description = "A kept version"),
    ),
    responses(
        (status = 200, description = "The function, running that version", body = FunctionInfo),
        (status = 400, description = "The module no longer fits the config (memory)", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function or kept version", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/functions/{name}/versions/{version}/activate")]
pub(super) async fn activate(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, u32)>,
) -> Result<HttpResponse, Error> {
    let (name, version) = path.into_inner();
    let info = state.functions.activate(&caller.0, &name, version).await?;
    Ok(HttpResponse::Ok().json(info))
}

/// What to replay.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayRequest {
    /// The `event_id` of a recorded trigger or schedule event (one still in the invocation
    /// log, which keeps each event's payload).
    event_id: String,
    /// A kept version to run it on; the active one when absent.
    #[serde(default)]
    version: Option<u32>,
}

/// Run a recorded event again, with the same `event_id` and payload (`before`/`after` exactly
/// as they were), on the active or a chosen version: after fixing the bug that killed it, or to
/// debug. Waits for the run; its writes are real. The run is recorded with `replay: true`.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "The run's invocation record (its status says how it went)", body = Invocation),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such function, version or recorded event", body = ErrorBody),
        (status = 503, description = "Every function worker is busy", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/functions/{name}/replay")]
pub(super) async fn replay(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: JsonBody<ReplayRequest>,
) -> Result<HttpResponse, Error> {
    let ReplayRequest { event_id, version } = body.0;
    let record = state
        .functions
        .replay(&caller.0, &name, &event_id, version)
        .await?;
    Ok(HttpResponse::Ok().json(record))
}

/// Call a function that has an `http` trigger. The result `{"status", "body"}` is passed
/// through as the function wrote it; a result without `status` is the body of a `200`.
#[utoipa::path(
    tag = "functions",
    params(("name" = String, Path, description = "Function name")),
    request_body(content = Object, description = "Any JSON; the function sees it as `body`"),
    responses(
        (status = 200, description = "The function's result (or the status it chose)", body = Object),
        (status = 404, description = "No function with an http trigger by that name", body = ErrorBody),
        (status = 429, description = "The function's daily quota is spent", body = ErrorBody),
        (status = 502, description = "The function trapped, timed out, ran out of fuel or memory", body = ErrorBody),
        (status = 503, description = "Every function worker is busy", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[post("/v1/functions/{name}")]
pub(super) async fn call(
    state: web::Data<AppState>,
    caller: Caller,
    name: web::Path<String>,
    body: JsonBody<Value>,
) -> Result<HttpResponse, Error> {
    let result = state.functions.call_http(&caller.0, &name, body.0).await?;
    let status = actix_web::http::StatusCode::from_u16(result.status)
        .unwrap_or(actix_web::http::StatusCode::OK);
    Ok(HttpResponse::build(status).json(result.body))
}
