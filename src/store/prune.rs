//! The store's pruning task: once a second, drops change records past the retention window
//! (count and age), round after round until caught up, and tombstones past their horizon; a
//! bounded number per transaction, so that pruning never holds up writes for long.

use super::commit::decode_tombstone;
use super::{keys, records, Store, StoreError};
use crate::engine::{retry, Bytes, Direction, KeyRange, Keyspace, RangeScan, Transaction};
use std::collections::HashMap;
use std::time::Duration;

/// Records examined per transaction. A round holds the sled committer while it checks what the
/// round read and applies its deletes, and every write waits meanwhile: at 1,000 records that
/// took durable creates' p99 from about 14 to 25-31 ms on a store past its retention
/// (ARCHITECTURE.md, "Pruning in small rounds").
const PER_ROUND: usize = 200;

pub(super) fn start(store: Store) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tombstones_after: Option<Vec<u8>> = None;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Round after round until caught up: writes can outpace one round a second.
            loop {
                match retry(|| prune_changes(&store)).await {
                    Ok(removed) if removed == PER_ROUND => tokio::task::yield_now().await,
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning the change feed failed");
                        break;
                    }
                }
            }
            match retry(|| prune_tombstones(&store, tombstones_after.as_deref())).await {
                Ok(next) => tombstones_after = next,
                Err(e) => tracing::warn!(error = %e, "pruning tombstones failed"),
            }
        }
    })
}

/// Prunes at most `PER_ROUND` change records in one transaction; returns how many.
async fn prune_changes(store: &Store) -> Result<usize, StoreError> {
    let opts = &store.shared.options;
    let last = store.last_seq();
    let keep_from_seq = (last + 1).saturating_sub(opts.retention_count as u64);
    let cutoff = crate::model::format_time(time::OffsetDateTime::now_utc() - opts.retention_age);
    let mut txn = store.engine.begin().await?;
    // The newest record is always kept: it is where the sequence resumes after a restart, so
    // sequences never repeat (realtime clients resume by them). Reading only up to it also
    // keeps this transaction clear of the changes being appended meanwhile.
    let range = KeyRange::new(Vec::new(), keys::change_key(last).to_vec());
    let entries = txn
        .scan(Keyspace::Changes, &range, Direction::Forward, PER_ROUND)
        .await?;
    // The records that go: the oldest, up to the first one kept.
    let mut doomed = Vec::new();
    for (key, bytes) in entries {
        let seq = keys::seq_of(&key);
        match records::decode(seq, &bytes) {
            Ok(stored) if seq >= keep_from_seq && stored.time >= cutoff => break,
            Ok(stored) => doomed.push((key, Some(stored))),
            Err(e) => {
                tracing::warn!(seq, error = %e, "pruning a change record that does not decode");
                doomed.push((key, None));
            }
        }
    }
    let nexts = next_history(&mut *txn, &doomed).await?;
    // Records this round rewrote (with a whole `before`), which its reads do not show.
    let mut rewritten: HashMap<u64, records::StoredChange> = HashMap::new();
    let removed = doomed.len();
    for ((key, stored), next) in doomed.into_iter().zip(nexts) {
        if let Some(stored) = stored {
            let stored = rewritten.remove(&stored.seq).unwrap_or(stored);
            unchain(&mut *txn, &stored, next, &mut rewritten)?;
        }
        txn.delete(Keyspace::Changes, key.to_vec());
    }
    if removed > 0 {
        txn.commit(None).await?;
        tracing::debug!(removed, "pruned change feed");
    }
    Ok(removed)
}

/// The next change of a pruned change's document.
struct NextChange {
    seq: u64,
    /// Its stored record, as read before the round's writes.
    record: Option<Bytes>,
}

