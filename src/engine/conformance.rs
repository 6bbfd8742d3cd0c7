//! The conformance suite every [`Engine`] backend passes: run [`run`] with a [`Backend`] that
//! opens the store under test. It panics, with what went wrong, at the first failed check.
//!
//! ```no_run
//! # async fn demo(backend: &dyn emberbase::engine::conformance::Backend) {
//! emberbase::engine::conformance::run(backend).await;
//! # }
//! ```

use super::faulty::FaultyEngine;
use super::{
    counter, retry, ChangeAppend, Direction, Engine, EngineError, KeyRange, Keyspace, RangeScan,
    Stamped, Transaction,
};
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The store under test.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens the store; after the engine it returned last is closed, opens the same data again.
    async fn open(&self) -> Arc<dyn Engine>;

    /// Makes the next flush of the engine opened last fail as an I/O error would, after its
    /// batches were applied. `false` if the backend has no such hook.
    fn fail_next_flush(&self) -> bool;

    /// Holds (or releases) the flushes of the engine opened last, so that commits are applied
    /// but not durable meanwhile. `false` if the backend has no such hook.
    fn hold_flushes(&self, hold: bool) -> bool;
}

/// Runs every check against a freshly opened, empty store.
pub async fn run(backend: &dyn Backend) {
    let engine = backend.open().await;
    atomic_commit(&*engine).await;
    conflicts(&*engine).await;
    get_many_conflicts(&*engine).await;
    scan_conflicts(&*engine).await;
    expectations(&*engine).await;
    ordered_scans(&*engine).await;
    feed_order(&*engine).await;
    resumed_sequence(&*engine).await;
    outbox_claims(&*engine).await;
    concurrent_increments(engine.clone()).await;
    counters(engine.clone()).await;
    snapshots(&*engine).await;
    snapshots_under_concurrent_commits(engine.clone()).await;
    stored_bytes(&*engine).await;
    injected_commit_failures(engine.clone()).await;
    if backend.hold_flushes(true) {
        durable_before_visible(backend, engine.clone()).await;
    }
    if backend.fail_next_flush() {
        failed_flush_leaves_no_trace(&*engine).await;
    }
    let last = *engine.watch().borrow();
    ok(engine.close().await, "close");
    feed_resumes_after_restart(backend, last).await;
}

