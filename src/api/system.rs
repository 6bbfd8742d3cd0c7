//! Health, metrics and the OpenAPI document.

use super::error::ErrorBody;
use super::extract::bearer;
use super::AppState;
use crate::error::Error;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;
use std::time::Duration;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// `ok`, or `unavailable` when the storage does not answer.
    status: &'static str,
    /// The server's version.
    version: &'static str,
    /// The document store.
    storage: Backend,
    /// Where file bytes are kept.
    files: Backend,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Backend {
    /// `sled` (embedded) or `postgres` for the storage; `local` or `s3` for files.
    backend: &'static str,
    ok: bool,
    /// Why it is not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// How long the health check waits for the storage.
const STORAGE_CHECK: Duration = Duration::from_secs(2);

/// Health: whether this node can serve, with the state of its storage and its file storage
/// (a cheap read of each, answered within two seconds). A load balancer takes a node out on
/// `503`. No auth.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Up, storage answering", body = Health),
        (status = 503, description = "Up, but the storage does not answer; see Retry-After", body = Health),
    )
)]
#[get("/v1/health")]
pub(super) async fn health(state: web::Data<AppState>) -> HttpResponse {
    let (storage, files) = futures_util::join!(
        state.docs.check_storage(STORAGE_CHECK),
        state.files.check_storage(STORAGE_CHECK)
    );
    let ok = storage.1.is_ok() && files.1.is_ok();
    let backend = |(backend, checked): (&'static str, Result<(), String>)| Backend {
        backend,
        ok: checked.is_ok(),
        error: checked.err(),
    };
    let health = Health {
        status: if ok { "ok" } else { "unavailable" },
        version: env!("CARGO_PKG_VERSION"),
        storage: backend(storage),
        files: backend(files),
    };
    if ok {
        HttpResponse::Ok().json(health)
    } else {
        HttpResponse::ServiceUnavailable()
            .insert_header((actix_web::http::header::RETRY_AFTER, "1"))
            .json(health)
    }
}

/// The OpenAPI 3.1 document of this API, generated from the code, with the JSON Schema of each
/// collection that has one as the component `CollectionData_<collection>`.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
#[get("/v1/openapi.json")]
pub(super) async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    let schemas = state.docs.schemas();
    let body = if schemas.is_empty() {
        state.openapi_json.clone()
    } else {
        web::Bytes::from(with_collection_schemas(&state.openapi_json, schemas))
    };
    HttpResponse::Ok()
        .content_type("application/json")
        .body(body)
}

/// The component name of a collection's data schema in the served document.
fn component_name(collection: &str) -> String {
    format!("CollectionData_{collection}")
}

/// The API document with each collection's JSON Schema added as the component
/// `CollectionData_<collection>` (its references rewritten to point inside it), so that
/// generators see the shape of every collection that has one. The committed document
/// (`emberbase openapi`) stays the same for every server.
fn with_collection_schemas(document: &[u8], schemas: Vec<(String, Value)>) -> Vec<u8> {
    let Ok(mut document) = serde_json::from_slice::<Value>(document) else {
        return document.to_vec();
    };
    if let Some(components) = document
        .pointer_mut("/components/schemas")
        .and_then(Value::as_object_mut)
    {
        for (collection, mut schema) in schemas {
            let name = component_name(&collection);
            rebase_refs(&mut schema, &format!("#/components/schemas/{name}"));
            components.insert(name, schema);
        }
    }
    serde_json::to_vec_pretty(&document).unwrap_or_default()
}

/// Rewrites the references of a schema that point inside it (`#...`) to point inside it at
/// `base` in a larger document.
fn rebase_refs(schema: &mut Value, base: &str) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map.iter_mut() {
                match value {
                    Value::String(target) if key == "$ref" && target.starts_with('#') => {
                        *target = format!("{base}{}", &target[1..]);
                    }
                    other => rebase_refs(other, base),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| rebase_refs(item, base)),
        _ => {}
    }
}

/// Prometheus metrics. Needs an admin token or the service key unless `metrics.public`.
#[utoipa::path(
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/metrics")]
pub(super) async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, Error> {
    if !state.config.metrics.public {
        let who = state.auth.authenticate(bearer(&req)?).await?;
        who.require_admin("read metrics")?;
    }
    match state.docs.store().stored_bytes().await {
        Ok(Some(bytes)) => state
            .metrics
            .store_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX)),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read how much the store takes"),
    }
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