/// For each record about to be pruned that is a document's, that document's next change, if
/// any: looked up for all of them at once, then read at once.
async fn next_history(
    txn: &mut dyn Transaction,
    doomed: &[(Bytes, Option<records::StoredChange>)],
) -> Result<Vec<Option<NextChange>>, StoreError> {
    let mut asked = Vec::new();
    let mut scans = Vec::new();
    for (at, (_, stored)) in doomed.iter().enumerate() {
        let Some(stored) = stored else {
            continue;
        };
        let Some((collection, id)) = stored.document() else {
            continue;
        };
        let prefix = keys::history_prefix(collection, id);
        let after = keys::successor(&keys::history_key(collection, id, stored.seq));
        asked.push(at);
        scans.push(RangeScan {
            range: KeyRange::new(after, keys::prefix_end(&prefix)),
            direction: Direction::Forward,
            limit: 1,
        });
    }
    let found = txn.scan_many(Keyspace::History, &scans).await?;
    // Where each next change is, and its sequence.
    let seqs: Vec<(usize, u64)> = asked
        .into_iter()
        .zip(found)
        .filter_map(|(at, entries)| Some((at, keys::seq_of(&entries.first()?.0))))
        .collect();
    let change_keys: Vec<Vec<u8>> = seqs
        .iter()
        .map(|(_, seq)| keys::change_key(*seq).to_vec())
        .collect();
    let records = txn.get_many(Keyspace::Changes, &change_keys).await?;
    let mut nexts: Vec<Option<NextChange>> = doomed.iter().map(|_| None).collect();
    for ((at, seq), record) in seqs.into_iter().zip(records) {
        nexts[at] = Some(NextChange { seq, record });
    }
    Ok(nexts)
}

/// Before a document's oldest retained change is pruned, stores the `before` of the document's
/// next change (`next`) whole if it referred to the pruned one, and drops the pruned change's
/// history entry.
fn unchain(
    txn: &mut dyn Transaction,
    oldest: &records::StoredChange,
    next: Option<NextChange>,
    rewritten: &mut HashMap<u64, records::StoredChange>,
) -> Result<(), StoreError> {
    let Some((collection, id)) = oldest.document() else {
        return Ok(());
    };
    txn.delete(
        Keyspace::History,
        keys::history_key(collection, id, oldest.seq),
    );
    let Some(NextChange {
        seq: next_seq,
        record: Some(bytes),
    }) = next
    else {
        return Ok(());
    };
    // A record this round rewrote already has its `before` whole.
    if rewritten.contains_key(&next_seq) {
        return Ok(());
    }
    let next = records::decode(next_seq, &bytes)?;
    if !next.before_is_prev() {
        return Ok(());
    }
    match oldest.after_of_first() {
        Ok(document) => {
            let next = next.with_whole_before(document);
            txn.put(
                Keyspace::Changes,
                keys::change_key(next_seq).to_vec(),
                records::to_bytes(&next)?,
            );
            rewritten.insert(next_seq, next);
        }
        Err(e) => {
            tracing::error!(seq = oldest.seq, error = %e, "cannot carry a document's state past a pruned change; its next change will not read back");
        }
    }
    Ok(())
}

/// Removes the expired tombstones among the next `PER_ROUND` after `after`; returns where the
/// next round starts (`None`: from the first again).
async fn prune_tombstones(
    store: &Store,
    after: Option<&[u8]>,
) -> Result<Option<Vec<u8>>, StoreError> {
    let horizon = store.shared.options.tombstone_age.as_secs();
    let now = crate::model::unix_secs();
    let mut txn = store.engine.begin().await?;
    let mut range = KeyRange::prefix(b"tomb:");
    if let Some(after) = after {
        range.start = keys::successor(after);
    }
    let entries = txn
        .scan(Keyspace::System, &range, Direction::Forward, PER_ROUND)
        .await?;
    let next = match entries.last() {
        Some((last, _)) if entries.len() == PER_ROUND => Some(last.to_vec()),
        _ => None,
    };
    let mut removed = 0;
    for (key, value) in entries {
        let (_, deleted_at) = decode_tombstone(&value);
        if deleted_at.saturating_add(horizon) <= now {
            txn.delete(Keyspace::System, key.to_vec());
            removed += 1;
        }
    }
    if removed > 0 {
        txn.commit(None).await?;
    }
    Ok(next)
}
