//! The error envelope shared by both planes: one [`ErrorCode`] that knows its HTTP status
//! and gRPC code, and [`ApiError`] that writes `{"error": {code, message, correlation_id}}`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::current_correlation_id;
use crate::store::StoreError;

/// Every error code the gateway answers with. The string form is part of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    BadRequest,
    InvalidTenant,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    RateLimited,
    Internal,
    BadGateway,
    StoreUnavailable,
    NotReady,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// The gateway sheds load: too many requests in flight.
    Overloaded,
    /// The request's header section is over the gateway's limit.
    HeadersTooLarge,
    /// The request did not arrive within the connection's limit.
    RequestTimeout,
}

impl ErrorCode {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::InvalidTenant => "invalid_tenant",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::BadGateway => "bad_gateway",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::UpstreamUnavailable => "upstream_unavailable",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::HeadersTooLarge => "headers_too_large",
            ErrorCode::RequestTimeout => "request_timeout",
        }
    }

    pub const fn http_status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidTenant => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::StoreUnavailable
            | ErrorCode::NotReady
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    pub const fn grpc_code(self) -> tonic::Code {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidTenant => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::Forbidden => tonic::Code::PermissionDenied,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::MethodNotAllowed => tonic::Code::Unimplemented,
            ErrorCode::Conflict => tonic::Code::Aborted,
            ErrorCode::PayloadTooLarge => tonic::Code::OutOfRange,
            ErrorCode::UnsupportedMediaType => tonic::Code::InvalidArgument,
            ErrorCode::RateLimited => tonic::Code::ResourceExhausted,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::BadGateway
            | ErrorCode::StoreUnavailable
            | ErrorCode::NotReady
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::Overloaded => tonic::Code::Unavailable,
            ErrorCode::UpstreamTimeout => tonic::Code::DeadlineExceeded,
            ErrorCode::HeadersTooLarge => tonic::Code::ResourceExhausted,
            ErrorCode::RequestTimeout => tonic::Code::DeadlineExceeded,
        }
    }
}

/// An error answered to a client, in the envelope of both planes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// A more precise code for the envelope (e.g. `refresh_token_reused` for an
    /// `Unauthenticated` error); the status still comes from `code`.
    pub reason: Option<&'static str>,
    pub message: String,
    /// Seconds for `retry-after` (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason: None,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error with a precise envelope code.
    pub fn with_reason(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The code written in the envelope.
    pub fn envelope_code(&self) -> &'static str {
        self.reason.unwrap_or(self.code.as_str())
    }

    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// Logs `err` with context and answers an opaque 500.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(ErrorCode::Internal, "internal error")
    }

    /// The same error as a gRPC status.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.code.grpc_code(), self.message.clone())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.envelope_code(), self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Serialize)]
struct Envelope<'a> {
    error: Body<'a>,
}

#[derive(Serialize)]
struct Body<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let envelope = Envelope {
            error: Body {
                code: self.envelope_code(),
                message: &self.message,
                correlation_id: current_correlation_id(),
            },
        };
        let mut response = (self.code.http_status(), Json(envelope)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(_) => ApiError::not_found("not found"),
            StoreError::Conflict { .. } => ApiError::new(
                ErrorCode::Conflict,
                "the resource changed concurrently; read it again and retry",
            ),
            StoreError::Unavailable(detail) => {
                tracing::warn!(detail, "store unavailable");
                ApiError::new(ErrorCode::StoreUnavailable, "state store unavailable")
                    .with_retry_after(1)
            }
            StoreError::InvalidKey(err) => ApiError::bad_request(err.to_string()),
            StoreError::Corrupt(detail) => ApiError::internal("corrupt store data", &detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_alike_on_both_transports() {
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        assert_eq!(
            ErrorCode::Unauthenticated.grpc_code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(
            ErrorCode::Forbidden.grpc_code(),
            tonic::Code::PermissionDenied
        );
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::UpstreamTimeout.http_status(), 504);
    }

    #[test]
    fn store_errors_become_typed_answers() {
        let conflict: ApiError = StoreError::Conflict { key: "k".into() }.into();
        assert_eq!(conflict.code, ErrorCode::Conflict);
        let down: ApiError = StoreError::Unavailable("nats".into()).into();
        assert_eq!(down.code, ErrorCode::StoreUnavailable);
        assert_eq!(down.retry_after, Some(1));
        // internal details never reach the message
        assert!(!down.message.contains("nats"));
        let corrupt: ApiError = StoreError::Corrupt("secret detail".into()).into();
        assert_eq!(corrupt.message, "internal error");
    }
}
