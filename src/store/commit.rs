//! Writes as engine transactions.
//!
//! A write reads, inside its transaction, every document it touches and the configuration of
//! their collections, decides (versions, the caller's write rule, size limits) against that
//! stored state, then writes the documents with their index entries, appends one change record
//! per op with its history entry and outbox records, and commits. If anything it read changed
//! before it commits, the engine refuses the commit and the write runs again from the start, so
//! a decision is never made on a copy that another write has since replaced. A first attempt
//! skips two reads whose outcome it knows but still has the commit check (see `Attempt`): a
//! create's generated id being free and, on a shared store, the configuration epoch. A write
//! that is refused (`403`, `404`, `409`, `412`) still commits its reads, so it is answered only
//! once everything it looked at is durable.
//!
//! A deleted document leaves a tombstone with its last version, so that creating the same id
//! again continues the version sequence and a stale `If-Match` cannot match the new document.
//! Tombstones are pruned after `StoreOptions::tombstone_age`.

use super::error::{BatchFailure, StoreError};
use super::files::{FileOp, FileRecord, FileWrite, FileWritten};
use super::kv::KvWrite;
use super::relations::{self, RelationDef};
use super::write::{Access, WriteOp, WriteRequest, WriteResult, Written};
use super::{keys, records, CollectionState, Configured, HookRecord, IndexDef, Store};
use crate::engine::{
    retry, ChangeAppend, Direction, EngineError, KeyRange, Keyspace, OnDurable, Stamped,
    Transaction,
};
use crate::model::{
    merge_patch, now_rfc3339, Actor, Change, ChangeKind, Document, FileInfo, Subject,
};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

type DocKey = (String, String);

/// A change with the size of its whole encoding, which is what it costs the change feed.
type Sized = (Change, usize);

/// The owner a new document or file gets: the signed-in user who makes the write, if any.
/// Refuses data that breaks its collection's schema, or any write while the stored schema
/// does not compile. The data is checked as the write leaves it (after a merge patch).
fn check_schema(
    collection: &str,
    state: &CollectionState,
    doc: &mut Document,
) -> Result<(), StoreError> {
    if let Some(error) = &state.schema_error {
        return Err(StoreError::Invalid {
            message: format!(
                "collection {collection} has a schema that does not compile ({error}); \
                 fix it with PUT /v1/admin/collections/{collection}"
            ),
            field: "schema".into(),
        });
    }
    let Some(schema) = &state.schema else {
        return Ok(());
    };
    let data = Value::Object(std::mem::take(&mut doc.data));
    let violations = schema.violations(&data);
    if let Value::Object(map) = data {
        doc.data = map;
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(StoreError::SchemaViolation {
            collection: collection.to_string(),
            violations,
        })
    }
}

fn owner_of(actor: &Option<Actor>) -> Option<String> {
    actor.as_ref().and_then(|a| match a.role.as_str() {
        "user" | "admin" => a.id.clone(),
        _ => None,
    })
}

/// A tombstone: the deleted document's version, and when it was deleted (unix seconds).
pub(super) fn encode_tombstone(version: u64) -> Vec<u8> {
    [
        version.to_be_bytes(),
        crate::model::unix_secs().to_be_bytes(),
    ]
    .concat()
}

pub(super) fn decode_tombstone(bytes: &[u8]) -> (u64, u64) {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        if let Some(s) = bytes.get(at..at + 8) {
            b.copy_from_slice(s);
        }
        u64::from_be_bytes(b)
    };
    (word(0), word(8))
}

