//! Collections as a whole: the exact document count of each, and deleting a collection.
//!
//! **Counts.** Every write adds the change in its number of documents to the collection's
//! counter (`count:` keys in `Meta`) in its own commit, with [`Transaction::add`], so counts
//! are exact and concurrent writes never conflict over them. A store written by a version
//! without counters is counted once when it opens, before it serves (the `builtin:counts`
//! marker records that; nodes that open together count once, the others see the marker).
//!
//! **Deleting a collection** records a `drop:` key (with when it started and who asked) and
//! returns; a background task then deletes, in chunks of one write each, every document
//! created before the delete started. Each delete is an ordinary write: it has its change
//! record, so realtime subscribers and triggers see it, and it keeps the counter and the
//! indexes in step. Documents created after the start survive; writes go on meanwhile. Once
//! the documents are gone, the configuration (rules and indexes) is removed and the `drop:`
//! key with it. An unfinished delete resumes when the store opens.

use super::{decode_doc, keys, Schema, Store, StoreError, WriteOp, WriteRequest};
use crate::engine::{counter, retry, Direction, Engine, KeyRange, Keyspace};
use crate::model::{now_rfc3339, Actor, Nonconforming};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The `Meta` key recorded once every collection has its counter.
const COUNTS_READY: &[u8] = b"builtin:counts";

const DROP_PREFIX: &[u8] = b"drop:";

/// Documents read per page when counting, and deleted per write when deleting.
const CHUNK: usize = 256;

fn drop_key(collection: &str) -> Vec<u8> {
    let mut k = DROP_PREFIX.to_vec();
    k.extend_from_slice(collection.as_bytes());
    k
}

/// A collection delete in progress.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Dropping {
    /// Documents created after this survive the delete.
    started_at: String,
    /// Who asked: the actor of the delete changes.
    actor: Option<Actor>,
}

/// The number of documents in each collection that has any, counted by reading them.
async fn count_documents(engine: &dyn Engine) -> Result<BTreeMap<String, i64>, StoreError> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    let mut range = KeyRange::all();
    loop {
        let page = engine
            .scan(Keyspace::Documents, &range, Direction::Forward, CHUNK)
            .await?;
        for (key, _) in &page {
            let end = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            let name = String::from_utf8_lossy(&key[..end]);
            *counts.entry(name.into_owned()).or_default() += 1;
        }
        match page.last() {
            Some((key, _)) if page.len() == CHUNK => range.start = keys::successor(key),
            _ => return Ok(counts),
        }
    }
}

/// Gives every collection its counter, once per store (see the module documentation).
pub(super) async fn ensure_counts(engine: &dyn Engine) -> Result<(), StoreError> {
    retry(|| async {
        if engine.get(Keyspace::Meta, COUNTS_READY).await?.is_some() {
            return Ok(());
        }
        let counts = count_documents(engine).await?;
        let mut txn = engine.begin().await?;
        txn.expect(Keyspace::Meta, COUNTS_READY.to_vec(), None);
        for (collection, n) in &counts {
            txn.put(
                Keyspace::Meta,
                keys::count_key(collection),
                n.to_be_bytes().to_vec(),
            );
        }
        txn.put(Keyspace::Meta, COUNTS_READY.to_vec(), b"1".to_vec());
        txn.commit(None).await?;
        if !counts.is_empty() {
            tracing::info!(
                collections = counts.len(),
                "counted the documents of a store written before document counts"
            );
        }
        Ok::<_, StoreError>(())
    })
    .await
}

/// The collections being deleted.
pub(super) async fn deleting(engine: &dyn Engine) -> Result<Vec<String>, StoreError> {
    let entries = engine
        .scan(
            Keyspace::Meta,
            &KeyRange::prefix(DROP_PREFIX),
            Direction::Forward,
            usize::MAX,
        )
        .await?;
    Ok(entries
        .iter()
        .map(|(key, _)| String::from_utf8_lossy(&key[DROP_PREFIX.len()..]).into_owned())
        .collect())
}

/// Runs (or resumes) the delete of `collection` in the background.
pub(super) fn start_delete(store: Store, collection: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        match run_delete(&store, &collection).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(%collection, deleted, "collection deleted"),
            Err(e) => tracing::error!(
                %collection,
                error = %e,
                "deleting the collection stopped; it resumes when the server restarts"
            ),
        }
    })
}

