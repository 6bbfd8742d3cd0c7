//! Health, metrics and the OpenAPI document.

use super::error::ErrorBody;
use super::extract::bearer;
use super::AppState;
use crate::error::Error;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Serialize;

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Health {
    /// Always `ok` when the server answers.
    status: &'static str,
    /// The server's version.
    version: &'static str,
}

/// Liveness: answers whenever the server is up. No auth.
#[utoipa::path(tag = "operations", responses((status = 200, description = "Up", body = Health)))]
#[get("/v1/health")]
pub(super) async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

/// The OpenAPI 3.1 document of this API, generated from the code.
#[utoipa::path(
    tag = "operations",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object))
)]
#[get("/v1/openapi.json")]
pub(super) async fn openapi_json(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.openapi_json.clone())
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
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render()))
}
