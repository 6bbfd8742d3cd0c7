//! The host side of the guest ABI's `call`: document reads and writes with the same semantics,
//! validation and change events as HTTP, made as the function (admin rights, one depth deeper
//! than the event it handles), the function's secrets (`env`), and outbound HTTP (`fetch`,
//! see [`super::fetch`]). Each call is a span of the
//! run's trace, and the changes it writes carry that span's context on to the events and
//! webhook messages they queue.

use super::runtime::Host;
use crate::auth::Principal;
use crate::docs::{AggregateParams, DocsError, Documents, ListParams};
use crate::error::Error;
use crate::store::deferred::Deferred;
use crate::trace::{self, Kind, TraceContext, Tracer};
use serde_json::{json, Value};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(super) struct DocumentHost {
    pub docs: Documents,
    /// The run's writes not yet durable (see `store::deferred`).
    pub deferred: Deferred,
    pub who: Principal,
    pub runtime: tokio::runtime::Handle,
    pub function: String,
    pub log_budget: Arc<LogBudget>,
    pub tracer: Tracer,
    /// The run's span, the parent of each call's.
    pub trace: TraceContext,
    pub secrets: super::secrets::SecretReader,
    /// The secret values this run read, kept out of what it logs and returns.
    pub revealed: Mutex<Vec<String>>,
    /// Whether this is a before-write hook's run, which may read but not write.
    pub hook: bool,
    /// Where `mail` sends, and what this function may still send this hour.
    pub mailer: crate::mail::Mailer,
    pub mail_budget: Arc<super::mail::MailBudget>,
    /// The function's `fetch` access; none when its config lists no hosts.
    pub fetch: Option<Arc<super::fetch::Access>>,
    /// When the invocation's wall time ends: no request outlasts it.
    pub deadline: Instant,
    /// Bytes sent and received by `fetch` in this run.
    pub fetched: AtomicU64,
}

/// The log bytes one function may write per minute, across all its invocations: what its
/// lines may add to the server log and to its invocation records, whatever it is called.
pub(super) struct LogBudget {
    per_minute: u64,
    window: Mutex<LogWindow>,
}

struct LogWindow {
    started: Instant,
    used: u64,
    dropped: u64,
}

impl LogBudget {
    pub(super) fn new(per_minute: u64) -> LogBudget {
        LogBudget {
            per_minute,
            window: Mutex::new(LogWindow {
                started: Instant::now(),
                used: 0,
                dropped: 0,
            }),
        }
    }

    /// Takes `bytes` from this minute's budget; false when they do not fit. The first line
    /// refused in a minute, and the count of a minute that refused any, go to the server log.
    fn take(&self, function: &str, bytes: u64) -> bool {
        let Ok(mut w) = self.window.lock() else {
            return false;
        };
        if w.started.elapsed() >= Duration::from_secs(60) {
            if w.dropped > 0 {
                tracing::warn!(
                    function,
                    dropped = w.dropped,
                    "log lines dropped over the function's log budget in the last minute"
                );
            }
            *w = LogWindow {
                started: Instant::now(),
                used: 0,
                dropped: 0,
            };
        }
        if w.used + bytes <= self.per_minute {
            w.used += bytes;
            return true;
        }
        if w.dropped == 0 {
            tracing::warn!(
                function,
                per_minute = self.per_minute,
                "the function is over its log budget; its lines are dropped until the minute ends"
            );
        }
        w.dropped += 1;
        false
    }
}

fn field<'a>(request: &'a Value, name: &str) -> Result<&'a str, Error> {
    request
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_request(format!("`{name}` must be a string")))
}

impl DocumentHost {
    /// Waits for `work` on the server's runtime, as the call's span.
    fn on<F: Future>(&self, call: TraceContext, work: F) -> F::Output {
        self.runtime.block_on(trace::scope(call, work))
    }

    /// As `on`, for a write, which returns before it is durable: the run waits for that later.
    fn writing<F: Future>(&self, call: TraceContext, work: F) -> F::Output {
        self.on(call, self.deferred.scope(work))
    }

