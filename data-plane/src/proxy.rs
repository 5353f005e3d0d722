//! The request path: authenticate the bearer token against the `jwks` mirror and the
//! principal's published document, resolve the tenant, authorize with the shared engine,
//! route to the owning shard, forward with correlation and trace headers.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use gateway_core::authz::{EffectiveRights, Request, TenantId, permits};
use gateway_core::rights;
use gateway_core::routing::{Route, RoutingError, ServiceKind};
use gateway_core::signed::Verified;
use gateway_core::token::AccessClaims;
use gateway_edge::http::{
    CorrelationId, TenantHeader, TraceContext, body_too_large, credential, read_body,
};
pub use gateway_edge::http::{normalize_runner_path, safe_segment};
use gateway_edge::{ApiError, ErrorCode, Reason, unix_now};

use crate::mirror::Mirrors;
use crate::pool::{Call, Reply, SendError, Streamed};
use crate::token_cache::TokenCache;
use crate::upstream::{Attempt, Deadline, Outcome, Upstreams};

/// Deadlines of the forwarded calls, per route class.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub command: Duration,
    pub query: Duration,
    pub runner: Duration,
    /// Calls forwarded to the control plane (`/v1/auth/*`, the JWKS).
    pub auth: Duration,
}

/// What the request path needs: one `Arc`, so the per-request clone axum makes of the
/// state is a counter increment, not a copy of every handle.
#[derive(Clone)]
pub struct ProxyState(Arc<ProxyShared>);

impl std::ops::Deref for ProxyState {
    type Target = ProxyShared;

    fn deref(&self) -> &ProxyShared {
        &self.0
    }
}

pub struct ProxyShared {
    pub mirrors: Arc<Mirrors>,
    /// The control-plane client (auth forwarding).
    pub client: reqwest::Client,
    /// Makes the connections of forwarded calls (each endpoint keeps its own, see
    /// [`crate::pool`]).
    pub connector: crate::pool::Connector,
    pub upstreams: Arc<Upstreams>,
    pub tokens: Arc<TokenCache>,
    /// Past this many seconds without reaching the store, authorization fails closed
    /// (0: never).
    pub max_staleness: i64,
    /// Shared, not copied: the state is cloned for every request.
    pub issuer: Arc<str>,
    pub audience: Arc<str>,
    pub timeouts: Timeouts,
    /// Largest request body of each route class, in bytes (413 past it).
    pub body_limits: crate::config::BodyLimits,
    /// Fields removed and added per route class.
    pub headers: crate::headers::HeaderPolicies,
    /// Signs the identity assertion of each forwarded call, when configured.
    pub assertion: Option<Arc<crate::assertion::AssertionSigner>>,
}

