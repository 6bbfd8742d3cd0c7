//! `emberbase restore`: an archive into a data directory. The whole archive is read and checked
//! against its manifest first; only then is the new data directory built, beside the target
//! (`.<name>.restoring-<ULID>`), and read through a second time, checked again as it is written.
//! Only when it is complete does it take the target's place; a target that held data is moved
//! aside (`<name>.before-restore-<time>`), never deleted.
//!
//! A cluster's stores are restored in place instead (`restore_cluster`): the database must hold
//! nothing, the keys go in through the engine, server keys and modules as the cluster keeps them
//! (records), and file bytes to the bucket of `files.url`.

use super::archive::{read_archive, read_records, ArchiveError, Manifest};
use super::{KEYSPACES, SEALING_KEY, SEALING_KEY_FILE};
use crate::config::Config;
use crate::engine::postgres::{PostgresEngine, PostgresOptions};
use crate::engine::sled::{SledEngine, SledOptions};
use crate::engine::{Direction, Engine, KeyRange, Keyspace};
use crate::files::ObjectDir;
use crate::store::Space;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use tokio::runtime::Runtime;

/// Keys written in one transaction.
const BATCH: usize = 500;

/// How far a restore is: `done` of `total` bytes of the archive read in `phase` (`checking`,
/// then `restoring`).
#[derive(Debug, Clone, Copy)]
pub struct RestoreProgress {
    pub phase: &'static str,
    pub done: u64,
    pub total: u64,
}

/// What a restore put in place.
#[derive(Debug, Clone)]
pub struct Restored {
    /// The archive's name and when its snapshot was taken.
    pub name: String,
    pub created_at: String,
    pub keys: u64,
    pub files: u64,
    pub modules: u64,
    pub secrets: u64,
    /// Where the data directory that was there before went.
    pub replaced: Option<PathBuf>,
    /// What to do next, if anything (for example, which key the functions' secrets need).
    pub notes: Vec<String>,
}

impl Restored {
    fn of(manifest: Manifest, replaced: Option<PathBuf>, notes: Vec<String>) -> Restored {
        Restored {
            name: manifest.name,
            created_at: manifest.created_at,
            keys: manifest.keys,
            files: manifest.files,
            modules: manifest.modules,
            secrets: manifest.secrets,
            replaced,
            notes,
        }
    }
}

/// Why a restore did not happen. Nothing was changed in the target then.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} holds data already: pass --force to move it aside and restore in its place")]
    NotEmpty(PathBuf),
    #[error("a server is using {0}: stop it first")]
    InUse(PathBuf),
    /// The cluster's database holds data already, or the configuration lacks what the
    /// archive needs.
    #[error("{0}")]
    Target(String),
    #[error("{0} (nothing was changed)")]
    Damaged(String),
    #[error("{0} (nothing was changed)")]
    Io(String),
}

fn io_error(context: &str) -> impl Fn(io::Error) -> RestoreError + '_ {
    move |e| RestoreError::Io(format!("{context}: {e}"))
}

fn archive_error(e: ArchiveError) -> RestoreError {
    match e {
        ArchiveError::Damaged(_) => RestoreError::Damaged(e.to_string()),
        ArchiveError::Io(e) => RestoreError::Io(e.to_string()),
    }
}

/// Counts the bytes read, for the progress.
struct Counting<'a, R> {
    inner: R,
    done: u64,
    total: u64,
    phase: &'static str,
    progress: &'a (dyn Fn(RestoreProgress) + Sync),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        (self.progress)(RestoreProgress {
            phase: self.phase,
            done: self.done,
            total: self.total,
        });
        Ok(n)
    }
}

fn open_counting<'a>(
    archive: &Path,
    phase: &'static str,
    progress: &'a (dyn Fn(RestoreProgress) + Sync),
) -> Result<Counting<'a, io::BufReader<std::fs::File>>, RestoreError> {
    let file = std::fs::File::open(archive).map_err(io_error("cannot open the archive"))?;
    let total = file
        .metadata()
        .map_err(io_error("cannot read the archive"))?
        .len();
    Ok(Counting {
        inner: io::BufReader::with_capacity(1 << 20, file),
        done: 0,
        total,
        phase,
        progress,
    })
}

