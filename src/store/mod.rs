//! The commit engine: documents, files, system records and collection configuration as keys
//! and values of one storage [`Engine`](crate::engine::Engine), whatever its backend.
//!
//! Every write is one engine transaction (see [`commit`]): it reads what it replaces, checks
//! versions and the caller's write rule against that stored state, writes the document with its
//! index entries, appends its change record with the outbox records of the functions it
//! triggers, and commits; a conflict with a concurrent transaction runs it again. A commit
//! returns once durable, and the engine shows nothing before then, so every read here returns
//! only data a crash cannot lose.

mod collections;
pub(crate) mod commit;
pub(crate) mod deferred;
mod diff;
mod error;
mod feed;
mod files;
mod follow;
mod hold;
mod indexes;
mod keys;
mod kv;
mod prune;
mod records;
mod relations;
mod scan;
mod schema;
mod write;

pub(crate) use error::{BatchFailure, StoreError};
use feed::ChangeFeed;
pub use feed::ChangeReceiver;
pub(crate) use files::{FileGuard, FileOp, FileRecord, FileWrite};
pub(crate) use kv::{KvWrite, Space};
pub(crate) use relations::{references, relation_path, RelationDef};
pub(crate) use scan::{Matched, QueryResult, QuerySpec};
pub(crate) use schema::Schema;
pub(crate) use write::{Access, Recorded, WriteGuard, WriteOp, WriteRequest, Written};

/// A system record: key (without its space prefix) and value.
pub(crate) type KvEntry = (Vec<u8>, Vec<u8>);

use crate::engine::sled::{SledEngine, SledOptions};
use crate::engine::{Bytes, Direction, Engine, KeyRange, Keyspace};
use crate::metrics::Metrics;
use crate::model::{AccountEvent, Change, CollectionConfig, Document, OnDelete};
use crate::query::{self, ast::Path};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How the store is opened.
#[derive(Debug, Clone)]
pub(crate) struct StoreOptions {
    /// The sled database directory.
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    pub max_document_bytes: usize,
    /// Change records kept: at most this many...
    pub retention_count: usize,
    /// ...and none older than this.
    pub retention_age: Duration,
    /// Bytes of recent changes kept in memory for live consumers (see `feed`).
    pub change_buffer_bytes: usize,
    /// How long a deleted document's version is remembered, so that re-creating its id
    /// continues the version sequence.
    pub tombstone_age: Duration,
    /// The most documents a query may examine without an index (see `scan`).
    pub max_scan_documents: u64,
    /// How often a node of a cluster checks whether another changed the configuration.
    pub config_poll: Duration,
}

/// One declared index.
#[derive(Debug, Clone)]
pub(crate) struct IndexDef {
    pub fields: Vec<Path>,
    /// What names it in its key prefix and build record.
    pub signature: String,
    pub prefix: Vec<u8>,
    /// Whether every document has its entry, so that the planner may use it.
    pub ready: bool,
    /// A relation's reverse index (see `relations`): one entry per referenced id, never
    /// planned.
    pub reverse: bool,
}

/// A collection's configuration with its indexes parsed.
#[derive(Debug, Clone)]
pub(crate) struct CollectionState {
    pub config: CollectionConfig,
    pub indexes: Vec<IndexDef>,
    /// The compiled schema, if the configuration has one that compiles.
    pub schema: Option<Schema>,
    /// Why a stored schema does not compile (writes are refused until it is fixed).
    pub schema_error: Option<String>,
    pub relations: Vec<RelationDef>,
    /// The built-in owner index, built once (the planner borrows it).
    owner: IndexDef,
}

