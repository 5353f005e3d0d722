//! Configuration pieces shared by both planes: store and logging flags (each also a
//! `GATEWAY_...` environment variable), secrets read only from files, duration parsing, and
//! the error that names the bad setting.

use std::path::{Path, PathBuf};
use std::time::Duration;

use gateway_store::StoreConfig;
use gateway_store::nats::{NatsConfig, validate_store_prefix};

/// A setting that cannot be used; the message names it.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[error("invalid setting {setting}: {message}")]
pub struct ConfigError {
    /// Flag and environment variable, e.g. `--nats-creds-file (GATEWAY_NATS_CREDS_FILE)`.
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(flag: &str, env: &str, message: impl Into<String>) -> Self {
        ConfigError {
            setting: format!("--{flag} ({env})"),
            message: message.into(),
        }
    }
}

/// Reads a secret from a file (the way Swarm mounts secrets); the error names the setting
/// and the path, never the content.
pub fn read_secret_file(flag: &str, env: &str, path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| {
        ConfigError::new(flag, env, format!("cannot read {}: {err}", path.display()))
    })?;
    if text.trim().is_empty() {
        return Err(ConfigError::new(
            flag,
            env,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(text)
}

/// Parses `250ms`, `5s`, `2m`, `1h` (a bare number is seconds).
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 250ms, 5s, 2m or 1h"))?;
    let duration = match unit {
        "ms" => Duration::from_millis(number),
        "" | "s" => Duration::from_secs(number),
        "m" => Duration::from_secs(number.saturating_mul(60)),
        "h" => Duration::from_secs(number.saturating_mul(3600)),
        _ => return Err(format!("{value:?} has an unknown unit (use ms, s, m or h)")),
    };
    Ok(duration)
}

/// [`parse_duration`], refusing zero.
pub fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        Duration::ZERO => Err(format!("{value:?} must be more than zero")),
        duration => Ok(duration),
    }
}

/// A whole number of at least one.
pub fn parse_positive_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) | Err(_) => Err(format!("{value:?} is not a whole number of at least 1")),
        Ok(count) => Ok(count),
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// NATS JetStream (production, several replicas)
    Nats,
    /// Local file, one process only (local development)
    Embedded,
}

/// Exit codes of both planes, shown in `--help`.
pub const EXIT_CODES: &str = "Exit codes: 0 stopped cleanly (SIGTERM or SIGINT, after draining); 1 failed \
while running (a listener that cannot bind, the store or a bootstrap step refused); 2 bad \
configuration (a flag or file refused before anything started).";

/// State store flags.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "State store")]
pub struct StoreArgs {
    /// State store backend.
    #[arg(
        long = "store",
        env = "GATEWAY_STORE",
        value_enum,
        default_value = "nats"
    )]
    pub backend: StoreBackend,
    /// NATS server URL(s), comma-separated.
    #[arg(
        long,
        env = "GATEWAY_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// NATS credentials file (a Swarm secret), when the server requires one.
    #[arg(long, env = "GATEWAY_NATS_CREDS_FILE")]
    pub nats_creds_file: Option<PathBuf>,
    /// Prefix of every bucket and stream name.
    #[arg(long, env = "GATEWAY_STORE_PREFIX", default_value = "gw_")]
    pub store_prefix: String,
    /// Replicas of each bucket and stream (3 on a production NATS cluster).
    #[arg(long, env = "GATEWAY_STORE_REPLICAS", default_value_t = 1)]
    pub store_replicas: usize,
    /// Values kept per key.
    #[arg(long, env = "GATEWAY_STORE_HISTORY", default_value_t = 1)]
    pub store_history: i64,
    /// Bound on connecting to the store and on each store request.
    #[arg(long, env = "GATEWAY_STORE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub store_timeout: Duration,
    /// File of the embedded store.
    #[arg(
        long,
        env = "GATEWAY_EMBEDDED_PATH",
        default_value = ".gateway-dev/state.redb"
    )]
    pub embedded_path: PathBuf,
}

