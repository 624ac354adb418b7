//! API errors, and the one place where a failure becomes an HTTP status and a metric label: a
//! handler says what kind of refusal it is ([`Refusal`]), never which status to send.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode, header};

use crate::coredms::{StoreError, StoreErrorKind};
use crate::queue::{QueueError, QueueErrorKind};

/// What kind of refusal an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The request is malformed (a bad parameter, malformed JSON or multipart).
    BadRequest,
    /// No valid token (or a tenant that does not exist: the same answer).
    Unauthorized,
    /// The tenant may not do this (a file type it may not upload).
    Forbidden,
    /// No such endpoint, file, table or instance.
    NotFound,
    /// The endpoint takes other methods.
    MethodNotAllowed,
    /// The client sent too slowly.
    TooSlow,
    /// The body's content type is not one the endpoint reads.
    UnsupportedMediaType,
    /// The request conflicts with the state (a table's schema, an instance limit).
    Conflict,
    /// A file or message over its size limit.
    TooLarge,
    /// The request target is too long.
    UriTooLong,
    /// The request's headers are too large.
    HeadersTooLarge,
    /// The tenant has as many files in flight as it may.
    TooManyFiles,
    /// The tenant sends faster than its rate, or reads more at once than it may.
    TooManyRequests,
    /// The tenant's data occupies its quota.
    OverQuota,
    /// A service the platform needs (storage, the queue) is not available now.
    Unavailable,
    /// The platform failed.
    Internal,
}

impl Refusal {
    /// The HTTP status.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::BadRequest => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Refusal::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Refusal::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Conflict => StatusCode::CONFLICT,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Refusal::TooManyFiles | Refusal::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            Refusal::OverQuota => StatusCode::INSUFFICIENT_STORAGE,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The label of the `reason` of refusal metrics.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::BadRequest => "bad_request",
            Refusal::Unauthorized => "unauthorized",
            Refusal::Forbidden => "forbidden",
            Refusal::NotFound => "not_found",
            Refusal::MethodNotAllowed => "method",
            Refusal::TooSlow => "too_slow",
            Refusal::UnsupportedMediaType => "media_type",
            Refusal::Conflict => "conflict",
            Refusal::TooLarge => "too_large",
            Refusal::UriTooLong => "uri_too_long",
            Refusal::HeadersTooLarge => "headers_too_large",
            Refusal::TooManyFiles => "files_number",
            Refusal::TooManyRequests => "rate",
            Refusal::OverQuota => "quota",
            Refusal::Unavailable => "unavailable",
            Refusal::Internal => "error",
        }
    }
}

/// An error answer: `{"error": "<message>"}` with the status of its refusal (and `Retry-After`
/// when a client may try again later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// What kind of refusal.
    pub refusal: Refusal,
    /// The message.
    pub message: String,
    /// Seconds a client should wait before retrying.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A refusal of `refusal`'s kind.
    pub fn new(refusal: Refusal, message: impl Into<String>) -> Self {
        ApiError {
            refusal,
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
        Self::new(Refusal::BadRequest, message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(Refusal::NotFound, message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Refusal::Internal, message)
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.refusal.status()
    }

    /// The HTTP response.
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = super::json(self.status(), &serde_json::json!({ "error": self.message }));
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
        let refusal = match e.kind {
            StoreErrorKind::NotFound => Refusal::NotFound,
            StoreErrorKind::Invalid => Refusal::BadRequest,
            StoreErrorKind::Schema => Refusal::Conflict,
            StoreErrorKind::Unavailable | StoreErrorKind::Timeout => Refusal::Unavailable,
            StoreErrorKind::Internal => Refusal::Internal,
        };
        let error = ApiError::new(refusal, e.message.clone());
        match e.retry_after() {
            Some(after) => error.retry_after(after),
            None => error,
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        let refusal = match e.kind {
            QueueErrorKind::Unavailable | QueueErrorKind::Timeout | QueueErrorKind::Rebalanced => Refusal::Unavailable,
            QueueErrorKind::TooLarge => Refusal::TooLarge,
            QueueErrorKind::Invalid => Refusal::BadRequest,
            QueueErrorKind::Internal => Refusal::Internal,
        };
        let error = ApiError::new(refusal, e.message.clone());
        match refusal {
            Refusal::Unavailable => error.retry_after(e.retry_after().unwrap_or(Duration::from_secs(5))),
            _ => error,
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        ApiError::internal(format!("the platform could not complete the request: {e}"))
    }
}