fn ok<T>(result: Result<T, EngineError>, what: &str) -> T {
    result.unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn put_commit(engine: &dyn Engine, writes: &[(Keyspace, &[u8], &[u8])]) {
    let mut txn = ok(engine.begin().await, "begin");
    for (ks, k, v) in writes {
        txn.put(*ks, k.to_vec(), v.to_vec());
    }
    ok(txn.commit(None).await, "commit");
}

async fn value(engine: &dyn Engine, ks: Keyspace, key: &[u8]) -> Option<Vec<u8>> {
    ok(engine.get(ks, key).await, "get").map(|b| b.to_vec())
}

/// A change, with a history entry (an empty stamped record) under `history` if given.
fn change(history: Option<&[u8]>, payload: &[u8]) -> ChangeAppend {
    ChangeAppend {
        payload: payload.to_vec(),
        stamped: history
            .map(|prefix| Stamped {
                keyspace: Keyspace::History,
                prefix: prefix.to_vec(),
                value: Vec::new(),
            })
            .into_iter()
            .collect(),
    }
}

/// A document, its index entry, its change record and an outbox record commit together, and
/// the durable callback sees the change's sequence.
async fn atomic_commit(engine: &dyn Engine) {
    let before = *engine.watch().borrow();
    let mut txn = ok(engine.begin().await, "begin");
    txn.put(Keyspace::Documents, b"c\0a".to_vec(), b"doc".to_vec());
    txn.put(Keyspace::Indexes, b"c\0f\0x\0a".to_vec(), b"a".to_vec());
    let mut created = change(Some(b"c\0a\0"), b"created");
    created.stamped.push(Stamped {
        keyspace: Keyspace::System,
        prefix: b"event:f\0".to_vec(),
        value: b"evt".to_vec(),
    });
    txn.append_change(created);
    let seen = Arc::new(Mutex::new(None));
    let sink = seen.clone();
    let committed = ok(
        txn.commit(Some(Box::new(move |seq| {
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(seq)
        })))
        .await,
        "commit",
    );
    let seq = committed.first_seq.unwrap_or_else(|| panic!("no seq"));
    assert_eq!(
        seq,
        before + 1,
        "the first change follows the last durable one"
    );
    assert_eq!(*seen.lock().unwrap_or_else(|p| p.into_inner()), Some(seq));
    assert_eq!(*engine.watch().borrow(), seq, "watch shows the durable seq");
    assert_eq!(
        value(engine, Keyspace::Documents, b"c\0a").await.as_deref(),
        Some(&b"doc"[..])
    );
    assert!(value(engine, Keyspace::Indexes, b"c\0f\0x\0a")
        .await
        .is_some());
    let event = [&b"event:f\0"[..], &seq.to_be_bytes()].concat();
    let stamped = value(engine, Keyspace::System, &event).await;
    assert_eq!(
        stamped.as_deref(),
        Some(&b"evt"[..]),
        "a stamped record ends with its seq"
    );
    let record = value(engine, Keyspace::Changes, &seq.to_be_bytes()).await;
    assert_eq!(record.as_deref(), Some(&b"created"[..]));
    let mut history = b"c\0a\0".to_vec();
    history.extend_from_slice(&seq.to_be_bytes());
    assert_eq!(
        value(engine, Keyspace::History, &history).await.as_deref(),
        Some(&b""[..])
    );
    // Keyspaces are separate: the same key elsewhere is absent.
    assert!(value(engine, Keyspace::Files, b"c\0a").await.is_none());
    // Several keys at once, in their order, absent ones as `None`.
    let many = ok(
        engine
            .get_many(
                Keyspace::Documents,
                &[b"nope".to_vec(), b"c\0a".to_vec(), b"c\0a".to_vec()],
            )
            .await,
        "get_many",
    );
    let many: Vec<Option<Vec<u8>>> = many.into_iter().map(|v| v.map(|b| b.to_vec())).collect();
    assert_eq!(many, [None, Some(b"doc".to_vec()), Some(b"doc".to_vec())]);
}

/// A transaction whose read changed before it committed fails, and writes nothing; a retry
/// sees the new value.
async fn conflicts(engine: &dyn Engine) {
    put_commit(engine, &[(Keyspace::Meta, b"k", b"1")]).await;
    let mut a = ok(engine.begin().await, "begin");
    assert_eq!(
        ok(a.get(Keyspace::Meta, b"k").await, "get").as_deref(),
        Some(&b"1"[..])
    );
    a.put(Keyspace::Meta, b"k".to_vec(), b"from a".to_vec());
    a.put(Keyspace::Meta, b"other".to_vec(), b"from a".to_vec());
    put_commit(engine, &[(Keyspace::Meta, b"k", b"2")]).await;
    assert_eq!(a.commit(None).await, Err(EngineError::Conflict));
    assert_eq!(
        value(engine, Keyspace::Meta, b"k").await.as_deref(),
        Some(&b"2"[..])
    );
    assert!(
        value(engine, Keyspace::Meta, b"other").await.is_none(),
        "a conflict writes nothing"
    );

    // A scanned range that gains a key conflicts too (no phantoms).
    let mut b = ok(engine.begin().await, "begin");
    let seen = ok(
        b.scan(
            Keyspace::Meta,
            &KeyRange::prefix(b"p/"),
            Direction::Forward,
            10,
        )
        .await,
        "scan",
    );
    assert!(seen.is_empty());
    b.put(Keyspace::Meta, b"count".to_vec(), b"0".to_vec());
    put_commit(engine, &[(Keyspace::Meta, b"p/1", b"x")]).await;
    assert_eq!(b.commit(None).await, Err(EngineError::Conflict));

    // A write to a key nobody read does not conflict.
    let mut c = ok(engine.begin().await, "begin");
    let _ = ok(c.get(Keyspace::Meta, b"k").await, "get");
    c.put(Keyspace::Meta, b"c".to_vec(), b"1".to_vec());
    put_commit(engine, &[(Keyspace::Meta, b"unrelated", b"x")]).await;
    ok(c.commit(None).await, "commit without a conflict");
}

/// Several keys read at once read what each would alone, and each is checked at the commit:
/// a present key that changes, or an absent one that appears, conflicts.
async fn get_many_conflicts(engine: &dyn Engine) {
    put_commit(
        engine,
        &[(Keyspace::Meta, b"m1", b"1"), (Keyspace::Meta, b"m2", b"2")],
    )
    .await;
    let keys = [b"m1".to_vec(), b"m-absent".to_vec(), b"m2".to_vec()];
    async fn read(txn: &mut dyn Transaction, keys: &[Vec<u8>]) -> Vec<Option<Vec<u8>>> {
        let values = ok(txn.get_many(Keyspace::Meta, keys).await, "get_many");
        values.into_iter().map(|v| v.map(|b| b.to_vec())).collect()
    }
    let mut txn = ok(engine.begin().await, "begin");
    assert_eq!(
        read(&mut *txn, &keys).await,
        [Some(b"1".to_vec()), None, Some(b"2".to_vec())]
    );
    txn.put(Keyspace::Meta, b"m1".to_vec(), b"read".to_vec());
    ok(txn.commit(None).await, "reads nobody changed commit");

    for (key, value) in [(&b"m2"[..], &b"changed"[..]), (b"m-absent", b"appeared")] {
        let mut txn = ok(engine.begin().await, "begin");
        read(&mut *txn, &keys).await;
        txn.put(Keyspace::Meta, b"m1".to_vec(), b"lost".to_vec());
        put_commit(engine, &[(Keyspace::Meta, key, value)]).await;
        assert_eq!(
            txn.commit(None).await,
            Err(EngineError::Conflict),
            "{} changed",
            String::from_utf8_lossy(key)
        );
    }
    assert_eq!(
        value(engine, Keyspace::Meta, b"m1").await.as_deref(),
        Some(&b"read"[..])
    );
    let mut undo = ok(engine.begin().await, "begin");
    for key in keys {
        undo.delete(Keyspace::Meta, key);
    }
    ok(undo.commit(None).await, "commit");
}

/// Several scans at once read what each would alone, and each is checked at the commit:
/// bounded or open-ended, in either direction, a key that changes what it saw conflicts.
async fn scan_conflicts(engine: &dyn Engine) {
    // Past every other key of the keyspace, so the open-ended scans see only these.
    let key = |name: &str| format!("z/{name}").into_bytes();
    let names = ["1", "2", "3", "4", "5"];
    let mut txn = ok(engine.begin().await, "begin");
    for name in names {
        txn.put(Keyspace::Files, key(name), name.as_bytes().to_vec());
    }
    ok(txn.commit(None).await, "commit");
    let scan = |range: KeyRange, direction, limit| RangeScan {
        range,
        direction,
        limit,
    };
    // Each scan, and a key that changes what it sees.
    let cases = [
        (scan(KeyRange::prefix(b"z/"), Direction::Forward, 2), "15"),
        (scan(KeyRange::prefix(b"z/"), Direction::Reverse, 2), "45"),
        (scan(KeyRange::from(key("3")), Direction::Forward, 10), "9"),
        (scan(KeyRange::from(key("")), Direction::Reverse, 1), "6"),
    ];
    let mut scans: Vec<RangeScan> = cases.iter().map(|(scan, _)| scan.clone()).collect();
    scans.push(scan(
        KeyRange::new(key("4"), key("2")),
        Direction::Forward,
        5,
    ));
    scans.push(scan(KeyRange::prefix(b"z/"), Direction::Forward, 0));
    let mut txn = ok(engine.begin().await, "begin");
    let many = ok(txn.scan_many(Keyspace::Files, &scans).await, "scan_many");
    assert_eq!(many.len(), scans.len(), "one answer per scan");
    for (scan, found) in scans.iter().zip(&many) {
        let alone = ok(
            engine
                .scan(Keyspace::Files, &scan.range, scan.direction, scan.limit)
                .await,
            "scan",
        );
        assert_eq!(found, &alone, "{scan:?} read at once as alone");
    }
    assert_eq!(many[0].len(), 2);
    assert!(many[4].is_empty() && many[5].is_empty());
    txn.put(Keyspace::Meta, b"scans".to_vec(), b"1".to_vec());
    ok(txn.commit(None).await, "scans nobody changed commit");

    for (scan, added) in cases {
        let mut txn = ok(engine.begin().await, "begin");
        let seen = ok(
            txn.scan_many(Keyspace::Files, std::slice::from_ref(&scan))
                .await,
            "scan_many",
        );
        assert!(!seen[0].is_empty());
        txn.put(Keyspace::Meta, b"scans".to_vec(), b"2".to_vec());
        put_commit(engine, &[(Keyspace::Files, &key(added), b"new")]).await;
        assert_eq!(
            txn.commit(None).await,
            Err(EngineError::Conflict),
            "{scan:?} gained {added}"
        );
        let mut undo = ok(engine.begin().await, "begin");
        undo.delete(Keyspace::Files, key(added));
        ok(undo.commit(None).await, "commit");
    }
    let mut undo = ok(engine.begin().await, "begin");
    for name in names {
        undo.delete(Keyspace::Files, key(name));
    }
    undo.delete(Keyspace::Meta, b"scans".to_vec());
    ok(undo.commit(None).await, "commit");
}

/// `expect` holds the commit to a stored value, or to absence.
async fn expectations(engine: &dyn Engine) {
    let attempt = |expected: Option<&'static [u8]>| async move {
        let mut txn = ok(engine.begin().await, "begin");
        txn.expect(
            Keyspace::System,
            b"cas".to_vec(),
            expected.map(<[u8]>::to_vec),
        );
        txn.put(Keyspace::System, b"cas".to_vec(), b"v2".to_vec());
        txn.commit(None).await
    };
    assert_eq!(
        attempt(Some(b"v1")).await,
        Err(EngineError::Conflict),
        "absent is not v1"
    );
    ok(attempt(None).await, "expecting absence of an absent key");
    assert_eq!(
        attempt(None).await,
        Err(EngineError::Conflict),
        "present is not absent"
    );
    ok(attempt(Some(b"v2")).await, "expecting the stored value");
}