impl CollectionState {
    /// The state of `config`, with every index ready except those in `building`.
    fn new(name: &str, config: CollectionConfig, building: &[String]) -> Result<Self, StoreError> {
        let mut indexes = Vec::with_capacity(config.indexes.len());
        for fields in &config.indexes {
            let paths = fields
                .iter()
                .map(|f| query::parse_path(f))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StoreError::Invalid {
                    message: format!("invalid index field: {e}"),
                    field: "indexes".into(),
                })?;
            let signature = keys::index_signature(&paths);
            indexes.push(IndexDef {
                prefix: keys::index_prefix(name, &signature),
                ready: !building.contains(&signature),
                fields: paths,
                signature,
                reverse: false,
            });
        }
        let relations = relations::defs(&config.relations)?;
        for relation in relations.iter().filter(|r| r.on_delete != OnDelete::None) {
            let signature = relation.signature();
            indexes.push(IndexDef {
                prefix: keys::index_prefix(name, &signature),
                ready: !building.contains(&signature),
                fields: vec![relation.path.clone()],
                signature,
                reverse: true,
            });
        }
        let (schema, schema_error) = match config.schema.as_ref().map(Schema::compile) {
            Some(Ok(schema)) => (Some(schema), None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Ok(CollectionState {
            config,
            indexes,
            schema,
            schema_error,
            relations,
            owner: owner_index(name),
        })
    }
}

/// The signature of the built-in index on `owner` that every collection has.
pub(crate) const OWNER_INDEX: &str = "@owner";

/// The built-in owner index of a collection.
fn owner_index(collection: &str) -> IndexDef {
    IndexDef {
        fields: vec![Path {
            segments: vec!["owner".into()],
        }],
        prefix: keys::index_prefix(collection, OWNER_INDEX),
        signature: OWNER_INDEX.into(),
        ready: true,
        reverse: false,
    }
}

/// Every index a write to `collection` maintains: the declared ones (built or not) and the
/// built-in owner index.
fn maintained_indexes(collection: &str, state: Option<&CollectionState>) -> Vec<IndexDef> {
    match state {
        Some(state) => state
            .indexes
            .iter()
            .chain([&state.owner])
            .cloned()
            .collect(),
        None => vec![owner_index(collection)],
    }
}

/// A record a commit hook wants committed with a change.
pub(crate) enum HookRecord {
    /// At this key.
    Plain(Space, Vec<u8>, Vec<u8>),
    /// At this key prefix followed by the change's sequence, so records sort in commit order.
    Stamped(Space, Vec<u8>, Vec<u8>),
}

/// Asked, for each change committed, for system records to commit in the same transaction (the
/// functions' outbox and the webhooks' queues use it, so no trigger event or delivery can be
/// lost or appear for a write that did not happen).
pub(crate) trait CommitHook: Send + Sync {
    fn records(&self, change: &Change) -> Vec<HookRecord>;

    /// The records to commit with an account's write (signup, login, delete): `(space, key,
    /// value)`. None by default.
    fn account_records(&self, _event: &AccountEvent) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
        Vec::new()
    }

    /// Told once an account write with events is durable (the change feed carries no account
    /// events, so this is what wakes their consumers).
    fn account_committed(&self) {}

    /// Reloads what `records` decides from (the functions' triggers), which another node of
    /// a cluster changed; the write waiting for it then decides with the new configuration.
    fn reload(&self) -> futures_util::future::BoxFuture<'_, ()>;
}