/// Adds a change record to a transaction, with its history entry (for a document) and the
/// records the commit hooks want beside it. `has_prev`: the document has a retained change
/// before this one (see `records`). Returns the change with its size.
fn append_change(
    txn: &mut dyn Transaction,
    change: Change,
    has_prev: bool,
    hooks: &super::Hooks,
) -> Result<Sized, StoreError> {
    let mut stamped = Vec::new();
    if let Subject::Document { collection, id, .. } = &change.subject {
        stamped.push(Stamped {
            keyspace: Keyspace::History,
            prefix: keys::history_prefix(collection, id),
            value: Vec::new(),
        });
    }
    for (_, hook) in hooks.iter() {
        for record in hook.records(&change) {
            match record {
                HookRecord::Plain(space, key, value) => {
                    txn.put(Keyspace::System, space.key(&key), value)
                }
                HookRecord::Stamped(space, prefix, value) => stamped.push(Stamped {
                    keyspace: Keyspace::System,
                    prefix: space.key(&prefix),
                    value,
                }),
            }
        }
    }
    let size = records::json_size(&change)?;
    txn.append_change(ChangeAppend {
        payload: records::encode(&change, has_prev)?,
        stamped,
    });
    Ok((change, size))
}

/// Publishes committed changes to the in-process feed, with the sequences the engine gave
/// them, once they are durable.
fn publisher(store: &Store, changes: Vec<Sized>) -> Option<OnDurable> {
    // A shared store's follower publishes every node's changes, these included.
    if changes.is_empty() || store.engine.shared() {
        return None;
    }
    let feed = store.shared.changes.clone();
    let gauge = store.shared.metrics.change_seq.clone();
    Some(Box::new(move |first: u64| {
        let mut seq = first;
        for (change, size) in changes {
            let mut change = change;
            change.seq = seq;
            feed.publish(change, size);
            seq += 1;
        }
        gauge.set(seq.saturating_sub(1) as i64);
    }))
}

/// Commits what a refused write read, so that the refusal rests only on durable data; a
/// conflict runs the write again instead.
async fn refuse<T>(txn: Box<dyn Transaction>, refusal: BatchFailure) -> Result<T, BatchFailure> {
    match txn.commit(None).await {
        Ok(_) => Err(refusal),
        Err(error) => Err(BatchFailure {
            op: refusal.op,
            error: error.into(),
        }),
    }
}

/// What a planned write leaves, before it is written: every touched document as first read
/// and as the write leaves it, and the changes in op order.
struct Planned {
    original: HashMap<DocKey, Option<Document>>,
    current: HashMap<DocKey, Option<Document>>,
    /// Documents whose tombstone the write read (and must remove when it re-creates them).
    tombstoned: HashSet<DocKey>,
    results: Vec<Written>,
    pending: Vec<Pending>,
    states: HashMap<String, Option<Arc<CollectionState>>>,
    /// The write's time: its documents' and its changes'.
    now: String,
    /// Whether a delete recorded a dereference job (see `relations`).
    jobs: bool,
}

/// Which try of a write this is. A first attempt reads less: a document id the node just
/// generated is only expected to be absent (it cannot be stored yet, unless a client guessed
/// it), and on a shared store the configuration epoch is only expected (see
/// `Store::expect_epoch`). The commit checks both with its other reads, so the write stays
/// serializable; a conflict makes it run `Again`, reading everything, which answers a guessed
/// id with `409` rather than conflicting forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    First,
    Again,
}

/// How a planned write reads: which attempt it is, and whether the cached configurations
/// stand for the stored ones.
#[derive(Clone, Copy)]
struct Reads {
    attempt: Attempt,
    cached_configs: bool,
}

/// A change a planned write will record.
struct Pending {
    kind: ChangeKind,
    before: Option<Document>,
    after: Option<Document>,
    key: DocKey,
    /// Recorded without the commit hooks' records (an import).
    quiet: bool,
}