impl ProxyState {
    /// The request path of `config`, reading from `mirrors`.
    pub fn new(
        mirrors: Arc<Mirrors>,
        config: &crate::config::Config,
    ) -> Result<ProxyState, String> {
        let tls = &config.client_tls;
        // deadlines are set per call (what is left of the request's budget)
        let client = tls
            .apply(
                reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(2))
                    .pool_max_idle_per_host(64)
                    .redirect(reqwest::redirect::Policy::none()),
            )?
            .build()
            .map_err(|err| err.to_string())?;
        let connector = crate::pool::connector(tls)?;
        Ok(ProxyState(Arc::new(ProxyShared {
            mirrors,
            client,
            connector,
            upstreams: Arc::new(Upstreams::new(config.upstream.clone())),
            tokens: Arc::new(TokenCache::new(config.token_cache_size)),
            max_staleness: config.max_staleness.as_secs() as i64,
            issuer: config.token_issuer.as_str().into(),
            audience: config.token_audience.as_str().into(),
            timeouts: config.timeouts,
            body_limits: config.body_limits,
            headers: config.headers.clone(),
            assertion: config.assertion.clone(),
        })))
    }

    /// The signed identity assertion of one forwarded call (`None` when not configured).
    #[allow(clippy::too_many_arguments)] // one per claim of the assertion
    pub fn assertion(
        &self,
        route: &Route,
        principal: &str,
        tenant: &TenantId,
        rights: &Verified<EffectiveRights>,
        method: &str,
        path: &str,
        correlation: &str,
        now: i64,
    ) -> Result<Option<HeaderValue>, ApiError> {
        let Some(signer) = &self.assertion else {
            return Ok(None);
        };
        let audience = format!("{}:{}", route.kind.as_str(), route.shard);
        signer
            .sign(&crate::assertion::Call {
                audience: &audience,
                principal,
                tenant,
                rights,
                method,
                path,
                correlation,
                now,
            })
            .map(Some)
    }

    /// Verifies the token and the principal's standing from the mirrors alone.
    pub fn authenticate(
        &self,
        headers: &HeaderMap,
        method: &axum::http::Method,
        now: i64,
    ) -> Result<(Arc<AccessClaims>, Arc<Verified<EffectiveRights>>), ApiError> {
        let refuse = |reason: Reason| {
            metrics::counter!("gateway_auth_failures_total", "reason" => reason.as_str())
                .increment(1);
            gateway_edge::http::credential_refusal(reason)
        };
        // decisions from mirrors too old to trust (revocations may be missing) are refused
        if self.max_staleness > 0
            && self
                .mirrors
                .staleness(now)
                .is_some_and(|s| s > self.max_staleness)
        {
            metrics::counter!("gateway_stale_refusals_total").increment(1);
            return Err(ApiError::new(
                ErrorCode::NotReady,
                "the gateway has not reached its state store for too long; retry shortly",
            )
            .with_reason(Reason::StateStale)
            .with_retry_after(5));
        }
        let token = credential(headers, method).map_err(refuse)?;
        let keys = self.mirrors.jwks.load_full().ok_or_else(|| {
            ApiError::new(ErrorCode::NotReady, "verification keys not loaded").with_retry_after(1)
        })?;
        let claims = match self.tokens.get(token, keys.revision, now) {
            Some(claims) => claims,
            None => {
                let (claims, until) = keys
                    .verifier
                    .verify_until(token, &self.issuer, &self.audience, now)
                    .map_err(refuse)?;
                let claims = Arc::new(claims);
                self.tokens
                    .insert(token, keys.revision, Arc::clone(&claims), until);
                claims
            }
        };
        let rights = self
            .mirrors
            .principal(&claims.sub)
            .ok_or_else(|| refuse(Reason::UnknownPrincipal))?;
        if rights.payload.disabled {
            return Err(refuse(Reason::PrincipalDisabled));
        }
        // tokens issued at or before a global sign-out (same second included) are refused;
        // the control plane issues later tokens with a later iat
        let valid_after = rights.payload.tokens_valid_after;
        if valid_after > 0 && claims.iat <= valid_after {
            return Err(refuse(Reason::TokenRevoked));
        }
        // a session ended on its own: its tokens go with it, pushed like a global sign-out
        if let Some(sid) = &claims.sid
            && rights.payload.session_revoked(sid)
        {
            return Err(refuse(Reason::SessionRevoked));
        }
        Ok((claims, rights))
    }

    pub fn authorize(
        &self,
        rights: &EffectiveRights,
        tenant: &TenantId,
        action: &str,
        resource: Option<&str>,
    ) -> Result<(), ApiError> {
        let permitted = permits(
            rights,
            &Request {
                tenant: Some(tenant),
                action,
                resource,
            },
        );
        match permitted {
            Ok(_) => Ok(()),
            Err(reason) => {
                metrics::counter!("gateway_authz_denials_total", "reason" => reason.code())
                    .increment(1);
                Err(ApiError {
                    reason: reason.denial(),
                    ..ApiError::new(ErrorCode::Forbidden, format!("not allowed to {action}"))
                })
            }
        }
    }

    pub fn route(&self, tenant: &TenantId, kind: ServiceKind) -> Result<Route, ApiError> {
        let table = self.mirrors.routing.load_full().ok_or_else(|| {
            ApiError::new(ErrorCode::NotReady, "routing not loaded").with_retry_after(1)
        })?;
        table.route(tenant, kind).map_err(|err| match err {
            RoutingError::TenantNotRouted { .. } => {
                metrics::counter!("gateway_routing_misses_total", "kind" => kind.as_str())
                    .increment(1);
                ApiError::new(ErrorCode::NotFound, err.to_string())
                    .with_reason(Reason::TenantNotRouted)
            }
            other => ApiError::internal("routing", &other),
        })
    }
}

