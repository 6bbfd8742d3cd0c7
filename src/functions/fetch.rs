//! The `fetch` host operation: an HTTP request from a guest, only to the hosts on its function's
//! allow-list (`config.fetch.allow`), through the server's outbound policy (no private address
//! unless a host is named exactly, checked after DNS resolution and again on every redirect),
//! with a response-size cap and a timeout that never outlasts the invocation.

use super::error::invalid;
use super::records::FetchConfig;
use super::{Functions, Result};
use crate::error::{Error, ErrorCode};
use crate::outbound::{self, Policy, Refused};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A response body read by default, and at most, in bytes.
pub(super) const DEFAULT_MAX_RESPONSE_BYTES: u64 = 1 << 20;
pub(super) const MAX_RESPONSE_BYTES: u64 = 16 << 20;
/// One request's time by default, in milliseconds.
const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Redirects followed, each checked like the first URL.
const REDIRECTS: usize = 5;
/// The largest request body a guest may send.
const MAX_REQUEST_BYTES: usize = 1 << 20;
const MAX_HEADERS: usize = 64;
/// Headers the client sets itself, from the URL and the body.
const RESERVED_HEADERS: [&str; 6] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
];

/// A function's fetch access: a client bound to its allow-list, and its limits.
pub(super) struct Access {
    config: FetchConfig,
    policy: Policy,
    client: reqwest::Client,
}

/// Checks a function's fetch settings, naming the field at fault.
pub(super) fn check(config: &FetchConfig) -> Result<()> {
    if config.allow.len() > 100 {
        return Err(invalid(
            "fetch.allow takes at most 100 hosts",
            "fetch.allow",
        ));
    }
    Policy::only(&config.allow).map_err(|e| invalid(format!("fetch.allow: {e}"), "fetch.allow"))?;
    if config
        .max_response_bytes
        .is_some_and(|n| !(1..=MAX_RESPONSE_BYTES).contains(&n))
    {
        return Err(invalid(
            format!("fetch.max_response_bytes must be 1 to {MAX_RESPONSE_BYTES}"),
            "fetch.max_response_bytes",
        ));
    }
    if config
        .timeout_ms
        .is_some_and(|t| !(1..=600_000).contains(&t))
    {
        return Err(invalid(
            "fetch.timeout_ms must be 1 to 600000",
            "fetch.timeout_ms",
        ));
    }
    Ok(())
}

impl Functions {
    /// The fetch access of a function with `config`, built once per configuration.
    pub(super) fn fetch_access(&self, name: &str, config: &FetchConfig) -> Option<Arc<Access>> {
        let mut cache = self.inner.fetchers.lock().ok()?;
        if let Some(access) = cache.get(name).filter(|a| &a.config == config) {
            return Some(access.clone());
        }
        let policy = Policy::only(&config.allow).ok()?;
        let access = Arc::new(Access {
            config: config.clone(),
            // Each request sets its own timeout; this one only bounds a client left waiting.
            client: policy.client(Duration::from_secs(600), REDIRECTS),
            policy,
        });
        cache.insert(name.to_string(), access.clone());
        Some(access)
    }

    /// Forgets the fetch access of a function that is gone.
    pub(super) fn forget_fetch_access(&self, name: &str) {
        if let Ok(mut cache) = self.inner.fetchers.lock() {
            cache.remove(name);
        }
    }
}

fn bad(message: impl Into<String>) -> Error {
    Error::bad_request(message)
}

/// Whether a request failed on the outbound policy, and why.
fn refusal(e: &reqwest::Error) -> Option<String> {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<Refused>() {
            return Some(refused.to_string());
        }
        source = cause.source();
    }
    None
}

