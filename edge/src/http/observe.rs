//! Observation of every request: the span, the access log line, the request metrics, the
//! echoed correlation and trace headers; the middleware of both planes' listeners and the
//! fast route served ahead of the router.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use super::*;

/// The request counter and duration histogram of one (plane, method, route, status): looked up
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
        foldhash::HashMap<(&'static str, &'static str, u16), RequestMetricsByRoute>,
    > = std::cell::RefCell::default();
}

/// The method as a metric label: the standard methods by name, anything else `OTHER`
/// (label values stay bounded whatever clients send).
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

fn request_metrics(
    plane: &'static str,
    method: &'static str,
    route: &str,
    status: StatusCode,
) -> RequestMetrics {
    let make = || RequestMetrics {
        requests: metrics::counter!(
            "gateway_http_requests_total",
            "plane" => plane,
            "method" => method,
            "route" => route.to_string(),
            "status" => status.as_str().to_string()
        ),
        duration: metrics::histogram!(
            "gateway_http_request_duration_seconds",
            "plane" => plane,
            "method" => method,
            "route" => route.to_string(),
            "status" => status_class(status)
        ),
    };
    REQUEST_METRICS
        .try_with(|cache| {
            let mut cache = cache.borrow_mut();
            let by_route = cache.entry((plane, method, status.as_u16())).or_default();
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
                                // Boxed: the handler's state (kilobytes) is copied once,
                                // into its box, instead of being moved through each
                                // layer of `observed` and into the answer's own box
                                Ok(()) => Box::pin(handler(request, correlation, trace)).await,
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
pub(crate) struct Front {
    fast: Option<FastRoute>,
    router: Router,
    peer: std::net::SocketAddr,
}

impl Front {
    pub(crate) fn new(
        fast: &Option<FastRoute>,
        router: &Router,
        peer: std::net::SocketAddr,
    ) -> Front {
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
    let method = method_label(request.method());
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
    let metrics = request_metrics(plane, method, route, status);
    metrics.requests.increment(1);
    metrics.duration.record(elapsed.as_secs_f64());

    let headers = response.headers_mut();
    headers.insert(CORRELATION_NAME.clone(), echoed.0);
    headers.insert(TRACEPARENT_NAME.clone(), echoed.1);
    response
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
