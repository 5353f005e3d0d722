//! Optional TLS on the planes' listeners (rustls, ring): certificate chain and key from PEM
//! files, re-read when they change; optionally a pinned CA whose client certificates are
//! required (mTLS, e.g. the data plane calling the control plane). A handshake happens off
//! the accept loop, bounded in time and in number, so a slow or hostile client cannot hold
//! the listener.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use crate::config::parse_duration;
use crate::listen::{Capped, ConnectionCap};

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; connections past it are closed at once.
pub const MAX_HANDSHAKES: usize = 1024;

/// TLS of a plane's client-facing listeners.
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "TLS of the listeners")]
pub struct TlsArgs {
    /// PEM certificate chain: turns TLS on for the client-facing listeners (with --tls-key).
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients must present a certificate it issued (mutual TLS).
    #[arg(long, env = "GATEWAY_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// How often the files are checked; a changed set is loaded for new connections.
    #[arg(long, env = "GATEWAY_TLS_RELOAD_INTERVAL", default_value = "10s", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("tls configuration: {0}")]
    Config(String),
}

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The certificate files of a listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl TlsArgs {
    /// The files, when TLS is on.
    pub fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The files, loaded once to check them (a plane does not start with unusable TLS).
    pub fn checked(&self) -> Result<Option<TlsFiles>, TlsError> {
        let Some(files) = self.files() else {
            return Ok(None);
        };
        server_config(&files, &[])?;
        Ok(Some(files))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate of the PEM file at `path` (at least one).
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| file_error(path, err))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| file_error(path, err))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// The CA certificates of `path` as a trust store.
pub fn read_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certificates(path)? {
        roots.add(cert).map_err(|err| file_error(path, err))?;
    }
    Ok(roots)
}

/// A server configuration from `files`, offering `alpn` (e.g. `h2`, `http/1.1`).
pub fn server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
    let certs = read_certificates(&files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|err| file_error(&files.key, err))?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(read_roots(ca)?), provider())
                    .build()
                    .map_err(|err| file_error(ca, err))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|err| TlsError::Config(format!("certificate and key: {err}")))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// What identifies a version of the files: modification time and length of each.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|path| {
        std::fs::metadata(path)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}

/// The server configuration in use, swapped when the files change. Connections keep the
/// configuration they were accepted with.
pub struct TlsReloader {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
    loaded: Mutex<Stamp>,
}

impl TlsReloader {
    /// Loads `files` (an error here stops the start: no listener without its certificate).
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<TlsReloader>, TlsError> {
        let loaded = stamp(&files);
        let config = server_config(&files, alpn)?;
        Ok(Arc::new(TlsReloader {
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: ArcSwap::from_pointee(config),
            loaded: Mutex::new(loaded),
            files,
        }))
    }

    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Reloads when a file changed: `Some(Ok)` loaded, `Some(Err)` refused (the previous
    /// configuration stays), `None` unchanged.
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let now = stamp(&self.files);
        let mut loaded = self.loaded.lock();
        if *loaded == now {
            return None;
        }
        let alpn: Vec<&[u8]> = self.alpn.iter().map(Vec::as_slice).collect();
        let result = server_config(&self.files, &alpn).map(|config| {
            self.current.store(Arc::new(config));
        });
        // a refused set is not retried until it changes again
        *loaded = now;
        let outcome = if result.is_ok() { "loaded" } else { "refused" };
        metrics::counter!("gateway_tls_reloads_total", "result" => outcome).increment(1);
        match &result {
            Ok(()) => tracing::info!(cert = %self.files.cert.display(), "tls certificate reloaded"),
            Err(err) => {
                tracing::error!(error = %err, "tls files changed but cannot be used; keeping the previous certificate")
            }
        }
        Some(result)
    }

    /// Checks the files every `interval` until `stop`.
    pub async fn watch(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = ticks.tick() => {
                    self.reload_if_changed();
                }
            }
        }
    }
}

/// A listener whose connections arrive after their TLS handshake.
pub struct TlsListener {
    incoming: mpsc::Receiver<(Capped<TlsStream<TcpStream>>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `tcp` under `cap` (a connection holds its place from before its
    /// handshake) and shakes hands with the current configuration of `tls`, until the
    /// listener is dropped.
    pub fn new(
        tcp: TcpListener,
        tls: Arc<TlsReloader>,
        cap: ConnectionCap,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (sender, incoming) = mpsc::channel(64);
        tokio::spawn(accept_loop(tcp, tls, cap, sender));
        Ok(TlsListener { incoming, local })
    }

    /// The next connection, handshake done (`None` once the accept loop ended).
    pub async fn next(&mut self) -> Option<(Capped<TlsStream<TcpStream>>, SocketAddr)> {
        self.incoming.recv().await
    }
}

async fn accept_loop(
    tcp: TcpListener,
    tls: Arc<TlsReloader>,
    cap: ConnectionCap,
    sender: mpsc::Sender<(Capped<TlsStream<TcpStream>>, SocketAddr)>,
) {
    let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let (stream, peer) = tokio::select! {
            // the server is gone: stop accepting (and release the port)
            _ = sender.closed() => return,
            accepted = crate::listen::accept(&tcp, &cap) => accepted,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("gateway_tls_handshake_failures_total", "reason" => "too_many")
                .increment(1);
            continue;
        };
        let (acceptor, sender) = (tls.acceptor(), sender.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let (tcp, admitted) = stream.into_parts();
            let reason = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => {
                    let _ = sender.send((Capped::new(stream, admitted), peer)).await;
                    return;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "tls handshake failed");
                    "handshake"
                }
                Err(_) => "timeout",
            };
            metrics::counter!("gateway_tls_handshake_failures_total", "reason" => reason)
                .increment(1);
        });
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = Capped<TlsStream<TcpStream>>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.next().await {
            Some(connection) => connection,
            // the accept loop only ends when this listener is dropped
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
