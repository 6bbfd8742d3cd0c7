//! Realtime: Server-Sent Events fed by the change feed.
//!
//! One hub task reads the store's change feed and fans each document change out to the
//! subscribers of its collection. Every subscriber gets the event only if its topics and filter
//! select it and the collection's read rule lets it read the envelope it would receive. The
//! event text is formatted once and shared by every subscriber that gets it.
//!
//! Each subscriber has a queue bounded by events and by bytes (`queue`). One that does not keep
//! up, or leaves events unread for `stall_secs`, is removed from the hub (a slow consumer), its
//! queue freed; it ends with a final `close` event and resumes from its `Last-Event-ID`.
//! Server memory never grows with a stuck client beyond its queue, nor for longer than the
//! stall limit.
//!
//! A stream is either a plain one, with the one subscription of its request, or a connection
//! (`connection`), whose named subscriptions the client adds and removes while it stays open;
//! an event on a connection names the subscriptions it matched.
//!
//! Resuming: the hub records the sequence of the last change it fanned out. A subscriber
//! registered at sequence `H` receives every change after `H` live; with `Last-Event-ID: N` it
//! first replays `(N, H]` from the retained change feed, or gets a `reset` event when part of
//! that range was pruned.

use crate::auth::Principal;
use crate::config::RealtimeConfig;
use crate::docs::{check_collection, check_id, Documents};
use crate::metrics::Metrics;
use crate::model::{Change, ChangeKind, Document, Subject};
use crate::query::{self, Expr};
use crate::store::ChangeReceiver;
use bytes::Bytes;
use queue::{CloseReason, Queue};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio::time::Instant;

mod connection;
mod error;
mod queue;

use connection::{check_name, random_token, MAX_SUBSCRIPTIONS};
pub use connection::{Applied, ConnectRequest, SubscriptionSpec};
pub use error::RealtimeError;
pub(crate) use error::Result;

/// Retained changes read per step of a replay or a catch-up.
const PAGE: usize = 256;
/// What a client waits before reconnecting after the stream drops (the SSE `retry:` field).
const RETRY_MS: u64 = 2000;

/// The realtime service ([`Server::realtime`](crate::Server::realtime)): Server-Sent Event
/// streams of document changes, each event checked against the collection's read rule for the
/// subscriber. A [`Subscription`] yields the stream's bytes, ready to send. Cheap to clone.
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// # let server = emberbase::Server::builder().data_dir(dir.path()).bind("127.0.0.1:0").start().await?;
/// use emberbase::{Principal, SubscribeRequest};
/// use serde_json::json;
///
/// let request = SubscribeRequest {
///     topics: "notes",
///     filter: None,
///     last_event_id: None,
///     expires_at: None,
///     client: "127.0.0.1",
/// };
/// let mut stream = server.realtime().subscribe(Principal::Service, request).await?;
/// let ready = stream.next().await.expect("the ready event");
/// assert!(String::from_utf8_lossy(&ready).contains("event: ready"));
///
/// server.documents().create(&Principal::Service, "notes", json!({"text": "hi"})).await?;
/// let event = stream.next().await.expect("the create event");
/// assert!(String::from_utf8_lossy(&event).contains("event: create"));
/// # server.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Realtime {
    inner: Arc<Inner>,
}

struct Inner {
    docs: Documents,
    config: RealtimeConfig,
    metrics: Arc<Metrics>,
    registry: RwLock<Registry>,
    next_id: AtomicU64,
    /// This server's part of its connection ids, so that a node of a cluster can tell which
    /// node holds a connection.
    node: String,
}

struct Registry {
    /// The last change fanned out; a subscriber registered now receives every later one live.
    seq: AtomicU64,
    open: bool,
    count: usize,
    /// Open streams per client address (entries go when they reach zero).
    per_client: HashMap<String, usize>,
    by_collection: HashMap<String, HashMap<u64, Arc<Subscriber>>>,
    /// Open connections by id.
    connections: HashMap<String, Arc<Subscriber>>,
}

/// What one subscription asked for within one collection.
#[derive(Debug, Clone, PartialEq)]
enum Topic {
    Collection,
    Documents(HashSet<String>),
}

/// One subscription: its topics by collection and its filter.
struct Interest {
    topics: HashMap<String, Topic>,
    filter: Option<Expr>,
}

