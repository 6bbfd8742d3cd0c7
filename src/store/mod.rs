//! The storage layer: the only module that knows sled.
//!
//! Reads go straight to sled from the caller's thread. Writes go through the single writer
//! thread (see [`writer`]), which commits each write atomically with its index entries and
//! change records, and acknowledges it only after a flush shared by every write of its group.

mod diff;
mod error;
mod feed;
mod files;
mod keys;
mod kv;
mod records;
mod scan;
mod writer;

pub use error::{BatchFailure, StoreError};
use feed::ChangeFeed;
pub use feed::ChangeReceiver;
pub use files::{FileGuard, FileOp, FileRecord, FileWrite, FileWritten};
pub use kv::{KvWrite, Space};

/// A system record: key (without its space prefix) and value.
pub type KvEntry = (Vec<u8>, Vec<u8>);
pub use scan::{QueryResult, QuerySpec};
pub use writer::{Access, WriteGuard, WriteOp, WriteRequest, WriteResult};

use crate::metrics::Metrics;
use crate::model::{Change, CollectionConfig, Document};
use crate::query::{self, ast::Path};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// How the store is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The sled database directory.
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
    pub max_document_bytes: usize,
    /// The most write jobs made durable by one flush.
    pub group_commit_max: usize,
    /// Change records kept: at most this many...
    pub retention_count: usize,
    /// ...and none older than this.
    pub retention_age: Duration,
    /// Bytes of recent changes kept in memory for live consumers (see `feed`).
    pub change_buffer_bytes: usize,
}

/// One declared index, ready to use.
#[derive(Debug, Clone)]
pub struct IndexDef {
    pub fields: Vec<Path>,
    pub prefix: Vec<u8>,
}

/// A collection's configuration with its indexes parsed.
#[derive(Debug, Clone)]
pub struct CollectionState {
    pub config: CollectionConfig,
    pub indexes: Vec<IndexDef>,
}

impl CollectionState {
    fn new(name: &str, config: CollectionConfig) -> Result<Self, StoreError> {
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
            let prefix = keys::index_prefix(name, &keys::index_signature(&paths));
            indexes.push(IndexDef {
                fields: paths,
                prefix,
            });
        }
        Ok(CollectionState { config, indexes })
    }
}

/// Asked by the writer, for each change it commits, for system records to commit in the same
/// atomic batch (the functions' outbox uses it, so no trigger event can be lost or appear for a
/// write that did not happen).
pub trait CommitHook: Send + Sync {
    fn records(&self, change: &Change) -> Vec<(Space, Vec<u8>, Vec<u8>)>;
}

/// State shared by the writer thread and readers.
pub(crate) struct Shared {
    options: StoreOptions,
    hook: RwLock<Option<Arc<dyn CommitHook>>>,
    configs: RwLock<Arc<HashMap<String, Arc<CollectionState>>>>,
    changes: Arc<ChangeFeed>,
    metrics: Arc<Metrics>,
}

impl Shared {
    fn hook(&self) -> Option<Arc<dyn CommitHook>> {
        self.hook.read().ok().and_then(|h| h.clone())
    }

