//! The one error type of the HTTP layer. Every error answer is JSON `{"error": "..."}`
//! with a stable status; internal causes are logged once here and never leaked.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::policy::PolicyError;
use crate::store::StoreError;

/// An error answer.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed input (400).
    #[error("{0}")]
    BadRequest(String),
    /// Not found (404).
    #[error("{0}")]
    NotFound(String),
    /// Wrong method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body did not arrive in time (408).
    #[error("request body not received in time")]
    Timeout,
    /// Body over the limit (413).
    #[error("request body too large: at most {0} bytes")]
    TooLarge(usize),
    /// Not JSON (415).
    #[error("content-type must be application/json")]
    UnsupportedMediaType,
    /// Well-formed JSON with wrong content (422).
    #[error("{0}")]
    Unprocessable(String),
    /// The policy refused the task (429).
    #[error("{reason}")]
    Rejected { reason: String, retry_after_ms: u64 },
    /// Too many requests in flight in this worker (503).
    #[error("overloaded, retry shortly")]
    Overloaded,
    /// Redis could not take or answer the request: unreachable, slow or full (503).
    #[error("{}", store_message(.0))]
    Store(#[source] StoreError),
    /// The policy failed to decide (503).
    #[error("{}", public_message(.0))]
    Policy(#[source] PolicyError),
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<PolicyError> for AppError {
    fn from(e: PolicyError) -> Self {
        match e {
            PolicyError::Store(store) => Self::Store(store),
            PolicyError::Busy(_) => Self::Overloaded,
            other => Self::Policy(other),
        }
    }
}

impl AppError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Timeout => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Rejected { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Overloaded | Self::Store(_) | Self::Policy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Seconds a client should wait before retrying, for the `Retry-After` header.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Rejected { retry_after_ms, .. } => Some(retry_after_ms.div_ceil(1000).max(1)),
            // Room comes back when an operator acts or records expire: not within a second.
            Self::Store(StoreError::Full(_)) => Some(FULL_RETRY_AFTER_SECS),
            Self::Overloaded | Self::Store(_) | Self::Policy(_) => Some(1),
            _ => None,
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            Self::Store(cause) => tracing::warn!("answering 503: {cause}"),
            // Escaped: the cause may carry a policy's own text.
            Self::Policy(cause) => tracing::error!("policy failed, answering 503: {:?}", cause.to_string()),
            _ => {}
        }
        let mut body = serde_json::json!({ "error": self.to_string() });
        if let Self::Rejected { retry_after_ms, .. } = &self {
            body["retry_after_ms"] = (*retry_after_ms).into();
        }
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(secs) = self.retry_after_secs() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `Retry-After` while Redis is full.
const FULL_RETRY_AFTER_SECS: u64 = 30;

/// What a client is told when Redis cannot take the task.
fn store_message(e: &StoreError) -> &'static str {
    match e {
        StoreError::Full(_) => "storage full: Redis is at its maxmemory and takes no new tasks until it has room",
        StoreError::Unavailable(_) | StoreError::BadReply(_) => "storage unavailable, retry shortly",
    }
}

/// What a client is told of a policy failure: the kind, not the guest's internals.
fn public_message(e: &PolicyError) -> String {
    match e {
        PolicyError::OutOfFuel => "policy failed: ran out of fuel".into(),
        PolicyError::Trap(_) => "policy failed: trapped".into(),
        PolicyError::Failed(_) => "policy failed: returned an error".into(),
        PolicyError::Store(_) => "storage unavailable, retry shortly".into(),
        PolicyError::NotLoaded(name) => format!("policy {name} is not loaded"),
        PolicyError::Busy(_) => "overloaded".into(),
    }
}
