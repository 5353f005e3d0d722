//! The data plane: a lean proxy that verifies, authorizes and routes from mirrors of the
//! documents the control plane publishes, and keeps serving from last-known-good copies.
#![forbid(unsafe_code)]

pub mod assertion;
pub mod auth_forward;
pub mod cache_file;
pub mod client_tls;
pub mod commands;
pub mod config;
pub mod headers;
pub mod mirror;
pub mod pool;
pub mod proxy;
pub mod routing_file;
pub mod runner;
pub mod token_cache;
pub mod upstream;

use std::sync::Arc;

use axum::Router;
use gateway_edge::http::{self, Readiness, ReadyCheck, StoreReady};
use gateway_store::{Bucket, Store, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{Cli, Config};
pub use mirror::Mirrors;

/// Name used in metrics labels and logs.
pub const PLANE: &str = "data";

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    #[error("upstream client: {0}")]
    Client(String),
    #[error("grpc server: {0}")]
    Grpc(String),
    #[error("routing file: {0}")]
    RoutingFile(String),
}

/// The store of the data plane: already open, or to connect to in the background (the
/// data plane serves from its cache file meanwhile).
pub enum StoreSource {
    Open(Store),
    Connect(StoreConfig),
}

/// The data plane's view of its state: the store answers or (in an outage) the mirrors
/// hold a routing, and every mirror was confirmed current less than `--max-staleness`
/// ago: exactly when the data plane still serves. A load balancer that reads `/ready` then keeps every
/// replica through an outage the mirrors cover, and drops them when they fail closed.
struct StoreSlotReady {
    slot: Arc<std::sync::OnceLock<Store>>,
    mirrors: Arc<Mirrors>,
    /// Seconds; 0: no bound.
    max_staleness: i64,
}

#[async_trait::async_trait]
impl ReadyCheck for StoreSlotReady {
    fn name(&self) -> &'static str {
        "store"
    }

    async fn check(&self) -> Result<(), String> {
        let reached = match self.slot.get() {
            Some(store) => StoreReady(store.clone()).check().await,
            None => Err("not connected yet".into()),
        };
        if let Err(reason) = &reached
            && self.mirrors.routing.load().is_none()
        {
            return Err(reason.clone());
        }
        // a store that answers is not enough: a mirror whose watch and reconciliation
        // both stalled fails closed, and so is not ready either
        match self.mirrors.staleness(gateway_core::unix_now()) {
            Some(age) if self.max_staleness == 0 || age <= self.max_staleness => Ok(()),
            None if reached.is_ok() => Ok(()),
            age => Err(format!(
                "{}the mirrors were last confirmed {} s ago, past --max-staleness ({} s)",
                reached.err().map(|r| format!("{r}; ")).unwrap_or_default(),
                age.unwrap_or(-1),
                self.max_staleness
            )),
        }
    }
}

/// Opens the store (retrying with backoff until `shutdown`), then follows the snapshot
/// and authz buckets.
async fn connect_and_follow(
    source: StoreSource,
    slot: Arc<std::sync::OnceLock<Store>>,
    keys: Arc<gateway_core::signed::DocVerifyingKeys>,
    mirrors: Arc<Mirrors>,
    replica_id: String,
    reconcile_every: std::time::Duration,
    shutdown: CancellationToken,
) {
    let store = match source {
        StoreSource::Open(store) => store,
        StoreSource::Connect(config) => {
            let mut backoff = gateway_core::backoff::Backoff::new(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(5),
            );
            loop {
                let opened = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    opened = Store::open(&config) => opened,
                };
                match opened {
                    Ok(store) => break store,
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %err, retry_ms = delay.as_millis() as u64, "store unreachable, serving from the mirrors");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        }
    };
    let _ = slot.set(store.clone());
    tokio::spawn(mirror::heartbeat(
        store.clone(),
        Arc::clone(&mirrors),
        replica_id,
        shutdown.clone(),
    ));
    for bucket in [Bucket::Snapshots, Bucket::Authz] {
        tokio::spawn(mirror::follow(
            store.clone(),
            bucket,
            Arc::clone(&keys),
            Arc::clone(&mirrors),
            reconcile_every,
            shutdown.clone(),
        ));
    }
}

/// Bound listeners of the data plane.
pub struct Listeners {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub ops: TcpListener,
}