impl Store {
    /// Applies a write atomically and durably. Resolves once the write is on disk (or, in a
    /// [`deferred`](super::deferred) scope, applied), and once what its deletes do to the documents that
    /// reference them (`set_null`, `cascade`) is done too.
    pub(crate) async fn write(&self, request: WriteRequest) -> WriteResult {
        let (written, jobs) = self.write_inner(&request).await?;
        if jobs {
            // The jobs are read as durably recorded.
            super::deferred::settle_current()
                .await
                .map_err(|error| BatchFailure { op: 0, error })?;
            // The delete is committed whatever happens here: a job that fails now resumes
            // with the next one or at the next start.
            if let Err(e) = self.run_dereference_jobs().await {
                tracing::error!(error = %e, "dereferencing deleted documents failed; it resumes later");
            }
        }
        Ok(written)
    }

    /// Applies a write; also says whether it recorded dereference jobs.
    pub(super) async fn write_inner(
        &self,
        request: &WriteRequest,
    ) -> Result<(Vec<Written>, bool), BatchFailure> {
        // Ids are generated once, so that a write run again creates the same documents.
        let generated: Vec<Option<String>> = request
            .ops
            .iter()
            .map(|op| match op {
                WriteOp::Create { id: None, .. } => Some(self.new_id()),
                _ => None,
            })
            .collect();
        // A first attempt trusts what a conflict would reveal anyway (see `Attempt`).
        let mut attempt = Attempt::First;
        let result = retry(|| {
            let this = std::mem::replace(&mut attempt, Attempt::Again);
            self.try_write(request, &generated, this)
        })
        .await;
        if result.is_ok() {
            for op in &request.ops {
                let name = match op {
                    WriteOp::Create { .. } => "create",
                    WriteOp::Set { .. } => "set",
                    WriteOp::Update { .. } => "update",
                    WriteOp::Delete { .. } => "delete",
                    WriteOp::Dereference { .. } => "dereference",
                    WriteOp::Import { .. } => "import",
                };
                self.shared
                    .metrics
                    .store_ops
                    .with_label_values(&[name])
                    .inc();
            }
        }
        result
    }

    fn new_id(&self) -> String {
        let mut ids = self.shared.ids.lock().unwrap_or_else(|p| p.into_inner());
        ids.generate()
            .unwrap_or_else(|_| ulid::Ulid::new())
            .to_string()
    }

