//! HTTP plumbing shared by both planes: correlation and trace context, request logging and
//! metrics, the ops routes (`/health`, `/ready`, `/metrics`, `/version`) and graceful serving.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rand::RngCore;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ApiError;
use gateway_core::ErrorCode;
use gateway_store::Store;

pub const CORRELATION_HEADER: &str = "x-correlation-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
/// The names above as header names: looking one up by `&str` parses and lower-cases the
/// name on every call, a cost every request paid a few times.
pub static CORRELATION_NAME: HeaderName = HeaderName::from_static(CORRELATION_HEADER);
pub static TRACEPARENT_NAME: HeaderName = HeaderName::from_static(TRACEPARENT_HEADER);

tokio::task_local! {
    static CORRELATION_ID: CorrelationId;
}

/// The correlation id of the request being handled, when inside one.
pub fn current_correlation_id() -> Option<String> {
    CORRELATION_ID.try_with(|id| id.as_str().to_string()).ok()
}

/// Runs `f` with `correlation` as the current correlation id (for envelopes made
/// outside a request's task scope).
pub(crate) fn in_correlation_scope<R>(correlation: CorrelationId, f: impl FnOnce() -> R) -> R {
    CORRELATION_ID.sync_scope(correlation, f)
}

/// Correlation id accepted from a client: 1–128 characters of `[A-Za-z0-9._:-]`; anything
/// else is replaced by a fresh id (never reflected back).
pub fn valid_correlation_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// W3C trace context of one request: the caller's trace (or a new one) and this hop's span.
/// The ids are kept as bytes and the `traceparent` naming this hop is encoded once: every
/// request carries one, so it costs one small allocation, not a string per id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub parent_id: Option<[u8; 8]>,
    pub span_id: [u8; 8],
    pub sampled: bool,
    traceparent: HeaderValue,
}

/// Lower-case hex of an id, formatted only when a log line or span field is written.
pub struct Hex<'a>(pub &'a [u8]);