/// `POST /v1/query/{view_type}` → the projection shard of the tenant, as the router
/// serves it (for the methods the fast route does not take: 405).
pub async fn query(
    State(state): State<ProxyState>,
    mut request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let extensions = request.extensions_mut();
    let correlation = extensions
        .remove::<CorrelationId>()
        .unwrap_or_else(CorrelationId::mint);
    let trace = extensions
        .remove::<TraceContext>()
        .unwrap_or_else(|| TraceContext::from_header(None));
    let mut answer = query_with(&state, request, correlation, trace).await?;
    answer.extensions_mut().insert(gateway_edge::http::Relayed);
    Ok(answer)
}

/// The query route itself, the hottest one, served ahead of the router (see
/// [`gateway_edge::http::FastRoute`]). It reads the request in place (no copy of the
/// header map or the path), authenticates and authorizes before reading the body, and
/// passes on the client's tenant header and the request's own path as they are. Every
/// answer is the upstream's or in the envelope.
pub async fn query_with(
    state: &ProxyState,
    request: axum::extract::Request,
    correlation: CorrelationId,
    trace: TraceContext,
) -> Result<Response, ApiError> {
    let now = unix_now();
    let headers = request.headers();
    let (claims, rights) = state.authenticate(headers, &axum::http::Method::POST, now)?;
    let TenantHeader(tenant) = TenantHeader::from_headers(headers)?;
    let view_type = request
        .uri()
        .path()
        .strip_prefix("/v1/query/")
        .ok_or_else(|| ApiError::not_found("no such route"))?;
    let view_type = safe_segment(view_type)?;
    state.authorize(
        &rights.payload,
        &tenant,
        rights::QUERY_READ,
        Some(view_type),
    )?;
    let route = state.route(&tenant, ServiceKind::Projection)?;
    let _slot = state.upstreams.admit("query")?;
    note_principal(&claims.sub, &tenant);
    // the path is exactly `/v1/query/{view_type}` with a safe segment: sent on as it came
    // (shared with the parsed request, not copied), without the client's query string
    let path = match request.uri().path_and_query() {
        Some(path) if path.query().is_none() => path.clone(),
        _ => {
            PathAndQuery::from_maybe_shared(Bytes::copy_from_slice(request.uri().path().as_bytes()))
                .map_err(|err| ApiError::internal("query path", &err))?
        }
    };
    let mut identity = Identity::new(
        headers,
        &state.headers.query,
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
        "POST",
        path.as_str(),
        correlation.as_str(),
        now,
    )?;
    // the limit is applied here: this route is served ahead of the router and its
    // body-limit layer
    let body = Payload::read(request.into_body(), state.body_limits.query).await?;
    // a streamed body cannot be sent twice
    let idempotent = body.is_whole();
    let outgoing = Outgoing {
        method: axum::http::Method::POST,
        path,
        identity,
        body,
        answers: &state.headers.query,
    };
    // a query reads: sending it again to another endpoint is safe. Boxed: the call's
    // state (the connection's exchange) is not carried, and moved, in every future above
    Box::pin(forward(
        state,
        &route,
        Deadline::after(state.timeouts.query),
        idempotent,
        &outgoing,
    ))
    .await
}