impl Interest {
    /// Whether its topics and filter select a change to a document.
    fn wants(
        &self,
        collection: &str,
        id: &str,
        before: Option<&Document>,
        after: Option<&Document>,
    ) -> bool {
        let topic_matches = self.topics.contains_key(EVERYTHING)
            || match self.topics.get(collection) {
                Some(Topic::Collection) => true,
                Some(Topic::Documents(ids)) => ids.contains(id),
                None => false,
            };
        topic_matches
            && self.filter.as_ref().is_none_or(|f| {
                before.is_some_and(|d| query::matches(f, d))
                    || after.is_some_and(|d| query::matches(f, d))
            })
    }
}

/// One open stream: a plain one with a single subscription (named `""`), or a connection
/// whose named subscriptions come and go while it stays open.
struct Subscriber {
    id: u64,
    who: Principal,
    auth: Value,
    /// The connection's id, for a connection.
    connection: Option<String>,
    interests: RwLock<BTreeMap<String, Interest>>,
    /// The client address the stream counts against.
    client: String,
    queue: Queue,
}

impl Subscriber {
    fn interests(&self) -> RwLockReadGuard<'_, BTreeMap<String, Interest>> {
        self.interests.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any subscription selects a change to a document; on a connection, `names`
    /// receives those that do.
    fn wants(
        &self,
        collection: &str,
        id: &str,
        before: Option<&Document>,
        after: Option<&Document>,
        names: &mut Vec<String>,
    ) -> bool {
        names.clear();
        for (name, interest) in self.interests().iter() {
            if interest.wants(collection, id, before, after) {
                if self.connection.is_none() {
                    return true;
                }
                names.push(name.clone());
            }
        }
        !names.is_empty()
    }

    /// Every collection a subscription names.
    fn collections(&self) -> HashSet<String> {
        self.interests()
            .values()
            .flat_map(|i| i.topics.keys().cloned())
            .collect()
    }

    /// The event of a change for this stream: the shared one on a plain stream, one naming
    /// the matching subscriptions on a connection.
    fn event(&self, change: &Change, shared: &mut Option<Bytes>, names: &[String]) -> Bytes {
        match self.connection {
            None => shared
                .get_or_insert_with(|| format_change(change, None))
                .clone(),
            Some(_) => format_change(change, Some(names)),
        }
    }
}

/// A subscription request, as the HTTP layer parsed it.
pub struct SubscribeRequest<'a> {
    /// `posts,posts/ID`: collections and single documents.
    pub topics: &'a str,
    /// A filter over the envelope; an event is sent when the document matched it before or
    /// after the change.
    pub filter: Option<&'a str>,
    /// The last event the client saw (`Last-Event-ID`).
    pub last_event_id: Option<u64>,
    /// When the caller's credential expires (Unix seconds); the stream ends then.
    pub expires_at: Option<u64>,
    /// The client's address, for the per-client cap.
    pub client: &'a str,
}

