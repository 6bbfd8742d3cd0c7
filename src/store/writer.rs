//! The single writer thread, and group commit.
//!
//! Every write reaches this thread as a job on a channel. The thread takes the first waiting job
//! and every other job already queued (up to `group_commit_max`), applies each one as its own
//! atomic `sled::Batch` (documents, index entries and change records together), then calls
//! `flush` once for the whole group and only then answers each job. A write is therefore
//! acknowledged only once it is on disk, and concurrent writers share one fsync: the more
//! writers, the more jobs per flush.
//!
//! Because this thread is the only writer, the state it reads while validating a job (existing
//! documents, versions, access rules) cannot change under it.

use super::error::{BatchFailure, StoreError};
use super::files::{FileOp, FileRecord, FileWrite, FileWritten};
use super::keys;
use super::kv::KvWrite;
use super::records;
use super::{CollectionState, CommitHook, Shared};
use crate::model::{
    merge_patch, now_rfc3339, Actor, Change, ChangeKind, CollectionConfig, Document, FileInfo,
    Subject,
};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// One operation of a write. Every write is a batch of these, applied all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteOp {
    /// Create a document; `id` is generated (a ULID) when absent. Fails if the id exists.
    Create {
        collection: String,
        id: Option<String>,
        data: Map<String, Value>,
    },
    /// Create or replace a document.
    Set {
        collection: String,
        id: String,
        data: Map<String, Value>,
        if_version: Option<u64>,
    },
    /// Apply a JSON merge patch (RFC 7386) to an existing document.
    Update {
        collection: String,
        id: String,
        patch: Map<String, Value>,
        if_version: Option<u64>,
    },
    /// Delete an existing document.
    Delete {
        collection: String,
        id: String,
        if_version: Option<u64>,
    },
}

/// What an access check is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Create,
    Update,
    Delete,
}

/// An access check run by the writer against the exact stored state, so that no write can slip
/// between the check and the commit. `before` is the stored document (if any), `after` the one
/// the op would write (none for a delete). An `Err` carries the message of a `403`.
pub trait WriteGuard: Send + Sync {
    fn check(
        &self,
        access: Access,
        collection: &str,
        before: Option<&Document>,
        after: Option<&Document>,
    ) -> Result<(), String>;
}

/// A write: its ops, who makes it, and how deep in a chain of triggered writes it is.
pub struct WriteRequest {
    pub ops: Vec<WriteOp>,
    pub actor: Option<Actor>,
    pub depth: u32,
    pub guard: Option<Arc<dyn WriteGuard>>,
}

pub type WriteResult = Result<Vec<Option<Document>>, BatchFailure>;

pub(super) enum Job {
    Write(WriteRequest, oneshot::Sender<WriteResult>),
    Kv(KvWrite, oneshot::Sender<Result<(), StoreError>>),
    File(FileWrite, oneshot::Sender<Result<FileWritten, StoreError>>),
    Configure(
        String,
        CollectionConfig,
        oneshot::Sender<Result<(), StoreError>>,
    ),
}

pub(super) struct Writer {
    pub db: sled::Db,
    pub shared: Arc<Shared>,
    pub rx: Receiver<Job>,
    pub next_seq: u64,
    pub ids: ulid::Generator,
    pub last_prune: Instant,
}

type DocKey = (String, String);