/// Whether `dir` exists and holds anything.
fn holds_data(dir: &Path) -> io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Restores `archive` into `data_dir`, which must not exist or be empty unless `force` (then
/// what is there is moved aside). No server may hold `data_dir` open. Blocking: it runs a
/// small runtime of its own for the database, so call it outside any async runtime (or on
/// `spawn_blocking`).
pub fn restore(
    archive: &Path,
    data_dir: &Path,
    force: bool,
    progress: &(dyn Fn(RestoreProgress) + Sync),
) -> Result<Restored, RestoreError> {
    if crate::engine::sled::in_use(&data_dir.join("db")) {
        return Err(RestoreError::InUse(data_dir.to_path_buf()));
    }
    let occupied = holds_data(data_dir).map_err(io_error("cannot read the data directory"))?;
    if occupied && !force {
        return Err(RestoreError::NotEmpty(data_dir.to_path_buf()));
    }
    // The first pass only checks: a damaged archive is refused before anything is written.
    let input = open_counting(archive, "checking", progress)?;
    let manifest = read_archive(input, |_, _| Ok(())).map_err(archive_error)?;
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let dir_name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| RestoreError::Io(format!("{} names no directory", data_dir.display())))?;
    let staging = parent.join(format!(".{dir_name}.restoring-{}", ulid::Ulid::new()));
    let built = build_data_dir(archive, &staging, progress);
    let built = match built {
        Ok(built) => built,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if built.entries != manifest.entries {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(RestoreError::Damaged(
            "the archive changed while it was restored".into(),
        ));
    }
    let mut replaced = None;
    if occupied {
        let stamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let aside = parent.join(format!("{dir_name}.before-restore-{stamp}"));
        std::fs::rename(data_dir, &aside)
            .map_err(io_error("cannot move the data directory aside"))?;
        replaced = Some(aside);
    } else if data_dir.exists() {
        std::fs::remove_dir(data_dir)
            .map_err(io_error("cannot replace the empty data directory"))?;
    }
    std::fs::rename(&staging, data_dir)
        .map_err(io_error("cannot put the restored data directory in place"))?;
    std::fs::File::open(&parent)
        .and_then(|d| d.sync_all())
        .map_err(io_error("cannot sync the data directory's parent"))?;
    Ok(Restored::of(manifest, replaced, Vec::new()))
}

/// Where a restore writes.
enum Sink {
    /// A new data directory.
    DataDir { dir: PathBuf, engine: SledEngine },
    /// A cluster's (empty) database, and the bucket of its file bytes.
    Cluster {
        engine: PostgresEngine,
        blobs: Option<ObjectDir>,
        /// Where a blob waits before it is uploaded.
        staging: PathBuf,
    },
}

impl Sink {
    fn engine(&self) -> &dyn Engine {
        match self {
            Sink::DataDir { engine, .. } => engine,
            Sink::Cluster { engine, .. } => engine,
        }
    }
}

fn runtime() -> Result<Runtime, RestoreError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("cannot start a runtime"))
}

/// Builds a data directory at `staging` from the archive (read and checked a second time).
fn build_data_dir(
    archive: &Path,
    staging: &Path,
    progress: &(dyn Fn(RestoreProgress) + Sync),
) -> Result<Manifest, RestoreError> {
    for sub in ["files/blobs", "functions/modules"] {
        std::fs::create_dir_all(staging.join(sub))
            .map_err(io_error("cannot create the data directory"))?;
    }
    let runtime = runtime()?;
    let _entered = runtime.enter();
    let engine = SledEngine::open(
        SledOptions {
            path: staging.join("db"),
            cache_bytes: 64 << 20,
        },
        None,
    )
    .map_err(|e| RestoreError::Io(format!("cannot create the database: {e}")))?;
    let sink = Sink::DataDir {
        dir: staging.to_path_buf(),
        engine,
    };
    load(&runtime, &sink, archive, progress)
}