/// The reply's headers: lower-case names, repeated ones joined with `, `.
fn headers_of(response: &reqwest::Response) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in response.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match out.get_mut(name.as_str()) {
            Some(Value::String(joined)) => {
                joined.push_str(", ");
                joined.push_str(&value);
            }
            _ => {
                out.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    out
}

impl Access {
    /// `{"op": "fetch", "url", "method"?, "headers"?, "body"?}` → `{"status", "headers", "body"}`
    /// (or `"body_base64"` when the body is not UTF-8), with the bytes sent and received.
    /// The request gives up at its timeout or at `deadline`, whichever comes first.
    pub(super) async fn fetch(
        &self,
        request: &Value,
        deadline: Instant,
    ) -> std::result::Result<(Value, u64), Error> {
        let url = request
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("`url` must be a string"))?;
        let url = reqwest::Url::parse(url).map_err(|e| bad(format!("invalid url: {e}")))?;
        let method = match request.get("method") {
            None | Some(Value::Null) => reqwest::Method::GET,
            Some(Value::String(m)) => match m.to_ascii_uppercase().as_str() {
                "GET" => reqwest::Method::GET,
                "HEAD" => reqwest::Method::HEAD,
                "POST" => reqwest::Method::POST,
                "PUT" => reqwest::Method::PUT,
                "PATCH" => reqwest::Method::PATCH,
                "DELETE" => reqwest::Method::DELETE,
                "OPTIONS" => reqwest::Method::OPTIONS,
                _ => return Err(bad(format!("method {m:?} is not supported"))),
            },
            Some(_) => return Err(bad("`method` must be a string")),
        };
        let policy_refusal = |why: String| Error::new(ErrorCode::Forbidden, why);
        self.policy
            .check(&url)
            .map_err(|r| policy_refusal(r.to_string()))?;
        let mut builder = self.client.request(method, url.clone());
        match request.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(headers)) => {
                if headers.len() > MAX_HEADERS {
                    return Err(bad(format!("at most {MAX_HEADERS} headers")));
                }
                for (name, value) in headers {
                    let Some(value) = value.as_str() else {
                        return Err(bad(format!("header {name:?} must be a string")));
                    };
                    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                        return Err(bad(format!("header {name:?} is set by the server")));
                    }
                    let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| bad(format!("invalid header name {name:?}")))?;
                    let value = reqwest::header::HeaderValue::from_str(value)
                        .map_err(|_| bad(format!("invalid value for header {name}")))?;
                    builder = builder.header(name, value);
                }
            }
            Some(_) => return Err(bad("`headers` must be an object of strings")),
        }
        let mut sent = 0u64;
        match request.get("body") {
            None | Some(Value::Null) => {}
            Some(Value::String(body)) => {
                if body.len() > MAX_REQUEST_BYTES {
                    return Err(Error::new(
                        ErrorCode::PayloadTooLarge,
                        format!("a request body is at most {MAX_REQUEST_BYTES} bytes"),
                    ));
                }
                sent = body.len() as u64;
                builder = builder.body(body.clone());
            }
            Some(_) => return Err(bad("`body` must be a string")),
        }
        let wanted = Duration::from_millis(self.config.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::new(
                ErrorCode::Unavailable,
                "the invocation has no time left for a request",
            ));
        }
        // Leave the guest a tenth of what is left (at most 50 ms) to hear the answer and act on
        // it before the invocation's own deadline.
        let margin = (left / 10).min(Duration::from_millis(50));
        let timeout = wanted.min(left - margin);
        let timed_out = || {
            Error::new(
                ErrorCode::Unavailable,
                format!(
                    "{} did not answer within {} ms",
                    url.host_str().unwrap_or_default(),
                    timeout.as_millis()
                ),
            )
        };
        let failed = |e: reqwest::Error| {
            if let Some(why) = refusal(&e) {
                policy_refusal(why)
            } else if e.is_timeout() {
                timed_out()
            } else {
                Error::new(
                    ErrorCode::Unavailable,
                    format!("the request failed: {}", outbound::describe(&e)),
                )
            }
        };
        let limit = self
            .config
            .max_response_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
        let work = async {
            let mut response = builder.send().await.map_err(failed)?;
            if response.content_length().is_some_and(|n| n > limit) {
                return Err(too_large(limit));
            }
            let status = response.status().as_u16();
            let headers = headers_of(&response);
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(failed)? {
                if body.len() as u64 + chunk.len() as u64 > limit {
                    return Err(too_large(limit));
                }
                body.extend_from_slice(&chunk);
            }
            Ok((status, headers, body))
        };
        let (status, headers, body) = tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| timed_out())??;
        let received = body.len() as u64;
        let mut reply = json!({"status": status, "headers": headers});
        match String::from_utf8(body) {
            Ok(text) => reply["body"] = Value::String(text),
            Err(e) => {
                reply["body_base64"] =
                    Value::String(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()))
            }
        }
        Ok((reply, sent + received))
    }
}

fn too_large(limit: u64) -> Error {
    Error::new(
        ErrorCode::PayloadTooLarge,
        format!("the response is larger than fetch.max_response_bytes ({limit} bytes)"),
    )
}
