//! The embedded backend: one sled tree, each keyspace under its own one-byte prefix (the
//! layout of earlier versions, so existing data directories open unchanged).
//!
//! **Commits.** A transaction reads on the caller's thread, buffers its writes and records what
//! it read. `commit` hands it to the committer thread, which takes every transaction waiting
//! (up to 256) as one group: in order, it checks that nothing each one read has changed since
//! (against sled and the group's earlier writes: optimistic concurrency), assigns change
//! records their sequence numbers and records the pre-image of every key written; then it
//! applies the whole group as one `sled::Batch`. The flusher thread flushes whatever was applied
//! since its last flush in one `flush` (group commit: the more concurrent writers, the more
//! transactions per batch and per fsync). Neither thread is an async worker, so a commit never
//! blocks one; a caller only awaits its answer.
//!
//! **Durable before visible.** sled shows a batch to readers while it is being applied, before
//! the flush makes it durable. The engine's reads therefore correct what sled returns with the
//! pre-images of keys written by batches not yet flushed (see `overlay`), recorded before the
//! batch is applied; the flusher drops those pre-images only after the flush returns, then
//! runs the commits' `on_durable` callbacks in commit order, then wakes the committers.
//! Because the pre-images hide part of a batch as well as a whole one, batches are applied
//! with the vendored sled's `apply_batch_unisolated`, which shuts readers out only while it
//! pins the log, not while it applies the writes, and flushed with `flush_unisolated`, which
//! does not take sled's lock at all (so a read never waits behind a batch that waits for a
//! flush) and reads its target between two batches (one inside a batch could wait for ever:
//! see the test at the end).
//!
//! **Failures.** sled keeps an I/O error sticky until the database is reopened, and a failed
//! flush leaves its batches applied in memory. So when a flush fails, every commit waiting on
//! it fails, new commits are refused, and the flusher reopens the database in-process and
//! writes back the pre-images of every unflushed key (a batch that reached the disk before the
//! failure is undone too), retrying each second until that succeeds. Reads keep working
//! throughout, through the pre-images.