impl Realtime {
    /// Starts the hub. Must be called within a tokio runtime.
    pub(crate) fn start(
        docs: Documents,
        config: &RealtimeConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Realtime> {
        let changes = docs.subscribe();
        let seq = docs.store().published_seq();
        let realtime = Realtime {
            inner: Arc::new(Inner {
                docs,
                config: config.clone(),
                metrics,
                registry: RwLock::new(Registry {
                    seq: AtomicU64::new(seq),
                    open: true,
                    count: 0,
                    per_client: HashMap::new(),
                    by_collection: HashMap::new(),
                    connections: HashMap::new(),
                }),
                next_id: AtomicU64::new(1),
                node: format!("{:08x}", rand::random::<u32>()),
            }),
        };
        tokio::spawn(hub(Arc::downgrade(&realtime.inner), changes));
        if realtime.inner.docs.store().is_shared() {
            tokio::spawn(connection::follow(Arc::downgrade(&realtime.inner)));
        }
        Ok(realtime)
    }

    /// Ends every stream (each gets a final `close` event with reason `shutdown`) and refuses
    /// new ones. Called first on shutdown, so open streams do not hold the HTTP server up.
    pub fn close(&self) {
        let mut registry = self.inner.write();
        registry.open = false;
        // A connection without subscriptions is in no collection's list.
        for sub in std::mem::take(&mut registry.connections).into_values() {
            sub.queue.close(CloseReason::Shutdown);
        }
        for subscribers in std::mem::take(&mut registry.by_collection).into_values() {
            for sub in subscribers.into_values() {
                sub.queue.close(CloseReason::Shutdown);
            }
        }
    }

    /// How many streams are open.
    pub fn subscribers(&self) -> usize {
        self.inner.read().count
    }

    /// Validates a request, checks the caller may read what it asks for, and registers it.
    pub async fn subscribe(
        &self,
        who: Principal,
        req: SubscribeRequest<'_>,
    ) -> Result<Subscription> {
        let interest = self.interest(&who, req.topics, req.filter)?;
        let interests = BTreeMap::from([(String::new(), interest)]);
        self.open(
            who,
            interests,
            None,
            req.last_event_id,
            req.expires_at,
            req.client,
        )
        .await
    }

    /// Opens a connection: one stream whose subscriptions the client adds and removes while
    /// it stays open ([`Realtime::control`]), starting with `req.subscriptions`. Its first
    /// event, `connected`, carries the connection's id; every change event names the
    /// subscriptions it matched.
    pub async fn connect(&self, who: Principal, req: ConnectRequest<'_>) -> Result<Subscription> {
        if req.subscriptions.len() > MAX_SUBSCRIPTIONS {
            return Err(RealtimeError::BadRequest(format!(
                "a connection holds at most {MAX_SUBSCRIPTIONS} subscriptions"
            )));
        }
        let mut interests = BTreeMap::new();
        for spec in req.subscriptions {
            check_name(&spec.name)?;
            let interest = self.interest(&who, &spec.subscribe, spec.filter.as_deref())?;
            interests.insert(spec.name.clone(), interest);
        }
        let connection = format!("{}.{}", self.inner.node, random_token());
        self.open(
            who,
            interests,
            Some(connection),
            req.last_event_id,
            req.expires_at,
            req.client,
        )
        .await
    }

    /// Parses one subscription and checks the caller may read something of each collection.
    fn interest(&self, who: &Principal, topics: &str, filter: Option<&str>) -> Result<Interest> {
        let topics = parse_topics(topics, self.inner.config.max_topics)?;
        let filter = match filter.filter(|f| !f.trim().is_empty()) {
            Some(src) => Some(self.inner.docs.parse_filter(src)?),
            None => None,
        };
        if topics.contains_key(EVERYTHING) {
            who.require_admin("subscribe to `*`, every collection's changes")
                .map_err(|denied| RealtimeError::Request(denied.into()))?;
        }
        let auth = who.auth_value();
        for collection in topics.keys().filter(|c| *c != EVERYTHING) {
            if self
                .inner
                .docs
                .read_check(collection)
                .denies_all(who, &auth)
            {
                return Err(RealtimeError::Forbidden(format!(
                    "the read rule of {collection} denies this"
                )));
            }
        }
        Ok(Interest { topics, filter })
    }

    /// Registers a stream with its subscriptions.
    async fn open(
        &self,
        who: Principal,
        interests: BTreeMap<String, Interest>,
        connection: Option<String>,
        last_event_id: Option<u64>,
        expires_at: Option<u64>,
        client: &str,
    ) -> Result<Subscription> {
        let config = &self.inner.config;
        let auth = who.auth_value();
        let subscriber = Arc::new(Subscriber {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            who,
            auth,
            connection,
            interests: RwLock::new(interests),
            client: client.to_string(),
            queue: Queue::new(
                config.queue,
                config.queue_bytes,
                self.inner.metrics.realtime_queued_bytes.clone(),
            ),
        });
        let head = {
            let mut registry = self.inner.write();
            if !registry.open {
                return Err(RealtimeError::ShuttingDown);
            }
            if registry.count >= self.inner.config.max_subscribers {
                return Err(RealtimeError::Full);
            }
            let per_client = registry.per_client.get(client).copied().unwrap_or(0);
            if per_client >= config.max_subscribers_per_client {
                return Err(RealtimeError::TooManyStreams {
                    open: per_client,
                    retry_after: config.heartbeat_secs.max(1),
                });
            }
            registry.count += 1;
            *registry.per_client.entry(client.to_string()).or_default() += 1;
            for collection in subscriber.collections() {
                registry
                    .by_collection
                    .entry(collection)
                    .or_default()
                    .insert(subscriber.id, subscriber.clone());
            }
            if let Some(connection) = &subscriber.connection {
                registry
                    .connections
                    .insert(connection.clone(), subscriber.clone());
            }
            registry.seq.load(Ordering::Acquire)
        };
        self.inner.metrics.realtime_subscribers.inc();
        let expires_at = expires_at.map(|exp| {
            let now = time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64;
            Instant::now() + Duration::from_secs(exp.saturating_sub(now))
        });
        let every = Duration::from_secs(self.inner.config.heartbeat_secs);
        let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let greeting = subscriber
            .connection
            .as_ref()
            .map(|connection| sse_event(None, "connected", &json!({"connection": connection})));
        // Built before anything else can fail, so that dropping it unregisters.
        let mut subscription = Subscription {
            inner: self.inner.clone(),
            subscriber,
            head,
            phase: Phase::Ready,
            expires_at,
            heartbeat,
            greeting,
        };
        if let Some(n) = last_event_id {
            subscription.phase = self.resume_phase(n, head).await?;
        }
        Ok(subscription)
    }

    /// Where a stream resuming after event `n` starts, registered at `head`.
    async fn resume_phase(&self, n: u64, head: u64) -> Result<Phase> {
        if n == head {
            return Ok(Phase::Ready);
        }
        let first = self.inner.docs.store().first_retained_seq().await?;
        if n > head || first.is_none_or(|first| first > n + 1) {
            return Ok(Phase::Reset);
        }
        Ok(Phase::Replay { after: n })
    }
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Fans one change out to every subscriber that may receive it.
    fn deliver(&self, change: &Change) {
        let mut gone = Vec::new();
        {
            let registry = self.read();
            if change.seq <= registry.seq.load(Ordering::Acquire) {
                return;
            }
            if let Some((collection, id, before, after)) = document_change(change) {
                let named = registry.by_collection.get(collection);
                let everything = registry.by_collection.get(EVERYTHING);
                // A stream with both topics is in both maps: it gets the change once.
                let subscribers = named.into_iter().flat_map(|m| m.values()).chain(
                    everything
                        .into_iter()
                        .flat_map(|m| m.values())
                        .filter(|sub| named.is_none_or(|m| !m.contains_key(&sub.id))),
                );
                if let Some(doc) = after.or(before) {
                    let check = self.docs.read_check(collection);
                    let mut event = None;
                    let mut names = Vec::new();
                    for sub in subscribers {
                        if !sub.wants(collection, id, before, after, &mut names)
                            || !check.allows(&sub.who, &sub.auth, doc)
                        {
                            continue;
                        }
                        let bytes = sub.event(change, &mut event, &names);
                        let outcome = if sub.queue.push(bytes) {
                            "sent"
                        } else {
                            gone.push(sub.id);
                            "overflow"
                        };
                        self.metrics
                            .realtime_events
                            .with_label_values(&[outcome])
                            .inc();
                    }
                }
            }
            registry.seq.store(change.seq, Ordering::Release);
        }
        self.remove(&gone);
    }

    /// Takes subscribers whose queues closed out of the fan-out (they stay counted until their
    /// streams end).
    fn remove(&self, gone: &[u64]) {
        if gone.is_empty() {
            return;
        }
        let mut registry = self.write();
        for map in registry.by_collection.values_mut() {
            for id in gone {
                map.remove(id);
            }
        }
    }

    /// Disconnects every subscriber that has left queued events unread for too long.
    fn sweep_stalled(&self) {
        let limit = Duration::from_secs(self.config.stall_secs);
        let stalled: Vec<u64> = {
            let registry = self.read();
            registry
                .by_collection
                .values()
                .flat_map(|subs| subs.values())
                .filter(|sub| sub.queue.close_if_stalled(limit))
                .map(|sub| sub.id)
                .collect()
        };
        if !stalled.is_empty() {
            self.metrics
                .realtime_events
                .with_label_values(&["overflow"])
                .inc_by(stalled.len() as u64);
        }
        self.remove(&stalled);
    }

    /// Takes a subscriber out of the hub (its stream ended or was dropped).
    fn unregister(&self, sub: &Subscriber) {
        let mut registry = self.write();
        registry.count = registry.count.saturating_sub(1);
        if let Some(n) = registry.per_client.get_mut(&sub.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                registry.per_client.remove(&sub.client);
            }
        }
        for collection in sub.collections() {
            if let Some(map) = registry.by_collection.get_mut(&collection) {
                map.remove(&sub.id);
                if map.is_empty() {
                    registry.by_collection.remove(&collection);
                }
            }
        }
        if let Some(connection) = &sub.connection {
            registry.connections.remove(connection);
        }
        self.metrics.realtime_subscribers.dec();
    }
}

