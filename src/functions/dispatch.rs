//! Delivering trigger and schedule events: one task per function delivers the function's
//! outbox through `crate::delivery` (up to `concurrency` events at once, those about one
//! document or file, and the schedule's ticks, one after the other in commit order), and
//! commits each invocation record together with the removal (or the rescheduled retry) of its
//! event. A crash between the run and that commit only means the event runs again, with the
//! same `event_id`. A failing event is retried with exponential backoff and jitter and holds
//! back only its own document's later events; a slow function delays only its own queue.

use super::invoke::outcome_status;
use super::runtime::Outcome;
use super::{Functions, FunctionsError, Invocation, Loaded};
use crate::delivery::{self, unix_ms, Head, Queue, Round, LOOK_AHEAD};
use crate::model::{format_time, now_rfc3339, Change, Subject};
use crate::store::{HookRecord, KvWrite, Space, StoreError};
use crate::trace::TraceContext;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Invocations recorded between two prunings of the log (which keeps at most twice as many
/// extra for a moment).
pub(super) const PRUNE_EVERY: usize = 64;
/// How long an event waits after the sandbox could not take it (busy, stopping).
const BUSY_PAUSE: Duration = Duration::from_secs(1);

/// A pending event in the outbox.
#[derive(Clone, Serialize, Deserialize)]
struct Pending {
    attempt: u32,
    /// Not before this time (Unix milliseconds).
    not_before: u64,
    event: Value,
}

/// The key prefix of a function's records in the `Events`, `Invocations` spaces.
pub(super) fn function_prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

pub(crate) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

/// The outbox record of `change` for function `name`: its pending event, or, past the depth
/// limit, a `dropped` invocation record.
pub(super) fn outbox_record(functions: &Functions, name: &str, change: &Change) -> HookRecord {
    let event_id = ulid::Ulid::new().to_string();
    let mut key = function_prefix(name);
    if change.depth > functions.inner.config.max_depth {
        let record = Invocation {
            id: ulid::Ulid::new().to_string(),
            event_id,
            trigger: change.kind.as_str().into(),
            status: "dropped".into(),
            attempt: 0,
            duration_us: 0,
            fuel: 0,
            cpu_us: 0,
            memory_bytes: 0,
            host_calls: 0,
            fetch_bytes: 0,
            failure: None,
            error: Some(format!(
                "the event is at depth {}, over the limit of {}",
                change.depth, functions.inner.config.max_depth
            )),
            logs: Vec::new(),
            at: now_rfc3339(),
            version: None,
            replay: false,
            event: None,
            trace_id: change.trace.map(|t| t.trace_id()),
            span_id: None,
        };
        key.extend_from_slice(record.id.as_bytes());
        return HookRecord::Plain(
            Space::Invocations,
            key,
            serde_json::to_vec(&record).unwrap_or_default(),
        );
    }
    let auth = change
        .actor
        .as_ref()
        .and_then(|a| serde_json::to_value(a).ok())
        .unwrap_or(Value::Null);
    let mut event = json!({"v": 1, "event_id": event_id, "attempt": 1,
        "trigger": change.kind.as_str(), "auth": auth, "depth": change.depth, "time": change.time});
    if let Some(trace) = change.trace {
        event["traceparent"] = json!(trace);
    }
    match &change.subject {
        Subject::Document {
            collection,
            id,
            before,
            after,
        } => {
            event["collection"] = json!(collection);
            event["id"] = json!(id);
            event["before"] = json!(before);
            event["after"] = json!(after);
        }
        Subject::File {
            bucket,
            path,
            before,
            after,
        } => {
            event["bucket"] = json!(bucket);
            event["path"] = json!(path);
            event["before"] = json!(before);
            event["after"] = json!(after);
        }
    }
    let pending = Pending {
        attempt: 1,
        not_before: 0,
        event,
    };
    // The key ends with the change's sequence, so a function's events sort in commit order.
    HookRecord::Stamped(
        Space::Events,
        key,
        serde_json::to_vec(&pending).unwrap_or_default(),
    )
}

impl Functions {
    /// Wakes every function's dispatcher, so each looks at its schedule again (after the dev
    /// clock moved).
    pub(crate) fn wake_schedules(&self) {
        self.inner.dispatch.notify_all();
    }
}

/// Wakes the dispatchers of the functions a committed change concerns. The events are already
/// in the outbox when the change is broadcast.
pub(super) fn start_waker(functions: &Functions) {
    let f = functions.clone();
    functions.inner.dispatch.follow(
        &functions.inner.tokio,
        functions.inner.store.subscribe(),
        move |change| {
            let Some(change) = change else {
                return f.inner.dispatch.notify_all();
            };
            let triggers = match f.inner.triggers.read() {
                Ok(t) => t.clone(),
                Err(_) => return,
            };
            for (name, trigger) in triggers.iter() {
                if trigger.matches(change) {
                    f.inner.dispatch.notify(name);
                }
            }
        },
    );
}

/// Starts the dispatcher of a function unless it runs (or this process does not deliver); a
/// running one looks again (a new config may have a new schedule).
pub(super) fn ensure(functions: &Functions, name: &str) {
    if !functions.inner.deliver {
        return;
    }
    functions.inner.dispatch.ensure(name, |notify| {
        let queue = Outbox {
            functions: functions.clone(),
            name: name.to_string(),
            loaded: None,
            recorded: 0,
            uncommitted: Arc::default(),
        };
        functions.inner.tokio.spawn(delivery::drive(
            queue,
            functions.inner.store.clone(),
            functions.inner.node.clone(),
            notify,
        ))
    });
}

/// An event of the outbox with its ordering key: the document's collection and id, the file's
/// bucket and path, or the schedule.
#[derive(Clone)]
struct Ordered {
    pending: Pending,
    order: String,
}

impl Ordered {
    fn new(pending: Pending) -> Ordered {
        let event = &pending.event;
        let field = |name: &str| event.get(name).and_then(Value::as_str).unwrap_or("");
        let order = match (field("collection"), field("bucket")) {
            ("", "") => format!("s\0{}", field("cron")),
            ("", bucket) => format!("f\0{bucket}\0{}", field("path")),
            (collection, _) => format!("d\0{collection}\0{}", field("id")),
        };
        Ordered { pending, order }
    }
}

/// A run of an event, to commit.
struct Ran {
    key: Vec<u8>,
    pending: Pending,
    /// `Err`: the sandbox could not take it; it waits and runs again, as the same attempt.
    outcome: Result<Outcome, FunctionsError>,
    /// When the run ended.
    at: String,
    /// The version that ran.
    version: Option<u32>,
    /// The run's trace context.
    trace: Option<TraceContext>,
}

/// A function's outbox, as `delivery::drive` delivers it.
struct Outbox {
    functions: Functions,
    name: String,
    /// The function as of the last look at the queue.
    loaded: Option<Arc<Loaded>>,
    /// Invocations recorded since the log was last pruned.
    recorded: usize,
    /// Runs started and not yet committed (which the usage counters do not have yet).
    uncommitted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Queue for Outbox {
    type Entry = Ordered;
    type Done = Ran;

    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(&mut self) -> Option<Round> {
        self.loaded = self.functions.loaded(&self.name);
        let loaded = self.loaded.clone()?;
        let next_tick = match fire_schedule(&self.functions, &loaded).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(function = %self.name, error = %e, "schedule failed");
                Some(crate::clock::now() + BUSY_PAUSE)
            }
        };
        // Ticks are in the clock's time, which the dev clock may have moved ahead.
        let wait = next_tick.map(|t| {
            t.duration_since(crate::clock::now())
                .unwrap_or(Duration::ZERO)
        });
        let config = &loaded.record.info.config;
        let concurrency = config
            .concurrency
            .unwrap_or(self.functions.inner.config.concurrency);
        let Some(quota) = &config.daily_quota else {
            return Some(Round::new(wait, concurrency));
        };
        let uncommitted = self.uncommitted.load(std::sync::atomic::Ordering::SeqCst) as u64;
        match self
            .functions
            .quota_left(&self.name, quota, uncommitted)
            .await
        {
            Ok(Ok(left)) => Some(Round {
                wait,
                concurrency,
                budget: left.map(|n| n as usize),
            }),
            Ok(Err(until)) => {
                let left = until
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Some(Round::new(Some(left), 0))
            }
            Err(e) => {
                tracing::warn!(function = %self.name, error = %e, "cannot read the function's usage");
                Some(Round::new(Some(BUSY_PAUSE), 0))
            }
        }
    }

    async fn head(&self) -> Result<Head<Ordered>, StoreError> {
        let rows = self
            .functions
            .inner
            .store
            .kv_prefix(Space::Events, &function_prefix(&self.name), LOOK_AHEAD)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(key, bytes)| {
                let pending = serde_json::from_slice::<Pending>(&bytes).ok();
                (key, pending.map(Ordered::new))
            })
            .collect())
    }

    fn schedule<'a>(&self, entry: &'a Ordered) -> (&'a str, u64) {
        (&entry.order, entry.pending.not_before)
    }

    fn deliver(&self, key: Vec<u8>, entry: Ordered) -> BoxFuture<'static, Ran> {
        self.uncommitted
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let functions = self.functions.clone();
        // The version active now, not as of the round's start: one activated while the head
        // was read runs this event.
        let loaded = self.functions.loaded(&self.name);
        let name = self.name.clone();
        Box::pin(async move {
            let mut pending = entry.pending;
            pending.event["attempt"] = json!(pending.attempt);
            let depth = pending
                .event
                .get("depth")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32;
            let version = loaded.as_ref().map(|l| l.record.info.version);
            let parent = event_trace(&pending.event);
            let (outcome, trace) = match loaded {
                Some(loaded) => {
                    match functions
                        .run(
                            super::Lane::Events,
                            &loaded,
                            &pending.event,
                            depth + 1,
                            parent,
                        )
                        .await
                    {
                        Ok((outcome, trace)) => (Ok(outcome), Some(trace)),
                        Err(e) => (Err(e), None),
                    }
                }
                None => (Err(FunctionsError::NotFound(name)), None),
            };
            Ran {
                key,
                pending,
                outcome,
                at: now_rfc3339(),
                version,
                trace,
            }
        })
    }

    fn key<'a>(&self, done: &'a Ran) -> &'a [u8] {
        &done.key
    }

    async fn outcome(&self, done: Vec<Ran>) -> (KvWrite, bool) {
        let mut write = KvWrite::default();
        let mut rescheduled = false;
        for ran in done {
            let (next, again) = record_run(
                &self.functions,
                self.loaded.as_deref(),
                &self.name,
                write,
                ran,
            )
            .await;
            write = next;
            rescheduled |= again;
        }
        (write, rescheduled)
    }

    fn drop_unreadable(&self, keys: Vec<Vec<u8>>) -> KvWrite {
        keys.into_iter()
            .fold(KvWrite::default(), |w, key| w.delete(Space::Events, key))
    }

    async fn committed(&mut self, count: usize, idle: bool) {
        self.uncommitted
            .fetch_sub(count, std::sync::atomic::Ordering::SeqCst);
        self.recorded += count;
        if self.recorded < PRUNE_EVERY && !idle {
            return;
        }
        self.recorded = 0;
        let write = self
            .functions
            .prune_invocations(KvWrite::default(), &self.name, 0, 2 * PRUNE_EVERY)
            .await;
        if let Err(e) = self.functions.inner.store.kv_write(write).await {
            tracing::warn!(function = %self.name, error = %e, "cannot prune the invocation log");
        }
    }
}