/// The public router: client traffic plus `/health` and `/ready` for load balancers;
/// `/metrics` and `/version` stay on the ops listener.
pub fn public_router(
    readiness: Arc<Readiness>,
    proxy: proxy::ProxyState,
    channels: commands::Channels,
    auth: auth_forward::AuthForward,
    max_body: usize,
) -> Router {
    let commands = Router::new()
        .route(
            "/v1/commands/{aggregate_type}/{aggregate_id}",
            axum::routing::post(commands::submit_http),
        )
        .with_state((proxy.clone(), channels));
    let auth = Router::new()
        .route(
            "/v1/auth/{*rest}",
            axum::routing::any(auth_forward::forward),
        )
        .route(
            "/.well-known/jwks.json",
            axum::routing::get(auth_forward::forward),
        )
        .with_state(auth);
    let api = Router::new()
        .route("/v1/query/{view_type}", axum::routing::post(proxy::query))
        .route("/admin/runner/{*path}", axum::routing::any(runner::runner))
        .route(
            assertion::JWKS_PATH,
            axum::routing::get(assertion::publish_keys),
        )
        .with_state(proxy)
        .merge(commands)
        .merge(auth)
        .layer(axum::extract::DefaultBodyLimit::max(max_body));
    Router::new()
        .merge(api)
        .merge(http::probe_router(readiness))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(PLANE, http::edge))
}

/// `POST /v1/query/{view_type}`, the hottest route, served ahead of the router (see
/// [`http::FastRoute`]); the router keeps the route for its other methods (405).
pub fn query_fast_route(proxy: proxy::ProxyState) -> http::FastRoute {
    use axum::response::IntoResponse;
    http::FastRoute::new(
        PLANE,
        axum::http::Method::POST,
        "/v1/query/",
        "/v1/query/{view_type}",
        move |request, correlation, trace| {
            let proxy = proxy.clone();
            async move {
                proxy::query_with(&proxy, request, correlation, trace)
                    .await
                    .into_response()
            }
        },
    )
}

/// The ops listener's `/admin/*` views with `--ops-token-file`: `authorization: Bearer
/// <token>` or 401 in our envelope (compared in constant time).
async fn require_ops_token(
    axum::extract::State(token): axum::extract::State<Arc<str>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match http::bearer_token(request.headers()) {
        Ok(presented) if http::constant_time_eq(presented.as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        Ok(_) => gateway_edge::ApiError::new(
            gateway_edge::ErrorCode::Unauthenticated,
            "the ops token is not valid",
        )
        .with_reason(gateway_edge::Reason::InvalidToken)
        .into_response(),
        Err(reason) => gateway_edge::ApiError::new(
            gateway_edge::ErrorCode::Unauthenticated,
            "the ops views need the ops token as a bearer token",
        )
        .with_reason(reason)
        .into_response(),
    }
}

/// `GET /admin/routing` on the ops listener: the table this replica uses now.
async fn routing_in_use(
    axum::extract::State(mirrors): axum::extract::State<Arc<Mirrors>>,
) -> Result<axum::Json<serde_json::Value>, gateway_edge::ApiError> {
    let table = mirrors.routing.load_full().ok_or_else(|| {
        gateway_edge::ApiError::new(gateway_edge::ErrorCode::NotReady, "no routing loaded yet")
    })?;
    Ok(axum::Json(serde_json::json!({
        "revision": table.revision,
        "issued_at": table.issued_at,
        "age_seconds": gateway_core::unix_now() - table.issued_at,
        "routing": table.document,
    })))
}

/// Closes upstream connections idle past their timeout, every few seconds.
async fn sweep_idle_connections(upstreams: Arc<upstream::Upstreams>, stop: CancellationToken) {
    let every = (upstreams.policy().pool.idle_timeout / 4).clamp(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(15),
    );
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => upstreams.sweep_idle(),
        }
    }
}

/// Keeps the gRPC health status (service `""`) in step with readiness.
/// The full name of the command service, as health checks and reflection name it.
const COMMAND_SERVICE: &str = "aggregate.gateway.v1.CommandService";

async fn report_grpc_health(
    readiness: Arc<Readiness>,
    reporter: tonic_health::server::HealthReporter,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let status = if readiness.failures().await.is_empty() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        // the server as a whole, and each service by its name (clients that ask for the
        // service they call get an answer, not NOT_FOUND)
        reporter.set_service_status("", status).await;
        reporter.set_service_status(COMMAND_SERVICE, status).await;
    }
}