/// The hub: fans out every committed change, catching up from the stored feed if it falls
/// behind the broadcast. Ends when the service is dropped or the store closes.
async fn hub(inner: std::sync::Weak<Inner>, mut changes: ChangeReceiver) {
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = changes.recv() => received,
            _ = sweep.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                inner.sweep_stalled();
                continue;
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        match received {
            Ok(change) => inner.deliver(&change),
            Err(broadcast::error::RecvError::Lagged(_)) => loop {
                let after = inner.read().seq.load(Ordering::Acquire);
                let store = inner.docs.store().clone();
                match store.changes_after(after, PAGE).await {
                    Ok(page) if !page.is_empty() => page.iter().for_each(|c| inner.deliver(c)),
                    Ok(_) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "realtime cannot read the change feed");
                        break;
                    }
                }
            },
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

fn document_change(change: &Change) -> Option<(&str, &str, Option<&Document>, Option<&Document>)> {
    match &change.subject {
        Subject::Document {
            collection,
            id,
            before,
            after,
        } => Some((collection, id, before.as_ref(), after.as_ref())),
        Subject::File { .. } => None,
    }
}

/// `id:`, `event:` and `data: {"collection","id","doc"}`; on delete, `doc` is the envelope as
/// it was. On a connection, `data` also lists the `subscriptions` the change matched.
fn format_change(change: &Change, names: Option<&[String]>) -> Bytes {
    let (collection, id, before, after) = document_change(change).unwrap_or_default();
    let doc = match change.kind {
        ChangeKind::Delete => before,
        ChangeKind::Create | ChangeKind::Update => after,
    };
    let mut data = json!({"collection": collection, "id": id, "doc": doc});
    if let Some(names) = names {
        data["subscriptions"] = json!(names);
    }
    sse_event(Some(change.seq), change.kind.as_str(), &data)
}

