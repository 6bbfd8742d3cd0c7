//! `GET /v1/realtime`: Server-Sent Events.

use super::error::ErrorBody;
use super::extract::{bearer, client_ip};
use super::AppState;
use crate::error::Error;
use crate::realtime::SubscribeRequest;
use actix_web::http::header;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::convert::Infallible;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RealtimeQuery {
    /// Comma list of topics: a collection (`posts`, every document in it) or one document
    /// (`posts/01JDX3...`), e.g. `posts,comments/abc`.
    subscribe: Option<String>,
    /// A filter over the envelope, as in lists. An update is sent when the document matched it
    /// before or after the change, so a client sees a document leave its filter.
    filter: Option<String>,
    /// The access token, for clients that cannot set headers (`EventSource`). Never logged.
    access_token: Option<String>,
    /// Resume after this event, like the `Last-Event-ID` header (the header wins).
    last_event_id: Option<String>,
}

/// Subscribe to document changes as Server-Sent Events.
///
/// Each change the caller may read (the collection's read rule is checked per event, against
/// the envelope sent) is one event: `id: <sequence>`, `event: create|update|delete`,
/// `data: {"collection","id","doc"}`; on `delete`, `doc` is the envelope as it was.
///
/// Other events: `ready` (`id` is the sequence the stream is live from; sent once caught up),
/// `reset` (the events since `Last-Event-ID` are no longer retained: refetch, then carry on),
/// and a final `close` with `{"reason": "overflow"|"expired"|"shutdown", "message"}`: the
/// client fell too far behind, its access token expired, or the server is stopping. A
/// heartbeat comment (`: ping`) is sent on an idle stream. Reconnect with `Last-Event-ID` to
/// resume exactly after the last event seen, within the retention window.
#[utoipa::path(
    tag = "realtime",
    params(
        RealtimeQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad topic, filter or Last-Event-ID", body = ErrorBody),
        (status = 401, description = "Invalid token", body = ErrorBody),
        (status = 403, description = "The read rule of a collection denies the caller everything", body = ErrorBody),
        (status = 429, description = "Too many open streams from this client; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many subscribers, or shutting down", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/realtime")]
pub(super) async fn subscribe(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<RealtimeQuery>,
) -> Result<HttpResponse, Error> {
    let token = match bearer(&req)? {
        Some(token) => Some(token),
        None => query.access_token.as_deref().filter(|t| !t.is_empty()),
    };
    let (who, expires_at) = state.auth.authenticate_until(token).await?;
    let bad_id = || Error::bad_request("Last-Event-ID must be the id of an event");
    let last_event_id = match req.headers().get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| bad_id())?),
        None => query.last_event_id.as_deref(),
    }
    .map(str::trim)
    .filter(|v| !v.is_empty())
    .map(|v| v.parse::<u64>().map_err(|_| bad_id()))
    .transpose()?;
    let client = client_ip(&req, &state.config.http.trusted_proxies);
    let subscription = state
        .realtime
        .subscribe(
            who,
            SubscribeRequest {
                topics: query.subscribe.as_deref().unwrap_or_default(),
                filter: query.filter.as_deref(),
                last_event_id,
                expires_at,
                client: &client,
            },
        )
        .await?;
    let stream = futures_util::stream::unfold(subscription, |mut sub| async move {
        let bytes = sub.next().await?;
        Some((Ok::<_, Infallible>(bytes), sub))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx buffers responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream))
}
