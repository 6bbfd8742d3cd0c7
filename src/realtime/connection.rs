//! Connections: one stream that carries any number of named subscriptions, added and removed
//! while it stays open, so that an app with many live queries holds one HTTP connection
//! (browsers allow six per origin over HTTP/1.1).
//!
//! A connection's id is `<node>.<random>`: the node part says which server holds the stream.
//! A change to its subscriptions made on that server applies at once; on another node of a
//! cluster it is stored as a control record (`rtctl:<node>\0<connection>\0<name>` in the
//! system keyspace), which the holding node picks up within a tenth of a second. Records go
//! only to a node that has said within 30 s that it is alive, and that node removes every
//! record under its name each round, so made-up connection ids cannot fill the store. Either
//! way the stream itself confirms the change with a `subscribed` (from which sequence it is
//! live) or `unsubscribed` event, in order with the change events. Only the principal that
//! opened the connection may change it.

use super::{Inner, Interest, Realtime, RealtimeError, Result, Subscriber};
use crate::auth::Principal;
use crate::store::{KvWrite, Space};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The most subscriptions one connection holds.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 100;
/// How often a node of a cluster looks for control records of its connections.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);
/// How long a node counts as alive after it last said so (it says so every 5 s).
const NODE_TTL: Duration = Duration::from_secs(30);

/// One named subscription of a connection.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSpec {
    /// The client's name for it, `[A-Za-z0-9_-]{1,64}`; events name the subscriptions they
    /// match.
    pub name: String,
    /// Topics, as for a single stream: `posts`, `posts/ID`, comma-separated.
    pub subscribe: String,
    /// A filter over the envelope, as for a single stream.
    #[serde(default)]
    pub filter: Option<String>,
}

/// A connection request, as the HTTP layer parsed it.
pub struct ConnectRequest<'a> {
    /// The subscriptions to start with (a reconnecting client sends all it holds).
    pub subscriptions: &'a [SubscriptionSpec],
    /// The last event the client saw (`Last-Event-ID`): every subscription resumes after it.
    pub last_event_id: Option<u64>,
    /// When the caller's credential expires (Unix seconds); the stream ends then.
    pub expires_at: Option<u64>,
    /// The client's address, for the per-client cap.
    pub client: &'a str,
}

/// Where a change to a connection's subscriptions took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// On this server, which holds the stream; the stream has confirmed it.
    Here,
    /// Passed on to the node of the cluster that holds the stream, whose stream confirms it.
    Forwarded,
}

/// A control record: who asked, and the subscription (`None`: remove it).
#[derive(Serialize, Deserialize)]
struct Control {
    identity: String,
    subscribe: Option<String>,
    filter: Option<String>,
}

pub(crate) fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(RealtimeError::BadRequest(format!(
            "invalid subscription name {name:?}: use 1 to 64 of A-Z a-z 0-9 _ -"
        )))
    }
}

/// 128 random bits, URL-safe.
pub(crate) fn random_token() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>())
}

/// Who a principal is, to compare the opener of a connection with whoever changes it.
fn identity(who: &Principal) -> String {
    match who {
        Principal::Anonymous => "anonymous".into(),
        Principal::Service => "service".into(),
        Principal::User { id, .. } => format!("user:{id}"),
        Principal::Function { name, .. } => format!("function:{name}"),
    }
}

fn no_connection(connection: &str) -> RealtimeError {
    RealtimeError::NoConnection(format!("no open connection {connection}"))
}

impl Realtime {
    /// Adds (or replaces) the subscription `name` of a connection with `spec`'s topics and
    /// filter, or removes it with `None`, for the principal that opened the connection.
    pub async fn control(
        &self,
        who: &Principal,
        connection: &str,
        name: &str,
        spec: Option<(&str, Option<&str>)>,
    ) -> Result<Applied> {
        check_name(name)?;
        let interest = match spec {
            Some((topics, filter)) => Some(self.interest(who, topics, filter)?),
            None => None,
        };
        let (node, _) = connection
            .split_once('.')
            .ok_or_else(|| no_connection(connection))?;
        if node == self.inner.node {
            let sub = self.inner.read().connections.get(connection).cloned();
            let sub = sub
                .filter(|sub| identity(&sub.who) == identity(who))
                .ok_or_else(|| no_connection(connection))?;
            self.inner.apply(&sub, name, interest)?;
            return Ok(Applied::Here);
        }
        let store = self.inner.docs.store();
        // Only a node that says it is alive gets records: it removes them within a tenth of a
        // second, so made-up connections cannot pile records up in the store.
        if !store.is_shared() || !node_alive(store, node).await? {
            return Err(no_connection(connection));
        }
        let control = Control {
            identity: identity(who),
            subscribe: spec.map(|(topics, _)| topics.to_string()),
            filter: spec.and_then(|(_, filter)| filter.map(str::to_string)),
        };
        let value = serde_json::to_vec(&control).map_err(|e| {
            RealtimeError::Storage(crate::error::StorageError::Corrupt(e.to_string()))
        })?;
        let key = [
            node.as_bytes(),
            &[0],
            connection.as_bytes(),
            &[0],
            name.as_bytes(),
        ]
        .concat();
        store
            .kv_write(KvWrite::default().put(Space::RealtimeControl, key, value))
            .await?;
        Ok(Applied::Forwarded)
    }
}

