//! File metadata records. The bytes of a file live in a blob on disk (see `crate::files`); the
//! store keeps, per `bucket/path`, which blob holds them and the public metadata, and commits
//! every change to that mapping in a transaction with a change record, like documents.
//!
//! A record is `flags (1 byte) + blob id (16 bytes, a ULID) + FileInfo JSON`.

use super::error::StoreError;
use super::kv::Space;
use super::write::{Access, Recorded};
use crate::model::{Actor, FileInfo};
use std::sync::Arc;

const MARKUP: u8 = 1;
const HEADER: usize = 17;

/// A stored file record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileRecord {
    pub info: FileInfo,
    /// The blob that holds the bytes.
    pub blob: ulid::Ulid,
    /// The first bytes looked like HTML, SVG or XML, so the file is never served inline.
    pub markup: bool,
}

impl FileRecord {
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + 256);
        out.push(if self.markup { MARKUP } else { 0 });
        out.extend_from_slice(&self.blob.to_bytes());
        // Serialising strings and integers cannot fail.
        let _ = serde_json::to_writer(&mut out, &self.info);
        out
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<FileRecord, StoreError> {
        let corrupt = || StoreError::Corrupt("file record too short".into());
        let flags = *bytes.first().ok_or_else(corrupt)?;
        let blob: [u8; 16] = bytes
            .get(1..HEADER)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        let info = serde_json::from_slice(bytes.get(HEADER..).ok_or_else(corrupt)?)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(FileRecord {
            info,
            blob: ulid::Ulid::from_bytes(blob),
            markup: flags & MARKUP != 0,
        })
    }
}

/// What a file write does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FileOp {
    /// Point `bucket/path` at a blob already durable on disk, creating or replacing the file.
    Put {
        blob: ulid::Ulid,
        size: u64,
        sha256: String,
        content_type: String,
        markup: bool,
        /// An import: the owner and times as recorded, and the path must be free.
        recorded: Option<Recorded>,
    },
    /// Remove the file's record.
    Delete,
}

/// A bucket's access check, run inside the write's transaction against the stored record.
/// `before` is the stored metadata, `after` what the write would store (none for a delete). An
/// `Err` carries the message of a `403`.
pub(crate) trait FileGuard: Send + Sync {
    fn check(
        &self,
        access: Access,
        before: Option<&FileInfo>,
        after: Option<&FileInfo>,
    ) -> Result<(), String>;

    /// The system record the check's rules come from, as the guard read it (`None`: absent):
    /// the write commits only if it is still so.
    fn depends_on(&self) -> (Space, Vec<u8>, Option<Vec<u8>>);
}

/// A write of one file's record.
pub(crate) struct FileWrite {
    pub bucket: String,
    pub path: String,
    pub op: FileOp,
    pub actor: Option<Actor>,
    pub depth: u32,
    pub trace: Option<crate::trace::TraceContext>,
    pub guard: Option<Arc<dyn FileGuard>>,
}

/// A committed file write: the record it replaced or removed, and the one it stored.
#[derive(Debug)]
pub(crate) struct FileWritten {
    pub before: Option<FileRecord>,
    pub after: Option<FileInfo>,
}
