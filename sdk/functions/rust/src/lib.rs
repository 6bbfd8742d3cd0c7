//! Emberbase functions in Rust. Hides guest ABI v1 (Emberbase's `docs/functions.md`): the exports `alloc` and
//! `handle`, and the imports `emberbase.log`, `emberbase.call`, `emberbase.result_read`.
//!
//! ```ignore
//! use emberbase_function::{db, function, json, log, Value};
//!
//! function!(|event: Value| -> Option<Value> {
//!     log::info(&format!("got {}", event["trigger"]));
//!     let post = db::get("posts", "p1").ok().flatten();
//!     Some(json!({"ok": true, "found": post.is_some()}))
//! });
//! ```
//!
//! Build with `cargo build --release --target wasm32-unknown-unknown` and upload the `.wasm`.

pub use serde_json::{self, json, Value};

#[cfg(target_arch = "wasm32")]
#[link(wasm_import_module = "emberbase")]
extern "C" {
    #[link_name = "log"]
    fn host_log(level: i32, ptr: *const u8, len: i32);
    #[link_name = "call"]
    fn host_call(ptr: *const u8, len: i32) -> i32;
    #[link_name = "result_read"]
    fn host_result_read(dst: *mut u8);
}

/// Log lines, kept with the invocation and written to the server log.
pub mod log {
    fn line(level: i32, message: &str) {
        #[cfg(target_arch = "wasm32")]
        // SAFETY: the host reads `len` bytes at `ptr`, which `message` owns for the call.
        unsafe {
            super::host_log(level, message.as_ptr(), message.len() as i32)
        };
        #[cfg(not(target_arch = "wasm32"))]
        let _ = (level, message);
    }

    pub fn debug(message: &str) {
        line(0, message)
    }

    pub fn info(message: &str) {
        line(1, message)
    }

    pub fn warn(message: &str) {
        line(2, message)
    }

    pub fn error(message: &str) {
        line(3, message)
    }
}

/// A request the store refused: `code` is one of the HTTP API's (`not_found`, `conflict`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: String,
    pub message: String,
}

/// Sends one host request and returns its reply.
fn call(request: &Value) -> Result<Value, Error> {
    let bytes = serde_json::to_vec(request).unwrap_or_default();
    #[cfg(target_arch = "wasm32")]
    let reply = {
        // SAFETY: the host reads the request from `bytes` and writes exactly `n` bytes of
        // reply into the buffer of that length.
        let n = unsafe { host_call(bytes.as_ptr(), bytes.len() as i32) };
        if n < 0 {
            return Err(Error {
                code: "abi".into(),
                message: format!("the host refused the request ({n})"),
            });
        }
        let mut out = vec![0u8; n as usize];
        unsafe { host_result_read(out.as_mut_ptr()) };
        out
    };
    #[cfg(not(target_arch = "wasm32"))]
    let reply: Vec<u8> = {
        let _ = bytes;
        b"{\"error\":{\"code\":\"unavailable\",\"message\":\"not running in Emberbase\"}}".to_vec()
    };
    let value: Value = serde_json::from_slice(&reply).map_err(|e| Error {
        code: "abi".into(),
        message: e.to_string(),
    })?;
    match value.get("error") {
        Some(err) if value.as_object().is_some_and(|o| o.len() == 1) => Err(Error {
            code: err["code"].as_str().unwrap_or("").into(),
            message: err["message"].as_str().unwrap_or("").into(),
        }),
        _ => Ok(value),
    }
}

/// The function's secrets, set by an admin (`PUT /v1/admin/functions/{name}/secrets/{NAME}`).
pub mod env {
    use super::{call, json, Error};

    /// The value of secret `name`, or `None` when it is not set. What a run logs or returns has
    /// the values it read replaced by `[secret]`.
    pub fn get(name: &str) -> Result<Option<String>, Error> {
        let reply = call(&json!({"op": "env", "name": name}))?;
        Ok(reply["value"].as_str().map(str::to_string))
    }
}

/// Email, through the server's outbox (and SMTP when it has a relay).
pub mod mail {
    use super::{call, json, Error};

    /// Sends a message to one or more addresses, with a plain-text body, an HTML body, or both.
    /// Returns the outbox id once the message is stored; delivery happens after. A function may
    /// send `mail_per_hour` (default 100) an hour: past that, an `Error` with `rate_limited`.
    pub fn send(
        to: &[&str],
        subject: &str,
        text: Option<&str>,
        html: Option<&str>,
    ) -> Result<String, Error> {
        let reply = call(&json!({"op": "mail", "to": to, "subject": subject,
            "text": text, "html": html}))?;
        Ok(reply["id"].as_str().unwrap_or_default().to_string())
    }
}

/// Outbound HTTP requests, to the hosts the function's config allows (`fetch.allow`).
pub mod http {
    use super::{call, json, Error, Value};
    use std::collections::BTreeMap;

