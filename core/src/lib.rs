//! The gateway's model, shared by both planes and free of I/O: rights, tenant ids and the
//! authorization decision ([`authz`]), the names of the rights ([`rights`]), the routing model ([`routing`]), signed documents
//! ([`signed`]), access-token claims ([`token`]), public keys ([`jwks`]) and the API's
//! error codes ([`error`]). It depends on serde, the crypto crates and `http`'s types only,
//! so the fuzz targets of these parsers build without a runtime.
#![forbid(unsafe_code)]

pub mod authz;
pub mod backoff;
pub mod error;
pub mod jwks;
pub mod rights;
pub mod routing;
pub mod signed;
pub mod token;

pub use error::{ErrorCode, GrpcCode, Reason};

/// Seconds since the Unix epoch (wall clock). Logic that depends on time takes `now` as a
/// parameter; only the edges call this.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch (wall clock), for limits shorter than a few seconds,
/// where whole seconds would round a 1 s lock down to nothing at a second's boundary.
pub fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether the arrays and objects of the JSON text `bytes` nest at most `max` deep. A
/// byte scan (strings and escapes skipped), run before any parser sees the body; text that
/// is not JSON passes here and fails in the parser.
pub fn json_depth_within(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod json_depth_tests {
    use super::json_depth_within;

    #[test]
    fn nesting_is_counted_outside_strings_only() {
        assert!(json_depth_within(br#"{"a":[1,{"b":2}]}"#, 3));
        assert!(!json_depth_within(br#"{"a":[1,{"b":2}]}"#, 2));
        assert!(json_depth_within(br#"{"a":"[[[[{{{{"}"#, 1));
        assert!(json_depth_within(br#"{"a":"\"[[[["}"#, 1));
        assert!(!json_depth_within(br#"{"a":"\\",  "b":[[]]}"#, 2));
        let deep = format!("{}{}", "[".repeat(40), "]".repeat(40));
        assert!(!json_depth_within(deep.as_bytes(), 32));
        assert!(json_depth_within(deep.as_bytes(), 40));
    }
}
