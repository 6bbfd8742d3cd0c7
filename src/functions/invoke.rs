//! Running a function: the limits of an invocation, HTTP calls, the invocation log, and the
//! commit hook that queues an outbox event with every change a trigger matches.

use super::error::internal;
use super::runtime::{Failure, Lane, Limits, Outcome};
use super::{
    check_name, dispatch, host, FunctionConfig, Functions, FunctionsError, Invocation, Loaded,
    Result,
};
use crate::auth::Principal;
use crate::config::FunctionsConfig;
use crate::model::{now_rfc3339, Change};
use crate::store::deferred::Deferred;
use crate::store::{CommitHook, HookRecord, KvWrite, Space};
use crate::trace::{Kind, TraceContext};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub(super) fn failure_kind(f: &Failure) -> &'static str {
    match f {
        Failure::Trap(_) => "trap",
        Failure::Fuel => "fuel",
        Failure::Timeout => "timeout",
        Failure::HostCalls => "host_calls",
        Failure::Instantiate(_) => "instantiate",
        Failure::Thrown(_) => "thrown",
        Failure::Lost(_) => "lost",
    }
}

/// The result of an HTTP call of a function.
pub struct HttpResult {
    pub status: u16,
    pub body: Value,
}

/// The invocation status, failure kind and error message of a result.
pub(super) fn outcome_status(
    result: &std::result::Result<Option<Vec<u8>>, Failure>,
) -> (&'static str, Option<String>, Option<String>) {
    match result {
        Ok(_) => ("ok", None, None),
        Err(Failure::Timeout) => (
            "timeout",
            Some("timeout".into()),
            Some(Failure::Timeout.to_string()),
        ),
        Err(f) => ("error", Some(failure_kind(f).into()), Some(f.to_string())),
    }
}

impl Invocation {
    /// The record of a run: what it used and logged, and its trace. The caller sets what the
    /// run was (`event_id`, `trigger`, `attempt`, `version`, `event`) and how it ended
    /// (`status`, `failure`, `error`), which start as a first `ok` attempt of nothing. Takes
    /// the run's log lines.
    pub(super) fn of_run(outcome: &mut Outcome, trace: Option<TraceContext>) -> Invocation {
        Invocation {
            id: ulid::Ulid::new().to_string(),
            event_id: String::new(),
            trigger: String::new(),
            status: "ok".into(),
            attempt: 1,
            duration_us: outcome.duration.as_micros() as u64,
            fuel: outcome.usage.fuel,
            cpu_us: outcome.usage.cpu_us,
            memory_bytes: outcome.usage.memory_bytes,
            host_calls: outcome.usage.host_calls,
            fetch_bytes: outcome.usage.fetch_bytes,
            failure: None,
            error: None,
            logs: std::mem::take(&mut outcome.logs),
            at: crate::model::format_time(outcome.ended),
            version: None,
            replay: false,
            event: None,
            trace_id: trace.map(|t| t.trace_id()),
            span_id: trace.map(|t| t.span_id()),
        }
    }
}

/// The outbox: for each committed change, one pending event per function it triggers, written
/// in the same batch as the change (or, past the depth limit, a `dropped` record).
pub(super) struct Outbox(pub(super) Functions);

impl CommitHook for Outbox {
    fn records(&self, change: &Change) -> Vec<HookRecord> {
        let triggers = match self.0.inner.triggers.read() {
            Ok(t) => t.clone(),
            Err(_) => return Vec::new(),
        };
        let mut names: Vec<&str> = triggers
            .iter()
            .filter(|(_, t)| t.matches(change))
            .map(|(name, _)| name.as_str())
            .collect();
        names.dedup();
        names
            .into_iter()
            .map(|name| dispatch::outbox_record(&self.0, name, change))
            .collect()
    }

    fn reload(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(self.0.reload())
    }
}

impl Functions {
    /// The log budget of a loaded function, shared by all its invocations.
    pub(super) fn log_budget(&self, name: &str) -> Arc<host::LogBudget> {
        let per_minute = self.inner.config.log_bytes_per_minute;
        match self.inner.log_budgets.lock() {
            Ok(mut budgets) => budgets
                .entry(name.to_string())
                .or_insert_with(|| Arc::new(host::LogBudget::new(per_minute)))
                .clone(),
            Err(_) => Arc::new(host::LogBudget::new(0)),
        }
    }