/// The installed commit hooks, by name.
pub(crate) type Hooks = Arc<Vec<(&'static str, Arc<dyn CommitHook>)>>;

/// A collection's stored configuration: its raw bytes (which writes compare with what they
/// read) and its parsed state.
type Configured = (Bytes, Arc<CollectionState>);

/// State shared by every clone of the store.
pub(crate) struct Shared {
    options: StoreOptions,
    hooks: RwLock<Hooks>,
    configs: RwLock<Arc<HashMap<String, Configured>>>,
    changes: Arc<ChangeFeed>,
    metrics: Arc<Metrics>,
    ids: Mutex<ulid::Generator>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Whether every document has its owner index entry (see `indexes::backfill_owners`).
    owner_ready: AtomicBool,
    /// Counts the reloads of configuration that another node changed (see `follow`).
    epoch: tokio::sync::watch::Sender<u64>,
    /// The configuration epoch this node's caches were loaded at (see `follow`).
    loaded_epoch: tokio::sync::Mutex<Option<Vec<u8>>>,
    /// Held while dereference jobs run (see `relations`).
    dereferencing: tokio::sync::Mutex<()>,
    /// Deletions of bytes outside the store that wait for a backup (see `hold`).
    holds: Arc<hold::Holds>,
}

impl Shared {
    fn hooks(&self) -> Hooks {
        self.hooks
            .read()
            .map(|h| h.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    fn configs_snapshot(&self) -> Arc<HashMap<String, Configured>> {
        match self.configs.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_config(&self, name: &str, configured: Option<Configured>) {
        let mut guard = match self.configs.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = HashMap::clone(&guard);
        match configured {
            Some(c) => next.insert(name.to_string(), c),
            None => next.remove(name),
        };
        *guard = Arc::new(next);
    }
}

/// The document store. Cheap to clone; every clone talks to the same engine.
#[derive(Clone)]
pub(crate) struct Store {
    engine: Arc<dyn Engine>,
    shared: Arc<Shared>,
}

fn encode_doc(doc: &Document) -> Vec<u8> {
    let mut out = doc.version.to_be_bytes().to_vec();
    // Serialising a Document (strings, integers and a JSON map) cannot fail.
    let _ = serde_json::to_writer(&mut out, doc);
    out
}

fn decode_doc(bytes: &[u8]) -> Result<Document, StoreError> {
    let json = bytes
        .get(8..)
        .ok_or_else(|| StoreError::Corrupt("document record too short".into()))?;
    serde_json::from_slice(json).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A stored document as raw bytes: its version and its envelope JSON, served without parsing.
#[derive(Clone)]
pub(crate) struct RawDocument(Bytes);

impl RawDocument {
    pub(crate) fn version(&self) -> u64 {
        Self::stored_version(&self.0)
    }

    /// The version at the head of a stored document's bytes.
    fn stored_version(bytes: &[u8]) -> u64 {
        let mut b = [0u8; 8];
        if let Some(head) = bytes.get(..8) {
            b.copy_from_slice(head);
        }
        u64::from_be_bytes(b)
    }

    pub(crate) fn json(&self) -> &[u8] {
        self.0.get(8..).unwrap_or(&[])
    }

    /// The envelope JSON, sharing the stored bytes (no copy).
    pub(crate) fn into_json(self) -> Bytes {
        self.0.slice(self.0.len().min(8)..)
    }

    /// The document, parsed.
    pub(crate) fn decode(&self) -> Result<Document, StoreError> {
        decode_doc(&self.0)
    }
}

/// Entries with their space prefix removed from the key.
fn strip_prefix(len: usize, entries: Vec<(Bytes, Bytes)>) -> Vec<KvEntry> {
    entries
        .into_iter()
        .map(|(k, v)| (k.get(len..).unwrap_or(&[]).to_vec(), v.to_vec()))
        .collect()
}

/// See [`Store::kv_snapshot`].
pub(crate) struct KvSnapshot(Box<dyn crate::engine::Snapshot>);

impl KvSnapshot {
    /// System records whose key starts with `prefix`, last key first, at most `limit`.
    pub(crate) async fn prefix_last(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let range = KeyRange::prefix(&space.key(prefix));
        let entries = self
            .0
            .scan(Keyspace::System, &range, Direction::Reverse, limit)
            .await?;
        Ok(strip_prefix(space.prefix().len(), entries))
    }
}

impl Store {
    /// Opens (or creates) the embedded sled database, and starts the store's background work
    /// (pruning, index builds left unfinished).
    pub(crate) async fn open(
        options: StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let flush_metrics = metrics.clone();
        let engine = SledEngine::open(
            SledOptions {
                path: options.path.clone(),
                cache_bytes: options.cache_bytes,
            },
            Some(Box::new(move |took, commits| {
                flush_metrics
                    .flush_duration
                    .with_label_values(&[] as &[&str])
                    .observe(took.as_secs_f64());
                flush_metrics
                    .commit_group_size
                    .with_label_values(&[] as &[&str])
                    .observe(commits as f64);
            })),
        )?;
        Store::on_engine(Arc::new(engine), options, metrics).await
    }

    /// The store over an engine that is already open.
    pub(crate) async fn on_engine(
        engine: Arc<dyn Engine>,
        options: StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let last = *engine.watch().borrow();
        let changes = ChangeFeed::new(
            last,
            options.change_buffer_bytes,
            metrics.change_feed_bytes.clone(),
        );
        let store = Store {
            engine,
            shared: Arc::new(Shared {
                options,
                hooks: RwLock::new(Arc::new(Vec::new())),
                configs: RwLock::new(Arc::new(HashMap::new())),
                changes,
                metrics,
                ids: Mutex::new(ulid::Generator::new()),
                tasks: Mutex::new(Vec::new()),
                owner_ready: AtomicBool::new(false),
                epoch: tokio::sync::watch::channel(0).0,
                loaded_epoch: tokio::sync::Mutex::new(None),
                dereferencing: tokio::sync::Mutex::new(()),
                holds: Arc::default(),
            }),
        };
        if store.engine.shared() {
            *store.shared.loaded_epoch.lock().await = store.read_epoch().await?;
        }
        collections::ensure_counts(&*store.engine).await?;
        let building = store.load_configs().await?;
        let mut tasks = vec![prune::start(store.clone())];
        for collection in collections::deleting(&*store.engine).await? {
            tasks.push(collections::start_delete(store.clone(), collection));
        }
        if store.engine.shared() {
            tasks.push(follow::start(
                store.clone(),
                store.shared.options.config_poll,
            ));
        }
        for (collection, signature) in building {
            if signature != OWNER_INDEX {
                tasks.push(indexes::start_build(store.clone(), collection, signature));
            }
        }
        tasks.push(relations::resume_jobs(store.clone()));
        if indexes::owners_indexed(&*store.engine).await? {
            store.shared.owner_ready.store(true, Ordering::SeqCst);
        } else {
            tasks.push(indexes::backfill_owners(store.clone()));
        }
        store.add_tasks(tasks);
        Ok(store)
    }

    fn add_tasks(&self, new: Vec<tokio::task::JoinHandle<()>>) {
        let mut tasks = self.shared.tasks.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.extend(new);
    }

    /// Whether the storage answers a read within `within`.
    pub(crate) async fn check(&self, within: Duration) -> Result<(), String> {
        match tokio::time::timeout(within, self.engine.get(Keyspace::Meta, keys::EPOCH_KEY)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {} ms", within.as_millis())),
        }
    }

    /// Whether other nodes share this store (a cluster).
    pub(crate) fn is_shared(&self) -> bool {
        self.engine.shared()
    }

    /// The name of the storage engine's backend.
    pub(crate) fn backend(&self) -> &'static str {
        self.engine.backend()
    }

    /// A file's record.
    pub(crate) async fn file_get(
        &self,
        bucket: &str,
        path: &str,
    ) -> Result<Option<FileRecord>, StoreError> {
        match self
            .engine
            .get(Keyspace::Files, &keys::file_key(bucket, path))
            .await?
        {
            Some(bytes) => FileRecord::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// At most `limit` records of a bucket whose path starts with `prefix`, in path order,
    /// starting strictly after `after`.
    pub(crate) async fn file_scan(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let start = keys::file_key(bucket, prefix);
        let end = keys::prefix_end(&start);
        let from = match after {
            Some(path) => keys::successor(&keys::file_key(bucket, path)).max(start),
            None => start,
        };
        self.engine
            .scan(
                Keyspace::Files,
                &KeyRange::new(from, end),
                Direction::Forward,
                limit,
            )
            .await?
            .iter()
            .map(|(_, v)| FileRecord::decode(v))
            .collect()
    }

    /// The names of the buckets that hold files, in order: one short scan per bucket, which
    /// skips past the bucket's files.
    pub(crate) async fn file_buckets(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut range = KeyRange::all();
        loop {
            let page = self
                .engine
                .scan(Keyspace::Files, &range, Direction::Forward, 1)
                .await?;
            let Some((key, _)) = page.first() else {
                return Ok(names);
            };
            let bucket = key.split(|b| *b == 0).next().unwrap_or_default();
            names.push(String::from_utf8_lossy(bucket).into_owned());
            let prefix = [bucket, &[0]].concat();
            range = KeyRange::from(keys::prefix_end(&prefix));
        }
    }

    /// Every blob some file record points at.
    pub(crate) async fn file_blobs(
        &self,
    ) -> Result<std::collections::HashSet<ulid::Ulid>, StoreError> {
        const PAGE: usize = 1024;
        let mut blobs = std::collections::HashSet::new();
        let mut range = KeyRange::all();
        loop {
            let page = self
                .engine
                .scan(Keyspace::Files, &range, Direction::Forward, PAGE)
                .await?;
            for (_, v) in &page {
                blobs.insert(FileRecord::decode(v)?.blob);
            }
            match page.last() {
                Some((key, _)) if page.len() == PAGE => {
                    range = KeyRange::from(keys::successor(key));
                }
                _ => return Ok(blobs),
            }
        }
    }

    /// A system record.
    pub(crate) async fn kv_get(
        &self,
        space: Space,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .engine
            .get(Keyspace::System, &space.key(key))
            .await?
            .map(|v| v.to_vec()))
    }

    /// System records in key order, strictly after `after`, at most `limit`.
    pub(crate) async fn kv_scan(
        &self,
        space: Space,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let prefix = space.prefix();
        let start = match after {
            Some(key) => keys::successor(&space.key(key)),
            None => prefix.clone(),
        };
        let range = KeyRange::new(start, keys::prefix_end(&prefix));
        let entries = self
            .engine
            .scan(Keyspace::System, &range, Direction::Forward, limit)
            .await?;
        Ok(strip_prefix(prefix.len(), entries))
    }

    /// Sets (or, with `None`, removes) the hook called `name`, whose records are committed with
    /// every change.
    pub(crate) fn set_commit_hook(&self, name: &'static str, hook: Option<Arc<dyn CommitHook>>) {
        let mut slot = self
            .shared
            .hooks
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut next: Vec<_> = slot.iter().filter(|(n, _)| *n != name).cloned().collect();
        if let Some(hook) = hook {
            next.push((name, hook));
        }
        *slot = Arc::new(next);
    }

    /// System records whose key starts with `prefix`, in key order, at most `limit`.
    pub(crate) async fn kv_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        self.kv_prefix_scan(space, prefix, limit, Direction::Forward)
            .await
    }

    /// System records whose key starts with `prefix`, last key first, at most `limit`.
    pub(crate) async fn kv_prefix_last(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        self.kv_prefix_scan(space, prefix, limit, Direction::Reverse)
            .await
    }

    /// System records whose key starts with `prefix` and sorts before `before` (every one,
    /// with `None`), last key first, at most `limit`: a page of a newest-first walk.
    pub(crate) async fn kv_prefix_last_before(
        &self,
        space: Space,
        prefix: &[u8],
        before: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let full = space.key(prefix);
        let range = KeyRange {
            end: match before {
                Some(key) => Some(space.key(key)),
                None => Some(keys::prefix_end(&full)),
            },
            start: full,
        };
        let entries = self
            .engine
            .scan(Keyspace::System, &range, Direction::Reverse, limit)
            .await?;
        Ok(strip_prefix(space.prefix().len(), entries))
    }

    async fn kv_prefix_scan(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
        direction: Direction,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let range = KeyRange::prefix(&space.key(prefix));
        let entries = self
            .engine
            .scan(Keyspace::System, &range, direction, limit)
            .await?;
        Ok(strip_prefix(space.prefix().len(), entries))
    }

    /// The last `limit` system records of a space, last key first.
    pub(crate) async fn kv_scan_last(
        &self,
        space: Space,
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        self.kv_prefix_scan(space, &[], limit, Direction::Reverse)
            .await
    }

    pub(crate) async fn get(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<Document>, StoreError> {
        match self.get_raw(collection, id).await? {
            Some(raw) => raw.decode().map(Some),
            None => Ok(None),
        }
    }

    /// A document's stored bytes, for serving it without a parse.
    pub(crate) async fn get_raw(
        &self,
        collection: &str,
        id: &str,
    ) -> Result<Option<RawDocument>, StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["get"])
            .inc();
        Ok(self
            .engine
            .get(Keyspace::Documents, &keys::doc_key(collection, id))
            .await?
            .map(RawDocument))
    }

    /// Several documents of one collection at once (one round trip on a database server), in
    /// the order of `ids`.
    pub(crate) async fn get_many(
        &self,
        collection: &str,
        ids: &[String],
    ) -> Result<Vec<Option<Document>>, StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["get"])
            .inc_by(ids.len() as u64);
        let doc_keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::doc_key(collection, id)).collect();
        self.engine
            .get_many(Keyspace::Documents, &doc_keys)
            .await?
            .into_iter()
            .map(|bytes| bytes.map(|b| decode_doc(&b)).transpose())
            .collect()
    }

    /// The names of the collections that hold documents, in order. Reads one key per
    /// collection: each step seeks past the previous collection's documents.
    pub(crate) async fn document_collections(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut range = KeyRange::all();
        while let Some((key, _)) = self
            .engine
            .scan(Keyspace::Documents, &range, Direction::Forward, 1)
            .await?
            .pop()
        {
            let Some(end) = key.iter().position(|b| *b == 0) else {
                break;
            };
            let name = String::from_utf8_lossy(&key[..end]).into_owned();
            range = KeyRange::from(keys::prefix_end(&keys::doc_prefix(&name)));
            names.push(name);
        }
        Ok(names)
    }

    /// The configuration of a collection, if an admin has set one.
    pub(crate) fn collection(&self, collection: &str) -> Option<Arc<CollectionState>> {
        self.shared
            .configs_snapshot()
            .get(collection)
            .map(|(_, state)| state.clone())
    }

    /// Every configured collection, by name.
    pub(crate) fn collections(&self) -> Vec<(String, CollectionConfig)> {
        let snapshot = self.shared.configs_snapshot();
        let mut out: Vec<(String, CollectionConfig)> = snapshot
            .iter()
            .map(|(name, (_, state))| (name.clone(), state.config.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The indexes the planner may use for a collection: the declared ones that are built,
    /// then the owner index once every document has its entry. Plans refer to indexes by their
    /// position in this list.
    pub(crate) fn plannable<'a>(
        &self,
        collection: &str,
        state: Option<&'a CollectionState>,
    ) -> Vec<Cow<'a, IndexDef>> {
        let mut indexes: Vec<Cow<'a, IndexDef>> = state
            .map(|s| {
                s.indexes
                    .iter()
                    .filter(|i| i.ready && !i.reverse)
                    .map(Cow::Borrowed)
                    .collect()
            })
            .unwrap_or_default();
        if self.shared.owner_ready.load(Ordering::SeqCst) {
            indexes.push(match state {
                Some(state) => Cow::Borrowed(&state.owner),
                None => Cow::Owned(owner_index(collection)),
            });
        }
        indexes
    }

    /// The plan a query would run with (see `query::plan`); `query` plans the same way.
    pub(crate) fn plan(
        &self,
        collection: &str,
        filter: Option<&crate::query::Expr>,
        sort: &[crate::query::SortKey],
    ) -> crate::query::plan::Plan {
        let state = self.collection(collection);
        let ready = self.plannable(collection, state.as_deref());
        let fields: Vec<&[Path]> = ready.iter().map(|i| i.fields.as_slice()).collect();
        crate::query::plan::plan(filter, sort, &fields)
    }

    /// Runs a query (see [`scan`]).
    pub(crate) async fn query(
        &self,
        collection: &str,
        spec: &QuerySpec<'_>,
    ) -> Result<QueryResult, StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["query"])
            .inc();
        let state = self.collection(collection);
        scan::run(self, collection, state.as_deref(), spec).await
    }

    /// Passes every document of `collection` that matches to `each` (see [`scan::visit`]).
    pub(crate) async fn visit(
        &self,
        collection: &str,
        filter: Option<&crate::query::Expr>,
        visible: Option<&(dyn Fn(&Document) -> bool + Send + Sync)>,
        counting: bool,
        each: &mut (dyn FnMut(Matched<'_>) + Send),
    ) -> Result<(), StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["aggregate"])
            .inc();
        let state = self.collection(collection);
        scan::visit(
            self,
            collection,
            state.as_deref(),
            filter,
            visible,
            counting,
            each,
        )
        .await
    }

    /// Every change committed from now on, in commit order. A receiver that falls more than
    /// 4096 changes behind is told it lagged and should catch up with [`Store::changes_after`].
    pub(crate) fn subscribe(&self) -> ChangeReceiver {
        self.shared.changes.subscribe()
    }

    /// Retained changes with a sequence greater than `after`, oldest first, at most `limit`.
    pub(crate) async fn changes_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Change>, StoreError> {
        let range = KeyRange::from(keys::change_key(after.saturating_add(1)).to_vec());
        let entries = self
            .engine
            .scan(Keyspace::Changes, &range, Direction::Forward, limit)
            .await?;
        let mut resolver = records::Resolver::new(&*self.engine);
        let mut out = Vec::with_capacity(entries.len());
        for (key, bytes) in entries {
            let seq = keys::seq_of(&key);
            let change = match resolver.resolve(records::decode(seq, &bytes)?).await {
                Ok(change) => change,
                // Pruning may have rewritten the record since it was read, with a whole
                // `before` instead of a reference to the change it dropped: read it again.
                Err(e) => match self.engine.get(Keyspace::Changes, &key).await? {
                    Some(fresh) if fresh != bytes => {
                        resolver.resolve(records::decode(seq, &fresh)?).await?
                    }
                    _ => return Err(e),
                },
            };
            out.push(change);
        }
        Ok(out)
    }

    /// Moves each time this node reloads configuration another node of its cluster changed;
    /// services that cache configuration of their own reload it then.
    pub(crate) fn config_epoch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.shared.epoch.subscribe()
    }

    /// The sequence of the last change published to the in-process feed: where a consumer
    /// that subscribes now starts (in a cluster it may trail [`Store::last_seq`] a little).
    pub(crate) fn published_seq(&self) -> u64 {
        self.shared.changes.last()
    }

    /// The sequence of the newest durable change (0 before the first).
    pub(crate) fn last_seq(&self) -> u64 {
        *self.engine.watch().borrow()
    }

    /// A consistent view of everything stored, as durably committed now (for a backup).
    pub(crate) async fn snapshot(&self) -> Result<Box<dyn crate::engine::Snapshot>, StoreError> {
        Ok(self.engine.snapshot().await?)
    }

    /// A consistent view of the system records, for reads that must agree with each other
    /// whatever commits between them (a record moved from one space to another is seen in
    /// exactly one).
    pub(crate) async fn kv_snapshot(&self) -> Result<KvSnapshot, StoreError> {
        Ok(KvSnapshot(self.engine.snapshot().await?))
    }

    /// How many bytes the store takes, when its backend can tell (see `Engine::stored_bytes`).
    pub(crate) async fn stored_bytes(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.engine.stored_bytes().await?)
    }

    /// The sequence of the oldest retained change, if any.
    pub(crate) async fn first_retained_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .engine
            .scan(Keyspace::Changes, &KeyRange::all(), Direction::Forward, 1)
            .await?
            .first()
            .map(|(k, _)| keys::seq_of(k)))
    }

    /// Stops the background work, makes everything durable and closes the engine.
    pub(crate) async fn close(&self) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for task in tasks {
            task.abort();
        }
        if let Err(e) = self.engine.close().await {
            tracing::error!(error = %e, "closing the storage engine failed");
        }
        self.shared.changes.close();
    }

    /// Loads every collection's configuration; returns the index builds left unfinished.
    async fn load_configs(&self) -> Result<Vec<(String, String)>, StoreError> {
        let building = indexes::unfinished(&*self.engine).await?;
        let mut configs = HashMap::new();
        let mut range = KeyRange::prefix(keys::CONFIG_PREFIX);
        loop {
            let page = self
                .engine
                .scan(Keyspace::Meta, &range, Direction::Forward, 256)
                .await?;
            for (key, value) in &page {
                let name = String::from_utf8_lossy(&key[keys::CONFIG_PREFIX.len()..]).into_owned();
                let config: CollectionConfig = serde_json::from_slice(value)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                let pending: Vec<String> = building
                    .iter()
                    .filter(|(c, _)| *c == name)
                    .map(|(_, s)| s.clone())
                    .collect();
                let state = CollectionState::new(&name, config, &pending)?;
                configs.insert(name, (value.clone(), Arc::new(state)));
            }
            match page.last() {
                Some((key, _)) if page.len() == 256 => {
                    range.start = keys::successor(key);
                }
                _ => break,
            }
        }
        if let Ok(mut guard) = self.shared.configs.write() {
            *guard = Arc::new(configs);
        }
        Ok(building)
    }
}
