//! Errors of the store. Each domain maps them into its own error enum; the engine's failures
//! become the public [`StorageError`].

use crate::engine::{EngineError, IsConflict};
use crate::error::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("document {collection}/{id} does not exist")]
    NotFound { collection: String, id: String },
    #[error("file {bucket}/{path} does not exist")]
    FileNotFound { bucket: String, path: String },
    /// An import of a file whose path is taken.
    #[error("file {bucket}/{path} already exists")]
    FileExists { bucket: String, path: String },
    #[error("document {collection}/{id} already exists")]
    Conflict { collection: String, id: String },
    #[error("document {collection}/{id} is at version {actual}, not {expected}")]
    VersionMismatch {
        collection: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("{0}")]
    Denied(String),
    /// A compare-and-set check of a system write did not hold.
    #[error("a concurrent change won")]
    CasFailed,
    #[error("{message}")]
    Invalid { message: String, field: String },
    /// A document's data does not match its collection's schema.
    #[error("the data does not match the schema of collection {collection}")]
    SchemaViolation {
        collection: String,
        violations: Vec<crate::model::Violation>,
    },
    /// A delete that a relation's `restrict` (or its reverse index still being built) refuses.
    #[error("{0}")]
    Referenced(String),
    /// A query examined more documents than allowed without an index.
    #[error("{0}")]
    ScanBudget(String),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<EngineError> for StorageError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Conflict => StorageError::Contended,
            EngineError::Closed => StorageError::Unavailable,
            // A full disk or an I/O error: nothing was written, and the store recovers by
            // itself once the cause is gone. The detail is for the operator only.
            EngineError::Io(detail) => {
                tracing::error!(error = %detail, "storage failure");
                StorageError::Unavailable
            }
            EngineError::Corrupt(detail) => StorageError::Corrupt(detail),
        }
    }
}

/// A failed batch: which op failed, and why. Nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
#[error("op {op}: {error}")]
pub struct BatchFailure {
    pub op: usize,
    pub error: StoreError,
}

impl StoreError {
    /// Whether the storage engine failed (as opposed to the write being refused).
    pub fn is_engine(&self) -> bool {
        matches!(self, StoreError::Engine(_))
    }
}

impl IsConflict for StoreError {
    fn is_conflict(&self) -> bool {
        matches!(self, StoreError::Engine(EngineError::Conflict))
    }
}

impl IsConflict for BatchFailure {
    fn is_conflict(&self) -> bool {
        self.error.is_conflict()
    }
}