    fn configs_snapshot(&self) -> Arc<HashMap<String, Arc<CollectionState>>> {
        match self.configs.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_config(&self, name: &str, state: CollectionState) {
        let mut guard = match self.configs.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = HashMap::clone(&guard);
        next.insert(name.to_string(), Arc::new(state));
        *guard = Arc::new(next);
    }
}

/// The writer's queue and thread, taken out on close.
type WriterHandle = (mpsc::Sender<writer::Job>, std::thread::JoinHandle<()>);

/// The document store. Cheap to clone; every clone talks to the same database and writer.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    shared: Arc<Shared>,
    writer: Arc<Mutex<Option<WriterHandle>>>,
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

/// The fields of each declared index of a collection, as the planner takes them.
fn index_fields(state: Option<&CollectionState>) -> Vec<Vec<Path>> {
    state
        .map(|s| s.indexes.iter().map(|i| i.fields.clone()).collect())
        .unwrap_or_default()
}

/// A system record with its space prefix removed from the key.
fn strip_prefix(
    len: usize,
    entry: sled::Result<(sled::IVec, sled::IVec)>,
) -> Result<KvEntry, StoreError> {
    let (k, v) = entry?;
    Ok((k.get(len..).unwrap_or(&[]).to_vec(), v.to_vec()))
}

/// The seq at the end of a history key.
fn seq_of_history_key(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(tail) = key.len().checked_sub(8).and_then(|start| key.get(start..)) {
        b.copy_from_slice(tail);
    }
    u64::from_be_bytes(b)
}

fn seq_of_key(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(tail) = key.get(1..9) {
        b.copy_from_slice(tail);
    }
    u64::from_be_bytes(b)
}

/// A stored document as raw bytes: its version and its envelope JSON, served without parsing.
#[derive(Clone)]
pub struct RawDocument(sled::IVec);

impl RawDocument {
    pub fn version(&self) -> u64 {
        let mut b = [0u8; 8];
        if let Some(head) = self.0.get(..8) {
            b.copy_from_slice(head);
        }
        u64::from_be_bytes(b)
    }

    pub fn json(&self) -> &[u8] {
        self.0.get(8..).unwrap_or(&[])
    }

