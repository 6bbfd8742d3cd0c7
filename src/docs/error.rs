//! What can go wrong in the document service, as variants an embedding program can match on,
//! and their one mapping into the public [`Error`].

use crate::auth::Denied;
use crate::error::{Error, ErrorCode, StorageError};
use crate::model::Violation;
use crate::query::ParseError;
use crate::store::{BatchFailure, StoreError};

/// An error of [`Documents`](super::Documents).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DocsError {
    /// A malformed request: a name, limit, cursor or length that is not allowed.
    #[error("{0}")]
    BadRequest(String),
    /// A filter or sort that does not parse; `column` is 1-based.
    #[error("{message} at column {column}")]
    InvalidQuery { message: String, column: usize },
    /// A rule of a collection configuration that does not compile.
    #[error("rule {rule}: {message} at column {column}")]
    InvalidRule {
        rule: String,
        message: String,
        column: usize,
    },
    /// A value that breaks a limit or a required shape; `field` names it.
    #[error("{message}")]
    Invalid { message: String, field: String },
    /// A document's data does not match its collection's schema: each violation names the
    /// failing field by JSON pointer.
    #[error("the data does not match the schema of collection {collection}: {}", summary(.violations))]
    SchemaViolation {
        collection: String,
        violations: Vec<Violation>,
    },
    /// The caller must sign in (or send the service key) for this.
    #[error("{0}")]
    Unauthenticated(String),
    /// A rule, or the admin requirement, denies the caller.
    #[error("{0}")]
    Forbidden(String),
    #[error("document {collection}/{id} does not exist")]
    NotFound { collection: String, id: String },
    #[error("collection {0} has no configuration")]
    NotConfigured(String),
    #[error("document {collection}/{id} already exists")]
    AlreadyExists { collection: String, id: String },
    /// `If-Match` (or a batch op's `if_version`) names another version than the stored one.
    #[error("document {collection}/{id} is at version {actual}, not {expected}")]
    VersionMismatch {
        collection: String,
        id: String,
        expected: u64,
        actual: u64,
    },
    /// A delete refused because documents reference it through a `restrict` relation.
    #[error("{0}")]
    Referenced(String),
    /// A query would examine more documents than allowed without an index; the message names
    /// the index to declare.
    #[error("{0}")]
    NeedsIndex(String),
    /// A before-write hook refused the write, with `status` 400 or 403 and its message.
    #[error("the {hook} hook of function {function} refused the write: {message}")]
    HookRefused {
        function: String,
        hook: String,
        status: u16,
        message: String,
    },
    /// A before-write hook failed (a trap, its time or fuel ran out, a result it could not
    /// read), and so refused the write.
    #[error("the {hook} hook of function {function} failed, so the write was refused: {reason}")]
    HookFailed {
        function: String,
        hook: String,
        reason: String,
    },
    /// The document kept changing while its before-write hooks ran.
    #[error("{0}")]
    HookContention(String),
    /// One op of a batch failed; nothing of the batch was applied.
    #[error("op {op}: {error}")]
    BatchOp { op: usize, error: Box<DocsError> },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The first violations, for a one-line message.
fn summary(violations: &[Violation]) -> String {
    let mut parts: Vec<String> = violations
        .iter()
        .take(3)
        .map(|v| {
            let at = if v.pointer.is_empty() {
                "/"
            } else {
                &v.pointer
            };
            format!("{at}: {}", v.message)
        })
        .collect();
    if violations.len() > 3 {
        parts.push(format!("and {} more", violations.len() - 3));
    }
    parts.join("; ")
}

pub(crate) fn invalid(message: impl Into<String>, field: &str) -> DocsError {
    DocsError::Invalid {
        message: message.into(),
        field: field.into(),
    }
}

impl From<StoreError> for DocsError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { collection, id } => DocsError::NotFound { collection, id },
            StoreError::Conflict { collection, id } => DocsError::AlreadyExists { collection, id },
            StoreError::VersionMismatch {
                collection,
                id,
                expected,
                actual,
            } => DocsError::VersionMismatch {
                collection,
                id,
                expected,
                actual,
            },
            StoreError::Denied(message) => DocsError::Forbidden(message),
            StoreError::Invalid { message, field } => DocsError::Invalid { message, field },
            StoreError::SchemaViolation {
                collection,
                violations,
            } => DocsError::SchemaViolation {
                collection,
                violations,
            },
            StoreError::ScanBudget(message) => DocsError::NeedsIndex(message),
            StoreError::Referenced(message) => DocsError::Referenced(message),
            StoreError::CasFailed => DocsError::Storage(StorageError::Contended),
            StoreError::Engine(e) => DocsError::Storage(e.into()),
            StoreError::Corrupt(detail) => DocsError::Storage(StorageError::Corrupt(detail)),
            // A document write never touches files; seeing this is a store bug.
            e @ (StoreError::FileNotFound { .. } | StoreError::FileExists { .. }) => {
                DocsError::Storage(StorageError::Corrupt(e.to_string()))
            }
        }
    }
}

impl From<BatchFailure> for DocsError {
    fn from(f: BatchFailure) -> Self {
        DocsError::BatchOp {
            op: f.op,
            error: Box::new(f.error.into()),
        }
    }
}

impl From<ParseError> for DocsError {
    fn from(e: ParseError) -> Self {
        DocsError::InvalidQuery {
            message: e.message,
            column: e.column,
        }
    }
}

impl From<Denied> for DocsError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => DocsError::Unauthenticated(m),
            Denied::Forbidden(m) => DocsError::Forbidden(m),
        }
    }
}

impl From<DocsError> for Error {
    fn from(e: DocsError) -> Self {
        let message = e.to_string();
        match e {
            DocsError::BadRequest(_) => Error::bad_request(message),
            DocsError::InvalidQuery { column, .. } => {
                Error::bad_request(message).with_details(serde_json::json!({ "column": column }))
            }
            DocsError::InvalidRule { rule, column, .. } => Error::bad_request(message)
                .with_details(serde_json::json!({ "rule": rule, "column": column })),
            DocsError::Invalid { field, .. } => Error::validation(message, &field),
            DocsError::SchemaViolation { violations, .. } => Error::validation(message, "data")
                .with_detail("violations", serde_json::json!(violations)),
            DocsError::Unauthenticated(_) => Error::unauthenticated(message),
            DocsError::Forbidden(_) => Error::forbidden(message),
            DocsError::NotFound { .. } | DocsError::NotConfigured(_) => Error::not_found(message),
            DocsError::AlreadyExists { .. }
            | DocsError::Referenced(_)
            | DocsError::HookContention(_) => Error::new(ErrorCode::Conflict, message),
            DocsError::HookRefused {
                function,
                hook,
                status,
                message: said,
            } => {
                let code = if status == 400 {
                    ErrorCode::ValidationFailed
                } else {
                    ErrorCode::Forbidden
                };
                Error::new(code, message).with_details(
                    serde_json::json!({"function": function, "hook": hook, "message": said}),
                )
            }
            DocsError::HookFailed { function, hook, .. } => {
                Error::new(ErrorCode::FunctionFailed, message)
                    .with_details(serde_json::json!({"function": function, "hook": hook}))
            }
            DocsError::VersionMismatch { actual, .. } => {
                Error::new(ErrorCode::PreconditionFailed, message)
                    .with_details(serde_json::json!({ "version": actual }))
            }
            DocsError::NeedsIndex(_) => Error::bad_request(message),
            DocsError::BatchOp { op, error } => Error::from(*error).with_detail("op", op),
            DocsError::Storage(e) => e.into(),
        }
    }
}
