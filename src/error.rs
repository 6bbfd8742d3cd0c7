//! The public error of Emberbase: a stable code, a message safe to show a client, optional
//! details. `ErrorCode` is the one table of codes, each with its HTTP status and stable name.
//!
//! Each domain has its own error enum (`DocsError`, `FilesError`, `AuthError`,
//! `FunctionsError`, `RealtimeError`), which an embedding program matches on; each is mapped
//! into [`Error`] by one explicit `From` impl in that domain's `error.rs`, so the HTTP layer
//! only ever serialises this one type. [`StorageError`], the storage failure every domain can
//! meet, is mapped here.

use serde_json::Value;

/// The stable error codes (listed in docs/http-api.md). Each has exactly one HTTP status and one snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    ValidationFailed,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    RateLimited,
    Internal,
    FunctionFailed,
    /// A sign-in provider could not be reached or gave an answer that cannot be used.
    ProviderFailed,
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status code of this error.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::ValidationFailed => 400,
            ErrorCode::Unauthenticated => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::RangeNotSatisfiable => 416,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::FunctionFailed | ErrorCode::ProviderFailed => 502,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The stable snake_case name sent as `error.code`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::ValidationFailed => "validation_failed",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::FunctionFailed => "function_failed",
            ErrorCode::ProviderFailed => "provider_failed",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// An error as a client sees it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    /// Seconds after which a throttled client may retry (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error {
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds one entry to `details` (which becomes an object if it was not one).
    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        let mut details = match self.details.take() {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        details.insert(key.to_string(), value.into());
        self.details = Some(Value::Object(details));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn validation(message: impl Into<String>, field: &str) -> Self {
        Self::new(ErrorCode::ValidationFailed, message)
            .with_details(serde_json::json!({ "field": field }))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }

    /// An internal failure. The detail goes to the log; the client sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(ErrorCode::Internal, "internal error")
    }
}

/// The storage engine could not serve a request. Nothing of the failed write was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// Concurrent writes to the same data kept conflicting past the retry limit; try again.
    #[error("too many concurrent writes to the same data; try again")]
    Contended,
    /// The engine failed (a full disk, an I/O error) or is shutting down. It recovers by
    /// itself once the cause is gone.
    #[error("storage is unavailable; try again later")]
    Unavailable,
    /// A stored record could not be read: a bug or damage, never the caller's fault.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Contended => Error::new(ErrorCode::Conflict, e.to_string()),
            StorageError::Unavailable => {
                let mut error = Error::new(ErrorCode::Unavailable, e.to_string());
                // The storage comes back by itself (a database restart, a full disk freed).
                error.retry_after = Some(1);
                error
            }
            StorageError::Corrupt(_) => Error::internal(e),
        }
    }
}
