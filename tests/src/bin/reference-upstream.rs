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
    /// PEM certificate chain: both listeners speak TLS (`https` in the routing).
    #[arg(long, env = "UPSTREAM_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "UPSTREAM_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// PEM CA bundle: callers must present a client certificate it issued (mutual TLS).
    #[arg(long, env = "UPSTREAM_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<std::path::PathBuf>,
    /// The data plane's assertion keys (`…/.well-known/gateway-assertion-jwks.json`):
    /// every call must then carry a valid `x-gateway-assertion` (401 otherwise).
    #[arg(
        long,
        env = "UPSTREAM_ASSERTION_JWKS_URL",
        requires = "assertion_audience"
    )]
    assertion_jwks_url: Option<String>,
    /// `iss` of the assertions (the data plane's --token-issuer).
    #[arg(
        long,
        env = "UPSTREAM_ASSERTION_ISSUER",
        default_value = "cloudlysis-gateway"
    )]
    assertion_issuer: String,
    /// An `aud` this node answers to, `<kind>:<shard>` (repeatable).
    #[arg(long, env = "UPSTREAM_ASSERTION_AUDIENCE", value_delimiter = ',')]
    assertion_audience: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tls = match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => Some(gateway_edge::tls::TlsFiles {
            cert,
            key,
            client_ca: args.tls_client_ca,
        }),
        _ => None,
    };
    let (tls_on, mutual) = (
        tls.is_some(),
        tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
    );
    let assertion = args.assertion_jwks_url.as_deref().map(|url| {
        let audiences: Vec<&str> = args.assertion_audience.iter().map(String::as_str).collect();
        gateway_tests::upstream::AssertionCheck::new(url, &args.assertion_issuer, &audiences)
    });
    let node = gateway_tests::upstream::start_with(
        &args.name,
        args.http_listen,
        args.grpc_listen,
        tls,
        assertion,
    )
    .await?;
    println!(
        "{{\"message\":\"reference upstream listening\",\"name\":\"{}\",\"http_addr\":\"{}\",\"grpc_addr\":\"{}\",\"tls\":{tls_on},\"mutual_tls\":{mutual}}}",
        args.name, node.http_addr, node.grpc_addr
    );
    tokio::signal::ctrl_c().await?;
    Ok(())
}
