//! The ops routes of both planes (`/health`, `/live`, `/ready`, `/metrics`, `/version`),
//! readiness checks, and the container health probe.
//!
//! Two signals, for two consumers:
//! - `/ready` is the load balancer's view: 503 while a check fails (the store unreachable
//!   past the data plane's `--max-staleness`, draining for shutdown, …), so traffic goes
//!   to another replica;
//! - `/live` is the orchestrator's view (the container HEALTHCHECK, which Swarm acts on by
//!   replacing the task): 503 until the plane has been ready once (a new task that never
//!   becomes ready fails its start and a rolling update rolls back), then 200 for as long
//!   as the process answers. A store outage makes replicas not ready but keeps them live:
//!   replacing every task during an outage would throw away the last-known-good state the
//!   data plane keeps serving from.

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
    /// Every check passed once: from then on the plane is live whatever its readiness.
    started: AtomicBool,
    checks: Vec<Arc<dyn ReadyCheck>>,
}

impl Readiness {
    pub fn new(checks: Vec<Arc<dyn ReadyCheck>>) -> Self {
        Readiness {
            draining: AtomicBool::new(false),
            started: AtomicBool::new(false),
            checks,
        }
    }

    /// Whether every check has passed at least once (what `/live` answers after).
    pub fn has_started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
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
        if failures.is_empty() {
            self.started.store(true, Ordering::SeqCst);
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

/// `/health`, `/live` and `/ready` alone (for a public listener that must not expose
/// metrics).
pub fn probe_router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/live", get(live))
        .route("/ready", get(ready))
        .with_state(readiness)
}

/// `/health`, `/live`, `/ready`, `/metrics` and `/version`.
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

async fn live(State(readiness): State<Arc<Readiness>>) -> Response {
    if readiness.has_started() {
        return axum::Json(json!({"status": "live"})).into_response();
    }
    // not started yet: live once ready, with the failing checks named until then
    ready(State(readiness)).await
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
            more: &[],
            body: &bytes::Bytes::new(),
            streamed: None,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    /// A check that passes while its flag is set.
    struct Toggle(Arc<AtomicBool>);

    #[async_trait]
    impl ReadyCheck for Toggle {
        fn name(&self) -> &'static str {
            "store"
        }

        async fn check(&self) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("down".into())
            }
        }
    }

    async fn status(router: &Router, path: &str) -> (u16, serde_json::Value) {
        let answer = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let body = axum::body::to_bytes(answer.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn live_waits_for_the_first_readiness_then_outlasts_outages() {
        let up = Arc::new(AtomicBool::new(false));
        let readiness = Arc::new(Readiness::new(vec![Arc::new(Toggle(Arc::clone(&up)))]));
        let router = probe_router(Arc::clone(&readiness));
        // starting: not live until ready once, with the failing check named
        let (code, body) = status(&router, "/live").await;
        assert_eq!(code, 503);
        assert_eq!(body["checks"]["store"], "down");
        assert!(!readiness.has_started());
        up.store(true, Ordering::SeqCst);
        assert_eq!(status(&router, "/live").await.0, 200);
        assert!(readiness.has_started());
        // an outage: not ready, still live
        up.store(false, Ordering::SeqCst);
        assert_eq!(status(&router, "/ready").await.0, 503);
        let (code, body) = status(&router, "/live").await;
        assert_eq!((code, body["status"].as_str()), (200, Some("live")));
        // draining: not ready, still live (Swarm is stopping the task already)
        up.store(true, Ordering::SeqCst);
        readiness.start_draining();
        assert_eq!(status(&router, "/ready").await.0, 503);
        assert_eq!(status(&router, "/live").await.0, 200);
    }
}