fn sse_event(id: Option<u64>, event: &str, data: &Value) -> Bytes {
    let id = id.map(|id| format!("id: {id}\n")).unwrap_or_default();
    Bytes::from(format!("{id}event: {event}\ndata: {data}\n\n"))
}

/// The topic of every collection's changes (admins only; see [`Realtime::subscribe`]).
const EVERYTHING: &str = "*";

/// `posts,posts/ID,...` → topics per collection. A collection topic covers its documents; `*`
/// covers every collection and does not count against `max`.
fn parse_topics(src: &str, max: usize) -> Result<HashMap<String, Topic>> {
    let mut topics: HashMap<String, Topic> = HashMap::new();
    let items: Vec<&str> = src
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if items.is_empty() {
        return Err(RealtimeError::BadRequest(
            "subscribe needs at least one topic: a collection (`posts`) or a document (`posts/ID`)"
                .into(),
        ));
    }
    if items.iter().filter(|item| **item != EVERYTHING).count() > max {
        return Err(RealtimeError::BadRequest(format!(
            "subscribe takes at most {max} topics"
        )));
    }
    for item in items {
        match item.split_once('/') {
            None if item == EVERYTHING => {
                topics.insert(item.to_string(), Topic::Collection);
            }
            None => {
                check_collection(item)?;
                topics.insert(item.to_string(), Topic::Collection);
            }
            Some((collection, id)) => {
                check_collection(collection)?;
                check_id(id)?;
                let topic = topics
                    .entry(collection.to_string())
                    .or_insert_with(|| Topic::Documents(HashSet::new()));
                if let Topic::Documents(ids) = topic {
                    ids.insert(id.to_string());
                }
            }
        }
    }
    Ok(topics)
}

enum Phase {
    /// Replaying retained changes after this sequence, up to the head.
    Replay {
        after: u64,
    },
    /// The missed changes were pruned: tell the client to refetch.
    Reset,
    /// Caught up: send `ready`, then live events.
    Ready,
    Live,
    Done,
}

/// One open stream. Yields the SSE text to send; ends after a final `close` event.
pub struct Subscription {
    inner: Arc<Inner>,
    subscriber: Arc<Subscriber>,
    head: u64,
    phase: Phase,
    expires_at: Option<Instant>,
    heartbeat: tokio::time::Interval,
    /// What a connection sends first: its id.
    greeting: Option<Bytes>,
}

