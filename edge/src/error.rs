//! The error envelope of both planes: [`ApiError`] writes
//! `{"error": {code, message, correlation_id}}` with the status of its [`ErrorCode`], and
//! becomes a gRPC status with the same code.

use axum::Json;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use gateway_core::{ErrorCode, Reason};
use serde::Serialize;

use crate::http::current_correlation_id;
use gateway_store::StoreError;

/// `code`'s gRPC status code as tonic names it.
pub fn tonic_code(code: ErrorCode) -> tonic::Code {
    tonic::Code::from_i32(code.grpc_code().number())
}

/// The canonical name of a gRPC status code (`DEADLINE_EXCEEDED`, as the gRPC spec and
/// every other implementation spell it), for metric labels and log fields.
pub fn grpc_code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error answered to a client, in the envelope of both planes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: ErrorCode,
    /// A more precise code for the envelope (e.g. [`Reason::RefreshTokenReused`] for an
    /// `Unauthenticated` error); the status still comes from `code`.
    pub reason: Option<Reason>,
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
    pub fn with_reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The code written in the envelope.
    pub fn envelope_code(&self) -> &'static str {
        match self.reason {
            Some(reason) => reason.as_str(),
            None => self.code.as_str(),
        }
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
        tonic::Status::new(tonic_code(self.code), self.message.clone())
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
        if self.code == ErrorCode::Unauthenticated {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, www_authenticate(self.reason));
        }
        response
    }
}

/// The challenge of a 401 (RFC 9110 §11.6.1 requires one; RFC 6750 §3 says how a bearer
/// resource server words it): `invalid_token` when a token came and was refused,
/// `invalid_request` when it was ambiguous or malformed, no error code when none came (or
/// the refusal is not about the token, such as a wrong password).
fn www_authenticate(reason: Option<Reason>) -> HeaderValue {
    use Reason::*;
    match reason {
        Some(AmbiguousToken | MalformedToken) => {
            HeaderValue::from_static("Bearer realm=\"gateway\", error=\"invalid_request\"")
        }
        Some(
            WrongTokenType | UnknownKey | AlgorithmMismatch | BadSignature | WrongIssuer
            | WrongAudience | TokenExpired | TokenNotYetValid | UnknownPrincipal
            | PrincipalDisabled | TokenRevoked | SessionRevoked,
        ) => HeaderValue::from_static("Bearer realm=\"gateway\", error=\"invalid_token\""),
        _ => HeaderValue::from_static("Bearer realm=\"gateway\""),
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
    fn every_401_carries_a_bearer_challenge() {
        let challenge = |err: ApiError| {
            let response = err.into_response();
            response.headers().get(header::WWW_AUTHENTICATE).cloned()
        };
        let bare =
            ApiError::new(ErrorCode::Unauthenticated, "sign in").with_reason(Reason::MissingToken);
        assert_eq!(challenge(bare).unwrap(), "Bearer realm=\"gateway\"");
        let expired =
            ApiError::new(ErrorCode::Unauthenticated, "expired").with_reason(Reason::TokenExpired);
        assert_eq!(
            challenge(expired).unwrap(),
            "Bearer realm=\"gateway\", error=\"invalid_token\""
        );
        let malformed =
            ApiError::new(ErrorCode::Unauthenticated, "x").with_reason(Reason::MalformedToken);
        let malformed = challenge(malformed).unwrap();
        assert!(malformed.to_str().unwrap().contains("invalid_request"));
        assert!(challenge(ApiError::new(ErrorCode::Forbidden, "no")).is_none());
    }

    #[test]
    fn grpc_code_names_are_the_canonical_ones() {
        for number in 0..=16 {
            let code = tonic::Code::from_i32(number);
            let name = grpc_code_name(code);
            assert!(
                name.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{name}"
            );
            // tonic's own description differs in case only for most codes; the number
            // is the same one the name stands for
            assert_eq!(code as i32, number);
        }
        assert_eq!(
            grpc_code_name(tonic::Code::DeadlineExceeded),
            "DEADLINE_EXCEEDED"
        );
        assert_eq!(grpc_code_name(tonic::Code::Ok), "OK");
    }

    #[test]
    fn grpc_codes_are_tonics_numbers() {
        assert_eq!(
            tonic_code(ErrorCode::Unauthenticated),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            tonic_code(ErrorCode::Forbidden),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            tonic_code(ErrorCode::UpstreamTimeout),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(tonic_code(ErrorCode::Overloaded), tonic::Code::Unavailable);
    }

    #[test]
    fn the_reason_refines_the_envelope_code_not_the_status() {
        let plain = ApiError::new(ErrorCode::Unauthenticated, "no");
        assert_eq!(plain.envelope_code(), "unauthenticated");
        let reused = plain.with_reason(Reason::RefreshTokenReused);
        assert_eq!(reused.envelope_code(), "refresh_token_reused");
        assert_eq!(reused.to_string(), "refresh_token_reused: no");
        assert_eq!(reused.into_response().status(), 401);
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