static TENANT: HeaderName = HeaderName::from_static("x-tenant-id");
static PRINCIPAL: HeaderName = HeaderName::from_static("x-principal-id");
static CORRELATION: HeaderName = HeaderName::from_static("x-correlation-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// The client's `x-tenant-id`, passed on without a copy when it is exactly the tenant id
/// (the header was checked to be a single value naming `tenant`).
fn tenant_value(headers: &HeaderMap, tenant: &TenantId) -> Result<HeaderValue, ApiError> {
    match headers.get(&TENANT) {
        Some(value) if value.as_bytes() == tenant.as_str().as_bytes() => Ok(value.clone()),
        _ => HeaderValue::from_str(tenant.as_str())
            .map_err(|err| ApiError::internal("tenant header", &err)),
    }
}

/// What goes upstream, whichever endpoint of the shard takes it: the method, the path
/// (and query) after the endpoint, the fields ([`Identity`]) and the body; and how the
/// answer's fields are relayed.
pub struct Outgoing<'a> {
    pub method: axum::http::Method,
    pub path: PathAndQuery,
    pub identity: Identity,
    pub body: Payload,
    /// The route class's policy for the answer's fields.
    pub answers: &'a crate::headers::HeaderPolicy,
}

/// Request bodies up to this size are read whole before the call (so that it can be sent
/// again, to another endpoint or on a new connection); larger ones, and those of unknown
/// length, are streamed to the upstream as they arrive.
pub const WHOLE_REQUEST: u64 = 64 * 1024;

/// A request body as it goes upstream.
pub enum Payload {
    Whole(Bytes),
    /// Streamed, with its framing: taken by the attempt that sends it (an attempt that
    /// could not connect puts it back, untouched).
    Streamed(std::sync::Mutex<Option<axum::body::Body>>, Streamed),
}

impl Payload {
    /// The payload of a request `body` of at most `limit` bytes (413 past it).
    pub async fn read(body: axum::body::Body, limit: usize) -> Result<Payload, ApiError> {
        use axum::body::HttpBody;
        match body.size_hint().exact() {
            Some(length) if length <= WHOLE_REQUEST => {
                Ok(Payload::Whole(read_body(body, limit).await?))
            }
            Some(length) if length > limit as u64 => Err(body_too_large()),
            Some(length) => Ok(Payload::Streamed(
                std::sync::Mutex::new(Some(body)),
                Streamed::Length(length),
            )),
            None => Ok(Payload::Streamed(
                std::sync::Mutex::new(Some(axum::body::Body::new(http_body_util::Limited::new(
                    body, limit,
                )))),
                Streamed::Chunked,
            )),
        }
    }

    /// Whether it was read whole (and so can be sent again).
    pub fn is_whole(&self) -> bool {
        matches!(self, Payload::Whole(_))
    }
}

/// The fields every forwarded call carries: the gateway's `x-tenant-id`, `x-principal-id`,
/// `x-correlation-id` and `traceparent`, then the client's end-to-end fields as
/// [`crate::headers::outgoing`] passes them on.
pub struct Identity {
    tenant: HeaderValue,
    principal: HeaderValue,
    correlation: HeaderValue,
    traceparent: HeaderValue,
    forwarded: Vec<(HeaderName, HeaderValue)>,
    /// The signed identity assertion (`x-gateway-assertion`), when configured.
    pub assertion: Option<HeaderValue>,
}

impl Identity {
    /// The fields of a call for `tenant` by `principal`, from the client's `request`
    /// fields under the route class's `policy`.
    pub fn new(
        request: &HeaderMap,
        policy: &crate::headers::HeaderPolicy,
        tenant: &TenantId,
        principal: &str,
        correlation: &CorrelationId,
        trace: &TraceContext,
    ) -> Result<Identity, ApiError> {
        Ok(Identity {
            tenant: tenant_value(request, tenant)?,
            principal: HeaderValue::from_str(principal)
                .map_err(|err| ApiError::internal("principal header", &err))?,
            correlation: correlation.header_value(),
            traceparent: trace.header_value(),
            forwarded: crate::headers::outgoing(request, policy),
            assertion: None,
        })
    }
}