/// Scans run in either direction, honour their bounds and limits, and stay in their keyspace.
async fn ordered_scans(engine: &dyn Engine) {
    let keys: Vec<Vec<u8>> = (0u8..20).map(|i| vec![b's', i]).collect();
    let mut txn = ok(engine.begin().await, "begin");
    for k in &keys {
        txn.put(Keyspace::Files, k.clone(), k.clone());
    }
    txn.put(Keyspace::Files, vec![b's', 0xFF, 0xFF], b"last".to_vec());
    txn.put(Keyspace::Indexes, vec![b's', 1], b"other keyspace".to_vec());
    ok(txn.commit(None).await, "commit");
    let scan = |range: KeyRange, direction, limit| async move {
        ok(
            engine.scan(Keyspace::Files, &range, direction, limit).await,
            "scan",
        )
        .into_iter()
        .map(|(k, _)| k.to_vec())
        .collect::<Vec<_>>()
    };
    let all = scan(KeyRange::prefix(b"s"), Direction::Forward, 100).await;
    assert_eq!(all.len(), 21);
    assert!(all.windows(2).all(|w| w[0] < w[1]), "forward is ascending");
    let back = scan(KeyRange::prefix(b"s"), Direction::Reverse, 100).await;
    assert_eq!(back, all.iter().rev().cloned().collect::<Vec<_>>());
    let window = scan(
        KeyRange::new(vec![b's', 5], vec![b's', 9]),
        Direction::Forward,
        100,
    )
    .await;
    assert_eq!(
        window,
        keys[5..9].to_vec(),
        "start inclusive, end exclusive"
    );
    let top = scan(
        KeyRange::new(vec![b's', 5], vec![b's', 9]),
        Direction::Reverse,
        2,
    )
    .await;
    assert_eq!(top, vec![keys[8].clone(), keys[7].clone()]);
    let open = scan(KeyRange::from(vec![b's', 19]), Direction::Forward, 100).await;
    assert_eq!(open, vec![keys[19].clone(), vec![b's', 0xFF, 0xFF]]);
    let none = scan(
        KeyRange::new(vec![b's', 9], vec![b's', 5]),
        Direction::Forward,
        10,
    )
    .await;
    assert!(none.is_empty(), "an inverted range is empty");
    assert!(scan(KeyRange::prefix(b"s"), Direction::Forward, 0)
        .await
        .is_empty());
}