/// The effect of one applied job, waiting for the group's flush.
enum Applied {
    Write(
        oneshot::Sender<WriteResult>,
        WriteResult,
        Vec<Sized<Change>>,
    ),
    Configure(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    File(Box<AppliedFile>),
}

type AppliedFile = (
    oneshot::Sender<Result<FileWritten, StoreError>>,
    Result<FileWritten, StoreError>,
    Option<Sized<Change>>,
);

/// A change with the size of its whole encoding, which is what it costs the change feed.
type Sized<T> = (T, usize);

/// What a write job left: each op's document, and the changes to publish.
type Written = (Vec<Option<Document>>, Vec<Sized<Change>>);

/// Counts the bytes written to it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Adds a change record (and, for a document, its history entry) to a batch, with the records
/// the commit hook wants beside it; returns the size of the whole change. `has_prev`: the
/// document has a retained change before this one (see `records`).
fn record_change(
    batch: &mut sled::Batch,
    change: &Change,
    has_prev: bool,
    hook: Option<&Arc<dyn CommitHook>>,
) -> Result<usize, StoreError> {
    batch.insert(
        &keys::change_key(change.seq)[..],
        records::encode(change, has_prev)?,
    );
    if let Subject::Document { collection, id, .. } = &change.subject {
        batch.insert(keys::history_key(collection, id, change.seq), &[]);
    }
    let mut size = ByteCount(0);
    serde_json::to_writer(&mut size, change).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    if let Some(hook) = hook {
        for (space, key, value) in hook.records(change) {
            batch.insert(space.key(&key), value);
        }
    }
    Ok(size.0)
}

/// The owner a new document or file gets: the signed-in user who makes the write, if any.
fn owner_of(actor: &Option<Actor>) -> Option<String> {
    actor.as_ref().and_then(|a| match a.role.as_str() {
        "user" | "admin" => a.id.clone(),
        _ => None,
    })
}

impl Writer {
    pub fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(Duration::from_secs(1)) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    self.maybe_prune();
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut group = vec![first];
            while group.len() < self.shared.options.group_commit_max {
                match self.rx.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            self.commit_group(group);
            self.maybe_prune();
        }
        if let Err(e) = self.db.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        self.shared.changes.close();
    }

    fn commit_group(&mut self, group: Vec<Job>) {
        let metrics = self.shared.metrics.clone();
        metrics
            .commit_group_size
            .with_label_values(&[] as &[&str])
            .observe(group.len() as f64);
        let applied: Vec<Applied> = group
            .into_iter()
            .map(|job| match job {
                Job::Write(req, reply) => match self.apply_write(&req) {
                    Ok((docs, changes)) => Applied::Write(reply, Ok(docs), changes),
                    Err(f) => Applied::Write(reply, Err(f), Vec::new()),
                },
                Job::Configure(name, config, reply) => {
                    let result = self.apply_configure(&name, config);
                    Applied::Configure(reply, result)
                }
                Job::Kv(write, reply) => {
                    let result = self.apply_kv(write);
                    Applied::Configure(reply, result)
                }
                Job::File(write, reply) => Applied::File(Box::new(match self.apply_file(&write) {
                    Ok((written, sized)) => (reply, Ok(written), Some(sized)),
                    Err(e) => (reply, Err(e), None),
                })),
            })
            .collect();
        let started = Instant::now();
        let flushed = self.db.flush();
        metrics
            .flush_duration
            .with_label_values(&[] as &[&str])
            .observe(started.elapsed().as_secs_f64());
        for outcome in applied {
            match outcome {
                Applied::Write(reply, result, changes) => {
                    let result = match (&flushed, result) {
                        (Err(e), Ok(_)) => Err(BatchFailure {
                            op: 0,
                            error: StoreError::Corrupt(format!("flush failed: {e}")),
                        }),
                        (_, result) => result,
                    };
                    let durable = result.is_ok();
                    let _ = reply.send(result);
                    if durable {
                        for (change, size) in changes {
                            self.shared.changes.publish(change, size);
                        }
                    }
                }
                Applied::Configure(reply, result) => {
                    let result = match &flushed {
                        Err(e) => Err(StoreError::Corrupt(format!("flush failed: {e}"))),
                        Ok(_) => result,
                    };
                    let _ = reply.send(result);
                }
                Applied::File(applied) => {
                    let (reply, result, change) = *applied;
                    let result = match &flushed {
                        Err(e) => Err(StoreError::Corrupt(format!("flush failed: {e}"))),
                        Ok(_) => result,
                    };
                    let durable = result.is_ok();
                    let _ = reply.send(result);
                    if let (true, Some((change, size))) = (durable, change) {
                        self.shared.changes.publish(change, size);
                    }
                }
            }
        }
        metrics
            .change_seq
            .set(self.next_seq.saturating_sub(1) as i64);
    }

    /// Whether a document has a retained change.
    fn has_history(&self, key: &DocKey) -> Result<bool, StoreError> {
        Ok(self
            .db
            .scan_prefix(keys::history_prefix(&key.0, &key.1))
            .next()
            .transpose()?
            .is_some())
    }

