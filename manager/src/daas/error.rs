//! API errors and the one place where failures become HTTP statuses.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

use crate::coredms::{StoreError, StoreErrorKind};

/// An error answer: `{"error": "<message>"}` with a status (and `Retry-After` for 429/503/507).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// The message.
    pub message: String,
    /// Seconds a client should wait before retrying.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same, with a `Retry-After`.
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after.as_secs().max(1));
        self
    }

    /// 400.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = super::json(self.status, &serde_json::json!({ "error": self.message }));
        if let Some(after) = self.retry_after
            && let Ok(value) = after.to_string().parse()
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match e.kind {
            StoreErrorKind::NotFound => StatusCode::NOT_FOUND,
            StoreErrorKind::Invalid => StatusCode::BAD_REQUEST,
            StoreErrorKind::Schema => StatusCode::CONFLICT,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            StoreErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let error = ApiError::new(status, e.message.clone());
        match e.retry_after() {
            Some(after) => error.retry_after(after),
            None => error,
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(format!("the platform could not complete the request: {e}"))
    }
}
