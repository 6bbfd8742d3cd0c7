//! Reading an earlier state of a store that has moved on: the live store, corrected by the
//! pre-images of the keys changed since (their values at that earlier point, `None` for
//! absent). The sled backend reads its durable state this way (the pre-images of writes not
//! yet flushed) and its snapshots (the pre-images of writes since the snapshot began).
//!
//! The correction is exact as long as every key changed since the earlier point has its
//! pre-image recorded *before* the change is applied to the live store, and the pre-images are
//! consulted *after* the live store is read: a key that changed in between is then corrected.

use super::{successor, Bytes, Direction, Entry, KeyRange};
use std::collections::BTreeMap;

/// Scans `range` of an earlier state. `read(range, direction, n)` reads at most `n` entries of
/// the live store; `pending(range)` says how many pre-images there are in a range (a bound on how many live
/// entries a correction can remove); `pre_images(range)` returns the pre-images of keys in a
/// range, and is called after the live entries of that range were read.
pub(super) fn scan<E>(
    range: &KeyRange,
    direction: Direction,
    limit: usize,
    mut read: impl FnMut(&KeyRange, Direction, usize) -> Result<Vec<Entry>, E>,
    pending: impl Fn(&KeyRange) -> usize,
    pre_images: impl Fn(&KeyRange) -> Vec<(Vec<u8>, Option<Bytes>)>,
) -> Result<Vec<Entry>, E> {
    let mut out: Vec<Entry> = Vec::new();
    let mut cursor = range.clone();
    while out.len() < limit && !cursor.is_empty() {
        let want = limit - out.len();
        let fetch = fetch_for(want, pending(&cursor));
        let rows = read(&cursor, direction, fetch)?;
        let (entries, rest) = merge_page(&cursor, direction, want, fetch, rows, &pre_images);
        if out.is_empty() {
            out = entries;
        } else {
            out.extend(entries);
        }
        match rest {
            Some(rest) => cursor = rest,
            None => break,
        }
    }
    Ok(out)
}

/// How many live entries to read for `want` entries of an earlier state, when `pending`
/// pre-images could each remove one.
pub(super) fn fetch_for(want: usize, pending: usize) -> usize {
    want.saturating_add(pending).saturating_add(1)
}

/// One page of [`scan`]: `rows` are at most `fetch` live entries of `cursor`, read before
/// `pre_images` is called. Returns at most `want` entries of the earlier state, and the part of
/// `cursor` left to read when the rows did not cover all of it.
pub(super) fn merge_page(
    cursor: &KeyRange,
    direction: Direction,
    want: usize,
    fetch: usize,
    rows: Vec<Entry>,
    pre_images: impl Fn(&KeyRange) -> Vec<(Vec<u8>, Option<Bytes>)>,
) -> (Vec<Entry>, Option<KeyRange>) {
    let exhausted = rows.len() < fetch;
    // The part of the cursor's range these rows show completely.
    let covered = match (exhausted, rows.last()) {
        (false, Some((last, _))) => match direction {
            Direction::Forward => KeyRange {
                start: cursor.start.clone(),
                end: Some(successor(last)),
            },
            Direction::Reverse => KeyRange {
                start: last.to_vec(),
                end: cursor.end.clone(),
            },
        },
        _ => cursor.clone(),
    };
    let images = pre_images(&covered);
    let entries = if images.is_empty() {
        // Nothing to correct (the usual case): the rows are already in the scan's order.
        let mut rows = rows;
        rows.truncate(want);
        rows
    } else {
        let mut merged: BTreeMap<Bytes, Bytes> = rows.into_iter().collect();
        for (key, value) in images {
            match value {
                Some(value) => merged.insert(Bytes::from(key), value),
                None => merged.remove(key.as_slice()),
            };
        }
        match direction {
            Direction::Forward => merged.into_iter().take(want).collect(),
            Direction::Reverse => merged.into_iter().rev().take(want).collect(),
        }
    };
    if exhausted {
        return (entries, None);
    }
    let rest = match direction {
        Direction::Forward => KeyRange {
            start: covered.end.unwrap_or_default(),
            end: cursor.end.clone(),
        },
        Direction::Reverse => KeyRange {
            start: cursor.start.clone(),
            end: Some(covered.start),
        },
    };
    (entries, Some(rest))
}

/// Pre-images in a map, each with the last batch that changed its key.
#[derive(Default)]
pub(super) struct PreImages {
    map: BTreeMap<Vec<u8>, (Option<Bytes>, u64)>,
}

impl PreImages {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&Option<Bytes>> {
        self.map.get(key).map(|(value, _)| value)
    }

    /// Records that `batch` changes `key`, whose value before it is `pre` (kept if an earlier
    /// batch already recorded one). Returns what to pass to [`PreImages::undo`].
    pub(super) fn record(&mut self, key: Vec<u8>, pre: Option<Bytes>, batch: u64) -> Undo {
        match self.map.get_mut(&key) {
            Some(entry) => {
                let previous = entry.1;
                entry.1 = batch;
                Undo::Restore(key, previous)
            }
            None => {
                self.map.insert(key.clone(), (pre, batch));
                Undo::Remove(key)
            }
        }
    }

    /// Takes back a [`PreImages::record`] of a batch that was not applied.
    pub(super) fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Remove(key) => {
                self.map.remove(&key);
            }
            Undo::Restore(key, batch) => {
                if let Some(entry) = self.map.get_mut(&key) {
                    entry.1 = batch;
                }
            }
        }
    }

    /// Forgets every key whose last change is in a batch up to `batch` (now durable).
    pub(super) fn settle(&mut self, batch: u64) {
        self.map.retain(|_, (_, last)| *last > batch);
    }

    pub(super) fn clear(&mut self) {
        self.map.clear();
    }

    pub(super) fn count(&self, range: &KeyRange) -> usize {
        in_range(&self.map, range).count()
    }

    pub(super) fn range(&self, range: &KeyRange) -> Vec<(Vec<u8>, Option<Bytes>)> {
        in_range(&self.map, range)
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect()
    }

    pub(super) fn entries(&self) -> impl Iterator<Item = (&Vec<u8>, &Option<Bytes>)> {
        self.map.iter().map(|(k, (v, _))| (k, v))
    }
}

pub(super) enum Undo {
    Remove(Vec<u8>),
    Restore(Vec<u8>, u64),
}

/// The entries of a map whose keys are in `range`.
pub(super) fn in_range<'a, V>(
    map: &'a BTreeMap<Vec<u8>, V>,
    range: &KeyRange,
) -> impl Iterator<Item = (&'a Vec<u8>, &'a V)> {
    use std::ops::Bound;
    let end = match &range.end {
        _ if range.is_empty() => Bound::Excluded(range.start.clone()),
        Some(end) => Bound::Excluded(end.clone()),
        None => Bound::Unbounded,
    };
    map.range((Bound::Included(range.start.clone()), end))
}
