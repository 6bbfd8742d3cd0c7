//! Errors of the store, and their explicit mapping to the public error codes.

use crate::engine::{EngineError, IsConflict};
use crate::error::{Error, ErrorCode};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("document {collection}/{id} does not exist")]
    NotFound { collection: String, id: String },
    #[error("file {bucket}/{path} does not exist")]
    FileNotFound { bucket: String, path: String },
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
    /// A query examined more documents than allowed without an index.
    #[error("{0}")]
    ScanBudget(String),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::NotFound { .. } | StoreError::FileNotFound { .. } => {
                Error::new(ErrorCode::NotFound, message)
            }
            StoreError::Conflict { .. } => Error::new(ErrorCode::Conflict, message),
            StoreError::VersionMismatch { actual, .. } => {
                Error::new(ErrorCode::PreconditionFailed, message)
                    .with_details(serde_json::json!({ "version": actual }))
            }
            StoreError::Denied(_) => Error::new(ErrorCode::Forbidden, message),
            StoreError::CasFailed => Error::new(ErrorCode::Conflict, message),
            StoreError::Invalid { field, .. } => Error::validation(message, &field),
            StoreError::ScanBudget(_) => Error::bad_request(message),
            StoreError::Engine(EngineError::Closed) => Error::new(ErrorCode::Unavailable, message),
            StoreError::Engine(EngineError::Conflict) => Error::new(
                ErrorCode::Conflict,
                "too many concurrent writes to the same data; try again",
            ),
            // A full disk or an I/O error: nothing was written, and the store recovers by
            // itself once the cause is gone.
            StoreError::Engine(EngineError::Io(detail)) => {
                tracing::error!(error = %detail, "storage failure");
                Error::new(
                    ErrorCode::Unavailable,
                    "storage is unavailable; try again later",
                )
            }
            StoreError::Engine(EngineError::Corrupt(_)) | StoreError::Corrupt(_) => {
                Error::internal(message)
            }
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

impl From<BatchFailure> for Error {
    fn from(f: BatchFailure) -> Self {
        Error::from(f.error).with_detail("op", f.op)
    }
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
