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
///
/// A body that comes as one piece (the usual case: the connection read it whole) is taken
/// as it is, without gathering pieces into a list first.
pub async fn read_body(
    mut body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    let mut first = axum::body::Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|err| {
            // a bound of the body itself (a limit layer's, or a streamed body's own)
            if over_limit(&err) {
                body_too_large()
            } else {
                ApiError::bad_request("the request could not be read")
            }
        })?;
        let Ok(piece) = frame.into_data() else {
            continue; // trailers are not part of the body
        };
        let held = joined.as_ref().map_or(first.len(), bytes::BytesMut::len);
        if piece.len() > limit.saturating_sub(held) {
            return Err(body_too_large());
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&piece),
            None if first.is_empty() => first = piece,
            None => {
                let mut both = bytes::BytesMut::with_capacity(held + piece.len());
                both.extend_from_slice(&first);
                both.extend_from_slice(&piece);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map_or(first, bytes::BytesMut::freeze))
}

/// Whether `err` (or what caused it) is a body going past a limit.
pub fn over_limit(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(err) = next {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        next = err.source();
    }
    false
}

/// 413: the request body is over its route's limit.
pub fn body_too_large() -> ApiError {
    ApiError::new(ErrorCode::PayloadTooLarge, "the request body is too large")
}

/// Fallback for unknown routes, in the envelope.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}
