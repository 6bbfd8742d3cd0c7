//! Relations: fields that reference documents of another collection by id, and what deleting a
//! referenced document does.
//!
//! A write that sets a reference reads the referenced document in its transaction: a reference
//! to a document that does not exist is refused, and a delete of it racing the write makes one
//! of the two run again. A relation with an `on_delete` behaviour keeps a *reverse index*
//! (`<collection>\0@ref:<field>\0<referenced id>\0<referencing id>`), built in the background
//! like any index and maintained by every write, so that a delete finds what references it
//! without scanning:
//!
//! - `restrict`: the delete reads the reverse range in its transaction and is refused while it
//!   holds an entry (a reference added concurrently conflicts with that read).
//! - `set_null` and `cascade`: the delete records a *dereference job* (`deref:` in the `Meta`
//!   keyspace) in its own commit. The job then runs in chunks of one transaction each, every
//!   chunk an ordinary write (change records, triggers, indexes) that unlinks or deletes up to
//!   `CHUNK` referencing documents, each only if it still references the deleted id. A cascaded
//!   delete records jobs of its own. The deleting request waits for the jobs to finish; a job
//!   left by a crash resumes when the store opens. A job that needs a reverse index still
//!   being built waits for it up to `BUILD_WAIT`, then stays recorded (the delete answers) and
//!   runs when the build finishes.

use super::error::StoreError;
use super::write::{WriteOp, WriteRequest};
use super::{keys, CollectionState, IndexDef, Store};
use crate::engine::{retry, Direction, KeyRange, Keyspace, Transaction};
use crate::model::{Actor, Document, OnDelete, Relation};
use crate::query::{self, ast::Path, Scope};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The most ids one relation field may hold.
pub(crate) const MAX_REFERENCES: usize = 100;
/// Referencing documents dereferenced per transaction of a job.
const CHUNK: usize = 100;
const JOB_PREFIX: &[u8] = b"deref:";
/// How the signature of a reverse index begins.
pub(super) const REVERSE_PREFIX: &str = "@ref:";
/// How long a dereference job waits for a reverse index being built before it is left for the
/// end of the build.
const BUILD_WAIT: std::time::Duration =
    std::time::Duration::from_secs(if cfg!(test) { 1 } else { 10 });

/// One relation of a collection.
#[derive(Debug, Clone)]
pub(crate) struct RelationDef {
    /// The field as declared, under the data (`author`).
    pub field: String,
    /// Its path in the envelope (`data.author`).
    pub path: Path,
    pub target: String,
    pub on_delete: OnDelete,
}

impl RelationDef {
    /// The signature of its reverse index.
    pub(super) fn signature(&self) -> String {
        format!("{REVERSE_PREFIX}{}", self.field)
    }
}

/// The envelope path of a relation field declared as `field` (dotted names under the data).
pub(crate) fn relation_path(field: &str) -> Result<Path, String> {
    if field.is_empty() || field.split('.').any(str::is_empty) || field.split('.').count() > 16 {
        return Err("a field is up to 16 non-empty names joined by dots".into());
    }
    query::parse_path(&format!("data.{field}")).map_err(|e| e.message)
}

pub(super) fn defs(relations: &BTreeMap<String, Relation>) -> Result<Vec<RelationDef>, StoreError> {
    relations
        .iter()
        .map(|(field, relation)| {
            let path = relation_path(field).map_err(|message| StoreError::Invalid {
                message: format!("relation {field:?}: {message}"),
                field: "relations".into(),
            })?;
            Ok(RelationDef {
                field: field.clone(),
                path,
                target: relation.collection.clone(),
                on_delete: relation.on_delete,
            })
        })
        .collect()
}

/// Whether `id` could be a document id.
fn is_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The ids a document's relation field holds: none for a missing field or `null`, one for a
/// string, each of an array's; anything else is refused.
pub(crate) fn references(doc: &Document, path: &Path) -> Result<Vec<String>, String> {
    let field = || path.to_string();
    let id = |v: &Value| match v {
        Value::String(s) if is_id(s) => Ok(s.clone()),
        _ => Err(format!(
            "{} references documents: it holds a document id, an array of them or null",
            field()
        )),
    };
    match doc.lookup(path).as_deref() {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() > MAX_REFERENCES => Err(format!(
            "{} holds more than {MAX_REFERENCES} references",
            field()
        )),
        Some(Value::Array(items)) => items.iter().map(id).collect(),
        Some(v) => Ok(vec![id(v)?]),
    }
}

