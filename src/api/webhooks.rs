//! `/v1/admin/webhooks`: configure webhooks, rotate their secrets, read their delivery log and
//! messages, redeliver.

use super::error::ErrorBody;
use super::extract::{Caller, JsonBody};
use super::AppState;
use crate::error::Error;
use crate::webhooks::{
    WebhookDelivery, WebhookInfo, WebhookMessage, WebhookSpec, WebhookWithSecret,
};
use actix_web::{delete, get, post, put, web, HttpResponse};
use serde::{Deserialize, Serialize};

/// Create a webhook. Messages are queued from the next change on, in the same commit as the
/// change; the answer carries the signing secret, shown only here and when it is rotated.
#[utoipa::path(
    tag = "webhooks",
    request_body = WebhookSpec,
    responses(
        (status = 201, description = "Created, with its secret", body = WebhookWithSecret),
        (status = 400, description = "An invalid or refused URL, source, event, `when` or name", body = ErrorBody),
        (status = 409, description = "Another webhook has this name", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/webhooks")]
pub(super) async fn create_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    body: JsonBody<WebhookSpec>,
) -> Result<HttpResponse, Error> {
    let created = state.webhooks.create(&caller.0, body.0).await?;
    Ok(HttpResponse::Created().json(created))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct WebhookList {
    items: Vec<WebhookInfo>,
}

/// Every webhook, oldest first (never their secrets).
#[utoipa::path(
    tag = "webhooks",
    responses(
        (status = 200, description = "The webhooks", body = WebhookList),
        (status = 403, description = "Not an admin", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/webhooks")]
pub(super) async fn list_webhooks(
    state: web::Data<AppState>,
    caller: Caller,
) -> Result<HttpResponse, Error> {
    let items = state.webhooks.list(&caller.0).await?;
    Ok(HttpResponse::Ok().json(WebhookList { items }))
}

/// One webhook.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook", body = WebhookInfo),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/webhooks/{id}")]
pub(super) async fn get_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.webhooks.get(&caller.0, &id).await?))
}

/// Replace a webhook's configuration. Its secret, queue and log stay; messages already queued
/// go to the new URL.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    request_body = WebhookSpec,
    responses(
        (status = 200, description = "The webhook", body = WebhookInfo),
        (status = 400, description = "An invalid or refused URL, source, event, `when` or name", body = ErrorBody),
        (status = 409, description = "Another webhook has this name", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[put("/v1/admin/webhooks/{id}")]
pub(super) async fn update_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    body: JsonBody<WebhookSpec>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.webhooks.update(&caller.0, &id, body.0).await?))
}

/// Delete a webhook with its queued messages and delivery log.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[delete("/v1/admin/webhooks/{id}")]
pub(super) async fn delete_webhook(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    state.webhooks.delete(&caller.0, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Give a webhook a new signing secret. The previous one keeps signing too (a second
/// signature in `webhook-signature`) until `previous_secret_expires_at`
/// (`webhooks.rotation_grace_secs`), so a receiver can switch without rejecting a delivery.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id")),
    responses(
        (status = 200, description = "The webhook with its new secret", body = WebhookWithSecret),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/webhooks/{id}/rotate-secret")]
pub(super) async fn rotate_webhook_secret(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, Error> {
    Ok(HttpResponse::Ok().json(state.webhooks.rotate_secret(&caller.0, &id).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
pub(super) struct LogQuery {
    /// How many, 1 to 1000 (default 50).
    limit: Option<usize>,
    /// Only these: for deliveries `delivered`, `failed` or `dead`; for messages `pending`,
    /// `delivered` or `dead`.
    status: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct DeliveryList {
    items: Vec<WebhookDelivery>,
}

/// A webhook's delivery log, newest first: every attempt with its outcome, the receiver's
/// status and the first KiB of its answer, and its latency.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), LogQuery),
    responses(
        (status = 200, description = "Delivery attempts", body = DeliveryList),
        (status = 400, description = "An invalid limit or status", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/webhooks/{id}/deliveries")]
pub(super) async fn list_webhook_deliveries(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, Error> {
    let items = state
        .webhooks
        .deliveries(
            &caller.0,
            &id,
            query.status.as_deref(),
            query.limit.unwrap_or(50),
        )
        .await?;
    Ok(HttpResponse::Ok().json(DeliveryList { items }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct MessageList {
    items: Vec<WebhookMessage>,
}

/// A webhook's messages, newest first: `pending` ones still queued, then the `delivered` and
/// `dead` (dead-lettered) ones kept for redelivery, with their exact bodies.
#[utoipa::path(
    tag = "webhooks",
    params(("id" = String, Path, description = "Webhook id"), LogQuery),
    responses(
        (status = 200, description = "Messages", body = MessageList),
        (status = 400, description = "An invalid limit or status", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[get("/v1/admin/webhooks/{id}/messages")]
pub(super) async fn list_webhook_messages(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, Error> {
    let items = state
        .webhooks
        .messages(
            &caller.0,
            &id,
            query.status.as_deref(),
            query.limit.unwrap_or(50),
        )
        .await?;
    Ok(HttpResponse::Ok().json(MessageList { items }))
}

/// Send a kept (delivered or dead) message again, with the same `webhook-id` and body, for a
/// fresh series of attempts.
#[utoipa::path(
    tag = "webhooks",
    params(
        ("id" = String, Path, description = "Webhook id"),
        ("message_id" = String, Path, description = "Message id (`msg_...`)"),
    ),
    responses(
        (status = 202, description = "Queued again", body = WebhookMessage),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 404, description = "No such webhook, or the message is not kept (still queued, or pruned)", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
#[post("/v1/admin/webhooks/{id}/messages/{message_id}/redeliver")]
pub(super) async fn redeliver_webhook_message(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (id, message_id) = path.into_inner();
    let message = state
        .webhooks
        .redeliver(&caller.0, &id, &message_id)
        .await?;
    Ok(HttpResponse::Accepted().json(message))
}