impl std::fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A random (v4) UUID from the thread's CSPRNG: `Uuid::new_v4` asks the kernel
/// (`getrandom`) every time, one system call per id on the request path.
pub fn fast_uuid() -> uuid::Uuid {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Random bytes from the thread's CSPRNG, never all zero (invalid in W3C trace context).
fn random_id<const N: usize>() -> [u8; N] {
    let mut id = [0u8; N];
    while id.iter().all(|b| *b == 0) {
        rand::rng().fill_bytes(&mut id);
    }
    id
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `s` is `2 * N` lower-case hex digits, not all zero: the id they encode.
fn trace_id_from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut id = [0u8; N];
    (is_lower_hex(s, 2 * N)
        && hex::decode_to_slice(s, &mut id).is_ok()
        && id.iter().any(|b| *b != 0))
    .then_some(id)
}

impl TraceContext {
    fn new(
        trace_id: [u8; 16],
        parent_id: Option<[u8; 8]>,
        span_id: [u8; 8],
        sampled: bool,
    ) -> TraceContext {
        // "00-" 32 hex "-" 16 hex "-" 2 hex
        let mut text = [0u8; 55];
        text[..3].copy_from_slice(b"00-");
        let _ = hex::encode_to_slice(trace_id, &mut text[3..35]);
        text[35] = b'-';
        let _ = hex::encode_to_slice(span_id, &mut text[36..52]);
        text[52..].copy_from_slice(if sampled { b"-01" } else { b"-00" });
        let traceparent = HeaderValue::from_bytes(&text).unwrap_or_else(|_| {
            HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-00")
        });
        TraceContext {
            trace_id,
            parent_id,
            span_id,
            sampled,
            traceparent,
        }
    }

    /// Continues a valid `traceparent` (version 00) or starts a new trace.
    pub fn from_header(value: Option<&str>) -> Self {
        let parsed = value.and_then(|v| {
            let mut parts = v.trim().split('-');
            let (version, trace, parent, flags) =
                (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
            if parts.next().is_some() || version != "00" {
                return None;
            }
            let mut flag_byte = [0u8; 1];
            if !is_lower_hex(flags, 2) || hex::decode_to_slice(flags, &mut flag_byte).is_err() {
                return None;
            }
            Some((
                trace_id_from_hex::<16>(trace)?,
                trace_id_from_hex::<8>(parent)?,
                flag_byte[0] & 1 == 1,
            ))
        });
        match parsed {
            Some((trace_id, parent, sampled)) => {
                TraceContext::new(trace_id, Some(parent), random_id(), sampled)
            }
            None => TraceContext::new(random_id(), None, random_id(), true),
        }
    }

    /// The `traceparent` naming this hop as the parent (for upstream calls and the echo).
    pub fn header_value(&self) -> HeaderValue {
        self.traceparent.clone()
    }

    /// The `traceparent` as text.
    pub fn header_str(&self) -> &str {
        self.traceparent.to_str().unwrap_or_default()
    }
}

/// When spans are exported (OTLP), makes the caller's trace the parent of `span` and uses
/// the exported span's id as this hop's id, so forwarded and echoed `traceparent`s match
/// what the collector sees. Without an exporter the context is returned unchanged.
fn link_span(span: &tracing::Span, mut trace: TraceContext) -> TraceContext {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if let Some(parent) = trace.parent_id {
        let (trace_id, span_id) = (
            TraceId::from_bytes(trace.trace_id),
            SpanId::from_bytes(parent),
        );
        let flags = if trace.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let remote = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
    }
    let context = span.context();
    let exported = context.span().span_context().clone();
    if exported.is_valid() {
        trace = TraceContext::new(
            exported.trace_id().to_bytes(),
            trace.parent_id,
            exported.span_id().to_bytes(),
            trace.sampled,
        );
    }
    trace
}

/// Correlation id of the current request, as a request extension: a header value, so
/// passing it on (upstream, the echo, the error envelope) copies no bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CorrelationId(HeaderValue);

impl CorrelationId {
    /// The client's id when it is valid ([`valid_correlation_id`]), else a fresh UUID.
    pub fn accept_or_mint(value: Option<&HeaderValue>) -> CorrelationId {
        match value {
            Some(value) if value.to_str().is_ok_and(valid_correlation_id) => {
                CorrelationId(value.clone())
            }
            _ => CorrelationId::mint(),
        }
    }

    /// A fresh random UUID.
    pub fn mint() -> CorrelationId {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let text = fast_uuid().hyphenated().encode_lower(&mut text);
        CorrelationId(HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-")))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or_default()
    }

    pub fn header_value(&self) -> HeaderValue {
        self.0.clone()
    }
}

/// The request counter and duration histogram of one (plane, route, status): looked up
/// once per thread and kept, so a request does not build, hash and register metric keys
/// (their label strings were allocated on every request). Routes are the router's
/// templates (or "unmatched"), so the set is bounded. Handles come from the recorder
/// installed when first taken on a thread: both planes install it before serving.
#[derive(Clone)]
struct RequestMetrics {
    requests: metrics::Counter,
    duration: metrics::Histogram,
}

type RequestMetricsByRoute = foldhash::HashMap<Box<str>, RequestMetrics>;

thread_local! {
    static REQUEST_METRICS: std::cell::RefCell<
        foldhash::HashMap<(&'static str, u16), RequestMetricsByRoute>,
    > = std::cell::RefCell::default();
}

fn request_metrics(plane: &'static str, route: &str, status: StatusCode) -> RequestMetrics {
    let make = || RequestMetrics {
        requests: metrics::counter!(
            "gateway_http_requests_total",
            "plane" => plane,
            "route" => route.to_string(),
            "status" => status.as_str().to_string()
        ),
        duration: metrics::histogram!(
            "gateway_http_request_duration_seconds",
            "plane" => plane,
            "route" => route.to_string(),
            "status" => status_class(status)
        ),
    };
    REQUEST_METRICS
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            let by_route = cache.entry((plane, status.as_u16())).or_default();
            if let Some(found) = by_route.get(route) {
                return found.clone();
            }
            let made = make();
            by_route.insert(route.into(), made.clone());
            made
        })
        .unwrap_or_else(|_| make())
}

/// Middleware of the ops listeners: [`observed`] around the routes.
pub async fn observe(State(plane): State<&'static str>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    observed(plane, route, request, |request, correlation, trace| {
        next.run(with_ids(request, correlation, trace))
    })
    .await
}

/// The request with its correlation and trace ids as extensions, for the router's
/// handlers (`Extension<CorrelationId>`, `Extension<TraceContext>`).
fn with_ids(mut request: Request, correlation: CorrelationId, trace: TraceContext) -> Request {
    let extensions = request.extensions_mut();
    extensions.insert(correlation);
    extensions.insert(trace);
    request
}

/// Middleware of both planes' API listeners, one layer (each layer costs every request a
/// boxed future and a clone of the service below it): [`observed`] around
/// [`check_unambiguous`], around the routes, with [`envelope`]'s rewriting of
/// framework-made answers.
pub async fn edge(State(plane): State<&'static str>, request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    observed(
        plane,
        route,
        request,
        |request, correlation, trace| async move {
            match check_unambiguous(request.headers(), request.uri().path()) {
                Ok(()) => envelope(next.run(with_ids(request, correlation, trace)).await),
                Err(err) => refused(err),
            }
        },
    )
    .await
}

type BoxedAnswer = std::pin::Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

