//! The storage engine seam: an ordered, transactional key-value store with named keyspaces, a
//! change feed and durable commits. Everything Emberbase stores goes through one [`Engine`];
//! the commit engine above it (`store/`) turns documents, files, accounts and configuration
//! into keys and values, so a backend knows nothing about them.
//!
//! A backend promises:
//!
//! - **Atomic, serializable transactions.** A [`Transaction`] reads, buffers writes, appends
//!   change records and commits all or nothing. If anything it read (a key, a scanned range,
//!   an [`expect`](Transaction::expect)ed value) changed before it commits, the commit fails
//!   with [`EngineError::Conflict`] and nothing is written; [`retry`] runs a transaction again.
//!   A transaction's reads see every commit applied before them, durable or not, but do not see
//!   the transaction's own writes.
//! - **Durable before visible.** `commit` returns only once the transaction is on stable
//!   storage. The engine's own reads ([`Engine::get`], [`Engine::scan`]) and its change feed
//!   never show a write that a crash could still lose. A transaction that only read returns
//!   from `commit` once every write it could have seen is durable, so a decision it made (for
//!   example a `409`) never rests on data a crash could lose. A failed commit leaves no trace.
//! - **A dense change feed.** [`Transaction::append_change`] adds a record to the
//!   [`Keyspace::Changes`] keyspace at the next sequence number (8-byte big-endian key), in
//!   commit order, with no gaps, and writes its *stamped* records in the same commit: records
//!   whose keys end with that sequence number (as FoundationDB's versionstamped keys do), such
//!   as a per-document history or an outbox ordered by commit. [`Engine::watch`] follows the
//!   sequence of the newest durable change.
//! - **Consistent snapshots.** [`Engine::snapshot`] reads one point in time while writes go on.
//!
//! New backends pass [`conformance`], the same suite the sled backend passes.

pub mod conformance;
pub mod faulty;
mod overlay;
pub mod postgres;
pub mod sled;

use async_trait::async_trait;
pub use bytes::Bytes;
use std::future::Future;
use std::time::Duration;
use tokio::sync::watch;

/// A named keyspace. Keys in different keyspaces never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Keyspace {
    /// Documents: `collection 00 id`.
    Documents,
    /// Secondary index entries.
    Indexes,
    /// Change records, by sequence number (written by the engine only, through
    /// [`Transaction::append_change`]; rewritten or deleted like any key when pruned).
    Changes,
    /// Per-subject change history, `prefix ++ seq` (a [`Stamped`] record of each change).
    History,
    /// Configuration (collections).
    Meta,
    /// System records (accounts, tokens, outboxes, functions).
    System,
    /// File records.
    Files,
}

/// Keys from `start` (inclusive) to `end` (exclusive; `None`: the end of the keyspace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key of a keyspace.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Vec::new(),
            end: None,
        }
    }

    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            start: start.into(),
            end: Some(end.into()),
        }
    }

    /// Every key from `start` on.
    pub fn from(start: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange {
            start: start.into(),
            end: None,
        }
    }

    /// Every key that starts with `prefix`.
    pub fn prefix(prefix: &[u8]) -> KeyRange {
        KeyRange {
            start: prefix.to_vec(),
            end: prefix_end(prefix),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.end
            .as_deref()
            .is_some_and(|end| end <= self.start.as_slice())
    }
}

/// The smallest key greater than every key that starts with `prefix` (`None`: no such key,
/// the prefix is all `FF`).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The smallest key greater than `key` itself.
pub fn successor(key: &[u8]) -> Vec<u8> {
    let mut k = key.to_vec();
    k.push(0);
    k
}

/// One range of [`Transaction::scan_many`]: what [`Transaction::scan`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeScan {
    pub range: KeyRange,
    pub direction: Direction,
    pub limit: usize,
}

/// The order a scan yields keys in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Reverse,
}

/// A key and its value.
pub type Entry = (Bytes, Bytes);

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    /// Something the transaction read changed before it committed. Nothing was written.
    #[error("a concurrent transaction changed what this one read")]
    Conflict,
    /// The storage failed (disk full, I/O error). Nothing of the failed commit was written.
    #[error("storage failure: {0}")]
    Io(String),
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    #[error("the storage engine is closed")]
    Closed,
}