/// Largest request body an HTTP/1.1 connection of the gRPC listener may send: tonic's
/// default largest message (4 MiB) and its 5-byte frame header. Over HTTP/2, tonic's own
/// decoding limit (the same 4 MiB) bounds a message.
const GRPC_MAX_BODY: usize = 4 * 1024 * 1024 + 5;

/// Serves gRPC on `listener` until `stop`, then drains for at most `drain_timeout`.
///
/// The services run on the same serving loop as the HTTP listeners (connection cap, TLS,
/// HTTP/2 pings and drain), not on tonic's transport server: that one aborts a call at the
/// client's `grpc-timeout` from outside the handler, answering CANCELLED with no log line
/// or metric. Here the handler owns the deadline and answers DEADLINE_EXCEEDED itself.
async fn serve_grpc(
    listener: TcpListener,
    tls: Option<Arc<gateway_edge::tls::TlsReloader>>,
    commands: commands::CommandProxy,
    readiness: Arc<Readiness>,
    limits: gateway_edge::h1::ConnLimits,
    stop: CancellationToken,
    drain_timeout: std::time::Duration,
) -> Result<(), RunError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tokio::spawn(report_grpc_health(readiness, reporter, stop.clone()));
    // reflection lets grpcurl and other tools call the gateway without the .proto files
    // (v1, and v1alpha for the clients that speak only it: grpcurl before 1.8.8, Python's
    // grpcio-reflection, Postman)
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(gateway_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|err| RunError::Grpc(err.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|err| RunError::Grpc(err.to_string()))?;
    let routes = tonic::service::Routes::new(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            gateway_proto::aggregate::v1::command_service_server::CommandServiceServer::new(
                commands,
            ),
        );
    http::serve(
        listener,
        tls,
        routes.into_axum_router(),
        None,
        limits,
        stop,
        drain_timeout,
    )
    .await
    .map_err(|err| RunError::Grpc(err.to_string()))
}

