//! Collection configuration, and index builds that run in the background.
//!
//! Configuring a collection commits its configuration at once. An index it adds is recorded as
//! a build in progress (a `build:` key in the `Meta` keyspace) in the same commit; from then on
//! every write maintains the index, and a background task fills in the entries of the documents
//! already stored, in chunks of one transaction each, moving its recorded cursor forward. A
//! chunk that reads a document a concurrent write changes conflicts and runs again, so every
//! document ends with exactly its entries. The planner uses the index only once the build has
//! finished. A dropped index stops being planned and maintained at once; its entries are
//! removed by the same kind of background task. Builds and drops left unfinished by a restart
//! resume when the store opens.

use super::{keys, CollectionState, Store, StoreError, OWNER_INDEX};
use crate::engine::{retry, Direction, Engine, KeyRange, Keyspace};
use crate::model::{CollectionConfig, IndexState};
use std::sync::Arc;

/// Documents (or entries) handled per transaction of a build (or drop).
const CHUNK: usize = 256;

const BUILD: u8 = b'B';
const DROP: u8 = b'D';

/// The index builds and drops left unfinished: `(collection, signature)` of each build.
pub(super) async fn unfinished(engine: &dyn Engine) -> Result<Vec<(String, String)>, StoreError> {
    let entries = engine
        .scan(
            Keyspace::Meta,
            &KeyRange::prefix(b"build:"),
            Direction::Forward,
            usize::MAX,
        )
        .await?;
    Ok(entries
        .iter()
        .filter_map(|(key, _)| {
            let rest = key.get(b"build:".len()..)?;
            let split = rest.iter().position(|b| *b == 0)?;
            Some((
                String::from_utf8_lossy(&rest[..split]).into_owned(),
                String::from_utf8_lossy(&rest[split + 1..]).into_owned(),
            ))
        })
        .collect())
}

/// Starts the task that finishes (or resumes) a build or drop of `signature`.
pub(super) fn start_build(
    store: Store,
    collection: String,
    signature: String,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = run(&store, &collection, &signature).await {
            tracing::error!(collection, index = signature, error = %e, "index build stopped; it resumes when the server restarts");
        }
    })
}

async fn run(store: &Store, collection: &str, signature: &str) -> Result<(), StoreError> {
    let marker = keys::build_key(collection, signature);
    let prefix = keys::index_prefix(collection, signature);
    while retry(|| chunk(store, collection, &marker, &prefix)).await? {
        tokio::task::yield_now().await;
    }
    built(store, collection, signature).await
}

/// A build is done: the planner may use the index, and the deletes that found it (a reverse
/// index) still building have their jobs run now.
pub(super) async fn built(
    store: &Store,
    collection: &str,
    signature: &str,
) -> Result<(), StoreError> {
    store.set_index_ready(collection, signature, true);
    tracing::info!(collection, index = signature, "index ready");
    if signature.starts_with(super::relations::REVERSE_PREFIX) {
        store.run_dereference_jobs().await?;
    }
    Ok(())
}