/// `data` with the reference to `id` removed from the relation field at `path`: a single
/// reference becomes `null`, an array loses the id.
pub(super) fn unlink(data: &Map<String, Value>, path: &Path, id: &str) -> Map<String, Value> {
    let mut data = data.clone();
    let Some((last, parents)) = path.segments.get(1..).and_then(<[String]>::split_last) else {
        return data;
    };
    let mut object = &mut data;
    for name in parents {
        match object.get_mut(name) {
            Some(Value::Object(inner)) => object = inner,
            _ => return data,
        }
    }
    match object.get_mut(last) {
        Some(Value::Array(items)) => items.retain(|v| v.as_str() != Some(id)),
        Some(slot @ Value::String(_)) if slot.as_str() == Some(id) => *slot = Value::Null,
        _ => {}
    }
    data
}

/// The keys of a document's entries in an index: one for a plain index, one per referenced id
/// for a reverse index.
pub(super) fn entry_keys(index: &IndexDef, doc: &Document) -> Vec<Vec<u8>> {
    if !index.reverse {
        return vec![keys::index_key(&index.prefix, &index.fields, doc)];
    }
    let mut ids = index
        .fields
        .first()
        .and_then(|path| references(doc, path).ok())
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    ids.into_iter()
        .map(|id| reverse_key(&index.prefix, &id, &doc.id))
        .collect()
}

fn reverse_key(prefix: &[u8], target: &str, source: &str) -> Vec<u8> {
    [prefix, target.as_bytes(), &[0], source.as_bytes()].concat()
}

/// The reverse range of the documents that reference `target` through `index`.
fn reverse_range(index_prefix: &[u8], target: &str) -> KeyRange {
    KeyRange::prefix(&[index_prefix, target.as_bytes(), &[0]].concat())
}

/// The referencing document's id of a reverse entry.
fn source_of(key: &[u8], range: &KeyRange) -> String {
    String::from_utf8_lossy(key.get(range.start.len()..).unwrap_or(&[])).into_owned()
}

/// Every relation of any collection that points at `target`, with the referencing
/// collection's state (as this node has it loaded; see the note in `on_delete`).
fn pointing_at(store: &Store, target: &str) -> Vec<(String, Arc<CollectionState>, RelationDef)> {
    let mut out = Vec::new();
    for (name, (_, state)) in store.shared.configs_snapshot().iter() {
        for relation in &state.relations {
            if relation.target == target && relation.on_delete != OnDelete::None {
                out.push((name.clone(), state.clone(), relation.clone()));
            }
        }
    }
    out
}

/// The reverse index of `relation`, as its collection's `state` declares it.
fn reverse_index<'a>(state: &'a CollectionState, relation: &RelationDef) -> Option<&'a IndexDef> {
    let signature = relation.signature();
    state
        .indexes
        .iter()
        .find(|i| i.reverse && i.signature == signature)
}

/// What a write that leaves `after` (replacing `before`) in `collection` must check: every id
/// it newly references names an existing document of the relation's collection, as the
/// transaction reads it (`written` says what this write itself has left of a document).
pub(super) async fn check_references(
    txn: &mut dyn Transaction,
    state: &CollectionState,
    before: Option<&Document>,
    after: &Document,
    written: &(dyn Fn(&str, &str) -> Option<bool> + Sync),
) -> Result<(), StoreError> {
    for relation in &state.relations {
        let invalid = |message: String| StoreError::Invalid {
            message,
            field: "data".into(),
        };
        let now = references(after, &relation.path).map_err(invalid)?;
        let had = before
            .and_then(|b| references(b, &relation.path).ok())
            .unwrap_or_default();
        // Each newly referenced id, and what this write itself says of it.
        let added: Vec<(&String, Option<bool>)> = now
            .iter()
            .filter(|id| !had.contains(id))
            .map(|id| (id, written(&relation.target, id)))
            .collect();
        // The rest is read, all at once.
        let unknown: Vec<Vec<u8>> = added
            .iter()
            .filter(|(_, known)| known.is_none())
            .map(|(id, _)| keys::doc_key(&relation.target, id))
            .collect();
        let mut stored = txn
            .get_many(Keyspace::Documents, &unknown)
            .await?
            .into_iter();
        for (id, known) in added {
            let exists = match known {
                Some(exists) => exists,
                None => stored.next().flatten().is_some(),
            };
            if !exists {
                return Err(invalid(format!(
                    "{}: there is no document {}/{id}",
                    relation.path, relation.target
                )));
            }
        }
    }
    Ok(())
}