/// One route answered ahead of the router, for the hottest route of a plane: matching a
/// prefix and a method costs a few comparisons, where the router's path match, its
/// per-route boxed services, the middleware's `Next`, the connect-info extension and the
/// id extensions cost every request several boxed futures, service clones and
/// allocations (docs/benchmarks.md, fifth comparison).
///
/// Around the handler it does what [`edge`] does (observation, [`check_unambiguous`]),
/// except the envelope's rewriting of framework-made answers: the handler gets the
/// correlation and trace ids as arguments and answers in the envelope itself (or relays
/// an upstream's answer).
///
/// It takes `method` requests whose path is `prefix` followed by one non-empty segment
/// (no `/`); everything else, including other methods on that path (405), goes to the
/// router. Its metrics and logs name the route `label`, as the router would.
#[derive(Clone)]
pub struct FastRoute {
    plane: &'static str,
    method: axum::http::Method,
    prefix: &'static str,
    label: &'static str,
    handler: Arc<dyn Fn(Request) -> BoxedAnswer + Send + Sync>,
}

impl FastRoute {
    pub fn new<H, F>(
        plane: &'static str,
        method: axum::http::Method,
        prefix: &'static str,
        label: &'static str,
        handler: H,
    ) -> FastRoute
    where
        H: Fn(Request, CorrelationId, TraceContext) -> F + Send + Sync + 'static,
        F: Future<Output = Response> + Send + 'static,
    {
        let handler = Arc::new(handler);
        FastRoute {
            plane,
            method,
            prefix,
            label,
            handler: Arc::new(move |request: Request| -> BoxedAnswer {
                let handler = Arc::clone(&handler);
                Box::pin(async move {
                    Ok(observed(
                        plane,
                        label,
                        request,
                        |request, correlation, trace| async move {
                            match check_unambiguous(request.headers(), request.uri().path()) {
                                Ok(()) => handler(request, correlation, trace).await,
                                Err(err) => refused(err),
                            }
                        },
                    )
                    .await)
                })
            }),
        }
    }

    fn takes(&self, request: &Request) -> bool {
        request.method() == self.method
            && request
                .uri()
                .path()
                .strip_prefix(self.prefix)
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'))
    }
}

impl std::fmt::Debug for FastRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastRoute")
            .field("plane", &self.plane)
            .field("method", &self.method)
            .field("label", &self.label)
            .finish()
    }
}

/// What serves one connection: the fast route, if any, then the router, which also gets
/// the peer's address as `ConnectInfo`.
#[derive(Clone)]
struct Front {
    fast: Option<FastRoute>,
    router: Router,
    peer: std::net::SocketAddr,
}

impl Front {
    fn new(fast: &Option<FastRoute>, router: &Router, peer: std::net::SocketAddr) -> Front {
        Front {
            fast: fast.clone(),
            router: router.clone(),
            peer,
        }
    }
}

impl tower::Service<Request> for Front {
    type Response = Response;
    type Error = Infallible;
    type Future =
        futures::future::Either<BoxedAnswer, axum::routing::future::RouteFuture<Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        if let Some(fast) = &self.fast
            && fast.takes(&request)
        {
            return futures::future::Either::Left((fast.handler)(request));
        }
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        futures::future::Either::Right(self.router.call(request))
    }
}

/// Takes or mints `x-correlation-id` and `traceparent`, runs `inner` in a span carrying
/// `request_id` and `correlation_id`, echoes both headers, logs and counts. Every request
/// passes here: nothing is formatted unless a log line is written.
async fn observed<F: Future<Output = Response>>(
    plane: &'static str,
    route: &str,
    request: Request,
    inner: impl FnOnce(Request, CorrelationId, TraceContext) -> F,
) -> Response {
    let started = Instant::now();
    let headers = request.headers();
    let correlation = CorrelationId::accept_or_mint(headers.get(&CORRELATION_NAME));
    let incoming =
        TraceContext::from_header(headers.get(&TRACEPARENT_NAME).and_then(|v| v.to_str().ok()));
    let span = tracing::info_span!(
        "request",
        plane,
        // drawn only when the span is recorded
        request_id = %fast_uuid(),
        correlation_id = correlation.as_str(),
        trace_id = %Hex(&incoming.trace_id),
        method = %request.method(),
        route,
        // filled in by the handlers that know them
        principal = tracing::field::Empty,
        tenant = tracing::field::Empty,
        upstream = tracing::field::Empty,
    );
    let trace = link_span(&span, incoming);
    let echoed = (correlation.header_value(), trace.header_value());

    let mut response = CORRELATION_ID
        .scope(
            correlation.clone(),
            inner(request, correlation, trace).instrument(span.clone()),
        )
        .await;

    let status = response.status();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            elapsed_ms = elapsed.as_secs_f64() * 1000.0,
            "request finished"
        )
    });
    let metrics = request_metrics(plane, route, status);
    metrics.requests.increment(1);
    metrics.duration.record(elapsed.as_secs_f64());

    let headers = response.headers_mut();
    headers.insert(CORRELATION_NAME.clone(), echoed.0);
    headers.insert(TRACEPARENT_NAME.clone(), echoed.1);
    response
}