    fn read_doc(&self, key: &DocKey) -> Result<Option<Document>, StoreError> {
        match self.db.get(keys::doc_key(&key.0, &key.1))? {
            Some(bytes) => super::decode_doc(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Applies one write job as one atomic batch. Nothing is written if any op fails.
    fn apply_write(&mut self, req: &WriteRequest) -> Result<Written, BatchFailure> {
        let now = now_rfc3339();
        let owner = owner_of(&req.actor);
        // The state of every document the batch has touched: first as stored, then as the
        // batch leaves it.
        let mut original: HashMap<DocKey, Option<Document>> = HashMap::new();
        let mut current: HashMap<DocKey, Option<Document>> = HashMap::new();
        let mut results = Vec::with_capacity(req.ops.len());
        let mut pending: Vec<(ChangeKind, Option<Document>, Option<Document>, DocKey)> = Vec::new();

        for (i, op) in req.ops.iter().enumerate() {
            let fail = |error: StoreError| BatchFailure { op: i, error };
            let (collection, id) = match op {
                WriteOp::Create { collection, id, .. } => {
                    let id = match id {
                        Some(id) => id.clone(),
                        None => self
                            .ids
                            .generate()
                            .unwrap_or_else(|_| ulid::Ulid::new())
                            .to_string(),
                    };
                    (collection.clone(), id)
                }
                WriteOp::Set { collection, id, .. }
                | WriteOp::Update { collection, id, .. }
                | WriteOp::Delete { collection, id, .. } => (collection.clone(), id.clone()),
            };
            let key = (collection.clone(), id.clone());
            if !current.contains_key(&key) {
                let stored = self.read_doc(&key).map_err(fail)?;
                original.insert(key.clone(), stored.clone());
                current.insert(key.clone(), stored);
            }
            let before = current.get(&key).cloned().flatten();
            let check =
                |access: Access, before: Option<&Document>, after: Option<&Document>| match &req
                    .guard
                {
                    Some(guard) => guard
                        .check(access, &collection, before, after)
                        .map_err(StoreError::Denied),
                    None => Ok(()),
                };
            let missing = || StoreError::NotFound {
                collection: collection.clone(),
                id: id.clone(),
            };
            let version_check = |if_version: &Option<u64>, actual: u64| match if_version {
                Some(expected) if *expected != actual => Err(StoreError::VersionMismatch {
                    collection: collection.clone(),
                    id: id.clone(),
                    expected: *expected,
                    actual,
                }),
                _ => Ok(()),
            };
            let fresh = |data: Map<String, Value>| Document {
                id: id.clone(),
                collection: collection.clone(),
                owner: owner.clone(),
                version: 1,
                created_at: now.clone(),
                updated_at: now.clone(),
                data,
            };
            let next = |prev: &Document, data: Map<String, Value>| Document {
                version: prev.version + 1,
                updated_at: now.clone(),
                data,
                ..prev.clone()
            };

            let (kind, after) = match (op, &before) {
                (WriteOp::Create { data, .. }, None) => {
                    let doc = fresh(data.clone());
                    check(Access::Create, None, Some(&doc)).map_err(fail)?;
                    (ChangeKind::Create, Some(doc))
                }
                (WriteOp::Create { .. }, Some(_)) => {
                    return Err(fail(StoreError::Conflict { collection, id }))
                }
                (
                    WriteOp::Set {
                        data, if_version, ..
                    },
                    None,
                ) => {
                    let doc = fresh(data.clone());
                    check(Access::Create, None, Some(&doc)).map_err(fail)?;
                    version_check(if_version, 0).map_err(fail)?;
                    (ChangeKind::Create, Some(doc))
                }
                (
                    WriteOp::Set {
                        data, if_version, ..
                    },
                    Some(prev),
                ) => {
                    let doc = next(prev, data.clone());
                    check(Access::Update, Some(prev), Some(&doc)).map_err(fail)?;
                    version_check(if_version, prev.version).map_err(fail)?;
                    (ChangeKind::Update, Some(doc))
                }
                (
                    WriteOp::Update {
                        patch, if_version, ..
                    },
                    Some(prev),
                ) => {
                    let mut data = Value::Object(prev.data.clone());
                    merge_patch(&mut data, &Value::Object(patch.clone()));
                    let Value::Object(data) = data else {
                        return Err(fail(StoreError::Corrupt(
                            "merge produced a non-object".into(),
                        )));
                    };
                    let doc = next(prev, data);
                    check(Access::Update, Some(prev), Some(&doc)).map_err(fail)?;
                    version_check(if_version, prev.version).map_err(fail)?;
                    (ChangeKind::Update, Some(doc))
                }
                (WriteOp::Delete { if_version, .. }, Some(prev)) => {
                    check(Access::Delete, Some(prev), None).map_err(fail)?;
                    version_check(if_version, prev.version).map_err(fail)?;
                    (ChangeKind::Delete, None)
                }
                // A missing document: a caller the rule would not let touch it gets 403, so
                // that a 404 never tells anyone what they could not read.
                (WriteOp::Update { .. }, None) => {
                    check(Access::Update, None, None).map_err(fail)?;
                    return Err(fail(missing()));
                }
                (WriteOp::Delete { .. }, None) => {
                    check(Access::Delete, None, None).map_err(fail)?;
                    return Err(fail(missing()));
                }
            };
            if let Some(doc) = &after {
                let size = serde_json::to_vec(&doc.data)
                    .map(|v| v.len())
                    .unwrap_or(usize::MAX);
                let limit = self.shared.options.max_document_bytes;
                if size > limit {
                    return Err(fail(StoreError::Invalid {
                        message: format!(
                            "document data is {size} bytes, over the limit of {limit}"
                        ),
                        field: "data".into(),
                    }));
                }
            }
            current.insert(key.clone(), after.clone());
            results.push(after.clone());
            pending.push((kind, before, after, key));
        }

        let mut batch = sled::Batch::default();
        let configs = self.shared.configs_snapshot();
        for (key, now_state) in &current {
            let indexes = configs
                .get(&key.0)
                .map(|s| s.indexes.as_slice())
                .unwrap_or(&[]);
            if let Some(Some(old)) = original.get(key) {
                for index in indexes {
                    batch.remove(keys::index_key(&index.prefix, &index.fields, old));
                }
            }
            match now_state {
                Some(doc) => {
                    batch.insert(keys::doc_key(&key.0, &key.1), super::encode_doc(doc));
                    for index in indexes {
                        batch.insert(
                            keys::index_key(&index.prefix, &index.fields, doc),
                            doc.id.as_bytes(),
                        );
                    }
                }
                None => batch.remove(keys::doc_key(&key.0, &key.1)),
            }
        }
        let mut changes = Vec::with_capacity(pending.len());
        let mut seq = self.next_seq;
        let hook = self.shared.hook();
        // Documents with a retained change: before this batch, or earlier in it.
        let mut chained: HashSet<DocKey> = HashSet::new();
        for (kind, before, after, (collection, id)) in pending {
            let key = (collection.clone(), id.clone());
            let has_prev = chained.contains(&key)
                || self
                    .has_history(&key)
                    .map_err(|error| BatchFailure { op: 0, error })?;
            chained.insert(key);
            let change = Change {
                seq,
                kind,
                subject: Subject::Document {
                    collection,
                    id,
                    before,
                    after,
                },
                time: now.clone(),
                actor: req.actor.clone(),
                depth: req.depth,
            };
            let size = record_change(&mut batch, &change, has_prev, hook.as_ref())
                .map_err(|error| BatchFailure { op: 0, error })?;
            changes.push((change, size));
            seq += 1;
        }
        self.db.apply_batch(batch).map_err(|e| BatchFailure {
            op: 0,
            error: e.into(),
        })?;
        self.next_seq = seq;
        for op in &req.ops {
            let name = match op {
                WriteOp::Create { .. } => "create",
                WriteOp::Set { .. } => "set",
                WriteOp::Update { .. } => "update",
                WriteOp::Delete { .. } => "delete",
            };
            self.shared
                .metrics
                .store_ops
                .with_label_values(&[name])
                .inc();
        }
        Ok((results, changes))
    }

    /// Applies one file write (its record and its change record) as one atomic batch.
    fn apply_file(
        &mut self,
        write: &FileWrite,
    ) -> Result<(FileWritten, Sized<Change>), StoreError> {
        let key = keys::file_key(&write.bucket, &write.path);
        let before = match self.db.get(&key)? {
            Some(bytes) => Some(FileRecord::decode(&bytes)?),
            None => None,
        };
        let prev = before.as_ref().map(|r| &r.info);
        let check = |access: Access, after: Option<&FileInfo>| match &write.guard {
            Some(guard) => guard.check(access, prev, after).map_err(StoreError::Denied),
            None => Ok(()),
        };
        let now = now_rfc3339();
        let mut batch = sled::Batch::default();
        let (kind, after) = match &write.op {
            FileOp::Put {
                blob,
                size,
                sha256,
                content_type,
                markup,
            } => {
                let info = FileInfo {
                    bucket: write.bucket.clone(),
                    path: write.path.clone(),
                    size: *size,
                    content_type: content_type.clone(),
                    sha256: sha256.clone(),
                    owner: match prev {
                        Some(p) => p.owner.clone(),
                        None => owner_of(&write.actor),
                    },
                    created_at: prev.map_or_else(|| now.clone(), |p| p.created_at.clone()),
                    updated_at: now.clone(),
                };
                let (access, kind) = match prev {
                    Some(_) => (Access::Update, ChangeKind::Update),
                    None => (Access::Create, ChangeKind::Create),
                };
                check(access, Some(&info))?;
                let record = FileRecord {
                    info,
                    blob: *blob,
                    markup: *markup,
                };
                batch.insert(key, record.encode());
                (kind, Some(record.info))
            }
            FileOp::Delete => {
                check(Access::Delete, None)?;
                if prev.is_none() {
                    return Err(StoreError::FileNotFound {
                        bucket: write.bucket.clone(),
                        path: write.path.clone(),
                    });
                }
                batch.remove(key);
                (ChangeKind::Delete, None)
            }
        };
        let change = Change {
            seq: self.next_seq,
            kind,
            subject: Subject::File {
                bucket: write.bucket.clone(),
                path: write.path.clone(),
                before: prev.cloned(),
                after: after.clone(),
            },
            time: now,
            actor: write.actor.clone(),
            depth: write.depth,
        };
        let size = record_change(&mut batch, &change, false, self.shared.hook().as_ref())?;
        self.db.apply_batch(batch)?;
        self.next_seq += 1;
        let op = if after.is_some() {
            "file_put"
        } else {
            "file_delete"
        };
        self.shared.metrics.store_ops.with_label_values(&[op]).inc();
        Ok((FileWritten { before, after }, (change, size)))
    }

    /// Stores a collection's configuration and brings its indexes in line with it: entries of
    /// dropped indexes are removed and new indexes are built from the stored documents, in the
    /// same atomic batch as the configuration itself.
    fn apply_configure(&mut self, name: &str, config: CollectionConfig) -> Result<(), StoreError> {
        let state = CollectionState::new(name, config)?;
        let old = self.shared.configs_snapshot().get(name).cloned();
        let old_prefixes: Vec<Vec<u8>> = old
            .iter()
            .flat_map(|s| s.indexes.iter().map(|i| i.prefix.clone()))
            .collect();
        let mut batch = sled::Batch::default();
        for prefix in &old_prefixes {
            if !state.indexes.iter().any(|i| &i.prefix == prefix) {
                for entry in self.db.scan_prefix(prefix) {
                    batch.remove(entry?.0);
                }
            }
        }
        let new_indexes: Vec<_> = state
            .indexes
            .iter()
            .filter(|i| !old_prefixes.contains(&i.prefix))
            .collect();
        if !new_indexes.is_empty() {
            for entry in self.db.scan_prefix(keys::doc_prefix(name)) {
                let (_, bytes) = entry?;
                let doc = super::decode_doc(&bytes)?;
                for index in &new_indexes {
                    batch.insert(
                        keys::index_key(&index.prefix, &index.fields, &doc),
                        doc.id.as_bytes(),
                    );
                }
            }
        }
        let json =
            serde_json::to_vec(&state.config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        batch.insert(keys::config_key(name), json);
        // Queries must never plan with an index whose entries are going or not there yet: stop
        // using dropped indexes before their entries are removed, and start using new ones
        // only after their entries are written.
        if let Some(old) = old {
            let kept = old
                .indexes
                .iter()
                .filter(|i| state.indexes.iter().any(|n| n.prefix == i.prefix))
                .cloned()
                .collect();
            self.shared.set_config(
                name,
                CollectionState {
                    config: old.config.clone(),
                    indexes: kept,
                },
            );
        }
        self.db.apply_batch(batch)?;
        self.shared.set_config(name, state);
        Ok(())
    }

    /// Applies a system write if every one of its checks holds.
    fn apply_kv(&mut self, write: KvWrite) -> Result<(), StoreError> {
        for (space, key, expected) in &write.checks {
            let stored = self.db.get(space.key(key))?;
            if stored.as_deref() != expected.as_deref() {
                return Err(StoreError::CasFailed);
            }
        }
        let mut batch = sled::Batch::default();
        for (space, key) in write.deletes {
            batch.remove(space.key(&key));
        }
        for (space, key, value) in write.puts {
            batch.insert(space.key(&key), value);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// Drops change records past the retention window (count and age), a bounded number per
    /// call so that pruning never stalls writes for long.
    fn maybe_prune(&mut self) {
        if self.last_prune.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last_prune = Instant::now();
        if let Err(e) = self.prune() {
            tracing::warn!(error = %e, "pruning the change feed failed");
        }
    }

    fn prune(&mut self) -> Result<(), StoreError> {
        const PER_ROUND: usize = 10_000;
        let opts = &self.shared.options;
        let keep_from_seq = self.next_seq.saturating_sub(opts.retention_count as u64);
        let cutoff =
            crate::model::format_time(time::OffsetDateTime::now_utc() - opts.retention_age);
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        // Records this round rewrote (with a whole `before`), which the database does not
        // show until the batch is applied.
        let mut rewritten: HashMap<u64, records::StoredChange> = HashMap::new();
        for entry in self.db.scan_prefix([keys::CHANGE]) {
            let (key, bytes) = entry?;
            let seq = super::seq_of_key(&key);
            // The newest record is always kept: it is where the sequence resumes after a
            // restart, so sequences never repeat (realtime clients resume by them).
            let newest = seq + 1 >= self.next_seq;
            if removed >= PER_ROUND || newest {
                break;
            }
            let stored = match rewritten.remove(&seq) {
                Some(stored) => Ok(stored),
                None => records::decode(&bytes),
            };
            match stored {
                Ok(stored) => {
                    if seq >= keep_from_seq && stored.time >= cutoff {
                        break;
                    }
                    self.unchain(&stored, &mut batch, &mut rewritten)?;
                }
                Err(e) => {
                    tracing::warn!(seq, error = %e, "pruning a change record that does not decode")
                }
            }
            batch.remove(key);
            removed += 1;
        }
        if removed > 0 {
            self.db.apply_batch(batch)?;
            tracing::debug!(removed, "pruned change feed");
        }
        Ok(())
    }

    /// Before a document's oldest retained change is pruned, stores the `before` of the
    /// document's next change whole if it referred to the pruned one, and drops the pruned
    /// change's history entry.
    fn unchain(
        &self,
        oldest: &records::StoredChange,
        batch: &mut sled::Batch,
        rewritten: &mut HashMap<u64, records::StoredChange>,
    ) -> Result<(), StoreError> {
        let Some((collection, id)) = oldest.document() else {
            return Ok(());
        };
        batch.remove(keys::history_key(collection, id, oldest.seq));
        let prefix = keys::history_prefix(collection, id);
        let after = keys::successor(&keys::history_key(collection, id, oldest.seq));
        let Some(entry) = self.db.range(after..keys::prefix_end(&prefix)).next() else {
            return Ok(());
        };
        let next_seq = super::seq_of_history_key(&entry?.0);
        // A record this round rewrote already has its `before` whole.
        if rewritten.contains_key(&next_seq) {
            return Ok(());
        }
        let next = match self.db.get(keys::change_key(next_seq))? {
            Some(bytes) => records::decode(&bytes)?,
            None => return Ok(()),
        };
        if !next.before_is_prev() {
            return Ok(());
        }
        match oldest.after_of_first() {
            Ok(document) => {
                let next = next.with_whole_before(document);
                batch.insert(&keys::change_key(next_seq)[..], records::to_bytes(&next)?);
                rewritten.insert(next_seq, next);
            }
            Err(e) => {
                tracing::error!(seq = oldest.seq, error = %e, "cannot carry a document's state past a pruned change; its next change will not read back");
            }
        }
        Ok(())
    }
}