/// Builds (or drops) the next chunk and moves the recorded cursor past it; returns whether
/// more remain.
async fn chunk(
    store: &Store,
    collection: &str,
    marker: &[u8],
    prefix: &[u8],
) -> Result<bool, StoreError> {
    let mut txn = store.engine.begin().await?;
    let Some(progress) = txn.get(Keyspace::Meta, marker).await? else {
        return Ok(false);
    };
    let cursor = progress.get(1..).unwrap_or(&[]);
    let (ks, base) = match progress.first() {
        Some(&BUILD) => (Keyspace::Documents, keys::doc_prefix(collection)),
        Some(&DROP) => (Keyspace::Indexes, prefix.to_vec()),
        _ => return Err(StoreError::Corrupt("unknown index build record".into())),
    };
    let start = if cursor.is_empty() {
        base.clone()
    } else {
        keys::successor(cursor)
    };
    let range = KeyRange::new(start, keys::prefix_end(&base));
    let entries = txn.scan(ks, &range, Direction::Forward, CHUNK).await?;
    if ks == Keyspace::Indexes {
        for (key, _) in &entries {
            txn.delete(Keyspace::Indexes, key.to_vec());
        }
    } else {
        let state = store.collection(collection);
        let maintained = super::maintained_indexes(collection, state.as_deref());
        if let Some(index) = maintained.iter().find(|i| i.prefix == prefix) {
            for (_, bytes) in &entries {
                let doc = super::decode_doc(bytes)?;
                for entry in super::relations::entry_keys(index, &doc) {
                    txn.put(Keyspace::Indexes, entry, keys::index_value(&doc));
                }
            }
        }
    }
    let more = match entries.last() {
        Some((last, _)) if entries.len() == CHUNK => {
            let mut next = vec![progress.first().copied().unwrap_or(BUILD)];
            next.extend_from_slice(last);
            txn.put(Keyspace::Meta, marker.to_vec(), next);
            true
        }
        _ => {
            txn.delete(Keyspace::Meta, marker.to_vec());
            // The other nodes of a cluster learn that the index is ready.
            super::follow::touch_epoch(&mut *txn);
            false
        }
    };
    txn.commit(None).await?;
    Ok(more)
}

/// The `Meta` key recorded once every document has its owner index entry.
const OWNERS_INDEXED: &[u8] = b"builtin:owner";

/// Whether every document has its owner index entry.
pub(super) async fn owners_indexed(engine: &dyn Engine) -> Result<bool, StoreError> {
    Ok(engine.get(Keyspace::Meta, OWNERS_INDEXED).await?.is_some())
}

/// Writes the owner index entries of the documents stored before the owner index existed
/// (data directories of earlier versions), one collection at a time, then lets the planner use
/// the index. Writes maintain it meanwhile, as for any index being built.
pub(super) fn backfill_owners(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = fill_owner_index(&store).await {
            tracing::error!(error = %e, "indexing document owners stopped; it resumes when the server restarts");
        }
    })
}

async fn fill_owner_index(store: &Store) -> Result<(), StoreError> {
    for collection in store.document_collections().await? {
        let marker = keys::build_key(&collection, OWNER_INDEX);
        if store.engine.get(Keyspace::Meta, &marker).await?.is_none() {
            retry(|| async {
                let mut txn = store.engine.begin().await?;
                txn.put(Keyspace::Meta, marker.clone(), vec![BUILD]);
                txn.commit(None).await?;
                Ok::<_, StoreError>(())
            })
            .await?;
        }
        run(store, &collection, OWNER_INDEX).await?;
    }
    retry(|| async {
        let mut txn = store.engine.begin().await?;
        txn.put(Keyspace::Meta, OWNERS_INDEXED.to_vec(), b"1".to_vec());
        txn.commit(None).await?;
        Ok::<_, StoreError>(())
    })
    .await?;
    store
        .shared
        .owner_ready
        .store(true, std::sync::atomic::Ordering::SeqCst);
    tracing::info!("document owners indexed");
    Ok(())
}

impl Store {
    /// Stores a collection's configuration, durably. New indexes are built and dropped ones
    /// removed in the background (see the module documentation).
    pub(crate) async fn configure(
        &self,
        collection: &str,
        config: CollectionConfig,
    ) -> Result<(), StoreError> {
        let state = CollectionState::new(collection, config, &[])?;
        let json =
            serde_json::to_vec(&state.config).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (added, dropped) =
            retry(|| self.try_configure(collection, Some((&state, &json)))).await?;
        let mut next = CollectionState::new(collection, state.config.clone(), &added)?;
        // Indexes that were ready stay ready.
        if let Some(old) = self.collection(collection) {
            for index in &mut next.indexes {
                if old
                    .indexes
                    .iter()
                    .any(|o| o.prefix == index.prefix && o.ready)
                {
                    index.ready = true;
                }
            }
        }
        self.shared
            .set_config(collection, Some((json.into(), Arc::new(next))));
        let tasks = added
            .into_iter()
            .chain(dropped)
            .map(|signature| start_build(self.clone(), collection.to_string(), signature))
            .collect();
        self.add_tasks(tasks);
        Ok(())
    }

