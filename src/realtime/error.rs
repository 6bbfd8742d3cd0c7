//! What can go wrong when subscribing, as variants an embedding program can match on, and
//! their one mapping into the public [`Error`].

use crate::docs::DocsError;
use crate::error::{Error, ErrorCode, StorageError};
use crate::store::StoreError;

/// An error of [`Realtime::subscribe`](super::Realtime::subscribe).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RealtimeError {
    /// Topics that are missing, too many or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// A topic or filter the document service refuses (a bad name or id, a filter that does
    /// not parse).
    #[error(transparent)]
    Request(#[from] DocsError),
    /// The read rule of a topic's collection denies the caller every document.
    #[error("{0}")]
    Forbidden(String),
    /// No open connection with that id belongs to the caller.
    #[error("{0}")]
    NoConnection(String),
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("too many realtime subscribers; try again later")]
    Full,
    /// This client already holds its share of streams; `retry_after` is in seconds.
    #[error("this client already has {open} open realtime streams; close one, or subscribe to several topics on one stream")]
    TooManyStreams { open: usize, retry_after: u64 },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The result of a realtime operation.
pub(crate) type Result<T, E = RealtimeError> = std::result::Result<T, E>;

impl From<StoreError> for RealtimeError {
    fn from(e: StoreError) -> Self {
        RealtimeError::Request(e.into())
    }
}

impl From<RealtimeError> for Error {
    fn from(e: RealtimeError) -> Self {
        let message = e.to_string();
        match e {
            RealtimeError::BadRequest(_) => Error::bad_request(message),
            RealtimeError::Request(e) => e.into(),
            RealtimeError::Forbidden(_) => Error::forbidden(message),
            RealtimeError::NoConnection(_) => Error::not_found(message),
            RealtimeError::ShuttingDown | RealtimeError::Full => {
                Error::new(ErrorCode::Unavailable, message)
            }
            RealtimeError::TooManyStreams { retry_after, .. } => {
                let mut err = Error::new(ErrorCode::RateLimited, message);
                err.retry_after = Some(retry_after);
                err
            }
            RealtimeError::Storage(e) => e.into(),
        }
    }
}
