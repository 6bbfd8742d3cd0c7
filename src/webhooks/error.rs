//! What can go wrong in the webhook service, as variants an embedding program can match on, and
//! their one mapping into the public [`Error`].

use crate::auth::Denied;
use crate::error::{Error, StorageError};
use crate::store::StoreError;

/// An error of [`Webhooks`](super::Webhooks).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WebhooksError {
    /// A malformed request: a limit or status that is not allowed.
    #[error("{0}")]
    BadRequest(String),
    /// A configuration value that breaks a rule (an unsafe URL, a `when` that does not
    /// compile); `field` names it.
    #[error("{message}")]
    Invalid { message: String, field: String },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("webhook {0} does not exist")]
    NotFound(String),
    #[error("message {0} is not kept for this webhook")]
    MessageNotFound(String),
    /// The change clashes with another webhook (its name is taken).
    #[error("{0}")]
    Conflict(String),
    /// A failure of the server itself.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub(crate) type Result<T, E = WebhooksError> = std::result::Result<T, E>;

pub(crate) fn invalid(message: impl Into<String>, field: &str) -> WebhooksError {
    WebhooksError::Invalid {
        message: message.into(),
        field: field.into(),
    }
}

impl From<StoreError> for WebhooksError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Invalid { message, field } => WebhooksError::Invalid { message, field },
            StoreError::CasFailed => WebhooksError::Storage(StorageError::Contended),
            StoreError::Engine(e) => WebhooksError::Storage(e.into()),
            StoreError::Corrupt(detail) => WebhooksError::Storage(StorageError::Corrupt(detail)),
            // Webhook records are system records; a document or file outcome is a store bug.
            e @ (StoreError::NotFound { .. }
            | StoreError::FileNotFound { .. }
            | StoreError::FileExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::Denied(_)
            | StoreError::ScanBudget(_)
            | StoreError::Referenced(_)
            | StoreError::SchemaViolation { .. }) => WebhooksError::Internal(e.to_string()),
        }
    }
}

impl From<Denied> for WebhooksError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => WebhooksError::Unauthenticated(m),
            Denied::Forbidden(m) => WebhooksError::Forbidden(m),
        }
    }
}

impl From<WebhooksError> for Error {
    fn from(e: WebhooksError) -> Self {
        let message = e.to_string();
        match e {
            WebhooksError::BadRequest(_) => Error::bad_request(message),
            WebhooksError::Invalid { field, .. } => Error::validation(message, &field),
            WebhooksError::Unauthenticated(_) => Error::unauthenticated(message),
            WebhooksError::Forbidden(_) => Error::forbidden(message),
            WebhooksError::Conflict(_) => Error::new(crate::error::ErrorCode::Conflict, message),
            WebhooksError::NotFound(_) | WebhooksError::MessageNotFound(_) => {
                Error::not_found(message)
            }
            WebhooksError::Internal(detail) => Error::internal(detail),
            WebhooksError::Storage(e) => e.into(),
        }
    }
}