/// Serves until `shutdown` is cancelled, then drains (see `LifecycleArgs`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    store: StoreSource,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = gateway_edge::telemetry::metrics_handle().map_err(RunError::Metrics)?;
    let mirrors = Arc::new(Mirrors::new(
        config.routing_file.is_some(),
        config.mirror_cache_file.is_some(),
    ));
    let verify_keys = Arc::new(config.verify_keys.clone());
    if let Some(path) = &config.routing_file {
        let bytes = routing_file::load(path, &mirrors).map_err(RunError::RoutingFile)?;
        tokio::spawn(routing_file::watch(
            path.clone(),
            Arc::clone(&mirrors),
            bytes,
            config.routing_file_poll,
            shutdown.clone(),
        ));
    }
    if let Some(path) = &config.mirror_cache_file {
        // before the store: a replica restarting while NATS is away starts from here
        let loaded = cache_file::load(path, &mirrors, &verify_keys);
        if loaded.deferred > 0 {
            // the principal documents of the file are checked in the background; a
            // request that needs one first checks it itself
            let mirrors = Arc::clone(&mirrors);
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let failed = mirrors.verify_loaded();
                tracing::info!(
                    principals = loaded.deferred,
                    failed,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "principal documents of the cache file verified"
                );
            });
        }
        tokio::spawn(cache_file::keep(
            path.clone(),
            Arc::clone(&mirrors),
            shutdown.clone(),
        ));
    }
    // the state loaded at start (cache file, routing file) counts as current now: a
    // replica restarted during an outage serves for at most --max-staleness from it
    mirrors.touch(gateway_core::unix_now());
    if config.principal_cache_size > 0 {
        let (mirrors, bound, shutdown) = (
            Arc::clone(&mirrors),
            config.principal_cache_size,
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let mirrors = Arc::clone(&mirrors);
                // a pass over 100,000 slots takes milliseconds: off the request threads
                let _ = tokio::task::spawn_blocking(move || mirrors.sweep_parsed(bound)).await;
            }
        });
    }
    tokio::spawn(mirror::report_age(
        Arc::clone(&mirrors),
        config.max_staleness.as_secs() as i64,
        shutdown.clone(),
    ));
    let store_slot = Arc::new(std::sync::OnceLock::new());
    let checks: Vec<Arc<dyn ReadyCheck>> = vec![
        Arc::new(StoreSlotReady {
            slot: Arc::clone(&store_slot),
            mirrors: Arc::clone(&mirrors),
            max_staleness: config.max_staleness.as_secs() as i64,
        }),
        Arc::new(mirror::SnapshotsReady {
            mirrors: Arc::clone(&mirrors),
            optional: config.snapshots_optional,
        }),
    ];
    let readiness = Arc::new(Readiness::new(checks));
    tokio::spawn(connect_and_follow(
        store,
        store_slot,
        Arc::clone(&verify_keys),
        Arc::clone(&mirrors),
        config.replica_id.clone(),
        config.mirror_reconcile_interval,
        shutdown.clone(),
    ));

    let ops = http::ops_router(Arc::clone(&readiness), metrics, gateway_edge::build_info!());
    let proxy = proxy::ProxyState::new(Arc::clone(&mirrors), &config).map_err(RunError::Client)?;
    let channels = commands::Channels::new(&config.client_tls);
    let command_service = commands::CommandProxy {
        state: proxy.clone(),
        channels: channels.clone(),
    };
    let auth = auth_forward::AuthForward::new(
        proxy.client.clone(),
        config.control_planes.clone(),
        config.timeouts.auth,
    );
    let upstreams = Arc::clone(&proxy.upstreams);
    let query_route = query_fast_route(proxy.clone());
    tokio::spawn(sweep_idle_connections(
        Arc::clone(&upstreams),
        shutdown.clone(),
    ));
    let public = public_router(
        Arc::clone(&readiness),
        proxy,
        channels,
        auth,
        config.body_limits.other,
    );
    let mut views = Router::new()
        .route("/admin/routing", axum::routing::get(routing_in_use))
        .with_state(Arc::clone(&mirrors))
        .route(
            "/admin/upstreams",
            axum::routing::get(move || {
                let upstreams = Arc::clone(&upstreams);
                async move { axum::Json(serde_json::json!({"endpoints": upstreams.report()})) }
            }),
        );
    if let Some(token) = config.ops_token.clone() {
        views = views.route_layer(axum::middleware::from_fn_with_state(
            Arc::<str>::from(token),
            require_ops_token,
        ));
    }
    let ops = ops
        .merge(views)
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(PLANE, http::observe));

    let stop_accepting = CancellationToken::new();
    tokio::spawn(http::coordinate_shutdown(
        shutdown,
        Arc::clone(&readiness),
        config.lifecycle.drain_delay,
        stop_accepting.clone(),
    ));
    if let (Ok(http_addr), Ok(grpc_addr), Ok(ops_addr)) = (
        listeners.http.local_addr(),
        listeners.grpc.local_addr(),
        listeners.ops.local_addr(),
    ) {
        tracing::info!(%http_addr, %grpc_addr, %ops_addr, tls = config.tls.is_some(), "data plane listening");
    }
    let drain = config.lifecycle.drain_timeout;
    // one reloader per listener: HTTP offers h2 and http/1.1, gRPC h2 only
    let (http_tls, grpc_tls) = match &config.tls {
        Some(files) => {
            let load = |alpn: &[&[u8]]| {
                gateway_edge::tls::TlsReloader::load(files.clone(), alpn)
                    .map_err(|err| RunError::Grpc(format!("tls: {err}")))
            };
            let (http_tls, grpc_tls) = (load(&http::HTTP_ALPN)?, load(&[b"h2"])?);
            for tls in [&http_tls, &grpc_tls] {
                tokio::spawn(
                    Arc::clone(tls).watch(config.tls_reload_interval, stop_accepting.clone()),
                );
            }
            (Some(http_tls), Some(grpc_tls))
        }
        None => (None, None),
    };
    let (public_result, grpc_result, ops_result) = tokio::join!(
        http::serve(
            listeners.http,
            http_tls,
            public,
            Some(query_route),
            gateway_edge::h1::ConnLimits {
                // large and chunked bodies stream through; a client that leaves cancels
                // its upstream call
                stream_above: Some(proxy::WHOLE_REQUEST as usize),
                ..config
                    .lifecycle
                    .conn_limits("public", config.max_body_bytes)
            },
            stop_accepting.clone(),
            drain
        ),
        serve_grpc(
            listeners.grpc,
            grpc_tls,
            command_service,
            Arc::clone(&readiness),
            config.lifecycle.conn_limits("grpc", GRPC_MAX_BODY),
            stop_accepting.clone(),
            drain
        ),
        http::serve(
            listeners.ops,
            None,
            ops,
            None,
            config.lifecycle.conn_limits("ops", http::OPS_MAX_BODY),
            stop_accepting,
            drain
        ),
    );
    public_result?;
    grpc_result?;
    ops_result?;
    tracing::info!("data plane stopped");
    Ok(())
}