    async fn try_write(
        &self,
        req: &WriteRequest,
        generated: &[Option<String>],
        attempt: Attempt,
    ) -> Result<(Vec<Written>, bool), BatchFailure> {
        let at = |op: usize| {
            move |error: EngineError| BatchFailure {
                op,
                error: error.into(),
            }
        };
        let mut txn = self.engine.begin().await.map_err(at(0))?;
        let cached_configs = attempt == Attempt::First && self.expect_epoch(&mut *txn).await;
        if !cached_configs {
            self.fence(&mut *txn)
                .await
                .map_err(|error| BatchFailure { op: 0, error })?;
        }
        let reads = Reads {
            attempt,
            cached_configs,
        };
        let mut planned = match self.plan_write(&mut *txn, req, generated, reads).await {
            Ok(planned) => planned,
            Err(failure) if failure.error.is_engine() => return Err(failure),
            Err(refusal) => return refuse(txn, refusal).await,
        };
        let mut maintained: HashMap<&str, Vec<IndexDef>> = HashMap::new();
        for (collection, state) in &planned.states {
            maintained.insert(
                collection,
                super::maintained_indexes(collection, state.as_deref()),
            );
        }
        for (key, now_state) in &planned.current {
            let indexes = maintained
                .get(key.0.as_str())
                .map_or(&[][..], Vec::as_slice);
            let original = planned.original.get(key).cloned().flatten();
            if let Some(old) = &original {
                for index in indexes {
                    for entry in relations::entry_keys(index, old) {
                        txn.delete(Keyspace::Indexes, entry);
                    }
                }
            }
            let doc_key = keys::doc_key(&key.0, &key.1);
            match now_state {
                Some(doc) => {
                    txn.put(Keyspace::Documents, doc_key, super::encode_doc(doc));
                    for index in indexes {
                        for entry in relations::entry_keys(index, doc) {
                            txn.put(Keyspace::Indexes, entry, keys::index_value(doc));
                        }
                    }
                    if planned.tombstoned.contains(key) {
                        txn.delete(Keyspace::System, keys::tombstone_key(&key.0, &key.1));
                    }
                }
                None => {
                    txn.delete(Keyspace::Documents, doc_key);
                    // The last version this batch saw: the stored one, or one the batch wrote
                    // before deleting it.
                    let last = planned
                        .pending
                        .iter()
                        .filter(|p| &p.key == key)
                        .filter_map(|p| p.before.as_ref().map(|d| d.version))
                        .max();
                    if let Some(version) = last {
                        txn.put(
                            Keyspace::System,
                            keys::tombstone_key(&key.0, &key.1),
                            encode_tombstone(version),
                        );
                    }
                }
            }
        }
        let mut counts: HashMap<&str, i64> = HashMap::new();
        for (key, now_state) in &planned.current {
            let existed = planned.original.get(key).is_some_and(Option::is_some);
            let delta = match (existed, now_state.is_some()) {
                (false, true) => 1,
                (true, false) => -1,
                _ => continue,
            };
            *counts.entry(key.0.as_str()).or_default() += delta;
        }
        for (collection, delta) in counts {
            if delta != 0 {
                txn.add(Keyspace::Meta, keys::count_key(collection), delta);
            }
        }
        let hooks = self.shared.hooks();
        let no_hooks: super::Hooks = Arc::default();
        let mut chained: HashSet<DocKey> = HashSet::new();
        let mut changes = Vec::with_capacity(planned.pending.len());
        let pending = std::mem::take(&mut planned.pending);
        for Pending {
            kind,
            before,
            after,
            key: (collection, id),
            quiet,
        } in pending
        {
            let key = (collection.clone(), id.clone());
            // Only a change with a `before` can refer to the previous one, so a create looks
            // for none.
            let has_prev = before.is_some()
                && (chained.contains(&key) || {
                    let range = KeyRange::prefix(&keys::history_prefix(&collection, &id));
                    let found = txn
                        .scan(Keyspace::History, &range, Direction::Forward, 1)
                        .await
                        .map_err(at(0))?;
                    !found.is_empty()
                });
            chained.insert(key);
            let change = Change {
                seq: 0,
                kind,
                subject: Subject::Document {
                    collection,
                    id,
                    before,
                    after,
                },
                time: planned.now.clone(),
                actor: req.actor.clone(),
                depth: req.depth,
                trace: req.trace,
            };
            let hooks = if quiet { &no_hooks } else { &hooks };
            let sized = append_change(&mut *txn, change, has_prev, hooks)
                .map_err(|error| BatchFailure { op: 0, error })?;
            changes.push(sized);
        }
        let publish = publisher(self, changes);
        match super::deferred::current() {
            Some(deferred) => {
                let applied = txn.commit_applied(publish).await.map_err(at(0))?;
                deferred.push(applied.durable);
            }
            None => {
                txn.commit(publish).await.map_err(at(0))?;
            }
        }
        Ok((planned.results, planned.jobs))
    }

    /// The configuration of a collection as the transaction reads it (so that a change to it
    /// makes the write run again), parsed once per stored version.
    async fn read_state(
        &self,
        txn: &mut dyn Transaction,
        collection: &str,
        cached: &HashMap<String, Configured>,
    ) -> Result<Option<Arc<CollectionState>>, StoreError> {
        let Some(bytes) = txn
            .get(Keyspace::Meta, &keys::config_key(collection))
            .await?
        else {
            return Ok(None);
        };
        if let Some((raw, state)) = cached.get(collection) {
            if *raw == bytes {
                return Ok(Some(state.clone()));
            }
        }
        let config =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(Some(Arc::new(CollectionState::new(
            collection,
            config,
            &[],
        )?)))
    }

