//! Re-originating TLS to an intercepted name (DESIGN §7.2, `https` rules; issue 12): the PEP
//! opens its own TLS connection to the name the request was authorised for, with SNI = that
//! name, and verifies the server's certificate against the system's roots (rustls-native-certs)
//! plus extra CA files from the config. A certificate that does not verify is reported as
//! [`UpstreamTlsError::CertificateInvalid`]: the actor gets `502` and the audit record the
//! reason `upstream certificate invalid`.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::client::TlsStream;

/// Problems building the upstream trust or connecting.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamTlsError {
    /// An extra CA file could not be read or holds no usable certificate.
    #[error("{path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Neither the system nor the extra CA files gave a single root.
    #[error("no upstream roots: the system store is empty or off and no extra CA files are set")]
    NoRoots,
    /// The name cannot be sent as SNI.
    #[error("{0:?} is not a valid server name")]
    BadName(String),
    /// The upstream's certificate does not verify for the name (unknown issuer, expired, wrong
    /// name, not a server certificate).
    #[error("upstream certificate invalid: {0}")]
    CertificateInvalid(String),
    /// Any other handshake failure (the server spoke no TLS, offered nothing acceptable, went
    /// away).
    #[error("upstream TLS handshake: {0}")]
    Handshake(io::Error),
    /// [`UpstreamAlpn::H2`] was asked for and the server did not agree to `h2`.
    #[error("the upstream does not speak h2")]
    NoH2,
    /// The handshake did not finish within the deadline.
    #[error("upstream TLS handshake timed out")]
    Timeout,
    /// The TLS client configuration could not be built.
    #[error("upstream TLS configuration: {0}")]
    Config(String),
}

/// The application protocols offered upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamAlpn {
    /// `h2` only: what the actor spoke must stay HTTP/2 end to end (gRPC needs trailers).
    H2,
    /// `http/1.1` only (HTTP/1.x actors, WebSocket upgrades).
    Http1,
    /// `h2`, else `http/1.1`: an h2 actor's requests that do not need h2 end to end reach
    /// servers without h2 too (the caller reads the agreed protocol from the connection).
    H2OrHttp1,
}

/// TLS client configs for re-origination, one per [`UpstreamAlpn`].
pub struct UpstreamTls {
    h2: Arc<ClientConfig>,
    http1: Arc<ClientConfig>,
    either: Arc<ClientConfig>,
    roots: usize,
}

impl UpstreamTls {
    /// Trust: the system's roots when `system_roots` (certificates the platform store holds
    /// that rustls cannot parse are skipped), plus every certificate in `extra_ca_files`.
    ///
    /// # Errors
    /// [`UpstreamTlsError::CaFile`] naming an unreadable or certificate-less file;
    /// [`UpstreamTlsError::NoRoots`] when nothing is trusted at all.
    pub fn new(system_roots: bool, extra_ca_files: &[PathBuf]) -> Result<Self, UpstreamTlsError> {
        let mut roots = RootCertStore::empty();
        if system_roots {
            let found = rustls_native_certs::load_native_certs();
            if !found.errors.is_empty() {
                tracing::warn!(
                    errors = found.errors.len(),
                    "some system root stores were unreadable"
                );
            }
            let (added, skipped) = roots.add_parsable_certificates(found.certs);
            if skipped > 0 {
                tracing::debug!(
                    added,
                    skipped,
                    "system roots rustls cannot use were skipped"
                );
            }
        }
        for path in extra_ca_files {
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|e| UpstreamTlsError::CaFile {
                    path: path.clone(),
                    reason: format!("not a usable CA certificate: {e}"),
                })?;
            }
        }
        if roots.is_empty() {
            return Err(UpstreamTlsError::NoRoots);
        }
        let count = roots.len();
        let roots = Arc::new(roots);
        let config = |alpn: &[&[u8]]| -> Result<Arc<ClientConfig>, UpstreamTlsError> {
            let mut c = ClientConfig::builder_with_provider(identity::tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| UpstreamTlsError::Config(e.to_string()))?
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            // One session cache would be shared by every actor's connections (an origin could
            // link them); connections are kept per actor instead, so full handshakes are rare.
            c.resumption = rustls::client::Resumption::disabled();
            Ok(Arc::new(c))
        };
        Ok(Self {
            h2: config(&[b"h2"])?,
            http1: config(&[b"http/1.1"])?,
            either: config(&[b"h2", b"http/1.1"])?,
            roots: count,
        })
    }

    /// How many roots are trusted.
    pub fn roots(&self) -> usize {
        self.roots
    }

    /// TLS over `io` to `name` (SNI and the name verified), offering `alpn`, within `timeout`.
    /// With [`UpstreamAlpn::H2`] the server must agree to `h2`.
    ///
    /// # Errors
    /// [`UpstreamTlsError::BadName`], [`UpstreamTlsError::CertificateInvalid`],
    /// [`UpstreamTlsError::NoH2`], [`UpstreamTlsError::Timeout`] or
    /// [`UpstreamTlsError::Handshake`].
    pub async fn connect<IO>(
        &self,
        io: IO,
        name: &str,
        alpn: UpstreamAlpn,
        timeout: std::time::Duration,
    ) -> Result<TlsStream<IO>, UpstreamTlsError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let server = ServerName::try_from(name.to_owned())
            .map_err(|_| UpstreamTlsError::BadName(name.to_owned()))?;
        let config = match alpn {
            UpstreamAlpn::H2 => self.h2.clone(),
            UpstreamAlpn::Http1 => self.http1.clone(),
            UpstreamAlpn::H2OrHttp1 => self.either.clone(),
        };
        let connect = tokio_rustls::TlsConnector::from(config).connect(server, io);
        let stream = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| UpstreamTlsError::Timeout)?
            .map_err(|e| match classify(e) {
                UpstreamTlsError::Handshake(e) if alpn == UpstreamAlpn::H2 && refused_alpn(&e) => {
                    UpstreamTlsError::NoH2
                }
                other => other,
            })?;
        if alpn == UpstreamAlpn::H2 && stream.get_ref().1.alpn_protocol() != Some(b"h2".as_slice())
        {
            return Err(UpstreamTlsError::NoH2);
        }
        Ok(stream)
    }
}

/// The server answered our ALPN offer with `no_application_protocol` (RFC 7301 §3.2).
fn refused_alpn(e: &io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()),
        Some(rustls::Error::AlertReceived(
            rustls::AlertDescription::NoApplicationProtocol
        ))
    )
}

/// A handshake error: certificate problems apart from the rest.
fn classify(e: io::Error) -> UpstreamTlsError {
    match e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(why)) => {
            UpstreamTlsError::CertificateInvalid(format!("{why:?}"))
        }
        Some(rustls::Error::NoCertificatesPresented) => {
            UpstreamTlsError::CertificateInvalid("no certificate presented".into())
        }
        _ => UpstreamTlsError::Handshake(e),
    }
}

fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamTlsError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |reason: String| UpstreamTlsError::CaFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("PEM: {e}")))?;
    if certs.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(certs)
}