impl Outgoing<'_> {
    /// Sends the call on a kept-alive connection of `attempt`'s endpoint and reads the
    /// answer's head (and a small body) within `timeout`; a larger body then streams, each
    /// piece within `timeout` of the last.
    async fn exchange(
        &self,
        connector: &crate::pool::Connector,
        attempt: &Attempt,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<Reply, Failure> {
        let conns = attempt
            .conns()
            .map_err(|err| Failure::Unreachable(err.message))?;
        let identity = &self.identity;
        // the gateway's own fields (with the assertion when one is signed), then the
        // client's: no list is built for them
        let fields = [
            (&TENANT, &identity.tenant),
            (&PRINCIPAL, &identity.principal),
            (&CORRELATION, &identity.correlation),
            (&TRACEPARENT, &identity.traceparent),
        ];
        let with_assertion;
        let own: &[(&HeaderName, &HeaderValue)] = match &identity.assertion {
            Some(assertion) => {
                let [tenant, principal, correlation, traceparent] = fields;
                with_assertion = [
                    tenant,
                    principal,
                    correlation,
                    traceparent,
                    (&crate::assertion::HEADER, assertion),
                ];
                &with_assertion
            }
            None => &fields,
        };
        static EMPTY: Bytes = Bytes::new();
        let (body, streamed, mut upload) = match &self.body {
            Payload::Whole(body) => (body, None, None),
            Payload::Streamed(slot, framing) => {
                let taken = slot.lock().map(|mut slot| slot.take()).unwrap_or(None);
                let Some(taken) = taken else {
                    // an earlier attempt sent (some of) it
                    return Err(Failure::Failed("the request body was already sent".into()));
                };
                (&EMPTY, Some(*framing), Some(taken))
            }
        };
        let call = Call {
            method: &self.method,
            path: &self.path,
            headers: own,
            more: &identity.forwarded,
            body,
            streamed,
            idempotent,
        };
        // the pool never lets a connection carry two tenants' calls
        let partition = &identity.tenant;
        let sent = conns
            .exchange(
                connector,
                attempt.pool_policy(),
                partition,
                &call,
                upload.as_mut(),
                gateway_edge::h1::common::deadline(timeout),
                timeout,
            )
            .await;
        if let (Err(SendError::Unreachable(_)), Payload::Streamed(slot, _)) = (&sent, &self.body)
            && let Ok(mut slot) = slot.lock()
        {
            // never connected: the body is untouched, and another endpoint may take it
            *slot = upload.take();
        }
        match sent {
            Ok(reply) => Ok(reply),
            Err(SendError::Unreachable(detail)) => Err(Failure::Unreachable(detail)),
            Err(SendError::Failed(detail) | SendError::Closed(detail)) => {
                Err(Failure::Failed(detail))
            }
            Err(SendError::CutShort(detail)) => Err(Failure::CutShort(detail)),
            Err(SendError::Invalid(detail)) => Err(Failure::Invalid(detail)),
            Err(SendError::BodyFailed(detail)) => Err(Failure::Body(detail)),
            Err(SendError::BodyTooLarge) => Err(Failure::BodyTooLarge),
            Err(SendError::TimedOut) => Err(Failure::Timeout),
        }
    }
}

/// How one attempt ended.
enum Failure {
    /// Never reached the endpoint (connection refused, TLS, DNS): safe to send elsewhere.
    Unreachable(String),
    /// Sent, but the answer did not come (reset, protocol error).
    Failed(String),
    /// The answer was cut short while it was read.
    CutShort(String),
    /// What came back breaks the protocol (not HTTP, a status outside 100–599, ambiguous
    /// framing): the upstream may have acted on the call, so it is not sent again.
    Invalid(String),
    /// The client's streamed body failed: not the upstream's doing.
    Body(String),
    /// The client's streamed body went past the route class's limit.
    BodyTooLarge,
    Timeout,
}

/// Records who the request is for on the request span (and so on its log lines).
pub fn note_principal(principal: &str, tenant: &TenantId) {
    let span = tracing::Span::current();
    span.record("principal", principal);
    span.record("tenant", tenant.as_str());
}

fn upstream_failed(route: &Route, attempt: &Attempt, reason: &'static str) {
    metrics::counter!(
        "gateway_upstream_errors_total",
        "kind" => route.kind.as_str(),
        "endpoint" => attempt.url().to_string(),
        "reason" => reason
    )
    .increment(1);
}