/// Appended changes get dense sequence numbers in commit order, across transactions.
async fn feed_order(engine: &dyn Engine) {
    let start = *engine.watch().borrow();
    let mut seqs = Vec::new();
    for i in 0..5u8 {
        let mut txn = ok(engine.begin().await, "begin");
        txn.append_change(change(Some(b"feed\0"), &[i]));
        txn.append_change(change(None, &[i, i]));
        seqs.push(ok(txn.commit(None).await, "commit").first_seq);
    }
    let expected: Vec<Option<u64>> = (0..5).map(|i| Some(start + 1 + 2 * i)).collect();
    assert_eq!(seqs, expected, "two changes per commit, densely");
    let records = ok(
        engine
            .scan(
                Keyspace::Changes,
                &KeyRange::from((start + 1).to_be_bytes().to_vec()),
                Direction::Forward,
                100,
            )
            .await,
        "scan the feed",
    );
    assert_eq!(records.len(), 10);
    for (i, (key, payload)) in records.iter().enumerate() {
        assert_eq!(key.as_ref(), (start + 1 + i as u64).to_be_bytes());
        let n = (i / 2) as u8;
        let want: Vec<u8> = if i % 2 == 0 { vec![n] } else { vec![n, n] };
        assert_eq!(payload.to_vec(), want);
    }
    let history = ok(
        engine
            .scan(
                Keyspace::History,
                &KeyRange::prefix(b"feed\0"),
                Direction::Forward,
                100,
            )
            .await,
        "scan history",
    );
    assert_eq!(
        history.len(),
        5,
        "one history entry per change that asked for one"
    );
    assert_eq!(*engine.watch().borrow(), start + 10);
}

