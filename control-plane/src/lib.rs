//! The control plane: owns every write (IAM, auth flows, keys, routing placement) and
//! publishes signed documents for the data planes.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod audit;
pub mod auth;
pub mod config;
pub mod iam;
pub mod keys;
pub mod limits;
pub mod mail;
pub mod openapi;
pub mod rebalance;
pub mod rebalance_cli;
pub mod routing;

use std::sync::Arc;

use axum::Router;
use gateway_core::signed::DocSigningKey;
use gateway_edge::http::{self, Readiness, ReadyCheck, StoreReady};
use gateway_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::AuthService;
pub use config::{Cli, Config};
pub use keys::KeyManager;

/// Name used in metrics labels and logs.
pub const PLANE: &str = "control";

/// State shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    /// Signs the documents published to the data planes.
    pub signing_key: Arc<DocSigningKey>,
    pub keys: Arc<KeyManager>,
    pub auth: Arc<AuthService>,
    pub publisher: Arc<iam::publish::Publisher>,
    pub routing: Arc<routing::RoutingAdmin>,
    pub rebalancer: Arc<rebalance::Rebalancer>,
    /// Peers whose `x-forwarded-for` is believed (the data planes).
    pub trusted_proxies: Arc<[gateway_edge::http::IpNet]>,
    /// Browser origins allowed by CORS on the auth and admin APIs.
    pub cors_allowed_origins: Arc<[axum::http::HeaderValue]>,
    pub readiness: Arc<Readiness>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("metrics recorder: {0}")]
    Metrics(String),
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error(
        "no platform admin exists: set --bootstrap-admin-email and --bootstrap-admin-password-file (GATEWAY_BOOTSTRAP_ADMIN_EMAIL, GATEWAY_BOOTSTRAP_ADMIN_PASSWORD_FILE)"
    )]
    NoAdmin,
    #[error("bootstrap admin: {0}")]
    Bootstrap(#[from] gateway_edge::ApiError),
    #[error("http client: {0}")]
    Client(String),
    #[error("google sign-in: {0}")]
    Oidc(String),
    #[error("password hashing: {0}")]
    Hashing(#[from] auth::passwords::HashError),
    #[error("initial routing: {0}")]
    Routing(String),
}

/// The whole HTTP surface of the control plane. With `ops` given, `/metrics` and
/// `/version` are served there instead (`--ops-listen`), and the API listener keeps
/// `/health` and `/ready` only.
pub fn router(
    state: AppState,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    ops: Option<&mut Router>,
) -> Router {
    // the routes and the document served at /openapi.json come from the same declarations
    let (api, document) = openapi::api().split_for_parts();
    let document = axum::body::Bytes::from(serde_json::to_vec(&document).unwrap_or_default());
    let api = api
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            audit::close_intents,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .layer(cors(&state.cors_allowed_origins))
        .with_state(state.clone());
    Router::new()
        .merge(api)
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let document = document.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        document,
                    )
                }
            }),
        )
        .merge({
            let full = http::ops_router(
                Arc::clone(&state.readiness),
                metrics,
                gateway_edge::build_info!(),
            );
            match ops {
                Some(ops) => {
                    *ops = full
                        .fallback(http::not_found)
                        .layer(axum::middleware::from_fn_with_state(PLANE, http::observe));
                    http::probe_router(Arc::clone(&state.readiness))
                }
                None => full,
            }
        })
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(PLANE, http::edge))
}