impl StoreArgs {
    /// Validates the flags into a store configuration.
    pub fn to_config(&self, client_name: &str) -> Result<StoreConfig, ConfigError> {
        match self.backend {
            StoreBackend::Embedded => Ok(StoreConfig::Embedded {
                path: self.embedded_path.clone(),
            }),
            StoreBackend::Nats => {
                validate_store_prefix(&self.store_prefix)
                    .map_err(|m| ConfigError::new("store-prefix", "GATEWAY_STORE_PREFIX", m))?;
                if !(1..=5).contains(&self.store_replicas) {
                    return Err(ConfigError::new(
                        "store-replicas",
                        "GATEWAY_STORE_REPLICAS",
                        "must be between 1 and 5",
                    ));
                }
                if !(1..=64).contains(&self.store_history) {
                    return Err(ConfigError::new(
                        "store-history",
                        "GATEWAY_STORE_HISTORY",
                        "must be between 1 and 64",
                    ));
                }
                if self.nats_url.trim().is_empty() {
                    return Err(ConfigError::new("nats-url", "GATEWAY_NATS_URL", "is empty"));
                }
                if let Some(path) = &self.nats_creds_file {
                    read_secret_file("nats-creds-file", "GATEWAY_NATS_CREDS_FILE", path)?;
                }
                Ok(StoreConfig::Nats(NatsConfig {
                    url: self.nats_url.clone(),
                    creds_file: self.nats_creds_file.clone(),
                    prefix: self.store_prefix.clone(),
                    replicas: self.store_replicas,
                    history: self.store_history,
                    timeout: self.store_timeout,
                    client_name: client_name.to_string(),
                    ..NatsConfig::default()
                }))
            }
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// Logging flags.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Logging")]
pub struct LogArgs {
    /// Log filter (tracing env-filter syntax), e.g. `info` or `info,control_plane=debug`.
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,
    /// Log line format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,
}

/// Lifecycle flags.
#[derive(clap::Args, Clone, Debug)]
#[command(next_help_heading = "Lifecycle and connections")]
pub struct LifecycleArgs {
    /// After SIGTERM, keep serving with `/ready` at 503 for this long before closing the
    /// listeners, so load balancers stop sending new requests.
    #[arg(long, env = "GATEWAY_DRAIN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// Longest wait for in-flight requests once the listeners are closed.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// An HTTP/1.1 connection must deliver a complete request head within this of its
    /// start or of the previous answer: an idle connection is closed, a head still
    /// arriving gets 408.
    #[arg(long, env = "GATEWAY_HTTP_HEAD_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub http_head_timeout: Duration,
    /// A request body must arrive within this of its head (408 after).
    #[arg(long, env = "GATEWAY_HTTP_BODY_TIMEOUT", default_value = "60s", value_parser = parse_positive_duration)]
    pub http_body_timeout: Duration,
    /// Most connections each listener holds at once (plain or TLS, HTTP or gRPC); at the cap
    /// a listener stops accepting until one closes, and new clients wait in the kernel's
    /// backlog. Open connections: `gateway_open_connections{listener}`.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = crate::h1::server::DEFAULT_MAX_CONNECTIONS, value_parser = parse_positive_count)]
    pub max_connections: usize,
}

impl LifecycleArgs {
    /// The bounds of the connections of the listener named `listener` (in metrics), with
    /// bodies up to `max_body`.
    pub fn conn_limits(&self, listener: &'static str, max_body: usize) -> crate::h1::ConnLimits {
        crate::h1::ConnLimits {
            listener,
            max_connections: self.max_connections,
            max_body,
            head_timeout: self.http_head_timeout,
            body_timeout: self.http_body_timeout,
            stream_above: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_positive_duration("1ms"), Ok(Duration::from_millis(1)));
        assert!(parse_positive_duration("0s").is_err());
    }

    #[test]
    fn secret_files_must_exist_and_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing");
        let err = read_secret_file("kek-file", "GATEWAY_KEK_FILE", &missing).unwrap_err();
        assert_eq!(err.setting, "--kek-file (GATEWAY_KEK_FILE)");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").unwrap();
        assert!(read_secret_file("kek-file", "GATEWAY_KEK_FILE", &empty).is_err());
        let good = dir.path().join("good");
        std::fs::write(&good, "s3cret").unwrap();
        assert_eq!(
            read_secret_file("kek-file", "GATEWAY_KEK_FILE", &good).unwrap(),
            "s3cret"
        );
        // the message never carries the content
        std::fs::write(&empty, "").unwrap();
        let msg = read_secret_file("kek-file", "GATEWAY_KEK_FILE", &empty)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("kek-file"));
    }
}
