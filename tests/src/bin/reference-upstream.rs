//! The reference upstream node as its own process (see `gateway_tests::upstream`).

use clap::Parser;

/// Reference Aggregate / Projection / Runner node implementing the gateway's upstream
/// contracts; records what it receives (`GET /_reference/requests`).
#[derive(Parser, Debug)]
#[command(name = "reference-upstream")]
struct Args {
    /// Node name, reported in every answer.
    #[arg(long, env = "UPSTREAM_NAME", default_value = "shard-a")]
    name: String,
    /// HTTP address (Projection queries, Runner admin).
    #[arg(long, env = "UPSTREAM_HTTP_LISTEN", default_value = "127.0.0.1:9101")]
    http_listen: std::net::SocketAddr,
    /// gRPC address (Aggregate CommandService).
    #[arg(long, env = "UPSTREAM_GRPC_LISTEN", default_value = "127.0.0.1:9102")]
    grpc_listen: std::net::SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let node =
        gateway_tests::upstream::start(&args.name, args.http_listen, args.grpc_listen).await?;
    println!(
        "{{\"message\":\"reference upstream listening\",\"name\":\"{}\",\"http_addr\":\"{}\",\"grpc_addr\":\"{}\"}}",
        args.name, node.http_addr, node.grpc_addr
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
