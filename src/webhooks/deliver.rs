//! Delivering a webhook's queue: one task per webhook reads the queue in commit order and
//! keeps up to `concurrency` deliveries in flight, never two about the same document, file or
//! account, and never one whose key has an earlier message still waiting (in flight, or failed
//! and waiting for its retry). Each finished attempt is committed with the message's removal
//! (delivered, or dead after its last attempt, then kept for redelivery) or its rescheduling
//! with backoff. A crash between a delivery and that commit only means it is sent again with
//! the same `webhook-id`, which receivers use to ignore duplicates.

use super::records::{Queued, WebhookDelivery, WebhookRecord};
use super::{encode, prefix, unix_secs, Webhooks};
use crate::lease::Lease;
use crate::model::now_rfc3339;
use crate::store::{KvWrite, Space, StoreError};
use base64::Engine as _;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use hmac::{Hmac, Mac};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// How far ahead in a queue the dispatcher looks for messages it may send.
const LOOK_AHEAD: usize = 512;
/// Attempts recorded between two prunings of the log.
const PRUNE_EVERY: usize = 128;
/// How many records past `webhooks.log_kept` one pruning may remove (at least `PRUNE_EVERY`
/// times two, as each attempt adds at most an attempt and a message).
pub(super) const PRUNE_SLACK: usize = 2 * PRUNE_EVERY;
/// The longest wait between two looks at an idle queue: what another node's account events
/// (which no change wakes) wait at most.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// The longest retry delay.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// How much of an answer the log keeps.
const EXCERPT: usize = 1024;

type Task = (Arc<Notify>, tokio::task::JoinHandle<()>);