/// Change records loaded with plain puts (as a restore does): the sequence goes on after them.
async fn resumed_sequence(engine: &dyn Engine) {
    let start = *engine.watch().borrow();
    let loaded = start + 100;
    let mut txn = ok(engine.begin().await, "begin");
    txn.put(
        Keyspace::Changes,
        loaded.to_be_bytes().to_vec(),
        b"loaded".to_vec(),
    );
    ok(txn.commit(None).await, "commit a loaded change");
    assert_eq!(ok(engine.resume_sequence().await, "resume"), loaded);
    assert_eq!(*engine.watch().borrow(), loaded);
    let mut txn = ok(engine.begin().await, "begin");
    txn.append_change(change(None, b"next"));
    let next = ok(txn.commit(None).await, "commit").first_seq;
    assert_eq!(
        next,
        Some(loaded + 1),
        "the next change follows the loaded one"
    );
}

/// Two dispatchers claiming the same outbox record: exactly one wins; completion removes it.
async fn outbox_claims(engine: &dyn Engine) {
    put_commit(engine, &[(Keyspace::System, b"outbox:job", b"due")]).await;
    let claim = || async move {
        let mut txn = ok(engine.begin().await, "begin");
        let due = ok(
            txn.scan(
                Keyspace::System,
                &KeyRange::prefix(b"outbox:"),
                Direction::Forward,
                1,
            )
            .await,
            "scan the outbox",
        );
        assert_eq!(due.len(), 1, "the due event is there to claim");
        txn
    };
    let mut a = claim().await;
    let mut b = claim().await;
    a.put(
        Keyspace::System,
        b"outbox:job".to_vec(),
        b"claimed by a".to_vec(),
    );
    b.put(
        Keyspace::System,
        b"outbox:job".to_vec(),
        b"claimed by b".to_vec(),
    );
    ok(a.commit(None).await, "the first claim");
    assert_eq!(
        b.commit(None).await,
        Err(EngineError::Conflict),
        "the second claim"
    );
    let mut done = ok(engine.begin().await, "begin");
    done.expect(
        Keyspace::System,
        b"outbox:job".to_vec(),
        Some(b"claimed by a".to_vec()),
    );
    done.delete(Keyspace::System, b"outbox:job".to_vec());
    ok(done.commit(None).await, "completion");
    assert!(value(engine, Keyspace::System, b"outbox:job")
        .await
        .is_none());
}

/// Concurrent read-modify-write transactions under `retry` never lose an update.
async fn concurrent_increments(engine: Arc<dyn Engine>) {
    const TASKS: usize = 8;
    const EACH: usize = 25;
    let conflicts = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let engine = engine.clone();
        let conflicts = conflicts.clone();
        handles.push(tokio::spawn(async move {
            for _ in 0..EACH {
                let result = retry(|| {
                    let engine = engine.clone();
                    let conflicts = conflicts.clone();
                    async move {
                        let mut txn = engine.begin().await?;
                        let n = read_counter(&mut *txn).await?;
                        txn.put(
                            Keyspace::Meta,
                            b"counter".to_vec(),
                            (n + 1).to_string().into(),
                        );
                        let result = txn.commit(None).await;
                        if result == Err(EngineError::Conflict) {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        result
                    }
                })
                .await;
                ok(result, "increment");
            }
        }));
    }
    for handle in handles {
        handle
            .await
            .unwrap_or_else(|e| panic!("increment task: {e}"));
    }
    let stored = value(&*engine, Keyspace::Meta, b"counter")
        .await
        .unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&stored), (TASKS * EACH).to_string());
}

