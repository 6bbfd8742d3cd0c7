//! Before-write hooks: functions bound to `before_create`, `before_update` or `before_delete`
//! of a collection, run by the document service before a write commits (see `crate::docs`'s
//! `hooks`). Each runs on the hook workers with its own small budget (`hook_timeout_ms`,
//! `hook_fuel`), may read but not write, and answers:
//!
//! - nothing, or `{"ok": true}`: the write goes ahead;
//! - `{"ok": true, "data": {...}}`: it goes ahead with this data (a patch for an update);
//! - `{"ok": false, "error": "why", "status": 400 | 403}`: it is refused (403 by default).
//!
//! A hook that traps, runs out of time or fuel, or answers something else refuses the write
//! too (fail closed). A run that refuses, fails or logs is recorded in the function's
//! invocation log; a silent allowing run, the common case, would cost a store write per client
//! write, so its usage is summed in memory and added to the daily counters once a second.

use super::invoke::outcome_status;
use super::runtime::Lane;
use super::usage::{self, Measures};
use super::{Functions, Inner, Invocation, Loaded};
use crate::docs::{DocsError, HookCall, HookKind, Verdict, WriteHooks};
use crate::model::now_rfc3339;
use crate::store::KvWrite;
use async_trait::async_trait;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often the usage of silent hook runs goes to the store.
const USAGE_EVERY: Duration = Duration::from_secs(1);

/// The usage of silent hook runs not yet stored, by function and day.
pub(super) type PendingUsage = std::sync::Mutex<HashMap<(String, String), Measures>>;

/// The hooks as the document service calls them; weak, since the functions hold the
/// document service.
pub(super) struct Hooks(pub(super) Weak<Inner>);

impl Functions {
    /// The loaded functions bound to hook `kind` of `collection`, in name order.
    fn hooks_of(&self, collection: &str, kind: HookKind) -> Vec<Arc<Loaded>> {
        let Ok(triggers) = self.inner.triggers.read().map(|t| t.clone()) else {
            return Vec::new();
        };
        let mut names: Vec<&str> = triggers
            .iter()
            .filter(|(_, armed)| {
                armed.trigger.on == kind.trigger()
                    && armed.trigger.collection.as_deref() == Some(collection)
            })
            .map(|(name, _)| name.as_str())
            .collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().filter_map(|n| self.loaded(n)).collect()
    }

    /// Runs one hook on `event` and decides what it said.
    async fn run_hook(
        &self,
        loaded: &Loaded,
        kind: HookKind,
        event: &Value,
        depth: u32,
    ) -> Verdict {
        let name = &loaded.record.info.name;
        let failed = |reason: String| {
            Verdict::Refuse(DocsError::HookFailed {
                function: name.clone(),
                hook: kind.trigger().into(),
                reason,
            })
        };
        let (mut outcome, trace) = match self
            .run(Lane::Hooks, loaded, event, depth, crate::trace::current())
            .await
        {
            Ok(ran) => ran,
            Err(e) => return failed(e.to_string()),
        };
        let verdict = match &outcome.result {
            Ok(result) => decide(name, kind, result.as_deref()),
            Err(failure) => failed(failure.to_string()),
        };
        let (mut status, failure, error) = outcome_status(&outcome.result);
        let error = match &verdict {
            Verdict::Refuse(DocsError::HookRefused { .. }) => {
                status = "rejected";
                error
            }
            Verdict::Refuse(e @ DocsError::HookFailed { .. }) if outcome.result.is_ok() => {
                status = "error";
                Some(e.to_string())
            }
            _ => error,
        };
        let record = Invocation {
            event_id: ulid::Ulid::new().to_string(),
            trigger: kind.trigger().into(),
            status: status.into(),
            failure: failure.or_else(|| (status == "error").then(|| "result".into())),
            error,
            version: Some(loaded.record.info.version),
            ..Invocation::of_run(&mut outcome, Some(trace))
        };
        if record.status == "ok" && record.logs.is_empty() {
            self.count_silent(name, &record);
        } else {
            self.record_in_background(name, record);
        }
        verdict
    }

    /// Adds a silent run's usage to what the next flush stores.
    fn count_silent(&self, name: &str, record: &Invocation) {
        let day = record.at.get(..10).unwrap_or("0000-00-00").to_string();
        if let Ok(mut pending) = self.inner.hook_usage.lock() {
            pending
                .entry((name.to_string(), day))
                .or_default()
                .add(&Measures::of(record));
        }
    }

