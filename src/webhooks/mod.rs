//! Outbound webhooks: document events of a collection, file events of a bucket or account
//! events, POSTed to a URL in the Standard Webhooks format, signed with a per-webhook secret.
//!
//! - A message is queued in the same transaction as the change or account write it is about
//!   (`Hook`, a `CommitHook`), only when the webhook takes that event and its `when` holds; a
//!   crash can delay a delivery, never lose one or send one for a write that did not happen.
//! - One dispatcher task per webhook (`deliver`) delivers its queue at least once: messages
//!   about different documents concurrently, those about the same document, file or account
//!   one after the other in commit order, a failing one holding back only its own key's later
//!   messages. Each attempt is recorded with the message's removal or rescheduling, in one
//!   commit; a message that fails its last attempt is dead and kept for redelivery.
//! - Every request goes through the outbound address policy (`crate::outbound`).

mod deliver;
mod error;
mod records;

pub use error::WebhooksError;
pub use records::{WebhookDelivery, WebhookInfo, WebhookMessage, WebhookSpec, WebhookWithSecret};

use crate::auth::Principal;
use crate::config::{OutboundConfig, WebhooksConfig};
use crate::metrics::Metrics;
use crate::model::{now_rfc3339, AccountEvent, Change};
use crate::outbound::Policy;
use crate::store::{CommitHook, HookRecord, KvWrite, Space, Store};
use crate::trace::Tracer;
use error::Result;
use records::{Armed, Queued, WebhookRecord};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The most records one cleanup write removes.
const DELETE_CHUNK: usize = 512;

struct Inner {
    store: Store,
    config: WebhooksConfig,
    policy: Policy,
    client: reqwest::Client,
    metrics: Arc<Metrics>,
    tracer: Tracer,
    /// Every webhook, by id.
    loaded: RwLock<Arc<HashMap<String, Arc<WebhookRecord>>>>,
    /// The enabled webhooks, for the commit hook.
    armed: RwLock<Arc<Vec<Armed>>>,
    dispatch: crate::delivery::Dispatchers,
    /// Held while a configuration change is written and installed, and while a reload reads
    /// and installs, so a reload never installs what it read before a local change.
    changing: tokio::sync::Mutex<()>,
    tokio: tokio::runtime::Handle,
    /// This process, as named in the leases it holds in a cluster.
    node: String,
    /// Whether this process delivers messages (a server) or only queues them (a CLI run).
    deliver: bool,
}

/// The webhook service ([`Server::webhooks`](crate::Server::webhooks)): configure webhooks,
/// rotate their secrets, read their delivery log and redeliver messages. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

/// Unix seconds now.
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The key prefix of a webhook's records in the queue, message and attempt spaces.
fn prefix(id: &str) -> Vec<u8> {
    let mut k = id.as_bytes().to_vec();
    k.push(0);
    k
}

