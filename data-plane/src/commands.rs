//! Commands: the gRPC `aggregate.gateway.v1.CommandService` served to clients and its HTTP
//! wrapper, both forwarded to the aggregate shard of the tenant over pooled gRPC channels.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::HeaderMap;
use base64::Engine;
use gateway_core::rights;
use gateway_core::routing::ServiceKind;
use gateway_edge::http::{CorrelationId, Hex, TenantHeader, TraceContext, valid_correlation_id};
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};
use gateway_proto::aggregate::v1::command_service_client::CommandServiceClient;
use gateway_proto::aggregate::v1::command_service_server::CommandService;
use gateway_proto::aggregate::v1::{SubmitCommandRequest, SubmitCommandResponse};
use serde::Deserialize;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tracing::Instrument;

use crate::proxy::{ProxyState, note_principal, safe_segment, unavailable};
use crate::upstream::{Deadline, Outcome, parse_grpc_timeout, timed_out};

/// The gRPC path of `SubmitCommand` (what the assertion's `htu` names).
pub const SUBMIT_COMMAND_PATH: &str = "/aggregate.gateway.v1.CommandService/SubmitCommand";

/// Why a command did not go through: refused by the gateway, or answered with an error by
/// the aggregate (passed on as it is).
pub enum SubmitError {
    Gateway(ApiError),
    Upstream(tonic::Status),
}

impl From<ApiError> for SubmitError {
    fn from(err: ApiError) -> Self {
        SubmitError::Gateway(err)
    }
}

/// Pooled channels to aggregate endpoints.
#[derive(Clone)]
pub struct Channels {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    /// TLS of `https` aggregate endpoints (pinned CA, client identity).
    tls: tonic::transport::ClientTlsConfig,
}

impl Channels {
    pub fn new(tls: &crate::client_tls::ClientTls) -> Channels {
        Channels {
            channels: Arc::default(),
            tls: tls.tonic(),
        }
    }

    fn get(&self, endpoint: &str) -> Result<Channel, ApiError> {
        let mut channels = self.channels.lock();
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let mut builder = tonic::transport::Endpoint::from_shared(endpoint.to_string())
            .map_err(|err| ApiError::internal("aggregate endpoint", &err))?
            .connect_timeout(std::time::Duration::from_secs(2));
        if endpoint.starts_with("https://") {
            builder = builder
                .tls_config(self.tls.clone())
                .map_err(|err| ApiError::internal("aggregate tls", &err))?;
        }
        let channel = builder.connect_lazy();
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }
}

/// Authenticates, authorizes `command.submit:<aggregate_type>`, routes and forwards one
/// command within `budget` (the command deadline, or the client's shorter `grpc-timeout`).
/// The gateway supplies a `command_id` when the client gave none, so the aggregate can
/// deduplicate: that makes a second attempt on another endpoint safe when the first one
/// was unavailable.
/// Who sends a command: the verified token and the principal's published rights.
pub type Caller = (
    Arc<gateway_core::token::AccessClaims>,
    Arc<gateway_core::signed::Verified<gateway_core::authz::EffectiveRights>>,
);

/// Commands change state: a cookie session needs its CSRF token (gRPC is POST too).
fn authenticate(state: &ProxyState, headers: &HeaderMap) -> Result<Caller, ApiError> {
    state.authenticate(headers, &axum::http::Method::POST, unix_now())
}