    /// Stores the usage of silent hook runs once a second, until the functions are gone.
    pub(super) fn flush_hook_usage(&self) {
        let weak = Arc::downgrade(&self.inner);
        self.inner.tokio.spawn(async move {
            let mut ticks = tokio::time::interval(USAGE_EVERY);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                let pending = match inner.hook_usage.lock() {
                    Ok(mut pending) => std::mem::take(&mut *pending),
                    Err(_) => return,
                };
                if pending.is_empty() {
                    continue;
                }
                let write = pending
                    .iter()
                    .fold(KvWrite::default(), |write, ((name, day), measures)| {
                        usage::add(write, name, day, measures)
                    });
                if let Err(e) = inner.store.kv_write(write).await {
                    tracing::warn!(error = %e, "cannot store the usage of before-write hooks");
                }
            }
        });
    }

    /// Records an invocation after the run's answer has gone.
    pub(super) fn record_in_background(&self, name: &str, record: Invocation) {
        let functions = self.clone();
        let name = name.to_string();
        tokio::spawn(async move {
            let write = functions
                .record_invocation(KvWrite::default(), &name, &record)
                .await;
            if let Err(e) = functions.inner.store.kv_write(write).await {
                tracing::warn!(function = %name, error = %e, "cannot record an invocation");
            }
        });
    }
}

/// What a hook's result says.
fn decide(name: &str, kind: HookKind, result: Option<&[u8]>) -> Verdict {
    let failed = |reason: &str| {
        Verdict::Refuse(DocsError::HookFailed {
            function: name.to_string(),
            hook: kind.trigger().into(),
            reason: reason.to_string(),
        })
    };
    let Some(bytes) = result else {
        return Verdict::Allow;
    };
    let answer: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => return failed("its result is not JSON"),
    };
    let answer = match answer {
        Value::Null => return Verdict::Allow,
        Value::Object(answer) => answer,
        _ => return failed("its result is not an object"),
    };
    match answer.get("ok") {
        Some(Value::Bool(false)) => {
            let status = match answer.get("status").and_then(Value::as_u64) {
                None | Some(403) => 403,
                Some(400) => 400,
                Some(_) => return failed("a refusal's status must be 400 or 403"),
            };
            let message = answer
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("refused")
                .chars()
                .take(1000)
                .collect();
            Verdict::Refuse(DocsError::HookRefused {
                function: name.to_string(),
                hook: kind.trigger().into(),
                status,
                message,
            })
        }
        None | Some(Value::Bool(true)) => match answer.get("data") {
            None | Some(Value::Null) => Verdict::Allow,
            Some(Value::Object(data)) if kind != HookKind::Delete => Verdict::Replace(data.clone()),
            Some(Value::Object(_)) => failed("a before_delete hook cannot change data"),
            Some(_) => failed("its `data` is not an object"),
        },
        Some(_) => failed("its `ok` is not true or false"),
    }
}

/// The event a hook receives.
fn event(call: &HookCall<'_>, data: Option<&Map<String, Value>>) -> Value {
    let mut event = json!({
        "v": 1,
        "trigger": call.kind.trigger(),
        "collection": call.collection,
        "id": call.id,
        "before": call.before,
        "auth": call.who.auth_value(),
        "depth": call.who.depth(),
        "time": now_rfc3339(),
    });
    if let Some(data) = data {
        event["data"] = Value::Object(data.clone());
        // An update's patch, applied to the stored data, as a preview (before transforms).
        if let (HookKind::Update, Some(before)) = (call.kind, call.before) {
            let mut after = Value::Object(before.data.clone());
            crate::model::merge_patch(&mut after, &Value::Object(data.clone()));
            event["after"] = after;
        }
    }
    event
}

#[async_trait]
impl WriteHooks for Hooks {
    fn wants(&self, collection: &str, kind: HookKind) -> bool {
        let Some(inner) = self.0.upgrade() else {
            return false;
        };
        let Ok(triggers) = inner.triggers.read() else {
            return false;
        };
        triggers.iter().any(|(_, armed)| {
            armed.trigger.on == kind.trigger()
                && armed.trigger.collection.as_deref() == Some(collection)
        })
    }

    async fn run(&self, call: HookCall<'_>) -> Verdict {
        let Some(inner) = self.0.upgrade() else {
            return Verdict::Allow;
        };
        let functions = Functions { inner };
        let mut data = call.data.cloned();
        let mut changed = false;
        for loaded in functions.hooks_of(call.collection, call.kind) {
            let event = event(&call, data.as_ref());
            match functions
                .run_hook(&loaded, call.kind, &event, call.who.depth() + 1)
                .await
            {
                Verdict::Allow => {}
                Verdict::Replace(new) => {
                    data = Some(new);
                    changed = true;
                }
                refused @ Verdict::Refuse(_) => return refused,
            }
        }
        match data {
            Some(data) if changed => Verdict::Replace(data),
            _ => Verdict::Allow,
        }
    }
}
