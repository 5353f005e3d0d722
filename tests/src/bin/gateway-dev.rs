//! The local run: both planes on one embedded store (a file under `.gateway-dev/`, kept
//! across restarts) plus the reference upstream node, in one process.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use gateway_core::signed::DocVerifyingKeys;
use gateway_edge::config::{LifecycleArgs, LogArgs, LogFormat};
use gateway_store::{Store, StoreConfig};
use tokio_util::sync::CancellationToken;

/// Runs the whole gateway locally: control plane, data plane and reference upstream node.
#[derive(Parser, Debug)]
#[command(name = "gateway-dev")]
struct Args {
    /// Directory for the embedded store and the generated dev keys.
    #[arg(long, env = "GATEWAY_DEV_DIR", default_value = ".gateway-dev")]
    dir: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    data_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8081")]
    data_grpc_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9080")]
    data_ops_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:8090")]
    control_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9101")]
    upstream_http_listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:9102")]
    upstream_grpc_listen: SocketAddr,
    /// Log filter.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    log: String,
    /// Log line format: readable text here by default, JSON lines as the planes write in
    /// production.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// The first platform admin of the local run: `GATEWAY_BOOTSTRAP_ADMIN_EMAIL` and
/// `GATEWAY_BOOTSTRAP_ADMIN_PASSWORD` when set; otherwise `admin@localhost` with a random
/// password generated on the first run and printed once.
fn bootstrap_admin(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    use std::io::Write;
    let file = dir.join("admin-password");
    let email =
        std::env::var("GATEWAY_BOOTSTRAP_ADMIN_EMAIL").unwrap_or_else(|_| "admin@localhost".into());
    let write_private = |text: &str| -> anyhow::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        options.open(&file)?.write_all(text.as_bytes())?;
        Ok(())
    };
    if let Ok(password) = std::env::var("GATEWAY_BOOTSTRAP_ADMIN_PASSWORD") {
        write_private(&password)?;
    } else if !file.exists() {
        use base64::Engine;
        let bytes: [u8; 18] = rand::random();
        let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        write_private(&password)?;
        println!();
        println!("First run: platform admin {email} with password {password}");
        println!(
            "(shown once; it is kept in {} for this local run)",
            file.display()
        );
    }
    Ok((email, file.to_string_lossy().into_owned()))
}

/// Routes tenant `demo` on every service kind to the reference upstream node, unless a
/// routing is already published (a restart keeps what the developer changed).
async fn publish_demo_routing(
    dir: &std::path::Path,
    store: &Store,
    upstream: &gateway_tests::upstream::RunningNode,
) -> anyhow::Result<()> {
    use gateway_core::routing::{KindRouting, RoutingDocument};
    let signer = gateway_core::signed::DocSigningKey::from_pkcs8_pem(&std::fs::read_to_string(
        dir.join("snapshot-signing.pem"),
    )?)?;
    let routing = control_plane::routing::RoutingAdmin {
        store: store.clone(),
        signer: std::sync::Arc::new(signer),
    };
    // a routing someone placed tenants in is kept; none, or the empty one a fresh control
    // plane publishes, gets the demo placement
    let current = routing.current().await?.0;
    if current
        .as_ref()
        .is_some_and(|doc| !doc.payload.routes_nothing())
    {
        return Ok(());
    }
    let expected = current.map_or(0, |doc| doc.revision);
    let demo = gateway_core::authz::TenantId::parse("demo")?;
    let kind = |endpoint: String| KindRouting {
        placement: [(demo.clone(), "shard-a".to_string())].into(),
        shards: [("shard-a".to_string(), vec![endpoint])].into(),
        default_shard: None,
    };
    let document = RoutingDocument {
        aggregate: kind(upstream.grpc_url()),
        projection: kind(upstream.http_url()),
        runner: kind(upstream.http_url()),
        ..RoutingDocument::default()
    };
    let revision = routing
        .publish(document, Some(expected), gateway_core::unix_now())
        .await?;
    tracing::info!(
        revision,
        "demo routing published: tenant demo -> reference upstream"
    );
    Ok(())
}

