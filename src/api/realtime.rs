//! `GET /v1/realtime` (one stream per subscription) and `/v1/realtime/connection` (one
//! stream for many): Server-Sent Events.

use super::error::ErrorBody;
use super::extract::{bearer, body_as, client_ip, Caller, JsonBody};
use super::AppState;
use crate::error::Error;
use crate::realtime::{Applied, ConnectRequest, SubscribeRequest, Subscription, SubscriptionSpec};
use actix_web::http::header;
use actix_web::{delete, get, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RealtimeQuery {
    /// Comma list of topics: a collection (`posts`, every document in it) or one document
    /// (`posts/01JDX3...`), e.g. `posts,comments/abc`. Admins may use `*`: every collection's
    /// changes (not counted against the topic limit).
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
    let token = stream_token(&req, query.access_token.as_deref())?;
    let (who, expires_at) = state.auth.authenticate_until(token).await?;
    let last_event_id = last_event_id(&req, query.last_event_id.as_deref())?;
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
    Ok(event_stream(subscription))
}

/// The token of a stream request: the `Authorization` header, or `access_token`.
fn stream_token<'a>(
    req: &'a HttpRequest,
    query: Option<&'a str>,
) -> Result<Option<&'a str>, Error> {
    Ok(match bearer(req)? {
        Some(token) => Some(token),
        None => query.filter(|t| !t.is_empty()),
    })
}

/// `Last-Event-ID` (the header, else the query parameter).
fn last_event_id(req: &HttpRequest, query: Option<&str>) -> Result<Option<u64>, Error> {
    let bad_id = || Error::bad_request("Last-Event-ID must be the id of an event");
    match req.headers().get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| bad_id())?),
        None => query,
    }
    .map(str::trim)
    .filter(|v| !v.is_empty())
    .map(|v| v.parse::<u64>().map_err(|_| bad_id()))
    .transpose()
}

/// A subscription as a streamed `text/event-stream` response.
fn event_stream(subscription: Subscription) -> HttpResponse {
    sse(futures_util::stream::unfold(
        subscription,
        |mut sub| async move {
            let bytes = sub.next().await?;
            Some((Ok::<_, Infallible>(bytes), sub))
        },
    ))
}

/// A `text/event-stream` response of `stream`.
pub(super) fn sse(
    stream: impl futures_util::Stream<Item = Result<bytes::Bytes, Infallible>> + 'static,
) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx buffers responses unless told not to.
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ConnectQuery {
    /// The subscriptions to start with, as a JSON array of `{"name", "subscribe", "filter"}`
    /// (a reconnecting client sends every one it holds, with `Last-Event-ID`).
    subscriptions: Option<String>,
    /// The access token, for clients that cannot set headers. Never logged.
    access_token: Option<String>,
    /// Resume after this event, like the `Last-Event-ID` header (the header wins).
    last_event_id: Option<String>,
}