#[allow(clippy::too_many_arguments)] // the call's parts, as both transports give them
pub async fn submit(
    state: &ProxyState,
    channels: &Channels,
    caller: &Caller,
    headers: &HeaderMap,
    correlation_id: &str,
    trace: &TraceContext,
    budget: Duration,
    forward: HeaderMap,
    mut command: SubmitCommandRequest,
) -> Result<(SubmitCommandResponse, HeaderMap), SubmitError> {
    let deadline = Deadline::after(budget);
    let (claims, rights) = caller;
    let TenantHeader(tenant) = TenantHeader::from_headers(headers)?;
    safe_segment(&command.aggregate_type)?;
    if command.aggregate_id.is_empty() || command.aggregate_id.len() > 256 {
        return Err(
            ApiError::bad_request("aggregate_id is required (at most 256 bytes)")
                .with_reason(Reason::InvalidAggregateId)
                .into(),
        );
    }
    state.authorize(
        &rights.payload,
        &tenant,
        rights::COMMAND_SUBMIT,
        Some(&command.aggregate_type),
    )?;
    let route = state.route(&tenant, ServiceKind::Aggregate)?;
    let _slot = state.upstreams.admit("command")?;
    note_principal(&claims.sub, &tenant);
    if command.command_id.trim().is_empty() {
        command.command_id = gateway_edge::http::fast_uuid().to_string();
    }
    // the client's end-to-end metadata (gRPC callers), then the gateway's own fields
    let mut metadata = tonic::metadata::MetadataMap::from_headers(forward);
    for (name, value) in [
        ("x-tenant-id", tenant.as_str()),
        ("x-principal-id", claims.sub.as_str()),
        ("x-correlation-id", correlation_id),
        ("traceparent", trace.header_str()),
    ] {
        if let Ok(value) = value.parse() {
            metadata.insert(name, value);
        }
    }
    // the client may not send its own assertion; the gateway's names the gRPC method
    metadata.remove(crate::assertion::HEADER.as_str());
    if let Some(assertion) = state.assertion(
        &route,
        &claims.sub,
        &tenant,
        rights,
        "POST",
        SUBMIT_COMMAND_PATH,
        correlation_id,
        unix_now(),
    )? && let Ok(value) = assertion.to_str().unwrap_or_default().parse()
    {
        metadata.insert(crate::assertion::HEADER.as_str(), value);
    }
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    for _ in 0..=state.upstreams.policy().retries {
        let attempt = match state.upstreams.pick(&route.endpoints, &tried) {
            Ok(attempt) => attempt,
            Err(err) => return Err(last_error.unwrap_or(err).into()),
        };
        if !tried.is_empty() {
            metrics::counter!("gateway_upstream_retries_total", "kind" => "aggregate").increment(1);
        }
        tracing::Span::current().record("upstream", attempt.url());
        tried.push(attempt.url().into());
        let mut request = tonic::Request::new(command.clone());
        *request.metadata_mut() = metadata.clone();
        // the time left travels on as the upstream's grpc-timeout
        request.set_timeout(deadline.remaining()?);
        let mut client = CommandServiceClient::new(channels.get(attempt.url())?);
        let status = match client.submit_command(request).await {
            Ok(response) => {
                attempt.report(Outcome::Answered);
                let (metadata, answer, _) = response.into_parts();
                return Ok((answer, metadata.into_headers()));
            }
            Err(status) => status,
        };
        let reason = match status.code() {
            tonic::Code::Unavailable => "unreachable",
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => "timeout",
            _ => {
                // the aggregate's own answer (invalid, conflict, …) is passed on
                attempt.report(Outcome::Answered);
                return Err(SubmitError::Upstream(status));
            }
        };
        metrics::counter!(
            "gateway_upstream_errors_total",
            "kind" => "aggregate",
            "endpoint" => attempt.url().to_string(),
            "reason" => reason
        )
        .increment(1);
        tracing::warn!(endpoint = attempt.url(), shard = %route.shard, code = ?status.code(), message = status.message(), "upstream call failed");
        attempt.report(Outcome::Failed);
        if reason == "timeout" {
            return Err(timed_out().into());
        }
        last_error = Some(unavailable());
    }
    Err(last_error.unwrap_or_else(unavailable).into())
}

/// The gRPC service clients call.
pub struct CommandProxy {
    pub state: ProxyState,
    pub channels: Channels,
}

