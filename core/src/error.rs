//! Error codes of the gateway's API: one [`ErrorCode`] that knows its HTTP status and its
//! gRPC code, so both transports answer alike. The envelope itself is written at the edge
//! (`gateway_edge::ApiError`).

use http::StatusCode;

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

    pub const fn grpc_code(self) -> GrpcCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::InvalidTenant => GrpcCode::InvalidArgument,
            ErrorCode::Unauthenticated => GrpcCode::Unauthenticated,
            ErrorCode::Forbidden => GrpcCode::PermissionDenied,
            ErrorCode::NotFound => GrpcCode::NotFound,
            ErrorCode::MethodNotAllowed => GrpcCode::Unimplemented,
            ErrorCode::Conflict => GrpcCode::Aborted,
            ErrorCode::PayloadTooLarge => GrpcCode::OutOfRange,
            ErrorCode::UnsupportedMediaType => GrpcCode::InvalidArgument,
            ErrorCode::RateLimited => GrpcCode::ResourceExhausted,
            ErrorCode::Internal => GrpcCode::Internal,
            ErrorCode::BadGateway
            | ErrorCode::StoreUnavailable
            | ErrorCode::NotReady
            | ErrorCode::UpstreamUnavailable
            | ErrorCode::Overloaded => GrpcCode::Unavailable,
            ErrorCode::UpstreamTimeout => GrpcCode::DeadlineExceeded,
            ErrorCode::HeadersTooLarge => GrpcCode::ResourceExhausted,
            ErrorCode::RequestTimeout => GrpcCode::DeadlineExceeded,
        }
    }
}

/// The canonical gRPC status codes (grpc/doc/statuscodes.md) the gateway answers with; the
/// number is the one on the wire (`grpc-status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum GrpcCode {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The code's number on the wire.
    pub const fn number(self) -> i32 {
        self as i32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_alike_on_both_transports() {
        assert_eq!(ErrorCode::Unauthenticated.http_status(), 401);
        assert_eq!(ErrorCode::Unauthenticated.grpc_code().number(), 16);
        assert_eq!(ErrorCode::Forbidden.http_status(), 403);
        assert_eq!(ErrorCode::Forbidden.grpc_code(), GrpcCode::PermissionDenied);
        assert_eq!(ErrorCode::RateLimited.http_status(), 429);
        assert_eq!(ErrorCode::UpstreamTimeout.http_status(), 504);
        assert_eq!(ErrorCode::UpstreamTimeout.grpc_code().number(), 4);
    }
}