/// Most header bytes (names and values) a request may carry. Bearer tokens are about 1 KiB;
/// nothing the gateway serves needs more, and parsers disagreeing on huge heads is a classic
/// way in.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// A request [`check_unambiguous`] refused, counted by reason.
fn refused(err: ApiError) -> Response {
    metrics::counter!("gateway_refused_requests_total", "reason" => err.envelope_code())
        .increment(1);
    err.into_response()
}

/// Refuses requests that two HTTP parsers could read two ways (request smuggling) or whose
/// path names something other than it seems; [`edge`] runs it before any route. Answers
/// in the envelope, reason codes:
/// - `ambiguous_framing`: `content-length` together with `transfer-encoding`, more than one
///   `content-length`, or a `transfer-encoding` other than `chunked` (RFC 9112 §6.1, §6.3);
/// - `invalid_path`: dot segments, empty segments, backslashes, control characters or
///   percent-encoded dots, slashes, backslashes, `%` or NUL in the path: the gateway never
///   needs them, so it refuses rather than normalising one way while an upstream
///   normalises another;
/// - 431 `headers_too_large` past [`MAX_HEADER_BYTES`].
pub fn check_unambiguous(headers: &HeaderMap, path: &str) -> Result<(), ApiError> {
    let size: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if size > MAX_HEADER_BYTES {
        return Err(ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!("request headers are over {MAX_HEADER_BYTES} bytes"),
        ));
    }
    let framing = || {
        ApiError::bad_request("the request's length is ambiguous").with_reason("ambiguous_framing")
    };
    let lengths = headers
        .get_all(axum::http::header::CONTENT_LENGTH)
        .iter()
        .count();
    let mut encodings = headers
        .get_all(axum::http::header::TRANSFER_ENCODING)
        .iter();
    if let Some(encoding) = encodings.next() {
        let chunked_only = encoding.as_bytes().eq_ignore_ascii_case(b"chunked");
        if lengths > 0 || encodings.next().is_some() || !chunked_only {
            return Err(framing());
        }
    }
    if lengths > 1 {
        return Err(framing());
    }
    if !normal_path(path) {
        return Err(
            ApiError::bad_request("the request path is not in normal form")
                .with_reason("invalid_path"),
        );
    }
    Ok(())
}

/// `path` is absolute, has no empty, `.` or `..` segments (a trailing `/` aside), no
/// backslash or control character, and no percent-encoded dot, slash, backslash, `%` or NUL.
fn normal_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    if path.bytes().any(|b| b == b'\\' || b.is_ascii_control()) {
        return false;
    }
    // every request passes here: look at each escape in place, no lowercased copy
    let refused_escape = path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                (w[1], w[2].to_ascii_lowercase()),
                (b'2', b'e' | b'f') | (b'5', b'c') | (b'2', b'5') | (b'0', b'0')
            )
    });
    if refused_escape {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    rest.split('/')
        .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
}

/// Path segments the gateway forwards: `[A-Za-z0-9_.-]{1,128}`, never `.` or `..`.
pub fn safe_segment(value: &str) -> Result<&str, ApiError> {
    let ok = (1..=128).contains(&value.len())
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(value)
    } else {
        Err(ApiError::bad_request("invalid path segment").with_reason("invalid_path"))
    }
}

/// Normalises a runner sub-path: segments of `[A-Za-z0-9_.-]`, no empty, `.` or `..`
/// segments (no traversal), no encoded separators; refused otherwise.
pub fn normalize_runner_path(path: &str) -> Result<String, ApiError> {
    let invalid = || ApiError::bad_request("invalid runner path").with_reason("invalid_path");
    if path.is_empty() || path.len() > 1024 {
        return Err(invalid());
    }
    let mut segments = Vec::new();
    for segment in path.split('/') {
        safe_segment(segment).map_err(|_| invalid())?;
        segments.push(segment);
    }
    Ok(segments.join("/"))
}

/// `2xx`, `4xx`, … : latency is broken down by class, not by every status.
fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Header naming the tenant of a tenant-scoped call.
pub const TENANT_HEADER: &str = "x-tenant-id";
pub static TENANT_NAME: HeaderName = HeaderName::from_static(TENANT_HEADER);

/// The tenant of a tenant-scoped route, from exactly one well-formed `x-tenant-id`
/// header: missing, malformed or repeated headers are a 400 in the envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantHeader(pub gateway_core::authz::TenantId);