/// Serves until `shutdown` is cancelled, then drains (see `LifecycleArgs`).
pub async fn run(
    config: Config,
    listener: TcpListener,
    store: Store,
    shutdown: CancellationToken,
) -> Result<(), RunError> {
    let metrics = gateway_edge::telemetry::metrics_handle().map_err(RunError::Metrics)?;
    let checks: Vec<Arc<dyn ReadyCheck>> = vec![Arc::new(StoreReady(store.clone()))];
    let readiness = Arc::new(Readiness::new(checks));
    let signing_key = Arc::new(config.signing_key);
    let kek = Arc::new(config.kek);
    let keys = Arc::new(KeyManager::new(
        store.clone(),
        Arc::clone(&kek),
        config.keys,
        Arc::clone(&signing_key),
    ));
    keys.start(gateway_core::unix_now()).await?;
    tokio::spawn(Arc::clone(&keys).maintain(shutdown.clone()));
    let hasher =
        auth::passwords::PasswordHasherPool::new(config.argon2, config.argon2_max_concurrency)?;
    if config.google.is_some() {
        let store = store.clone();
        tokio::spawn(purge_periodically(
            std::time::Duration::from_secs(60),
            shutdown.clone(),
            "oidc_pending",
            move |now| {
                let store = store.clone();
                async move { auth::oidc::purge_once(&store, now).await }
            },
        ));
    }
    {
        let store = store.clone();
        tokio::spawn(purge_periodically(
            std::time::Duration::from_secs(600),
            shutdown.clone(),
            "invitation",
            move |now| {
                let store = store.clone();
                async move { iam::invitations::purge_once(&store, now).await }
            },
        ));
    }
    let google = match config.google {
        Some(settings) => Some(Arc::new(
            auth::oidc::GoogleOidc::new(settings, store.clone(), Arc::clone(&kek))
                .map_err(RunError::Oidc)?,
        )),
        None => None,
    };
    let publisher = Arc::new(iam::publish::Publisher {
        store: store.clone(),
        signer: Arc::clone(&signing_key),
    });
    let auth = Arc::new(AuthService {
        publisher: Arc::clone(&publisher),
        store: store.clone(),
        keys: Arc::clone(&keys),
        hasher,
        mfa: auth::mfa::Mfa {
            store: store.clone(),
            kek,
        },
        mailer: config.mailer,
        ip_limits: limits::IpLimits::new(config.ip_quotas),
        google,
        backoff: limits::AccountBackoff {
            store: store.clone(),
            settings: config.backoff,
        },
        settings: config.auth,
    });
    if let Some(bootstrap) = &config.bootstrap_admin {
        auth.bootstrap_admin(bootstrap, gateway_core::unix_now())
            .await?;
    } else if !iam::has_platform_admin(&store).await? {
        return Err(RunError::NoAdmin);
    }
    let routing = Arc::new(routing::RoutingAdmin {
        store: store.clone(),
        signer: Arc::clone(&signing_key),
    });
    // a fresh platform publishes an empty routing, so its data planes become ready (and
    // pass their health checks) before the first shard is placed
    routing
        .ensure_published(gateway_core::unix_now())
        .await
        .map_err(|err| RunError::Routing(err.message.clone()))?;
    let rebalancer = Arc::new(
        rebalance::Rebalancer::new(
            store.clone(),
            Arc::clone(&routing),
            config.rebalance.clone(),
        )
        .map_err(RunError::Client)?,
    );
    let state = AppState {
        rebalancer,
        store,
        signing_key,
        keys,
        auth,
        publisher,
        routing,
        trusted_proxies: config.trusted_proxies.clone().into(),
        cors_allowed_origins: config.cors_allowed_origins.clone().into(),
        readiness: Arc::clone(&readiness),
    };
    let ops_listener = match config.ops_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|err| {
            std::io::Error::other(format!(
                "cannot listen on {addr} (--ops-listen, GATEWAY_CONTROL_OPS_LISTEN): {err}"
            ))
        })?),
        None => None,
    };
    let mut ops = Router::new();
    let app = router(state, metrics, ops_listener.is_some().then_some(&mut ops));
    let stop_accepting = CancellationToken::new();
    tokio::spawn(http::coordinate_shutdown(
        shutdown,
        readiness,
        config.lifecycle.drain_delay,
        stop_accepting.clone(),
    ));
    if let Ok(addr) = listener.local_addr() {
        let ops_addr = ops_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.to_string());
        tracing::info!(%addr, ops_addr, tls = config.tls.is_some(), "control plane listening");
    }
    let tls = match &config.tls {
        Some(files) => {
            let tls = gateway_edge::tls::TlsReloader::load(files.clone(), &http::HTTP_ALPN)
                .map_err(|err| std::io::Error::other(err.to_string()))?;
            tokio::spawn(
                Arc::clone(&tls).watch(config.tls_reload_interval, stop_accepting.clone()),
            );
            Some(tls)
        }
        None => None,
    };
    let drain = config.lifecycle.drain_timeout;
    let serve_ops = async {
        match ops_listener {
            // the ops listener stays plain: probes and scrapers inside the cluster
            Some(listener) => {
                let limits = config.lifecycle.conn_limits("ops", http::OPS_MAX_BODY);
                http::serve(
                    listener,
                    None,
                    ops,
                    None,
                    limits,
                    stop_accepting.clone(),
                    drain,
                )
                .await
            }
            None => Ok(()),
        }
    };
    let (api, ops) = tokio::join!(
        http::serve(
            listener,
            tls,
            app,
            None,
            config.lifecycle.conn_limits("api", api::MAX_BODY_BYTES),
            stop_accepting.clone(),
            drain
        ),
        serve_ops
    );
    api?;
    ops?;
    tracing::info!("control plane stopped");
    Ok(())
}

/// Runs `pass` (delete what expired as of the time given) every `every` until `stop`,
/// counting what went in `gateway_expired_records_purged_total{kind}`. Every replica
/// runs it: deletes are conditional, so a record purged twice is purged once.
pub async fn purge_periodically<F, Fut>(
    every: std::time::Duration,
    stop: tokio_util::sync::CancellationToken,
    kind: &'static str,
    pass: F,
) where
    F: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<usize, gateway_edge::ApiError>>,
{
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        match pass(gateway_core::unix_now()).await {
            Ok(0) => {}
            Ok(purged) => {
                metrics::counter!("gateway_expired_records_purged_total", "kind" => kind)
                    .increment(purged as u64);
                tracing::debug!(purged, kind, "expired records purged");
            }
            Err(err) => tracing::warn!(error = %err, kind, "cannot purge expired records"),
        }
    }
}

/// CORS of the auth and admin APIs: only the configured exact origins (none by default),
/// with credentials, the request fields the APIs read, and the answer fields clients need;
/// a preflight is answered here and may be cached for 10 minutes. Requests from any other
/// origin get no CORS field, so browsers keep their pages from reading the answers.
fn cors(origins: &[axum::http::HeaderValue]) -> tower_http::cors::CorsLayer {
    use axum::http::{HeaderName, Method, header};
    tower_http::cors::CorsLayer::new()
        .allow_origin(tower_http::cors::AllowOrigin::list(origins.iter().cloned()))
        .allow_credentials(true)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-csrf-token"),
            HeaderName::from_static("x-token-delivery"),
            HeaderName::from_static("x-correlation-id"),
            HeaderName::from_static("traceparent"),
        ])
        .expose_headers([
            HeaderName::from_static("x-correlation-id"),
            header::RETRY_AFTER,
            header::WWW_AUTHENTICATE,
        ])
        .max_age(std::time::Duration::from_secs(600))
}