/// Adds to a counter from many concurrent transactions never conflict and never lose one;
/// an add applies after the same transaction's put of the key.
async fn counters(engine: Arc<dyn Engine>) {
    const TASKS: i64 = 8;
    const EACH: i64 = 25;
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let engine = engine.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..EACH {
                let mut txn = ok(engine.begin().await, "begin");
                txn.put(
                    Keyspace::Meta,
                    format!("adder:{task}:{i}").into(),
                    b"x".to_vec(),
                );
                txn.add(Keyspace::Meta, b"adds".to_vec(), 2);
                txn.add(Keyspace::Meta, b"adds".to_vec(), -1);
                // Adds never read, so they are never the cause of a conflict.
                ok(txn.commit(None).await, "add");
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap_or_else(|e| panic!("add task: {e}"));
    }
    let stored = value(&*engine, Keyspace::Meta, b"adds").await;
    assert_eq!(ok(counter(stored.as_deref()), "counter"), TASKS * EACH);

    let mut txn = ok(engine.begin().await, "begin");
    txn.put(
        Keyspace::Meta,
        b"adds".to_vec(),
        10i64.to_be_bytes().to_vec(),
    );
    txn.add(Keyspace::Meta, b"adds".to_vec(), -3);
    ok(txn.commit(None).await, "put and add");
    let stored = value(&*engine, Keyspace::Meta, b"adds").await;
    assert_eq!(ok(counter(stored.as_deref()), "counter"), 7);
}

/// What the store takes is told, and grows with what it holds.
async fn stored_bytes(engine: &dyn Engine) {
    let before = ok(engine.stored_bytes().await, "stored bytes").unwrap_or(0);
    let big = vec![7u8; 256 * 1024];
    for n in 0..8u8 {
        put_commit(engine, &[(Keyspace::Documents, &[b's', b'b', n], &big)]).await;
    }
    let after = ok(engine.stored_bytes().await, "stored bytes");
    assert!(
        after.is_some_and(|after| after > before && after > 0),
        "{before} bytes, then {after:?}"
    );
}

async fn read_counter(txn: &mut dyn Transaction) -> Result<u64, EngineError> {
    let raw = txn.get(Keyspace::Meta, b"counter").await?;
    Ok(raw
        .and_then(|b| String::from_utf8_lossy(&b).parse().ok())
        .unwrap_or(0))
}

/// A snapshot keeps showing the state it began with while writes go on.
async fn snapshots(engine: &dyn Engine) {
    put_commit(
        engine,
        &[
            (Keyspace::Documents, b"snap\0a", b"1"),
            (Keyspace::Documents, b"snap\0b", b"1"),
        ],
    )
    .await;
    let snapshot = ok(engine.snapshot().await, "snapshot");
    let mut txn = ok(engine.begin().await, "begin");
    txn.put(Keyspace::Documents, b"snap\0a".to_vec(), b"2".to_vec());
    txn.delete(Keyspace::Documents, b"snap\0b".to_vec());
    txn.put(Keyspace::Documents, b"snap\0c".to_vec(), b"2".to_vec());
    ok(txn.commit(None).await, "commit");
    let seen = ok(
        snapshot
            .scan(
                Keyspace::Documents,
                &KeyRange::prefix(b"snap\0"),
                Direction::Forward,
                10,
            )
            .await,
        "snapshot scan",
    );
    let seen: Vec<(Vec<u8>, Vec<u8>)> = seen
        .into_iter()
        .map(|(k, v)| (k.to_vec(), v.to_vec()))
        .collect();
    assert_eq!(
        seen,
        vec![
            (b"snap\0a".to_vec(), b"1".to_vec()),
            (b"snap\0b".to_vec(), b"1".to_vec())
        ]
    );
    let a = ok(
        snapshot.get(Keyspace::Documents, b"snap\0a").await,
        "snapshot get",
    );
    assert_eq!(a.as_deref(), Some(&b"1"[..]));
    let live = ok(
        engine
            .scan(
                Keyspace::Documents,
                &KeyRange::prefix(b"snap\0"),
                Direction::Reverse,
                10,
            )
            .await,
        "scan",
    );
    assert_eq!(live.len(), 2, "the engine itself shows the new state");
}

