//! TLS of the data plane's outgoing calls: a pinned CA instead of the public roots, and a
//! client certificate for mutual TLS with upstream nodes and control planes. Read and
//! checked once at start (rotate by a rolling restart).

use std::path::{Path, PathBuf};

use gateway_edge::tls::{TlsError, read_certificates, read_roots};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn file_error(path: &Path, message: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// TLS settings of the data plane's outgoing calls (upstream nodes, control planes).
#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "TLS to upstreams and control planes")]
pub struct ClientTlsArgs {
    /// PEM CA bundle trusted for `https` upstreams and control planes, instead of the
    /// public roots (pinning the platform's CA).
    #[arg(long, env = "GATEWAY_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,
    /// PEM client certificate presented to upstreams and control planes (mutual TLS).
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_CLIENT_CERT",
        requires = "upstream_client_key"
    )]
    pub upstream_client_cert: Option<PathBuf>,
    /// PEM private key of --upstream-client-cert.
    #[arg(
        long,
        env = "GATEWAY_UPSTREAM_CLIENT_KEY",
        requires = "upstream_client_cert"
    )]
    pub upstream_client_key: Option<PathBuf>,
}

/// The files of [`ClientTlsArgs`], read and checked once at start.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// PEM of the pinned CA bundle.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM of the client certificate chain, then of its key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTlsArgs {
    pub fn load(&self) -> Result<ClientTls, TlsError> {
        let read = |path: &Path| std::fs::read(path).map_err(|err| file_error(path, err));
        let ca_pem = match &self.upstream_ca {
            Some(path) => {
                read_roots(path)?;
                Some(read(path)?)
            }
            None => None,
        };
        let identity = match (&self.upstream_client_cert, &self.upstream_client_key) {
            (Some(cert), Some(key)) => {
                read_certificates(cert)?;
                PrivateKeyDer::from_pem_file(key).map_err(|err| file_error(key, err))?;
                Some((read(cert)?, read(key)?))
            }
            _ => None,
        };
        Ok(ClientTls { ca_pem, identity })
    }
}

impl ClientTls {
    /// A reqwest client builder on [`ClientTls::rustls`]: the same trust and identity
    /// as the forwarded calls.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, String> {
        Ok(builder.use_preconfigured_tls(self.rustls()?))
    }

    /// A rustls client configuration with the pinned CA (or the public roots) and the
    /// client identity (the connector sets ALPN).
    pub fn rustls(&self) -> Result<rustls::ClientConfig, String> {
        let mut roots = rustls::RootCertStore::empty();
        match &self.ca_pem {
            Some(ca) => {
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(cert.map_err(|e| e.to_string())?)
                        .map_err(|e| e.to_string())?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
        let config = match &self.identity {
            Some((cert, key)) => {
                let chain = CertificateDer::pem_slice_iter(cert)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| e.to_string())?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| e.to_string())?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(config)
    }

    /// The same for a tonic channel to an `https` aggregate endpoint.
    pub fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new();
        match &self.ca_pem {
            Some(ca) => {
                config = config.ca_certificate(tonic::transport::Certificate::from_pem(ca));
            }
            None => config = config.with_webpki_roots(),
        }
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}
