//! What can go wrong in accounts and sessions, as variants an embedding program can match on,
//! and their one mapping into the public [`Error`].

use super::Denied;
use crate::error::{Error, ErrorCode, StorageError};
use crate::store::StoreError;

/// An error of [`Accounts`](super::Accounts) and of authenticating a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A malformed request, or a one-time email token that is unknown, used or expired.
    #[error("{0}")]
    BadRequest(String),
    /// A value that breaks a rule (an email, the password policy, a role); `field` names it.
    #[error("{message}")]
    Invalid { message: String, field: String },
    /// Missing, wrong or expired credentials (including a wrong password at login).
    #[error("{0}")]
    Unauthenticated(String),
    /// Credentials that do not allow it (a disabled account, not an admin, a wrong current
    /// password).
    #[error("{0}")]
    Forbidden(String),
    #[error("user {0} does not exist")]
    UserNotFound(String),
    /// No live session (login) of this user has this id.
    #[error("no session of this user is {0:?}")]
    SessionNotFound(String),
    #[error("this email is already registered")]
    EmailTaken,
    /// A concurrent change to the same account won; try again.
    #[error("{0}")]
    Conflict(String),
    /// Too many attempts; `retry_after` is in seconds.
    #[error("{message}")]
    RateLimited { message: String, retry_after: u64 },
    /// A sign-in provider could not be reached, or answered what cannot be used.
    #[error("{0}")]
    Provider(String),
    /// No sign-in provider has this name.
    #[error("no sign-in provider is named {0:?}")]
    ProviderNotFound(String),
    /// A failure of the server itself (the hashing threads, the signing keys).
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The result of an account operation.
pub(super) type Result<T, E = AuthError> = std::result::Result<T, E>;

pub(crate) fn invalid(message: impl Into<String>, field: &str) -> AuthError {
    AuthError::Invalid {
        message: message.into(),
        field: field.into(),
    }
}

pub(crate) fn internal(detail: impl std::fmt::Display) -> AuthError {
    AuthError::Internal(detail.to_string())
}

impl From<StoreError> for AuthError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CasFailed => AuthError::Conflict(e.to_string()),
            StoreError::Invalid { message, field } => AuthError::Invalid { message, field },
            StoreError::Engine(e) => AuthError::Storage(e.into()),
            StoreError::Corrupt(detail) => AuthError::Storage(StorageError::Corrupt(detail)),
            // Account records are system records; a document or file outcome is a store bug.
            e @ (StoreError::NotFound { .. }
            | StoreError::FileNotFound { .. }
            | StoreError::FileExists { .. }
            | StoreError::Conflict { .. }
            | StoreError::VersionMismatch { .. }
            | StoreError::Denied(_)
            | StoreError::ScanBudget(_)
            | StoreError::Referenced(_)
            | StoreError::SchemaViolation { .. }) => AuthError::Internal(e.to_string()),
        }
    }
}

impl From<Denied> for AuthError {
    fn from(d: Denied) -> Self {
        match d {
            Denied::Unauthenticated(m) => AuthError::Unauthenticated(m),
            Denied::Forbidden(m) => AuthError::Forbidden(m),
        }
    }
}

impl From<Denied> for Error {
    fn from(d: Denied) -> Self {
        AuthError::from(d).into()
    }
}

impl From<AuthError> for Error {
    fn from(e: AuthError) -> Self {
        let message = e.to_string();
        match e {
            AuthError::BadRequest(_) => Error::bad_request(message),
            AuthError::Invalid { field, .. } => Error::validation(message, &field),
            AuthError::Unauthenticated(_) => Error::unauthenticated(message),
            AuthError::Forbidden(_) => Error::forbidden(message),
            AuthError::UserNotFound(_)
            | AuthError::SessionNotFound(_)
            | AuthError::ProviderNotFound(_) => Error::not_found(message),
            AuthError::Provider(_) => Error::new(ErrorCode::ProviderFailed, message),
            AuthError::EmailTaken | AuthError::Conflict(_) => {
                Error::new(ErrorCode::Conflict, message)
            }
            AuthError::RateLimited { retry_after, .. } => {
                let mut err = Error::new(ErrorCode::RateLimited, message);
                err.retry_after = Some(retry_after);
                err
            }
            AuthError::Internal(detail) => Error::internal(detail),
            AuthError::Storage(e) => e.into(),
        }
    }
}