/// A snapshot taken while large commits are being applied shows each of them whole or not at
/// all, whichever part of it the backend has applied when the snapshot reads.
async fn snapshots_under_concurrent_commits(engine: Arc<dyn Engine>) {
    // Enough keys, and large enough values, to span many of a tree's nodes.
    const KEYS: usize = 96;
    const COMMITS: usize = 60;
    let prefix = b"whole\0";
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let writer = {
        let engine = engine.clone();
        let writing = writing.clone();
        tokio::spawn(async move {
            for round in 1..=COMMITS {
                let mut txn = ok(engine.begin().await, "begin");
                for k in 0..KEYS {
                    let key = [&prefix[..], format!("{k:03}").as_bytes()].concat();
                    txn.put(
                        Keyspace::Documents,
                        key,
                        format!("{round:0>512}").into_bytes(),
                    );
                }
                ok(txn.commit(None).await, "commit");
            }
            writing.store(false, Ordering::SeqCst);
        })
    };
    let mut readers = Vec::new();
    for direction in [Direction::Forward, Direction::Reverse] {
        let engine = engine.clone();
        let writing = writing.clone();
        readers.push(tokio::spawn(async move {
            let mut looked = 0usize;
            while writing.load(Ordering::SeqCst) || looked == 0 {
                let snapshot = ok(engine.snapshot().await, "snapshot");
                let seen = ok(
                    snapshot
                        .scan(
                            Keyspace::Documents,
                            &KeyRange::prefix(prefix),
                            direction,
                            KEYS + 1,
                        )
                        .await,
                    "snapshot scan",
                );
                // Which commits the keys come from (the value is the commit's number).
                let values: std::collections::BTreeSet<String> = seen
                    .iter()
                    .map(|(_, v)| {
                        String::from_utf8_lossy(v)
                            .trim_start_matches('0')
                            .to_string()
                    })
                    .collect();
                assert!(
                    seen.is_empty() || (seen.len() == KEYS && values.len() == 1),
                    "a snapshot shows part of a commit: {} keys, from commits {values:?}",
                    seen.len()
                );
                looked += 1;
                tokio::task::yield_now().await;
            }
        }));
    }
    writer.await.unwrap_or_else(|e| panic!("writer task: {e}"));
    for reader in readers {
        reader.await.unwrap_or_else(|e| panic!("reader task: {e}"));
    }
}

/// A commit that fails writes nothing and appends no change; later commits succeed.
async fn injected_commit_failures(engine: Arc<dyn Engine>) {
    let faulty = FaultyEngine::new(engine.clone());
    let before = *engine.watch().borrow();
    faulty.fail_commits(1);
    let mut txn = ok(faulty.begin().await, "begin");
    txn.put(Keyspace::Documents, b"fail\0a".to_vec(), b"x".to_vec());
    txn.append_change(change(None, b"lost"));
    assert!(matches!(txn.commit(None).await, Err(EngineError::Io(_))));
    assert!(value(&*engine, Keyspace::Documents, b"fail\0a")
        .await
        .is_none());
    assert_eq!(*engine.watch().borrow(), before, "no change was appended");
    faulty.fail_reads(1);
    assert!(matches!(
        faulty.get(Keyspace::Documents, b"x").await,
        Err(EngineError::Io(_))
    ));
    faulty.conflict_commits(1);
    let result = retry(|| async {
        let mut txn = faulty.begin().await?;
        txn.put(Keyspace::Documents, b"fail\0a".to_vec(), b"y".to_vec());
        txn.append_change(change(None, b"kept"));
        txn.commit(None).await
    })
    .await;
    assert_eq!(
        ok(result, "a retried commit").first_seq,
        Some(before + 1),
        "no gap in the feed"
    );
}