impl TenantHeader {
    /// The tenant named by `headers` (see [`TenantHeader`]).
    pub fn from_headers(headers: &HeaderMap) -> Result<TenantHeader, ApiError> {
        let mut values = headers.get_all(&TENANT_NAME).iter();
        let bad = |reason, message: &str| {
            ApiError::new(ErrorCode::InvalidTenant, message).with_reason(reason)
        };
        let Some(value) = values.next() else {
            return Err(bad("missing_tenant", "the x-tenant-id header is required"));
        };
        if values.next().is_some() {
            return Err(bad(
                "ambiguous_tenant",
                "send exactly one x-tenant-id header",
            ));
        }
        let value = value
            .to_str()
            .map_err(|_| bad("invalid_tenant", "x-tenant-id is not a tenant id"))?;
        gateway_core::authz::TenantId::parse(value)
            .map(TenantHeader)
            .map_err(|err| bad("invalid_tenant", &err.to_string()))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for TenantHeader {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        TenantHeader::from_headers(&parts.headers)
    }
}

/// Browser sessions: the access token in an `HttpOnly; Secure; SameSite=Strict` cookie.
pub const ACCESS_COOKIE: &str = "__Host-gw_access";
/// The refresh token of a browser session (same attributes).
pub const REFRESH_COOKIE: &str = "__Host-gw_refresh";
/// The CSRF token of a browser session: readable by the page, sent back in [`CSRF_HEADER`].
pub const CSRF_COOKIE: &str = "__Host-gw_csrf";
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

/// Equal byte strings, in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A cookie is an ambient credential: the browser sends it whatever page asked. A
/// state-changing request (any method but GET, HEAD, OPTIONS, TRACE) authenticated by
/// cookie must carry [`CSRF_HEADER`] equal to the [`CSRF_COOKIE`] (double submit: another
/// site can make the browser send the cookie but cannot read it), and must not be a
/// cross-site fetch (`sec-fetch-site`). Error: `csrf_failed`.
pub fn check_csrf(headers: &HeaderMap, method: &axum::http::Method) -> Result<(), &'static str> {
    if method.is_safe() {
        return Ok(());
    }
    if headers
        .get("sec-fetch-site")
        .is_some_and(|site| site.as_bytes().eq_ignore_ascii_case(b"cross-site"))
    {
        return Err("csrf_failed");
    }
    let expected = cookie(headers, CSRF_COOKIE).ok_or("csrf_failed")?;
    let mut given = headers.get_all(CSRF_HEADER).iter();
    let (Some(value), None) = (given.next(), given.next()) else {
        return Err("csrf_failed");
    };
    if expected.len() < 16 || !constant_time_eq(expected.as_bytes(), value.as_bytes()) {
        return Err("csrf_failed");
    }
    Ok(())
}

/// The caller's access token: `Authorization: Bearer` (APIs, services) or else the
/// [`ACCESS_COOKIE`] of a browser session, under [`check_csrf`]. Errors are reason codes
/// (those of [`bearer_token`], and `csrf_failed`).
pub fn credential<'a>(
    headers: &'a HeaderMap,
    method: &axum::http::Method,
) -> Result<&'a str, &'static str> {
    if headers.contains_key(axum::http::header::AUTHORIZATION) {
        return bearer_token(headers);
    }
    let token = cookie(headers, ACCESS_COOKIE).ok_or("missing_token")?;
    check_csrf(headers, method)?;
    if token.is_empty() || token.len() > 8192 {
        return Err("malformed_token");
    }
    Ok(token)
}

/// The answer to a refused credential: 403 for a failed CSRF check, 401 otherwise.
pub fn credential_refusal(reason: &'static str) -> ApiError {
    if reason == "csrf_failed" {
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
/// reason codes (`missing_token`, `ambiguous_token`, `malformed_token`).
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or("missing_token")?;
    if values.next().is_some() {
        return Err("ambiguous_token");
    }
    let value = value.to_str().map_err(|_| "malformed_token")?;
    let (scheme, token) = value.split_once(' ').ok_or("malformed_token")?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.len() > 8192 {
        return Err("malformed_token");
    }
    Ok(token)
}

/// An IP network (`10.0.0.0/8`, `::1/128`, or a single address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Result<IpNet, String> {
        let text = text.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: std::net::IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?} has an invalid prefix length"))?,
            None => max,
        };
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let to_bits = |ip: std::net::IpAddr| -> Option<(u128, u8)> {
            match ip {
                std::net::IpAddr::V4(v4) => Some((u128::from(u32::from(v4)), 32)),
                std::net::IpAddr::V6(v6) => Some((u128::from(v6), 128)),
            }
        };
        // an IPv4-mapped IPv6 peer matches IPv4 networks
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map(std::net::IpAddr::V4).unwrap_or(ip),
            other => other,
        };
        match (to_bits(self.addr), to_bits(ip)) {
            (Some((net, width)), Some((addr, width_ip))) if width == width_ip => {
                let shift = u32::from(width - self.prefix);
                shift >= 128 || (net >> shift) == (addr >> shift)
            }
            _ => false,
        }
    }
}

/// The client address of a request: the peer, or, when the peer is a trusted proxy (the
/// data plane), the last address it added to `x-forwarded-for`.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> std::net::IpAddr {
    if !trusted.iter().any(|net| net.contains(peer)) {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse().ok())
        .next_back()
        .unwrap_or(peer)
}