    /// Waits until the run's writes so far are durable, before anything could show them.
    fn settled(&self, call: TraceContext) -> Result<(), Error> {
        self.on(call, self.deferred.settle())
            .map_err(|e| super::FunctionsError::from(e).into())
    }

    /// Replaces the secret values this run read with `[secret]`.
    pub(super) fn redact(&self, text: &str) -> String {
        match self.revealed.lock() {
            Ok(revealed) if !revealed.is_empty() => super::secrets::redact(text, &revealed),
            _ => text.to_string(),
        }
    }

    /// `{"op": "env", "name": "STRIPE_KEY"}` → `{"value": "..."}`, or `{"value": null}` when the
    /// function has no such secret.
    fn env(&self, request: &Value, call: TraceContext) -> Result<Value, Error> {
        let name = field(request, "name")?;
        let value = self.on(call, self.secrets.get(name)).map_err(|e| match e {
            // A key that cannot open the value: the operator's to fix, and the guest's to hear.
            super::FunctionsError::Internal(why) => {
                tracing::error!(function = %self.function, secret = name, "{why}");
                Error::new(crate::error::ErrorCode::Internal, why)
            }
            other => other.into(),
        })?;
        if let (Some(value), Ok(mut revealed)) = (&value, self.revealed.lock()) {
            if !revealed.contains(value) {
                revealed.push(value.clone());
            }
        }
        Ok(json!({ "value": value }))
    }

    /// `{"op": "fetch", "url", ...}`: refused unless the function's config allows hosts.
    fn fetch(&self, request: &Value, call: TraceContext) -> Result<Value, Error> {
        let Some(access) = &self.fetch else {
            return Err(Error::new(
                crate::error::ErrorCode::Forbidden,
                "this function may not fetch: list the hosts it may reach in its config's fetch.allow",
            ));
        };
        // A hook's worker is handed to another thread while the request is out.
        let (reply, bytes) =
            super::runtime::while_waiting(|| self.on(call, access.fetch(request, self.deadline)))?;
        self.fetched.fetch_add(bytes, Ordering::Relaxed);
        Ok(reply)
    }

    /// `{"op": "mail", "to", "subject", "text"?, "html"?}` → `{"id", "delivery"}`, once the
    /// message is in the outbox.
    fn mail(&self, request: &Value, call: TraceContext) -> Result<Value, Error> {
        let outgoing = super::mail::outgoing(request, &self.function)?;
        if !self.mail_budget.take() {
            return Err(Error::new(
                crate::error::ErrorCode::RateLimited,
                format!(
                    "function {} may send {} mails per hour (mail_per_hour)",
                    self.function,
                    self.mail_budget.per_hour()
                ),
            ));
        }
        let mail = self
            .on(call, self.mailer.queue(outgoing))
            .map_err(super::FunctionsError::from)?;
        Ok(json!({"id": mail.id, "delivery": mail.delivery}))
    }