/// The key of a queued message that no change record stamps (an account event, a
/// redelivery): after every stamped one, in the order they were queued.
fn unstamped_key(id: &str) -> Vec<u8> {
    let mut key = prefix(id);
    key.push(0xFF);
    key.extend_from_slice(ulid::Ulid::new().to_string().as_bytes());
    key
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl Webhooks {
    /// Loads every webhook, installs the commit hook and, when it is to `deliver`, starts the
    /// dispatchers. Must run inside the tokio runtime.
    pub(crate) async fn start(
        store: Store,
        config: &WebhooksConfig,
        outbound: &OutboundConfig,
        metrics: Arc<Metrics>,
        tracer: Tracer,
        deliver: bool,
    ) -> std::result::Result<Webhooks, String> {
        let policy = Policy::new(&outbound.allow_private_hosts)?;
        let client = policy.client(Duration::from_millis(config.timeout_ms), 0);
        let webhooks = Webhooks {
            inner: Arc::new(Inner {
                store: store.clone(),
                config: config.clone(),
                policy,
                client,
                metrics,
                tracer,
                loaded: RwLock::new(Arc::new(HashMap::new())),
                armed: RwLock::new(Arc::new(Vec::new())),
                dispatch: crate::delivery::Dispatchers::default(),
                changing: tokio::sync::Mutex::new(()),
                tokio: tokio::runtime::Handle::current(),
                node: ulid::Ulid::new().to_string(),
                deliver,
            }),
        };
        webhooks.reload().await.map_err(|e| e.to_string())?;
        let count = webhooks.loaded().len();
        if count > 0 {
            tracing::info!(count, "webhooks loaded");
        }
        store.set_commit_hook("webhooks", Some(Arc::new(Hook(webhooks.clone()))));
        if deliver {
            deliver::start_waker(&webhooks);
        }
        Ok(webhooks)
    }

    /// Stops the dispatchers and detaches the hook from the store.
    pub(crate) fn stop(&self) {
        self.inner.store.set_commit_hook("webhooks", None);
        self.inner.dispatch.stop();
    }

    fn require_admin(who: &Principal) -> Result<()> {
        Ok(who.require_admin("manage webhooks")?)
    }

    fn loaded(&self) -> Arc<HashMap<String, Arc<WebhookRecord>>> {
        self.inner
            .loaded
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn record(&self, id: &str) -> Result<Arc<WebhookRecord>> {
        self.loaded()
            .get(id)
            .cloned()
            .ok_or_else(|| WebhooksError::NotFound(id.into()))
    }

    fn armed(&self) -> Arc<Vec<Armed>> {
        self.inner
            .armed
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Installs the webhooks read from the store, and starts or stops their dispatchers.
    fn install(&self, all: HashMap<String, Arc<WebhookRecord>>) {
        let mut armed: Vec<Armed> = all
            .values()
            .filter(|r| r.info.spec.enabled)
            .map(|r| Armed::new(&r.info))
            .collect();
        armed.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<String> = all.keys().cloned().collect();
        *self.inner.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(all);
        *self.inner.armed.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(armed);
        self.inner.dispatch.retain(&ids);
        for id in ids {
            deliver::ensure(self, &id);
        }
    }

    async fn read_all(&self) -> Result<HashMap<String, Arc<WebhookRecord>>> {
        let rows = self
            .inner
            .store
            .kv_scan(Space::Webhooks, None, usize::MAX)
            .await?;
        let mut all = HashMap::new();
        for (_, bytes) in rows {
            match serde_json::from_slice::<WebhookRecord>(&bytes) {
                Ok(record) => {
                    all.insert(record.info.id.clone(), Arc::new(record));
                }
                Err(e) => tracing::error!(error = %e, "skipping an unreadable webhook record"),
            }
        }
        Ok(all)
    }

    /// Reads every webhook again (another node of a cluster changed one).
    async fn reload(&self) -> Result<()> {
        let _changing = self.inner.changing.lock().await;
        let all = self.read_all().await?;
        self.install(all);
        Ok(())
    }

    /// Writes a webhook's record (checked against what was read, `expected`) and installs it.
    async fn put(&self, record: WebhookRecord, expected: Option<Vec<u8>>) -> Result<()> {
        let id = record.info.id.clone();
        let write = KvWrite::default()
            .check(Space::Webhooks, id.as_bytes(), expected)
            .put(Space::Webhooks, id.as_bytes(), encode(&record));
        self.inner.store.kv_write(write).await?;
        let mut all = HashMap::clone(&self.loaded());
        all.insert(id, Arc::new(record));
        self.install(all);
        Ok(())
    }

    /// Creates a webhook. The answer carries its signing secret, shown only here and when it
    /// is rotated.
    pub async fn create(&self, who: &Principal, spec: WebhookSpec) -> Result<WebhookWithSecret> {
        Self::require_admin(who)?;
        records::check_spec(&spec, &self.inner.policy)?;
        let _changing = self.inner.changing.lock().await;
        self.check_name_free(&spec, None)?;
        let now = now_rfc3339();
        let record = WebhookRecord {
            info: WebhookInfo {
                id: ulid::Ulid::new().to_string(),
                spec,
                created_at: now.clone(),
                updated_at: now,
                previous_secret_expires_at: None,
            },
            secret: records::new_secret(),
            previous_secret: None,
            previous_until: None,
        };
        self.put(record.clone(), None).await?;
        Ok(WebhookWithSecret {
            webhook: record.info,
            secret: record.secret,
        })
    }

    /// Refuses a name another webhook (not `id`) has. Callers hold `changing`, so two
    /// changes on this node cannot both take a name; in a cluster, nodes changing webhooks at
    /// the same moment could, and the list would show both.
    fn check_name_free(&self, spec: &WebhookSpec, id: Option<&str>) -> Result<()> {
        let Some(name) = &spec.name else {
            return Ok(());
        };
        let taken = self
            .loaded()
            .values()
            .any(|r| r.info.spec.name.as_ref() == Some(name) && Some(r.info.id.as_str()) != id);
        if taken {
            return Err(WebhooksError::Conflict(format!(
                "another webhook is named {name}"
            )));
        }
        Ok(())
    }

    /// Every webhook, oldest first.
    pub async fn list(&self, who: &Principal) -> Result<Vec<WebhookInfo>> {
        Self::require_admin(who)?;
        let mut all: Vec<WebhookInfo> = self.loaded().values().map(|r| r.info.clone()).collect();
        all.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(all)
    }

    pub async fn get(&self, who: &Principal, id: &str) -> Result<WebhookInfo> {
        Self::require_admin(who)?;
        Ok(self.record(id)?.info.clone())
    }

    /// Reads a webhook's stored record for a change to it.
    async fn stored(&self, id: &str) -> Result<(WebhookRecord, Vec<u8>)> {
        let bytes = self
            .inner
            .store
            .kv_get(Space::Webhooks, id.as_bytes())
            .await?
            .ok_or_else(|| WebhooksError::NotFound(id.into()))?;
        let record = serde_json::from_slice(&bytes)
            .map_err(|e| WebhooksError::Internal(format!("webhook record: {e}")))?;
        Ok((record, bytes))
    }

    /// Replaces a webhook's configuration; its secret and queue stay.
    pub async fn update(
        &self,
        who: &Principal,
        id: &str,
        spec: WebhookSpec,
    ) -> Result<WebhookInfo> {
        Self::require_admin(who)?;
        records::check_spec(&spec, &self.inner.policy)?;
        let _changing = self.inner.changing.lock().await;
        let (mut record, bytes) = self.stored(id).await?;
        self.check_name_free(&spec, Some(id))?;
        record.info.spec = spec;
        record.info.updated_at = now_rfc3339();
        self.put(record.clone(), Some(bytes)).await?;
        Ok(record.info)
    }

    /// Gives a webhook a new secret. The previous one also signs deliveries for
    /// `webhooks.rotation_grace_secs`, so receivers can switch without losing any.
    pub async fn rotate_secret(&self, who: &Principal, id: &str) -> Result<WebhookWithSecret> {
        Self::require_admin(who)?;
        let _changing = self.inner.changing.lock().await;
        let (mut record, bytes) = self.stored(id).await?;
        let grace = self.inner.config.rotation_grace_secs;
        let until = unix_secs() + grace;
        record.previous_secret = Some(std::mem::replace(&mut record.secret, records::new_secret()));
        record.previous_until = Some(until);
        record.info.previous_secret_expires_at = (grace > 0).then(|| {
            crate::model::format_time(
                time::OffsetDateTime::from_unix_timestamp(until as i64)
                    .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
            )
        });
        record.info.updated_at = now_rfc3339();
        self.put(record.clone(), Some(bytes)).await?;
        Ok(WebhookWithSecret {
            webhook: record.info,
            secret: record.secret,
        })
    }

    /// Deletes a webhook with its queue, kept messages and delivery log.
    pub async fn delete(&self, who: &Principal, id: &str) -> Result<()> {
        Self::require_admin(who)?;
        let _changing = self.inner.changing.lock().await;
        let (_, bytes) = self.stored(id).await?;
        let write = KvWrite::default()
            .check(Space::Webhooks, id.as_bytes(), Some(bytes))
            .delete(Space::Webhooks, id.as_bytes());
        self.inner.store.kv_write(write).await?;
        let mut all = HashMap::clone(&self.loaded());
        all.remove(id);
        self.install(all);
        let store = &self.inner.store;
        for space in [
            Space::WebhookQueue,
            Space::WebhookMessages,
            Space::WebhookAttempts,
        ] {
            loop {
                let rows = store.kv_prefix(space, &prefix(id), DELETE_CHUNK).await?;
                if rows.is_empty() {
                    break;
                }
                let write = rows
                    .into_iter()
                    .fold(KvWrite::default(), |w, (key, _)| w.delete(space, key));
                store.kv_write(write).await?;
            }
        }
        Ok(())
    }

    /// A webhook's delivery attempts, newest first; `status` keeps only `delivered`, `failed`
    /// or `dead` ones.
    pub async fn deliveries(
        &self,
        who: &Principal,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookDelivery>> {
        Self::require_admin(who)?;
        check_limit(limit)?;
        check_status(status, &["delivered", "failed", "dead"])?;
        self.record(id)?;
        let rows = self
            .inner
            .store
            .kv_prefix_last(Space::WebhookAttempts, &prefix(id), self.scan_limit(limit))
            .await?;
        Ok(decoded(rows, limit, |d: &WebhookDelivery| {
            status.is_none_or(|s| d.status == s)
        }))
    }

    /// A webhook's messages, newest first: `pending` ones from its queue, or `delivered` and
    /// `dead` ones kept for redelivery (both without `status`).
    pub async fn messages(
        &self,
        who: &Principal,
        id: &str,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<WebhookMessage>> {
        Self::require_admin(who)?;
        check_limit(limit)?;
        check_status(status, &["pending", "delivered", "dead"])?;
        self.record(id)?;
        // One snapshot for both spaces: a delivery moves a message from the queue to the kept
        // ones, and a redelivery back, and two separate reads could show it twice or not at all.
        let snapshot = self.inner.store.kv_snapshot().await?;
        let scan = self.scan_limit(limit);
        let mut found: Vec<WebhookMessage> = Vec::new();
        if status.is_none_or(|s| s == "pending") {
            let rows = snapshot
                .prefix_last(Space::WebhookQueue, &prefix(id), scan)
                .await?;
            found = decoded(rows, limit, |_: &Queued| true)
                .into_iter()
                .map(|q| q.message)
                .collect();
        }
        if status != Some("pending") && found.len() < limit {
            let rows = snapshot
                .prefix_last(Space::WebhookMessages, &prefix(id), scan)
                .await?;
            let kept = decoded(rows, limit - found.len(), |q: &Queued| {
                status.is_none_or(|s| q.message.status == s)
            });
            found.extend(kept.into_iter().map(|q| q.message));
        }
        Ok(found)
    }

    /// How many records a listing of `limit` reads: pruning leaves up to `log_kept` and some
    /// slack, of which `keep` may pass only some.
    fn scan_limit(&self, limit: usize) -> usize {
        self.inner.config.log_kept.max(limit) + deliver::PRUNE_SLACK
    }

    /// Queues a kept message again, with its id and body, for a fresh series of attempts.
    pub async fn redeliver(
        &self,
        who: &Principal,
        id: &str,
        message_id: &str,
    ) -> Result<WebhookMessage> {
        Self::require_admin(who)?;
        self.record(id)?;
        let mut key = prefix(id);
        key.extend_from_slice(message_id.as_bytes());
        let store = &self.inner.store;
        let bytes = store
            .kv_get(Space::WebhookMessages, &key)
            .await?
            .ok_or_else(|| WebhooksError::MessageNotFound(message_id.into()))?;
        let mut queued: Queued = serde_json::from_slice(&bytes)
            .map_err(|e| WebhooksError::Internal(format!("webhook message: {e}")))?;
        queued.message.status = "pending".into();
        queued.message.attempts = 0;
        queued.not_before = 0;
        let write = KvWrite::default()
            .check(Space::WebhookMessages, key.clone(), Some(bytes))
            .delete(Space::WebhookMessages, key)
            .put(Space::WebhookQueue, unstamped_key(id), encode(&queued));
        store.kv_write(write).await?;
        self.inner.dispatch.notify(id);
        Ok(queued.message)
    }
}

/// The records of `rows` that `keep` keeps, at most `limit`.
fn decoded<T: serde::de::DeserializeOwned>(
    rows: Vec<crate::store::KvEntry>,
    limit: usize,
    keep: impl Fn(&T) -> bool,
) -> Vec<T> {
    rows.into_iter()
        .filter_map(|(_, bytes)| serde_json::from_slice::<T>(&bytes).ok())
        .filter(|r| keep(r))
        .take(limit)
        .collect()
}

fn check_limit(limit: usize) -> Result<()> {
    if (1..=1000).contains(&limit) {
        Ok(())
    } else {
        Err(WebhooksError::BadRequest("limit must be 1 to 1000".into()))
    }
}

fn check_status(status: Option<&str>, allowed: &[&str]) -> Result<()> {
    match status {
        Some(s) if !allowed.contains(&s) => Err(WebhooksError::BadRequest(format!(
            "status is one of {}",
            allowed.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// Queues, in the commit of each change and account write, a message for every enabled
/// webhook that takes it.
struct Hook(Webhooks);

impl CommitHook for Hook {
    fn records(&self, change: &Change) -> Vec<HookRecord> {
        self.0
            .armed()
            .iter()
            .filter_map(|w| {
                let queued = w.message_for_change(change)?;
                // The key ends with the change's sequence: a webhook's queue is in commit order.
                Some(HookRecord::Stamped(
                    Space::WebhookQueue,
                    prefix(&w.id),
                    encode(&queued),
                ))
            })
            .collect()
    }

    fn account_records(&self, event: &AccountEvent) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
        self.0
            .armed()
            .iter()
            .filter_map(|w| {
                let queued = w.message_for_account(event)?;
                Some((Space::WebhookQueue, unstamped_key(&w.id), encode(&queued)))
            })
            .collect()
    }

    fn account_committed(&self) {
        for w in self.0.armed().iter().filter(|w| w.takes_accounts()) {
            self.0.inner.dispatch.notify(&w.id);
        }
    }

    fn reload(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async {
            if let Err(e) = self.0.reload().await {
                tracing::warn!(error = %e, "cannot reload webhooks");
            }
        })
    }
}
