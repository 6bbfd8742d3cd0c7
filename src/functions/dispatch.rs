//! Delivering trigger and schedule events: one task per function reads the function's outbox
//! in order, runs each event, and commits its invocation record together with the removal (or
//! the rescheduled retry) of the event. A crash between the run and that commit only means the
//! event runs again, with the same `event_id`. A failing event is retried with exponential
//! backoff and jitter and holds back the events behind it, so each function sees the changes
//! of a document in commit order; a slow function delays only its own queue.

use super::invoke::outcome_status;
use super::{Functions, Invocation, Loaded};
use crate::lease::Lease;
use crate::model::{format_time, now_rfc3339, Change, Subject};
use crate::store::{HookRecord, KvWrite, Space};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// The most events run before their results are committed together.
const BATCH: usize = 64;
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A pending event in the outbox.
#[derive(Serialize, Deserialize)]
struct Pending {
    attempt: u32,
    /// Not before this time (Unix milliseconds).
    not_before: u64,
    event: Value,
}

/// A dispatcher task and the signal that wakes it.
type Task = (Arc<Notify>, tokio::task::JoinHandle<()>);

/// The running dispatcher tasks, by function.
#[derive(Default)]
pub(super) struct Dispatchers {
    tasks: Mutex<HashMap<String, Task>>,
    waker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Dispatchers {
    fn notify(&self, name: &str) {
        if let Ok(tasks) = self.tasks.lock() {
            if let Some((notify, _)) = tasks.get(name) {
                notify.notify_one();
            }
        }
    }

    fn notify_all(&self) {
        if let Ok(tasks) = self.tasks.lock() {
            for (notify, _) in tasks.values() {
                notify.notify_one();
            }
        }
    }

    pub(super) fn remove(&self, name: &str) {
        if let Ok(mut tasks) = self.tasks.lock() {
            if let Some((_, task)) = tasks.remove(name) {
                task.abort();
            }
        }
    }

    pub(super) fn stop(&self) {
        if let Ok(mut tasks) = self.tasks.lock() {
            for (_, (_, task)) in tasks.drain() {
                task.abort();
            }
        }
        if let Some(waker) = self.waker.lock().ok().and_then(|mut w| w.take()) {
            waker.abort();
        }
    }
}

/// The key prefix of a function's records in the `Events`, `Invocations` spaces.
pub(super) fn function_prefix(name: &str) -> Vec<u8> {
    let mut k = name.as_bytes().to_vec();
    k.push(0);
    k
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(super) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
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
            failure: None,
            error: Some(format!(
                "the event is at depth {}, over the limit of {}",
                change.depth, functions.inner.config.max_depth
            )),
            logs: Vec::new(),
            at: now_rfc3339(),
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

/// Wakes the dispatchers of the functions a committed change concerns. The events are already
/// in the outbox when the change is broadcast.
pub(super) fn start_waker(functions: &Functions) {
    let mut changes = functions.inner.store.subscribe();
    let tokio = functions.inner.tokio.clone();
    let dispatch = functions.clone();
    let functions = functions.clone();
    let task = tokio.spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    let triggers = match functions.inner.triggers.read() {
                        Ok(t) => t.clone(),
                        Err(_) => continue,
                    };
                    for (name, trigger) in triggers.iter() {
                        if trigger.matches(&change) {
                            functions.inner.dispatch.notify(name);
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    functions.inner.dispatch.notify_all();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let slot = dispatch.inner.dispatch.waker.lock();
    if let Ok(mut slot) = slot {
        *slot = Some(task);
    }
}

/// Starts the dispatcher of a function unless it runs.
pub(super) fn ensure(functions: &Functions, name: &str) {
    let Ok(mut tasks) = functions.inner.dispatch.tasks.lock() else {
        return;
    };
    if let Some((notify, task)) = tasks.get(name) {
        if !task.is_finished() {
            // A new config may have a new schedule: let the loop look again.
            notify.notify_one();
            return;
        }
    }
    let notify = Arc::new(Notify::new());
    let task =
        functions
            .inner
            .tokio
            .spawn(run(functions.clone(), name.to_string(), notify.clone()));
    tasks.insert(name.to_string(), (notify, task));
}

async fn run(functions: Functions, name: String, notify: Arc<Notify>) {
    let store = functions.inner.store.clone();
    let mut lease = store
        .is_shared()
        .then(|| Lease::new(&name, &functions.inner.node));
    loop {
        let Some(loaded) = functions.loaded(&name) else {
            return;
        };
        if let Some(lease) = &mut lease {
            let held_elsewhere = match lease.hold(&store).await {
                Ok(None) => None,
                Ok(Some(until)) => Some(until),
                Err(e) => {
                    tracing::warn!(function = %name, error = %e, "cannot take the function's lease");
                    Some(SystemTime::now() + Duration::from_secs(1))
                }
            };
            if let Some(until) = held_elsewhere {
                let pause = until
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .clamp(Duration::from_millis(50), Duration::from_secs(60));
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        let next_tick = match fire_schedule(&functions, &loaded).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(function = %name, error = %e, "schedule failed");
                Some(SystemTime::now() + Duration::from_secs(1))
            }
        };
        let wait_until = match deliver(&functions, &loaded, lease.as_mut()).await {
            Ok(wait) => wait,
            Err(e) => {
                tracing::warn!(function = %name, error = %e, "delivering events failed");
                Some(SystemTime::now() + Duration::from_secs(1))
            }
        };
        let Some(wait) = wait_until else {
            continue;
        };
        let until = next_tick.map_or(wait, |t| t.min(wait));
        let sleep = until
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(60));
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
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
        let now = time::OffsetDateTime::now_utc();
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

/// Runs the due events of a function's outbox, in order, and commits their outcomes (in a
/// cluster, only while this node holds the function's `lease`). Returns `None` to go on at
/// once, or when to look again.
async fn deliver(
    functions: &Functions,
    loaded: &Loaded,
    mut lease: Option<&mut Lease>,
) -> super::Result<Option<SystemTime>> {
    let name = &loaded.record.info.name;
    let store = &functions.inner.store;
    let entries = store
        .kv_prefix(Space::Events, &function_prefix(name), BATCH)
        .await?;
    if entries.is_empty() {
        return Ok(Some(SystemTime::now() + Duration::from_secs(60)));
    }
    let max_retries = loaded
        .record
        .info
        .config
        .max_retries
        .unwrap_or(functions.inner.config.max_retries);
    let mut write = KvWrite::default();
    let mut wait = None;
    for (key, bytes) in entries {
        let Ok(mut pending) = serde_json::from_slice::<Pending>(&bytes) else {
            tracing::error!(function = %name, "dropping an unreadable outbox entry");
            write = write.delete(Space::Events, key);
            continue;
        };
        let now = unix_ms(SystemTime::now());
        if pending.not_before > now {
            wait = Some(UNIX_EPOCH + Duration::from_millis(pending.not_before));
            break;
        }
        // A long batch renews the lease as it goes; one lost stops it here.
        if let Some(lease) = lease.as_deref_mut() {
            if lease.hold(store).await?.is_some() {
                break;
            }
        }
        pending.event["attempt"] = json!(pending.attempt);
        let depth = pending
            .event
            .get("depth")
            .and_then(Value::as_u64)
            .unwrap_or(0) as u32;
        let outcome = functions
            .run(super::Lane::Events, loaded, &pending.event, depth + 1)
            .await?;
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
        let last_attempt = pending.attempt > max_retries;
        if failed.is_some() && status == "ok" {
            status = "error";
        }
        if failed.is_some() && last_attempt {
            status = "dead";
        }
        let record = Invocation {
            id: ulid::Ulid::new().to_string(),
            event_id: pending
                .event
                .get("event_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            trigger: pending
                .event
                .get("trigger")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            status: status.into(),
            attempt: pending.attempt,
            duration_us: outcome.duration.as_micros() as u64,
            failure,
            error,
            logs: outcome.logs,
            at: now_rfc3339(),
        };
        write = functions.record_invocation(write, name, &record).await;
        if failed.is_some() && !last_attempt {
            let base = functions.inner.config.retry_base_ms;
            let backoff =
                Duration::from_millis(base.saturating_mul(1 << (pending.attempt - 1).min(20)))
                    .min(MAX_BACKOFF);
            let jitter = rand::random::<f64>() * 0.4 + 0.8;
            let delay = backoff.mul_f64(jitter);
            pending.attempt += 1;
            pending.not_before = now + delay.as_millis() as u64;
            write = write.put(
                Space::Events,
                key,
                serde_json::to_vec(&pending).unwrap_or_default(),
            );
            wait = Some(SystemTime::now() + delay);
            break;
        }
        write = write.delete(Space::Events, key);
    }
    if let Some(lease) = &lease {
        write = lease.fence(write);
    }
    match (store.kv_write(write).await, lease) {
        (Err(crate::store::StoreError::CasFailed), Some(lease)) => {
            tracing::info!(function = %name, "another node took over the function's events");
            lease.lost();
            Ok(None)
        }
        (result, _) => {
            result?;
            Ok(wait)
        }
    }
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