    fn answer(&self, op: &str, request: &Value, call: TraceContext) -> Result<Value, Error> {
        if !matches!(op, "env" | "create" | "set" | "update" | "delete") {
            self.settled(call)?;
        }
        match op {
            "env" => return self.env(request, call),
            "fetch" => return self.fetch(request, call),
            "mail" => return self.mail(request, call),
            _ => {}
        }
        if self.hook && matches!(op, "create" | "set" | "update" | "delete") {
            return Err(Error::new(
                crate::error::ErrorCode::Forbidden,
                "a before-write hook may read but not write: return changed data, or write from a trigger once the write is made",
            ));
        }
        let who = &self.who;
        let docs = &self.docs;
        let collection = field(request, "collection")?;
        let id = || field(request, "id");
        let data = || request.get("data").cloned().unwrap_or(Value::Null);
        let if_version = request.get("if_version").and_then(Value::as_u64);
        let to_json = |doc| serde_json::to_value(doc).map_err(Error::internal);
        match op {
            "get" => match self.on(call, docs.get(who, collection, id()?)) {
                Ok(doc) => to_json(doc),
                Err(DocsError::NotFound { .. }) => Ok(Value::Null),
                Err(e) => Err(e.into()),
            },
            "create" => to_json(self.writing(call, docs.create(who, collection, data()))?),
            "set" => {
                let (doc, _) =
                    self.writing(call, docs.set(who, collection, id()?, data(), if_version))?;
                to_json(doc)
            }
            "update" => to_json(self.writing(
                call,
                docs.update_with(
                    who,
                    collection,
                    id()?,
                    request.get("data").cloned(),
                    request.get("transforms"),
                    if_version,
                ),
            )?),
            "delete" => {
                self.writing(call, docs.delete(who, collection, id()?, if_version))?;
                Ok(json!({"deleted": true}))
            }
            "query" => {
                let text = |name: &str| request.get(name).and_then(Value::as_str);
                let params = ListParams {
                    filter: text("filter"),
                    sort: text("sort"),
                    limit: request
                        .get("limit")
                        .and_then(Value::as_u64)
                        .map(|n| n as usize),
                    cursor: text("cursor"),
                    count: request.get("count").and_then(Value::as_bool) == Some(true),
                };
                let page = self.on(call, docs.list(who, collection, &params))?;
                serde_json::to_value(page).map_err(Error::internal)
            }
            "aggregate" => {
                let text = |name: &str| request.get(name).and_then(Value::as_str);
                let params = AggregateParams {
                    filter: text("filter"),
                    group_by: text("group_by"),
                    ops: text("ops"),
                };
                let result = self.on(call, docs.aggregate(who, collection, &params))?;
                serde_json::to_value(result).map_err(Error::internal)
            }
            _ => Err(Error::bad_request(format!("unknown op {op:?}"))),
        }
    }
}

impl Host for DocumentHost {
    fn call(&self, request: &Value) -> Option<Vec<u8>> {
        let op = request.get("op").and_then(Value::as_str)?;
        if !matches!(
            op,
            "get"
                | "create"
                | "set"
                | "update"
                | "delete"
                | "query"
                | "aggregate"
                | "env"
                | "fetch"
                | "mail"
        ) {
            return None;
        }
        // A secret's name is not a collection; the span says which secret, never its value.
        let fetched_host = (op == "fetch")
            .then(|| request.get("url").and_then(Value::as_str))
            .flatten()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_string));
        let collection = match op {
            "env" => request.get("name").and_then(Value::as_str),
            "fetch" => fetched_host.as_deref(),
            _ => request.get("collection").and_then(Value::as_str),
        };
        let mut span = self.tracer.span(
            format!("{op} {}", collection.unwrap_or_default()),
            Kind::Internal,
            Some(self.trace),
        );
        if span.recording() {
            span.set("db.operation.name", op);
            if let Some(collection) = collection {
                span.set("db.collection.name", collection);
            }
        }
        let reply = match self.answer(op, request, span.context()) {
            Ok(value) => value,
            Err(e) => {
                span.fail(e.message.clone());
                json!({"error": {"code": e.code.as_str(), "message": e.message}})
            }
        };
        serde_json::to_vec(&reply).ok()
    }

    fn log(&self, level: &str, message: &str) -> bool {
        if !self.log_budget.take(&self.function, message.len() as u64) {
            return false;
        }
        let message = self.redact(message);
        // The line names the run's trace, as the request lines of the same trace do.
        tracing::info_span!("run", trace_id = %self.trace.trace_id())
            .in_scope(|| log_line(&self.function, level, &message));
        true
    }
}

/// Writes a function's log line to the server log, under the function's name.
pub(super) fn log_line(function: &str, level: &str, message: &str) {
    match level {
        "error" => tracing::error!(function, "{message}"),
        "warn" => tracing::warn!(function, "{message}"),
        "info" => tracing::info!(function, "{message}"),
        _ => tracing::debug!(function, "{message}"),
    }
}
