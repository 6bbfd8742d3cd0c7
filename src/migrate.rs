//! Moving a single node into a cluster (`emberbase migrate-storage`): copies the embedded
//! database of a data directory, its secrets and its function modules into an empty engine,
//! typically PostgreSQL, so that nodes on that engine serve the same documents, accounts,
//! sessions, tokens, functions and files.
//!
//! The change history (`Changes`, `History`) is not copied: the cluster's feed starts afresh,
//! and a realtime client that resumes from before the move gets `reset`. File bytes stay where
//! they are: the records are copied, and the blobs (`<data_dir>/files/blobs/<ULID>`) are copied
//! to the bucket's `blobs/` prefix with any S3 tool, for example
//! `aws s3 sync ./emberbase_data/files/blobs s3://bucket/blobs`.

use crate::engine::sled::{SledEngine, SledOptions};
use crate::engine::{Direction, Engine, EngineError, KeyRange, Keyspace};
use crate::store::Space;
use std::path::Path;

/// The keyspaces copied: everything but the change history.
const COPIED: [Keyspace; 5] = [
    Keyspace::Documents,
    Keyspace::Indexes,
    Keyspace::Meta,
    Keyspace::System,
    Keyspace::Files,
];

/// Keys read, and written in one transaction, at a time.
const PAGE: usize = 500;

/// What a migration copied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Migrated {
    /// Keys (documents, index entries, configuration, accounts, file records, ...).
    pub keys: u64,
    /// Server secrets (service key, signing keys).
    pub secrets: usize,
    /// Function modules.
    pub modules: usize,
}

/// Why a migration stopped.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the source: {0}")]
    Source(String),
    #[error("the target: {0}")]
    Target(String),
    #[error("the target store already holds data; migrate into an empty database")]
    NotEmpty,
}

fn target(e: EngineError) -> MigrateError {
    MigrateError::Target(e.to_string())
}

fn source(e: impl std::fmt::Display) -> MigrateError {
    MigrateError::Source(e.to_string())
}

/// Copies the single node in `data_dir` (which no server may hold open) into `to`, which must
/// be empty. `progress(done, total)` follows the keys.
pub async fn migrate_storage(
    data_dir: &Path,
    to: &dyn Engine,
    progress: &(dyn Fn(u64, u64) + Sync),
) -> Result<Migrated, MigrateError> {
    for ks in COPIED
        .into_iter()
        .chain([Keyspace::Changes, Keyspace::History])
    {
        if !to
            .scan(ks, &KeyRange::all(), Direction::Forward, 1)
            .await
            .map_err(target)?
            .is_empty()
        {
            return Err(MigrateError::NotEmpty);
        }
    }
    let db = data_dir.join("db");
    if !db.exists() {
        return Err(source(format!("no database in {}", data_dir.display())));
    }
    let from = SledEngine::open(
        SledOptions {
            path: db,
            cache_bytes: 64 << 20,
        },
        None,
    )
    .map_err(source)?;
    let mut total = 0;
    for ks in COPIED {
        total += count(&from, ks).await?;
    }
    let mut migrated = Migrated::default();
    progress(0, total);
    for ks in COPIED {
        let mut range = KeyRange::all();
        loop {
            let page = from
                .scan(ks, &range, Direction::Forward, PAGE)
                .await
                .map_err(source)?;
            if page.is_empty() {
                break;
            }
            let mut txn = to.begin().await.map_err(target)?;
            for (key, value) in &page {
                txn.put(ks, key.to_vec(), value.to_vec());
            }
            txn.commit(None).await.map_err(target)?;
            migrated.keys += page.len() as u64;
            progress(migrated.keys, total);
            match page.last() {
                Some((last, _)) if page.len() == PAGE => {
                    range = KeyRange::from(crate::engine::successor(last))
                }
                _ => break,
            }
        }
    }
    from.close().await.map_err(source)?;

    let mut txn = to.begin().await.map_err(target)?;
    for name in crate::secrets::ALL {
        match std::fs::read(data_dir.join(name)) {
            Ok(bytes) => {
                txn.put(Keyspace::System, Space::Secrets.key(name.as_bytes()), bytes);
                migrated.secrets += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(source(format!("{name}: {e}"))),
        }
    }
    txn.commit(None).await.map_err(target)?;
    for (sha, path) in crate::functions::stored_modules(data_dir).map_err(source)? {
        let wasm = std::fs::read(&path).map_err(source)?;
        let mut txn = to.begin().await.map_err(target)?;
        txn.put(Keyspace::System, Space::Modules.key(sha.as_bytes()), wasm);
        txn.commit(None).await.map_err(target)?;
        migrated.modules += 1;
    }
    Ok(migrated)
}

async fn count(engine: &dyn Engine, ks: Keyspace) -> Result<u64, MigrateError> {
    let mut n = 0;
    let mut range = KeyRange::all();
    loop {
        let page = engine
            .scan(ks, &range, Direction::Forward, 10 * PAGE)
            .await
            .map_err(source)?;
        n += page.len() as u64;
        match page.last() {
            Some((last, _)) if page.len() == 10 * PAGE => {
                range = KeyRange::from(crate::engine::successor(last))
            }
            _ => return Ok(n),
        }
    }
}