#[tonic::async_trait]
impl CommandService for CommandProxy {
    async fn submit_command(
        &self,
        request: tonic::Request<SubmitCommandRequest>,
    ) -> Result<tonic::Response<SubmitCommandResponse>, tonic::Status> {
        let headers = request.metadata().clone().into_headers();
        let correlation_id = headers
            .get("x-correlation-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| valid_correlation_id(v))
            .map(str::to_string)
            .unwrap_or_else(|| gateway_edge::http::fast_uuid().to_string());
        let trace =
            TraceContext::from_header(headers.get("traceparent").and_then(|v| v.to_str().ok()));
        let started = std::time::Instant::now();
        // the client's deadline, when shorter than ours, bounds the upstream call
        let budget = headers
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map_or(self.state.timeouts.command, |client| {
                client.min(self.state.timeouts.command)
            });
        let span = tracing::info_span!(
            "grpc_request",
            plane = crate::PLANE,
            method = "SubmitCommand",
            correlation_id = %correlation_id,
            trace_id = %Hex(&trace.trace_id),
            principal = tracing::field::Empty,
            tenant = tracing::field::Empty,
            upstream = tracing::field::Empty,
        );
        // the whole call, not only the upstream's part, ends at the deadline: an expired
        // deadline is DEADLINE_EXCEEDED with its log line and metric, however short
        let deadline = tokio::time::Instant::now() + budget;
        let result = async {
            let caller = authenticate(&self.state, &headers)?;
            submit(
                &self.state,
                &self.channels,
                &caller,
                &headers,
                &correlation_id,
                &trace,
                budget,
                crate::headers::grpc_request_metadata(&headers),
                request.into_inner(),
            )
            .await
        }
        .instrument(span.clone());
        let result = match tokio::time::timeout_at(deadline, result).await {
            Ok(result) => result,
            Err(_) => Err(SubmitError::Gateway(deadline_passed())),
        };
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(SubmitError::Gateway(err)) => gateway_edge::error::tonic_code(err.code),
            Err(SubmitError::Upstream(status)) => status.code(),
        };
        let elapsed = started.elapsed();
        let code_name = gateway_edge::error::grpc_code_name(code);
        metrics::counter!("gateway_grpc_requests_total", "method" => "SubmitCommand", "code" => code_name).increment(1);
        metrics::histogram!("gateway_grpc_request_duration_seconds", "method" => "SubmitCommand")
            .record(elapsed.as_secs_f64());
        span.in_scope(|| {
            tracing::info!(
                code = code_name,
                elapsed_ms = elapsed.as_secs_f64() * 1000.0,
                "grpc request finished"
            )
        });
        // every answer, errors included, names its correlation id and trace
        let stamp = |metadata: &mut tonic::metadata::MetadataMap| {
            if let Ok(value) = correlation_id.parse() {
                metadata.insert("x-correlation-id", value);
            }
            if let Ok(value) = trace.header_str().parse() {
                metadata.insert("traceparent", value);
            }
        };
        match result {
            Ok((answer, upstream)) => {
                let mut response = tonic::Response::new(answer);
                // the aggregate's end-to-end metadata, then the gateway's stamp
                *response.metadata_mut() = tonic::metadata::MetadataMap::from_headers(
                    crate::headers::grpc_answer_metadata(&upstream),
                );
                stamp(response.metadata_mut());
                Ok(response)
            }
            Err(SubmitError::Gateway(err)) => {
                // the envelope's code as a google.rpc.ErrorInfo (grpc-status-details-bin),
                // and as plain metadata for clients that do not decode details
                let mut status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
                    gateway_edge::error::tonic_code(err.code),
                    err.message.clone(),
                    tonic_types::ErrorDetails::with_error_info(
                        err.envelope_code(),
                        ERROR_DOMAIN,
                        std::collections::HashMap::new(),
                    ),
                );
                if let Ok(reason) = err.envelope_code().parse() {
                    status.metadata_mut().insert("x-error-code", reason);
                }
                stamp(status.metadata_mut());
                Err(status)
            }
            Err(SubmitError::Upstream(mut status)) => {
                stamp(status.metadata_mut());
                Err(status)
            }
        }
    }
}

