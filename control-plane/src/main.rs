//! control-plane binary: parse the configuration, start telemetry, call the library.

use clap::Parser;
use control_plane::config::{Cli, Command};
use gateway_store::Store;
use tokio_util::sync::CancellationToken;

// glibc keeps each thread's freed 19 MiB Argon2 buffers in per-thread arenas (the soak
// saw 267 -> 610 MiB after the first sign-ins); mimalloc returns large blocks
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = &cli.command {
        return gateway_edge::http::healthcheck(url).await;
    }
    if let Some(Command::Rebalance(args)) = cli.command {
        return control_plane::rebalance_cli::run(args).await;
    }
    if let Some(Command::Keygen { out_dir, force }) = cli.command {
        return match control_plane::config::keygen(&out_dir, force) {
            Ok(files) => {
                println!(
                    "wrote {}, {} and {}",
                    files.snapshot_signing.display(),
                    files.snapshot_verify.display(),
                    files.key_encryption.display()
                );
                std::process::ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("keygen: {err}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let config = match cli.serve.validate() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("control-plane: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    let _telemetry = match gateway_edge::telemetry::init("control-plane", &cli.serve.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("control-plane: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    match serve(config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "control plane failed");
            eprintln!("control-plane: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(config: control_plane::Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot listen on {} (--listen, GATEWAY_CONTROL_LISTEN): {err}",
                config.listen
            )
        })?;
    let store = Store::open(&config.store).await?;
    let shutdown = CancellationToken::new();
    gateway_edge::http::cancel_on_signals(shutdown.clone());
    control_plane::run(config, listener, store, shutdown).await?;
    Ok(())
}
