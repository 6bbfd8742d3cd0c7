//! What a function is, as the API shows it and as it is stored: its triggers and limits, its
//! record (module hash, artifact), and the record of each invocation; and what a valid
//! configuration is.

use super::error::invalid;
use super::runtime::LogLine;
use super::{dispatch, Functions, FunctionsError, Language, Result};
use crate::docs::check_collection;
use crate::model::{Change, Subject};
use crate::when::{self, When};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The most memory a function may be given, in MiB.
pub(super) const MAX_MEMORY_MB: u64 = 4096;

/// What makes a function run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// `create`, `update`, `delete` or `write` (all three) on a collection or bucket; `http`;
    /// `schedule`; or a before-write hook on a collection: `before_create`, `before_update`,
    /// `before_delete`.
    pub on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collection: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// For `schedule`: a five-field cron expression, in UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// For document and file triggers: a condition in the filter language over `before` and
    /// `after` (the document or file as it was and as it is, null when absent), decided in the
    /// commit: a change that does not meet it makes no event. For example
    /// `after.data.status == "paid" && before.data.status != "paid"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
}

/// A trigger as the commit matches it, its `when` compiled.
#[derive(Debug, Clone)]
pub(super) struct Armed {
    pub(super) trigger: Trigger,
    when: When,
}

impl Armed {
    pub(super) fn new(trigger: Trigger) -> Armed {
        let when = When::new(trigger.when.as_deref());
        Armed { trigger, when }
    }

    /// Whether a change fires the trigger: its kind and subject, then its `when`.
    pub(super) fn matches(&self, change: &Change) -> bool {
        self.trigger.matches(change) && self.when.matches_change(change)
    }
}

impl Trigger {
    /// Whether a change fires this trigger.
    pub(super) fn matches(&self, change: &Change) -> bool {
        let kind_ok = self.on == "write" || self.on == change.kind.as_str();
        kind_ok
            && match &change.subject {
                Subject::Document { collection, .. } => {
                    self.collection.as_deref() == Some(collection.as_str())
                }
                Subject::File { bucket, .. } => self.bucket.as_deref() == Some(bucket.as_str()),
            }
    }
}

/// A function's configuration; every field but `triggers` is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionConfig {
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Metering points per invocation (default `functions.fuel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Host calls per invocation (default `functions.max_host_calls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_host_calls: Option<u32>,
    /// Trigger events run at once (default `functions.concurrency`); events about the same
    /// document or file, and schedule ticks, always run one after the other, in commit order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
    /// Limits per UTC day, after which the function pauses until the next day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_quota: Option<DailyQuota>,
    /// A before-write hook's wall time in milliseconds (default `functions.hook_timeout_ms`,
    /// 50) and fuel (default `functions.hook_fuel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_fuel: Option<u64>,
    /// Mails the function may send per hour with `mail.send` (default
    /// `functions.mail_per_hour`); 0 forbids it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail_per_hour: Option<u32>,
    /// Outbound HTTP requests (`fetch`): none unless this lists the hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchConfig>,
}

/// Which hosts a function may request with `fetch`, and how much it may read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FetchConfig {
    /// `api.example.com`, `api.example.com:8443` (that port only), an IP address,
    /// `*.example.com` (any name under it) or `*` (any host). Only a host named exactly, not by
    /// a wildcard, may be reached at a loopback, private or link-local address.
    #[serde(default)]
    pub allow: Vec<String>,
    /// The largest response body read, in bytes (default 1 MiB, at most 16 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_bytes: Option<u64>,
    /// How long one request may take, in milliseconds (default 10000); never longer than
    /// what is left of the invocation's `timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A function as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionInfo {
    pub name: String,
    /// SHA-256 of the module, lower-case hex.
    pub sha256: String,
    /// Size of the module in bytes.
    pub size: u64,
    /// What the source is: `wasm` (a module) or `javascript` (an ES module).
    #[serde(default)]
    pub language: Language,
    /// The active version: the upload it runs (1 for the first; each upload adds one).
    #[serde(default = "first_version")]
    pub version: u32,
    pub config: FunctionConfig,
    pub created_at: String,
    pub updated_at: String,
}

