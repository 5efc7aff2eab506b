//! rustls configurations for every mTLS hop, built from files and reloaded without restart:
//! new handshakes use new material, established connections keep theirs, and a broken file keeps
//! the previous configuration (logged once).
//!
//! * Server: certificate chain + key, client authentication none / optional / required against a
//!   CA bundle, ALPN list.
//! * Client: CA bundle, optional client certificate, and the server identity to expect: the DNS
//!   name or IP given at connect time, or a SPIFFE ID (exact or prefix) for peers that have no
//!   DNS names (workers, the PEP).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use runtime::reload::{DEFAULT_DEBOUNCE, Reloader};
pub use runtime::reload::{ReloadError, ReloadStatus, WatchHandle};

use crate::pem::{PemError, load_certs, load_key};

/// The one crypto provider (aws-lc-rs).
pub fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// TLS setup problems.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error(transparent)]
    Pem(#[from] PemError),
    /// A file's certificate or key was refused by rustls.
    #[error("{path}: {reason}")]
    BadMaterial {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The files do not make a valid configuration (e.g. client auth without a CA).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// Do not ask for client certificates.
    #[default]
    None,
    /// Verify a certificate when one is sent; allow clients without one.
    Optional,
    /// Refuse clients without a valid certificate.
    Required,
}

/// Files and policy of a TLS server.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// The server's private key (PEM).
    pub key_file: PathBuf,
    /// CA bundle for client certificates (needed unless `client_auth` is `None`).
    pub client_ca_file: Option<PathBuf>,
    /// Whether client certificates are asked for and required.
    pub client_auth: ClientAuth,
    /// When set, a client certificate must also carry a valid SPIFFE identity (actor or
    /// component) in this trust domain: checked in the handshake, so such clients never get in.
    pub client_trust_domain: Option<String>,
    /// ALPN protocols in preference order, e.g. `h2`, `http/1.1`.
    pub alpn: Vec<Vec<u8>>,
}

/// What a client expects the server to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerIdentity {
    /// The DNS name or IP the client connects to (standard web PKI name check).
    Hostname,
    /// Exactly this SPIFFE ID (URI SAN).
    Spiffe(String),
    /// A SPIFFE ID starting with this prefix, e.g. `spiffe://td/ns/ate-system/`.
    SpiffePrefix(String),
}

/// Files and policy of a TLS client.
#[derive(Debug, Clone)]
pub struct ClientTlsFiles {
    /// CA bundle (PEM) the server's certificate must chain to.
    pub ca_file: PathBuf,
    /// Client certificate chain (PEM), for mTLS.
    pub cert_file: Option<PathBuf>,
    /// Client private key (PEM), for mTLS.
    pub key_file: Option<PathBuf>,
    /// What the server's certificate must name.
    pub server_identity: ServerIdentity,
    /// ALPN protocols to offer, in preference order (e.g. `h2`).
    pub alpn: Vec<Vec<u8>>,
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(path)? {
        store.add(cert).map_err(|e| TlsError::BadMaterial {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Builds a server config from files (blocking file reads).
pub fn server_config(f: &ServerTlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = load_certs(&f.cert_file)?;
    let key = load_key(&f.key_file)?;
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match (f.client_auth, &f.client_ca_file) {
        (ClientAuth::None, _) => builder.with_no_client_auth(),
        (_, None) => {
            return Err(TlsError::Config(
                "client authentication needs a client CA file".into(),
            ));
        }
        (mode, Some(ca)) => {
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider());
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            let webpki = v.build().map_err(|e| TlsError::Config(e.to_string()))?;
            match &f.client_trust_domain {
                None => builder.with_client_cert_verifier(webpki),
                Some(td) => {
                    if !crate::spiffe::is_trust_domain(td) {
                        return Err(TlsError::Config(format!(
                            "invalid SPIFFE trust domain {td:?}"
                        )));
                    }
                    builder.with_client_cert_verifier(Arc::new(SpiffeClientVerifier {
                        inner: webpki,
                        trust_domain: td.clone(),
                    }))
                }
            }
        }
    };
    let mut cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::BadMaterial {
            path: format!("{} / {}", f.cert_file.display(), f.key_file.display()),
            reason: e.to_string(),
        })?;
    cfg.alpn_protocols = f.alpn.clone();
    Ok(cfg)
}

/// Builds a client config from files (blocking file reads).
pub fn client_config(f: &ClientTlsFiles) -> Result<ClientConfig, TlsError> {
    let roots = roots(&f.ca_file)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    if let ServerIdentity::SpiffePrefix(prefix) = &f.server_identity {
        // A prefix must end at a path boundary, or "…/ns/ate-system" would also match
        // "…/ns/ate-system-evil".
        let td_ok = prefix
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.split_once('/'))
            .is_some_and(|(td, _)| crate::spiffe::is_trust_domain(td));
        if !td_ok || !prefix.ends_with('/') {
            return Err(TlsError::Config(format!(
                "SPIFFE prefix {prefix:?} must be spiffe://<trust-domain>/… and end with '/'"
            )));
        }
    }
    let builder = match &f.server_identity {
        ServerIdentity::Hostname => builder.with_root_certificates(roots),
        expect => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                roots: roots.roots,
                expect: expect.clone(),
            })),
    };
    let mut cfg = match (&f.cert_file, &f.key_file) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| TlsError::BadMaterial {
                path: format!("{} / {}", c.display(), k.display()),
                reason: e.to_string(),
            })?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "a client certificate needs both cert and key files".into(),
            ));
        }
    };
    cfg.alpn_protocols = f.alpn.clone();
    Ok(cfg)
}

