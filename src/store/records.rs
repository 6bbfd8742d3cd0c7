//! Change records as stored. A change to a document does not copy what it left alone:
//!
//! - `after` of an update is stored as the edits (`diff`) that turn `before`'s data into it,
//!   with the few envelope fields a write sets;
//! - `before` of an update or delete is stored as a reference to the previous retained change
//!   of the same document (`before_prev`), whose `after` it is, when there is one.
//!
//! So a document's retained changes form a chain, and each record is rebuilt by walking the
//! chain from its first retained change, whose `before` is stored whole (or absent). A history
//! index (`H` keys, one per retained document change) finds the previous and next change of a
//! document. Pruning keeps the chain whole: before it drops a document's oldest change, it
//! stores the next change's `before` whole. A record therefore reproduces its change's exact
//! envelopes for as long as it is kept, and references only records kept at least as long.
//!
//! Records written before this format (every envelope whole, no history entry) read as they
//! are, and start no chain.

use super::diff::{self, Edit};
use super::keys;
use super::StoreError;
use crate::engine::{Direction, Engine, KeyRange, Keyspace};
use crate::model::{Actor, Change, ChangeKind, Document, FileInfo, Subject};
use crate::trace::TraceContext;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A change record as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredChange {
    pub seq: u64,
    pub kind: ChangeKind,
    pub subject: StoredSubject,
    pub time: String,
    pub actor: Option<Actor>,
    pub depth: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<TraceContext>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum StoredSubject {
    Document {
        collection: String,
        id: String,
        /// Whole, unless `before_prev` (or there was no document).
        #[serde(default)]
        before: Option<Document>,
        /// Whole, unless `after_edits` (or the document was deleted).
        #[serde(default)]
        after: Option<Document>,
        /// `before` is the `after` of the previous retained change of this document.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        before_prev: bool,
        /// `after` is `before` with these edits.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after_edits: Option<AfterEdits>,
    },
    File {
        bucket: String,
        path: String,
        before: Option<FileInfo>,
        after: Option<FileInfo>,
    },
}

/// What an update changed: the envelope fields a write sets, and the edits of the data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AfterEdits {
    owner: Option<String>,
    version: u64,
    created_at: String,
    updated_at: String,
    data: Vec<Edit>,
}

impl AfterEdits {
    fn between(before: &Document, after: &Document) -> AfterEdits {
        AfterEdits {
            owner: after.owner.clone(),
            version: after.version,
            created_at: after.created_at.clone(),
            updated_at: after.updated_at.clone(),
            data: diff::diff(&before.data, &after.data),
        }
    }

    fn apply(&self, before: &Document) -> Result<Document, StoreError> {
        let mut data: Map<String, Value> = before.data.clone();
        diff::apply(&mut data, &self.data).map_err(StoreError::Corrupt)?;
        Ok(Document {
            id: before.id.clone(),
            collection: before.collection.clone(),
            owner: self.owner.clone(),
            version: self.version,
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            data,
        })
    }
}

/// Encodes `change` for storage. `has_prev`: the document has a retained change before this
/// one (so `before` can refer to it).
pub(super) fn encode(change: &Change, has_prev: bool) -> Result<Vec<u8>, StoreError> {
    let subject = match &change.subject {
        Subject::Document {
            collection,
            id,
            before,
            after,
        } => {
            let before_prev = has_prev && before.is_some();
            let after_edits = match (before, after) {
                (Some(b), Some(a)) => Some(AfterEdits::between(b, a)),
                _ => None,
            };
            StoredSubject::Document {
                collection: collection.clone(),
                id: id.clone(),
                before: if before_prev { None } else { before.clone() },
                after: if after_edits.is_some() {
                    None
                } else {
                    after.clone()
                },
                before_prev,
                after_edits,
            }
        }
        Subject::File {
            bucket,
            path,
            before,
            after,
        } => StoredSubject::File {
            bucket: bucket.clone(),
            path: path.clone(),
            before: before.clone(),
            after: after.clone(),
        },
    };
    to_bytes(&StoredChange {
        seq: change.seq,
        kind: change.kind,
        subject,
        time: change.time.clone(),
        actor: change.actor.clone(),
        depth: change.depth,
        trace: change.trace,
    })
}

pub(super) fn to_bytes(stored: &StoredChange) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(stored).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The size of a change's JSON encoding, which is what it costs the in-process feed.
pub(super) fn json_size(change: &Change) -> Result<usize, StoreError> {
    struct ByteCount(usize);
    impl std::io::Write for ByteCount {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut size = ByteCount(0);
    serde_json::to_writer(&mut size, change).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(size.0)
}

/// Decodes the record stored at `seq` (the key is the truth: records are encoded before the
/// engine gives them their sequence).
pub(super) fn decode(seq: u64, bytes: &[u8]) -> Result<StoredChange, StoreError> {
    let mut stored: StoredChange = serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Corrupt(format!("change record: {e}")))?;
    stored.seq = seq;
    Ok(stored)
}

impl StoredChange {
    /// The document this change is about, if it is about one.
    pub(super) fn document(&self) -> Option<(&str, &str)> {
        match &self.subject {
            StoredSubject::Document { collection, id, .. } => Some((collection, id)),
            StoredSubject::File { .. } => None,
        }
    }

