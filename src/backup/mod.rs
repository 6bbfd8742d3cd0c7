//! Backups: an online, consistent copy of a whole server in one archive (see `archive`), made
//! on request (`POST /v1/admin/backups`) or on a schedule, kept in a directory or a bucket
//! (`target`), and restored into a new data directory (`restore`).
//!
//! A backup reads one snapshot of the store ([`Engine::snapshot`](crate::engine::Engine)), so
//! it holds every document of a committed batch or none, and never pauses writers: a write
//! acknowledged after the snapshot is simply not in the archive. The bytes that live outside
//! the store (file blobs, a single node's module files) are read after the snapshot, so their
//! deletion waits while the backup runs (`Store::hold_deletions`). Server keys go in as they are
//! stored; function secrets stay sealed (their key is in the archive only when it is a file of
//! the data directory, not when it comes from `functions.secrets_key`).

mod archive;
mod restore;
mod target;

pub use restore::{restore, restore_cluster, RestoreError, RestoreProgress, Restored};

use crate::auth::{Denied, Principal};
use crate::engine::{Direction, KeyRange, Keyspace, Snapshot};
use crate::error::Error;
use crate::files::{Files, SignedUrl};
use crate::signing::Signed;
use crate::store::{FileRecord, Space, Store};
use archive::{ArchiveWriter, Manifest, StorePiece};
use futures_util::stream::{BoxStream, StreamExt};
use serde::Serialize;
use std::io::{self, BufWriter, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use target::Target;
use tokio::runtime::Handle;

/// The keyspaces an archive holds, by their name in it.
const KEYSPACES: [(Keyspace, &str); 7] = [
    (Keyspace::Documents, "documents"),
    (Keyspace::Indexes, "indexes"),
    (Keyspace::Changes, "changes"),
    (Keyspace::History, "history"),
    (Keyspace::Meta, "meta"),
    (Keyspace::System, "system"),
    (Keyspace::Files, "files"),
];

/// System records that describe the running nodes, not the data: not backed up.
const NODE_SPACES: [Space; 3] = [Space::Leases, Space::RealtimeControl, Space::RealtimeNodes];

/// The archive name of the function secrets' sealing key file.
const SEALING_KEY: &str = "functions_secrets_key";
/// Where that file is in a data directory.
const SEALING_KEY_FILE: &str = "functions/secrets_key";

/// Where an archive for a bucket is written before it is uploaded, in the data directory.
const STAGING: &str = "tmp";

/// Keys read from the snapshot at a time.
const PAGE: usize = 1000;
/// Failed backups remembered for the list.
const FAILURES_KEPT: usize = 10;
/// How long a download link of an archive works, in seconds.
const LINK_SECS: u64 = 300;

/// Where a backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Being written.
    Running,
    /// Complete, and downloadable.
    Ready,
    /// It stopped; `error` says why. Nothing of it is kept.
    Failed,
}

/// A backup archive.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BackupInfo {
    /// `backup-<ULID>.tar.gz`, or `auto-<ULID>.tar.gz` for a scheduled one.
    pub name: String,
    pub state: BackupState,
    /// RFC 3339, when it began.
    pub created_at: String,
    /// Bytes, once ready.
    pub size: Option<u64>,
    /// Whether the schedule made it (retention applies to these only).
    pub scheduled: bool,
    /// Why it failed.
    pub error: Option<String>,
}

/// An error of [`Backups`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("backup {0} does not exist")]
    NotFound(String),
    /// One backup runs at a time on a node.
    #[error("backup {0} is still running; wait for it to finish")]
    Running(String),
    #[error("{0}")]
    Internal(String),
}

impl From<Denied> for BackupError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => BackupError::Unauthenticated(m),
            Denied::Forbidden(m) => BackupError::Forbidden(m),
        }
    }
}

impl From<BackupError> for Error {
    fn from(e: BackupError) -> Self {
        let message = e.to_string();
        match e {
            BackupError::Unauthenticated(_) => Error::unauthenticated(message),
            BackupError::Forbidden(_) => Error::forbidden(message),
            BackupError::NotFound(_) => Error::not_found(message),
            BackupError::Running(name) => {
                Error::new(crate::error::ErrorCode::Conflict, message).with_detail("running", name)
            }
            BackupError::Internal(detail) => Error::internal(detail),
        }
    }
}

type Result<T, E = BackupError> = std::result::Result<T, E>;

fn internal(e: impl std::fmt::Display) -> BackupError {
    BackupError::Internal(e.to_string())
}

