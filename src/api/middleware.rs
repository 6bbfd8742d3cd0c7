//! Request ids and trace context, one log line per request, and request metrics.

use super::extract::client_ip;
use super::AppState;
use crate::auth::{self, Device, MAX_USER_AGENT};
use crate::trace::{self, Kind, TraceContext};
use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::web;
use std::time::Instant;
use tracing::Instrument;

pub(super) const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C Trace Context header a caller continues its trace with.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The request's own span, answered so that a caller without a trace learns the one made for
/// it (W3C Trace Context Level 2).
pub(super) const TRACERESPONSE: HeaderName = HeaderName::from_static("traceresponse");

/// A client's request id is kept if it is short and plain; otherwise a new one is made.
fn request_id(req: &ServiceRequest) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(str::to_owned)
        .unwrap_or_else(|| ulid::Ulid::new().to_string())
}

/// A request method as a metric label: one of a fixed set, so that made-up methods cannot add
/// label values (each would be a new time series, kept for the life of the process).
fn method_label(method: &actix_web::http::Method) -> &'static str {
    use actix_web::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Logs, counts and traces every request. The log has the path without its query string, so
/// that a token passed as a query parameter never reaches the log. The request runs with its
/// span's trace context as the current one (`trace::current`), which every write it makes
/// records; an invalid `traceparent` starts a new trace, as the specification asks.
pub(super) async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request_id(&req);
    let method_label = method_label(req.method());
    // The log line's method and path are copied only when the line will be written.
    let logged = tracing::enabled!(tracing::Level::INFO)
        .then(|| (req.method().to_string(), req.path().to_string()));
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let parent = req
        .headers()
        .get(&TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let mut trace_span = match &state {
        Some(state) => state.tracer.span("HTTP", Kind::Server, parent),
        None => trace::Tracer::ids_only().span("HTTP", Kind::Server, parent),
    };
    let context = trace_span.context();
    let span = tracing::info_span!("request", request_id = %id, trace_id = %context.trace_id());
    // Requests that may sign in record where they come from with the login (its sessions).
    let device = req.path().starts_with("/v1/auth/").then(|| Device {
        user_agent: req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            // `to_str` passed only visible ASCII, so any length is a character boundary.
            .map(|ua| ua.get(..MAX_USER_AGENT).unwrap_or(ua).to_string()),
        ip: state
            .as_ref()
            .map(|s| client_ip(req.request(), &s.config.http.trusted_proxies)),
    });
    let work = next.call(req).instrument(span.clone());
    let mut res = match device {
        Some(device) => trace::scope(context, auth::with_device(device, work)).await?,
        None => trace::scope(context, work).await?,
    };
    let status = res.status();
    // A documented route is named by the document's pattern, from the route table; another
    // (the console, `/metrics`, an embedding program's) by actix, which matches the path again.
    let documented = state
        .as_ref()
        .and_then(|s| s.routes.pattern(res.request().path()));
    let route = match documented {
        Some(pattern) => std::borrow::Cow::Borrowed(pattern),
        None => std::borrow::Cow::Owned(
            res.request()
                .match_pattern()
                .unwrap_or_else(|| "unmatched".to_string()),
        ),
    };
    let elapsed = started.elapsed();
    if trace_span.recording() {
        trace_span.rename(format!("{method_label} {route}"));
        trace_span.set("http.request.method", method_label);
        trace_span.set("http.route", route.to_string());
        trace_span.set("url.path", res.request().path());
        trace_span.set("http.response.status_code", u32::from(status.as_u16()));
        trace_span.set("emberbase.request_id", id.clone());
        if status.is_server_error() {
            trace_span.fail(status.to_string());
        }
    }
    drop(trace_span);
    if let Some(state) = &state {
        state
            .metrics
            .http_requests
            .with_label_values(&[&*route, method_label, status.as_str()])
            .inc();
        state
            .metrics
            .http_duration
            .with_label_values(&[&*route])
            .observe(elapsed.as_secs_f64());
    }
    if let Some((method, path)) = logged {
        span.in_scope(|| {
            tracing::info!(
                method = %method,
                path = %path,
                status = status.as_u16(),
                micros = elapsed.as_micros() as u64,
                "request"
            )
        });
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(REQUEST_ID, value);
    }
    if let Ok(value) = HeaderValue::from_bytes(&context.encode()) {
        res.headers_mut().insert(TRACERESPONSE, value);
    }
    Ok(res)
}

/// Refuses a query parameter the endpoint does not take, before the handler runs (inside CORS,
/// so a browser can read the refusal).
pub(super) async fn refuse_unknown_query(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let refused = req.app_data::<web::Data<AppState>>().and_then(|state| {
        super::check_query(state, req.method(), req.path(), req.query_string()).err()
    });
    Ok(match refused {
        Some(err) => req.error_response(err).map_into_right_body(),
        None => next.call(req).await?.map_into_left_body(),
    })
}