/// A commit applied but not yet durable is invisible to the engine's reads, its snapshots and
/// its feed, and its committer is still waiting; it all shows once the flush is done.
async fn durable_before_visible(backend: &dyn Backend, engine: Arc<dyn Engine>) {
    let before = *engine.watch().borrow();
    let writer = engine.clone();
    let commit = tokio::spawn(async move {
        let mut txn = writer.begin().await?;
        txn.put(Keyspace::Documents, b"held\0a".to_vec(), b"new".to_vec());
        txn.append_change(change(Some(b"held\0a\0"), b"held"));
        txn.commit(None).await
    });
    // Wait until the commit is applied: a transaction, which reads the newest state, sees it.
    let mut applied = false;
    for _ in 0..500 {
        let mut txn = ok(engine.begin().await, "begin");
        if ok(txn.get(Keyspace::Documents, b"held\0a").await, "get").is_some() {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(applied, "the held commit was applied");
    assert!(
        value(&*engine, Keyspace::Documents, b"held\0a")
            .await
            .is_none(),
        "get hides it"
    );
    let range = KeyRange::prefix(b"held\0");
    let scanned = ok(
        engine
            .scan(Keyspace::Documents, &range, Direction::Forward, 10)
            .await,
        "scan",
    );
    assert!(scanned.is_empty(), "scan hides it");
    let feed = KeyRange::from((before + 1).to_be_bytes().to_vec());
    let records = ok(
        engine
            .scan(Keyspace::Changes, &feed, Direction::Forward, 10)
            .await,
        "feed",
    );
    assert!(records.is_empty(), "the feed hides it");
    let snapshot = ok(engine.snapshot().await, "snapshot");
    assert_eq!(*engine.watch().borrow(), before);
    assert!(!commit.is_finished(), "the committer still waits");
    backend.hold_flushes(false);
    let committed = commit.await.unwrap_or_else(|e| panic!("commit task: {e}"));
    assert_eq!(ok(committed, "held commit").first_seq, Some(before + 1));
    assert_eq!(
        value(&*engine, Keyspace::Documents, b"held\0a")
            .await
            .as_deref(),
        Some(&b"new"[..])
    );
    let later = ok(
        snapshot.get(Keyspace::Documents, b"held\0a").await,
        "snapshot get",
    );
    assert!(
        later.is_none(),
        "a snapshot taken before durability never shows it"
    );
}

/// A flush that fails fails its commit and leaves no trace; the store recovers by itself.
async fn failed_flush_leaves_no_trace(engine: &dyn Engine) {
    let before = *engine.watch().borrow();
    let mut txn = ok(engine.begin().await, "begin");
    txn.put(Keyspace::Documents, b"flush\0a".to_vec(), b"x".to_vec());
    txn.append_change(change(Some(b"flush\0a\0"), b"lost"));
    assert!(
        matches!(txn.commit(None).await, Err(EngineError::Io(_))),
        "the commit fails"
    );
    assert!(
        value(engine, Keyspace::Documents, b"flush\0a")
            .await
            .is_none(),
        "not visible"
    );
    assert_eq!(*engine.watch().borrow(), before);
    // The store refuses writes until it has recovered, then takes them again.
    let mut attempts = 0;
    let seq = loop {
        let mut txn = ok(engine.begin().await, "begin");
        txn.put(Keyspace::Documents, b"flush\0b".to_vec(), b"y".to_vec());
        txn.append_change(change(None, b"after"));
        match txn.commit(None).await {
            Ok(c) => break c.first_seq,
            Err(EngineError::Io(_)) if attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not recover: {e}"),
        }
    };
    assert_eq!(seq, Some(before + 1), "the failed change left no gap");
    assert!(
        value(engine, Keyspace::Documents, b"flush\0a")
            .await
            .is_none(),
        "still no trace"
    );
    let history = ok(
        engine
            .scan(
                Keyspace::History,
                &KeyRange::prefix(b"flush\0a\0"),
                Direction::Forward,
                10,
            )
            .await,
        "scan history",
    );
    assert!(history.is_empty());
}

/// After a restart the feed continues where it was and durable writes are all there.
async fn feed_resumes_after_restart(backend: &dyn Backend, last: u64) {
    let engine = backend.open().await;
    assert_eq!(
        *engine.watch().borrow(),
        last,
        "the feed resumes at its last durable change"
    );
    assert_eq!(
        value(&*engine, Keyspace::Documents, b"c\0a")
            .await
            .as_deref(),
        Some(&b"doc"[..])
    );
    let stored = value(&*engine, Keyspace::Meta, b"counter")
        .await
        .unwrap_or_default();
    assert_eq!(String::from_utf8_lossy(&stored), "200");
    let mut txn = ok(engine.begin().await, "begin");
    txn.append_change(change(None, b"next"));
    let committed = ok(txn.commit(None).await, "commit after restart");
    assert_eq!(
        committed.first_seq,
        Some(last + 1),
        "sequences never repeat"
    );
    ok(engine.close().await, "close");
}