/// Reads the archive into `sink`, then closes its engine.
fn load(
    runtime: &Runtime,
    sink: &Sink,
    archive: &Path,
    progress: &(dyn Fn(RestoreProgress) + Sync),
) -> Result<Manifest, RestoreError> {
    let written = open_counting(archive, "restoring", progress).and_then(|input| {
        read_archive(input, |path, entry| write_entry(runtime, sink, path, entry))
            .map_err(archive_error)
    });
    let resumed = match &written {
        Ok(_) => runtime
            .block_on(sink.engine().resume_sequence())
            .map(drop)
            .map_err(|e| RestoreError::Io(format!("cannot resume the change feed: {e}"))),
        Err(_) => Ok(()),
    };
    let closed = runtime
        .block_on(sink.engine().close())
        .map_err(|e| RestoreError::Io(format!("cannot close the database: {e}")));
    let manifest = written?;
    resumed?;
    closed?;
    Ok(manifest)
}

/// Restores `archive` into the cluster that `config` names (`store.url`, and `files.url` for
/// file bytes). The database must hold nothing yet; the archive is checked whole first. A
/// failure part way leaves the database partly loaded: empty it before trying again.
/// Blocking, like [`restore`].
pub fn restore_cluster(
    archive: &Path,
    config: &Config,
    progress: &(dyn Fn(RestoreProgress) + Sync),
) -> Result<Restored, RestoreError> {
    if config.store.url.is_empty() {
        return Err(RestoreError::Target(
            "store.url is not set: a cluster restore needs the cluster's database".into(),
        ));
    }
    let input = open_counting(archive, "checking", progress)?;
    let mut sealing_key = None;
    let manifest = read_archive(input, |path, entry| {
        if path.strip_prefix("secrets/") == Some(SEALING_KEY) {
            let mut key = String::new();
            entry.read_to_string(&mut key)?;
            sealing_key = Some(key.trim().to_string());
        }
        Ok(())
    })
    .map_err(archive_error)?;
    let blobs = match config.files.url.as_str() {
        "" if manifest.files > 0 => {
            return Err(RestoreError::Target(format!(
                "the archive holds {} files and files.url is not set: a cluster keeps file \
                 bytes in a bucket",
                manifest.files
            )))
        }
        "" => None,
        url => Some(
            ObjectDir::open(
                url,
                &config.files.access_key_id,
                &config.files.secret_access_key,
            )
            .map_err(|e| RestoreError::Target(format!("files.url: {e}")))?
            .blobs(),
        ),
    };
    let runtime = runtime()?;
    let engine = runtime
        .block_on(PostgresEngine::open(PostgresOptions::from_config(
            &config.store,
        )))
        .map_err(|e| RestoreError::Target(format!("cannot open the database: {e}")))?;
    let empty = runtime.block_on(async {
        for (ks, _) in KEYSPACES {
            if !engine
                .scan(ks, &KeyRange::all(), Direction::Forward, 1)
                .await?
                .is_empty()
            {
                return Ok(false);
            }
        }
        Ok::<_, crate::engine::EngineError>(true)
    });
    match empty {
        Ok(true) => {}
        Ok(false) => {
            let _ = runtime.block_on(engine.close());
            return Err(RestoreError::Target(
                "the cluster's database holds data already: restore into an empty one".into(),
            ));
        }
        Err(e) => {
            let _ = runtime.block_on(engine.close());
            return Err(RestoreError::Target(format!(
                "cannot read the database: {e}"
            )));
        }
    }
    let staging = std::env::temp_dir().join(format!("emberbase-restore-{}", ulid::Ulid::new()));
    std::fs::create_dir_all(&staging).map_err(io_error("cannot make a staging folder"))?;
    let sink = Sink::Cluster {
        engine,
        blobs,
        staging: staging.clone(),
    };
    let built = load(&runtime, &sink, archive, progress);
    let _ = std::fs::remove_dir_all(&staging);
    let built = built?;
    if built.entries != manifest.entries {
        return Err(RestoreError::Damaged(
            "the archive changed while it was restored (the database is partly loaded)".into(),
        ));
    }
    let mut notes = Vec::new();
    if sealing_key.is_some_and(|key| key != config.functions.secrets_key.trim()) {
        notes.push(format!(
            "functions' secrets are sealed with the key the archive holds, not with \
             functions.secrets_key: set it on every node to the archive's key \
             (tar -xzOf {} secrets/{SEALING_KEY})",
            archive.display()
        ));
    }
    Ok(Restored::of(manifest, None, notes))
}

