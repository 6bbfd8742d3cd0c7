//! Delivering a webhook's queue (through `crate::delivery`: in commit order per document,
//! file or account, up to `concurrency` at once): each attempt signed and sent through the
//! outbound policy, then committed with the message's removal (delivered, or dead after its
//! last attempt, then kept for redelivery) or its rescheduling with backoff. A crash between a
//! delivery and that commit only means it is sent again with the same `webhook-id`, which
//! receivers use to ignore duplicates.

use super::records::{Queued, WebhookDelivery, WebhookRecord};
use super::{encode, prefix, unix_secs, Webhooks};
use crate::delivery::{self, unix_ms, Head, Queue, Round, LOOK_AHEAD};
use crate::model::now_rfc3339;
use crate::store::{KvWrite, Space, StoreError};
use crate::trace::{Kind, TraceContext};
use base64::Engine as _;
use futures_util::future::BoxFuture;
use hmac::{Hmac, Mac};
use std::future::Future;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// Attempts recorded between two prunings of the log.
const PRUNE_EVERY: usize = 128;
/// How many records past `webhooks.log_kept` one pruning may remove (at least `PRUNE_EVERY`
/// times two, as each attempt adds at most an attempt and a message).
pub(super) const PRUNE_SLACK: usize = 2 * PRUNE_EVERY;
/// How much of an answer the log keeps.
const EXCERPT: usize = 1024;

/// Wakes the dispatchers of the webhooks a committed change concerns; its messages are in the
/// queues when it is broadcast.
pub(super) fn start_waker(webhooks: &Webhooks) {
    let w = webhooks.clone();
    webhooks.inner.dispatch.follow(
        &webhooks.inner.tokio,
        webhooks.inner.store.subscribe(),
        move |change| match change {
            Some(change) => {
                for armed in w.armed().iter().filter(|a| a.concerns(change)) {
                    w.inner.dispatch.notify(&armed.id);
                }
            }
            None => w.inner.dispatch.notify_all(),
        },
    );
}

/// Starts the dispatcher of a webhook unless it runs (or this process does not deliver), or
/// wakes it (its configuration may have changed).
pub(super) fn ensure(webhooks: &Webhooks, id: &str) {
    if !webhooks.inner.deliver {
        return;
    }
    webhooks.inner.dispatch.ensure(id, |notify| {
        let queue = WebhookQueue {
            webhooks: webhooks.clone(),
            id: id.to_string(),
            name: format!("webhook:{id}"),
            record: None,
            recorded: 0,
        };
        webhooks.inner.tokio.spawn(delivery::drive(
            queue,
            webhooks.inner.store.clone(),
            webhooks.inner.node.clone(),
            notify,
        ))
    });
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
    /// The attempt's span.
    trace: TraceContext,
}

/// A webhook's queue, as `delivery::drive` delivers it.
struct WebhookQueue {
    webhooks: Webhooks,
    id: String,
    /// `webhook:` and the id: the lease's name.
    name: String,
    /// The webhook as of the last look at the queue.
    record: Option<Arc<WebhookRecord>>,
    /// Attempts recorded since the log was last pruned.
    recorded: usize,
}

impl Queue for WebhookQueue {
    type Entry = Queued;
    type Done = Done;

    fn name(&self) -> &str {
        &self.name
    }

    fn prepare(&mut self) -> impl Future<Output = Option<Round>> + Send {
        self.record = self.webhooks.record(&self.id).ok();
        let concurrency = self.record.as_ref().map(|record| {
            let spec = &record.info.spec;
            match spec.enabled {
                true => spec
                    .concurrency
                    .unwrap_or(self.webhooks.inner.config.concurrency),
                false => 0,
            }
        });
        std::future::ready(concurrency.map(|c| Round::new(None, c)))
    }

    async fn head(&self) -> Result<Head<Queued>, StoreError> {
        let rows = self
            .webhooks
            .inner
            .store
            .kv_prefix(Space::WebhookQueue, &prefix(&self.id), LOOK_AHEAD)
            .await?;
        Ok(delivery::parse_head(rows))
    }