/// Marks an answer relayed from an upstream: [`envelope`] leaves it as it is.
#[derive(Clone, Copy, Debug)]
pub struct Relayed;

/// Rewrites framework-made error answers (a body over the limit, a method not allowed,
/// a plain-text rejection) into the envelope; answers already in JSON and answers relayed
/// from upstreams pass untouched.
pub fn envelope(response: Response) -> Response {
    if response.extensions().get::<Relayed>().is_some() {
        return response;
    }
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !status.is_client_error() || is_json {
        return response;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        _ => ErrorCode::BadRequest,
    };
    let message = match code {
        ErrorCode::PayloadTooLarge => "the request body is too large",
        ErrorCode::MethodNotAllowed => "method not allowed on this route",
        ErrorCode::UnsupportedMediaType => "unsupported content type",
        ErrorCode::NotFound => "not found",
        _ => "the request could not be read",
    };
    let mut answer = ApiError::new(code, message).into_response();
    if status != code.http_status() {
        *answer.status_mut() = status;
    }
    answer
}

/// The whole request `body`, at most `limit` bytes: past it 413, as the body-limit layer
/// answers; a body cut short or malformed, 400.
pub async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, ApiError> {
    use http_body_util::BodyExt;
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            "the request body is too large",
        )),
        Err(_) => Err(ApiError::bad_request("the request could not be read")),
    }
}

/// Fallback for unknown routes, in the envelope.
pub async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

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

/// ALPN protocols of an HTTP listener: HTTP/2 (gRPC-capable clients) and HTTP/1.1.
pub const HTTP_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Serves `app` (and `fast` ahead of it) on `listener`, over TLS when `tls` is given,
/// until `stop`; then answers what is in flight and closes idle connections, for at most
/// `drain_timeout`.
///
/// HTTP/1.x connections are served by [`crate::h1`]; HTTP/2 ones (ALPN `h2`, or the
/// prior-knowledge preface on plain TCP) by hyper.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<crate::tls::TlsReloader>>,
    app: Router,
    fast: Option<FastRoute>,
    limits: crate::h1::ConnLimits,
    stop: CancellationToken,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let mut incoming = match tls {
        Some(tls) => Incoming::Tls(crate::tls::TlsListener::new(listener, tls)?),
        None => Incoming::Plain(listener),
    };
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = incoming.accept() => accepted,
        };
        // reap finished connections, so the set holds only live ones
        while connections.try_join_next().is_some() {}
        let stop = stop.clone();
        match accepted {
            Accepted::Plain(stream, peer) => {
                let front = Front::new(&fast, &app, peer);
                connections.spawn(connection(stream, front, limits, stop, false));
            }
            Accepted::Tls(stream, peer) => {
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let front = Front::new(&fast, &app, peer);
                connections.spawn(connection(stream, front, limits, stop, h2));
            }
        }
    }
    // stop accepting (the port is released), then let the connections finish
    drop(incoming);
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(drain_timeout, drained).await.is_err() {
        tracing::warn!(
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            connections = connections.len(),
            "drain deadline passed, closing remaining connections"
        );
        connections.shutdown().await;
    }
    Ok(())
}

enum Incoming {
    Plain(TcpListener),
    Tls(crate::tls::TlsListener),
}

enum Accepted {
    Plain(tokio::net::TcpStream, std::net::SocketAddr),
    Tls(
        Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
        std::net::SocketAddr,
    ),
}

impl Incoming {
    async fn accept(&mut self) -> Accepted {
        match self {
            Incoming::Plain(listener) => loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        // answers are written whole: nothing is gained by delaying them
                        let _ = stream.set_nodelay(true);
                        return Accepted::Plain(stream, peer);
                    }
                    Err(err) => {
                        // out of descriptors and the like: back off instead of spinning
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            },
            Incoming::Tls(listener) => match listener.next().await {
                Some((stream, peer)) => Accepted::Tls(Box::new(stream), peer),
                // the handshake loop only ends when the listener is dropped
                None => std::future::pending().await,
            },
        }
    }
}

/// Serves one connection: HTTP/1.x here, HTTP/2 by hyper.
async fn connection<I>(
    mut io: I,
    front: Front,
    limits: crate::h1::ConnLimits,
    stop: CancellationToken,
    h2: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    if h2 {
        return serve_h2(io, front, limits, stop).await;
    }
    match crate::h1::serve_connection(&mut io, front.clone(), &limits, &stop).await {
        crate::h1::Outcome::Closed => {}
        crate::h1::Outcome::Http2(read) => {
            serve_h2(crate::h1::Rewind::new(read, io), front, limits, stop).await;
        }
    }
}

