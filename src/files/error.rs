//! What can go wrong in the file service, as variants an embedding program can match on, and
//! their one mapping into the public [`Error`].

use crate::auth::Denied;
use crate::error::{Error, ErrorCode, StorageError};
use crate::store::{BatchFailure, StoreError};

/// An error of [`Files`](super::Files).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilesError {
    /// A malformed request: a bucket name, path, limit or cursor that is not allowed.
    #[error("{0}")]
    BadRequest(String),
    /// A rule of a bucket configuration that does not compile.
    #[error("rule {rule}: {message} at column {column}")]
    InvalidRule {
        rule: String,
        message: String,
        column: usize,
    },
    /// A value that breaks a limit or a required shape; `field` names it.
    #[error("{message}")]
    Invalid { message: String, field: String },
    #[error("{0}")]
    Unauthenticated(String),
    /// A bucket rule, a signed URL that does not verify, or the admin requirement.
    #[error("{0}")]
    Forbidden(String),
    #[error("file {bucket}/{path} does not exist")]
    NotFound { bucket: String, path: String },
    /// An import of a file whose path is taken.
    #[error("file {bucket}/{path} already exists")]
    Exists { bucket: String, path: String },
    #[error("bucket {0} has no configuration")]
    NotConfigured(String),
    /// A content type that is malformed or that the bucket does not accept.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A file over the bucket's (or the server's) size limit.
    #[error("the file is over the limit of {max} bytes")]
    TooLarge { max: u64 },
    /// The disk that holds the blobs is full; nothing was stored.
    #[error("the server's disk is full")]
    DiskFull,
    /// A failure of the server itself (file I/O other than a full disk, a lost blob).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The result of a file operation.
pub(crate) type Result<T, E = FilesError> = std::result::Result<T, E>;

pub(crate) fn invalid(message: impl Into<String>, field: &str) -> FilesError {
    FilesError::Invalid {
        message: message.into(),
        field: field.into(),
    }
}

pub(crate) fn internal(detail: impl std::fmt::Display) -> FilesError {
    FilesError::Internal(detail.to_string())
}

impl From<StoreError> for FilesError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::FileNotFound { bucket, path } => FilesError::NotFound { bucket, path },
            StoreError::FileExists { bucket, path } => FilesError::Exists { bucket, path },
            StoreError::Denied(message) => FilesError::Forbidden(message),
            StoreError::Invalid { message, field } => FilesError::Invalid { message, field },
            StoreError::CasFailed => FilesError::Storage(StorageError::Contended),
            StoreError::Engine(e) => FilesError::Storage(e.into()),
            StoreError::Corrupt(detail) => FilesError::Storage(StorageError::Corrupt(detail)),
            // A file write never touches documents; seeing these is a store bug.
            e @ (StoreError::NotFound { .. }
            | StoreError::Conflict { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::ScanBudget(_)
            | StoreError::Referenced(_)
            | StoreError::SchemaViolation { .. }) => FilesError::Internal(e.to_string()),
        }
    }
}

impl From<BatchFailure> for FilesError {
    fn from(f: BatchFailure) -> Self {
        f.error.into()
    }
}

impl From<Denied> for FilesError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => FilesError::Unauthenticated(m),
            Denied::Forbidden(m) => FilesError::Forbidden(m),
        }
    }
}

impl From<FilesError> for Error {
    fn from(e: FilesError) -> Self {
        let message = e.to_string();
        match e {
            FilesError::BadRequest(_) => Error::bad_request(message),
            FilesError::InvalidRule { rule, column, .. } => Error::bad_request(message)
                .with_details(serde_json::json!({ "rule": rule, "column": column })),
            FilesError::Invalid { field, .. } => Error::validation(message, &field),
            FilesError::Unauthenticated(_) => Error::unauthenticated(message),
            FilesError::Forbidden(_) => Error::forbidden(message),
            FilesError::NotFound { .. } | FilesError::NotConfigured(_) => Error::not_found(message),
            FilesError::Exists { .. } => Error::new(ErrorCode::Conflict, message),
            FilesError::UnsupportedMediaType(_) => {
                Error::new(ErrorCode::UnsupportedMediaType, message)
            }
            FilesError::TooLarge { .. } => Error::new(ErrorCode::PayloadTooLarge, message),
            FilesError::DiskFull => Error::new(ErrorCode::Unavailable, message),
            FilesError::Internal(detail) => Error::internal(detail),
            FilesError::Storage(e) => e.into(),
        }
    }
}
