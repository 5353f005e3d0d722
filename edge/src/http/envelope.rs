//! Framework-made answers rewritten into the error envelope, bounded request bodies, and
//! the fallback for unknown routes.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use gateway_core::ErrorCode;

/// Marks an answer relayed from an upstream: [`envelope`] leaves it as it is.
#[derive(Clone, Copy, Debug)]
pub struct Relayed;

/// Rewrites framework-made error answers (a body over the limit, a method not allowed,
/// a plain-text rejection) into the envelope; answers already in JSON and answers relayed
/// from upstreams pass untouched.
pub fn envelope(response: Response) -> Response {
    if response.extensions().get::<Relayed>().is_some() {
        return response;
    }
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        _ => ErrorCode::BadRequest,
    };
    let message = match code {
        ErrorCode::PayloadTooLarge => "the request body is too large",
        ErrorCode::MethodNotAllowed => "method not allowed on this route",
        ErrorCode::UnsupportedMediaType => "unsupported content type",
        ErrorCode::NotFound => "not found",
        _ => "the request could not be read",
    };
    let mut answer = ApiError::new(code, message).into_response();
    if status != code.http_status() {
        *answer.status_mut() = status;
    }
    answer
}

/// The whole request `body`, at most `limit` bytes: past it 413, as the body-limit layer
/// answers; a body cut short or malformed, 400.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(body_too_large()),
        Err(_) => Err(ApiError::bad_request("the request could not be read")),
    }
}

/// 413: the request body is over its route's limit.
pub fn body_too_large() -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
}

/// Fallback for unknown routes, in the envelope.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
