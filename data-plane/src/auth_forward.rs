//! `/v1/auth/*` and `/.well-known/jwks.json` forwarded to the control-plane replicas
//! (unauthenticated here: the control plane runs the flows), with the client address in
//! `x-forwarded-for` and the correlation and trace headers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use gateway_edge::http::{CorrelationId, TraceContext};
use gateway_edge::{ApiError, ErrorCode};

/// Headers passed from the client to the control plane (browser sessions need their
/// cookies, the CSRF header, the delivery choice and the fetch metadata).
const REQUEST_HEADERS: [&str; 7] = [
    "authorization",
    "content-type",
    "accept",
    "cookie",
    "x-csrf-token",
    "x-token-delivery",
    "sec-fetch-site",
];
/// Headers passed back from the control plane (every value of each).
const RESPONSE_HEADERS: [&str; 6] = [
    "content-type",
    "cache-control",
    "pragma",
    "retry-after",
    "set-cookie",
    "www-authenticate",
];

#[derive(Clone)]
pub struct AuthForward {
    pub client: reqwest::Client,
    pub control_planes: Arc<[String]>,
    pub timeout: std::time::Duration,
    next: Arc<AtomicUsize>,
}

impl AuthForward {
    pub fn new(
        client: reqwest::Client,
        control_planes: Vec<String>,
        timeout: std::time::Duration,
    ) -> AuthForward {
        AuthForward {
            client,
            control_planes: control_planes.into(),
            timeout,
            next: Arc::default(),
        }
    }
}

/// Forwards to the replicas in turn; a replica that cannot be reached is skipped.
#[allow(clippy::too_many_arguments)] // one axum extractor per argument
pub async fn forward(
    State(state): State<AuthForward>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(trace): Extension<TraceContext>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let count = state.control_planes.len();
    if count == 0 {
        return Err(ApiError::not_found("authentication is not served here"));
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
        .map_err(|_| ApiError::new(ErrorCode::MethodNotAllowed, "method not supported"))?;
    let start = state.next.fetch_add(1, Ordering::Relaxed);
    for attempt in 0..count {
        let base = &state.control_planes[(start + attempt) % count];
        let mut request = state
            .client
            .request(method.clone(), format!("{base}{path}"))
            .timeout(state.timeout)
            // the data plane is the edge: it names the client, whatever the client claims
            .header("x-forwarded-for", peer.ip().to_string())
            .header("x-correlation-id", correlation.header_value())
            .header("traceparent", trace.header_value())
            .body(body.clone());
        for name in REQUEST_HEADERS {
            for value in headers.get_all(name) {
                request = request.header(name, value);
            }
        }
        match request.send().await {
            Ok(response) => {
                let status = StatusCode::from_u16(response.status().as_u16())
                    .unwrap_or(StatusCode::BAD_GATEWAY);
                let passed: Vec<(&str, HeaderValue)> = RESPONSE_HEADERS
                    .iter()
                    .flat_map(|name| {
                        response
                            .headers()
                            .get_all(*name)
                            .iter()
                            .filter_map(|value| {
                                Some((*name, HeaderValue::from_bytes(value.as_bytes()).ok()?))
                            })
                    })
                    .collect();
                let bytes = response.bytes().await.map_err(|_| {
                    ApiError::new(
                        ErrorCode::BadGateway,
                        "the control plane answer was cut short",
                    )
                })?;
                let mut answer = (status, bytes).into_response();
                answer.extensions_mut().insert(gateway_edge::http::Relayed);
                // the control plane's values replace ours (content type), all of them
                // (several set-cookie)
                for name in RESPONSE_HEADERS {
                    answer.headers_mut().remove(name);
                }
                for (name, value) in passed {
                    answer.headers_mut().append(name, value);
                }
                return Ok(answer);
            }
            // a request that reached a replica is never sent twice (it may not be idempotent)
            Err(err) if err.is_connect() => {
                tracing::warn!(control_plane = %base, error = %err, "control plane unreachable, trying the next");
                continue;
            }
            Err(err) if err.is_timeout() => {
                return Err(ApiError::new(
                    ErrorCode::UpstreamTimeout,
                    "the control plane did not answer in time",
                ));
            }
            Err(err) => {
                tracing::warn!(control_plane = %base, error = %err, "control plane request failed");
                return Err(ApiError::new(
                    ErrorCode::UpstreamUnavailable,
                    "authentication is unavailable",
                )
                .with_retry_after(1));
            }
        }
    }
    Err(ApiError::new(
        ErrorCode::UpstreamUnavailable,
        "authentication is unavailable",
    )
    .with_retry_after(1))
}