impl Inner {
    /// Changes a subscription of a connection held here, and confirms it on its stream in
    /// order with the change events.
    fn apply(&self, sub: &Arc<Subscriber>, name: &str, interest: Option<Interest>) -> Result<()> {
        let mut registry = self.write();
        let before = sub.collections();
        let added = interest.is_some();
        {
            let mut interests = sub.interests.write().unwrap_or_else(|p| p.into_inner());
            match interest {
                Some(interest) => {
                    if !interests.contains_key(name) && interests.len() >= MAX_SUBSCRIPTIONS {
                        return Err(RealtimeError::BadRequest(format!(
                            "a connection holds at most {MAX_SUBSCRIPTIONS} subscriptions"
                        )));
                    }
                    interests.insert(name.to_string(), interest);
                }
                None => {
                    interests.remove(name);
                }
            }
        }
        let after = sub.collections();
        for collection in after.difference(&before) {
            registry
                .by_collection
                .entry(collection.clone())
                .or_default()
                .insert(sub.id, sub.clone());
        }
        for collection in before.difference(&after) {
            if let Some(map) = registry.by_collection.get_mut(collection) {
                map.remove(&sub.id);
                if map.is_empty() {
                    registry.by_collection.remove(collection);
                }
            }
        }
        let seq = registry.seq.load(std::sync::atomic::Ordering::Acquire);
        let event = if added {
            super::sse_event(
                None,
                "subscribed",
                &json!({"subscription": name, "seq": seq}),
            )
        } else {
            super::sse_event(None, "unsubscribed", &json!({"subscription": name}))
        };
        // A stream whose queue is closed ends anyway; nothing to confirm to it.
        sub.queue.push(event);
        Ok(())
    }

    /// Applies the control records other nodes stored for this node's connections.
    async fn apply_stored(&self) -> std::result::Result<(), crate::store::StoreError> {
        let store = self.docs.store().clone();
        let prefix = [self.node.as_bytes(), &[0]].concat();
        let records = store
            .kv_prefix(Space::RealtimeControl, &prefix, 256)
            .await?;
        if records.is_empty() {
            return Ok(());
        }
        let mut write = KvWrite::default();
        for (key, value) in records {
            let rest = key.get(prefix.len()..).unwrap_or(&[]);
            let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
            let connection = String::from_utf8_lossy(&rest[..split]).into_owned();
            let name = String::from_utf8_lossy(rest.get(split + 1..).unwrap_or(&[])).into_owned();
            let sub = self.read().connections.get(&connection).cloned();
            if let (Some(sub), Ok(control)) = (sub, serde_json::from_slice::<Control>(&value)) {
                if identity(&sub.who) == control.identity {
                    let interest = match &control.subscribe {
                        Some(topics) => super::parse_topics(topics, self.config.max_topics)
                            .ok()
                            .map(|topics| Interest {
                                topics,
                                filter: control
                                    .filter
                                    .as_deref()
                                    .and_then(|f| self.docs.parse_filter(f).ok()),
                            }),
                        None => None,
                    };
                    if control.subscribe.is_none() || interest.is_some() {
                        if let Err(e) = self.apply(&sub, &name, interest) {
                            tracing::warn!(connection, error = %e, "a forwarded subscription change was refused");
                        }
                    }
                }
            }
            write = write.check(Space::RealtimeControl, key.clone(), Some(value));
            write = write.delete(Space::RealtimeControl, key);
        }
        // A record changed meanwhile stays for the next round.
        match store.kv_write(write).await {
            Ok(()) | Err(crate::store::StoreError::CasFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Whether `node` has said it is alive within `NODE_TTL`.
async fn node_alive(store: &crate::store::Store, node: &str) -> Result<bool> {
    let seen = store.kv_get(Space::RealtimeNodes, node.as_bytes()).await?;
    let at = seen
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes);
    Ok(at.is_some_and(|at| crate::model::unix_secs().saturating_sub(at) <= NODE_TTL.as_secs()))
}

/// A cluster node's follower of control records for its connections, which also says every
/// few seconds that the node is alive. Ends with the service.
pub(super) async fn follow(inner: Weak<Inner>) {
    let mut every = tokio::time::interval(FOLLOW_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut announced: Option<tokio::time::Instant> = None;
    loop {
        every.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        if announced.is_none_or(|at| at.elapsed() >= NODE_TTL / 6) {
            let alive = KvWrite::default().put(
                Space::RealtimeNodes,
                inner.node.as_bytes().to_vec(),
                crate::model::unix_secs().to_be_bytes().to_vec(),
            );
            match inner.docs.store().kv_write(alive).await {
                Ok(()) => announced = Some(tokio::time::Instant::now()),
                Err(e) => tracing::warn!(error = %e, "realtime cannot announce this node"),
            }
        }
        if let Err(e) = inner.apply_stored().await {
            tracing::warn!(error = %e, "realtime cannot read forwarded subscription changes");
        }
    }
}
