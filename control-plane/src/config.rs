//! Command line and environment of the control plane, validated once at start.
//!
//! (Over 600 lines: each flag's documentation is written where it is declared, because
//! that text is the `--help` an operator reads; the tests are in `config/tests.rs`.)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gateway_edge::config::{
    ConfigError, LifecycleArgs, LogArgs, StoreArgs, parse_duration, read_secret_file,
};

use crate::auth::oidc::OidcSettings;
use crate::auth::passwords::{Argon2Settings, PasswordPolicy};
use crate::auth::sessions::SessionSettings;
use crate::auth::{AuthSettings, BootstrapAdmin};
use crate::keys::{Kek, KeySettings, SigningAlg};
use crate::limits::{BackoffSettings, IpQuotas, Quota};
use crate::mail::Mailer;
use gateway_core::signed::DocSigningKey;
use gateway_store::StoreConfig;

/// The control plane of the Cloudlysis gateway: IAM, auth flows, keys, routing placement.
#[derive(clap::Parser, Debug)]
#[command(
    name = "control-plane",
    version,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = gateway_edge::config::EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Generate an Ed25519 snapshot signing key (PKCS#8 PEM, mode 0600), its public
    /// verification key (SPKI PEM) for the data planes, and a key-encryption key (mode 0600).
    Keygen {
        /// Directory to write `snapshot-signing.pem`, `snapshot-verify.pem` and
        /// `key-encryption.key` into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// Operate tenant rebalancing through the admin API of a running control plane.
    Rebalance(crate::rebalance_cli::RebalanceCli),
    /// Exit 0 when `--url` answers 200 within 3 s, 1 otherwise: the image's HEALTHCHECK
    /// (the image has no curl). The default probes `/live`: started once, and answering.
    Healthcheck {
        #[arg(
            long,
            env = "GATEWAY_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:8090/live"
        )]
        url: String,
    },
}

/// Flags of the server.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the HTTP API (auth, admin, ops routes).
    #[arg(long, env = "GATEWAY_CONTROL_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// Separate plain listener for `/metrics`, `/version`, `/health` and `/ready` (for
    /// probes and scrapers when the API listener requires TLS client certificates).
    #[arg(long, env = "GATEWAY_CONTROL_OPS_LISTEN")]
    pub ops_listen: Option<SocketAddr>,
    /// File holding the Ed25519 private key (PKCS#8 PEM) that signs the documents published
    /// to the data planes (a Swarm secret).
    #[arg(long, env = "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE", required = true)]
    pub snapshot_signing_key_file: Option<PathBuf>,
    /// File holding the key-encryption key (base64 of 32 random bytes, a Swarm secret) that
    /// seals the token signing keys in the store.
    #[arg(long, env = "GATEWAY_KEY_ENCRYPTION_KEY_FILE", required = true)]
    pub key_encryption_key_file: Option<PathBuf>,
    /// Peers (IPs or CIDRs, comma-separated) whose `x-forwarded-for` names the client: the
    /// data planes in front of this control plane.
    #[arg(long, env = "GATEWAY_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,
    /// Browser origins (exact `scheme://host[:port]`, comma-separated) allowed to call the
    /// auth and admin APIs from their pages, e.g. the Admin UI's; none by default. Never a
    /// wildcard: answers may carry credentials.
    #[arg(long, env = "GATEWAY_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,
    #[command(flatten)]
    pub tokens: TokenArgs,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub google: GoogleArgs,
    #[command(flatten)]
    pub rebalance: RebalanceArgs,
    /// Email of the first platform admin, created on an empty store.
    #[arg(
        long,
        env = "GATEWAY_BOOTSTRAP_ADMIN_EMAIL",
        help_heading = "First platform admin"
    )]
    pub bootstrap_admin_email: Option<String>,
    /// File holding the first platform admin's password (a Swarm secret).
    #[arg(
        long,
        env = "GATEWAY_BOOTSTRAP_ADMIN_PASSWORD_FILE",
        help_heading = "First platform admin"
    )]
    pub bootstrap_admin_password_file: Option<PathBuf>,
    #[command(flatten)]
    pub passwords: PasswordArgs,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
    #[command(flatten)]
    pub tls: gateway_edge::tls::TlsArgs,
}