impl Subscription {
    /// The next piece of the stream, or `None` once it has ended.
    pub async fn next(&mut self) -> Option<Bytes> {
        if let Some(greeting) = self.greeting.take() {
            return Some(self.with_retry(greeting));
        }
        loop {
            match std::mem::replace(&mut self.phase, Phase::Done) {
                Phase::Replay { after } => match self.replay_page(after).await {
                    Some((events, next)) => {
                        self.phase = match next {
                            Some(after) => Phase::Replay { after },
                            None => Phase::Ready,
                        };
                        if !events.is_empty() {
                            return Some(events);
                        }
                    }
                    // The client cannot be told exactly what it missed: tell it to refetch.
                    None => self.phase = Phase::Reset,
                },
                Phase::Reset => {
                    self.phase = Phase::Ready;
                    let data = json!({"message": "events since Last-Event-ID are no longer retained; refetch, then continue from here"});
                    return Some(self.with_retry(sse_event(Some(self.head), "reset", &data)));
                }
                Phase::Ready => {
                    self.phase = Phase::Live;
                    let data = json!({"seq": self.head});
                    return Some(self.with_retry(sse_event(Some(self.head), "ready", &data)));
                }
                Phase::Live => {
                    self.phase = Phase::Live;
                    return Some(match self.live().await {
                        Ok(bytes) => bytes,
                        Err(reason) => {
                            self.phase = Phase::Done;
                            close_event(reason)
                        }
                    });
                }
                Phase::Done => return None,
            }
        }
    }

    /// The first thing a stream sends carries the client's reconnection delay.
    fn with_retry(&self, event: Bytes) -> Bytes {
        let mut text = format!("retry: {RETRY_MS}\n").into_bytes();
        text.extend_from_slice(&event);
        Bytes::from(text)
    }

    /// The next live event or heartbeat, or why the stream must end.
    async fn live(&mut self) -> std::result::Result<Bytes, CloseReason> {
        let expiry = async {
            match self.expires_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            next = self.subscriber.queue.next() => match next {
                queue::Next::Event(bytes) => Ok(bytes),
                queue::Next::Closed(reason) => Err(reason),
            },
            () = expiry => Err(CloseReason::Expired),
            _ = self.heartbeat.tick() => Ok(Bytes::from_static(b": ping\n\n")),
        }
    }

    /// Replays one page of retained changes after `after`, up to the head; returns the events
    /// to send and where to continue (`None` when caught up), or `None` when the feed cannot
    /// be read.
    async fn replay_page(&self, after: u64) -> Option<(Bytes, Option<u64>)> {
        let page = match self.inner.docs.store().changes_after(after, PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::error!(error = %e, "realtime replay cannot read the change feed");
                return None;
            }
        };
        let mut out = Vec::new();
        let mut last = after;
        let mut checks = HashMap::new();
        let mut names = Vec::new();
        for change in page.iter().take_while(|c| c.seq <= self.head) {
            last = change.seq;
            let Some((collection, id, before, after)) = document_change(change) else {
                continue;
            };
            let sub = &self.subscriber;
            let Some(doc) = after.or(before) else {
                continue;
            };
            let check = checks
                .entry(collection.to_string())
                .or_insert_with(|| self.inner.docs.read_check(collection));
            if sub.wants(collection, id, before, after, &mut names)
                && check.allows(&sub.who, &sub.auth, doc)
            {
                out.extend_from_slice(&sub.event(change, &mut None, &names));
            }
        }
        let caught_up = last >= self.head || page.len() < PAGE;
        Some((Bytes::from(out), (!caught_up).then_some(last)))
    }
}

fn close_event(reason: CloseReason) -> Bytes {
    let (reason, message) = match reason {
        CloseReason::Overflow => (
            "overflow",
            "the client fell too far behind; reconnect with Last-Event-ID to resume",
        ),
        CloseReason::Expired => (
            "expired",
            "the access token expired; reconnect with a fresh one and Last-Event-ID",
        ),
        CloseReason::Shutdown => ("shutdown", "the server is shutting down"),
    };
    sse_event(
        None,
        "close",
        &json!({"reason": reason, "message": message}),
    )
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.inner.unregister(&self.subscriber);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_parse_collections_and_documents() {
        let topics = parse_topics("posts, posts/a1,comments/x , posts/b2", 8).unwrap_or_default();
        assert_eq!(topics.get("posts"), Some(&Topic::Collection));
        assert_eq!(
            topics.get("comments"),
            Some(&Topic::Documents(HashSet::from(["x".to_string()])))
        );
        for bad in ["", " , ", "po sts", "posts/", "posts/a/b", "../x"] {
            assert!(parse_topics(bad, 8).is_err(), "{bad:?} should be refused");
        }
        assert!(parse_topics("a,b,c", 2).is_err());
    }
}