    /// Removes a collection's configuration (its rules and indexes); the entries of its
    /// indexes are removed in the background.
    pub(crate) async fn unconfigure(&self, collection: &str) -> Result<(), StoreError> {
        let (_, dropped) = retry(|| self.try_configure(collection, None)).await?;
        self.shared.set_config(collection, None);
        let tasks = dropped
            .into_iter()
            .map(|signature| start_build(self.clone(), collection.to_string(), signature))
            .collect();
        self.add_tasks(tasks);
        Ok(())
    }

    /// Commits a configuration (`None`: removes it) with the build and drop records of the
    /// indexes it adds and removes; returns their signatures.
    async fn try_configure(
        &self,
        collection: &str,
        new: Option<(&CollectionState, &[u8])>,
    ) -> Result<(Vec<String>, Vec<String>), StoreError> {
        let new_indexes = new
            .map(|(state, _)| state.indexes.as_slice())
            .unwrap_or(&[]);
        let mut txn = self.engine.begin().await?;
        let old = match txn
            .get(Keyspace::Meta, &keys::config_key(collection))
            .await?
        {
            Some(bytes) => {
                let config = serde_json::from_slice(&bytes)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Some(CollectionState::new(collection, config, &[])?)
            }
            None => None,
        };
        let old_indexes = old.as_ref().map(|s| s.indexes.as_slice()).unwrap_or(&[]);
        let mut added = Vec::new();
        for index in new_indexes {
            if old_indexes.iter().any(|o| o.prefix == index.prefix) {
                continue;
            }
            let sig = index.signature.clone();
            let marker = keys::build_key(collection, &sig);
            if txn.get(Keyspace::Meta, &marker).await?.is_some() {
                return Err(StoreError::Invalid {
                    message: format!(
                        "index ({sig}) is still being dropped; declare it again in a moment"
                    ),
                    field: "indexes".into(),
                });
            }
            txn.put(Keyspace::Meta, marker, vec![BUILD]);
            added.push(sig);
        }
        let mut dropped = Vec::new();
        for index in old_indexes {
            if new_indexes.iter().any(|n| n.prefix == index.prefix) {
                continue;
            }
            let sig = index.signature.clone();
            txn.put(
                Keyspace::Meta,
                keys::build_key(collection, &sig),
                vec![DROP],
            );
            dropped.push(sig);
        }
        match new {
            Some((_, json)) => txn.put(Keyspace::Meta, keys::config_key(collection), json.to_vec()),
            None => txn.delete(Keyspace::Meta, keys::config_key(collection)),
        }
        super::follow::touch_epoch(&mut *txn);
        txn.commit(None).await?;
        Ok((added, dropped))
    }

    /// Lets the planner use a finished index (if the collection still declares it), or, for
    /// a test, takes it back as a stopped build leaves it.
    pub(super) fn set_index_ready(&self, collection: &str, signature: &str, ready: bool) {
        let Some((raw, state)) = self.shared.configs_snapshot().get(collection).cloned() else {
            return;
        };
        let prefix = keys::index_prefix(collection, signature);
        let mut next = CollectionState::clone(&state);
        for index in &mut next.indexes {
            if index.prefix == prefix {
                index.ready = ready;
            }
        }
        self.shared
            .set_config(collection, Some((raw, Arc::new(next))));
    }

    /// Waits (up to 10 s, for a test) until every index of `collection` is built, the reverse
    /// indexes of its relations too.
    #[cfg(test)]
    pub(crate) async fn indexes_built(&self, collection: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self
            .collection(collection)
            .is_some_and(|state| state.indexes.iter().any(|i| !i.ready))
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the indexes of {collection} were never built"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// The state of each index of a collection, in declaration order.
    pub(crate) fn index_states(&self, collection: &str) -> Vec<IndexState> {
        self.collection(collection)
            .map(|state| {
                state
                    .config
                    .indexes
                    .iter()
                    .zip(&state.indexes)
                    .map(|(fields, index)| IndexState {
                        fields: fields.clone(),
                        state: if index.ready { "ready" } else { "building" }.into(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}