type Utc = chrono::DateTime<chrono::Utc>;

/// The tick to fire for a schedule last fired at `last`: the latest tick in `(last, now]`, so
/// ticks missed while the server was down fire once, not once each.
fn due_tick(cron: &croner::Cron, last: Utc, now: Utc) -> Option<Utc> {
    cron.find_previous_occurrence(&now, true)
        .ok()
        .filter(|tick| *tick > last)
}

/// Fires the schedule triggers that are due. A function's schedule remembers the last tick it
/// fired; ticks missed while the server was down fire once, as the latest of them. Returns when
/// the next tick is due.
async fn fire_schedule(
    functions: &Functions,
    loaded: &Loaded,
) -> super::Result<Option<SystemTime>> {
    let name = &loaded.record.info.name;
    let store = &functions.inner.store;
    let mut next_due: Option<SystemTime> = None;
    for trigger in loaded
        .record
        .info
        .config
        .triggers
        .iter()
        .filter(|t| t.on == "schedule")
    {
        let Some(expr) = &trigger.cron else { continue };
        let Ok(cron) = parse_cron(expr) else { continue };
        let state_key = [name.as_bytes(), b"\0", expr.as_bytes()].concat();
        let stored = store.kv_get(Space::Schedules, &state_key).await?;
        let now = crate::clock::now_utc();
        let last = match stored.as_deref().and_then(|b| std::str::from_utf8(b).ok()) {
            Some(s) => {
                time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                    .unwrap_or(now)
            }
            None => {
                // The first time a schedule is seen, it starts from now.
                let write = KvWrite::default()
                    .check(Space::Schedules, state_key.clone(), None)
                    .put(
                        Space::Schedules,
                        state_key.clone(),
                        format_time(now).into_bytes(),
                    );
                let _ = store.kv_write(write).await;
                now
            }
        };
        let to_chrono = |t: time::OffsetDateTime| {
            chrono::DateTime::<chrono::Utc>::from_timestamp(t.unix_timestamp(), t.nanosecond())
        };
        let (Some(last_c), Some(now_c)) = (to_chrono(last), to_chrono(now)) else {
            continue;
        };
        if let Ok(next) = cron.find_next_occurrence(&now_c, false) {
            let at = UNIX_EPOCH + Duration::from_millis(next.timestamp_millis().max(0) as u64);
            next_due = Some(next_due.map_or(at, |n: SystemTime| n.min(at)));
        }
        let Some(tick) = due_tick(&cron, last_c, now_c) else {
            continue;
        };
        let scheduled_for = tick.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let event = json!({"v": 1, "event_id": ulid::Ulid::new().to_string(), "attempt": 1,
            "trigger": "schedule", "cron": expr, "scheduled_for": scheduled_for});
        let pending = Pending {
            attempt: 1,
            not_before: 0,
            event,
        };
        let mut key = function_prefix(name);
        // After every change-triggered event (sequence keys), in tick order.
        key.push(0xFF);
        key.extend_from_slice(&(tick.timestamp_millis().max(0) as u64).to_be_bytes());
        let write = KvWrite::default()
            .check(
                Space::Schedules,
                state_key.clone(),
                stored
                    .clone()
                    .or_else(|| Some(format_time(last).into_bytes())),
            )
            .put(Space::Schedules, state_key, scheduled_for.into_bytes())
            .put(
                Space::Events,
                key,
                serde_json::to_vec(&pending).unwrap_or_default(),
            );
        store.kv_write(write).await?;
    }
    Ok(next_due)
}

