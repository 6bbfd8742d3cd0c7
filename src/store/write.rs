//! What a write asks for (its ops, actor, depth and access guard) and what it leaves, shared by
//! the commit engine and the file records; `commit` turns a request into a transaction.

use super::error::BatchFailure;
use super::CollectionState;
use crate::model::{Actor, Document};
use crate::query::ast::Path;
use crate::trace::TraceContext;
use crate::transforms::Transform;
use serde_json::{Map, Value};
use std::sync::Arc;

/// One operation of a write. Every write is a batch of these, applied all or nothing.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum WriteOp {
    /// Create a document; `id` is generated (a ULID) when absent. Fails if the id exists.
    Create {
        collection: String,
        id: Option<String>,
        data: Map<String, Value>,
    },
    /// Create or replace a document.
    Set {
        collection: String,
        id: String,
        data: Map<String, Value>,
        if_version: Option<u64>,
    },
    /// Apply a JSON merge patch (RFC 7386) to an existing document, then transforms to the
    /// stored values (see `transforms`).
    Update {
        collection: String,
        id: String,
        patch: Map<String, Value>,
        transforms: Vec<Transform>,
        if_version: Option<u64>,
    },
    /// Delete an existing document.
    Delete {
        collection: String,
        id: String,
        if_version: Option<u64>,
    },
    /// Create a document as another system (or an export) recorded it: its owner, version and
    /// times are kept, and its relations are not checked (a reference may point at a document
    /// the import brings later). Fails if the id exists. Its change reaches the change feed
    /// but no commit hook: an import runs no trigger and sends no webhook.
    Import {
        collection: String,
        id: String,
        data: Map<String, Value>,
        recorded: Recorded,
    },
    /// Remove a document's reference to `target/target_id`, which was deleted, from the
    /// relation field at `path` (`set_null`), or delete the document (`cascade`). Nothing
    /// happens if the document is gone, no longer references it, or the target exists again.
    Dereference {
        collection: String,
        id: String,
        path: Path,
        target: String,
        target_id: String,
        cascade: bool,
    },
}

/// What an import keeps of a document or file as its source recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recorded {
    pub owner: Option<String>,
    /// A document's version (at least 1; raised past a deleted document's last version, so a
    /// stale `If-Match` cannot match). Files have none.
    pub version: u64,
    pub created_at: String,
    pub updated_at: String,
}

/// What an access check is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Create,
    Update,
    Delete,
}

/// An access check run inside the write's transaction against the stored state, so that no
/// write can slip between the check and the commit. `before` is the stored document (if any),
/// `after` the one the op would write (none for a delete), and `state` the collection's
/// configuration as the transaction read it (so rules changed by another node apply at once).
/// An `Err` carries the message of a `403`.
pub(crate) trait WriteGuard: Send + Sync {
    fn check(
        &self,
        access: Access,
        collection: &str,
        state: Option<&Arc<CollectionState>>,
        before: Option<&Document>,
        after: Option<&Document>,
    ) -> Result<(), String>;
}

/// A write: its ops, who makes it, and how deep in a chain of triggered writes it is.
pub(crate) struct WriteRequest {
    pub ops: Vec<WriteOp>,
    pub actor: Option<Actor>,
    pub depth: u32,
    /// The trace context of the work making the write, which its changes record.
    pub trace: Option<TraceContext>,
    pub guard: Option<Arc<dyn WriteGuard>>,
}

/// What one op of a write left.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// The document as written; `None` for a delete.
    pub document: Option<Document>,
    /// Whether the op created the document (it did not exist).
    pub created: bool,
}

pub(super) type WriteResult = Result<Vec<Written>, BatchFailure>;