/// Token and session flags.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Tokens and sessions")]
pub struct TokenArgs {
    /// `iss` of access tokens.
    #[arg(
        long,
        env = "GATEWAY_TOKEN_ISSUER",
        default_value = "cloudlysis-gateway"
    )]
    pub token_issuer: String,
    /// `aud` of access tokens.
    #[arg(long, env = "GATEWAY_TOKEN_AUDIENCE", default_value = "cloudlysis")]
    pub token_audience: String,
    /// Signature algorithm of access tokens.
    #[arg(
        long,
        env = "GATEWAY_TOKEN_SIGNING_ALG",
        value_enum,
        default_value = "EdDSA"
    )]
    pub token_signing_alg: SigningAlg,
    /// Lifetime of access tokens (5m to 15m).
    #[arg(long, env = "GATEWAY_ACCESS_TOKEN_TTL", default_value = "10m", value_parser = parse_duration)]
    pub access_token_ttl: Duration,
    /// Automatic signing-key rotation period (`0s` rotates only on request).
    #[arg(long, env = "GATEWAY_KEY_ROTATION_INTERVAL", default_value = "720h", value_parser = parse_duration)]
    pub key_rotation_interval: Duration,
    /// A session unused this long ends.
    #[arg(long, env = "GATEWAY_SESSION_IDLE_TTL", default_value = "336h", value_parser = parse_duration)]
    pub session_idle_ttl: Duration,
    /// A session ends this long after sign-in.
    #[arg(long, env = "GATEWAY_SESSION_ABSOLUTE_TTL", default_value = "720h", value_parser = parse_duration)]
    pub session_absolute_ttl: Duration,
    /// Window in which a just-rotated refresh token is refused without ending the session.
    #[arg(long, env = "GATEWAY_REFRESH_REUSE_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub refresh_reuse_grace: Duration,
    /// Refuse sign-in until the email address is verified.
    #[arg(long, env = "GATEWAY_REQUIRE_VERIFIED_EMAIL", default_value_t = false)]
    pub require_verified_email: bool,
}

/// Mail flags: SMTP in production, an outbox file for local runs.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Mail")]
pub struct MailArgs {
    /// SMTP server: `smtp://host:port` (plain, loopback only), `smtp://host:587?tls=required`
    /// (STARTTLS) or `smtps://host:465`.
    #[arg(long, env = "GATEWAY_SMTP_URL")]
    pub smtp_url: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "GATEWAY_SMTP_USERNAME")]
    pub smtp_username: Option<String>,
    /// File holding the SMTP password (a Swarm secret).
    #[arg(long, env = "GATEWAY_SMTP_PASSWORD_FILE")]
    pub smtp_password_file: Option<PathBuf>,
    /// Write outgoing mail to this file instead of sending it (local runs).
    #[arg(long, env = "GATEWAY_MAIL_OUTBOX")]
    pub mail_outbox: Option<PathBuf>,
    /// Sender address of outgoing mail.
    #[arg(
        long,
        env = "GATEWAY_MAIL_FROM",
        default_value = "Cloudlysis <no-reply@cloudlysis.localhost>"
    )]
    pub mail_from: String,
    /// Base URL of the client application, used in links sent by mail.
    #[arg(
        long,
        env = "GATEWAY_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub public_url: String,
    /// Lifetime of password-reset and email-verification tokens.
    #[arg(long, env = "GATEWAY_ONE_TIME_TOKEN_TTL", default_value = "30m", value_parser = parse_duration)]
    pub one_time_token_ttl: Duration,
}

