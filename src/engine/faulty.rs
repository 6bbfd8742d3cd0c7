//! A wrapper engine that fails on demand, for testing what the layers above do when storage
//! fails: a commit that fails before it is applied (as a full disk or an I/O error would),
//! reads that fail, and commits that conflict. Everything else goes to the wrapped engine.

use super::Bytes;
use super::{
    Applied, ChangeAppend, Committed, Direction, Engine, EngineError, Entry, KeyRange, Keyspace,
    OnDurable, RangeScan, Snapshot, Transaction,
};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// What to fail, counted down as failures are injected.
#[derive(Default)]
struct Faults {
    commits: AtomicU32,
    conflicts: AtomicU32,
    reads: AtomicU32,
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// An engine whose next commits or reads fail when told to.
#[derive(Clone)]
pub struct FaultyEngine {
    inner: Arc<dyn Engine>,
    faults: Arc<Faults>,
}

impl FaultyEngine {
    pub fn new(inner: Arc<dyn Engine>) -> FaultyEngine {
        FaultyEngine {
            inner,
            faults: Arc::default(),
        }
    }

    /// The next `n` commits that write fail with an I/O error, writing nothing.
    pub fn fail_commits(&self, n: u32) {
        self.faults.commits.store(n, Ordering::SeqCst);
    }

    /// The next `n` commits that write fail with a conflict, writing nothing.
    pub fn conflict_commits(&self, n: u32) {
        self.faults.conflicts.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads (engine or transaction, get or scan) fail with an I/O error.
    pub fn fail_reads(&self, n: u32) {
        self.faults.reads.store(n, Ordering::SeqCst);
    }

    fn read_fault(&self) -> Result<(), EngineError> {
        match take(&self.faults.reads) {
            true => Err(EngineError::Io("injected read failure".into())),
            false => Ok(()),
        }
    }
}

#[async_trait]
impl Engine for FaultyEngine {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn stored_bytes(&self) -> Result<Option<u64>, EngineError> {
        self.inner.stored_bytes().await
    }

    async fn get(&self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.read_fault()?;
        self.inner.get(ks, key).await
    }

    async fn scan(
        &self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        self.read_fault()?;
        self.inner.scan(ks, range, direction, limit).await
    }

    async fn begin(&self) -> Result<Box<dyn Transaction>, EngineError> {
        Ok(Box::new(FaultyTransaction {
            inner: self.inner.begin().await?,
            engine: self.clone(),
            writes: false,
        }))
    }

    async fn snapshot(&self) -> Result<Box<dyn Snapshot>, EngineError> {
        self.inner.snapshot().await
    }

    fn watch(&self) -> watch::Receiver<u64> {
        self.inner.watch()
    }

    async fn resume_sequence(&self) -> Result<u64, EngineError> {
        self.inner.resume_sequence().await
    }

    async fn close(&self) -> Result<(), EngineError> {
        self.inner.close().await
    }
}

struct FaultyTransaction {
    inner: Box<dyn Transaction>,
    engine: FaultyEngine,
    writes: bool,
}

#[async_trait]
impl Transaction for FaultyTransaction {
    async fn get(&mut self, ks: Keyspace, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.engine.read_fault()?;
        self.inner.get(ks, key).await
    }

    async fn get_many(
        &mut self,
        ks: Keyspace,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Bytes>>, EngineError> {
        self.engine.read_fault()?;
        self.inner.get_many(ks, keys).await
    }

    async fn scan(
        &mut self,
        ks: Keyspace,
        range: &KeyRange,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<Entry>, EngineError> {
        self.engine.read_fault()?;
        self.inner.scan(ks, range, direction, limit).await
    }

    async fn scan_many(
        &mut self,
        ks: Keyspace,
        scans: &[RangeScan],
    ) -> Result<Vec<Vec<Entry>>, EngineError> {
        self.engine.read_fault()?;
        self.inner.scan_many(ks, scans).await
    }

    fn put(&mut self, ks: Keyspace, key: Vec<u8>, value: Vec<u8>) {
        self.writes = true;
        self.inner.put(ks, key, value);
    }

    fn delete(&mut self, ks: Keyspace, key: Vec<u8>) {
        self.writes = true;
        self.inner.delete(ks, key);
    }

    fn expect(&mut self, ks: Keyspace, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.inner.expect(ks, key, value);
    }

    fn add(&mut self, ks: Keyspace, key: Vec<u8>, delta: i64) {
        self.writes = true;
        self.inner.add(ks, key, delta);
    }

    fn append_change(&mut self, change: ChangeAppend) {
        self.writes = true;
        self.inner.append_change(change);
    }

    async fn commit(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Committed, EngineError> {
        self.fault()?;
        self.inner.commit(on_durable).await
    }

    async fn commit_applied(
        self: Box<Self>,
        on_durable: Option<OnDurable>,
    ) -> Result<Applied, EngineError> {
        self.fault()?;
        self.inner.commit_applied(on_durable).await
    }
}

impl FaultyTransaction {
    /// The failure injected into this commit, if any.
    fn fault(&self) -> Result<(), EngineError> {
        if self.writes {
            if take(&self.engine.faults.commits) {
                return Err(EngineError::Io("injected commit failure".into()));
            }
            if take(&self.engine.faults.conflicts) {
                return Err(EngineError::Conflict);
            }
        }
        Ok(())
    }
}