use super::overlay::{self, PreImages, Undo};
use super::{
    Applied, Bytes, ChangeAppend, Committed, Direction, Engine, EngineError, Entry, KeyRange,
    Keyspace, OnDurable, Snapshot, Transaction,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// The free space a reopen waits for after a failed flush: sixteen of sled's 512 KiB log
/// segments.
const REOPEN_ROOM: u64 = 8 << 20;

/// How the sled backend is opened.
#[derive(Debug, Clone)]
pub struct SledOptions {
    /// The database directory.
    pub path: PathBuf,
    /// sled's page cache, in bytes.
    pub cache_bytes: u64,
}

/// Told about every successful flush: how long it took and how many transactions that wrote it
/// made durable.
pub type FlushObserver = Box<dyn Fn(Duration, u64) + Send + Sync>;

fn tag(ks: Keyspace) -> u8 {
    match ks {
        Keyspace::Documents => b'D',
        Keyspace::Indexes => b'I',
        Keyspace::Changes => b'C',
        Keyspace::History => b'H',
        Keyspace::Meta => b'M',
        Keyspace::System => b'S',
        Keyspace::Files => b'F',
    }
}

fn full_key(ks: Keyspace, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    write_full_key(ks, key, &mut k);
    k
}

/// Writes the full key of `key` into `out`, replacing what it held.
fn write_full_key(ks: Keyspace, key: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.push(tag(ks));
    out.extend_from_slice(key);
}

/// A keyspace range as a range of full keys.
fn full_range(ks: Keyspace, range: &KeyRange) -> KeyRange {
    KeyRange {
        start: full_key(ks, &range.start),
        end: Some(match &range.end {
            Some(end) => full_key(ks, end),
            None => vec![tag(ks) + 1],
        }),
    }
}

fn io(e: sled::Error) -> EngineError {
    EngineError::Io(e.to_string())
}

/// A sled value as `Bytes`, sharing its buffer rather than copying it.
fn bytes(v: sled::IVec) -> Bytes {
    Bytes::from_owner(v)
}

/// Reads at most `limit` live entries of a full-key range (keys stay full).
fn read_live(
    db: &sled::Db,
    range: &KeyRange,
    direction: Direction,
    limit: usize,
) -> Result<Vec<Entry>, EngineError> {
    if range.is_empty() || limit == 0 {
        return Ok(Vec::new());
    }
    let iter = match &range.end {
        Some(end) => db.range(range.start.clone()..end.clone()),
        None => db.range(range.start.clone()..),
    };
    match direction {
        Direction::Forward => collect_entries(iter.take(limit), limit),
        Direction::Reverse => collect_entries(iter.rev().take(limit), limit),
    }
}

/// The entries of a sled iterator that yields at most `limit`, in a vector sized up front:
/// growing it step by step made glibc consolidate its free lists on most list requests.
fn collect_entries(
    entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    limit: usize,
) -> Result<Vec<Entry>, EngineError> {
    let mut out = Vec::with_capacity(limit.min(PREALLOCATED_ENTRIES));
    for entry in entries {
        let (k, v) = entry.map_err(io)?;
        out.push((bytes(k), bytes(v)));
    }
    Ok(out)
}

/// The most entries [`read_live`] reserves room for before reading (a page of a list asks for
/// a few dozen; a full scan reads in chunks of a few hundred).
const PREALLOCATED_ENTRIES: usize = 1024;

fn strip(entries: Vec<Entry>) -> Vec<Entry> {
    entries
        .into_iter()
        .map(|(k, v)| (k.slice(1..), v))
        .collect()
}

/// What a committer waits for: the last batch flushed, and the last batch lost to a failure.
#[derive(Debug, Clone, Copy, Default)]
struct FlushState {
    flushed: u64,
    failed_upto: u64,
}

struct Publication {
    batch: u64,
    first_seq: u64,
    /// How many changes the commit appended.
    changes: u64,
    callback: Option<OnDurable>,
}

struct CommitState {
    next_seq: u64,
    /// The last batch applied to sled.
    applied: u64,
    /// Why commits are refused while the store recovers from a failed flush.
    failed: Option<String>,
    closing: bool,
    publications: VecDeque<Publication>,
}

/// The most transactions the committer applies as one batch.
const MAX_GROUP: usize = 256;

/// A transaction handed to the committer thread.
struct Job {
    reads: Vec<(Vec<u8>, Option<sled::IVec>)>,
    scans: Vec<ScanRead>,
    expects: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    adds: Vec<(Vec<u8>, i64)>,
    changes: Vec<ChangeAppend>,
    on_durable: Option<OnDurable>,
    /// The batch to wait for, and the sequence of the first change appended.
    reply: oneshot::Sender<Result<(u64, Option<u64>), EngineError>>,
}

enum Message {
    Commit(Box<Job>),
    Snapshot(oneshot::Sender<Arc<SnapshotImages>>),
    Stop,
}

/// The latest values written by the transactions of a group so far.
type GroupWrites = BTreeMap<Vec<u8>, Option<Bytes>>;

impl Job {
    /// Whether everything this transaction read is still as it saw it: in sled, as the group's
    /// earlier transactions leave it.
    fn still_valid(&self, db: &sled::Db, group: &GroupWrites) -> Result<bool, EngineError> {
        let current = |key: &[u8]| -> Result<Option<Bytes>, EngineError> {
            match group.get(key) {
                Some(value) => Ok(value.clone()),
                None => Ok(db.get(key).map_err(io)?.map(bytes)),
            }
        };
        for (key, seen) in &self.reads {
            if current(key)?.as_deref() != seen.as_deref() {
                return Ok(false);
            }
        }
        for (key, expected) in &self.expects {
            if current(key)?.as_deref() != expected.as_deref() {
                return Ok(false);
            }
        }
        for scan in &self.scans {
            let now = overlay::scan(
                &scan.range,
                scan.direction,
                scan.limit,
                |r, d, n| read_live(db, r, d, n),
                |r| overlay::in_range(group, r).count(),
                |r| {
                    overlay::in_range(group, r)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                },
            )?;
            if now != scan.seen {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// A snapshot's pre-images: the value, when it began, of every key changed since.
type SnapshotImages = RwLock<BTreeMap<Vec<u8>, Option<Bytes>>>;

struct Inner {
    options: SledOptions,
    db: RwLock<Option<sled::Db>>,
    commit: Mutex<CommitState>,
    wake: Condvar,
    /// Pre-images of the keys written by batches not yet flushed.
    pending: RwLock<PreImages>,
    pending_len: AtomicUsize,
    snapshots: Mutex<Vec<Weak<SnapshotImages>>>,
    state: watch::Sender<FlushState>,
    seq: watch::Sender<u64>,
    observer: Option<FlushObserver>,
    /// Flushes still to fail on purpose (fault injection for tests).
    failing_flushes: AtomicU32,
    /// While set, the flusher waits before flushing (for tests of what is visible meanwhile).
    holding: AtomicBool,
    /// The committer thread's queue.
    jobs: mpsc::Sender<Message>,
}

/// The sled backend. Cheap to clone.
#[derive(Clone)]
pub struct SledEngine {
    inner: Arc<Inner>,
    /// The committer and flusher threads, joined on close.
    threads: Arc<Mutex<Vec<std::thread::JoinHandle<()>>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn open_db(options: &SledOptions) -> Result<sled::Db, EngineError> {
    sled::Config::new()
        .path(&options.path)
        .cache_capacity(options.cache_bytes)
        .mode(sled::Mode::HighThroughput)
        // Only the flusher makes writes durable, so that it knows which ones are.
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            // sled says so only in its message (an `Other` I/O error).
            sled::Error::Io(lock) if lock.to_string().starts_with("could not acquire lock") => {
                EngineError::Io(
                    "another process holds the database's lock: is another emberbase using \
                     this data directory?"
                        .into(),
                )
            }
            other => io(other),
        })
}

/// The sequence of the newest change record in `db` (0 if none).
fn last_seq_in(db: &sled::Db) -> Result<u64, EngineError> {
    let Some(entry) = db.scan_prefix([tag(Keyspace::Changes)]).next_back() else {
        return Ok(0);
    };
    let (key, _) = entry.map_err(io)?;
    let mut b = [0u8; 8];
    if let Some(tail) = key.get(1..9) {
        b.copy_from_slice(tail);
    }
    Ok(u64::from_be_bytes(b))
}

/// Whether a process holds the database at `path` open (sled locks its `db` file).
pub fn in_use(path: &std::path::Path) -> bool {
    use fs2::FileExt;
    match std::fs::File::open(path.join("db")) {
        Ok(file) => match file.try_lock_exclusive() {
            Ok(()) => {
                let _ = FileExt::unlock(&file);
                false
            }
            Err(_) => true,
        },
        Err(_) => false,
    }
}

impl SledEngine {
    /// Opens (or creates) the database and starts the flusher thread.
    pub fn open(
        options: SledOptions,
        observer: Option<FlushObserver>,
    ) -> Result<SledEngine, EngineError> {
        let db = open_db(&options)?;
        let last = last_seq_in(&db)?;
        let (jobs, queue) = mpsc::channel();
        let inner = Arc::new(Inner {
            options,
            db: RwLock::new(Some(db)),
            commit: Mutex::new(CommitState {
                next_seq: last + 1,
                applied: 0,
                failed: None,
                closing: false,
                publications: VecDeque::new(),
            }),
            wake: Condvar::new(),
            pending: RwLock::new(PreImages::default()),
            pending_len: AtomicUsize::new(0),
            snapshots: Mutex::new(Vec::new()),
            state: watch::Sender::new(FlushState::default()),
            seq: watch::Sender::new(last),
            observer,
            failing_flushes: AtomicU32::new(0),
            holding: AtomicBool::new(false),
            jobs,
        });
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map_err(|e| EngineError::Io(format!("cannot start the {name} thread: {e}")))
        };
        let committer = inner.clone();
        let flusher = inner.clone();
        let threads = vec![
            spawn(
                "emberbase-commit",
                Box::new(move || committer.run_committer(queue)),
            )?,
            spawn("emberbase-flush", Box::new(move || flusher.run_flusher()))?,
        ];
        Ok(SledEngine {
            inner,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// Makes the next `n` flushes fail as an I/O error would (for tests of failure handling).
    pub fn fail_next_flushes(&self, n: u32) {
        self.inner.failing_flushes.store(n, Ordering::SeqCst);
    }

    /// Holds (or releases) every flush, so that tests can look at the store while writes are
    /// applied but not yet durable.
    pub fn hold_flushes(&self, hold: bool) {
        self.inner.holding.store(hold, Ordering::SeqCst);
    }

    /// Whether a commit is applied and waiting for its flush.
    pub fn unflushed(&self) -> bool {
        lock(&self.inner.commit).applied > self.inner.state.borrow().flushed
    }
}

impl Inner {
    fn with_db<T>(
        &self,
        f: impl FnOnce(&sled::Db) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let guard = read(&self.db);
        match guard.as_ref() {
            Some(db) => f(db),
            None => Err(EngineError::Io("the store is reopening".into())),
        }
    }

    /// A value as durably committed.
    fn durable_get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let live = self.with_db(|db| db.get(key).map_err(io))?;
        if self.pending_len.load(Ordering::SeqCst) > 0 {
            if let Some(pre) = read(&self.pending).get(key) {
                return Ok(pre.clone());
            }
        }
        Ok(live.map(bytes))
    }

    fn durable_scan(
        &self,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        overlay::scan(
            range,
            direction,
            limit,
            |r, d, n| self.with_db(|db| read_live(db, r, d, n)),
            |r| match self.pending_len.load(Ordering::SeqCst) {
                0 => 0,
                _ => read(&self.pending).count(r),
            },
            // As in `durable_get`: nothing pending now means what was read is durable.
            |r| match self.pending_len.load(Ordering::SeqCst) {
                0 => Vec::new(),
                _ => read(&self.pending).range(r),
            },
        )
    }

    /// Hands a message to the committer thread.
    fn submit(&self, message: Message) -> Result<(), EngineError> {
        self.jobs.send(message).map_err(|_| EngineError::Closed)
    }

    fn run_committer(&self, queue: mpsc::Receiver<Message>) {
        // One vector holds every group in turn: grown afresh per group, it was reallocated
        // several times for each (2% of a trigger load's CPU, on the one thread all writes
        // wait for).
        let mut group = Vec::with_capacity(MAX_GROUP);
        while let Ok(first) = queue.recv() {
            let mut message = Some(first);
            while let Some(m) = message.take() {
                match m {
                    Message::Commit(job) => group.push(*job),
                    Message::Snapshot(reply) => {
                        self.commit_group(&mut group);
                        let _ = reply.send(self.new_snapshot());
                    }
                    Message::Stop => {
                        self.commit_group(&mut group);
                        return;
                    }
                }
                if group.len() < MAX_GROUP {
                    message = queue.try_recv().ok();
                }
            }
            self.commit_group(&mut group);
        }
    }

    /// Validates a group of transactions in order and applies those that still hold as one
    /// batch (see the module documentation). Leaves `jobs` empty: each is answered, or dropped
    /// (its caller then sees the committer gone) when a read of sled fails midway.
    fn commit_group(&self, jobs: &mut Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        let mut s = lock(&self.commit);
        let refused = if s.closing {
            Some(EngineError::Closed)
        } else {
            s.failed.clone().map(EngineError::Io)
        };
        if let Some(error) = refused {
            for job in jobs.drain(..) {
                let _ = job.reply.send(Err(error.clone()));
            }
            return;
        }
        let guard = read(&self.db);
        let Some(db) = guard.as_ref() else {
            for job in jobs.drain(..) {
                let _ = job
                    .reply
                    .send(Err(EngineError::Io("the store is reopening".into())));
            }
            return;
        };
        // Everything applied before this group; the group becomes the next batch.
        let before = s.applied;
        let batch_id = before + 1;
        let mut next_seq = s.next_seq;
        let mut group: GroupWrites = BTreeMap::new();
        let mut sled_batch = sled::Batch::default();
        // The value before the group of every key it writes, in the order first written.
        let mut images: Vec<(Vec<u8>, Option<Bytes>)> = Vec::new();
        let mut publications = Vec::new();
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs.drain(..) {
            match job.still_valid(db, &group) {
                Ok(true) => {}
                Ok(false) => {
                    let _ = job.reply.send(Err(EngineError::Conflict));
                    continue;
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                    continue;
                }
            }
            if job.writes.is_empty() && job.adds.is_empty() && job.changes.is_empty() {
                // Read-only: it saw nothing of this group, so it is durable once everything
                // applied before the group is.
                replies.push((job.reply, Ok((before, None))));
                continue;
            }
            // Counters as this transaction's own writes and the group's earlier ones leave them.
            let mut sums: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            let mut summed = Ok(());
            for (key, delta) in &job.adds {
                summed = summed.and_then(|()| {
                    let now = match (sums.get(key), job.writes.get(key), group.get(key)) {
                        (Some(sum), _, _) => Some(Bytes::from(sum.clone())),
                        (None, Some(value), _) => value.clone().map(Bytes::from),
                        (None, None, Some(value)) => value.clone(),
                        (None, None, None) => db.get(key).map_err(io)?.map(bytes),
                    };
                    let sum = crate::engine::counter_plus(now.as_deref(), *delta)?;
                    sums.insert(key.clone(), sum);
                    Ok(())
                });
            }
            if let Err(e) = summed {
                let _ = job.reply.send(Err(e));
                continue;
            }
            let mut write = |key: Vec<u8>, value: Option<Bytes>| -> Result<(), EngineError> {
                if !group.contains_key(&key) {
                    images.push((key.clone(), db.get(&key).map_err(io)?.map(bytes)));
                }
                match &value {
                    Some(v) => sled_batch.insert(key.as_slice(), v.as_ref()),
                    None => sled_batch.remove(key.as_slice()),
                }
                group.insert(key, value);
                Ok(())
            };
            let mut written = Ok(());
            for (key, value) in job.writes {
                written = written.and_then(|()| write(key, value.map(Bytes::from)));
            }
            for (key, sum) in sums {
                written = written.and_then(|()| write(key, Some(Bytes::from(sum))));
            }
            let first_seq = next_seq;
            for change in job.changes {
                let seq = next_seq;
                next_seq += 1;
                let key = full_key(Keyspace::Changes, &seq.to_be_bytes());
                written = written.and_then(|()| write(key, Some(Bytes::from(change.payload))));
                for stamped in change.stamped {
                    let key = full_key(stamped.keyspace, &stamped.key(seq));
                    written = written.and_then(|()| write(key, Some(Bytes::from(stamped.value))));
                }
            }
            if let Err(e) = written {
                // A read of sled failed: fail the whole group, which is not applied.
                let _ = job.reply.send(Err(e.clone()));
                for (reply, _) in replies {
                    let _ = reply.send(Err(e.clone()));
                }
                return;
            }
            let changes = next_seq - first_seq;
            publications.push(Publication {
                batch: batch_id,
                first_seq,
                changes,
                callback: job.on_durable,
            });
            replies.push((
                job.reply,
                Ok((batch_id, (changes > 0).then_some(first_seq))),
            ));
        }
        if !images.is_empty() {
            if let Err(e) = self.apply(db, sled_batch, images, batch_id) {
                for (reply, answer) in replies {
                    // Read-only transactions stand; the group's writes were not applied.
                    let _ = reply.send(match answer {
                        Ok((batch, _)) if batch == before => answer,
                        _ => Err(e.clone()),
                    });
                }
                return;
            }
            s.applied = batch_id;
            s.next_seq = next_seq;
            s.publications.extend(publications);
            self.wake.notify_all();
        }
        drop(guard);
        drop(s);
        for (reply, answer) in replies {
            let _ = reply.send(answer);
        }
    }

    /// Records the pre-images of a batch (for the durable view and live snapshots), then
    /// applies it, while readers go on (they see its keys through the pre-images); a batch
    /// sled refuses leaves the pre-images as they were.
    fn apply(
        &self,
        db: &sled::Db,
        batch: sled::Batch,
        images: Vec<(Vec<u8>, Option<Bytes>)>,
        batch_id: u64,
    ) -> Result<(), EngineError> {
        for snapshot in self.live_snapshots() {
            let mut map = write(&snapshot);
            for (key, pre) in &images {
                map.entry(key.clone()).or_insert_with(|| pre.clone());
            }
        }
        let undo: Vec<Undo> = {
            let mut pending = write(&self.pending);
            let undo = images
                .into_iter()
                .map(|(key, pre)| pending.record(key, pre, batch_id))
                .collect();
            self.pending_len.store(pending.len(), Ordering::SeqCst);
            undo
        };
        db.apply_batch_unisolated(batch).map_err(|e| {
            let mut pending = write(&self.pending);
            for u in undo {
                pending.undo(u);
            }
            self.pending_len.store(pending.len(), Ordering::SeqCst);
            io(e)
        })
    }

    /// A snapshot of the durable state now; the committer thread calls it between groups.
    fn new_snapshot(&self) -> Arc<SnapshotImages> {
        let images: BTreeMap<Vec<u8>, Option<Bytes>> = read(&self.pending)
            .entries()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let images = Arc::new(RwLock::new(images));
        lock(&self.snapshots).push(Arc::downgrade(&images));
        images
    }

    fn run_flusher(&self) {
        let mut flushed = 0u64;
        loop {
            let (target, closing) = {
                let mut s = lock(&self.commit);
                while s.applied == flushed && !s.closing {
                    s = self.wake.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                (s.applied, s.closing)
            };
            if target > flushed {
                while self.holding.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let started = Instant::now();
                let result = if self
                    .failing_flushes
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    Err(EngineError::Io("injected flush failure".into()))
                } else {
                    self.with_db(|db| db.flush_unisolated().map(drop).map_err(io))
                };
                let took = started.elapsed();
                match result {
                    Ok(()) => {
                        let commits = self.settle(target);
                        if let Some(observer) = &self.observer {
                            observer(took, commits);
                        }
                    }
                    Err(e) => self.recover(target, e),
                }
                flushed = target;
            } else if closing {
                break;
            }
        }
        // Nothing is applied past `flushed` once closing: commits are refused.
        *write(&self.db) = None;
    }

    /// Makes batches up to `target` visible, runs their callbacks and wakes their committers;
    /// returns how many transactions that made durable.
    fn settle(&self, target: u64) -> u64 {
        {
            let mut pending = write(&self.pending);
            pending.settle(target);
            self.pending_len.store(pending.len(), Ordering::SeqCst);
        }
        let publications: Vec<Publication> = {
            let mut s = lock(&self.commit);
            let n = s
                .publications
                .iter()
                .take_while(|p| p.batch <= target)
                .count();
            s.publications.drain(..n).collect()
        };
        let commits = publications.len() as u64;
        let mut last = None;
        for p in publications {
            if let Some(callback) = p.callback {
                callback(p.first_seq);
            }
            if p.changes > 0 {
                last = Some(p.first_seq + p.changes - 1);
            }
        }
        if let Some(last) = last {
            self.seq.send_replace(last);
        }
        self.state.send_modify(|s| s.flushed = target);
        commits
    }

    /// Fails every batch up to `target`, then reopens the database and restores every key they
    /// wrote, retrying until that succeeds.
    fn recover(&self, target: u64, error: EngineError) {
        tracing::error!(error = %error, "flushing the store failed; failing the waiting writes and reopening");
        {
            let mut s = lock(&self.commit);
            s.failed = Some(error.to_string());
            s.publications.retain(|p| p.batch > target);
        }
        self.state.send_modify(|s| s.failed_upto = target);
        loop {
            // Reopening a database needs room for its log: on a full disk it would fail and
            // leave nothing to read from. Until there is room, the failed database (whose
            // cache still answers reads) stays.
            let room = fs2::available_space(&self.options.path).unwrap_or(0);
            if room >= REOPEN_ROOM {
                match self.restore() {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::error!(error = %e, "restoring the store after a failed flush failed; retrying in 1s")
                    }
                }
            }
            if lock(&self.commit).closing {
                return;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        tracing::info!("the store recovered from the failed flush");
    }

    fn restore(&self) -> Result<(), EngineError> {
        let mut s = lock(&self.commit);
        {
            let mut slot = write(&self.db);
            *slot = None;
            // sled holds a lock on its files until every handle is gone; the old one may take
            // a moment to let go.
            let mut tries = 0;
            let db = loop {
                match open_db(&self.options) {
                    Ok(db) => break db,
                    Err(e) if tries < 50 => {
                        tracing::debug!(error = %e, "reopening the store");
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(e),
                }
            };
            *slot = Some(db.clone());
            // Batches that reached the disk before the failure are undone. Usually none did,
            // and then nothing is written (a disk that is still full stays untouched).
            let mut batch = sled::Batch::default();
            let mut differs = false;
            for (key, pre) in read(&self.pending).entries() {
                let on_disk = db.get(key).map_err(io)?;
                if on_disk.as_deref() != pre.as_deref() {
                    differs = true;
                }
                match pre {
                    Some(value) => batch.insert(key.as_slice(), value.as_ref()),
                    None => batch.remove(key.as_slice()),
                }
            }
            if differs {
                db.apply_batch_unisolated(batch).map_err(io)?;
                db.flush_unisolated().map_err(io)?;
            }
            s.next_seq = last_seq_in(&db)? + 1;
        }
        let mut pending = write(&self.pending);
        pending.clear();
        self.pending_len.store(0, Ordering::SeqCst);
        s.failed = None;
        Ok(())
    }

    /// Waits until batch `batch` is durable (or lost to a failure).
    async fn wait_durable(&self, batch: u64) -> Result<(), EngineError> {
        if batch == 0 {
            return Ok(());
        }
        let mut rx = self.state.subscribe();
        let state = *rx
            .wait_for(|s| s.flushed >= batch || s.failed_upto >= batch)
            .await
            .map_err(|_| EngineError::Closed)?;
        if state.flushed >= batch {
            Ok(())
        } else {
            Err(EngineError::Io(
                "the write could not be made durable".into(),
            ))
        }
    }

    fn live_snapshots(&self) -> Vec<Arc<SnapshotImages>> {
        let mut snapshots = lock(&self.snapshots);
        snapshots.retain(|w| w.strong_count() > 0);
        snapshots.iter().filter_map(Weak::upgrade).collect()
    }
}

#[async_trait]
impl Engine for SledEngine {
    fn backend(&self) -> &'static str {
        "sled"
    }

    async fn stored_bytes(&self) -> Result<Option<u64>, EngineError> {
        // It reads the metadata of every file of the store: not on an async worker.
        let db = self.inner.with_db(|db| Ok(db.clone()))?;
        tokio::task::spawn_blocking(move || db.size_on_disk())
            .await
            .map_err(|e| EngineError::Io(format!("the size of the store: {e}")))?
            .map(Some)
            .map_err(io)
    }

    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.inner.durable_get(&full_key(ks, key))
    }

    async fn get_many(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Bytes>>, EngineError> {
        // One key buffer and no future per read: a list page reads a document per entry.
        let mut values = Vec::with_capacity(keys.len());
        let mut full = Vec::new();
        for key in keys {
            write_full_key(ks, key, &mut full);
            values.push(self.inner.durable_get(&full)?);
        }
        Ok(values)
    }

    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let entries = self
            .inner
            .durable_scan(&full_range(ks, range), direction, limit)?;
        Ok(strip(entries))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>, EngineError> {
        Ok(Box::new(SledTransaction {
            inner: self.inner.clone(),
            reads: Vec::new(),
            scans: Vec::new(),
            expects: Vec::new(),
            writes: BTreeMap::new(),
            adds: Vec::new(),
            changes: Vec::new(),
        }))
    }

    async fn snapshot(&self) -> Result<Box<dyn Snapshot>, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.inner.submit(Message::Snapshot(reply))?;
        let images = answer.await.map_err(|_| EngineError::Closed)?;
        Ok(Box::new(SledSnapshot {
            inner: self.inner.clone(),
            images,
        }))
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.inner.seq.subscribe()
    }

    async fn resume_sequence(&self) -> Result<u64, EngineError> {
        let last = self.inner.with_db(last_seq_in)?;
        {
            let mut s = lock(&self.inner.commit);
            s.next_seq = s.next_seq.max(last + 1);
        }
        self.inner.seq.send_if_modified(|current| {
            let moved = last > *current;
            *current = (*current).max(last);
            moved
        });
        Ok(last)
    }

    async fn close(&self) -> Result<(), EngineError> {
        // The committer applies what is queued and stops; then the flusher flushes it and
        // stops.
        let _ = self.inner.submit(Message::Stop);
        let threads: Vec<_> = std::mem::take(&mut *lock(&self.threads));
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut threads = threads.into_iter();
            let committer = threads.next();
            let ok = committer.is_none_or(|t| t.join().is_ok());
            {
                let mut s = lock(&inner.commit);
                s.closing = true;
                inner.wake.notify_all();
            }
            let joined = threads.all(|t| t.join().is_ok()) && ok;
            // sled's own threads let go of its files a moment after the last handle: wait for
            // that, so that the directory opens again as soon as `close` returns.
            let deadline = Instant::now() + Duration::from_secs(5);
            while in_use(&inner.options.path) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            joined
        })
        .await
        .ok()
        .filter(|ok| *ok)
        .map(drop)
        .ok_or_else(|| EngineError::Io("a storage thread panicked".into()))
    }
}

/// A range a transaction scanned, and what it saw.
struct ScanRead {
    range: KeyRange,
    direction: Direction,
    limit: usize,
    seen: Vec<Entry>,
}

struct SledTransaction {
    inner: Arc<Inner>,
    /// Keys read (full), and the value seen.
    reads: Vec<(Vec<u8>, Option<sled::IVec>)>,
    scans: Vec<ScanRead>,
    expects: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    adds: Vec<(Vec<u8>, i64)>,
    changes: Vec<ChangeAppend>,
}

#[async_trait]
impl Transaction for SledTransaction {
    async fn get(&mut self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let key = full_key(ks, key);
        let value = self.inner.with_db(|db| db.get(&key).map_err(io))?;
        let out = value.clone().map(bytes);
        self.reads.push((key, value));
        Ok(out)
    }

    async fn scan(
        &mut self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let range = full_range(ks, range);
        let seen = self
            .inner
            .with_db(|db| read_live(db, &range, direction, limit))?;
        let out = strip(seen.clone());
        self.scans.push(ScanRead {
            range,
            direction,
            limit,
            seen,
        });
        Ok(out)
    }

    fn put(&mut self, ks: Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(full_key(ks, &key), Some(value));
    }

    fn delete(&mut self, ks: Keyspace, key: Vec<u8>) {
        self.writes.insert(full_key(ks, &key), None);
    }

    fn expect(&mut self, ks: Keyspace, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.expects.push((full_key(ks, &key), value));
    }

    fn add(&mut self, ks: Keyspace, key: Vec<u8>, delta: i64) {
        self.adds.push((full_key(ks, &key), delta));
    }

    fn append_change(&mut self, change: ChangeAppend) {
        self.changes.push(change);
    }

    async fn commit(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Committed, EngineError> {
        let inner = self.inner.clone();
        let (batch, first_seq) = self.hand_over(on_durable).await?;
        inner.wait_durable(batch).await?;
        Ok(Committed { first_seq })
    }

    async fn commit_applied(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Applied, EngineError> {
        let inner = self.inner.clone();
        let (batch, first_seq) = self.hand_over(on_durable).await?;
        Ok(Applied {
            first_seq,
            durable: Box::pin(async move { inner.wait_durable(batch).await }),
        })
    }
}

impl SledTransaction {
    /// Hands the transaction to the committer; returns the batch it was applied in and the
    /// sequence of its first change.
    async fn hand_over(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<(u64, Option<u64>), EngineError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            reads: self.reads,
            scans: self.scans,
            expects: self.expects,
            writes: self.writes,
            adds: self.adds,
            changes: self.changes,
            on_durable,
            reply,
        };
        self.inner.submit(Message::Commit(Box::new(job)))?;
        answer.await.map_err(|_| EngineError::Closed)?
    }
}

struct SledSnapshot {
    inner: Arc<Inner>,
    images: Arc<SnapshotImages>,
}

#[async_trait]
impl Snapshot for SledSnapshot {
    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let key = full_key(ks, key);
        let live = self.inner.with_db(|db| db.get(&key).map_err(io))?;
        if let Some(pre) = read(&self.images).get(&key) {
            return Ok(pre.clone());
        }
        Ok(live.map(bytes))
    }

    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        let entries = overlay::scan(
            &full_range(ks, range),
            direction,
            limit,
            |r, d, n| self.inner.with_db(|db| read_live(db, r, d, n)),
            |r| overlay::in_range(&read(&self.images), r).count(),
            |r| {
                overlay::in_range(&read(&self.images), r)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            },
        )?;
        Ok(strip(entries))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Condvar, Mutex};
    use std::time::Duration;

    /// The pattern of the committer and the flusher, on sled alone: three writers apply batches
    /// of 20 to 220 keys one at a time with `apply_batch_unisolated`, and each waits for a
    /// flush that began after its batch, so that nothing but the flusher can finish a flush. A
    /// flush whose target fell inside a batch being applied waited until some later write
    /// sealed the batch's last log buffer: here, for ever. Before sled's batch gate
    /// (`vendor/sled/EMBERBASE.md`) this stalled within a few hundred to a few thousand
    /// batches on tmpfs, where flushes are fast enough to overlap batches often.
    #[test]
    fn flushes_finish_while_batches_are_applied() {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
            .unwrap();
        // (batches applied, batches flushed)
        let state = Arc::new((Mutex::new((0u64, 0u64)), Condvar::new()));
        let flusher = {
            let (db, state) = (db.clone(), state.clone());
            std::thread::spawn(move || loop {
                let (lock, changed) = &*state;
                let target = {
                    let mut s = lock.lock().unwrap();
                    while s.0 == s.1 && s.0 != u64::MAX {
                        s = changed.wait(s).unwrap();
                    }
                    s.0
                };
                if target == u64::MAX {
                    return;
                }
                db.flush_unisolated().unwrap();
                lock.lock().unwrap().1 = target;
                changed.notify_all();
            })
        };
        let writers: Vec<_> = (0..3u64)
            .map(|writer| {
                let (db, state) = (db.clone(), state.clone());
                std::thread::spawn(move || {
                    let (lock, changed) = &*state;
                    for round in 0..3_000u64 {
                        let mut batch = sled::Batch::default();
                        for k in 0..20 + (round * 7 + writer * 13) % 200 {
                            let key = format!("w{writer}k{:05}", (round * 31 + k) % 5_000);
                            batch.insert(key.as_bytes(), vec![b'x'; 300 + (k as usize % 400)]);
                        }
                        let mut s = lock.lock().unwrap();
                        db.apply_batch_unisolated(batch).unwrap();
                        s.0 += 1;
                        let batch = s.0;
                        changed.notify_all();
                        while s.1 < batch {
                            let (next, waited) =
                                changed.wait_timeout(s, Duration::from_secs(20)).unwrap();
                            s = next;
                            assert!(
                                !waited.timed_out() || s.1 >= batch,
                                "batch {batch} was not flushed after 20 s: a flush waits for \
                                 a later write"
                            );
                        }
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let (lock, changed) = &*state;
        lock.lock().unwrap().0 = u64::MAX;
        changed.notify_all();
        flusher.join().unwrap();
    }
}