/// A change record to append in a transaction's commit.
#[derive(Debug, Clone, Default)]
pub struct ChangeAppend {
    pub payload: Vec<u8>,
    /// Records written in the same commit, each at `key prefix ++ seq` (the change's sequence,
    /// 8 bytes big-endian).
    pub stamped: Vec<Stamped>,
}

/// A record whose key ends with the sequence of the change it is appended with.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub keyspace: Keyspace,
    pub prefix: Vec<u8>,
    pub value: Vec<u8>,
}

impl Stamped {
    /// The full key of this record for sequence `seq`.
    pub fn key(&self, seq: u64) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.prefix.len() + 8);
        key.extend_from_slice(&self.prefix);
        key.extend_from_slice(&seq.to_be_bytes());
        key
    }
}

/// Called once a commit is durable, with the sequence number of its first appended change.
/// Callbacks run in commit order, never for a commit that failed, and whether or not the
/// committing task is still waiting.
pub type OnDurable = Box<dyn FnOnce(u64) + Send>;

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The sequence of the first change the transaction appended (and the following ones,
    /// densely, for the rest); `None` if it appended none.
    pub first_seq: Option<u64>,
}

/// A commit that is applied but not necessarily durable yet: see
/// [`Transaction::commit_applied`].
pub struct Applied {
    /// As in [`Committed`].
    pub first_seq: Option<u64>,
    /// Resolves once the commit is durable, or fails if it was lost, leaving no trace.
    pub durable: futures_util::future::BoxFuture<'static, Result<(), EngineError>>,
}

/// An ordered transactional key-value store with named keyspaces and a change feed.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// The backend's name, for logs and metrics.
    fn backend(&self) -> &'static str;

    /// Whether other processes commit to the same store (a cluster). Their changes reach this
    /// one's [`watch`](Engine::watch) and the [`Keyspace::Changes`] records but run no
    /// `on_durable` callback here, so consumers follow the stored feed instead.
    fn shared(&self) -> bool {
        false
    }

    /// A value as durably committed.
    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError>;

    /// The durably committed values of several keys, in their order (`None` for an absent
    /// one). A backend that pays a round trip per read reads them at once.
    async fn get_many(
        &self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Bytes>>, EngineError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(ks, key).await?);
        }
        Ok(values)
    }

    /// At most `limit` durably committed entries of `range`, in `direction` order.
    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError>;

    /// A read-write transaction.
    async fn begin(&self) -> Result<Box<dyn Transaction>, EngineError>;

    /// A consistent view of every keyspace as durably committed now, which later commits do
    /// not change.
    async fn snapshot(&self) -> Result<Box<dyn Snapshot>, EngineError>;

    /// The sequence of the newest durable change (0 before the first), and its updates.
    fn watch(&self) -> watch::Receiver<u64>;

    /// After change records were loaded with plain `put`s (a restore into an empty store, with
    /// no other writer): makes the sequence continue after the newest of them, and returns it.
    async fn resume_sequence(&self) -> Result<u64, EngineError>;

    /// Makes everything committed durable and stops; later calls fail with `Closed`.
    async fn close(&self) -> Result<(), EngineError>;

    /// How many bytes the store takes where it keeps them (its files on disk, its database),
    /// when the backend can tell.
    async fn stored_bytes(&self) -> Result<Option<u64>, EngineError> {
        Ok(None)
    }
}