/// The running dispatcher tasks, by webhook.
#[derive(Default)]
pub(super) struct Dispatchers {
    tasks: Mutex<HashMap<String, Task>>,
    waker: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Dispatchers {
    pub(super) fn notify(&self, id: &str) {
        if let Ok(tasks) = self.tasks.lock() {
            if let Some((notify, _)) = tasks.get(id) {
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

    /// Stops the dispatchers of webhooks not in `ids`.
    pub(super) fn retain(&self, ids: &[String]) {
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.retain(|id, (_, task)| {
                let keep = ids.contains(id);
                if !keep {
                    task.abort();
                }
                keep
            });
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

/// Wakes the dispatchers of the webhooks a committed change concerns; its messages are in the
/// queues when it is broadcast.
pub(super) fn start_waker(webhooks: &Webhooks) {
    let mut changes = webhooks.inner.store.subscribe();
    let w = webhooks.clone();
    let task = webhooks.inner.tokio.spawn(async move {
        loop {
            match changes.recv().await {
                Ok(change) => {
                    for armed in w.armed().iter().filter(|a| a.concerns(&change)) {
                        w.inner.dispatch.notify(&armed.id);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    w.inner.dispatch.notify_all();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    if let Ok(mut slot) = webhooks.inner.dispatch.waker.lock() {
        *slot = Some(task);
    }
}

/// Starts the dispatcher of a webhook unless it runs, or wakes it (its configuration may have
/// changed).
pub(super) fn ensure(webhooks: &Webhooks, id: &str) {
    let Ok(mut tasks) = webhooks.inner.dispatch.tasks.lock() else {
        return;
    };
    if let Some((notify, task)) = tasks.get(id) {
        if !task.is_finished() {
            notify.notify_one();
            return;
        }
    }
    let notify = Arc::new(Notify::new());
    let task = webhooks
        .inner
        .tokio
        .spawn(run(webhooks.clone(), id.to_string(), notify.clone()));
    tasks.insert(id.to_string(), (notify, task));
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A queued message as the scheduler sees it.
pub(super) struct Candidate<'a> {
    pub(super) order: &'a str,
    pub(super) not_before: u64,
    pub(super) in_flight: bool,
}

/// Which of the queue's first messages (in commit order) to send now: at most `slots`, each
/// the first of its ordering key that is not in flight and due; a key whose first message
/// waits (in flight, or for its retry) holds back its later ones, and no other. Returns their
/// indexes, and when the first held-back retry is due (Unix milliseconds).
pub(super) fn pick(
    candidates: &[Candidate<'_>],
    now: u64,
    slots: usize,
) -> (Vec<usize>, Option<u64>) {
    let mut seen: HashSet<&str> = HashSet::new();
    let mut picked = Vec::new();
    let mut due: Option<u64> = None;
    for (i, c) in candidates.iter().enumerate() {
        if !seen.insert(c.order) || c.in_flight {
            continue;
        }
        if c.not_before > now {
            due = Some(due.map_or(c.not_before, |d| d.min(c.not_before)));
        } else if picked.len() < slots {
            picked.push(i);
        }
    }
    (picked, due)
}

/// A finished attempt, to commit.
struct Done {
    key: Vec<u8>,
    queued: Queued,
    delivered: bool,
    response_status: Option<u16>,
    response: Option<String>,
    error: Option<String>,
    latency_ms: u64,
}

async fn run(webhooks: Webhooks, id: String, notify: Arc<Notify>) {
    let store = webhooks.inner.store.clone();
    let mut lease = store
        .is_shared()
        .then(|| Lease::new(&format!("webhook:{id}"), &webhooks.inner.node));
    let mut in_flight: FuturesUnordered<BoxFuture<'static, Done>> = FuturesUnordered::new();
    let mut flying: HashSet<Vec<u8>> = HashSet::new();
    let mut recorded = 0usize;
    loop {
        let Some(record) = webhooks.loaded().get(&id).cloned() else {
            return;
        };
        let mut wait = IDLE_POLL;
        let holding = match lease.as_mut() {
            None => true,
            Some(lease) => match lease.hold(&store).await {
                Ok(None) => true,
                Ok(Some(until)) => {
                    wait = until
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                        .clamp(Duration::from_millis(50), Duration::from_secs(60));
                    false
                }
                Err(e) => {
                    tracing::warn!(webhook = %id, error = %e, "cannot take the webhook's lease");
                    false
                }
            },
        };
        let concurrency = record
            .info
            .spec
            .concurrency
            .unwrap_or(webhooks.inner.config.concurrency);
        if holding && record.info.spec.enabled && in_flight.len() < concurrency {
            match store
                .kv_prefix(Space::WebhookQueue, &prefix(&id), LOOK_AHEAD)
                .await
            {
                Ok(rows) => {
                    let queued: Vec<(Vec<u8>, Option<Queued>)> = rows
                        .into_iter()
                        .map(|(key, bytes)| (key, serde_json::from_slice(&bytes).ok()))
                        .collect();
                    let candidates: Vec<Candidate<'_>> = queued
                        .iter()
                        .filter_map(|(key, q)| {
                            let q = q.as_ref()?;
                            Some(Candidate {
                                order: &q.order,
                                not_before: q.not_before,
                                in_flight: flying.contains(key),
                            })
                        })
                        .collect();
                    let now = unix_ms(SystemTime::now());
                    let (picked, due) = pick(&candidates, now, concurrency - in_flight.len());
                    if let Some(due) = due {
                        wait = wait.min(Duration::from_millis(due.saturating_sub(now)));
                    }
                    let (readable, unreadable): (Vec<_>, Vec<_>) =
                        queued.into_iter().partition(|(_, q)| q.is_some());
                    if !unreadable.is_empty() {
                        tracing::error!(webhook = %id, count = unreadable.len(), "dropping unreadable webhook messages");
                        let write = unreadable
                            .into_iter()
                            .fold(KvWrite::default(), |w, (key, _)| {
                                w.delete(Space::WebhookQueue, key)
                            });
                        if let Err(e) = store.kv_write(write).await {
                            tracing::warn!(webhook = %id, error = %e, "cannot drop unreadable webhook messages");
                        }
                    }
                    let readable: Vec<(Vec<u8>, Queued)> = readable
                        .into_iter()
                        .filter_map(|(key, q)| Some((key, q?)))
                        .collect();
                    for i in picked {
                        let (key, q) = readable[i].clone();
                        flying.insert(key.clone());
                        in_flight.push(Box::pin(attempt(webhooks.clone(), record.clone(), key, q)));
                    }
                }
                Err(e) => {
                    tracing::warn!(webhook = %id, error = %e, "cannot read the webhook's queue")
                }
            }
        }
        tokio::select! {
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                let mut finished = vec![done];
                while let Some(Some(more)) = in_flight.next().now_or_never() {
                    finished.push(more);
                }
                for d in &finished {
                    flying.remove(&d.key);
                }
                recorded += finished.len();
                let write = outcome_write(&webhooks, &record, finished);
                let write = match &lease {
                    Some(lease) => lease.fence(write),
                    None => write,
                };
                match (store.kv_write(write).await, lease.as_mut()) {
                    (Ok(()), _) => {}
                    (Err(StoreError::CasFailed), Some(lease)) => {
                        tracing::info!(webhook = %id, "another node took over the webhook's deliveries");
                        lease.lost();
                    }
                    (Err(e), _) => {
                        tracing::warn!(webhook = %id, error = %e, "cannot record webhook deliveries; they are sent again");
                    }
                }
                if recorded >= PRUNE_EVERY {
                    recorded = 0;
                    if let Err(e) = prune(&webhooks, &id).await {
                        tracing::warn!(webhook = %id, error = %e, "cannot prune the webhook's log");
                    }
                }
            }
            _ = notify.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The retry delay after failed attempt `n` (1-based): `retry_base_ms` times 4^(n-1), at most
/// an hour, with ±20% jitter.
fn backoff(base_ms: u64, n: u32) -> Duration {
    let factor = 4u64.saturating_pow(n.saturating_sub(1).min(20));
    let delay = Duration::from_millis(base_ms.saturating_mul(factor)).min(MAX_BACKOFF);
    delay.mul_f64(rand::random::<f64>() * 0.4 + 0.8)
}

/// The write that records finished attempts: each attempt's record, and the message removed
/// and kept (delivered or dead) or rescheduled.
fn outcome_write(webhooks: &Webhooks, record: &WebhookRecord, finished: Vec<Done>) -> KvWrite {
    let id = &record.info.id;
    let max_attempts = record
        .info
        .spec
        .max_attempts
        .unwrap_or(webhooks.inner.config.max_attempts);
    let mut write = KvWrite::default();
    for done in finished {
        let mut queued = done.queued;
        let n = queued.message.attempts + 1;
        queued.message.attempts = n;
        let status = if done.delivered {
            "delivered"
        } else if n >= max_attempts {
            "dead"
        } else {
            "failed"
        };
        webhooks
            .inner
            .metrics
            .webhook_deliveries
            .with_label_values(&[status])
            .inc();
        let delivery = WebhookDelivery {
            id: ulid::Ulid::new().to_string(),
            message_id: queued.message.id.clone(),
            event_type: queued.message.event_type.clone(),
            attempt: n,
            status: status.into(),
            response_status: done.response_status,
            response: done.response,
            error: done.error,
            latency_ms: done.latency_ms,
            at: now_rfc3339(),
        };
        let mut attempt_key = prefix(id);
        attempt_key.extend_from_slice(delivery.id.as_bytes());
        write = write.put(Space::WebhookAttempts, attempt_key, encode(&delivery));
        if status == "failed" {
            let delay = backoff(webhooks.inner.config.retry_base_ms, n);
            queued.not_before = unix_ms(SystemTime::now() + delay);
            write = write.put(Space::WebhookQueue, done.key, encode(&queued));
        } else {
            queued.message.status = status.into();
            let mut kept_key = prefix(id);
            kept_key.extend_from_slice(queued.message.id.as_bytes());
            write = write.delete(Space::WebhookQueue, done.key).put(
                Space::WebhookMessages,
                kept_key,
                encode(&queued),
            );
        }
    }
    write
}

/// Removes a webhook's attempt records and kept messages beyond `webhooks.log_kept`.
async fn prune(webhooks: &Webhooks, id: &str) -> Result<(), StoreError> {
    let kept = webhooks.inner.config.log_kept;
    let store = &webhooks.inner.store;
    for space in [Space::WebhookAttempts, Space::WebhookMessages] {
        let rows = store
            .kv_prefix_last(space, &prefix(id), kept + PRUNE_SLACK)
            .await?;
        let old: Vec<Vec<u8>> = rows.into_iter().skip(kept).map(|(k, _)| k).collect();
        if !old.is_empty() {
            let write = old
                .into_iter()
                .fold(KvWrite::default(), |w, key| w.delete(space, key));
            store.kv_write(write).await?;
        }
    }
    Ok(())
}

/// The `webhook-signature` header: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`
/// under each key, separated by spaces.
fn signature(keys: &[Vec<u8>], id: &str, timestamp: u64, body: &str) -> String {
    keys.iter()
        .filter_map(|key| {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).ok()?;
            mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
            let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
            Some(format!("v1,{sig}"))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// An error with its causes, as the log shows it.
fn describe(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Sends one message once.
async fn attempt(
    webhooks: Webhooks,
    record: Arc<WebhookRecord>,
    key: Vec<u8>,
    queued: Queued,
) -> Done {
    let started = Instant::now();
    let mut done = Done {
        key,
        queued,
        delivered: false,
        response_status: None,
        response: None,
        error: None,
        latency_ms: 0,
    };
    let url = match reqwest::Url::parse(&record.info.spec.url) {
        Ok(url) => url,
        Err(e) => {
            done.error = Some(format!("the URL does not parse: {e}"));
            return done;
        }
    };
    if let Err(refused) = webhooks.inner.policy.check(&url) {
        done.error = Some(format!("refused: {refused}"));
        return done;
    }
    let now = unix_secs();
    let message = &done.queued.message;
    let sent = webhooks
        .inner
        .client
        .post(url)
        .header("content-type", "application/json")
        .header(
            "user-agent",
            concat!("Emberbase-Webhooks/", env!("CARGO_PKG_VERSION")),
        )
        .header("webhook-id", &message.id)
        .header("webhook-timestamp", now.to_string())
        .header(
            "webhook-signature",
            signature(&record.signing_keys(now), &message.id, now, &message.body),
        )
        .body(message.body.clone())
        .send()
        .await;
    match sent {
        Ok(mut response) => {
            let status = response.status();
            done.response_status = Some(status.as_u16());
            done.delivered = status.is_success();
            let mut excerpt = Vec::new();
            loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        excerpt.extend_from_slice(&chunk);
                        if excerpt.len() >= EXCERPT {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        done.error = Some(describe(&e));
                        break;
                    }
                }
            }
            excerpt.truncate(EXCERPT);
            if !excerpt.is_empty() {
                done.response = Some(String::from_utf8_lossy(&excerpt).into_owned());
            }
        }
        Err(e) => done.error = Some(describe(&e)),
    }
    done.latency_ms = started.elapsed().as_millis() as u64;
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(order: &str, not_before: u64, in_flight: bool) -> Candidate<'_> {
        Candidate {
            order,
            not_before,
            in_flight,
        }
    }

    #[test]
    fn each_key_goes_in_order_and_a_waiting_key_holds_back_only_itself() {
        let queue = [
            c("a", 0, false),
            c("b", 0, true),
            c("a", 0, false),
            c("b", 0, false),
            c("c", 500, false),
            c("c", 0, false),
            c("d", 0, false),
            c("e", 0, false),
        ];
        // a's second, b's second (b in flight), c's second (c's first waits) stay back.
        assert_eq!(pick(&queue, 100, 10), (vec![0, 6, 7], Some(500)));
        assert_eq!(pick(&queue, 100, 2), (vec![0, 6], Some(500)));
        assert_eq!(pick(&queue, 600, 10), (vec![0, 4, 6, 7], None));
        assert_eq!(pick(&queue, 600, 0), (vec![], None));
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_scheme() {
        // The example of the Standard Webhooks specification's reference libraries.
        let key = base64::engine::general_purpose::STANDARD
            .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
            .unwrap();
        let sig = signature(
            &[key],
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(backoff(1000, 1) <= Duration::from_millis(1200));
        assert!(backoff(1000, 3) >= Duration::from_millis(12_800));
        assert!(backoff(1000, 50) <= MAX_BACKOFF.mul_f64(1.2));
    }
}