/// Deletes the documents the delete covers, then the configuration and the `drop:` record;
/// returns how many documents it deleted.
async fn run_delete(store: &Store, collection: &str) -> Result<u64, StoreError> {
    let key = drop_key(collection);
    let Some(raw) = store.engine.get(Keyspace::Meta, &key).await? else {
        return Ok(0);
    };
    let dropping: Dropping =
        serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let mut range = KeyRange::prefix(&keys::doc_prefix(collection));
    let mut deleted = 0;
    loop {
        let page = store
            .engine
            .scan(Keyspace::Documents, &range, Direction::Forward, CHUNK)
            .await?;
        let mut ops = Vec::new();
        for (_, value) in &page {
            let doc = decode_doc(value)?;
            if doc.created_at <= dropping.started_at {
                ops.push(WriteOp::Delete {
                    collection: collection.to_string(),
                    id: doc.id,
                    if_version: Some(doc.version),
                });
            }
        }
        if !ops.is_empty() {
            let n = ops.len() as u64;
            let request = WriteRequest {
                ops,
                actor: dropping.actor.clone(),
                depth: 0,
                trace: None,
                guard: None,
            };
            match store.write(request).await {
                Ok(_) => deleted += n,
                // A reference added since the delete began: stop, leaving the rest.
                Err(failure) if matches!(failure.error, StoreError::Referenced(_)) => {
                    tracing::warn!(collection, error = %failure.error, "deleting the collection stopped");
                    break;
                }
                // A document of the page changed since it was read: read the page again.
                Err(failure)
                    if matches!(
                        failure.error,
                        StoreError::VersionMismatch { .. } | StoreError::NotFound { .. }
                    ) =>
                {
                    continue
                }
                Err(failure) => return Err(failure.error),
            }
        }
        match page.last() {
            Some((last, _)) if page.len() == CHUNK => range.start = keys::successor(last),
            _ => break,
        }
    }
    store.unconfigure(collection).await?;
    retry(|| async {
        let mut txn = store.engine.begin().await?;
        txn.delete(Keyspace::Meta, key.clone());
        txn.commit(None).await?;
        Ok::<_, StoreError>(())
    })
    .await?;
    Ok(deleted)
}

/// A page of the documents of a collection that do not conform to a schema.
pub(crate) struct NonconformingPage {
    /// Those found, in id order.
    pub items: Vec<Nonconforming>,
    /// Documents checked.
    pub checked: u64,
    /// The id to continue after, when the page stopped before the end of the collection.
    pub next: Option<String>,
}

impl Store {
    /// Checks the documents of `collection` after the id `after` against `schema`, in id
    /// order, until `want` do not conform or `budget` were checked.
    pub(crate) async fn nonconforming(
        &self,
        collection: &str,
        schema: &Schema,
        after: Option<&str>,
        want: usize,
        budget: usize,
    ) -> Result<NonconformingPage, StoreError> {
        let prefix = keys::doc_prefix(collection);
        let mut range = KeyRange::prefix(&prefix);
        if let Some(id) = after {
            range.start = keys::successor(&keys::doc_key(collection, id));
        }
        let mut page = NonconformingPage {
            items: Vec::new(),
            checked: 0,
            next: None,
        };
        loop {
            let chunk = CHUNK
                .min(budget.saturating_sub(page.checked as usize))
                .max(1);
            let entries = self
                .engine
                .scan(Keyspace::Documents, &range, Direction::Forward, chunk)
                .await?;
            for (key, value) in &entries {
                let doc = decode_doc(value)?;
                page.checked += 1;
                let violations = schema.violations(&serde_json::Value::Object(doc.data));
                if !violations.is_empty() {
                    page.items.push(Nonconforming {
                        id: doc.id.clone(),
                        violations,
                    });
                }
                range.start = keys::successor(key);
                let full = page.items.len() >= want || page.checked as usize >= budget;
                if full {
                    let more = self
                        .engine
                        .scan(Keyspace::Documents, &range, Direction::Forward, 1)
                        .await?;
                    page.next = (!more.is_empty()).then_some(doc.id);
                    return Ok(page);
                }
            }
            if entries.len() < chunk {
                return Ok(page);
            }
        }
    }

    /// The exact number of documents in `collection`.
    pub(crate) async fn document_count(&self, collection: &str) -> Result<u64, StoreError> {
        let raw = self
            .engine
            .get(Keyspace::Meta, &keys::count_key(collection))
            .await?;
        Ok(counter(raw.as_deref())?.max(0) as u64)
    }

    /// The exact number of documents of every collection that has or had documents.
    pub(crate) async fn document_counts(&self) -> Result<BTreeMap<String, u64>, StoreError> {
        let entries = self
            .engine
            .scan(
                Keyspace::Meta,
                &KeyRange::prefix(keys::COUNT_PREFIX),
                Direction::Forward,
                usize::MAX,
            )
            .await?;
        entries
            .iter()
            .map(|(key, value)| {
                let name = String::from_utf8_lossy(&key[keys::COUNT_PREFIX.len()..]).into_owned();
                Ok((name, counter(Some(value))?.max(0) as u64))
            })
            .collect()
    }

    /// The collections being deleted.
    pub(crate) async fn deleting_collections(&self) -> Result<Vec<String>, StoreError> {
        deleting(&*self.engine).await
    }

    /// Starts deleting a collection's documents, then its configuration, in the background
    /// (see the module documentation). Asking again while a delete runs changes nothing.
    pub(crate) async fn delete_collection(
        &self,
        collection: &str,
        actor: Option<Actor>,
    ) -> Result<(), StoreError> {
        if let Some(by) = self.restricted_by(collection).await? {
            return Err(StoreError::Referenced(format!(
                "collection {collection} cannot be deleted: {by} references its documents (on_delete restrict); delete or re-point those first"
            )));
        }
        let key = drop_key(collection);
        let record = serde_json::to_vec(&Dropping {
            started_at: now_rfc3339(),
            actor,
        })
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let started = retry(|| async {
            let mut txn = self.engine.begin().await?;
            if txn.get(Keyspace::Meta, &key).await?.is_some() {
                return Ok(false);
            }
            txn.put(Keyspace::Meta, key.clone(), record.clone());
            txn.commit(None).await?;
            Ok::<_, StoreError>(true)
        })
        .await?;
        if started {
            self.add_tasks(vec![start_delete(self.clone(), collection.to_string())]);
        }
        Ok(())
    }
}
