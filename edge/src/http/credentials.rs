//! The caller's credential: a bearer token, or a browser session's cookies under the
//! double-submit CSRF check.

use axum::http::HeaderMap;

use crate::error::ApiError;
use gateway_core::{ErrorCode, Reason};

/// Browser sessions: the access token in an `HttpOnly; Secure; SameSite=Strict` cookie.
pub const ACCESS_COOKIE: &str = "__Host-gw_access";
/// The refresh token of a browser session (same attributes).
pub const REFRESH_COOKIE: &str = "__Host-gw_refresh";
/// The CSRF token of a browser session: readable by the page, sent back in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "__Host-gw_csrf";
/// Binds a Google sign-in or link to the browser that started it (`SameSite=Lax`: the
/// provider's redirect back is a cross-site navigation).
pub const OIDC_COOKIE: &str = "__Host-gw_oidc";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// `x-token-delivery: cookie` asks the token routes for cookies instead of a JSON body.
pub const DELIVERY_HEADER: &str = "x-token-delivery";

/// The value of the cookie `name` among every `cookie` header; `None` when absent or sent
/// more than once (two values are ambiguous, and a second one is how cookie tossing
/// attacks look).
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    let mut found = None;
    for header in headers.get_all(axum::http::header::COOKIE) {
        let Ok(text) = header.to_str() else { continue };
        for pair in text.split(';') {
            if let Some((key, value)) = pair.trim().split_once('=')
                && key == name
            {
                if found.is_some() {
                    return None;
                }
                found = Some(value.trim_matches('"'));
            }
        }
    }
    found
}

/// Equal byte strings, in time independent of where they differ (`subtle`; the length is
/// not secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// A cookie is an ambient credential: the browser sends it whatever page asked. A
/// state-changing request (any method but GET, HEAD, OPTIONS, TRACE) authenticated by
/// cookie must carry [`CSRF_HEADER`] equal to the [`CSRF_COOKIE`] (double submit: another
/// site can make the browser send the cookie but cannot read it), and must not be a
/// cross-site fetch (`sec-fetch-site`). Error: [`Reason::CsrfFailed`].
pub fn check_csrf(headers: &HeaderMap, method: &axum::http::Method) -> Result<(), Reason> {
    if method.is_safe() {
        return Ok(());
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err(Reason::CsrfFailed);
    }
    let expected = cookie(headers, CSRF_COOKIE).ok_or(Reason::CsrfFailed)?;
    let mut given = headers.get_all(CSRF_HEADER).iter();
    let (Some(value), None) = (given.next(), given.next()) else {
        return Err(Reason::CsrfFailed);
    };
    if expected.len() < 16 || !constant_time_eq(expected.as_bytes(), value.as_bytes()) {
        return Err(Reason::CsrfFailed);
    }
    Ok(())
}

/// The caller's access token: `Authorization: Bearer` (APIs, services) or else the
/// [`ACCESS_COOKIE`] of a browser session, under [`check_csrf`]. Errors are reasons
/// (those of [`bearer_token`], and [`Reason::CsrfFailed`]).
pub fn credential<'a>(
    headers: &'a HeaderMap,
    method: &axum::http::Method,
) -> Result<&'a str, Reason> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return bearer_token(headers);
    }
    let token = cookie(headers, ACCESS_COOKIE).ok_or(Reason::MissingToken)?;
    check_csrf(headers, method)?;
    if token.is_empty() || token.len() > 8192 {
        return Err(Reason::MalformedToken);
    }
    Ok(token)
}

/// The answer to a refused credential: 403 for a failed CSRF check, 401 otherwise.
pub fn credential_refusal(reason: Reason) -> ApiError {
    if reason == Reason::CsrfFailed {
        ApiError::new(
            ErrorCode::Forbidden,
            "a cookie-authenticated change needs the x-csrf-token header of its session",
        )
        .with_reason(reason)
    } else {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "a valid bearer token is required",
        )
        .with_reason(reason)
    }
}

/// The bearer token of `headers`: exactly one `Authorization: Bearer <token>`; errors are
/// reasons ([`Reason::MissingToken`], [`Reason::AmbiguousToken`], [`Reason::MalformedToken`]).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, Reason> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(Reason::MissingToken)?;
    if values.next().is_some() {
        return Err(Reason::AmbiguousToken);
    }
    let value = value.to_str().map_err(|_| Reason::MalformedToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(Reason::MalformedToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 8192 {
        return Err(Reason::MalformedToken);
    }
    Ok(token)
}