fn unexpected(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the archive holds {path:?}, which this version does not restore"),
    )
}

/// Writes one entry of the archive into `sink`.
fn write_entry(runtime: &Runtime, sink: &Sink, path: &str, entry: &mut dyn Read) -> io::Result<()> {
    let (kind, name) = path.split_once('/').ok_or_else(|| unexpected(path))?;
    match kind {
        "store" => {
            let (ks_name, _) = name.split_once('/').ok_or_else(|| unexpected(path))?;
            let ks = KEYSPACES
                .iter()
                .find(|(_, n)| *n == ks_name)
                .map(|(ks, _)| *ks)
                .ok_or_else(|| unexpected(path))?;
            let mut batch = Vec::with_capacity(BATCH);
            read_records(entry, |key, value| {
                batch.push((ks, key, value));
                if batch.len() == BATCH {
                    put_all(runtime, sink.engine(), std::mem::take(&mut batch))?;
                }
                Ok(())
            })?;
            put_all(runtime, sink.engine(), batch)
        }
        "secrets" => {
            let known = name == SEALING_KEY || crate::secrets::ALL.contains(&name);
            if !known {
                return Err(unexpected(path));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            match sink {
                Sink::DataDir { dir, .. } => {
                    let file = match name {
                        SEALING_KEY => dir.join(SEALING_KEY_FILE),
                        name => dir.join(name),
                    };
                    crate::auth::write_private(&file, &bytes)
                }
                // A cluster's sealing key is configuration (`functions.secrets_key`), never a
                // record; the result says so.
                Sink::Cluster { .. } if name == SEALING_KEY => Ok(()),
                Sink::Cluster { engine, .. } => put_all(
                    runtime,
                    engine,
                    vec![(Keyspace::System, Space::Secrets.key(name.as_bytes()), bytes)],
                ),
            }
        }
        "modules" => {
            let sha = name.strip_suffix(".wasm").ok_or_else(|| unexpected(path))?;
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(unexpected(path));
            }
            match sink {
                Sink::DataDir { dir, .. } => {
                    copy_to(entry, &dir.join("functions/modules").join(name))
                }
                Sink::Cluster { engine, .. } => {
                    let mut wasm = Vec::new();
                    entry.read_to_end(&mut wasm)?;
                    put_all(
                        runtime,
                        engine,
                        vec![(Keyspace::System, Space::Modules.key(sha.as_bytes()), wasm)],
                    )
                }
            }
        }
        "blobs" => {
            let blob = ulid::Ulid::from_string(name)
                .map_err(|_| unexpected(path))?
                .to_string();
            match sink {
                Sink::DataDir { dir, .. } => copy_to(entry, &dir.join("files/blobs").join(blob)),
                Sink::Cluster {
                    blobs: Some(blobs),
                    staging,
                    ..
                } => {
                    let file = staging.join(&blob);
                    copy_to(entry, &file)?;
                    runtime.block_on(blobs.put_file(&blob, &file))?;
                    std::fs::remove_file(file)
                }
                Sink::Cluster { blobs: None, .. } => Err(unexpected(path)),
            }
        }
        _ => Err(unexpected(path)),
    }
}

fn copy_to(entry: &mut dyn Read, path: &Path) -> io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    io::copy(entry, &mut file)?;
    file.sync_all()
}

fn put_all(
    runtime: &Runtime,
    engine: &dyn Engine,
    records: Vec<(Keyspace, Vec<u8>, Vec<u8>)>,
) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    runtime
        .block_on(async {
            let mut txn = engine.begin().await?;
            for (ks, key, value) in records {
                txn.put(ks, key, value);
            }
            txn.commit(None).await
        })
        .map(drop)
        .map_err(|e| io::Error::other(e.to_string()))
}
