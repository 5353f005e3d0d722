//! Request path and header handling on arbitrary input (first line: the path, then
//! `name: value` lines): never panics, and what passes is in the form the routes rely on.
#![no_main]

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use gateway_core::authz::TenantId;
use gateway_edge::http::{
    TenantHeader, bearer_token, check_unambiguous, normalize_runner_path, safe_segment,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.split('\n');
    let path = lines.next().unwrap_or_default();
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.trim().as_bytes()),
                HeaderValue::from_bytes(value.trim().as_bytes()),
            )
        {
            headers.append(name, value);
        }
    }
    if check_unambiguous(&headers, path).is_ok() {
        assert!(path.starts_with('/'));
        assert!(!path.split('/').any(|s| s == ".." || s == "."), "{path:?}");
        assert!(!path.contains('\\') && !path.to_ascii_lowercase().contains("%2f"));
    }
    if let Ok(normal) = normalize_runner_path(path.trim_start_matches('/')) {
        assert_eq!(normalize_runner_path(&normal).ok().as_deref(), Some(normal.as_str()));
        assert!(normal.split('/').all(|s| safe_segment(s).is_ok()), "{normal:?}");
    }
    if let Ok(token) = bearer_token(&headers) {
        assert!(!token.is_empty() && token.len() <= 8192);
        assert_eq!(token, token.trim());
    }
    if let Ok(TenantHeader(tenant)) = TenantHeader::from_headers(&headers) {
        assert_eq!(TenantId::parse(tenant.as_str()).ok().as_ref(), Some(&tenant));
    }
});
