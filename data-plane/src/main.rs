//! data-plane binary: parse the configuration, start telemetry, call the library.

use clap::Parser;
use data_plane::{Cli, Listeners, StoreSource};
use tokio_util::sync::CancellationToken;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // one worker (TOKIO_WORKER_THREADS=1): a current-thread runtime, so accepting,
    // serving and forwarding never hand work to another thread (the profile of the proxy
    // benchmark showed cross-thread wake-ups as the largest single cost)
    let one_thread = std::env::var("TOKIO_WORKER_THREADS").is_ok_and(|v| v.trim() == "1");
    let mut builder = if one_thread {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    match builder.enable_all().build() {
        Ok(runtime) => runtime.block_on(run_main()),
        Err(err) => {
            eprintln!("data-plane: cannot start the runtime: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(data_plane::config::Command::Healthcheck { url }) = &cli.command {
        return gateway_edge::http::healthcheck(url).await;
    }
    let config = match cli.validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("data-plane: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match gateway_edge::telemetry::init("data-plane", &cli.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("data-plane: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "data plane failed");
            eprintln!("data-plane: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn bind(
    addr: std::net::SocketAddr,
    setting: &str,
) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr} ({setting}): {err}"))
}

async fn serve(config: data_plane::Config) -> anyhow::Result<()> {
    let listeners = Listeners {
        http: bind(config.listen, "--listen (GATEWAY_DATA_LISTEN)").await?,
        grpc: bind(
            config.grpc_listen,
            "--grpc-listen (GATEWAY_DATA_GRPC_LISTEN)",
        )
        .await?,
        ops: bind(config.ops_listen, "--ops-listen (GATEWAY_DATA_OPS_LISTEN)").await?,
    };
    // the store is connected in the background: until it answers, the data plane serves
    // from its mirror cache file (if any) and reports not ready
    let store = StoreSource::Connect(config.store.clone());
    let shutdown = CancellationToken::new();
    gateway_edge::http::cancel_on_signals(shutdown.clone());
    data_plane::run(config, listeners, store, shutdown).await?;
    Ok(())
}
