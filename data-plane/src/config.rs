//! Command line and environment of the data plane, validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use gateway_core::signed::DocVerifyingKeys;
use gateway_edge::config::{ConfigError, LifecycleArgs, LogArgs, StoreArgs, read_secret_file};
use gateway_store::StoreConfig;

/// The data plane of the Cloudlysis gateway: verifies tokens, authorizes from its mirrors,
/// routes to the owning shard and forwards.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "data-plane",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = gateway_edge::config::EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address of the public HTTP listener (client traffic, `/health`, `/ready`).
    #[arg(long, env = "GATEWAY_DATA_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the public gRPC listener (HTTP/2: the standard gRPC health service; the
    /// `CommandService` proxy joins it with the routing work).
    #[arg(
        long,
        env = "GATEWAY_DATA_GRPC_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    pub grpc_listen: SocketAddr,
    /// Address of the ops listener (`/health`, `/live`, `/ready`, `/metrics`, `/version`,
    /// and the `/admin/*` views); keep it off the public network.
    #[arg(
        long,
        env = "GATEWAY_DATA_OPS_LISTEN",
        default_value = "127.0.0.1:9080"
    )]
    pub ops_listen: SocketAddr,
    /// File with the bearer token that the ops listener's `/admin/*` views require (at
    /// least 32 characters). Without it they answer on a loopback ops listener only: the
    /// data plane refuses to start with an ops listener on another address and no token.
    #[arg(long, env = "GATEWAY_OPS_TOKEN_FILE")]
    pub ops_token_file: Option<PathBuf>,
    /// File with the Ed25519 public key(s) (SPKI PEM, several during a rotation) that
    /// verify the documents published by the control plane (a Swarm config).
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_SNAPSHOT_VERIFY_KEY_FILE",
        required = true
    )]
    pub snapshot_verify_key_file: Option<PathBuf>,
    /// Report ready before the first routing and key documents are loaded (local runs
    /// and tests without a control plane).
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_SNAPSHOTS_OPTIONAL",
        default_value_t = false
    )]
    pub snapshots_optional: bool,
    /// `iss` expected in access tokens (the control plane's `--token-issuer`).
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_TOKEN_ISSUER",
        default_value = "cloudlysis-gateway"
    )]
    pub token_issuer: String,
    /// `aud` expected in access tokens.
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_TOKEN_AUDIENCE",
        default_value = "cloudlysis"
    )]
    pub token_audience: String,
    /// Deadline of one upstream call.
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = gateway_edge::config::parse_duration)]
    pub upstream_timeout: std::time::Duration,
    /// Deadline of a command (overrides --upstream-timeout; a client's shorter
    /// `grpc-timeout` wins and is passed on).
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_COMMAND_TIMEOUT", value_parser = gateway_edge::config::parse_duration)]
    pub command_timeout: Option<std::time::Duration>,
    /// Deadline of a query (overrides --upstream-timeout).
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_QUERY_TIMEOUT", value_parser = gateway_edge::config::parse_duration)]
    pub query_timeout: Option<std::time::Duration>,
    /// Deadline of a runner admin call (overrides --upstream-timeout).
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_RUNNER_TIMEOUT", value_parser = gateway_edge::config::parse_duration)]
    pub runner_timeout: Option<std::time::Duration>,
    /// Proxied requests in flight at once; beyond it, 503 `load_shed` with `retry-after`.
    #[arg(
        help_heading = "Upstream calls",
        long,
        env = "GATEWAY_MAX_IN_FLIGHT",
        default_value_t = 1024
    )]
    pub max_in_flight: usize,
    /// Consecutive failures of an endpoint that open its circuit (eject it).
    #[arg(
        help_heading = "Upstream calls",
        long,
        env = "GATEWAY_CIRCUIT_FAILURES",
        default_value_t = 5
    )]
    pub circuit_failures: u32,
    /// How long an open circuit refuses calls before one probe goes through.
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_CIRCUIT_OPEN_FOR", default_value = "5s", value_parser = gateway_edge::config::parse_duration)]
    pub circuit_open_for: std::time::Duration,
    /// Extra attempts on another endpoint of the shard, only where safe (never reached
    /// the first endpoint, idempotent method, or a command with its `command_id`).
    #[arg(
        help_heading = "Upstream calls",
        long,
        env = "GATEWAY_UPSTREAM_RETRIES",
        default_value_t = 1
    )]
    pub upstream_retries: u32,
    /// Idle keep-alive connections kept per upstream endpoint (0: a new connection for
    /// every call).
    #[arg(
        help_heading = "Upstream calls",
        long,
        env = "GATEWAY_UPSTREAM_MAX_IDLE",
        default_value_t = 64
    )]
    pub upstream_max_idle: usize,
    /// How long an idle upstream connection is kept before it is closed; keep it below
    /// the upstreams' own keep-alive timeout (nginx: 75 s).
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_UPSTREAM_IDLE_TIMEOUT", default_value = "60s", value_parser = gateway_edge::config::parse_duration)]
    pub upstream_idle_timeout: std::time::Duration,
    /// Verified access tokens remembered per generation (two generations; 0 turns the
    /// cache off). See `token_cache.rs`.
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_TOKEN_CACHE_SIZE",
        default_value_t = 10_000
    )]
    pub token_cache_size: usize,
    /// Take routing from this JSON file (a plain routing document, for local development)
    /// instead of the signed document of the store; re-read when it changes.
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_ROUTING_FILE"
    )]
    pub routing_file: Option<PathBuf>,
    /// How often the routing file is checked for changes.
    #[arg(help_heading = "Tokens and published documents", long, env = "GATEWAY_ROUTING_FILE_POLL", default_value = "1s", value_parser = gateway_edge::config::parse_duration)]
    pub routing_file_poll: std::time::Duration,
    /// Keep the last verified documents in this file and start from it (verified again)
    /// when the store is unreachable at start.
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_MIRROR_CACHE_FILE"
    )]
    pub mirror_cache_file: Option<PathBuf>,
    /// Name of this replica in its heartbeat (default: host name and a random suffix).
    #[arg(long, env = "GATEWAY_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// Longest time a mirror may go unconfirmed (no watch event, no successful
    /// reconciliation) before authorization fails closed with 503 `state_stale`
    /// (revocations may be missing); 0 never fails closed. Heartbeats do not count.
    #[arg(help_heading = "Tokens and published documents", long, env = "GATEWAY_MAX_STALENESS", default_value = "60s", value_parser = gateway_edge::config::parse_duration)]
    pub max_staleness: std::time::Duration,
    /// Principal documents kept parsed (the rest are kept as signed bytes and verified and
    /// parsed again when next used); about 0.5 KiB each. 0: no bound.
    #[arg(
        help_heading = "Tokens and published documents",
        long,
        env = "GATEWAY_PRINCIPAL_CACHE_SIZE",
        default_value_t = 20_000
    )]
    pub principal_cache_size: usize,
    /// How often each mirror compares the store's key revisions with what it applied and
    /// applies what a watch missed; at most a third of --max-staleness is used, so a
    /// healthy but quiet store never looks stale.
    #[arg(help_heading = "Tokens and published documents", long, env = "GATEWAY_MIRROR_RECONCILE_INTERVAL", default_value = "10s", value_parser = gateway_edge::config::parse_duration)]
    pub mirror_reconcile_interval: std::time::Duration,
    /// A PKCS#8 PEM P-256 private key: every forwarded call then carries
    /// `x-gateway-assertion`, an ES256 JWT naming the principal, tenant, rights digest,
    /// method, path and correlation id, verifiable with the key the data plane publishes
    /// at /.well-known/gateway-assertion-jwks.json (see docs/security.md). Make one with
    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`.
    #[arg(
        help_heading = "Upstream calls",
        long,
        env = "GATEWAY_ASSERTION_SIGNING_KEY_FILE"
    )]
    pub assertion_signing_key_file: Option<PathBuf>,
    /// A P-256 public key (PEM SPKI) published beside the signing key's, for a rotation:
    /// publish the next key first, then sign with it while publishing the previous one
    /// (repeatable; comma-separated in the environment).
    #[arg(
        help_heading = "Upstream calls",
        long,
        env = "GATEWAY_ASSERTION_PUBLISH_KEY_FILE",
        value_delimiter = ',',
        requires = "assertion_signing_key_file"
    )]
    pub assertion_publish_key_file: Vec<PathBuf>,
    /// Lifetime of an assertion (`exp` - `iat`).
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_ASSERTION_TTL", default_value = "30s", value_parser = gateway_edge::config::parse_duration)]
    pub assertion_ttl: std::time::Duration,
    /// Largest request body forwarded (each route class's unless set below). Bodies over
    /// 64 KiB, and chunked ones, stream through in constant memory whatever this limit.
    #[arg(help_heading = "Upstream calls", long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Largest request body forwarded, per route class: `class:bytes` (classes `query`,
    /// `runner`; comma-separated in the environment), e.g. `runner:104857600`.
    #[arg(
        help_heading = "Upstream calls",
        long = "class-max-body-bytes",
        env = "GATEWAY_CLASS_MAX_BODY_BYTES",
        value_delimiter = ','
    )]
    pub class_max_body_bytes: Vec<String>,
    /// Request fields not passed upstream, per route class: `class:name` (classes `query`,
    /// `runner`; comma-separated in the environment). Fields the gateway sets itself
    /// cannot be named.
    #[arg(
        help_heading = "Upstream calls",
        long = "request-header-remove",
        env = "GATEWAY_REQUEST_HEADER_REMOVE",
        value_delimiter = ','
    )]
    pub request_header_remove: Vec<String>,
    /// Request fields added upstream, per route class: `class:name:value`.
    #[arg(
        help_heading = "Upstream calls",
        long = "request-header-add",
        env = "GATEWAY_REQUEST_HEADER_ADD",
        value_delimiter = ','
    )]
    pub request_header_add: Vec<String>,
    /// Answer fields not relayed to clients, per route class: `class:name`.
    #[arg(
        help_heading = "Upstream calls",
        long = "response-header-remove",
        env = "GATEWAY_RESPONSE_HEADER_REMOVE",
        value_delimiter = ','
    )]
    pub response_header_remove: Vec<String>,
    /// Answer fields added for clients, per route class: `class:name:value`.
    #[arg(
        help_heading = "Upstream calls",
        long = "response-header-add",
        env = "GATEWAY_RESPONSE_HEADER_ADD",
        value_delimiter = ','
    )]
    pub response_header_add: Vec<String>,
    /// Control-plane base URLs (comma-separated) that `/v1/auth/*` and
    /// `/.well-known/jwks.json` are forwarded to.
    #[arg(
        long = "control-plane-url",
        env = "GATEWAY_CONTROL_PLANE_URL",
        value_delimiter = ','
    )]
    pub control_planes: Vec<String>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    /// TLS of the public HTTP and gRPC listeners (the ops listener stays plain).
    #[command(flatten)]
    pub tls: gateway_edge::tls::TlsArgs,
    #[command(flatten)]
    pub client_tls: crate::client_tls::ClientTlsArgs,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Exit 0 when `--url` answers 200 within 3 s, 1 otherwise: the image's HEALTHCHECK
    /// (the image has no curl). The default probes `/live`: started once, and answering.
    Healthcheck {
        #[arg(
            long,
            env = "GATEWAY_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8080/live"
        )]
        url: String,
    },
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub ops_listen: SocketAddr,
    /// The bearer token of the ops listener's `/admin/*` views.
    pub ops_token: Option<String>,
    pub verify_keys: DocVerifyingKeys,
    pub snapshots_optional: bool,
    pub token_issuer: String,
    pub token_audience: String,
    pub timeouts: crate::proxy::Timeouts,
    pub upstream: crate::upstream::UpstreamPolicy,
    pub token_cache_size: usize,
    pub max_staleness: std::time::Duration,
    /// Principal documents kept parsed (0: no bound).
    pub principal_cache_size: usize,
    /// The reconciliation period in use (see [`reconcile_interval`]).
    pub mirror_reconcile_interval: std::time::Duration,
    pub replica_id: String,
    pub routing_file: Option<PathBuf>,
    pub routing_file_poll: std::time::Duration,
    pub mirror_cache_file: Option<PathBuf>,
    /// The largest body of any route (the public listener's bound).
    pub max_body_bytes: usize,
    /// Per route class.
    pub body_limits: BodyLimits,
    pub headers: crate::headers::HeaderPolicies,
    pub control_planes: Vec<String>,
    pub store: StoreConfig,
    pub lifecycle: LifecycleArgs,
    pub tls: Option<gateway_edge::tls::TlsFiles>,
    pub tls_reload_interval: std::time::Duration,
    pub client_tls: crate::client_tls::ClientTls,
    /// Signs the identity assertion of forwarded calls (`None`: none sent).
    pub assertion: Option<std::sync::Arc<crate::assertion::AssertionSigner>>,
}

/// The reconciliation period used: the configured one, at most a third of a non-zero
/// `max_staleness` (each mirror is then confirmed at least twice within the bound), and
/// never below 250 ms.
/// The largest request body of each forwarded route class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyLimits {
    pub query: usize,
    pub runner: usize,
    /// Commands and the forwarded auth routes: `--max-body-bytes`.
    pub other: usize,
}

impl BodyLimits {
    /// `default` for every class but those named in `class:bytes` entries; the error names
    /// the bad entry.
    pub fn parse(default: usize, entries: &[String]) -> Result<BodyLimits, String> {
        let mut limits = BodyLimits {
            query: default,
            runner: default,
            other: default,
        };
        for entry in entries {
            let (class, bytes) = entry
                .split_once(':')
                .ok_or_else(|| format!("{entry:?} is not `class:bytes`"))?;
            let bytes: usize = bytes
                .trim()
                .parse()
                .map_err(|_| format!("{entry:?}: {bytes:?} is not a number of bytes"))?;
            match class.trim() {
                "query" => limits.query = bytes,
                "runner" => limits.runner = bytes,
                other => {
                    return Err(format!(
                        "{entry:?}: route class {other:?} is not one of query, runner"
                    ));
                }
            }
        }
        Ok(limits)
    }

    /// The largest of them: the public listener's bound.
    pub fn largest(&self) -> usize {
        self.query.max(self.runner).max(self.other)
    }
}

pub fn reconcile_interval(
    configured: std::time::Duration,
    max_staleness: std::time::Duration,
) -> std::time::Duration {
    let bounded = if max_staleness.is_zero() {
        configured
    } else {
        configured.min(max_staleness / 3)
    };
    bounded.max(std::time::Duration::from_millis(250))
}

impl Cli {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        const FLAG: &str = "snapshot-verify-key-file";
        const ENV: &str = "GATEWAY_SNAPSHOT_VERIFY_KEY_FILE";
        let path = self
            .snapshot_verify_key_file
            .as_ref()
            .ok_or_else(|| ConfigError::new(FLAG, ENV, "is required"))?;
        let pem = std::fs::read_to_string(path).map_err(|err| {
            ConfigError::new(FLAG, ENV, format!("cannot read {}: {err}", path.display()))
        })?;
        let verify_keys = DocVerifyingKeys::from_pem_bundle(&pem)
            .map_err(|err| ConfigError::new(FLAG, ENV, format!("{}: {err}", path.display())))?;
        if self.max_in_flight == 0 {
            return Err(ConfigError::new(
                "max-in-flight",
                "GATEWAY_MAX_IN_FLIGHT",
                "must be at least 1",
            ));
        }
        let body_limits = BodyLimits::parse(self.max_body_bytes, &self.class_max_body_bytes)
            .map_err(|err| {
                ConfigError::new("class-max-body-bytes", "GATEWAY_CLASS_MAX_BODY_BYTES", err)
            })?;
        if self.circuit_failures == 0 {
            return Err(ConfigError::new(
                "circuit-failures",
                "GATEWAY_CIRCUIT_FAILURES",
                "must be at least 1",
            ));
        }
        if self.upstream_retries > 3 {
            return Err(ConfigError::new(
                "upstream-retries",
                "GATEWAY_UPSTREAM_RETRIES",
                "at most 3: retries multiply the load on a struggling shard",
            ));
        }
        if let Some(path) = &self.routing_file {
            // a bad file stops the start, naming the problem
            crate::routing_file::load(path, &crate::mirror::Mirrors::new(true, false))
                .map_err(|err| ConfigError::new("routing-file", "GATEWAY_ROUTING_FILE", err))?;
        }
        if self.routing_file_poll.is_zero() {
            return Err(ConfigError::new(
                "routing-file-poll",
                "GATEWAY_ROUTING_FILE_POLL",
                "must be more than zero",
            ));
        }
        let distinct = [self.listen, self.grpc_listen, self.ops_listen];
        if distinct
            .iter()
            .enumerate()
            .any(|(i, a)| a.port() != 0 && distinct[i + 1..].contains(a))
        {
            return Err(ConfigError::new(
                "listen",
                "GATEWAY_DATA_LISTEN",
                "the http, grpc and ops listeners must use different addresses",
            ));
        }
        let assertion = match &self.assertion_signing_key_file {
            Some(path) => {
                let ttl = self.assertion_ttl.as_secs();
                if !(1..=300).contains(&ttl) {
                    return Err(ConfigError::new(
                        "assertion-ttl",
                        "GATEWAY_ASSERTION_TTL",
                        "must be between 1 s and 5 min: an assertion is for one call",
                    ));
                }
                let signer = crate::assertion::AssertionSigner::from_pem_files(
                    path,
                    &self.assertion_publish_key_file,
                    &self.token_issuer,
                    ttl as i64,
                )
                .map_err(|err| {
                    ConfigError::new(
                        "assertion-signing-key-file",
                        "GATEWAY_ASSERTION_SIGNING_KEY_FILE",
                        err,
                    )
                })?;
                Some(std::sync::Arc::new(signer))
            }
            None => None,
        };
        let ops_token = match &self.ops_token_file {
            Some(path) => {
                let token = read_secret_file("ops-token-file", "GATEWAY_OPS_TOKEN_FILE", path)?
                    .trim()
                    .to_string();
                if token.len() < 32 || token.chars().any(|c| !c.is_ascii_graphic()) {
                    return Err(ConfigError::new(
                        "ops-token-file",
                        "GATEWAY_OPS_TOKEN_FILE",
                        "the token must be at least 32 printable characters without spaces",
                    ));
                }
                Some(token)
            }
            None if !self.ops_listen.ip().is_loopback() => {
                return Err(ConfigError::new(
                    "ops-token-file",
                    "GATEWAY_OPS_TOKEN_FILE",
                    format!(
                        "is required with an ops listener off loopback ({}): its /admin views \
                         show the routing table and the upstreams",
                        self.ops_listen
                    ),
                ));
            }
            None => None,
        };
        Ok(Config {
            listen: self.listen,
            grpc_listen: self.grpc_listen,
            ops_listen: self.ops_listen,
            ops_token,
            verify_keys,
            snapshots_optional: self.snapshots_optional,
            token_issuer: self.token_issuer.clone(),
            token_audience: self.token_audience.clone(),
            timeouts: crate::proxy::Timeouts {
                command: self.command_timeout.unwrap_or(self.upstream_timeout),
                query: self.query_timeout.unwrap_or(self.upstream_timeout),
                runner: self.runner_timeout.unwrap_or(self.upstream_timeout),
                auth: self.upstream_timeout,
            },
            upstream: crate::upstream::UpstreamPolicy {
                failure_threshold: self.circuit_failures,
                open_for: self.circuit_open_for,
                max_in_flight: self.max_in_flight,
                retries: self.upstream_retries,
                pool: crate::pool::PoolPolicy {
                    max_idle: self.upstream_max_idle,
                    idle_timeout: self.upstream_idle_timeout,
                },
            },
            token_cache_size: self.token_cache_size,
            max_staleness: self.max_staleness,
            principal_cache_size: self.principal_cache_size,
            mirror_reconcile_interval: reconcile_interval(
                self.mirror_reconcile_interval,
                self.max_staleness,
            ),
            replica_id: self
                .replica_id
                .as_deref()
                .map(gateway_store::heartbeat::replica_token)
                .unwrap_or_else(gateway_store::heartbeat::default_replica_id),
            routing_file: self.routing_file.clone(),
            routing_file_poll: self.routing_file_poll,
            mirror_cache_file: self.mirror_cache_file.clone(),
            max_body_bytes: body_limits.largest(),
            body_limits,
            headers: crate::headers::HeaderPolicies::parse(
                &self.request_header_remove,
                &self.request_header_add,
                &self.response_header_remove,
                &self.response_header_add,
            )
            .map_err(|err| {
                ConfigError::new(
                    "request-header-* / --response-header-*",
                    "GATEWAY_REQUEST_HEADER_* / GATEWAY_RESPONSE_HEADER_*",
                    err,
                )
            })?,
            control_planes: self
                .control_planes
                .iter()
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty())
                .map(|u| {
                    if gateway_core::routing::validate_endpoint(&u) {
                        Ok(u)
                    } else {
                        Err(ConfigError::new(
                            "control-plane-url",
                            "GATEWAY_CONTROL_PLANE_URL",
                            format!("{u:?} is not an http(s)://host:port URL"),
                        ))
                    }
                })
                .collect::<Result<_, _>>()?,
            store: self.store.to_config("gateway-data-plane")?,
            lifecycle: self.lifecycle.clone(),
            tls: self
                .tls
                .checked()
                .map_err(|err| ConfigError::new("tls-cert", "GATEWAY_TLS_CERT", err.to_string()))?,
            tls_reload_interval: self.tls.tls_reload_interval,
            client_tls: self.client_tls.load().map_err(|err| {
                ConfigError::new("upstream-ca", "GATEWAY_UPSTREAM_CA", err.to_string())
            })?,
            assertion,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("data-plane").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_verification_key_is_required_and_checked() {
        let err = Cli::try_parse_from(["data-plane"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        assert!(err.to_string().contains("--snapshot-verify-key-file"));
        assert!(Cli::try_parse_from(["data-plane", "healthcheck"]).is_ok());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a key").unwrap();
        let err = parse(&["--snapshot-verify-key-file", bad.to_str().unwrap()])
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("GATEWAY_SNAPSHOT_VERIFY_KEY_FILE"));
    }

    #[test]
    fn listeners_must_differ() {
        let dir = tempfile::tempdir().unwrap();
        let key = gateway_core::signed::DocSigningKey::generate();
        let path = dir.path().join("verify.pem");
        std::fs::write(&path, key.verifying_key().to_public_key_pem().unwrap()).unwrap();
        let err = parse(&[
            "--snapshot-verify-key-file",
            path.to_str().unwrap(),
            "--ops-listen",
            "127.0.0.1:8080",
        ])
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("different addresses"));
        let ok = parse(&["--snapshot-verify-key-file", path.to_str().unwrap()]).validate();
        assert!(ok.is_ok());
    }

    #[test]
    fn body_limits_are_per_class_and_the_listener_takes_the_largest() {
        let limits = BodyLimits::parse(1000, &["runner:5000".into()]).unwrap();
        assert_eq!(
            limits,
            BodyLimits {
                query: 1000,
                runner: 5000,
                other: 1000
            }
        );
        assert_eq!(limits.largest(), 5000);
        let limits = BodyLimits::parse(1000, &["query:10".into(), " runner : 20".into()]);
        assert_eq!(
            limits.map(|l| (l.query, l.runner, l.largest())),
            Ok((10, 20, 1000))
        );
        for bad in ["runner", "commands:10", "query:-1", "query:ten", "query:"] {
            let err = BodyLimits::parse(1000, &[bad.into()]).unwrap_err();
            assert!(err.contains(bad), "{bad}: {err}");
        }
    }
}