/// The trace context of the change that queued an event (absent for schedule ticks and for
/// events queued before traces were recorded).
pub(super) fn event_trace(event: &Value) -> Option<TraceContext> {
    event
        .get("traceparent")
        .and_then(Value::as_str)
        .and_then(TraceContext::parse)
}

/// The invocation record of a run of `event` (kept in it), and whether the run failed: a
/// trap, a limit, a result that is not JSON, or `{"ok": false}`.
pub(super) fn judge(
    event: &Value,
    attempt: u32,
    mut outcome: Outcome,
    at: String,
    version: Option<u32>,
    trace: Option<TraceContext>,
) -> (Invocation, bool) {
    let failed = match &outcome.result {
        Ok(Some(bytes)) => match serde_json::from_slice::<Value>(bytes) {
            Ok(v) if v.get("ok") == Some(&Value::Bool(false)) => Some(
                v.get("error")
                    .and_then(Value::as_str)
                    .unwrap_or("the function returned ok: false")
                    .to_string(),
            ),
            Ok(_) => None,
            Err(e) => Some(format!("the result is not JSON: {e}")),
        },
        Ok(None) => None,
        Err(f) => Some(f.to_string()),
    };
    let (mut status, failure, error) = outcome_status(&outcome.result);
    let error = error.or_else(|| failed.clone());
    if failed.is_some() && status == "ok" {
        status = "error";
    }
    let field = |name: &str| {
        event
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let record = Invocation {
        event_id: field("event_id"),
        trigger: field("trigger"),
        status: status.into(),
        attempt,
        failure,
        error,
        at,
        version,
        event: Some(event.clone()),
        ..Invocation::of_run(&mut outcome, trace)
    };
    (record, failed.is_some())
}

/// Adds what a run leaves to a write: its invocation record, and its event removed (done, or
/// dead after its last attempt) or rescheduled with backoff (then also says so).
async fn record_run(
    functions: &Functions,
    loaded: Option<&Loaded>,
    name: &str,
    write: KvWrite,
    ran: Ran,
) -> (KvWrite, bool) {
    let Ran {
        key,
        mut pending,
        outcome,
        at,
        version,
        trace,
    } = ran;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            tracing::warn!(function = %name, error = %e, "cannot run an event now; it waits");
            pending.not_before = unix_ms(SystemTime::now() + BUSY_PAUSE);
            let write = write.put(
                Space::Events,
                key,
                serde_json::to_vec(&pending).unwrap_or_default(),
            );
            return (write, true);
        }
    };
    let max_retries = loaded
        .and_then(|l| l.record.info.config.max_retries)
        .unwrap_or(functions.inner.config.max_retries);
    let last_attempt = pending.attempt > max_retries;
    let (mut record, failed) = judge(&pending.event, pending.attempt, outcome, at, version, trace);
    if failed && last_attempt {
        record.status = "dead".into();
    }
    let write = super::invoke::put_invocation(write, name, &record);
    if failed && !last_attempt {
        let base = functions.inner.config.retry_base_ms;
        let backoff =
            Duration::from_millis(base.saturating_mul(1 << (pending.attempt - 1).min(20)))
                .min(MAX_BACKOFF);
        let delay = backoff.mul_f64(rand::random::<f64>() * 0.4 + 0.8);
        pending.attempt += 1;
        pending.not_before = unix_ms(SystemTime::now() + delay);
        let write = write.put(
            Space::Events,
            key,
            serde_json::to_vec(&pending).unwrap_or_default(),
        );
        return (write, true);
    }
    (write.delete(Space::Events, key), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Utc {
        chrono::DateTime::parse_from_rfc3339(s)
            .unwrap()
            .with_timezone(&chrono::Utc)
    }

    #[test]
    fn missed_ticks_fire_once_as_the_latest() {
        let every_minute = parse_cron("* * * * *").unwrap();
        // Down from 10:00:30 to 10:05:30: five ticks missed, one fires, for 10:05.
        assert_eq!(
            due_tick(
                &every_minute,
                at("2026-11-26T10:00:30Z"),
                at("2026-11-26T10:05:30Z")
            ),
            Some(at("2026-11-26T10:05:00Z"))
        );
        // Nothing new since the last tick fired.
        assert_eq!(
            due_tick(
                &every_minute,
                at("2026-11-26T10:05:00Z"),
                at("2026-11-26T10:05:59Z")
            ),
            None
        );
        let every_five = parse_cron("*/5 * * * *").unwrap();
        assert_eq!(
            due_tick(
                &every_five,
                at("2026-11-26T09:00:00Z"),
                at("2026-11-26T10:07:00Z")
            ),
            Some(at("2026-11-26T10:05:00Z"))
        );
        let seconds = parse_cron("*/2 * * * * *").unwrap();
        assert_eq!(
            due_tick(
                &seconds,
                at("2026-11-26T10:00:00Z"),
                at("2026-11-26T10:00:05Z")
            ),
            Some(at("2026-11-26T10:00:04Z"))
        );
        assert!(parse_cron("not a cron").is_err());
        assert!(parse_cron("* * * *").is_err());
    }
}