/// What a record stored before versions existed runs.
fn first_version() -> u32 {
    1
}

/// The stored record: the public info and the artifact it runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct FunctionRecord {
    #[serde(flatten)]
    pub(super) info: FunctionInfo,
    /// The artifact's file key and the SHA-256 of its bytes.
    pub(super) artifact_key: String,
    pub(super) artifact_sha256: String,
    /// The latest version uploaded (the next upload is one more).
    #[serde(default = "first_version")]
    pub(super) latest_version: u32,
}

/// A function's limits per UTC day. When one is spent, the function pauses until the day ends
/// (or the quota is raised): its events wait in its queue, nothing is lost, and HTTP calls are
/// refused with `429`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DailyQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invocations: Option<u64>,
    /// Metering points.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// CPU time, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_ms: Option<u64>,
}

/// What a function used in one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DailyUsage {
    /// `YYYY-MM-DD`.
    pub day: String,
    pub invocations: u64,
    /// Runs that did not end `ok`.
    pub failures: u64,
    pub fuel: u64,
    pub wall_us: u64,
    pub cpu_us: u64,
    pub host_calls: u64,
    /// Bytes sent and received by `fetch`.
    #[serde(default)]
    pub fetch_bytes: u64,
}

/// An uploaded module of a function, kept so it can be activated again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FunctionVersion {
    pub version: u32,
    /// SHA-256 of the module, lower-case hex.
    pub sha256: String,
    pub size: u64,
    pub created_at: String,
    /// Whether events and calls run it now.
    #[serde(default)]
    pub active: bool,
}