/// When a backup named `name` began, if it is a backup's name.
fn created_at(name: &str) -> Option<SystemTime> {
    let id = name
        .strip_prefix("backup-")
        .or_else(|| name.strip_prefix("auto-"))?
        .strip_suffix(".tar.gz")?;
    ulid::Ulid::from_string(id).ok().map(|u| u.datetime())
}

fn rfc3339(t: SystemTime) -> String {
    let t: time::OffsetDateTime = t.into();
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The service that makes, lists and deletes backups.
#[derive(Clone)]
pub struct Backups {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    files: Files,
    data_dir: PathBuf,
    target: Target,
    keep: usize,
    status: Mutex<Status>,
    scheduler: Mutex<Option<tokio::task::JoinHandle<()>>>,
    metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct Status {
    running: Option<BackupInfo>,
    failed: Vec<BackupInfo>,
}

impl Backups {
    /// Opens the target and starts the schedule, if one is configured.
    pub(crate) fn start(
        data_dir: &Path,
        store: Store,
        files: Files,
        config: &crate::config::BackupsConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> std::result::Result<Backups, String> {
        let schedule = match config.schedule.as_str() {
            "" => None,
            expr => Some(
                crate::functions::parse_cron(expr).map_err(|e| format!("backups.schedule: {e}"))?,
            ),
        };
        let target = Target::from_config(config, data_dir)?;
        target.sweep_staging(&data_dir.join(STAGING));
        let backups = Backups {
            inner: Arc::new(Inner {
                store,
                files,
                data_dir: data_dir.to_path_buf(),
                target,
                keep: config.keep,
                status: Mutex::new(Status::default()),
                scheduler: Mutex::new(None),
                metrics,
            }),
        };
        if let Some(cron) = schedule {
            let task = tokio::spawn(schedule::run(
                Arc::downgrade(&backups.inner),
                cron,
                config.schedule.clone(),
            ));
            *backups.scheduler() = Some(task);
        }
        Ok(backups)
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.inner.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scheduler(&self) -> std::sync::MutexGuard<'_, Option<tokio::task::JoinHandle<()>>> {
        self.inner
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Where archives are kept, for the startup log.
    pub(crate) fn location(&self) -> String {
        self.inner.target.location()
    }

    /// Stops the schedule (a backup being written finishes).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.scheduler().take() {
            task.abort();
        }
    }

    /// Starts a backup and returns at once; [`list`](Self::list) says when it is ready.
    pub async fn create(&self, who: &Principal) -> Result<BackupInfo> {
        who.require_admin("make backups")?;
        let info = self.begin(false)?;
        let this = self.clone();
        let name = info.name.clone();
        tokio::spawn(async move { this.make(&name).await });
        Ok(info)
    }

    /// Marks a new backup as running, unless one already is.
    fn begin(&self, scheduled: bool) -> Result<BackupInfo> {
        let mut status = self.status();
        if let Some(running) = &status.running {
            return Err(BackupError::Running(running.name.clone()));
        }
        let id = ulid::Ulid::new();
        let prefix = if scheduled { "auto" } else { "backup" };
        let info = BackupInfo {
            name: format!("{prefix}-{id}.tar.gz"),
            state: BackupState::Running,
            created_at: rfc3339(id.datetime()),
            size: None,
            scheduled,
            error: None,
        };
        status.running = Some(info.clone());
        Ok(info)
    }

    /// Writes backup `name` (begun by `begin`) and records how it went.
    async fn make(&self, name: &str) -> std::result::Result<u64, String> {
        let started = std::time::Instant::now();
        let made = self.write(name).await;
        let mut status = self.status();
        let mut info = status.running.take().unwrap_or_else(|| BackupInfo {
            name: name.to_string(),
            state: BackupState::Running,
            created_at: String::new(),
            size: None,
            scheduled: false,
            error: None,
        });
        let outcome = if made.is_ok() { "ready" } else { "failed" };
        self.inner
            .metrics
            .backups
            .with_label_values(&[outcome])
            .inc();
        match &made {
            Ok(manifest) => {
                self.inner
                    .metrics
                    .backup_last_success
                    .set(crate::model::unix_secs() as i64);
                tracing::info!(
                    backup = name,
                    keys = manifest.keys,
                    files = manifest.files,
                    took_ms = started.elapsed().as_millis() as u64,
                    at = %self.inner.target.location(),
                    "backup written"
                )
            }
            Err(e) => {
                tracing::error!(backup = name, error = %e, "backup failed");
                info.state = BackupState::Failed;
                info.error = Some(e.clone());
                status.failed.insert(0, info);
                status.failed.truncate(FAILURES_KEPT);
            }
        }
        made.map(|m| m.keys)
    }

    /// Takes the snapshot, writes the archive to its staging file, publishes it.
    async fn write(&self, name: &str) -> std::result::Result<Manifest, String> {
        let inner = &self.inner;
        // Before the snapshot: no blob or module it refers to may go while the archive is read.
        let hold = inner
            .store
            .hold_deletions()
            .await
            .map_err(|e| e.to_string())?;
        let snapshot = inner.store.snapshot().await.map_err(|e| e.to_string())?;
        let staged = inner
            .target
            .staging_path(&inner.data_dir.join(STAGING), name);
        let (this, at, named) = (self.clone(), staged.clone(), name.to_string());
        let handle = Handle::current();
        let written = tokio::task::spawn_blocking(move || {
            if let Some(dir) = at.parent() {
                std::fs::create_dir_all(dir)?;
            }
            this.write_archive(&handle, &*snapshot, &at, &named)
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| e.to_string()));
        drop(hold);
        let published = match written {
            Ok(manifest) => inner
                .target
                .publish(&staged, name)
                .await
                .map(|()| manifest)
                .map_err(|e| format!("cannot store the archive: {e}")),
            Err(e) => Err(e),
        };
        if published.is_err() {
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(staged)).await;
        }
        published
    }

    /// Writes the archive of `snapshot` to `path` (on a blocking thread).
    fn write_archive(
        &self,
        handle: &Handle,
        snapshot: &dyn Snapshot,
        path: &Path,
        name: &str,
    ) -> io::Result<Manifest> {
        let shared = self.inner.store.is_shared();
        let mut out = ArchiveWriter::new(BufWriter::new(std::fs::File::create(path)?));
        let mut manifest =
            Manifest::new(name, rfc3339(SystemTime::now()), self.inner.store.backend());
        let skipped: Vec<Vec<u8>> = NODE_SPACES.iter().map(|s| s.key(b"")).collect();
        let secrets_prefix = Space::Secrets.key(b"");
        let modules_prefix = Space::Modules.key(b"");
        let mut extras: Vec<(String, Vec<u8>)> = Vec::new();
        let mut blobs = Vec::new();
        let engine_error = |e: crate::engine::EngineError| io::Error::other(e.to_string());
        if let Some((last, _)) = handle
            .block_on(snapshot.scan(Keyspace::Changes, &KeyRange::all(), Direction::Reverse, 1))
            .map_err(engine_error)?
            .first()
        {
            manifest.seq = <[u8; 8]>::try_from(&last[..]).map_or(0, u64::from_be_bytes);
        }
        for (ks, ks_name) in KEYSPACES {
            let mut piece = StorePiece::default();
            let mut pieces = 0;
            let mut range = KeyRange::all();
            loop {
                let page = handle
                    .block_on(snapshot.scan(ks, &range, Direction::Forward, PAGE))
                    .map_err(engine_error)?;
                for (key, value) in &page {
                    if ks == Keyspace::System {
                        // In a cluster the server keys and modules are records; an archive
                        // keeps them as entries of their own, as a single node's files.
                        if let Some(name) = key.strip_prefix(secrets_prefix.as_slice()) {
                            let name = String::from_utf8_lossy(name);
                            extras.push((format!("secrets/{name}"), value.to_vec()));
                            continue;
                        }
                        if let Some(sha) = key.strip_prefix(modules_prefix.as_slice()) {
                            let sha = String::from_utf8_lossy(sha);
                            extras.push((format!("modules/{sha}.wasm"), value.to_vec()));
                            continue;
                        }
                        if skipped.iter().any(|p| key.starts_with(p)) {
                            continue;
                        }
                    }
                    if ks == Keyspace::Files {
                        let record = FileRecord::decode(value)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        blobs.push((record.blob, record.info.size));
                    }
                    piece.push(key, value);
                    if piece.is_full() {
                        pieces += 1;
                        out.add_bytes(&format!("store/{ks_name}/{pieces:06}"), &piece.bytes)?;
                        manifest.keys += piece.records;
                        piece = StorePiece::default();
                    }
                }
                match page.last() {
                    Some((last, _)) if page.len() == PAGE => {
                        range = KeyRange::from(crate::engine::successor(last));
                    }
                    _ => break,
                }
            }
            if piece.records > 0 {
                pieces += 1;
                out.add_bytes(&format!("store/{ks_name}/{pieces:06}"), &piece.bytes)?;
                manifest.keys += piece.records;
            }
        }
        if !shared {
            extras.extend(self.data_dir_extras()?);
        }
        for (path, bytes) in &extras {
            if path.starts_with("secrets/") {
                manifest.secrets += 1;
            } else {
                manifest.modules += 1;
            }
            out.add_bytes(path, bytes)?;
        }
        for (blob, size) in blobs {
            let reader = handle
                .block_on(self.inner.files.open_blob(blob))
                .map_err(|e| {
                    io::Error::new(e.kind(), format!("the bytes of file blob {blob}: {e}"))
                })?;
            let bytes = StreamRead {
                handle,
                stream: reader.stream(0, size),
                buffered: bytes::Bytes::new(),
            };
            out.add(&format!("blobs/{blob}"), size, bytes)?;
            manifest.files += 1;
        }
        let file = out
            .finish(manifest.clone())?
            .into_inner()
            .map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(manifest)
    }

    /// A single node's keys and modules, which are files of its data directory.
    fn data_dir_extras(&self) -> io::Result<Vec<(String, Vec<u8>)>> {
        let dir = &self.inner.data_dir;
        let mut extras = Vec::new();
        let mut secrets: Vec<(&str, PathBuf)> = crate::secrets::ALL
            .iter()
            .map(|name| (*name, dir.join(name)))
            .collect();
        secrets.push((SEALING_KEY, dir.join(SEALING_KEY_FILE)));
        for (name, path) in secrets {
            match std::fs::read(&path) {
                Ok(bytes) => extras.push((format!("secrets/{name}"), bytes)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        for (sha, path) in crate::functions::stored_modules(dir)? {
            extras.push((format!("modules/{sha}.wasm"), std::fs::read(path)?));
        }
        Ok(extras)
    }

    /// The archives, newest first, with the one being written and recent failures.
    pub async fn list(&self, who: &Principal) -> Result<Vec<BackupInfo>> {
        who.require_admin("list backups")?;
        let stored = self.inner.target.list().await.map_err(internal)?;
        let mut all: Vec<BackupInfo> = stored
            .into_iter()
            .map(|s| BackupInfo {
                created_at: created_at(&s.name).map(rfc3339).unwrap_or_default(),
                scheduled: s.name.starts_with("auto-"),
                name: s.name,
                state: BackupState::Ready,
                size: Some(s.size),
                error: None,
            })
            .collect();
        let status = self.status();
        // Published but not yet marked finished: the archive says it is ready.
        let running = (status.running.iter())
            .filter(|r| !all.iter().any(|s| s.name == r.name))
            .cloned()
            .collect::<Vec<_>>();
        all.extend(running);
        all.extend(status.failed.iter().cloned());
        drop(status);
        all.sort_by(|a, b| {
            b.name
                .split_once('-')
                .map(|n| n.1)
                .cmp(&a.name.split_once('-').map(|n| n.1))
        });
        Ok(all)
    }

    /// A ready archive's size and bytes.
    pub async fn open(
        &self,
        who: &Principal,
        name: &str,
    ) -> Result<(u64, BoxStream<'static, io::Result<bytes::Bytes>>)> {
        who.require_admin("download backups")?;
        self.open_archive(name).await
    }

    /// A link that downloads a ready archive without a token for five minutes, so that a
    /// browser saves it to disk as it arrives rather than holding it in memory. Admins only.
    pub async fn link(&self, who: &Principal, name: &str) -> Result<SignedUrl> {
        who.require_admin("download backups")?;
        self.require_ready(name).await?;
        let signature = self
            .inner
            .files
            .signer()
            .sign(&Signed::Backup { name }, LINK_SECS);
        Ok(SignedUrl {
            path_and_query: format!("/v1/admin/backups/{name}?{}", signature.query),
            expires_at: signature.expires_at,
        })
    }

    /// Opens an archive through a download link ([`Backups::link`]): no token, only a valid,
    /// unexpired signature.
    pub async fn open_signed(
        &self,
        name: &str,
        expires: &str,
        signature: &str,
    ) -> Result<(u64, BoxStream<'static, io::Result<bytes::Bytes>>)> {
        if !(self.inner.files.signer()).verify(&Signed::Backup { name }, expires, signature) {
            return Err(BackupError::Forbidden(
                "the download link is invalid or has expired".into(),
            ));
        }
        self.open_archive(name).await
    }

    async fn open_archive(
        &self,
        name: &str,
    ) -> Result<(u64, BoxStream<'static, io::Result<bytes::Bytes>>)> {
        if created_at(name).is_none() {
            return Err(BackupError::NotFound(name.to_string()));
        }
        match self.inner.target.open(name).await {
            Ok(opened) => Ok(opened),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BackupError::NotFound(name.to_string()))
            }
            Err(e) => Err(internal(e)),
        }
    }

    /// Deletes a ready archive.
    pub async fn delete(&self, who: &Principal, name: &str) -> Result<()> {
        who.require_admin("delete backups")?;
        self.require_ready(name).await?;
        self.inner.target.delete(name).await.map_err(internal)
    }

    /// Fails with `NotFound` unless `name` is a ready archive of the target.
    async fn require_ready(&self, name: &str) -> Result<()> {
        let known = self
            .inner
            .target
            .list()
            .await
            .map_err(internal)?
            .iter()
            .any(|s| s.name == name);
        if !known {
            return Err(BackupError::NotFound(name.to_string()));
        }
        Ok(())
    }

    /// Deletes the oldest scheduled archives beyond `backups.keep`.
    async fn apply_retention(&self) -> io::Result<usize> {
        let mut scheduled: Vec<String> = self
            .inner
            .target
            .list()
            .await?
            .into_iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with("auto-"))
            .collect();
        scheduled.sort();
        let extra = scheduled.len().saturating_sub(self.inner.keep);
        for name in &scheduled[..extra] {
            self.inner.target.delete(name).await?;
        }
        Ok(extra)
    }
}

/// A stream of bytes read as a blocking reader (on a blocking thread).
struct StreamRead<'a> {
    handle: &'a Handle,
    stream: BoxStream<'static, io::Result<bytes::Bytes>>,
    buffered: bytes::Bytes,
}

