//! The edge rules applied before any route: requests two parsers could read two ways,
//! paths that name something other than they seem, oversized heads; and the path segment
//! rules of forwarded paths.

use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use gateway_core::{ErrorCode, Reason};

/// Most header bytes (names and values) a request may carry. Bearer tokens are about 1 KiB;
/// nothing the gateway serves needs more, and parsers disagreeing on huge heads is a classic
/// way in.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A request [`check_unambiguous`] refused, counted by reason.
pub(crate) fn refused(err: ApiError) -> Response {
    metrics::counter!("gateway_refused_requests_total", "reason" => err.envelope_code())
        .increment(1);
    err.into_response()
}

/// Refuses requests that two HTTP parsers could read two ways (request smuggling) or whose
/// path names something other than it seems; [`edge`] runs it before any route. Answers
/// in the envelope, reason codes:
/// - `ambiguous_framing`: `content-length` together with `transfer-encoding`, more than one
///   `content-length`, or a `transfer-encoding` other than `chunked` (RFC 9112 §6.1, §6.3);
/// - `invalid_path`: dot segments, empty segments, backslashes, control characters or
///   percent-encoded dots, slashes, backslashes, `%` or NUL in the path: the gateway never
///   needs them, so it refuses rather than normalising one way while an upstream
///   normalises another;
/// - 431 `headers_too_large` past [`MAX_HEADER_BYTES`].
pub fn check_unambiguous(headers: &HeaderMap, path: &str) -> Result<(), ApiError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("request headers are over {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let framing = || {
        ApiError::bad_request("the request's length is ambiguous")
            .with_reason(Reason::AmbiguousFraming)
    };
    let lengths = headers
        .get_all(axum::http::header::CONTENT_LENGTH)
        .iter()
        .count();
    let mut encodings = headers
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter();
    if let Some(encoding) = encodings.next() {
        let chunked_only = encoding.as_bytes().eq_ignore_ascii_case(b"chunked");
        if lengths > 0 || encodings.next().is_some() || !chunked_only {
            return Err(framing());
        }
    }
    if lengths > 1 {
        return Err(framing());
    }
    if !normal_path(path) {
        return Err(
            ApiError::bad_request("the request path is not in normal form")
                .with_reason(Reason::InvalidPath),
        );
    }
    Ok(())
}

/// `path` is absolute, has no empty, `.` or `..` segments (a trailing `/` aside), no
/// backslash or control character, and no percent-encoded dot, slash, backslash, `%` or NUL.
fn normal_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if path.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return false;
    }
    // every request passes here: look at each escape in place, no lowercased copy
    let refused_escape = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c') | (b'2', b'5') | (b'0', b'0')
            )
    });
    if refused_escape {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// Path segments the gateway forwards: `[A-Za-z0-9_.-]{1,128}`, never `.` or `..`.
pub fn safe_segment(value: &str) -> Result<&str, ApiError> {
    let ok = (1..=128).contains(&value.len())
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(value)
    } else {
        Err(ApiError::bad_request("invalid path segment").with_reason(Reason::InvalidPath))
    }
}

/// Normalises a runner sub-path: segments of `[A-Za-z0-9_.-]`, no empty, `.` or `..`
/// segments (no traversal), no encoded separators; refused otherwise.
pub fn normalize_runner_path(path: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request("invalid runner path").with_reason(Reason::InvalidPath);
    if path.is_empty() || path.len() > 1024 {
        return Err(invalid());
    }
    let mut segments = Vec::new();
    for segment in path.split('/') {
        safe_segment(segment).map_err(|_| invalid())?;
        segments.push(segment);
    }
    Ok(segments.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn ambiguous_framing_and_unusual_paths_are_refused() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let reason = |pairs: &[(&str, &str)], path: &str| {
            check_unambiguous(&headers(pairs), path)
                .err()
                .map(|err| err.envelope_code())
        };
        assert_eq!(reason(&[("content-length", "3")], "/v1/query/v"), None);
        assert_eq!(reason(&[("transfer-encoding", "Chunked")], "/"), None);
        for framing in [
            &[("content-length", "3"), ("transfer-encoding", "chunked")][..],
            &[("content-length", "3"), ("content-length", "3")],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "identity")],
        ] {
            assert_eq!(
                reason(framing, "/"),
                Some("ambiguous_framing"),
                "{framing:?}"
            );
        }
        for path in [
            "/v1/auth/signin",
            "/admin/runner/wf-1/",
            "/",
            "/a.b/c..d/.e",
        ] {
            assert_eq!(reason(&[], path), None, "{path}");
        }
        for path in [
            "",
            "a",
            "//",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/..",
            "/a/.",
            "/a\\b",
            "/a%2Fb",
            "/a%2fb",
            "/%2e%2e/x",
            "/a%5Cb",
            "/a%00",
            "/a%252e",
            "/a\tb",
        ] {
            assert_eq!(reason(&[], path), Some("invalid_path"), "{path}");
        }
        let big = "x".repeat(MAX_HEADER_BYTES);
        assert_eq!(reason(&[("x-big", &big)], "/"), Some("headers_too_large"));
    }

    #[test]
    fn runner_paths_are_normalised_or_refused() {
        assert_eq!(
            normalize_runner_path("workflows/wf-1").unwrap(),
            "workflows/wf-1"
        );
        for bad in [
            "",
            "..",
            "a/../b",
            "a/./b",
            "a//b",
            "/a",
            "a/",
            "a\\b",
            "a b",
            "%2e%2e",
            &"x/".repeat(600),
        ] {
            assert!(normalize_runner_path(bad).is_err(), "{bad:?}");
        }
    }
}