/// The refusal of a call whose deadline (the client's `grpc-timeout`, or the gateway's
/// command timeout) passed before it was answered.
fn deadline_passed() -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamTimeout,
        "the call's deadline passed before it was answered",
    )
    .with_reason(Reason::DeadlineExceeded)
}

/// The `domain` of the gateway's `google.rpc.ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "gateway.cloudlysis";

/// Body of `POST /v1/commands/{aggregate_type}/{aggregate_id}`.
#[derive(Deserialize)]
pub struct CommandBody {
    command_type: String,
    #[serde(default)]
    command_id: Option<String>,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    expected_version: Option<u64>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

fn upstream_to_api(status: &tonic::Status) -> ApiError {
    let (code, reason) = match status.code() {
        tonic::Code::InvalidArgument => (ErrorCode::BadRequest, Reason::InvalidArgument),
        tonic::Code::FailedPrecondition => (ErrorCode::Conflict, Reason::FailedPrecondition),
        tonic::Code::AlreadyExists => (ErrorCode::Conflict, Reason::AlreadyExists),
        tonic::Code::Aborted => (ErrorCode::Conflict, Reason::Aborted),
        tonic::Code::NotFound => (ErrorCode::NotFound, Reason::NotFound),
        tonic::Code::PermissionDenied => (ErrorCode::Forbidden, Reason::PermissionDenied),
        tonic::Code::ResourceExhausted => (ErrorCode::RateLimited, Reason::ResourceExhausted),
        _ => (ErrorCode::BadGateway, Reason::UpstreamError),
    };
    ApiError::new(code, status.message().chars().take(500).collect::<String>()).with_reason(reason)
}

/// `POST /v1/commands/{aggregate_type}/{aggregate_id}`: the HTTP form of SubmitCommand,
/// answering the same shape as JSON.
pub async fn submit_http(
    State((state, channels)): State<(ProxyState, Channels)>,
    Path((aggregate_type, aggregate_id)): Path<(String, String)>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(trace): Extension<TraceContext>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // authenticate before reading the body (401 before 400), once
    let caller = authenticate(&state, &headers)?;
    let body: CommandBody = serde_json::from_slice(&body).map_err(|_| {
        ApiError::bad_request("the body must be {command_type, payload, …}")
            .with_reason(Reason::InvalidBody)
    })?;
    let command = SubmitCommandRequest {
        aggregate_type,
        aggregate_id,
        command_type: body.command_type,
        command_id: body.command_id.unwrap_or_default(),
        payload: serde_json::to_vec(&body.payload).unwrap_or_default(),
        content_type: "application/json".into(),
        expected_version: body.expected_version,
        metadata: body.metadata,
    };
    let answer = submit(
        &state,
        &channels,
        &caller,
        &headers,
        correlation.as_str(),
        &trace,
        state.timeouts.command,
        // an HTTP client's fields are not gRPC metadata: none is passed on here
        HeaderMap::new(),
        command,
    )
    .await
    .map_err(|err| match err {
        SubmitError::Gateway(err) => err,
        SubmitError::Upstream(status) => upstream_to_api(&status),
    })?
    .0;
    let events: Vec<Value> = answer
        .events
        .iter()
        .map(|e| {
            let payload = if e.content_type.is_empty() || e.content_type == "application/json" {
                serde_json::from_slice(&e.payload).unwrap_or(Value::Null)
            } else {
                json!(base64::engine::general_purpose::STANDARD.encode(&e.payload))
            };
            json!({
                "event_type": e.event_type, "sequence": e.sequence, "payload": payload,
                "content_type": e.content_type, "metadata": e.metadata,
                "recorded_at_unix_ms": e.recorded_at_unix_ms,
            })
        })
        .collect();
    Ok(Json(json!({
        "aggregate_type": answer.aggregate_type,
        "aggregate_id": answer.aggregate_id,
        "command_id": answer.command_id,
        "events": events,
        "aggregate_version": answer.aggregate_version,
        "replayed": answer.replayed,
    })))
}