impl Read for StreamRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.buffered.is_empty() {
            match self.handle.block_on(self.stream.next()) {
                Some(piece) => self.buffered = piece?,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.buffered.len());
        buf[..n].copy_from_slice(&self.buffered.split_to(n));
        Ok(n)
    }
}

mod schedule {
    //! Backups on a cron schedule. In a cluster each tick is claimed by one node: the last tick
    //! made is a record (`Space::Schedules`, key `00backup`) that a node moves forward with a
    //! compare-and-set before it makes the backup.

    use super::{Backups, Inner};
    use crate::store::{KvWrite, Space};
    use std::sync::Weak;
    use std::time::Duration;

    const KEY: &[u8] = b"\0backup";

    pub(super) async fn run(inner: Weak<Inner>, cron: croner::Cron, expr: String) {
        loop {
            let now = chrono::Utc::now();
            let Ok(next) = cron.find_next_occurrence(&now, false) else {
                tracing::warn!(schedule = %expr, "backups.schedule has no next time; no more scheduled backups");
                return;
            };
            let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
            tokio::time::sleep(wait).await;
            let Some(inner) = inner.upgrade() else { return };
            let backups = Backups { inner };
            let tick = (next.timestamp_millis().max(0) as u64)
                .to_be_bytes()
                .to_vec();
            match claim(&backups, tick).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a scheduled backup");
                    continue;
                }
            }
            let info = match backups.begin(true) {
                Ok(info) => info,
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a scheduled backup");
                    continue;
                }
            };
            if backups.make(&info.name).await.is_ok() {
                match backups.apply_retention().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        deleted = n,
                        keep = backups.inner.keep,
                        "deleted old scheduled backups"
                    ),
                    Err(e) => tracing::warn!(error = %e, "cannot delete old scheduled backups"),
                }
            }
        }
    }

    /// Records `tick` as made; `false` if another node already did.
    async fn claim(backups: &Backups, tick: Vec<u8>) -> Result<bool, crate::store::StoreError> {
        let store = &backups.inner.store;
        let stored = store.kv_get(Space::Schedules, KEY).await?;
        if stored.as_deref() >= Some(tick.as_slice()) {
            return Ok(false);
        }
        let write = KvWrite::default().check(Space::Schedules, KEY, stored).put(
            Space::Schedules,
            KEY,
            tick,
        );
        match store.kv_write(write).await {
            Ok(()) => Ok(true),
            Err(crate::store::StoreError::CasFailed) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