/// What deleting `target/id` needs, decided in the delete's transaction: refused (`restrict`)
/// while a document references it, and a dereference job recorded when a `set_null` or
/// `cascade` relation may reference it. `written` says what this write itself leaves of a
/// document (`Some(still references)`), so that a batch may delete both ends.
///
/// The relations pointing at `target` come from the configurations this node has loaded; the
/// referencing collections' own configurations are read in the transaction, so a relation
/// changed meanwhile makes the delete run again. Returns whether a job was recorded.
pub(super) async fn on_delete(
    store: &Store,
    txn: &mut dyn Transaction,
    target: &str,
    id: &str,
    written: &(dyn Fn(&str, &str, &RelationDef) -> Option<bool> + Sync),
) -> Result<bool, StoreError> {
    let mut job = false;
    for (source, state, relation) in pointing_at(store, target) {
        txn.get(Keyspace::Meta, &keys::config_key(&source)).await?;
        let Some(index) = reverse_index(&state, &relation) else {
            continue;
        };
        if relation.on_delete != OnDelete::Restrict {
            job = true;
            continue;
        }
        if !index.ready {
            return Err(StoreError::Referenced(format!(
                "document {target}/{id} cannot be deleted yet: the relation {source}.{} is still being indexed; try again in a moment",
                relation.field
            )));
        }
        let range = reverse_range(&index.prefix, id);
        let mut cursor = range.clone();
        loop {
            let entries = txn
                .scan(Keyspace::Indexes, &cursor, Direction::Forward, CHUNK)
                .await?;
            for (key, _) in &entries {
                let referrer = source_of(key, &range);
                if written(&source, &referrer, &relation) != Some(false) {
                    return Err(StoreError::Referenced(format!(
                        "document {target}/{id} is referenced by {source}/{referrer} (field {}, on_delete restrict)",
                        relation.field
                    )));
                }
            }
            match entries.last() {
                Some((last, _)) if entries.len() == CHUNK => cursor.start = keys::successor(last),
                _ => break,
            }
        }
    }
    if job {
        txn.put(Keyspace::Meta, job_key(target, id), Vec::new());
    }
    Ok(job)
}

impl Store {
    /// A `restrict` relation that references some document of `collection` now
    /// (`posts.author`), if any.
    pub(super) async fn restricted_by(
        &self,
        collection: &str,
    ) -> Result<Option<String>, StoreError> {
        for (source, state, relation) in pointing_at(self, collection) {
            let Some(index) = reverse_index(&state, &relation) else {
                continue;
            };
            if relation.on_delete != OnDelete::Restrict {
                continue;
            }
            let any = self
                .engine
                .scan(
                    Keyspace::Indexes,
                    &KeyRange::prefix(&index.prefix),
                    Direction::Forward,
                    1,
                )
                .await?;
            if !any.is_empty() || !index.ready {
                return Ok(Some(format!("{source}.{}", relation.field)));
            }
        }
        Ok(None)
    }
}

fn job_key(target: &str, id: &str) -> Vec<u8> {
    [JOB_PREFIX, target.as_bytes(), &[0], id.as_bytes()].concat()
}

/// Finishes the dereference jobs a previous run left.
pub(super) fn resume_jobs(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = store.run_dereference_jobs().await {
            tracing::error!(error = %e, "dereferencing deleted documents stopped; it resumes with the next delete or restart");
        }
    })
}

impl Store {
    /// Runs every recorded dereference job to its end, chunk by chunk (see the module
    /// documentation), except those waiting for a reverse index to be built. One runs at a
    /// time; a caller that finds another running waits for it, then runs what is left.
    pub(super) async fn run_dereference_jobs(&self) -> Result<(), StoreError> {
        let _running = self.shared.dereferencing.lock().await;
        let mut waiting = std::collections::HashSet::new();
        // Jobs run in key order; a cascade records new ones anywhere in it, so passes repeat
        // until one finds nothing left to run.
        loop {
            let mut ran = false;
            let mut cursor = KeyRange::prefix(JOB_PREFIX);
            loop {
                let jobs = self
                    .engine
                    .scan(Keyspace::Meta, &cursor, Direction::Forward, CHUNK)
                    .await?;
                for (key, _) in &jobs {
                    if waiting.contains(key.as_ref()) {
                        continue;
                    }
                    let rest = key.get(JOB_PREFIX.len()..).unwrap_or(&[]);
                    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
                    let target = String::from_utf8_lossy(&rest[..split]).into_owned();
                    let id =
                        String::from_utf8_lossy(rest.get(split + 1..).unwrap_or(&[])).into_owned();
                    if self.run_job(key, &target, &id).await? {
                        ran = true;
                    } else {
                        waiting.insert(key.to_vec());
                    }
                }
                match jobs.last() {
                    Some((last, _)) if jobs.len() == CHUNK => cursor.start = keys::successor(last),
                    _ => break,
                }
            }
            if !ran {
                return Ok(());
            }
        }
    }