impl MailArgs {
    fn mailer(&self) -> Result<Mailer, ConfigError> {
        let from = self.mail_from.clone();
        if from.parse::<lettre::message::Mailbox>().is_err() {
            return Err(ConfigError::new(
                "mail-from",
                "GATEWAY_MAIL_FROM",
                "is not a mail address",
            ));
        }
        match (&self.smtp_url, &self.mail_outbox) {
            (Some(_), Some(_)) => Err(ConfigError::new(
                "mail-outbox",
                "GATEWAY_MAIL_OUTBOX",
                "set either --smtp-url or --mail-outbox, not both",
            )),
            (None, None) => Err(ConfigError::new(
                "smtp-url",
                "GATEWAY_SMTP_URL",
                "is required (or --mail-outbox for a local run)",
            )),
            (None, Some(path)) => Ok(Mailer::outbox(path.clone(), from)),
            (Some(url), None) => {
                let username = self.smtp_username.as_ref().filter(|u| !u.is_empty());
                let credentials = match (username, &self.smtp_password_file) {
                    (Some(user), Some(file)) => Some((
                        user.clone(),
                        read_secret_file("smtp-password-file", "GATEWAY_SMTP_PASSWORD_FILE", file)?
                            .trim_end_matches(['\r', '\n'])
                            .to_string(),
                    )),
                    (None, None) => None,
                    _ => {
                        return Err(ConfigError::new(
                            "smtp-password-file",
                            "GATEWAY_SMTP_PASSWORD_FILE",
                            "--smtp-username and --smtp-password-file go together",
                        ));
                    }
                };
                Mailer::smtp(url, credentials, from).map_err(|err| {
                    ConfigError::new("smtp-url", "GATEWAY_SMTP_URL", err.to_string())
                })
            }
        }
    }
}

/// Abuse limits of the auth routes.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Abuse limits")]
pub struct LimitArgs {
    /// Sign-ups per client IP (`N/s`, `N/m` or `N/h`; per replica).
    #[arg(long, env = "GATEWAY_LIMIT_SIGNUP_PER_IP", default_value = "10/m", value_parser = Quota::parse)]
    pub limit_signup_per_ip: Quota,
    /// Sign-in attempts per client IP.
    #[arg(long, env = "GATEWAY_LIMIT_SIGNIN_PER_IP", default_value = "30/m", value_parser = Quota::parse)]
    pub limit_signin_per_ip: Quota,
    /// Forgot-password requests per client IP.
    #[arg(long, env = "GATEWAY_LIMIT_FORGOT_PER_IP", default_value = "5/m", value_parser = Quota::parse)]
    pub limit_forgot_per_ip: Quota,
    /// Password resets per client IP.
    #[arg(long, env = "GATEWAY_LIMIT_RESET_PER_IP", default_value = "10/m", value_parser = Quota::parse)]
    pub limit_reset_per_ip: Quota,
    /// MFA code attempts per client IP.
    #[arg(long, env = "GATEWAY_LIMIT_MFA_PER_IP", default_value = "10/m", value_parser = Quota::parse)]
    pub limit_mfa_per_ip: Quota,
    /// Token-endpoint requests per client IP.
    #[arg(long, env = "GATEWAY_LIMIT_TOKEN_PER_IP", default_value = "60/m", value_parser = Quota::parse)]
    pub limit_token_per_ip: Quota,
    /// Google sign-in starts (and links) and callbacks per client IP.
    #[arg(long, env = "GATEWAY_LIMIT_OIDC_PER_IP", default_value = "20/m", value_parser = Quota::parse)]
    pub limit_oidc_per_ip: Quota,
    /// Failed sign-ins (or MFA codes) per account before it is slowed down (shared by
    /// every replica).
    #[arg(long, env = "GATEWAY_LOCKOUT_FREE_FAILURES", default_value_t = 5)]
    pub lockout_free_failures: u32,
    /// First lock of an account past its free failures; each further failure doubles it
    /// (up to `--lockout-max`).
    #[arg(long, env = "GATEWAY_LOCKOUT_FIRST", default_value = "1s", value_parser = parse_duration)]
    pub lockout_first: Duration,
    /// Longest lock of an account after repeated failures.
    #[arg(long, env = "GATEWAY_LOCKOUT_MAX", default_value = "15m", value_parser = parse_duration)]
    pub lockout_max: Duration,
    /// Password-reset mails per address per hour.
    #[arg(long, env = "GATEWAY_FORGOT_PER_ACCOUNT_PER_HOUR", default_value_t = 3)]
    pub forgot_per_account_per_hour: u32,
}