    fn schedule<'a>(&self, entry: &'a Queued) -> (&'a str, u64) {
        (&entry.order, entry.not_before)
    }

    fn deliver(&self, key: Vec<u8>, entry: Queued) -> BoxFuture<'static, Done> {
        // The webhook as it is now, not as of the round's start: a secret rotated or a URL
        // changed while the head was read applies to this attempt.
        match self.webhooks.record(&self.id) {
            Ok(record) => Box::pin(deliver(self.webhooks.clone(), record, key, entry)),
            Err(_) => Box::pin(std::future::ready(Done {
                trace: entry
                    .trace
                    .map_or_else(|| self.webhooks.inner.tracer.root(), |t| t.child()),
                key,
                queued: entry,
                delivered: false,
                response_status: None,
                response: None,
                error: Some("the webhook was deleted".into()),
                latency_ms: 0,
            })),
        }
    }

    fn key<'a>(&self, done: &'a Done) -> &'a [u8] {
        &done.key
    }

    async fn outcome(&self, done: Vec<Done>) -> (KvWrite, bool) {
        match &self.record {
            Some(record) => outcome_write(&self.webhooks, record, done),
            None => (KvWrite::default(), false),
        }
    }

    fn drop_unreadable(&self, keys: Vec<Vec<u8>>) -> KvWrite {
        keys.into_iter().fold(KvWrite::default(), |w, key| {
            w.delete(Space::WebhookQueue, key)
        })
    }

    async fn committed(&mut self, count: usize, idle: bool) {
        self.recorded += count;
        if self.recorded >= PRUNE_EVERY || idle {
            self.recorded = 0;
            if let Err(e) = prune(&self.webhooks, &self.id).await {
                tracing::warn!(webhook = %self.id, error = %e, "cannot prune the webhook's log");
            }
        }
    }
}

/// The write that records finished attempts: each attempt's record, and the message removed
/// and kept (delivered or dead) or rescheduled; and whether one was rescheduled.
fn outcome_write(
    webhooks: &Webhooks,
    record: &WebhookRecord,
    finished: Vec<Done>,
) -> (KvWrite, bool) {
    let id = &record.info.id;
    let max_attempts = record
        .info
        .spec
        .max_attempts
        .unwrap_or(webhooks.inner.config.max_attempts);
    let mut write = KvWrite::default();
    let mut rescheduled = false;
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
            trace_id: Some(done.trace.trace_id()),
            span_id: Some(done.trace.span_id()),
        };
        let mut attempt_key = prefix(id);
        attempt_key.extend_from_slice(delivery.id.as_bytes());
        write = write.put(Space::WebhookAttempts, attempt_key, encode(&delivery));
        if status == "failed" {
            rescheduled = true;
            let delay = delivery::backoff(webhooks.inner.config.retry_base_ms, n);
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
    (write, rescheduled)
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

/// Sends one message once, in a span that is a child of the message's trace.
async fn deliver(
    webhooks: Webhooks,
    record: Arc<WebhookRecord>,
    key: Vec<u8>,
    queued: Queued,
) -> Done {
    let started = Instant::now();
    let mut span = webhooks.inner.tracer.span(
        format!("webhook {}", queued.message.event_type),
        Kind::Client,
        queued.trace,
    );
    let mut done = Done {
        key,
        queued,
        delivered: false,
        response_status: None,
        response: None,
        error: None,
        latency_ms: 0,
        trace: span.context(),
    };
    attempt(&webhooks, &record, &mut done).await;
    done.latency_ms = started.elapsed().as_millis() as u64;
    if span.recording() {
        span.set("http.request.method", "POST");
        span.set("emberbase.webhook", record.info.id.as_str());
        span.set("emberbase.webhook.message", done.queued.message.id.as_str());
        span.set(
            "emberbase.webhook.attempt",
            done.queued.message.attempts + 1,
        );
        if let Some(host) = reqwest::Url::parse(&record.info.spec.url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
        {
            span.set("server.address", host);
        }
        if let Some(status) = done.response_status {
            span.set("http.response.status_code", u32::from(status));
        }
        if !done.delivered {
            span.fail(
                done.error
                    .clone()
                    .unwrap_or_else(|| "the receiver did not answer 2xx".into()),
            );
        }
    }
    done
}

/// Sends one attempt of a message, recording its answer (or error) in `done`.
async fn attempt(webhooks: &Webhooks, record: &WebhookRecord, done: &mut Done) {
    let url = match reqwest::Url::parse(&record.info.spec.url) {
        Ok(url) => url,
        Err(e) => {
            done.error = Some(format!("the URL does not parse: {e}"));
            return;
        }
    };
    if let Err(refused) = webhooks.inner.policy.check(&url) {
        done.error = Some(format!("refused: {refused}"));
        return;
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
        .header("traceparent", done.trace.to_string())
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
                        done.error = Some(crate::outbound::describe(&e));
                        break;
                    }
                }
            }
            excerpt.truncate(EXCERPT);
            if !excerpt.is_empty() {
                done.response = Some(String::from_utf8_lossy(&excerpt).into_owned());
            }
        }
        Err(e) => done.error = Some(crate::outbound::describe(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
