//! The ops routes of both planes (`/health`, `/ready`, `/metrics`, `/version`), readiness
//! checks, and the container health probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use gateway_core::ErrorCode;
use gateway_store::Store;

use super::*;

/// One condition of readiness.
#[async_trait]
pub trait ReadyCheck: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// `Err(reason)` while not ready.
    async fn check(&self) -> Result<(), String>;
}

/// The store answers.
pub struct StoreReady(pub Store);

#[async_trait]
impl ReadyCheck for StoreReady {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        match tokio::time::timeout(Duration::from_secs(2), self.0.check()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("store did not answer within 2s".to_string()),
        }
    }
}

/// Readiness of a plane: every check passes and the plane is not draining.
#[derive(Default)]
pub struct Readiness {
    draining: AtomicBool,
    checks: Vec<Arc<dyn ReadyCheck>>,
}

impl Readiness {
    pub fn new(checks: Vec<Arc<dyn ReadyCheck>>) -> Self {
        Readiness {
            draining: AtomicBool::new(false),
            checks,
        }
    }

    /// From now on `/ready` answers 503 (shutdown has begun).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Names and failure reasons of the checks that do not pass.
    pub async fn failures(&self) -> Vec<(&'static str, String)> {
        let mut failures = Vec::new();
        if self.is_draining() {
            failures.push(("lifecycle", "draining for shutdown".to_string()));
        }
        for check in &self.checks {
            if let Err(reason) = check.check().await {
                failures.push((check.name(), reason));
            }
        }
        failures
    }
}

/// Build facts shown by `/version` and the `build_info` metric.
#[derive(Clone, Copy, Debug)]
pub struct BuildInfo {
    pub name: &'static str,
    pub version: &'static str,
    pub git_sha: &'static str,
}

#[derive(Clone)]
struct OpsState {
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    build: BuildInfo,
}

/// `/health` and `/ready` alone (for a public listener that must not expose metrics).
pub fn probe_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(readiness)
}

/// `/health`, `/ready`, `/metrics` and `/version`.
pub fn ops_router(
    readiness: Arc<Readiness>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    build: BuildInfo,
) -> Router {
    metrics::gauge!(
        "gateway_build_info",
        "name" => build.name,
        "version" => build.version,
        "git_sha" => build.git_sha
    )
    .set(1.0);
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/version", get(version))
        .with_state(OpsState { metrics, build })
        .merge(probe_router(readiness))
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok"}))
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> Response {
    let failures = readiness.failures().await;
    if failures.is_empty() {
        return axum::Json(json!({"status": "ready"})).into_response();
    }
    let checks: serde_json::Map<String, serde_json::Value> = failures
        .into_iter()
        .map(|(name, reason)| (name.to_string(), json!(reason)))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({
            "status": "not_ready",
            "error": {"code": ErrorCode::NotReady.as_str(), "message": "not ready", "correlation_id": current_correlation_id()},
            "checks": checks,
        })),
    )
        .into_response()
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    (headers, state.metrics.render()).into_response()
}

async fn version(State(state): State<OpsState>) -> impl IntoResponse {
    axum::Json(json!({
        "name": state.build.name,
        "version": state.build.version,
        "git_sha": state.build.git_sha,
    }))
}

/// The status code of `GET url` (`http://host:port/path`, plain HTTP/1.1), within
/// `timeout`: the container HEALTHCHECK of both images (`<plane> healthcheck`), which have
/// no curl.
pub async fn probe_status(url: &str, timeout: Duration) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains(['@', ' ']) {
        return Err(format!("{url:?} has no usable host"));
    }
    let host =
        HeaderValue::from_str(authority).map_err(|_| format!("{url:?} has no usable host"))?;
    let path = axum::http::uri::PathAndQuery::try_from(path)
        .map_err(|_| format!("{url:?} has no usable path"))?;
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|err| format!("cannot connect to {authority}: {err}"))?;
        let close = HeaderValue::from_static("close");
        let call = crate::h1::client::Call {
            method: &axum::http::Method::GET,
            path: &path,
            headers: &[(&axum::http::header::CONNECTION, &close)],
            body: &bytes::Bytes::new(),
            idempotent: true,
        };
        let mut out = Vec::new();
        crate::h1::client::send(&mut stream, &mut out, &host, &call)
            .await
            .map_err(|err| err.to_string())?;
        let mut buf = bytes::BytesMut::new();
        let (answer, _) =
            crate::h1::client::read_answer(&mut stream, &mut buf, false, OPS_MAX_BODY)
                .await
                .map_err(|err| format!("not an HTTP answer: {err:?}"))?;
        Ok(answer.status.as_u16())
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// The `healthcheck` subcommand of both binaries: 0 when `url` answers 200 within 3 s.
pub async fn healthcheck(url: &str) -> std::process::ExitCode {
    match probe_status(url, Duration::from_secs(3)).await {
        Ok(200) => std::process::ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("healthcheck: {url} answered {status}");
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("healthcheck: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Largest request body the ops listeners read: their routes take none.
pub const OPS_MAX_BODY: usize = 64 * 1024;