/// Google sign-in (OpenID Connect); off unless a client id is set.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Google sign-in")]
pub struct GoogleArgs {
    /// OAuth client id of the gateway at Google (turns Google sign-in on).
    #[arg(long, env = "GATEWAY_GOOGLE_CLIENT_ID")]
    pub google_client_id: Option<String>,
    /// File holding the OAuth client secret (a Swarm secret).
    #[arg(long, env = "GATEWAY_GOOGLE_CLIENT_SECRET_FILE")]
    pub google_client_secret_file: Option<PathBuf>,
    /// Issuer URL of the provider (any standards-compliant OpenID provider works).
    #[arg(
        long,
        env = "GATEWAY_GOOGLE_ISSUER_URL",
        default_value = "https://accounts.google.com"
    )]
    pub google_issuer_url: String,
    /// Our callback URL as registered at the provider
    /// (`https://<host>/v1/auth/oidc/google/callback`).
    #[arg(long, env = "GATEWAY_GOOGLE_REDIRECT_URL")]
    pub google_redirect_url: Option<String>,
    /// Link a Google login to an existing account with the same provider-verified email
    /// (otherwise the user must sign in and link explicitly).
    #[arg(
        long,
        env = "GATEWAY_GOOGLE_AUTO_LINK_VERIFIED_EMAIL",
        default_value_t = false
    )]
    pub google_auto_link_verified_email: bool,
}

impl GoogleArgs {
    fn settings(&self) -> Result<Option<OidcSettings>, ConfigError> {
        // an empty value (a stack file's unset variable) means off, like an absent one
        let Some(client_id) = self
            .google_client_id
            .as_ref()
            .filter(|c| !c.trim().is_empty())
        else {
            return Ok(None);
        };
        let secret_file = self.google_client_secret_file.as_ref().ok_or_else(|| {
            ConfigError::new(
                "google-client-secret-file",
                "GATEWAY_GOOGLE_CLIENT_SECRET_FILE",
                "is required with --google-client-id",
            )
        })?;
        let client_secret = read_secret_file(
            "google-client-secret-file",
            "GATEWAY_GOOGLE_CLIENT_SECRET_FILE",
            secret_file,
        )?
        .trim()
        .to_string();
        let redirect_url = self.google_redirect_url.clone().ok_or_else(|| {
            ConfigError::new(
                "google-redirect-url",
                "GATEWAY_GOOGLE_REDIRECT_URL",
                "is required with --google-client-id",
            )
        })?;
        for (flag, env, value) in [
            (
                "google-issuer-url",
                "GATEWAY_GOOGLE_ISSUER_URL",
                &self.google_issuer_url,
            ),
            (
                "google-redirect-url",
                "GATEWAY_GOOGLE_REDIRECT_URL",
                &redirect_url,
            ),
        ] {
            if openidconnect::url::Url::parse(value).is_err() {
                return Err(ConfigError::new(flag, env, "is not a URL"));
            }
        }
        Ok(Some(OidcSettings {
            issuer_url: self.google_issuer_url.clone(),
            client_id: client_id.clone(),
            client_secret,
            redirect_url,
            auto_link_verified_email: self.google_auto_link_verified_email,
        }))
    }
}

/// Password flags.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Passwords")]
pub struct PasswordArgs {
    /// Minimum password length in characters (8 to 64; NIST SP 800-63B-4 asks 15 for
    /// single-factor accounts).
    #[arg(long, env = "GATEWAY_PASSWORD_MIN_LENGTH", default_value_t = 15)]
    pub password_min_length: usize,
    /// Argon2id memory in KiB (at least 19456).
    #[arg(long, env = "GATEWAY_ARGON2_MEMORY_KIB", default_value_t = 19_456)]
    pub argon2_memory_kib: u32,
    /// Argon2id iterations (at least 2).
    #[arg(long, env = "GATEWAY_ARGON2_ITERATIONS", default_value_t = 2)]
    pub argon2_iterations: u32,
    /// Argon2id lanes (at least 1).
    #[arg(long, env = "GATEWAY_ARGON2_PARALLELISM", default_value_t = 1)]
    pub argon2_parallelism: u32,
    /// Password hashes computed at once (bounds memory: each takes the Argon2 memory).
    #[arg(long, env = "GATEWAY_ARGON2_MAX_CONCURRENCY", default_value_t = 4)]
    pub argon2_max_concurrency: usize,
}

