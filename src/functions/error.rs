//! What can go wrong in the function service, as variants an embedding program can match on,
//! and their one mapping into the public [`Error`].

use crate::auth::Denied;
use crate::error::{Error, ErrorCode, StorageError};
use crate::store::StoreError;

/// An error of [`Functions`](super::Functions).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FunctionsError {
    /// A malformed request: a function name or limit that is not allowed.
    #[error("{0}")]
    BadRequest(String),
    /// A module that does not compile, or does not export what the guest ABI requires.
    #[error("{0}")]
    InvalidModule(String),
    /// A configuration value that breaks a limit or a required shape; `field` names it.
    #[error("{message}")]
    Invalid { message: String, field: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("function {0} does not exist")]
    NotFound(String),
    #[error("no function {0} with an http trigger")]
    NoHttpTrigger(String),
    #[error("the module is over the limit of {max} bytes")]
    TooLarge { max: usize },
    /// The function's daily quota is spent: it runs again tomorrow (UTC) or when raised.
    #[error("function {0} has spent its daily quota")]
    QuotaSpent(String),
    /// The sandbox cannot take the invocation now (its queue is full, or it is shutting down).
    #[error("{0}")]
    Busy(String),
    /// The guest failed: a trap, an error it returned, a timeout, or output that is not JSON.
    #[error("{0}")]
    Failed(String),
    /// A failure of the server itself (writing a module, loading an artifact).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The result of a function operation.
pub(crate) type Result<T, E = FunctionsError> = std::result::Result<T, E>;

pub(crate) fn invalid(message: impl Into<String>, field: &str) -> FunctionsError {
    FunctionsError::Invalid {
        message: message.into(),
        field: field.into(),
    }
}

pub(crate) fn internal(detail: impl std::fmt::Display) -> FunctionsError {
    FunctionsError::Internal(detail.to_string())
}

impl From<StoreError> for FunctionsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { message, field } => FunctionsError::Invalid { message, field },
            StoreError::CasFailed => FunctionsError::Storage(StorageError::Contended),
            StoreError::Engine(e) => FunctionsError::Storage(e.into()),
            StoreError::Corrupt(detail) => FunctionsError::Storage(StorageError::Corrupt(detail)),
            // Function records are system records; a document or file outcome is a store bug.
            e @ (StoreError::NotFound { .. }
            | StoreError::FileNotFound { .. }
            | StoreError::FileExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::Denied(_)
            | StoreError::ScanBudget(_)
            | StoreError::Referenced(_)
            | StoreError::SchemaViolation { .. }) => FunctionsError::Internal(e.to_string()),
        }
    }
}

impl From<Denied> for FunctionsError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => FunctionsError::Unauthenticated(m),
            Denied::Forbidden(m) => FunctionsError::Forbidden(m),
        }
    }
}

impl From<FunctionsError> for Error {
    fn from(e: FunctionsError) -> Self {
        let message = e.to_string();
        match e {
            FunctionsError::BadRequest(_) | FunctionsError::InvalidModule(_) => {
                Error::bad_request(message)
            }
            FunctionsError::Invalid { field, .. } => Error::validation(message, &field),
            FunctionsError::Unauthenticated(_) => Error::unauthenticated(message),
            FunctionsError::Forbidden(_) => Error::forbidden(message),
            FunctionsError::NotFound(_) | FunctionsError::NoHttpTrigger(_) => {
                Error::not_found(message)
            }
            FunctionsError::TooLarge { .. } => Error::new(ErrorCode::PayloadTooLarge, message),
            FunctionsError::QuotaSpent(_) => Error::new(ErrorCode::RateLimited, message),
            FunctionsError::Busy(_) => Error::new(ErrorCode::Unavailable, message),
            FunctionsError::Failed(_) => Error::new(ErrorCode::FunctionFailed, message),
            FunctionsError::Internal(detail) => Error::internal(detail),
            FunctionsError::Storage(e) => e.into(),
        }
    }
}