    /// An answer: its status, headers (lower-case names) and body (text, or base64 in
    /// `body_base64` when it is not UTF-8).
    #[derive(Debug, Clone, PartialEq)]
    pub struct Response {
        pub status: u16,
        pub headers: BTreeMap<String, String>,
        pub body: String,
        pub body_base64: Option<String>,
    }

    impl Response {
        /// The body as JSON.
        pub fn json(&self) -> Result<Value, Error> {
            serde_json::from_str(&self.body).map_err(|e| Error {
                code: "bad_request".into(),
                message: format!("the body is not JSON: {e}"),
            })
        }
    }

    /// Sends a request. A host off the allow-list, a private address, an oversized answer or
    /// a timeout is an `Error` (`forbidden`, `payload_too_large`, `unavailable`); any HTTP
    /// status, 4xx and 5xx included, is a `Response`.
    pub fn fetch(
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Response, Error> {
        let headers: BTreeMap<&str, &str> = headers.iter().copied().collect();
        let reply = call(&json!({"op": "fetch", "method": method, "url": url,
            "headers": headers, "body": body}))?;
        Ok(Response {
            status: reply["status"].as_u64().unwrap_or(0) as u16,
            headers: reply["headers"]
                .as_object()
                .map(|h| {
                    h.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            body: reply["body"].as_str().unwrap_or_default().to_string(),
            body_base64: reply["body_base64"].as_str().map(str::to_string),
        })
    }

    /// `GET url`.
    pub fn get(url: &str) -> Result<Response, Error> {
        fetch("GET", url, &[], None)
    }
}

/// The database, with the same semantics, validation and change events as the HTTP API.
pub mod db {
    use super::{call, json, Error, Value};

    /// A document, or `None` when it does not exist.
    pub fn get(collection: &str, id: &str) -> Result<Option<Value>, Error> {
        let doc = call(&json!({"op": "get", "collection": collection, "id": id}))?;
        Ok(if doc.is_null() { None } else { Some(doc) })
    }

    pub fn create(collection: &str, data: &Value) -> Result<Value, Error> {
        call(&json!({"op": "create", "collection": collection, "data": data}))
    }

    /// Creates or replaces.
    pub fn set(collection: &str, id: &str, data: &Value) -> Result<Value, Error> {
        call(&json!({"op": "set", "collection": collection, "id": id, "data": data}))
    }

    /// A JSON merge patch, only if the document is at `if_version` when given.
    pub fn update(
        collection: &str,
        id: &str,
        patch: &Value,
        if_version: Option<u64>,
    ) -> Result<Value, Error> {
        let mut req = json!({"op": "update", "collection": collection, "id": id, "data": patch});
        if let Some(v) = if_version {
            req["if_version"] = json!(v);
        }
        call(&req)
    }

    pub fn delete(collection: &str, id: &str) -> Result<(), Error> {
        call(&json!({"op": "delete", "collection": collection, "id": id})).map(|_| ())
    }

    /// One page of documents matching `filter`, sorted by `sort` (the filter language).
    pub fn query(
        collection: &str,
        filter: Option<&str>,
        sort: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Vec<Value>, Error> {
        let page = call(&json!({"op": "query", "collection": collection,
            "filter": filter, "sort": sort, "limit": limit}))?;
        Ok(page["items"].as_array().cloned().unwrap_or_default())
    }
}

#[doc(hidden)]
pub fn __alloc(len: i32) -> i32 {
    let mut buf = Vec::<u8>::with_capacity(len.max(0) as usize);
    let ptr = buf.as_mut_ptr();
    std::mem::forget(buf);
    ptr as usize as i32
}

#[doc(hidden)]
pub fn __handle(ptr: i32, len: i32, handler: impl FnOnce(Value) -> Option<Value>) -> i64 {
    // SAFETY: the host wrote `len` bytes into the buffer `__alloc(len)` returned at `ptr`.
    let bytes = unsafe { std::slice::from_raw_parts(ptr as usize as *const u8, len as usize) };
    let event = serde_json::from_slice(bytes).unwrap_or(Value::Null);
    match handler(event) {
        None => 0,
        Some(result) => {
            let out = serde_json::to_vec(&result).unwrap_or_default();
            let (ptr, len) = (out.as_ptr() as usize as i64, out.len() as i64);
            std::mem::forget(out);
            (ptr << 32) | len
        }
    }
}

/// Defines the module's `alloc` and `handle` exports around a handler
/// `FnOnce(Value) -> Option<Value>` that gets the event and returns the result (or none).
#[macro_export]
macro_rules! function {
    ($handler:expr) => {
        #[no_mangle]
        pub extern "C" fn alloc(len: i32) -> i32 {
            $crate::__alloc(len)
        }

        #[no_mangle]
        pub extern "C" fn handle(ptr: i32, len: i32) -> i64 {
            $crate::__handle(ptr, len, $handler)
        }
    };
}