/// Tenant rebalancing (readiness gates and plan leases).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Rebalancing")]
pub struct RebalanceArgs {
    /// Largest projection lag (events) a target shard may report at cutover.
    #[arg(
        long,
        env = "GATEWAY_REBALANCE_MAX_PROJECTION_LAG",
        default_value_t = 0
    )]
    pub rebalance_max_projection_lag: u64,
    /// Pause between the two reads of a runner's checkpoint (it must not move).
    #[arg(long, env = "GATEWAY_REBALANCE_CHECKPOINT_RECHECK", default_value = "500ms", value_parser = gateway_edge::config::parse_duration)]
    pub rebalance_checkpoint_recheck: Duration,
    /// Deadline of one readiness-gate call.
    #[arg(long, env = "GATEWAY_REBALANCE_GATE_TIMEOUT", default_value = "5s", value_parser = gateway_edge::config::parse_duration)]
    pub rebalance_gate_timeout: Duration,
    /// How long an apply holds its plan; a plan whose holder died is taken over after it.
    #[arg(long, env = "GATEWAY_REBALANCE_LEASE", default_value = "60s", value_parser = gateway_edge::config::parse_duration)]
    pub rebalance_lease: Duration,
}

/// Validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub ops_listen: Option<SocketAddr>,
    pub mailer: Mailer,
    pub ip_quotas: IpQuotas,
    pub backoff: BackoffSettings,
    pub google: Option<OidcSettings>,
    pub bootstrap_admin: Option<BootstrapAdmin>,
    pub trusted_proxies: Vec<gateway_edge::http::IpNet>,
    /// Exact browser origins allowed by CORS on the auth and admin APIs.
    pub cors_allowed_origins: Vec<axum::http::HeaderValue>,
    pub rebalance: crate::rebalance::RebalanceSettings,
    pub signing_key: DocSigningKey,
    pub kek: Kek,
    pub keys: KeySettings,
    pub auth: AuthSettings,
    pub argon2: Argon2Settings,
    pub argon2_max_concurrency: usize,
    pub store: StoreConfig,
    pub lifecycle: LifecycleArgs,
    /// TLS of the listener, when on.
    pub tls: Option<gateway_edge::tls::TlsFiles>,
    pub tls_reload_interval: Duration,
}