/// A read-write transaction. Dropping it without committing writes nothing.
#[async_trait]
pub trait Transaction: Send {
    async fn get(&mut self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError>;

    /// The values of several keys of `ks`, in their order (`None` for an absent one), each
    /// checked at the commit as a [`get`](Transaction::get) is. A backend that pays a round
    /// trip per read reads them at once.
    async fn get_many(
        &mut self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Bytes>>, EngineError> {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(self.get(ks, key).await?);
        }
        Ok(values)
    }

    async fn scan(
        &mut self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError>;

    /// Several scans of `ks`, each as [`scan`](Transaction::scan) returns it, in their order,
    /// and checked at the commit as each of them is. A backend that pays a round trip per read
    /// makes them at once.
    async fn scan_many(
        &mut self,
        ks: Keyspace,
        scans: &[RangeScan],
    ) -> Result<Vec<Vec<Entry>>, EngineError> {
        let mut found = Vec::with_capacity(scans.len());
        for scan in scans {
            found.push(
                self.scan(ks, &scan.range, scan.direction, scan.limit)
                    .await?,
            );
        }
        Ok(found)
    }

    fn put(&mut self, ks: Keyspace, key: Vec<u8>, value: Vec<u8>);

    fn delete(&mut self, ks: Keyspace, key: Vec<u8>);

    /// The commit fails with `Conflict` unless `key` holds `value` (`None`: absent) then.
    fn expect(&mut self, ks: Keyspace, key: Vec<u8>, value: Option<Vec<u8>>);

    /// Adds `delta` to the counter at `key` when the commit applies, without reading it, so
    /// that concurrent adds never conflict with each other (see [`counter`]). Applied after
    /// the transaction's puts and deletes.
    fn add(&mut self, ks: Keyspace, key: Vec<u8>, delta: i64);

    fn append_change(&mut self, change: ChangeAppend);

    /// Commits atomically and durably (see the module documentation).
    async fn commit(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Committed, EngineError>;

    /// Commits atomically as [`commit`](Transaction::commit) does, but may return once the
    /// commit is ordered and every later transaction sees it, before it is durable. The
    /// engine's own reads and its change feed still show it only once it is durable, and
    /// [`Applied::durable`] says when that is (or that it was lost). For a caller that holds
    /// back everything resting on the write until then. A backend whose commits are durable
    /// when applied keeps this default.
    async fn commit_applied(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Applied, EngineError> {
        let Committed { first_seq } = self.commit(on_durable).await?;
        Ok(Applied {
            first_seq,
            durable: Box::pin(std::future::ready(Ok(()))),
        })
    }
}

/// The value of a counter that [`Transaction::add`] maintains: an 8-byte big-endian signed
/// integer; an absent key counts as 0.
pub fn counter(value: Option<&[u8]>) -> Result<i64, EngineError> {
    match value {
        None => Ok(0),
        Some(bytes) => <[u8; 8]>::try_from(bytes)
            .map(i64::from_be_bytes)
            .map_err(|_| EngineError::Corrupt(format!("a counter of {} bytes", bytes.len()))),
    }
}

/// `value` plus `delta`, as a counter's stored bytes.
pub fn counter_plus(value: Option<&[u8]>, delta: i64) -> Result<Vec<u8>, EngineError> {
    Ok(counter(value)?.saturating_add(delta).to_be_bytes().to_vec())
}

/// A point-in-time view (see [`Engine::snapshot`]).
#[async_trait]
pub trait Snapshot: Send + Sync {
    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError>;

    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError>;
}

/// Attempts at least this many times before a conflict is returned to the caller.
const RETRIES: u32 = 64;

/// Keeps attempting past [`RETRIES`] until this much time has passed since the first attempt:
/// under load each attempt is slower, and a writer that keeps losing a hot key to writers that
/// re-read at once still gets its turn instead of a conflict.
const RETRY_BUDGET: Duration = Duration::from_secs(10);

/// The longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Runs `attempt` until it does not fail with a conflict: at least 64 times, and past that
/// until ten seconds have passed. `attempt` must start its own transaction each time. The pause before each retry is random, up to a bound
/// that grows with the attempts, so writers that keep losing the same key do not keep meeting
/// the same winners at the same moments.
pub async fn retry<T, E, F, Fut>(mut attempt: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: IsConflict,
{
    let started = std::time::Instant::now();
    let mut tries = 0;
    loop {
        match attempt().await {
            Err(e)
                if e.is_conflict() && (tries + 1 < RETRIES || started.elapsed() < RETRY_BUDGET) =>
            {
                tries += 1;
                let bound = Duration::from_micros(100 << tries.min(8)).min(MAX_PAUSE);
                let pause = rand::Rng::gen_range(&mut rand::thread_rng(), bound / 4..=bound);
                tokio::time::sleep(pause).await;
            }
            other => return other,
        }
    }
}

/// Errors that may be a transaction conflict, which [`retry`] retries.
pub trait IsConflict {
    fn is_conflict(&self) -> bool;
}

impl IsConflict for EngineError {
    fn is_conflict(&self) -> bool {
        matches!(self, EngineError::Conflict)
    }
}