/// Pings of an HTTP/2 connection: one after this much silence, and the connection is
/// dropped when the answer does not come within as long again.
const H2_PING: Duration = Duration::from_secs(20);
/// How long an idle HTTP/2 connection being closed waits for its peer.
const H2_IDLE_GRACE: Duration = Duration::from_secs(2);
/// Streams one HTTP/2 connection may have open at once.
const H2_MAX_STREAMS: u32 = 256;

/// Requests of one HTTP/2 connection: in flight, and when the last one ended.
#[derive(Default)]
struct H2Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    /// Milliseconds since `started` at the last request's end (0: none yet).
    last_ms: std::sync::atomic::AtomicU64,
}

/// Serves an HTTP/2 connection with hyper: pings a silent peer, and closes the connection
/// gracefully once it has had no request in flight for `limits.head_timeout` (a peer that
/// answers pings but sends nothing, or trickles a header block, does not hold it), or when
/// `stop` fires.
async fn serve_h2<I>(io: I, front: Front, limits: crate::h1::ConnLimits, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started = tokio::time::Instant::now();
    let activity = Arc::new(H2Activity::default());
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |request: axum::http::Request<hyper::body::Incoming>| {
            let mut front = front.clone();
            let activity = Arc::clone(&activity);
            activity.in_flight.fetch_add(1, Ordering::SeqCst);
            let answer = tower::Service::call(&mut front, request.map(axum::body::Body::new));
            async move {
                let answer = answer.await;
                let ended = started.elapsed().as_millis().max(1) as u64;
                activity.last_ms.store(ended, Ordering::SeqCst);
                activity.in_flight.fetch_sub(1, Ordering::SeqCst);
                answer
            }
        })
    };
    let connection = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(H2_PING))
        .keep_alive_timeout(H2_PING)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let idle = loop {
        let last = Duration::from_millis(activity.last_ms.load(Ordering::SeqCst));
        // with a request in flight, look again a whole limit later
        let since = if activity.in_flight.load(Ordering::SeqCst) > 0 {
            tokio::time::Instant::now()
        } else {
            started + last
        };
        let idle_at = since
            .checked_add(limits.head_timeout)
            .unwrap_or_else(|| since + Duration::from_secs(365 * 24 * 3600));
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = stop.cancelled() => break false,
            _ = tokio::time::sleep_until(idle_at) => {
                let unchanged = activity.last_ms.load(Ordering::SeqCst) == last.as_millis() as u64;
                if unchanged && activity.in_flight.load(Ordering::SeqCst) == 0 {
                    break true;
                }
            }
        }
    };
    // GOAWAY; in-flight streams finish (for a stop, the drain deadline bounds them). An
    // idle peer gets a short grace to acknowledge, then the socket is dropped: a peer that
    // never answers the closing ping must not hold the connection.
    connection.as_mut().graceful_shutdown();
    if idle {
        let _ = tokio::time::timeout(H2_IDLE_GRACE, connection).await;
    } else {
        let _ = connection.await;
    }
}