    /// Dereferences `target/id` chunk by chunk, then removes the job. False when a reverse
    /// index it needs is still being built after `BUILD_WAIT`: the job stays for the build's end.
    async fn run_job(&self, key: &[u8], target: &str, id: &str) -> Result<bool, StoreError> {
        let started = std::time::Instant::now();
        loop {
            let mut ops = Vec::new();
            let mut building = false;
            for (source, state, relation) in pointing_at(self, target) {
                if relation.on_delete == OnDelete::Restrict {
                    continue;
                }
                let Some(index) = reverse_index(&state, &relation) else {
                    continue;
                };
                building |= !index.ready;
                let range = reverse_range(&index.prefix, id);
                let entries = self
                    .engine
                    .scan(
                        Keyspace::Indexes,
                        &range,
                        Direction::Forward,
                        CHUNK - ops.len(),
                    )
                    .await?;
                for (entry, _) in entries {
                    ops.push(WriteOp::Dereference {
                        collection: source.clone(),
                        id: source_of(&entry, &range),
                        path: relation.path.clone(),
                        target: target.to_string(),
                        target_id: id.to_string(),
                        cascade: relation.on_delete == OnDelete::Cascade,
                    });
                }
                if ops.len() >= CHUNK {
                    break;
                }
            }
            if !ops.is_empty() {
                let request = WriteRequest {
                    ops,
                    actor: Some(Actor::system()),
                    depth: 0,
                    trace: None,
                    guard: None,
                };
                self.write_inner(&request)
                    .await
                    .map_err(|failure| failure.error)?;
                continue;
            }
            if building {
                // A reverse index still being built may hold references yet to be found.
                if started.elapsed() > BUILD_WAIT {
                    return Ok(false);
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
            retry(|| async {
                let mut txn = self.engine.begin().await?;
                txn.delete(Keyspace::Meta, key.to_vec());
                txn.commit(None).await?;
                Ok::<_, StoreError>(())
            })
            .await?;
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::auth::Principal;
    use crate::docs::open_for_test;
    use crate::engine::{Direction, KeyRange, Keyspace};
    use crate::model::{CollectionConfig, OnDelete, Relation};
    use serde_json::json;

    /// A delete whose cascade needs a reverse index that stopped building (as after a failed
    /// chunk) answers after `BUILD_WAIT` with its job still recorded, instead of waiting for
    /// ever and holding every later delete; the job finishes when the build ends.
    #[tokio::test]
    async fn a_job_waiting_for_an_unfinished_index_runs_when_the_build_ends() {
        let dir = tempfile::tempdir().unwrap();
        let docs = open_for_test(dir.path()).await;
        let who = Principal::Service;
        let plain = |relations| CollectionConfig {
            rules: None,
            indexes: vec![],
            schema: None,
            relations,
        };
        docs.configure(&who, "posts", plain(Default::default()))
            .await
            .unwrap();
        let relation = Relation {
            collection: "posts".into(),
            on_delete: OnDelete::Cascade,
        };
        let relations = [("post".to_string(), relation)].into_iter().collect();
        docs.configure(&who, "comments", plain(relations))
            .await
            .unwrap();
        let store = docs.store().clone();
        store.indexes_built("comments").await;
        docs.set(&who, "posts", "p", json!({}), None).await.unwrap();
        docs.set(&who, "comments", "c", json!({"post": "p"}), None)
            .await
            .unwrap();

        // The reverse index as a stopped build leaves it: declared, not ready.
        let signature = format!("{}post", super::REVERSE_PREFIX);
        store.set_index_ready("comments", &signature, false);
        let bounded = std::time::Duration::from_secs(30);
        tokio::time::timeout(bounded, docs.delete(&who, "posts", "p", None))
            .await
            .expect("the delete answers")
            .unwrap();
        // What the index already holds is dereferenced; the job stays for what the rest of
        // the build may find.
        assert!(docs.get(&who, "comments", "c").await.is_err());
        let jobs = || async {
            store
                .engine
                .scan(
                    Keyspace::Meta,
                    &KeyRange::prefix(super::JOB_PREFIX),
                    Direction::Forward,
                    10,
                )
                .await
                .unwrap()
                .len()
        };
        assert_eq!(jobs().await, 1);
        // Other deletes are not held meanwhile.
        docs.set(&who, "posts", "q", json!({}), None).await.unwrap();
        tokio::time::timeout(bounded, docs.delete(&who, "posts", "q", None))
            .await
            .expect("a later delete answers")
            .unwrap();

        super::super::indexes::built(&store, "comments", &signature)
            .await
            .unwrap();
        assert_eq!(jobs().await, 0);
    }
}
