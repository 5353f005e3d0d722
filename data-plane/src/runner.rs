//! The runner passthrough: `/admin/runner/{*path}` to the runner shard of the tenant, for
//! principals holding `runner.admin` there, with the methods of the runner contract only.

use axum::extract::{Extension, Path, State};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, Method};
use axum::response::Response;
use gateway_core::rights;
use gateway_core::routing::ServiceKind;
use gateway_edge::http::{CorrelationId, TenantHeader, TraceContext, normalize_runner_path};
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};

use crate::proxy::{Identity, Outgoing, Payload, ProxyState, forward, note_principal};
use crate::upstream::Deadline;

/// The methods of the runner passthrough.
const RUNNER_METHODS: [Method; 7] = [
    Method::GET,
    Method::HEAD,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::OPTIONS,
];

/// Methods whose requests carry no body.
const BODILESS_METHODS: [Method; 4] = [Method::GET, Method::HEAD, Method::DELETE, Method::OPTIONS];

/// `/admin/runner/{*path}` ([`RUNNER_METHODS`]) → the runner shard of the tenant;
/// `runner.admin`.
#[allow(clippy::too_many_arguments)] // one axum extractor per argument
pub async fn runner(
    State(state): State<ProxyState>,
    method: axum::http::Method,
    Path(path): Path<String>,
    Extension(correlation): Extension<CorrelationId>,
    Extension(trace): Extension<TraceContext>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    // an allow-list: a tunnel (CONNECT), a reflection of the request (TRACE) or a method
    // the runner contract does not know is never forwarded
    if !RUNNER_METHODS.contains(&method) {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            "method not allowed on this route",
        ));
    }
    // a body on a method that has no use for one (RFC 9110 §9.3) is refused, not
    // forwarded: an upstream that ignores it would read it as its next request
    if BODILESS_METHODS.contains(&method)
        && axum::body::HttpBody::size_hint(&body).exact() != Some(0)
    {
        return Err(
            ApiError::bad_request(format!("a {method} request carries no body"))
                .with_reason(Reason::UnexpectedBody),
        );
    }
    let now = unix_now();
    let (claims, rights) = state.authenticate(&headers, &method, now)?;
    let TenantHeader(tenant) = TenantHeader::from_headers(&headers)?;
    // the raw path is checked too: axum has already decoded %2F into '/'
    if uri.path().contains("%2") || uri.path().contains("%5") || uri.path().contains("//") {
        return Err(ApiError::bad_request("invalid runner path").with_reason(Reason::InvalidPath));
    }
    let path = normalize_runner_path(&path)?;
    state.authorize(&rights.payload, &tenant, rights::RUNNER_ADMIN, None)?;
    let route = state.route(&tenant, ServiceKind::Runner)?;
    let _slot = state.upstreams.admit("runner")?;
    note_principal(&claims.sub, &tenant);
    let path = match uri.query() {
        Some(query) => format!("/admin/runner/{path}?{query}"),
        None => format!("/admin/runner/{path}"),
    };
    let path = PathAndQuery::try_from(path).map_err(|_| {
        ApiError::bad_request("invalid runner path").with_reason(Reason::InvalidPath)
    })?;
    // GET, HEAD, OPTIONS, PUT and DELETE may be sent again (RFC 9110 §9.2.2); the rest
    // only when they never reached an endpoint
    let idempotent = method.is_idempotent();
    let mut identity = Identity::new(
        &headers,
        &state.headers.runner,
        &tenant,
        &claims.sub,
        &correlation,
        &trace,
    )?;
    identity.assertion = state.assertion(
        &route,
        &claims.sub,
        &tenant,
        &rights,
        method.as_str(),
        path.as_str(),
        correlation.as_str(),
        now,
    )?;
    let body = Payload::read(body, state.body_limits.runner).await?;
    // a streamed body cannot be sent twice
    let idempotent = idempotent && body.is_whole();
    let outgoing = Outgoing {
        method,
        path,
        identity,
        body,
        answers: &state.headers.runner,
    };
    let mut answer = forward(
        &state,
        &route,
        Deadline::after(state.timeouts.runner),
        idempotent,
        &outgoing,
    )
    .await?;
    // the runner's answer, whatever it is, is not the router's to rewrite
    answer.extensions_mut().insert(gateway_edge::http::Relayed);
    Ok(answer)
}
