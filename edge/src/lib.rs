//! The gateway's network edge, shared by both planes: HTTP/1.1 framing for the server
//! loop and the upstream client ([`h1`]), serving listeners (plain, TLS, HTTP/2), the
//! request context (correlation id, trace context, logs and metrics), credentials and
//! CSRF, client addresses, the ops routes, TLS, telemetry, the planes' common flags, and
//! [`ApiError`], which turns an [`ErrorCode`] into an answer on either transport.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod h1;
pub mod http;
pub mod listen;
pub mod telemetry;
pub mod tls;

pub use error::ApiError;
pub use gateway_core::{ErrorCode, Reason, unix_now};

/// [`http::BuildInfo`] of the calling crate; the git sha comes from `GATEWAY_GIT_SHA` at
/// build time (set by the Dockerfiles).
#[macro_export]
macro_rules! build_info {
    () => {
        $crate::http::BuildInfo {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            git_sha: match option_env!("GATEWAY_GIT_SHA") {
                Some(sha) => sha,
                None => "unknown",
            },
        }
    };
}
