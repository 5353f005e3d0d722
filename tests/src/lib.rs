//! End-to-end test support: a real `nats-server` per test, the plane binaries as child
//! processes, the reference upstream node, and key material for signed documents.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod nats;
pub mod oidc;
pub mod process;
pub mod smtp;
pub mod upstream;

use gateway_core::signed::DocSigningKey;

/// What the benchmark binaries set up the same way in a fresh store: a snapshot-signing
/// key whose public half is written to `dir/snapshot-verify.pem` (the data plane's
/// `--snapshot-verify-key-file`), and the control plane's own key manager with a published
/// ES256 access-token key, so tokens are minted exactly as in production.
pub async fn bench_keys(
    store: &gateway_store::Store,
    dir: &std::path::Path,
    now: i64,
) -> anyhow::Result<(std::sync::Arc<DocSigningKey>, control_plane::KeyManager)> {
    use control_plane::keys::{Kek, KeySettings, SigningAlg};
    let signer = std::sync::Arc::new(DocSigningKey::generate());
    std::fs::write(
        dir.join("snapshot-verify.pem"),
        signer.verifying_key().to_public_key_pem()?,
    )?;
    let manager = control_plane::KeyManager::new(
        store.clone(),
        std::sync::Arc::new(Kek::generate()),
        KeySettings {
            alg: SigningAlg::Es256,
            token_ttl: std::time::Duration::from_secs(3600),
            rotation_interval: None,
        },
        std::sync::Arc::clone(&signer),
    );
    manager.start(now).await?;
    Ok((signer, manager))
}

/// A snapshot key pair written to a temp dir, as the planes read it from files.
pub struct SnapshotKeys {
    pub signer: DocSigningKey,
    pub dir: tempfile::TempDir,
}

impl SnapshotKeys {
    pub fn generate() -> SnapshotKeys {
        let dir = tempfile::tempdir().expect("temp dir");
        let signer = DocSigningKey::generate();
        std::fs::write(
            dir.path().join("signing.pem"),
            signer.to_pkcs8_pem().unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("verify.pem"),
            signer.verifying_key().to_public_key_pem().unwrap(),
        )
        .unwrap();
        use base64::Engine;
        let kek: [u8; 32] = rand::random();
        std::fs::write(
            dir.path().join("kek"),
            base64::engine::general_purpose::STANDARD.encode(kek),
        )
        .unwrap();
        SnapshotKeys { signer, dir }
    }

    pub fn signing_path(&self) -> String {
        self.dir
            .path()
            .join("signing.pem")
            .to_string_lossy()
            .into_owned()
    }

    /// A second handle on the same signing key.
    pub fn signer_clone(&self) -> DocSigningKey {
        DocSigningKey::from_pkcs8_pem(&self.signer.to_pkcs8_pem().unwrap()).unwrap()
    }

    /// An outbox file for mail, beside the keys.
    pub fn outbox_path(&self) -> String {
        self.dir
            .path()
            .join("outbox.txt")
            .to_string_lossy()
            .into_owned()
    }

    /// Email of the bootstrap platform admin used by the tests.
    pub const ADMIN_EMAIL: &'static str = "admin@gateway.test";
    /// Password of the bootstrap platform admin used by the tests.
    pub const ADMIN_PASSWORD: &'static str = "quartz meadow bicycle harbour";

    /// The bootstrap flags: `--bootstrap-admin-email` and the password file.
    pub fn bootstrap_args(&self) -> Vec<String> {
        let path = self.dir.path().join("admin-password");
        if !path.exists() {
            std::fs::write(&path, Self::ADMIN_PASSWORD).unwrap();
        }
        vec![
            "--bootstrap-admin-email".into(),
            Self::ADMIN_EMAIL.into(),
            "--bootstrap-admin-password-file".into(),
            path.to_string_lossy().into_owned(),
        ]
    }

    /// The key-encryption key file (base64 of 32 bytes).
    pub fn kek_path(&self) -> String {
        self.dir.path().join("kek").to_string_lossy().into_owned()
    }

    pub fn verify_path(&self) -> String {
        self.dir
            .path()
            .join("verify.pem")
            .to_string_lossy()
            .into_owned()
    }
}

/// How long a plane may take to start in tests.
pub const START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The flags that start a control plane on a free loopback port against `nats_url`, with
/// the keys, the bootstrap admin and (unless `extra` names `--smtp-url`) a mail outbox
/// from `keys`, then `extra`.
pub fn control_plane_args(
    nats_url: &str,
    prefix: &str,
    keys: &SnapshotKeys,
    extra: &[&str],
) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--nats-url",
        nats_url,
        "--store-prefix",
        prefix,
        "--snapshot-signing-key-file",
        &keys.signing_path(),
        "--key-encryption-key-file",
        &keys.kek_path(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if !extra.contains(&"--smtp-url") {
        args.extend(["--mail-outbox".to_string(), keys.outbox_path()]);
    }
    args.extend(keys.bootstrap_args());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Spawns a control plane (see [`control_plane_args`]) and returns it with its base URL
/// once it listens.
pub fn spawn_control_plane(
    nats_url: &str,
    prefix: &str,
    keys: &SnapshotKeys,
    extra: &[&str],
) -> (process::PlaneProcess, String) {
    let args = control_plane_args(nats_url, prefix, keys, extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut plane = process::PlaneProcess::spawn("control-plane", &args, &[]);
    let fields = plane.wait_for_log("control plane listening", START_TIMEOUT);
    let base = format!("http://{}", fields["addr"]);
    (plane, base)
}

/// A running data plane's base URLs.
pub struct DataPlaneUrls {
    pub http: String,
    pub grpc: String,
    pub ops: String,
}

/// Spawns a data plane on free loopback ports against `nats_url`, verifying documents with
/// `keys`, then `extra` flags.
pub fn spawn_data_plane(
    nats_url: &str,
    prefix: &str,
    keys: &SnapshotKeys,
    extra: &[&str],
) -> (process::PlaneProcess, DataPlaneUrls) {
    let verify = keys.verify_path();
    let mut args = vec![
        "--listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
        "--ops-listen",
        "127.0.0.1:0",
        "--nats-url",
        nats_url,
        "--store-prefix",
        prefix,
        "--snapshot-verify-key-file",
        &verify,
    ];
    args.extend_from_slice(extra);
    let mut plane = process::PlaneProcess::spawn("data-plane", &args, &[]);
    let fields = plane.wait_for_log("data plane listening", START_TIMEOUT);
    let urls = DataPlaneUrls {
        http: format!("http://{}", fields["http_addr"]),
        grpc: format!("http://{}", fields["grpc_addr"]),
        ops: format!("http://{}", fields["ops_addr"]),
    };
    (plane, urls)
}

/// The Prometheus text of a plane's ops listener at `ops` (its base URL).
pub async fn metrics_text(client: &reqwest::Client, ops: &str) -> String {
    let response = client
        .get(format!("{ops}/metrics"))
        .send()
        .await
        .expect("the ops listener answers");
    assert_eq!(response.status(), 200, "GET {ops}/metrics");
    response.text().await.expect("metrics text")
}

/// A store prefix unique to one test, so tests may share a server.
pub fn unique_prefix() -> String {
    format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