/// Sends one call to the shard of `route`: picks an endpoint, sends with what is left of
/// the deadline, and tries another endpoint once more (per policy) when that is safe: the
/// request never reached the first one, or it is `idempotent`. Failures feed the circuit of
/// the endpoint; the upstream's answer is relayed as it is (routes served through the
/// router mark it [`gateway_edge::http::Relayed`] so the edge leaves it alone).
pub async fn forward(
    state: &ProxyState,
    route: &Route,
    deadline: Deadline,
    idempotent: bool,
    outgoing: &Outgoing<'_>,
) -> Result<Response, ApiError> {
    let attempts = 1 + state.upstreams.policy().retries as usize;
    // the endpoints that failed this call (nothing allocated unless one does)
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = None;
    for _ in 0..attempts {
        let attempt = match state.upstreams.pick(&route.endpoints, &tried) {
            Ok(attempt) => attempt,
            // nothing left to try: the first failure is the answer
            Err(err) => return Err(last_error.unwrap_or(err)),
        };
        if !tried.is_empty() {
            metrics::counter!("gateway_upstream_retries_total", "kind" => route.kind.as_str())
                .increment(1);
        }
        tracing::Span::current().record("upstream", attempt.url());
        let Reply {
            status,
            headers,
            body,
        } = match outgoing
            .exchange(
                &state.connector,
                &attempt,
                deadline.remaining()?,
                idempotent,
            )
            .await
        {
            Ok(answer) => answer,
            Err(failure) => {
                let (reason, error, retry, detail) = match failure {
                    Failure::Unreachable(detail) => ("unreachable", unavailable(), true, detail),
                    Failure::Failed(detail) => ("failed", unavailable(), idempotent, detail),
                    Failure::CutShort(detail) => (
                        "cut_short",
                        ApiError::new(ErrorCode::BadGateway, "the upstream answer was cut short"),
                        false,
                        detail,
                    ),
                    // a broken answer is a bad gateway, not an outage: no retry-after, so
                    // clients do not retry into it
                    Failure::Invalid(detail) => (
                        "invalid_answer",
                        ApiError::new(
                            ErrorCode::BadGateway,
                            "the upstream answer could not be read",
                        ),
                        false,
                        detail,
                    ),
                    // the client's side failed: the endpoint is not to blame
                    Failure::BodyTooLarge => {
                        attempt.report(Outcome::Answered);
                        return Err(body_too_large());
                    }
                    Failure::Body(detail) => {
                        tracing::info!(error = %detail, "the request body failed while it was sent");
                        attempt.report(Outcome::Answered);
                        return Err(ApiError::bad_request("the request body could not be read")
                            .with_reason(Reason::MalformedRequest));
                    }
                    Failure::Timeout => (
                        "timeout",
                        crate::upstream::timed_out(),
                        false,
                        "deadline".to_string(),
                    ),
                };
                tracing::warn!(endpoint = attempt.url(), shard = %route.shard, error = %detail, reason, "upstream call failed");
                upstream_failed(route, &attempt, reason);
                tried.push(attempt.url_arc());
                attempt.report(Outcome::Failed);
                if !retry {
                    return Err(error);
                }
                last_error = Some(error);
                continue;
            }
        };
        if matches!(status.as_u16(), 502..=504) {
            upstream_failed(route, &attempt, "status");
            attempt.report(Outcome::Failed);
        } else {
            attempt.report(Outcome::Answered);
        }
        // relayed: the status, the end-to-end fields (crate::headers::relayed: never a
        // gateway cookie, `nosniff` unless the upstream chose, an upstream's answer being
        // served from the gateway's origin) and the body (a 205 never has one, RFC 9110
        // §15.3.6); the correlation and trace headers are added on the way out
        let body = if status == StatusCode::RESET_CONTENT {
            axum::body::Body::empty()
        } else {
            body
        };
        let mut answer = Response::new(body);
        *answer.status_mut() = status;
        *answer.headers_mut() = crate::headers::relayed(headers, outgoing.answers);
        return Ok(answer);
    }
    Err(last_error.unwrap_or_else(unavailable))
}

pub fn unavailable() -> ApiError {
    ApiError::new(
        ErrorCode::UpstreamUnavailable,
        "the upstream is unavailable",
    )
    .with_retry_after(1)
}
