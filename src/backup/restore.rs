//! `emberbase restore`: an archive into a data directory. The whole archive is read and checked
//! against its manifest first; only then is the new data directory built, beside the target
//! (`.<name>.restoring-<ULID>`), and read through a second time, checked again as it is written.
//! Only when it is complete does it take the target's place; a target that held data is moved
//! aside (`<name>.before-restore-<time>`), never deleted.

use super::archive::{read_archive, read_records, ArchiveError, Manifest};
use super::{KEYSPACES, SEALING_KEY, SEALING_KEY_FILE};
use crate::engine::sled::{SledEngine, SledOptions};
use crate::engine::{Engine, Keyspace};
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
}

/// Why a restore did not happen. Nothing was changed in the target then.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("{0} holds data already: pass --force to move it aside and restore in its place")]
    NotEmpty(PathBuf),
    #[error("a server is using {0}: stop it first")]
    InUse(PathBuf),
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
    let built = build(archive, &staging, progress);
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
    Ok(Restored {
        name: manifest.name,
        created_at: manifest.created_at,
        keys: manifest.keys,
        files: manifest.files,
        modules: manifest.modules,
        secrets: manifest.secrets,
        replaced,
    })
}

/// Builds a data directory at `staging` from the archive (read and checked a second time).
fn build(
    archive: &Path,
    staging: &Path,
    progress: &(dyn Fn(RestoreProgress) + Sync),
) -> Result<Manifest, RestoreError> {
    for sub in ["files/blobs", "functions/modules"] {
        std::fs::create_dir_all(staging.join(sub))
            .map_err(io_error("cannot create the data directory"))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io_error("cannot start a runtime"))?;
    let _entered = runtime.enter();
    let engine = SledEngine::open(
        SledOptions {
            path: staging.join("db"),
            cache_bytes: 64 << 20,
        },
        None,
    )
    .map_err(|e| RestoreError::Io(format!("cannot create the database: {e}")))?;
    let written = open_counting(archive, "restoring", progress).and_then(|input| {
        read_archive(input, |path, entry| {
            write_entry(&runtime, &engine, staging, path, entry)
        })
        .map_err(archive_error)
    });
    let closed = runtime
        .block_on(engine.close())
        .map_err(|e| RestoreError::Io(format!("cannot close the database: {e}")));
    let manifest = written?;
    closed?;
    Ok(manifest)
}

fn unexpected(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the archive holds {path:?}, which this version does not restore"),
    )
}

/// Writes one entry of the archive into the data directory at `staging`.
fn write_entry(
    runtime: &Runtime,
    engine: &SledEngine,
    staging: &Path,
    path: &str,
    entry: &mut dyn Read,
) -> io::Result<()> {
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
                batch.push((key, value));
                if batch.len() == BATCH {
                    put_all(runtime, engine, ks, std::mem::take(&mut batch))?;
                }
                Ok(())
            })?;
            put_all(runtime, engine, ks, batch)
        }
        "secrets" => {
            let file = if name == SEALING_KEY {
                staging.join(SEALING_KEY_FILE)
            } else if crate::secrets::ALL.contains(&name) {
                staging.join(name)
            } else {
                return Err(unexpected(path));
            };
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes)?;
            crate::auth::write_private(&file, &bytes)
        }
        "modules" => {
            let sha = name.strip_suffix(".wasm").ok_or_else(|| unexpected(path))?;
            if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(unexpected(path));
            }
            copy_to(entry, &staging.join("functions/modules").join(name))
        }
        "blobs" => {
            let blob = ulid::Ulid::from_string(name).map_err(|_| unexpected(path))?;
            copy_to(entry, &staging.join("files/blobs").join(blob.to_string()))
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
    engine: &SledEngine,
    ks: Keyspace,
    records: Vec<(Vec<u8>, Vec<u8>)>,
) -> io::Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    runtime
        .block_on(async {
            let mut txn = engine.begin().await?;
            for (key, value) in records {
                txn.put(ks, key, value);
            }
            txn.commit(None).await
        })
        .map(drop)
        .map_err(|e| io::Error::other(e.to_string()))
}