/// Verifies the server's chain with web PKI rules (server-auth usage, validity, our roots) and
/// then its SPIFFE ID instead of a DNS name.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Vec<rustls_pki_types::TrustAnchor<'static>>,
    expect: ServerIdentity,
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(ce)
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        cert.verify_for_usage(
            provider().signature_verification_algorithms.all,
            &self.roots,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(pki_error)?;
        let (_, parsed) = X509Certificate::from_der(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let uris = runtime::listener::spiffe_uris(&parsed)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let ok = match (&self.expect, uris.as_slice()) {
            (ServerIdentity::Spiffe(want), [one]) => *one == want.as_str(),
            // Only well-formed IDs; the prefix ends with '/' (checked when the config was built).
            (ServerIdentity::SpiffePrefix(prefix), [one]) => {
                crate::spiffe::SpiffeId::parse(one).is_ok() && one.starts_with(prefix.as_str())
            }
            _ => false,
        };
        if ok {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Web PKI client verification plus the SPIFFE identity rules of [`crate::cert`], so a client
/// whose certificate names no acceptable identity fails the handshake.
#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    trust_domain: String,
}

impl rustls::server::danger::ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        crate::cert::identity_from_der(end_entity, &self.trust_domain).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        Ok(verified)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A configuration rebuilt from its files on change, through the one reload helper
/// ([`runtime::reload::Reloader`]). `current()` is what new handshakes use; a rebuild that fails
/// keeps the previous configuration, is logged once and shows in [`Reloadable::status`].
pub struct Reloadable<T> {
    current: Arc<ArcSwap<T>>,
    reloader: Reloader,
    /// The typed error of the last failed build, for [`Reloadable::reload`] (the reloader keeps
    /// only its text).
    last_failure: Arc<Mutex<Option<TlsError>>>,
}

/// A reloadable server config.
pub type ReloadableServerConfig = Reloadable<ServerConfig>;
/// A reloadable client config.
pub type ReloadableClientConfig = Reloadable<ClientConfig>;

impl ReloadableServerConfig {
    /// Loads a server config; fails when the files are unusable now. Reloads are named
    /// `server TLS` in logs and metrics.
    pub fn server(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        let mut paths = vec![files.cert_file.clone(), files.key_file.clone()];
        paths.extend(files.client_ca_file.clone());
        Reloadable::new("server TLS", paths, move || server_config(&files))
    }

    /// A tokio-rustls acceptor with the current material.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

impl ReloadableClientConfig {
    /// Loads a client config; fails when the files are unusable now. Reloads are named
    /// `client TLS` in logs and metrics.
    pub fn client(files: ClientTlsFiles) -> Result<Arc<Self>, TlsError> {
        let mut paths = vec![files.ca_file.clone()];
        paths.extend(files.cert_file.clone());
        paths.extend(files.key_file.clone());
        Reloadable::new("client TLS", paths, move || client_config(&files))
    }

    /// A tokio-rustls connector with the current material.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        tokio_rustls::TlsConnector::from(self.current())
    }
}

impl<T: Send + Sync + 'static> Reloadable<T> {
    fn new(
        what: &'static str,
        files: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Arc<Self>, TlsError> {
        let current = Arc::new(ArcSwap::from_pointee(build()?));
        let last_failure = Arc::new(Mutex::new(None));
        let failure = last_failure.clone();
        let installed = current.clone();
        let reloader = Reloader::new(
            what,
            files,
            move || {
                build().inspect_err(|e| {
                    *failure.lock() = Some(e.clone());
                })
            },
            move |cfg| installed.store(Arc::new(cfg)),
        );
        Ok(Arc::new(Self {
            current,
            reloader,
            last_failure,
        }))
    }

    /// The configuration new handshakes should use.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Rebuilds from the files now (blocking file reads: call from `spawn_blocking` in async
    /// code). On failure the previous config stays and the error is returned, kept for
    /// [`Reloadable::last_error`] and logged unless it repeats the last one.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.reloader.reload().map_err(|text| {
            self.last_failure
                .lock()
                .take()
                .unwrap_or(TlsError::Config(text))
        })
    }

    /// The last reload error, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.reloader.status().last_error
    }

    /// Reload counts, times and the last error, for `/statusz`.
    pub fn status(&self) -> ReloadStatus {
        self.reloader.status()
    }

    /// The reloader behind this config: its name and files, [`Reloader::attempts`] to wait for
    /// a reload (tests), [`Reloader::with_metrics`] to count reloads.
    pub fn reloader(&self) -> &Reloader {
        &self.reloader
    }

    /// Reloads when any of the files changes, once they have been quiet for
    /// [`DEFAULT_DEBOUNCE`] (a certificate and its key are usually replaced one after the
    /// other). The files' directories are watched, so rename-on-save and Kubernetes Secret
    /// symlink swaps are seen. Needs a tokio runtime; stops when the handle is dropped.
    ///
    /// # Errors
    /// [`ReloadError`] when there is no runtime or a directory cannot be watched.
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle, ReloadError> {
        self.reloader.watch(DEFAULT_DEBOUNCE)
    }
}

/// Listeners of the runtime crate take the acceptor per connection, so each handshake uses the
/// material current at that moment.
impl runtime::listener::ServerTlsSource for Reloadable<ServerConfig> {
    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        ReloadableServerConfig::acceptor(self)
    }
}