/// Waits for the shutdown signal, turns `/ready` to 503, keeps serving for `drain_delay`
/// (so load balancers notice), then tells the servers to stop accepting.
pub async fn coordinate_shutdown(
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
    drain_delay: Duration,
    stop_accepting: CancellationToken,
) {
    shutdown.cancelled().await;
    tracing::info!(
        drain_delay_ms = drain_delay.as_millis() as u64,
        "shutdown requested, draining"
    );
    readiness.start_draining();
    tokio::time::sleep(drain_delay).await;
    stop_accepting.cancel();
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = term.recv() => tracing::info!("sigterm received"),
                        _ = ctrl_c => tracing::info!("sigint received"),
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "cannot listen for sigterm");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        token.cancel();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runner_paths_are_normalised_or_refused() {
        assert_eq!(
            normalize_runner_path("workflows/wf-1").unwrap(),
            "workflows/wf-1"
        );
        for bad in [
            "",
            "..",
            "a/../b",
            "a/./b",
            "a//b",
            "/a",
            "a/",
            "a\\b",
            "a b",
            "%2e%2e",
            &"x/".repeat(600),
        ] {
            assert!(normalize_runner_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ambiguous_framing_and_unusual_paths_are_refused() {
        let headers = |pairs: &[(&str, &str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.append(
                    axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                    HeaderValue::from_str(value).unwrap(),
                );
            }
            map
        };
        let reason = |pairs: &[(&str, &str)], path: &str| {
            check_unambiguous(&headers(pairs), path)
                .err()
                .map(|err| err.envelope_code())
        };
        assert_eq!(reason(&[("content-length", "3")], "/v1/query/v"), None);
        assert_eq!(reason(&[("transfer-encoding", "Chunked")], "/"), None);
        for framing in [
            &[("content-length", "3"), ("transfer-encoding", "chunked")][..],
            &[("content-length", "3"), ("content-length", "3")],
            &[("transfer-encoding", "gzip, chunked")],
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[("transfer-encoding", "identity")],
        ] {
            assert_eq!(
                reason(framing, "/"),
                Some("ambiguous_framing"),
                "{framing:?}"
            );
        }
        for path in [
            "/v1/auth/signin",
            "/admin/runner/wf-1/",
            "/",
            "/a.b/c..d/.e",
        ] {
            assert_eq!(reason(&[], path), None, "{path}");
        }
        for path in [
            "",
            "a",
            "//",
            "/a//b",
            "/a/./b",
            "/a/../b",
            "/..",
            "/a/.",
            "/a\\b",
            "/a%2Fb",
            "/a%2fb",
            "/%2e%2e/x",
            "/a%5Cb",
            "/a%00",
            "/a%252e",
            "/a\tb",
        ] {
            assert_eq!(reason(&[], path), Some("invalid_path"), "{path}");
        }
        let big = "x".repeat(MAX_HEADER_BYTES);
        assert_eq!(reason(&[("x-big", &big)], "/"), Some("headers_too_large"));
    }

    #[tokio::test]
    async fn tenant_headers_are_required_single_and_well_formed() {
        use tower::ServiceExt;
        let app = Router::new().route(
            "/t",
            get(|TenantHeader(t): TenantHeader| async move { t.to_string() }),
        );
        let call = |headers: Vec<&'static str>| {
            let app = app.clone();
            async move {
                let mut request = axum::http::Request::builder().uri("/t");
                for value in headers {
                    request = request.header(TENANT_HEADER, value);
                }
                let response = app
                    .oneshot(request.body(axum::body::Body::empty()).unwrap())
                    .await
                    .unwrap();
                let status = response.status().as_u16();
                let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
                    .await
                    .unwrap();
                (status, String::from_utf8_lossy(&bytes).into_owned())
            }
        };
        assert_eq!(call(vec!["acme"]).await, (200, "acme".into()));
        for (headers, reason) in [
            (vec![], "missing_tenant"),
            (vec!["ACME"], "invalid_tenant"),
            (vec!["acme/../globex"], "invalid_tenant"),
            (vec![""], "invalid_tenant"),
            (vec!["acme", "globex"], "ambiguous_tenant"),
        ] {
            let (status, body) = call(headers.clone()).await;
            assert_eq!(status, 400, "{headers:?}");
            assert!(body.contains(reason), "{headers:?}: {body}");
        }
    }

    #[test]
    fn forwarded_addresses_count_only_from_trusted_proxies() {
        let trusted = [
            IpNet::parse("10.0.0.0/8").unwrap(),
            IpNet::parse("::1").unwrap(),
        ];
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        let proxy: std::net::IpAddr = "10.1.2.3".parse().unwrap();
        let stranger: std::net::IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &headers, &trusted).to_string(),
            "203.0.113.9"
        );
        assert_eq!(
            client_ip(stranger, &headers, &trusted),
            stranger,
            "spoofed header ignored"
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
        assert!(
            IpNet::parse("127.0.0.0/8")
                .unwrap()
                .contains("::ffff:127.0.0.9".parse().unwrap())
        );
        assert!(
            !IpNet::parse("10.0.0.0/8")
                .unwrap()
                .contains("11.0.0.1".parse().unwrap())
        );
        assert!(
            IpNet::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        for bad in ["", "10.0.0.0/33", "host", "::1/129"] {
            assert!(IpNet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn correlation_ids_are_bounded_and_plain() {
        assert!(valid_correlation_id("abc-123_X:y.z"));
        assert!(!valid_correlation_id(""));
        assert!(!valid_correlation_id(&"a".repeat(129)));
        assert!(!valid_correlation_id("a b"));
        assert!(!valid_correlation_id("a\r\nx-admin: 1"));
        assert!(!valid_correlation_id("<script>"));
    }

    #[test]
    fn traceparent_is_continued_or_started() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let ctx = TraceContext::from_header(Some(parent));
        assert_eq!(
            Hex(&ctx.trace_id).to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(
            ctx.parent_id.map(|p| Hex(&p).to_string()).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(ctx.sampled);
        assert_ne!(Hex(&ctx.span_id).to_string(), "00f067aa0ba902b7");
        let echoed = ctx.header_str();
        assert!(
            echoed.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{echoed}"
        );
        assert!(echoed.ends_with("-01"), "{echoed}");
        assert_eq!(echoed.len(), 55);
        assert_eq!(&echoed[36..52], Hex(&ctx.span_id).to_string());
        let unsampled = TraceContext::from_header(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert!(!unsampled.sampled && unsampled.parent_id.is_some());
        assert!(unsampled.header_str().ends_with("-00"));
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let fresh = TraceContext::from_header(Some(bad));
            assert!(fresh.parent_id.is_none(), "{bad}");
            assert!(fresh.trace_id.iter().any(|b| *b != 0));
            assert_eq!(fresh.header_str().len(), 55);
        }
    }
}