impl ServeArgs {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        const FLAG: &str = "snapshot-signing-key-file";
        const ENV: &str = "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE";
        let path = self
            .snapshot_signing_key_file
            .as_ref()
            .ok_or_else(|| ConfigError::new(FLAG, ENV, "is required"))?;
        let pem = read_secret_file(FLAG, ENV, path)?;
        let signing_key = DocSigningKey::from_pkcs8_pem(&pem)
            .map_err(|err| ConfigError::new(FLAG, ENV, format!("{}: {err}", path.display())))?;
        const KEK_FLAG: &str = "key-encryption-key-file";
        const KEK_ENV: &str = "GATEWAY_KEY_ENCRYPTION_KEY_FILE";
        let kek_path = self
            .key_encryption_key_file
            .as_ref()
            .ok_or_else(|| ConfigError::new(KEK_FLAG, KEK_ENV, "is required"))?;
        let kek =
            Kek::from_base64(&read_secret_file(KEK_FLAG, KEK_ENV, kek_path)?).map_err(|m| {
                ConfigError::new(KEK_FLAG, KEK_ENV, format!("{}: {m}", kek_path.display()))
            })?;
        let t = &self.tokens;
        let ttl = t.access_token_ttl;
        if !(Duration::from_secs(300)..=Duration::from_secs(900)).contains(&ttl) {
            return Err(ConfigError::new(
                "access-token-ttl",
                "GATEWAY_ACCESS_TOKEN_TTL",
                "must be between 5m and 15m",
            ));
        }
        for (flag, env, value) in [
            ("token-issuer", "GATEWAY_TOKEN_ISSUER", &t.token_issuer),
            (
                "token-audience",
                "GATEWAY_TOKEN_AUDIENCE",
                &t.token_audience,
            ),
        ] {
            if value.trim().is_empty() {
                return Err(ConfigError::new(flag, env, "is empty"));
            }
        }
        if t.session_idle_ttl.is_zero() || t.session_absolute_ttl < t.session_idle_ttl {
            return Err(ConfigError::new(
                "session-absolute-ttl",
                "GATEWAY_SESSION_ABSOLUTE_TTL",
                "must be at least the idle ttl, which must not be zero",
            ));
        }
        if !t.key_rotation_interval.is_zero() && t.key_rotation_interval < ttl * 2 {
            return Err(ConfigError::new(
                "key-rotation-interval",
                "GATEWAY_KEY_ROTATION_INTERVAL",
                "must be 0s (manual) or at least twice the access token ttl",
            ));
        }
        let p = &self.passwords;
        if !(8..=64).contains(&p.password_min_length) {
            return Err(ConfigError::new(
                "password-min-length",
                "GATEWAY_PASSWORD_MIN_LENGTH",
                "must be between 8 and 64",
            ));
        }
        if p.argon2_memory_kib < 19_456 || p.argon2_iterations < 2 || p.argon2_parallelism < 1 {
            return Err(ConfigError::new(
                "argon2-memory-kib",
                "GATEWAY_ARGON2_MEMORY_KIB",
                "argon2id needs at least 19456 KiB, 2 iterations and 1 lane",
            ));
        }
        let mailer = self.mail.mailer()?;
        let l = &self.limits;
        if l.lockout_free_failures == 0 || l.forgot_per_account_per_hour == 0 {
            return Err(ConfigError::new(
                "lockout-free-failures",
                "GATEWAY_LOCKOUT_FREE_FAILURES",
                "this and --forgot-per-account-per-hour must be at least 1",
            ));
        }
        if l.lockout_first.is_zero() {
            return Err(ConfigError::new(
                "lockout-first",
                "GATEWAY_LOCKOUT_FIRST",
                "must be above zero (each lock is also at most --lockout-max)",
            ));
        }
        let google = self.google.settings()?;
        let bootstrap_admin = match (
            &self.bootstrap_admin_email,
            &self.bootstrap_admin_password_file,
        ) {
            (Some(email), Some(file)) => Some(BootstrapAdmin {
                email: email.clone(),
                password: read_secret_file(
                    "bootstrap-admin-password-file",
                    "GATEWAY_BOOTSTRAP_ADMIN_PASSWORD_FILE",
                    file,
                )?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            }),
            (None, None) => None,
            _ => {
                return Err(ConfigError::new(
                    "bootstrap-admin-password-file",
                    "GATEWAY_BOOTSTRAP_ADMIN_PASSWORD_FILE",
                    "--bootstrap-admin-email and --bootstrap-admin-password-file go together",
                ));
            }
        };
        Ok(Config {
            listen: self.listen,
            ops_listen: self.ops_listen,
            mailer,
            google,
            bootstrap_admin,
            cors_allowed_origins: self
                .cors_allowed_origins
                .iter()
                .filter(|o| !o.trim().is_empty())
                .map(|o| cors_origin(o.trim()))
                .collect::<Result<_, _>>()
                .map_err(|m| {
                    ConfigError::new("cors-allowed-origins", "GATEWAY_CORS_ALLOWED_ORIGINS", m)
                })?,
            trusted_proxies: self
                .trusted_proxies
                .iter()
                .filter(|t| !t.trim().is_empty())
                .map(|t| gateway_edge::http::IpNet::parse(t))
                .collect::<Result<_, _>>()
                .map_err(|m| ConfigError::new("trusted-proxies", "GATEWAY_TRUSTED_PROXIES", m))?,
            rebalance: {
                let r = &self.rebalance;
                if r.rebalance_lease < r.rebalance_gate_timeout * 3 {
                    return Err(ConfigError::new(
                        "rebalance-lease",
                        "GATEWAY_REBALANCE_LEASE",
                        "must be at least three gate timeouts (an apply asks several gates)",
                    ));
                }
                crate::rebalance::RebalanceSettings {
                    max_projection_lag: r.rebalance_max_projection_lag,
                    checkpoint_recheck: r.rebalance_checkpoint_recheck,
                    gate_timeout: r.rebalance_gate_timeout,
                    lease: r.rebalance_lease,
                }
            },
            ip_quotas: IpQuotas {
                signup: l.limit_signup_per_ip,
                signin: l.limit_signin_per_ip,
                forgot: l.limit_forgot_per_ip,
                reset: l.limit_reset_per_ip,
                mfa: l.limit_mfa_per_ip,
                token: l.limit_token_per_ip,
                oidc: l.limit_oidc_per_ip,
            },
            backoff: BackoffSettings {
                free_failures: l.lockout_free_failures,
                first_lock: l.lockout_first,
                max_lock: l.lockout_max,
                forget_after: Duration::from_secs(3600),
            },
            signing_key,
            kek,
            keys: KeySettings {
                alg: t.token_signing_alg,
                token_ttl: ttl,
                rotation_interval: (!t.key_rotation_interval.is_zero())
                    .then_some(t.key_rotation_interval),
            },
            auth: AuthSettings {
                issuer: t.token_issuer.clone(),
                audience: t.token_audience.clone(),
                access_ttl: ttl,
                sessions: SessionSettings {
                    idle_ttl: t.session_idle_ttl,
                    absolute_ttl: t.session_absolute_ttl,
                    reuse_grace: t.refresh_reuse_grace,
                },
                password_policy: PasswordPolicy {
                    min_chars: p.password_min_length,
                },
                require_verified_email: t.require_verified_email,
                forgot_per_account_per_hour: l.forgot_per_account_per_hour,
                one_time_ttl: self.mail.one_time_token_ttl,
                public_url: self.mail.public_url.clone(),
            },
            argon2: Argon2Settings {
                memory_kib: p.argon2_memory_kib,
                iterations: p.argon2_iterations,
                parallelism: p.argon2_parallelism,
            },
            argon2_max_concurrency: p.argon2_max_concurrency,
            store: self.store.to_config("gateway-control-plane")?,
            lifecycle: self.lifecycle.clone(),
            tls: self
                .tls
                .checked()
                .map_err(|err| ConfigError::new("tls-cert", "GATEWAY_TLS_CERT", err.to_string()))?,
            tls_reload_interval: self.tls.tls_reload_interval,
        })
    }
}

