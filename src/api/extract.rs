//! Extractors: who is calling, `If-Match`, and JSON bodies read within the configured limits.

use super::AppState;
use crate::auth::Principal;
use crate::error::{Error, ErrorCode};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest};
use futures_util::future::{Either, LocalBoxFuture};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::future::{ready, Ready};

fn state(req: &HttpRequest) -> Result<&web::Data<AppState>, Error> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| Error::internal("application state missing"))
}

/// The bearer token of a request, if any. A malformed `Authorization` header is a `401`.
pub(super) fn bearer(req: &HttpRequest) -> Result<Option<&str>, Error> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| Error::unauthenticated("malformed Authorization header"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(Some(token.trim()))
        }
        _ => Err(Error::unauthenticated(
            "the Authorization header must be `Bearer <token>`",
        )),
    }
}

/// The caller of a request.
pub(super) struct Caller(pub Principal);

impl FromRequest for Caller {
    type Error = Error;
    type Future = Either<Ready<Result<Self, Error>>, LocalBoxFuture<'static, Result<Self, Error>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let found = state(req).and_then(|state| Ok((state.auth.clone(), bearer(req)?)));
        let (auth, token) = match found {
            Ok(found) => found,
            Err(e) => return Either::Left(ready(Err(e))),
        };
        // Anonymous callers and the service key are known at once; only a token reads its user.
        if let Some(known) = auth.without_lookup(token) {
            return Either::Left(ready(Ok(Caller(known))));
        }
        let token = token.map(str::to_owned);
        Either::Right(Box::pin(async move {
            Ok(Caller(auth.authenticate(token.as_deref()).await?))
        }))
    }
}

/// The `If-Match` header as a version: `"3"` (a strong entity tag) or, leniently, `3`.
pub(super) struct IfMatch(pub Option<u64>);

impl FromRequest for IfMatch {
    type Error = Error;
    type Future = Ready<Result<Self, Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(match req.headers().get(header::IF_MATCH) {
            None => Ok(IfMatch(None)),
            Some(value) => value
                .to_str()
                .ok()
                .map(|v| v.trim())
                .map(|v| {
                    v.strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .unwrap_or(v)
                })
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| IfMatch(Some(v)))
                .ok_or_else(|| {
                    Error::bad_request("If-Match must be a document version such as \"3\"")
                }),
        })
    }
}

/// Whether a `Content-Type` is JSON: `application/json` or any `application/*+json`.
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A JSON body of type `T`, read within `http.max_body_bytes` (refused on `Content-Length`
/// before reading, and counted while reading), with a JSON `Content-Type` (or none).
pub(super) struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self, Error>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = match state(req) {
            Ok(s) => s.config.http.max_body_bytes,
            Err(e) => return Box::pin(ready(Err(e))),
        };
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            if !ct.to_str().is_ok_and(is_json) {
                let err = Error::new(
                    ErrorCode::UnsupportedMediaType,
                    "the body must be JSON (Content-Type: application/json)",
                );
                super::refusal::leave_unread(req, payload.take());
                return Box::pin(ready(Err(err)));
            }
        }
        let too_large = move || {
            Error::new(
                ErrorCode::PayloadTooLarge,
                format!("the body is larger than {limit} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            super::refusal::leave_unread(req, payload.take());
            return Box::pin(ready(Err(too_large())));
        }
        let mut payload = payload.take();
        let req = req.clone();
        Box::pin(async move {
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk
                    .map_err(|e| Error::bad_request(format!("reading the body failed: {e}")))?;
                if body.len() + chunk.len() > limit {
                    super::refusal::leave_unread(&req, payload);
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            if body.is_empty() {
                return Err(Error::bad_request("the request body is empty; send JSON"));
            }
            parse_json(&body).map(JsonBody)
        })
    }
}

/// Parses JSON: bad syntax is `bad_request`, a body of the wrong shape `validation_failed`
/// (structs must be objects: see `strict_json`).
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        let message = e.to_string();
        if message.contains("recursion limit") {
            Error::validation("the JSON body is nested too deeply", "body")
        } else {
            Error::bad_request(format!("malformed JSON: {message}"))
        }
    })?;
    body_as(&value)
}

/// A parsed JSON body as `T`: a body of the wrong shape is `validation_failed`.
pub(super) fn body_as<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, Error> {
    super::strict_json::from_value(value)
        .map_err(|e| Error::new(ErrorCode::ValidationFailed, format!("invalid body: {e}")))
}

/// The client's IP address: the socket's peer, or, when the peer is a trusted proxy, the
/// nearest address in `X-Forwarded-For` that is not a trusted proxy.
pub(super) fn client_ip(req: &HttpRequest, trusted: &[std::net::IpAddr]) -> String {
    let Some(peer) = req.peer_addr().map(|a| a.ip()) else {
        return "unknown".into();
    };
    if !trusted.contains(&peer) {
        return peer.to_string();
    }
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    forwarded
        .split(',')
        .rev()
        .filter_map(|part| part.trim().parse::<std::net::IpAddr>().ok())
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
        .to_string()
}
