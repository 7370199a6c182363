//! HTTP errors: a status plus the stable `ApiError` body.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use ferry_types::ApiError;

#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub body: ApiError,
}

pub type ApiResult<T> = Result<T, ApiFailure>;

impl ApiFailure {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self { status, body: ApiError::new(code, message) }
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", format!("{what} {id} does not exist"))
    }
    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }
    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
    pub fn with(status: StatusCode, body: ApiError) -> Self {
        Self { status, body }
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ferry_store::Error> for ApiFailure {
    fn from(e: ferry_store::Error) -> Self {
        use ferry_store::ErrorKind as K;
        match e.kind {
            K::Conflict => ApiFailure::conflict("NameConflict", format!("{}: the name is already in use", e.context)),
            K::VersionMismatch => {
                ApiFailure::new(StatusCode::PRECONDITION_FAILED, "VersionMismatch", e.context.clone())
            }
            K::NotFound => ApiFailure::new(StatusCode::NOT_FOUND, "NotFound", e.context.clone()),
            _ => {
                tracing::error!(error = ?e, "store failure");
                ApiFailure::internal(format!("{}: storage failure", e.context))
            }
        }
    }
}

impl From<ferry_core::Error> for ApiFailure {
    fn from(e: ferry_core::Error) -> Self {
        let body: ApiError = e.into();
        let status = if matches!(body.code.as_str(), "OperationNotAllowed" | "PlanOperationNotAllowed") {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiFailure { status, body }
    }
}

impl ApiFailure {
    /// Same status, another code and message.
    pub fn into_code(mut self, code: &str, message: impl Into<String>) -> Self {
        self.body = ferry_types::ApiError::new(code, message);
        self
    }
}