/// Writes a new key-encryption key (base64 of 32 random bytes, mode 0600) to `path`.
fn generate_kek_file(path: &std::path::Path) -> Result<(), String> {
    use base64::Engine;
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let text = format!(
        "{}\n",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    );
    write_private(path, text.as_bytes())
}

/// Files written by `keygen`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    pub snapshot_signing: PathBuf,
    pub snapshot_verify: PathBuf,
    pub key_encryption: PathBuf,
}

/// Writes a new snapshot key pair and a key-encryption key into `out_dir`.
pub fn keygen(out_dir: &std::path::Path, force: bool) -> Result<KeyFiles, String> {
    let files = KeyFiles {
        snapshot_signing: out_dir.join("snapshot-signing.pem"),
        snapshot_verify: out_dir.join("snapshot-verify.pem"),
        key_encryption: out_dir.join("key-encryption.key"),
    };
    let all = [
        &files.snapshot_signing,
        &files.snapshot_verify,
        &files.key_encryption,
    ];
    if !force && all.iter().any(|p| p.exists()) {
        return Err(format!(
            "{} already holds keys; pass --force to overwrite",
            out_dir.display()
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|err| format!("{}: {err}", out_dir.display()))?;
    let key = DocSigningKey::generate();
    let private_pem = key.to_pkcs8_pem().map_err(|err| err.to_string())?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem()
        .map_err(|err| err.to_string())?;
    write_private(&files.snapshot_signing, private_pem.as_bytes())?;
    std::fs::write(&files.snapshot_verify, public_pem)
        .map_err(|err| format!("{}: {err}", files.snapshot_verify.display()))?;
    generate_kek_file(&files.key_encryption)?;
    Ok(files)
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    file.write_all(bytes)
        .map_err(|err| format!("{}: {err}", path.display()))
}

#[cfg(test)]
mod tests;

/// An exact origin as browsers send it (`https://admin.example.com`, `http://localhost:3000`):
/// a scheme, a host and an optional port, nothing else.
fn cors_origin(origin: &str) -> Result<axum::http::HeaderValue, String> {
    let refused =
        || format!("{origin:?} is not an origin (scheme://host[:port], no path, no wildcard)");
    let (scheme, rest) = origin.split_once("://").ok_or_else(refused)?;
    if !matches!(scheme, "http" | "https")
        || rest.is_empty()
        || rest.contains(['/', '*', '?', '#', '@', ' '])
        || rest.ends_with(':')
    {
        return Err(refused());
    }
    if let Some((host, port)) = rest.rsplit_once(':')
        && !rest.ends_with(']')
        && (host.is_empty() || port.parse::<u16>().is_err())
    {
        return Err(refused());
    }
    axum::http::HeaderValue::from_str(&origin.to_ascii_lowercase()).map_err(|_| refused())
}