/// The control-plane configuration of the local run, with keys generated once into `dir`.
fn control_config(dir: &std::path::Path, log: &str) -> anyhow::Result<control_plane::Config> {
    if !dir.join("key-encryption.key").exists() {
        control_plane::config::keygen(dir, true).map_err(anyhow::Error::msg)?;
    }
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (admin_email, admin_password_file) = bootstrap_admin(dir)?;
    let cli = control_plane::Cli::try_parse_from([
        "control-plane",
        "--store",
        "embedded",
        "--embedded-path",
        &path("state.redb"),
        "--snapshot-signing-key-file",
        &path("snapshot-signing.pem"),
        "--key-encryption-key-file",
        &path("key-encryption.key"),
        "--mail-outbox",
        &path("outbox.txt"),
        "--log",
        log,
        "--drain-timeout",
        "5s",
        "--bootstrap-admin-email",
        &admin_email,
        "--bootstrap-admin-password-file",
        &admin_password_file,
    ])?;
    Ok(cli.serve.validate()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _telemetry = gateway_edge::telemetry::init(
        "gateway-dev",
        &LogArgs {
            log: args.log.clone(),
            log_format: args.log_format,
        },
    )?;
    std::fs::create_dir_all(&args.dir)?;
    let mut control_config = control_config(&args.dir, &args.log)?;
    let verify_keys = DocVerifyingKeys::new([control_config.signing_key.verifying_key()]);
    let store = Store::open(&StoreConfig::Embedded {
        path: args.dir.join("state.redb"),
    })
    .await?;
    let lifecycle = LifecycleArgs {
        drain_delay: std::time::Duration::ZERO,
        drain_timeout: std::time::Duration::from_secs(5),
        http_head_timeout: std::time::Duration::from_secs(60),
        http_body_timeout: std::time::Duration::from_secs(60),
        max_connections: gateway_edge::h1::server::DEFAULT_MAX_CONNECTIONS,
    };
    let shutdown = CancellationToken::new();
    gateway_edge::http::cancel_on_signals(shutdown.clone());

    let upstream = gateway_tests::upstream::start(
        "shard-a",
        args.upstream_http_listen,
        args.upstream_grpc_listen,
    )
    .await?;
    publish_demo_routing(&args.dir, &store, &upstream).await?;
    let control_listener = tokio::net::TcpListener::bind(args.control_listen).await?;
    let data_listeners = data_plane::Listeners {
        http: tokio::net::TcpListener::bind(args.data_listen).await?,
        grpc: tokio::net::TcpListener::bind(args.data_grpc_listen).await?,
        ops: tokio::net::TcpListener::bind(args.data_ops_listen).await?,
    };
    let control_addr = control_listener.local_addr()?;
    let (data_addr, data_grpc_addr, data_ops_addr) = (
        data_listeners.http.local_addr()?,
        data_listeners.grpc.local_addr()?,
        data_listeners.ops.local_addr()?,
    );
    control_config.listen = control_addr;
    let control = tokio::spawn(control_plane::run(
        control_config,
        control_listener,
        store.clone(),
        shutdown.clone(),
    ));
    let data = tokio::spawn(data_plane::run(
        data_plane::Config {
            listen: data_addr,
            grpc_listen: data_grpc_addr,
            ops_listen: data_ops_addr,
            // loopback only: the ops views need no token here
            ops_token: None,
            verify_keys,
            // the control plane publishes the keys; the demo routing is published above
            snapshots_optional: false,
            token_issuer: "cloudlysis-gateway".into(),
            token_audience: "cloudlysis".into(),
            timeouts: data_plane::proxy::Timeouts {
                command: std::time::Duration::from_secs(10),
                query: std::time::Duration::from_secs(10),
                runner: std::time::Duration::from_secs(10),
                auth: std::time::Duration::from_secs(10),
            },
            upstream: data_plane::upstream::UpstreamPolicy::default(),
            token_cache_size: 10_000,
            max_staleness: std::time::Duration::from_secs(60),
            mirror_reconcile_interval: std::time::Duration::from_secs(10),
            principal_cache_size: 20_000,
            replica_id: "dev".into(),
            routing_file: None,
            routing_file_poll: std::time::Duration::from_secs(1),
            mirror_cache_file: None,
            max_body_bytes: 1024 * 1024,
            body_limits: data_plane::config::BodyLimits {
                query: 1024 * 1024,
                runner: 1024 * 1024,
                other: 1024 * 1024,
            },
            headers: Default::default(),
            control_planes: vec![format!("http://{control_addr}")],
            store: StoreConfig::Embedded {
                path: args.dir.join("state.redb"),
            },
            lifecycle,
            tls: None,
            tls_reload_interval: std::time::Duration::from_secs(10),
            client_tls: Default::default(),
            assertion: None,
        },
        data_listeners,
        data_plane::StoreSource::Open(store),
        shutdown.clone(),
    ));

    println!();
    println!(
        "Cloudlysis gateway, local run (embedded store in {})",
        args.dir.display()
    );
    println!("  data plane          http://{data_addr}  (ops: http://{data_ops_addr})");
    println!("  data plane gRPC     http://{data_grpc_addr}");
    println!("  control plane       http://{control_addr}");
    println!(
        "  reference upstream  http://{}  (grpc: http://{})",
        upstream.http_addr, upstream.grpc_addr
    );
    println!(
        "Ops routes on the control plane and the data-plane ops listener: /health /ready /metrics /version"
    );
    println!("Ctrl-C stops everything.");
    println!();

    // if one plane stops (or fails to start), stop the other and report
    let mut control = control;
    let mut data = data;
    let first_control = tokio::select! {
        result = &mut control => { shutdown.cancel(); result??; true }
        result = &mut data => { shutdown.cancel(); result??; false }
    };
    if first_control {
        data.await??;
    } else {
        control.await??;
    }
    drop(upstream);
    Ok(())
}
