//! Library shared by both gateway planes: configuration helpers, telemetry, the error
//! envelope, the state store (NATS JetStream and embedded), signed documents.
#![forbid(unsafe_code)]

pub mod authz;
pub mod config;
pub mod error;
pub mod heartbeat;
pub mod http;
pub mod jwks;
pub mod routing;
pub mod signed;
pub mod store;
pub mod telemetry;
pub mod token;

pub use error::{ApiError, ErrorCode};

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

/// Seconds since the Unix epoch (wall clock). Logic that depends on time takes `now` as a
/// parameter; only the edges call this.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