    /// Reads and decides every op of a write, writing nothing yet.
    async fn plan_write(
        &self,
        txn: &mut dyn Transaction,
        req: &WriteRequest,
        generated: &[Option<String>],
        reads: Reads,
    ) -> Result<Planned, BatchFailure> {
        let now = now_rfc3339();
        let owner = owner_of(&req.actor);
        let cached = self.shared.configs_snapshot();
        let mut planned = Planned {
            original: HashMap::new(),
            current: HashMap::new(),
            tombstoned: HashSet::new(),
            results: Vec::with_capacity(req.ops.len()),
            pending: Vec::new(),
            states: HashMap::new(),
            now: now.clone(),
            jobs: false,
        };
        // Versions of documents this batch deleted, which a re-create continues.
        let mut deleted: HashMap<DocKey, u64> = HashMap::new();

        for (i, op) in req.ops.iter().enumerate() {
            let fail = |error: StoreError| BatchFailure { op: i, error };
            let (collection, id) = match op {
                WriteOp::Create { collection, id, .. } => {
                    let id = id
                        .clone()
                        .or_else(|| generated.get(i).cloned().flatten())
                        .unwrap_or_else(|| self.new_id());
                    (collection.clone(), id)
                }
                WriteOp::Set { collection, id, .. }
                | WriteOp::Update { collection, id, .. }
                | WriteOp::Delete { collection, id, .. }
                | WriteOp::Dereference { collection, id, .. }
                | WriteOp::Import { collection, id, .. } => (collection.clone(), id.clone()),
            };
            if !planned.states.contains_key(&collection) {
                let state = if reads.cached_configs {
                    cached.get(&collection).map(|(_, state)| state.clone())
                } else {
                    self.read_state(txn, &collection, &cached)
                        .await
                        .map_err(fail)?
                };
                planned.states.insert(collection.clone(), state);
            }
            let key = (collection.clone(), id.clone());
            if !planned.current.contains_key(&key) {
                let doc_key = keys::doc_key(&collection, &id);
                let fresh_id = generated.get(i).is_some_and(Option::is_some);
                let stored = if fresh_id && reads.attempt == Attempt::First {
                    txn.expect(Keyspace::Documents, doc_key, None);
                    None
                } else {
                    match txn
                        .get(Keyspace::Documents, &doc_key)
                        .await
                        .map_err(|e| fail(e.into()))?
                    {
                        Some(bytes) => Some(super::decode_doc(&bytes).map_err(fail)?),
                        None => None,
                    }
                };
                planned.original.insert(key.clone(), stored.clone());
                planned.current.insert(key.clone(), stored);
            }
            let before = planned.current.get(&key).cloned().flatten();
            if let WriteOp::Dereference {
                path,
                target,
                target_id,
                ..
            } = op
            {
                let target_key = (target.clone(), target_id.clone());
                let target_exists = match planned.current.get(&target_key) {
                    Some(doc) => doc.is_some(),
                    None => txn
                        .get(Keyspace::Documents, &keys::doc_key(target, target_id))
                        .await
                        .map_err(|e| fail(e.into()))?
                        .is_some(),
                };
                let references = before.as_ref().is_some_and(|doc| {
                    relations::references(doc, path).is_ok_and(|ids| ids.contains(target_id))
                });
                if target_exists || !references {
                    planned.results.push(Written {
                        document: before,
                        created: false,
                    });
                    continue;
                }
            }
            // The version a new document starts after: its tombstone's, for an id used before.
            let base_version = match (&before, deleted.get(&key)) {
                (Some(_), _) => 0,
                (None, Some(version)) => *version,
                (None, None) if generated.get(i).is_some_and(Option::is_some) => 0,
                (None, None) => {
                    let tomb = txn
                        .get(Keyspace::System, &keys::tombstone_key(&collection, &id))
                        .await
                        .map_err(|e| fail(e.into()))?;
                    match tomb {
                        Some(bytes) => {
                            planned.tombstoned.insert(key.clone());
                            decode_tombstone(&bytes).0
                        }
                        None => 0,
                    }
                }
            };
            let state = planned.states.get(&collection).cloned().flatten();
            let check =
                |access: Access, before: Option<&Document>, after: Option<&Document>| match &req
                    .guard
                {
                    Some(guard) => guard
                        .check(access, &collection, state.as_ref(), before, after)
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
                version: base_version + 1,
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

            let (kind, mut after) = match (op, &before) {
                (WriteOp::Create { data, .. }, None) => {
                    let doc = fresh(data.clone());
                    check(Access::Create, None, Some(&doc)).map_err(fail)?;
                    (ChangeKind::Create, Some(doc))
                }
                (WriteOp::Import { data, recorded, .. }, None) => {
                    let doc = Document {
                        owner: recorded.owner.clone(),
                        version: recorded.version.max(base_version + 1),
                        created_at: recorded.created_at.clone(),
                        updated_at: recorded.updated_at.clone(),
                        ..fresh(data.clone())
                    };
                    check(Access::Create, None, Some(&doc)).map_err(fail)?;
                    (ChangeKind::Create, Some(doc))
                }
                (WriteOp::Create { .. } | WriteOp::Import { .. }, Some(_)) => {
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
                        patch,
                        transforms,
                        if_version,
                        ..
                    },
                    Some(prev),
                ) => {
                    let mut data = Value::Object(prev.data.clone());
                    merge_patch(&mut data, &Value::Object(patch.clone()));
                    let Value::Object(mut data) = data else {
                        return Err(fail(StoreError::Corrupt(
                            "merge produced a non-object".into(),
                        )));
                    };
                    crate::transforms::apply(&mut data, transforms, &now).map_err(|message| {
                        fail(StoreError::Invalid {
                            message,
                            field: "transforms".into(),
                        })
                    })?;
                    let doc = next(prev, data);
                    check(Access::Update, Some(prev), Some(&doc)).map_err(fail)?;
                    version_check(if_version, prev.version).map_err(fail)?;
                    (ChangeKind::Update, Some(doc))
                }
                (WriteOp::Delete { if_version, .. }, Some(prev)) => {
                    check(Access::Delete, Some(prev), None).map_err(fail)?;
                    version_check(if_version, prev.version).map_err(fail)?;
                    deleted.insert(key.clone(), prev.version);
                    (ChangeKind::Delete, None)
                }
                (WriteOp::Dereference { cascade: true, .. }, Some(prev)) => {
                    deleted.insert(key.clone(), prev.version);
                    (ChangeKind::Delete, None)
                }
                (
                    WriteOp::Dereference {
                        path, target_id, ..
                    },
                    Some(prev),
                ) => {
                    let data = relations::unlink(&prev.data, path, target_id);
                    (ChangeKind::Update, Some(next(prev, data)))
                }
                // Decided above: a dereference of a missing document does nothing.
                (WriteOp::Dereference { .. }, None) => return Err(fail(missing())),
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
            if let (Some(doc), Some(state)) = (after.as_mut(), state.as_deref()) {
                check_schema(&collection, state, doc).map_err(fail)?;
            }
            let imported = matches!(op, WriteOp::Import { .. });
            if let (Some(doc), Some(state), false) = (after.as_ref(), state.as_deref(), imported) {
                let written = |c: &str, i: &str| {
                    planned
                        .current
                        .get(&(c.to_string(), i.to_string()))
                        .map(Option::is_some)
                };
                relations::check_references(txn, state, before.as_ref(), doc, &written)
                    .await
                    .map_err(fail)?;
            }
            if kind == ChangeKind::Delete {
                let written = |source: &str, referrer: &str, relation: &RelationDef| {
                    planned
                        .current
                        .get(&(source.to_string(), referrer.to_string()))
                        .map(|doc| {
                            doc.as_ref().is_some_and(|d| {
                                relations::references(d, &relation.path)
                                    .is_ok_and(|ids| ids.contains(&id))
                            })
                        })
                };
                let job = relations::on_delete(self, txn, &collection, &id, &written)
                    .await
                    .map_err(fail)?;
                planned.jobs |= job;
            }
            planned.current.insert(key.clone(), after.clone());
            planned.results.push(Written {
                document: after.clone(),
                created: kind == ChangeKind::Create,
            });
            planned.pending.push(Pending {
                kind,
                before,
                after,
                key,
                quiet: imported,
            });
        }
        Ok(planned)
    }

    /// Commits a file's record (and its change record) atomically and durably.
    pub(crate) async fn file_write(&self, write: FileWrite) -> Result<FileWritten, StoreError> {
        let written = retry(|| self.try_file_write(&write)).await?;
        let op = if written.after.is_some() {
            "file_put"
        } else {
            "file_delete"
        };
        self.shared.metrics.store_ops.with_label_values(&[op]).inc();
        Ok(written)
    }

    async fn try_file_write(&self, write: &FileWrite) -> Result<FileWritten, StoreError> {
        let mut txn = self.engine.begin().await?;
        self.fence(&mut *txn).await?;
        if let Some(guard) = &write.guard {
            let (space, key, source) = guard.depends_on();
            txn.expect(Keyspace::System, space.key(&key), source);
        }
        let key = keys::file_key(&write.bucket, &write.path);
        let before = match txn.get(Keyspace::Files, &key).await? {
            Some(bytes) => Some(FileRecord::decode(&bytes)?),
            None => None,
        };
        let prev = before.as_ref().map(|r| &r.info);
        let check = |access: Access, after: Option<&FileInfo>| match &write.guard {
            Some(guard) => guard.check(access, prev, after).map_err(StoreError::Denied),
            None => Ok(()),
        };
        let now = now_rfc3339();
        let decided = match &write.op {
            FileOp::Put {
                blob,
                size,
                sha256,
                content_type,
                markup,
                recorded,
            } => {
                if let (Some(_), Some(_)) = (recorded, prev) {
                    let exists = StoreError::FileExists {
                        bucket: write.bucket.clone(),
                        path: write.path.clone(),
                    };
                    let refusal = BatchFailure {
                        op: 0,
                        error: exists,
                    };
                    return refuse(txn, refusal).await.map_err(|f| f.error);
                }
                let mut info = FileInfo {
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
                if let Some(recorded) = recorded {
                    info.owner = recorded.owner.clone();
                    info.created_at = recorded.created_at.clone();
                    info.updated_at = recorded.updated_at.clone();
                }
                let (access, kind) = match prev {
                    Some(_) => (Access::Update, ChangeKind::Update),
                    None => (Access::Create, ChangeKind::Create),
                };
                check(access, Some(&info)).map(|()| {
                    let record = FileRecord {
                        info,
                        blob: *blob,
                        markup: *markup,
                    };
                    (kind, Some(record))
                })
            }
            FileOp::Delete => check(Access::Delete, None).and_then(|()| match prev {
                Some(_) => Ok((ChangeKind::Delete, None)),
                None => Err(StoreError::FileNotFound {
                    bucket: write.bucket.clone(),
                    path: write.path.clone(),
                }),
            }),
        };
        let (kind, record) = match decided {
            Ok(decided) => decided,
            Err(refusal) => {
                return refuse(
                    txn,
                    BatchFailure {
                        op: 0,
                        error: refusal,
                    },
                )
                .await
                .map_err(|f| f.error)
            }
        };
        match &record {
            Some(record) => txn.put(Keyspace::Files, key, record.encode()),
            None => txn.delete(Keyspace::Files, key),
        }
        let after = record.map(|r| r.info);
        let change = Change {
            seq: 0,
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
            trace: write.trace,
        };
        let hooks = match &write.op {
            FileOp::Put {
                recorded: Some(_), ..
            } => Arc::default(),
            _ => self.shared.hooks(),
        };
        let sized = append_change(&mut *txn, change, false, &hooks)?;
        txn.commit(publisher(self, vec![sized])).await?;
        Ok(FileWritten { before, after })
    }

    /// Applies a system write atomically and durably, if every check holds
    /// (`StoreError::CasFailed` otherwise).
    /// An account event in it commits the records the commit hooks want for it, decided (like a
    /// document write's) with the configuration of the epoch the transaction reads.
    pub(crate) async fn kv_write(&self, write: KvWrite) -> Result<(), StoreError> {
        retry(|| async {
            let mut txn = self.engine.begin().await?;
            let mut hooked = Vec::new();
            if !write.events.is_empty() {
                self.fence(&mut *txn).await?;
                let hooks = self.shared.hooks();
                for event in &write.events {
                    for (_, hook) in hooks.iter() {
                        hooked.extend(hook.account_records(event));
                    }
                }
            }
            for (space, key, expected) in &write.checks {
                let stored = txn.get(Keyspace::System, &space.key(key)).await?;
                if stored.as_deref() != expected.as_deref() {
                    return refuse(
                        txn,
                        BatchFailure {
                            op: 0,
                            error: StoreError::CasFailed,
                        },
                    )
                    .await
                    .map_err(|f| f.error);
                }
            }
            for (space, key) in &write.deletes {
                txn.delete(Keyspace::System, space.key(key));
            }
            for (space, key, value) in write.puts.iter().chain(&hooked) {
                txn.put(Keyspace::System, space.key(key), value.clone());
            }
            for (space, key, delta) in &write.adds {
                txn.add(Keyspace::System, space.key(key), *delta);
            }
            if write.changes_config() {
                super::follow::touch_epoch(&mut *txn);
            }
            txn.commit(None).await?;
            Ok(())
        })
        .await?;
        if !write.events.is_empty() {
            for (_, hook) in self.shared.hooks().iter() {
                hook.account_committed();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::error::StoreError;
    use super::super::write::{WriteOp, WriteRequest};
    use crate::docs::open_for_test;
    use serde_json::json;
    use std::time::{Duration, SystemTime};

    fn create(id: Option<String>, n: i64) -> WriteRequest {
        let serde_json::Value::Object(data) = json!({ "n": n }) else {
            unreachable!()
        };
        WriteRequest {
            ops: vec![WriteOp::Create {
                collection: "c".into(),
                id,
                data,
            }],
            actor: None,
            depth: 0,
            trace: None,
            guard: None,
        }
    }

    /// Ids generated within one millisecond are consecutive, so a client can take the one the
    /// node generates next. The create that then gets it only expected it to be free on its
    /// first attempt: the conflict makes it run again reading the document, and it answers
    /// `409` (rather than conflicting until its retries run out), leaving the client's
    /// document as it was.
    #[tokio::test]
    async fn a_create_whose_generated_id_was_taken_answers_409() {
        let dir = tempfile::tempdir().unwrap();
        let docs = open_for_test(dir.path()).await;
        let store = docs.store();
        // The generator's last id is in the future, so the next ones follow it one by one.
        let last = {
            let mut ids = store.shared.ids.lock().unwrap();
            let later = SystemTime::now() + Duration::from_secs(3600);
            ids.generate_from_datetime(later).unwrap()
        };
        let taken = last.increment().unwrap().to_string();
        store.write(create(Some(taken.clone()), 1)).await.unwrap();

        let refused = store.write(create(None, 2)).await.unwrap_err();
        assert!(
            matches!(&refused.error, StoreError::Conflict { id, .. } if *id == taken),
            "{:?}",
            refused.error
        );
        let kept = store.get("c", &taken).await.unwrap().unwrap();
        assert_eq!(kept.data["n"], 1);
        // The next generated id is free again.
        let written = store.write(create(None, 3)).await.unwrap();
        assert!(written[0].created);
    }
}
