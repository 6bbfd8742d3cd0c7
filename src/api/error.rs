//! The JSON error shape (docs/http-api.md) for every failure, including actix's own.

use crate::error::{Error, ErrorCode};
use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// `{"error": {"code", "message", "details"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ErrorDetail {
    /// A stable snake_case code: `bad_request`, `not_found`, ...
    pub code: String,
    /// A human-readable explanation.
    pub message: String,
    /// Optional structured detail: the failing `field`, `column`, batch `op`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
}

impl ResponseError for Error {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response
            .content_type("application/json")
            .body(body_json(self))
    }
}

/// The JSON of an error's body.
pub(crate) fn body_json(err: &Error) -> actix_web::web::Bytes {
    let body = ErrorBody {
        error: ErrorDetail {
            code: err.code.as_str().to_string(),
            message: err.message.clone(),
            details: err.details.clone(),
        },
    };
    serde_json::to_vec(&body).unwrap_or_default().into()
}

/// Maps an error that actix raised itself (an extractor, a payload) to our shape.
pub(crate) fn from_actix(err: &actix_web::Error) -> Error {
    let status = err.as_response_error().status_code();
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        s if s < 500 => ErrorCode::BadRequest,
        _ => return Error::internal(err),
    };
    Error::new(code, err.to_string())
}