/// One run of a function (or an event that was not delivered).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Invocation {
    pub id: String,
    pub event_id: String,
    /// `create`, `update`, `delete`, `http` or `schedule`.
    pub trigger: String,
    /// `ok`, `error`, `timeout`, `dead` (the last failed attempt) or `dropped` (over the depth
    /// limit).
    pub status: String,
    pub attempt: u32,
    /// Wall time of the run, in microseconds.
    pub duration_us: u64,
    /// Metering points the run spent.
    #[serde(default)]
    pub fuel: u64,
    /// CPU time of the run, in microseconds.
    #[serde(default)]
    pub cpu_us: u64,
    /// The guest's peak linear memory, in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Host calls (reads and writes) the run made.
    #[serde(default)]
    pub host_calls: u32,
    /// Bytes the run sent and received with `fetch`.
    #[serde(default)]
    pub fetch_bytes: u64,
    /// For failures: `trap`, `fuel`, `timeout`, `host_calls`, `instantiate`, `thrown` (a
    /// JavaScript exception), `lost` (a write of the run was lost to a storage failure) or
    /// `result`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub logs: Vec<LogLine>,
    /// When the run ended (`at` minus `duration_us` is when it started); for an event that
    /// did not run, when that was decided.
    pub at: String,
    /// The version that ran (absent for an event that did not run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// A re-run through the replay API, not a delivery.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
    /// The event as delivered (trigger and schedule events), kept so it can be replayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub event: Option<Value>,
    /// The trace this run belongs to (32 hex digits): the request's, or the one a request
    /// without `traceparent` was given, carried through the change and its event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
    /// The run's own span in that trace (16 hex digits); the writes the run makes name it as
    /// their parent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<String>,
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    check_collection(name).map_err(|_| {
        FunctionsError::BadRequest(format!(
            "invalid function name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        ))
    })
}

impl Functions {
    pub(super) fn check_config(&self, config: &FunctionConfig) -> Result<()> {
        for (i, t) in config.triggers.iter().enumerate() {
            let field = format!("triggers[{i}]");
            let bad = |why: &str| Err(invalid(format!("{field}: {why}"), &field));
            match t.on.as_str() {
                "create" | "update" | "delete" | "write" => {
                    match (&t.collection, &t.bucket) {
                        (Some(c), None) | (None, Some(c)) => {
                            if check_collection(c).is_err() {
                                return bad("invalid collection or bucket name");
                            }
                        }
                        _ => return bad("name exactly one of `collection` and `bucket`"),
                    }
                    if t.cron.is_some() {
                        return bad("`cron` is only for schedule triggers");
                    }
                    if let Some(when) = &t.when {
                        if let Err(e) = when::compile(when) {
                            return bad(&format!("invalid `when`: {e}"));
                        }
                    }
                }
                "before_create" | "before_update" | "before_delete" => {
                    match (&t.collection, &t.bucket) {
                        (Some(c), None) if check_collection(c).is_ok() => {}
                        (Some(_), None) => return bad("invalid collection name"),
                        _ => return bad("a before-write hook takes a `collection`"),
                    }
                    if t.cron.is_some() || t.when.is_some() {
                        return bad("a before-write hook takes no `cron` or `when`");
                    }
                }
                "http" => {
                    if t.collection.is_some() || t.bucket.is_some() || t.cron.is_some() || t.when.is_some() {
                        return bad("an http trigger takes no other field");
                    }
                }
                "schedule" => {
                    let Some(cron) = &t.cron else {
                        return bad("a schedule trigger needs `cron`");
                    };
                    if let Err(e) = dispatch::parse_cron(cron) {
                        return bad(&format!("invalid cron {cron:?}: {e}"));
                    }
                    if t.collection.is_some() || t.bucket.is_some() || t.when.is_some() {
                        return bad("a schedule trigger takes no collection, bucket or `when`");
                    }
                }
                other => {
                    return bad(&format!(
                        "unknown trigger {other:?}: use create, update, delete, write, http, schedule, before_create, before_update or before_delete"
                    ))
                }
            }
        }
        if config.timeout_ms == Some(0) || config.timeout_ms.is_some_and(|t| t > 600_000) {
            return Err(invalid("timeout_ms must be 1 to 600000", "timeout_ms"));
        }
        if config.memory_mb == Some(0) || config.memory_mb.is_some_and(|m| m > MAX_MEMORY_MB) {
            return Err(invalid(
                format!("memory_mb must be 1 to {MAX_MEMORY_MB}"),
                "memory_mb",
            ));
        }
        if config.fuel == Some(0) || config.max_host_calls == Some(0) {
            return Err(invalid("fuel and max_host_calls must be positive", "fuel"));
        }
        if let Some(quota) = &config.daily_quota {
            if [quota.invocations, quota.fuel, quota.cpu_ms].contains(&Some(0)) {
                return Err(invalid(
                    "daily_quota values must be positive",
                    "daily_quota",
                ));
            }
        }
        if config.concurrency.is_some_and(|c| !(1..=256).contains(&c)) {
            return Err(invalid("concurrency must be 1 to 256", "concurrency"));
        }
        if config.max_retries.is_some_and(|r| r > 100) {
            return Err(invalid("max_retries must be 0 to 100", "max_retries"));
        }
        if config.hook_timeout_ms == Some(0) || config.hook_timeout_ms.is_some_and(|t| t > 10_000) {
            return Err(invalid(
                "hook_timeout_ms must be 1 to 10000",
                "hook_timeout_ms",
            ));
        }
        if config.hook_fuel == Some(0) {
            return Err(invalid("hook_fuel must be positive", "hook_fuel"));
        }
        if config.mail_per_hour.is_some_and(|n| n > 100_000) {
            return Err(invalid(
                "mail_per_hour must be 0 to 100000",
                "mail_per_hour",
            ));
        }
        if let Some(fetch) = &config.fetch {
            super::fetch::check(fetch)?;
        }
        Ok(())
    }
}