    /// The document, parsed.
    pub fn decode(&self) -> Result<Document, StoreError> {
        decode_doc(&self.0)
    }
}

impl Store {
    /// Opens (or creates) the database and starts the writer thread.
    pub fn open(options: StoreOptions, metrics: Arc<Metrics>) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(&options.path)
            .cache_capacity(options.cache_bytes)
            .mode(sled::Mode::HighThroughput)
            .open()?;
        let mut configs = HashMap::new();
        for entry in db.scan_prefix(keys::config_prefix()) {
            let (key, value) = entry?;
            let name = String::from_utf8_lossy(&key[keys::config_prefix().len()..]).into_owned();
            let config: CollectionConfig =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            configs.insert(name.clone(), Arc::new(CollectionState::new(&name, config)?));
        }
        let next_seq = match db.scan_prefix([keys::CHANGE]).next_back() {
            Some(entry) => seq_of_key(&entry?.0) + 1,
            None => 1,
        };
        let changes = ChangeFeed::new(
            next_seq - 1,
            options.change_buffer_bytes,
            metrics.change_feed_bytes.clone(),
        );
        let shared = Arc::new(Shared {
            options,
            hook: RwLock::new(None),
            configs: RwLock::new(Arc::new(configs)),
            changes,
            metrics,
        });
        let (tx, rx) = mpsc::channel();
        let writer = writer::Writer {
            db: db.clone(),
            shared: shared.clone(),
            rx,
            next_seq,
            ids: ulid::Generator::new(),
            last_prune: Instant::now(),
        };
        let handle = std::thread::Builder::new()
            .name("emberbase-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Corrupt(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            db,
            shared,
            writer: Arc::new(Mutex::new(Some((tx, handle)))),
        })
    }

    fn send(&self, job: writer::Job) -> Result<(), StoreError> {
        let guard = self.writer.lock().map_err(|_| StoreError::Closed)?;
        match guard.as_ref() {
            Some((tx, _)) => tx.send(job).map_err(|_| StoreError::Closed),
            None => Err(StoreError::Closed),
        }
    }

    /// Applies a write atomically and durably. Resolves once the write is on disk.
    pub async fn write(&self, request: WriteRequest) -> WriteResult {
        let (tx, rx) = oneshot::channel();
        let closed = |error| BatchFailure { op: 0, error };
        self.send(writer::Job::Write(request, tx)).map_err(closed)?;
        rx.await.map_err(|_| closed(StoreError::Closed))?
    }

    /// Stores a collection's configuration and rebuilds its indexes, durably.
    pub async fn configure(
        &self,
        collection: &str,
        config: CollectionConfig,
    ) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Job::Configure(collection.to_string(), config, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Commits a file's record (and its change record) atomically and durably.
    pub async fn file_write(&self, write: FileWrite) -> Result<FileWritten, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Job::File(write, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A file's record.
    pub fn file_get(&self, bucket: &str, path: &str) -> Result<Option<FileRecord>, StoreError> {
        match self.db.get(keys::file_key(bucket, path))? {
            Some(bytes) => FileRecord::decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The stored records of a bucket whose path starts with `prefix`, in path order, starting
    /// strictly after `after`.
    pub fn file_scan(
        &self,
        bucket: &str,
        prefix: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = Result<FileRecord, StoreError>> {
        let start = keys::file_key(bucket, prefix);
        let end = keys::prefix_end(&start);
        let from = match after {
            Some(path) => keys::successor(&keys::file_key(bucket, path)).max(start),
            None => start,
        };
        self.db
            .range(from..end)
            .map(|entry| FileRecord::decode(&entry?.1))
    }

    /// Every blob some file record points at.
    pub fn file_blobs(&self) -> Result<std::collections::HashSet<ulid::Ulid>, StoreError> {
        self.db
            .scan_prefix([keys::FILE])
            .map(|entry| Ok(FileRecord::decode(&entry?.1)?.blob))
            .collect()
    }

    /// Applies a system write atomically and durably, if every check holds
    /// (`StoreError::CasFailed` otherwise).
    pub async fn kv_write(&self, write: KvWrite) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.send(writer::Job::Kv(write, tx))?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A system record.
    pub fn kv_get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(space.key(key))?.map(|v| v.to_vec()))
    }

    /// System records in key order, strictly after `after`, at most `limit`.
    pub fn kv_scan(
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
        self.db
            .range(start..keys::prefix_end(&prefix))
            .take(limit)
            .map(|entry| strip_prefix(prefix.len(), entry))
            .collect()
    }

    /// Sets (or, with `None`, removes) the hook whose records are committed with every change.
    pub fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        if let Ok(mut slot) = self.shared.hook.write() {
            *slot = hook;
        }
    }

    /// System records whose key starts with `prefix`, in key order, at most `limit`.
    pub fn kv_prefix(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        self.kv_prefix_scan(space, prefix, limit, false)
    }

    /// System records whose key starts with `prefix`, last key first, at most `limit`.
    pub fn kv_prefix_last(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
    ) -> Result<Vec<KvEntry>, StoreError> {
        self.kv_prefix_scan(space, prefix, limit, true)
    }

    fn kv_prefix_scan(
        &self,
        space: Space,
        prefix: &[u8],
        limit: usize,
        last_first: bool,
    ) -> Result<Vec<KvEntry>, StoreError> {
        let len = space.prefix().len();
        let scan = self.db.scan_prefix(space.key(prefix));
        let entries: Box<dyn Iterator<Item = _>> = if last_first {
            Box::new(scan.rev())
        } else {
            Box::new(scan)
        };
        entries
            .take(limit)
            .map(|entry| strip_prefix(len, entry))
            .collect()
    }

    /// The last `limit` system records of a space, last key first.
    pub fn kv_scan_last(&self, space: Space, limit: usize) -> Result<Vec<KvEntry>, StoreError> {
        let prefix = space.prefix();
        self.db
            .scan_prefix(&prefix)
            .rev()
            .take(limit)
            .map(|entry| strip_prefix(prefix.len(), entry))
            .collect()
    }

    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["get"])
            .inc();
        match self.db.get(keys::doc_key(collection, id))? {
            Some(bytes) => decode_doc(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// A document's stored bytes, for serving it without a parse.
    pub fn get_raw(&self, collection: &str, id: &str) -> Result<Option<RawDocument>, StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["get"])
            .inc();
        Ok(self.db.get(keys::doc_key(collection, id))?.map(RawDocument))
    }

    /// The names of the collections that hold documents, in order. Reads one key per
    /// collection: each step seeks past the previous collection's documents.
    pub fn document_collections(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut from = vec![keys::DOC];
        while let Some((key, _)) = self.db.range(from.clone()..).next().transpose()? {
            let Some(rest) = key.strip_prefix(&[keys::DOC]) else {
                break;
            };
            let Some(end) = rest.iter().position(|b| *b == 0) else {
                break;
            };
            names.push(String::from_utf8_lossy(&rest[..end]).into_owned());
            // The first key after every `D collection 00 …` key.
            from = keys::doc_prefix(&String::from_utf8_lossy(&rest[..end]));
            if let Some(last) = from.last_mut() {
                *last = 1;
            }
        }
        Ok(names)
    }

    /// The configuration of a collection, if an admin has set one.
    pub fn collection(&self, collection: &str) -> Option<Arc<CollectionState>> {
        self.shared.configs_snapshot().get(collection).cloned()
    }

    /// Every configured collection, by name.
    pub fn collections(&self) -> Vec<(String, CollectionConfig)> {
        let snapshot = self.shared.configs_snapshot();
        let mut out: Vec<(String, CollectionConfig)> = snapshot
            .iter()
            .map(|(name, state)| (name.clone(), state.config.clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The plan a query would run with (see `query::plan`); `query` plans the same way.
    pub fn plan(
        &self,
        collection: &str,
        filter: Option<&crate::query::Expr>,
        sort: &[crate::query::SortKey],
    ) -> crate::query::plan::Plan {
        let state = self.collection(collection);
        crate::query::plan::plan(filter, sort, &index_fields(state.as_deref()))
    }

    /// Runs a query (see [`scan`]).
    pub fn query(&self, collection: &str, spec: &QuerySpec<'_>) -> Result<QueryResult, StoreError> {
        self.shared
            .metrics
            .store_ops
            .with_label_values(&["query"])
            .inc();
        let state = self.collection(collection);
        scan::run(&self.db, collection, state.as_deref(), spec)
    }

    /// Every change committed from now on, in commit order. A receiver that falls more than
    /// 4096 changes behind is told it lagged and should catch up with [`Store::changes_after`].
    pub fn subscribe(&self) -> ChangeReceiver {
        self.shared.changes.subscribe()
    }

    /// Retained changes with a sequence greater than `after`, oldest first, at most `limit`.
    pub fn changes_after(&self, after: u64, limit: usize) -> Result<Vec<Change>, StoreError> {
        let start = keys::change_key(after.saturating_add(1));
        let end = keys::prefix_end(&[keys::CHANGE]);
        let mut resolver = records::Resolver::new(&self.db);
        self.db
            .range(start.to_vec()..end)
            .take(limit)
            .map(|entry| {
                let (key, bytes) = entry?;
                resolver.resolve(records::decode(&bytes)?).or_else(|e| {
                    // The writer may have pruned the change this record referred to since it
                    // was read, rewriting the record with a whole `before`: read it again.
                    match self.db.get(&key)? {
                        Some(fresh) if fresh != bytes => resolver.resolve(records::decode(&fresh)?),
                        _ => Err(e),
                    }
                })
            })
            .collect()
    }

    /// The sequence of the newest committed change (0 before the first).
    pub fn last_seq(&self) -> Result<u64, StoreError> {
        Ok(self
            .db
            .scan_prefix([keys::CHANGE])
            .next_back()
            .transpose()?
            .map_or(0, |(k, _)| seq_of_key(&k)))
    }

    /// The sequence of the oldest retained change, if any.
    pub fn first_retained_seq(&self) -> Result<Option<u64>, StoreError> {
        Ok(self
            .db
            .scan_prefix([keys::CHANGE])
            .next()
            .transpose()?
            .map(|(k, _)| seq_of_key(&k)))
    }

    /// Stops the writer after it has committed every queued write, and flushes.
    pub fn close(&self) {
        let taken = match self.writer.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some((tx, handle)) = taken {
            drop(tx);
            if handle.join().is_err() {
                tracing::error!("the writer thread panicked");
            }
        }
    }
}