    /// The limits of one invocation of a function with `config`.
    pub(super) fn limits(&self, config: &FunctionConfig) -> Limits {
        limits_of(&self.inner.config, config)
    }

    /// The latest invocations of a function, newest first.
    pub async fn invocations(
        &self,
        who: &Principal,
        name: &str,
        limit: usize,
        status: Option<&str>,
    ) -> Result<Vec<Invocation>> {
        Self::require_admin(who)?;
        check_name(name)?;
        if self.loaded(name).is_none() {
            return Err(FunctionsError::NotFound(name.into()));
        }
        if !(1..=1000).contains(&limit) {
            return Err(FunctionsError::BadRequest("limit must be 1 to 1000".into()));
        }
        let prefix = dispatch::function_prefix(name);
        let store = &self.inner.store;
        let Some(status) = status else {
            return store
                .kv_prefix_last(Space::Invocations, &prefix, limit)
                .await?
                .into_iter()
                .map(|(_, bytes)| serde_json::from_slice(&bytes).map_err(internal))
                .collect();
        };
        // Newest first, page by page, over at most the records the log keeps of a function
        // (pruning may lag behind by a page or so).
        let most = self.inner.config.invocations_kept.saturating_add(1024);
        let mut found = Vec::new();
        let mut before: Option<Vec<u8>> = None;
        let mut examined = 0;
        while found.len() < limit && examined < most {
            let page = store
                .kv_prefix_last_before(Space::Invocations, &prefix, before.as_deref(), 256)
                .await?;
            let Some((last, _)) = page.last() else { break };
            before = Some(last.clone());
            examined += page.len();
            for (_, bytes) in page {
                let invocation: Invocation = serde_json::from_slice(&bytes).map_err(internal)?;
                if invocation.status == status && found.len() < limit {
                    found.push(invocation);
                }
            }
        }
        Ok(found)
    }

    /// Runs one invocation of `function` with an event, as the function's principal, in a span
    /// that is a child of `parent` (the request or the change that caused it), or the root of
    /// a new trace. Returns the outcome and the run's trace context.
    pub(super) async fn run(
        &self,
        lane: Lane,
        loaded: &Loaded,
        event: &Value,
        depth: u32,
        parent: Option<TraceContext>,
    ) -> Result<(Outcome, TraceContext)> {
        let name = loaded.record.info.name.clone();
        let kind = match lane {
            Lane::Http => Kind::Server,
            Lane::Events => Kind::Consumer,
            Lane::Hooks => Kind::Internal,
        };
        let mut span = self
            .inner
            .tracer
            .span(format!("function {name}"), kind, parent);
        let config = &loaded.record.info.config;
        let mut limits = self.limits(config);
        if lane == Lane::Hooks {
            let defaults = &self.inner.config;
            limits.timeout =
                Duration::from_millis(config.hook_timeout_ms.unwrap_or(defaults.hook_timeout_ms));
            limits.fuel = config.hook_fuel.unwrap_or(defaults.hook_fuel);
        }
        let fetch = loaded
            .record
            .info
            .config
            .fetch
            .as_ref()
            .and_then(|config| self.fetch_access(&name, config));
        let deferred = Deferred::default();
        let host = Arc::new(host::DocumentHost {
            docs: self.inner.docs.clone(),
            deferred: deferred.clone(),
            who: Principal::Function {
                name: name.clone(),
                depth,
            },
            runtime: self.inner.tokio.clone(),
            function: name.clone(),
            log_budget: self.log_budget(&name),
            tracer: self.inner.tracer.clone(),
            trace: span.context(),
            secrets: self.secret_reader(&name),
            revealed: Default::default(),
            fetch,
            hook: lane == Lane::Hooks,
            mailer: self.inner.mailer.clone(),
            mail_budget: self.mail_budget(
                &name,
                loaded
                    .record
                    .info
                    .config
                    .mail_per_hour
                    .unwrap_or(self.inner.config.mail_per_hour),
            ),
            deadline: std::time::Instant::now() + limits.timeout,
            fetched: Default::default(),
        });
        let input = serde_json::to_vec(event).map_err(internal)?;
        let mut outcome = self
            .inner
            .runtime
            .invoke(lane, loaded.module.clone(), input, limits, host.clone())
            .await
            .map_err(FunctionsError::Busy)?;
        // The run's writes are durable before anything shows its outcome; off the worker, so
        // that runs share flushes.
        if let Err(e) = deferred.settle().await {
            outcome.result = Err(Failure::Lost(e.to_string()));
        }
        outcome.usage.fetch_bytes = host.fetched.load(std::sync::atomic::Ordering::Relaxed);
        // What the run read from its secrets stays out of its record and its answer.
        for line in &mut outcome.logs {
            line.message = host.redact(&line.message);
        }
        if let Ok(Some(result)) = &mut outcome.result {
            let text = String::from_utf8_lossy(result);
            let redacted = host.redact(&text);
            if redacted != text {
                *result = redacted.into_bytes();
            }
        }
        let status = match &outcome.result {
            Ok(_) => "ok",
            Err(Failure::Timeout) => "timeout",
            Err(_) => "error",
        };
        if span.recording() {
            let text = |key: &str| event.get(key).and_then(Value::as_str).unwrap_or_default();
            span.set("emberbase.function", name.as_str());
            span.set("emberbase.function.version", loaded.record.info.version);
            span.set("emberbase.trigger", text("trigger"));
            if let Some(id) = event.get("event_id").and_then(Value::as_str) {
                span.set("emberbase.event_id", id);
            }
            span.set("emberbase.status", status);
            span.set("emberbase.fuel", outcome.usage.fuel);
            span.set("emberbase.host_calls", outcome.usage.host_calls);
            if let Err(failure) = &outcome.result {
                span.fail(failure.to_string());
            }
        }
        let context = span.context();
        drop(span);
        let m = &self.inner.metrics;
        m.function_invocations
            .with_label_values(&[name.as_str(), status])
            .inc();
        m.function_duration
            .with_label_values(&[name.as_str()])
            .observe(outcome.duration.as_secs_f64());
        m.function_fuel
            .with_label_values(&[name.as_str()])
            .inc_by(outcome.usage.fuel);
        m.function_cpu
            .with_label_values(&[name.as_str()])
            .inc_by(outcome.usage.cpu_us as f64 / 1e6);
        if outcome.usage.fetch_bytes > 0 {
            m.function_fetch_bytes
                .with_label_values(&[name.as_str()])
                .inc_by(outcome.usage.fetch_bytes);
        }
        Ok((outcome, context))
    }

