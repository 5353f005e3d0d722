//! Command line and environment of the control plane, validated once at start.

use std::net::SocketAddr;
use std::path::PathBuf;

use gateway_shared::config::{ConfigError, LifecycleArgs, LogArgs, StoreArgs, read_secret_file};
use gateway_shared::signed::DocSigningKey;
use gateway_shared::store::StoreConfig;

/// The control plane of the Cloudlysis gateway: IAM, auth flows, keys, routing placement.
#[derive(clap::Parser, Debug)]
#[command(
    name = "control-plane",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Generate an Ed25519 snapshot signing key (PKCS#8 PEM, mode 0600) and its public
    /// verification key (SPKI PEM) for the data planes.
    Keygen {
        /// Directory to write `snapshot-signing.pem` and `snapshot-verify.pem` into.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// Flags of the server.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address of the HTTP API (auth, admin, ops routes).
    #[arg(long, env = "GATEWAY_CONTROL_LISTEN", default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    /// File holding the Ed25519 private key (PKCS#8 PEM) that signs the documents published
    /// to the data planes (a Swarm secret).
    #[arg(long, env = "GATEWAY_SNAPSHOT_SIGNING_KEY_FILE")]
    pub snapshot_signing_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// Validated configuration.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub signing_key: DocSigningKey,
    pub store: StoreConfig,
    pub lifecycle: LifecycleArgs,
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
        Ok(Config {
            listen: self.listen,
            signing_key,
            store: self.store.to_config("gateway-control-plane")?,
            lifecycle: self.lifecycle.clone(),
        })
    }
}

/// Writes a new snapshot key pair into `out_dir`; returns the two paths.
pub fn keygen(out_dir: &std::path::Path, force: bool) -> Result<(PathBuf, PathBuf), String> {
    let private = out_dir.join("snapshot-signing.pem");
    let public = out_dir.join("snapshot-verify.pem");
    if !force && (private.exists() || public.exists()) {
        return Err(format!(
            "{} or {} exists; pass --force to overwrite",
            private.display(),
            public.display()
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|err| format!("{}: {err}", out_dir.display()))?;
    let key = DocSigningKey::generate();
    let private_pem = key.to_pkcs8_pem().map_err(|err| err.to_string())?;
    let public_pem = key
        .verifying_key()
        .to_public_key_pem()
        .map_err(|err| err.to_string())?;
    write_private(&private, private_pem.as_bytes())?;
    std::fs::write(&public, public_pem).map_err(|err| format!("{}: {err}", public.display()))?;
    Ok((private, public))
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
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("control-plane").chain(args.iter().copied()))
    }

    #[test]
    fn a_missing_signing_key_names_the_setting() {
        let cli = parse(&["--store", "embedded"]).unwrap();
        let err = cli.serve.validate().unwrap_err();
        assert!(err.to_string().contains("--snapshot-signing-key-file"));
        let cli = parse(&["--snapshot-signing-key-file", "/nonexistent/key.pem"]).unwrap();
        let err = cli.serve.validate().unwrap_err();
        assert!(
            err.to_string()
                .contains("GATEWAY_SNAPSHOT_SIGNING_KEY_FILE")
        );
        assert!(err.to_string().contains("/nonexistent/key.pem"));
    }

    #[test]
    fn keygen_writes_a_usable_pair() {
        let dir = tempfile::tempdir().unwrap();
        let (private, public) = keygen(dir.path(), false).unwrap();
        assert!(keygen(dir.path(), false).is_err(), "no silent overwrite");
        let cli = parse(&[
            "--store",
            "embedded",
            "--snapshot-signing-key-file",
            private.to_str().unwrap(),
        ])
        .unwrap();
        let config = cli.serve.validate().unwrap();
        let keys = gateway_shared::signed::DocVerifyingKeys::from_pem_bundle(
            &std::fs::read_to_string(public).unwrap(),
        )
        .unwrap();
        assert_eq!(
            keys.key_ids().collect::<Vec<_>>(),
            vec![config.signing_key.key_id()]
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&private).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "private key is not readable by others");
        }
    }

    #[test]
    fn malformed_values_are_refused_by_name() {
        let err = parse(&["--listen", "not-an-address"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--listen"), "{err}");
        let err = parse(&["--store", "sqlite"]).unwrap_err().to_string();
        assert!(err.contains("--store"), "{err}");
        let cli = parse(&["--store-prefix", "bad.prefix"]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (private, _) = keygen(dir.path(), false).unwrap();
        let mut args = cli.serve.clone();
        args.snapshot_signing_key_file = Some(private);
        let err = args.validate().unwrap_err();
        assert!(err.to_string().contains("--store-prefix"), "{err}");
    }
}