    /// Whether `before` refers to the previous change of the document.
    pub(super) fn before_is_prev(&self) -> bool {
        matches!(
            self.subject,
            StoredSubject::Document {
                before_prev: true,
                ..
            }
        )
    }

    /// The document after the first retained change of a chain, whose `before` is whole.
    pub(super) fn after_of_first(&self) -> Result<Option<Document>, StoreError> {
        match &self.subject {
            StoredSubject::Document {
                before,
                before_prev: false,
                ..
            } => self.after(before.as_ref()),
            _ => Err(StoreError::Corrupt(format!(
                "change {} does not start its document's chain",
                self.seq
            ))),
        }
    }

    /// This change with `before` stored whole instead of referring to the previous change.
    pub(super) fn with_whole_before(mut self, document: Option<Document>) -> StoredChange {
        if let StoredSubject::Document {
            before,
            before_prev,
            ..
        } = &mut self.subject
        {
            *before = document;
            *before_prev = false;
        }
        self
    }

    /// The document after this change, given the document before it.
    fn after(&self, before: Option<&Document>) -> Result<Option<Document>, StoreError> {
        match &self.subject {
            StoredSubject::Document {
                after: Some(after), ..
            } => Ok(Some(after.clone())),
            StoredSubject::Document {
                after_edits: Some(edits),
                ..
            } => {
                let before = before.ok_or_else(|| {
                    StoreError::Corrupt(format!("change {} edits a missing document", self.seq))
                })?;
                edits.apply(before).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The whole change, given the document before it (which `before_prev` refers to).
    fn into_change(self, before_prev: Option<Document>) -> Result<Change, StoreError> {
        let subject = match &self.subject {
            StoredSubject::Document {
                collection,
                id,
                before,
                before_prev: refers,
                ..
            } => {
                let before = if *refers { before_prev } else { before.clone() };
                let after = self.after(before.as_ref())?;
                Subject::Document {
                    collection: collection.clone(),
                    id: id.clone(),
                    before,
                    after,
                }
            }
            StoredSubject::File {
                bucket,
                path,
                before,
                after,
            } => Subject::File {
                bucket: bucket.clone(),
                path: path.clone(),
                before: before.clone(),
                after: after.clone(),
            },
        };
        Ok(Change {
            seq: self.seq,
            kind: self.kind,
            subject,
            time: self.time,
            actor: self.actor,
            depth: self.depth,
            trace: self.trace,
        })
    }
}

/// Reads change records back whole. Remembers the last document each chain reached, so
/// records read in sequence order (a replay, a catch-up) cost one step each.
pub(super) struct Resolver<'a> {
    engine: &'a dyn Engine,
    /// Per document: the seq of the last change resolved, and the document after it.
    last: HashMap<(String, String), (u64, Option<Document>)>,
}

impl<'a> Resolver<'a> {
    pub(super) fn new(engine: &'a dyn Engine) -> Self {
        Resolver {
            engine,
            last: HashMap::new(),
        }
    }

    /// The whole change of a stored record.
    pub(super) async fn resolve(&mut self, stored: StoredChange) -> Result<Change, StoreError> {
        let Some((collection, id)) = stored.document() else {
            return stored.into_change(None);
        };
        let key = (collection.to_string(), id.to_string());
        let before = if stored.before_is_prev() {
            self.document_before(&key, stored.seq).await?
        } else {
            None
        };
        let change = stored.into_change(before)?;
        if let Subject::Document { after, .. } = &change.subject {
            self.last.insert(key, (change.seq, after.clone()));
        }
        Ok(change)
    }

    /// The document as the retained change of `key` before `seq` left it: from memory when
    /// that change was the last one resolved, otherwise by walking the document's chain from
    /// its first retained change.
    async fn document_before(
        &mut self,
        key: &(String, String),
        seq: u64,
    ) -> Result<Option<Document>, StoreError> {
        let broken = || StoreError::Corrupt(format!("change {seq} refers to a pruned change"));
        let prefix = keys::history_prefix(&key.0, &key.1);
        let mut chain = Vec::new();
        let mut upto = keys::history_key(&key.0, &key.1, seq);
        loop {
            let range = KeyRange::new(prefix.clone(), upto);
            let (entry, _) = self
                .engine
                .scan(Keyspace::History, &range, Direction::Reverse, 1)
                .await?
                .pop()
                .ok_or_else(broken)?;
            let prev = keys::seq_of(&entry);
            if let Some((last, doc)) = self.last.get(key) {
                if *last == prev {
                    let mut doc = doc.clone();
                    for stored in chain.iter().rev() {
                        doc = StoredChange::after(stored, doc.as_ref())?;
                    }
                    return Ok(doc);
                }
            }
            let bytes = self
                .engine
                .get(Keyspace::Changes, &keys::change_key(prev))
                .await?
                .ok_or_else(broken)?;
            let stored = decode(prev, &bytes)?;
            let starts_chain = !stored.before_is_prev();
            chain.push(stored);
            if starts_chain {
                break;
            }
            upto = entry.to_vec();
        }
        let mut doc: Option<Document> = None;
        for stored in chain.iter().rev() {
            if let StoredSubject::Document {
                before,
                before_prev: false,
                ..
            } = &stored.subject
            {
                doc = before.clone();
            }
            doc = stored.after(doc.as_ref())?;
        }
        Ok(doc)
    }
}