    /// Calls a function that has an `http` trigger, with `auth` from the caller.
    pub async fn call_http(&self, who: &Principal, name: &str, body: Value) -> Result<HttpResult> {
        check_name(name)?;
        let loaded = self
            .loaded(name)
            .filter(|l| l.record.info.config.triggers.iter().any(|t| t.on == "http"))
            .ok_or_else(|| FunctionsError::NoHttpTrigger(name.into()))?;
        if let Some(quota) = &loaded.record.info.config.daily_quota {
            if self.quota_spent(name, quota).await?.is_some() {
                return Err(FunctionsError::QuotaSpent(name.into()));
            }
        }
        let event = json!({"v": 1, "trigger": "http", "method": "POST", "body": body,
            "auth": who.auth_value(), "time": now_rfc3339()});
        let (mut outcome, trace) = self
            .run(Lane::Http, &loaded, &event, 1, crate::trace::current())
            .await?;
        let (status, failure, error) = outcome_status(&outcome.result);
        let record = Invocation {
            event_id: ulid::Ulid::new().to_string(),
            trigger: "http".into(),
            status: status.into(),
            failure,
            error,
            version: Some(loaded.record.info.version),
            ..Invocation::of_run(&mut outcome, Some(trace))
        };
        self.record_in_background(name, record);
        let result = outcome.result.map_err(|f| match f {
            // The storage's failure, not the function's: the caller may try again.
            Failure::Lost(_) => FunctionsError::Storage(crate::error::StorageError::Unavailable),
            f => FunctionsError::Failed(format!("function {name} failed: {f}")),
        })?;
        let value = match result {
            None => Value::Null,
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                FunctionsError::Failed(format!("function {name} returned invalid JSON: {e}"))
            })?,
        };
        let status = value
            .get("status")
            .and_then(Value::as_u64)
            .filter(|s| (200..=599).contains(s));
        Ok(match status {
            Some(status) => HttpResult {
                status: status as u16,
                body: value.get("body").cloned().unwrap_or(Value::Null),
            },
            None => HttpResult {
                status: 200,
                body: value,
            },
        })
    }

    /// Runs a recorded trigger or schedule event again, with its `event_id` and payload, on the
    /// active version or on kept `version`, and records the run (`replay: true`). For a dead
    /// event after a fix, or to debug. Waits for the run and answers its record.
    pub async fn replay(
        &self,
        who: &Principal,
        name: &str,
        event_id: &str,
        version: Option<u32>,
    ) -> Result<Invocation> {
        Self::require_admin(who)?;
        check_name(name)?;
        let current = self
            .loaded(name)
            .ok_or_else(|| FunctionsError::NotFound(name.into()))?;
        let kept = self.inner.config.invocations_kept;
        let rows = self
            .inner
            .store
            .kv_prefix_last(
                Space::Invocations,
                &dispatch::function_prefix(name),
                kept + 2 * dispatch::PRUNE_EVERY,
            )
            .await?;
        let (mut event, attempt) = rows
            .into_iter()
            .filter_map(|(_, bytes)| serde_json::from_slice::<Invocation>(&bytes).ok())
            .find(|r| r.event_id == event_id && r.event.is_some())
            .and_then(|r| Some((r.event?, r.attempt)))
            .ok_or_else(|| {
                FunctionsError::NotFound(format!("no recorded event {event_id} of function {name}"))
            })?;
        let loaded = match version {
            Some(v) if v != current.record.info.version => {
                let config = current.record.info.config.clone();
                let (kept, (.., module)) = self.load_version(name, v, &config).await?;
                let mut record = current.record.clone();
                record.info.version = v;
                record.info.sha256 = kept.sha256;
                Arc::new(Loaded { record, module })
            }
            _ => current,
        };
        let attempt = attempt + 1;
        event["attempt"] = json!(attempt);
        let depth = event.get("depth").and_then(Value::as_u64).unwrap_or(0) as u32;
        // The replay is the replaying request's work: its trace, not the original event's.
        let (outcome, trace) = self
            .run(
                Lane::Events,
                &loaded,
                &event,
                depth + 1,
                crate::trace::current(),
            )
            .await?;
        let (mut record, _) = dispatch::judge(
            &event,
            attempt,
            outcome,
            now_rfc3339(),
            Some(loaded.record.info.version),
            Some(trace),
        );
        record.replay = true;
        let write = self
            .record_invocation(KvWrite::default(), name, &record)
            .await;
        self.inner.store.kv_write(write).await?;
        Ok(record)
    }

    /// Adds an invocation record (and the pruning of the oldest beyond the limit) to a write.
    pub(super) async fn record_invocation(
        &self,
        write: KvWrite,
        name: &str,
        record: &Invocation,
    ) -> KvWrite {
        let write = put_invocation(write, name, record);
        self.prune_invocations(write, name, 1, 16).await
    }

    /// Adds to a write the removal of a function's oldest invocation records (at most
    /// `excess`), so that `adding` more leave `functions.invocations_kept`.
    pub(super) async fn prune_invocations(
        &self,
        mut write: KvWrite,
        name: &str,
        adding: usize,
        excess: usize,
    ) -> KvWrite {
        let kept = self.inner.config.invocations_kept;
        if let Ok(old) = self
            .inner
            .store
            .kv_prefix_last(
                Space::Invocations,
                &dispatch::function_prefix(name),
                kept + excess,
            )
            .await
        {
            for (key, _) in old.into_iter().skip(kept.saturating_sub(adding)) {
                write = write.delete(Space::Invocations, key);
            }
        }
        write
    }
}

/// Adds an invocation record, and its usage to the function's counters, to a write.
pub(super) fn put_invocation(write: KvWrite, name: &str, record: &Invocation) -> KvWrite {
    let write = super::usage::count(write, name, record);
    let mut key = dispatch::function_prefix(name);
    key.extend_from_slice(record.id.as_bytes());
    write.put(
        Space::Invocations,
        key,
        serde_json::to_vec(record).unwrap_or_default(),
    )
}

/// The limits of one invocation of a function with `config`, its defaults from `defaults`.
pub(super) fn limits_of(defaults: &FunctionsConfig, config: &FunctionConfig) -> Limits {
    let c = defaults;
    Limits {
        memory_bytes: config.memory_mb.unwrap_or(c.memory_mb) * 1024 * 1024,
        timeout: Duration::from_millis(config.timeout_ms.unwrap_or(c.timeout_ms)),
        fuel: config.fuel.unwrap_or(c.fuel),
        host_calls: config.max_host_calls.unwrap_or(c.max_host_calls),
        max_io_bytes: 1024 * 1024,
        max_log_lines: 100,
        max_log_bytes: 4096,
        max_log_total: c.max_log_bytes,
    }
}