/// Open a connection: one event stream for any number of subscriptions, added and removed
/// while it stays open (`PUT`/`DELETE /v1/realtime/connection/{connection}/subscriptions/{name}`).
///
/// The first event, `connected`, carries `{"connection": id}`. Change events are those of
/// `GET /v1/realtime`, with `subscriptions` in `data` naming the subscriptions each matched.
/// A subscription change is confirmed on the stream, in order with the changes:
/// `subscribed` with `{"subscription", "seq"}` (live after that sequence) or `unsubscribed`.
/// `ready`, `reset`, `close` and heartbeats are as on a single stream; one `Last-Event-ID`
/// resumes every subscription the reconnecting client sends.
#[utoipa::path(
    tag = "realtime",
    params(
        ConnectQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        (status = 400, description = "Bad subscriptions or Last-Event-ID", body = ErrorBody),
        (status = 401, description = "Invalid token", body = ErrorBody),
        (status = 403, description = "A read rule denies the caller a subscription's collection", body = ErrorBody),
        (status = 429, description = "Too many open streams from this client; see Retry-After", body = ErrorBody),
        (status = 503, description = "Too many subscribers, or shutting down", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[get("/v1/realtime/connection")]
pub(super) async fn connect(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<ConnectQuery>,
) -> Result<HttpResponse, Error> {
    let token = stream_token(&req, query.access_token.as_deref())?;
    let (who, expires_at) = state.auth.authenticate_until(token).await?;
    let subscriptions: Vec<SubscriptionSpec> = match query.subscriptions.as_deref() {
        None | Some("") => Vec::new(),
        Some(json) => {
            let value: serde_json::Value = serde_json::from_str(json).map_err(|e| {
                Error::bad_request(format!("subscriptions must be a JSON array: {e}"))
            })?;
            body_as(&value)?
        }
    };
    let client = client_ip(&req, &state.config.http.trusted_proxies);
    let subscription = state
        .realtime
        .connect(
            who,
            ConnectRequest {
                subscriptions: &subscriptions,
                last_event_id: last_event_id(&req, query.last_event_id.as_deref())?,
                expires_at,
                client: &client,
            },
        )
        .await?;
    Ok(event_stream(subscription))
}

/// A subscription to add to a connection.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SubscriptionBody {
    /// Topics: `posts`, `posts/ID`, comma-separated; `*` (every collection) for admins.
    subscribe: String,
    /// A filter over the envelope, as on a single stream.
    #[serde(default)]
    filter: Option<String>,
}

/// Whether a subscription change took effect on this node.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ControlResult {
    /// `true`: this node holds the stream and it has confirmed the change; `false`: passed on
    /// to the node of the cluster that holds it, whose stream confirms it.
    applied: bool,
}

fn control_response(applied: Applied) -> HttpResponse {
    match applied {
        Applied::Here => HttpResponse::Ok().json(ControlResult { applied: true }),
        Applied::Forwarded => HttpResponse::Accepted().json(ControlResult { applied: false }),
    }
}

/// Add (or replace) a named subscription of an open connection, as the principal that opened
/// it. The stream confirms it with a `subscribed` event.
#[utoipa::path(
    tag = "realtime",
    params(
        ("connection" = String, Path, description = "The id of the `connected` event"),
        ("name" = String, Path, description = "The subscription's name, `[A-Za-z0-9_-]{1,64}`"),
    ),
    request_body = SubscriptionBody,
    responses(
        (status = 200, description = "Applied; the stream has confirmed it", body = ControlResult),
        (status = 202, description = "Passed on to the node holding the stream", body = ControlResult),
        (status = 400, description = "Bad name, topics or filter, or too many subscriptions", body = ErrorBody),
        (status = 403, description = "A read rule denies the caller a collection", body = ErrorBody),
        (status = 404, description = "No such connection of the caller's", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[put("/v1/realtime/connection/{connection}/subscriptions/{name}")]
pub(super) async fn add_subscription(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
    body: JsonBody<SubscriptionBody>,
) -> Result<HttpResponse, Error> {
    let (connection, name) = path.into_inner();
    let spec = (body.0.subscribe.as_str(), body.0.filter.as_deref());
    let applied = state
        .realtime
        .control(&caller.0, &connection, &name, Some(spec))
        .await?;
    Ok(control_response(applied))
}

/// Remove a named subscription of an open connection. The stream confirms it with an
/// `unsubscribed` event.
#[utoipa::path(
    tag = "realtime",
    params(
        ("connection" = String, Path, description = "The id of the `connected` event"),
        ("name" = String, Path, description = "The subscription's name"),
    ),
    responses(
        (status = 200, description = "Applied; the stream has confirmed it", body = ControlResult),
        (status = 202, description = "Passed on to the node holding the stream", body = ControlResult),
        (status = 400, description = "Bad name", body = ErrorBody),
        (status = 404, description = "No such connection of the caller's", body = ErrorBody),
    ),
    security((), ("bearer" = []))
)]
#[delete("/v1/realtime/connection/{connection}/subscriptions/{name}")]
pub(super) async fn remove_subscription(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, Error> {
    let (connection, name) = path.into_inner();
    let applied = state
        .realtime
        .control(&caller.0, &connection, &name, None)
        .await?;
    Ok(control_response(applied))
}
