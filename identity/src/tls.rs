//! rustls configurations for every mTLS hop, built from files and reloaded without restart:
//! new handshakes use new material, established connections keep theirs, and a broken file keeps
//! the previous configuration (logged once).
//!
//! * Server: certificate chain + key, client authentication none / optional / required against a
//!   CA bundle, ALPN list.
//! * Client: CA bundle, optional client certificate, and the server identity to expect: the DNS
//!   name or IP given at connect time, or a SPIFFE ID (exact or prefix) for peers that have no
//!   DNS names (workers, the PEP).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

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
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("{path}: {reason}")]
    BadMaterial { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Whether a server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    None,
    /// Verify a certificate when one is sent; allow clients without one.
    Optional,
    Required,
}

/// Files and policy of a TLS server.
#[derive(Debug, Clone)]
pub struct ServerTlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// CA bundle for client certificates (needed unless `client_auth` is `None`).
    pub client_ca_file: Option<PathBuf>,
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
    pub ca_file: PathBuf,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_identity: ServerIdentity,
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

/// The SPIFFE URI SANs of a certificate.
pub fn spiffe_uris(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some((*u).to_owned()),
            _ => None,
        })
        .collect()
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
        let uris = spiffe_uris(end_entity);
        let ok = match (&self.expect, uris.as_slice()) {
            (ServerIdentity::Spiffe(want), [one]) => one == want,
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

type Builder<T> = Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>;

/// A configuration rebuilt from its files on change. `current()` is what new handshakes use.
pub struct Reloadable<T> {
    build: Builder<T>,
    files: Vec<PathBuf>,
    current: ArcSwap<T>,
    last_error: Mutex<Option<String>>,
    what: &'static str,
}

/// A reloadable server config.
pub type ReloadableServerConfig = Reloadable<ServerConfig>;
/// A reloadable client config.
pub type ReloadableClientConfig = Reloadable<ClientConfig>;

impl ReloadableServerConfig {
    /// Loads a server config; fails when the files are unusable now.
    pub fn server(files: ServerTlsFiles) -> Result<Arc<Self>, TlsError> {
        let mut paths = vec![files.cert_file.clone(), files.key_file.clone()];
        paths.extend(files.client_ca_file.clone());
        Reloadable::new("server TLS", paths, Box::new(move || server_config(&files)))
    }

    /// A tokio-rustls acceptor with the current material.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current())
    }
}

impl ReloadableClientConfig {
    /// Loads a client config; fails when the files are unusable now.
    pub fn client(files: ClientTlsFiles) -> Result<Arc<Self>, TlsError> {
        let mut paths = vec![files.ca_file.clone()];
        paths.extend(files.cert_file.clone());
        paths.extend(files.key_file.clone());
        Reloadable::new("client TLS", paths, Box::new(move || client_config(&files)))
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
        build: Builder<T>,
    ) -> Result<Arc<Self>, TlsError> {
        let first = build()?;
        Ok(Arc::new(Self {
            build,
            files,
            current: ArcSwap::from_pointee(first),
            last_error: Mutex::new(None),
            what,
        }))
    }

    /// The configuration new handshakes should use.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// Rebuilds from the files now (blocking). On failure the previous config stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let result = (self.build)();
        let mut last = match self.last_error.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        match result {
            Ok(cfg) => {
                self.current.store(Arc::new(cfg));
                if last.take().is_some() {
                    tracing::info!(what = self.what, "TLS material is valid again");
                }
                tracing::info!(what = self.what, "TLS material reloaded");
                Ok(())
            }
            Err(e) => {
                if last.as_deref() != Some(&e.to_string()) {
                    tracing::error!(what = self.what, error = %e, "TLS reload failed; keeping the previous material");
                }
                *last = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The last reload error, until a reload succeeds.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    /// Reloads when any of the files changes (watching their directories, so rename-on-save and
    /// Kubernetes Secret symlink swaps are seen). Stops when the handle is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<WatchHandle, notify::Error> {
        use notify::Watcher;
        let names: HashSet<std::ffi::OsString> = self
            .files
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
            .chain(std::iter::once("..data".into()))
            .collect();
        let dirs: HashSet<PathBuf> = self
            .files
            .iter()
            .map(|p| match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            })
            .collect();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(e) = ev
                && !e.kind.is_access()
                && e.paths
                    .iter()
                    .any(|p| p.file_name().is_some_and(|n| names.contains(n)))
            {
                let _ = tx.try_send(());
            }
        })?;
        for d in &dirs {
            watcher.watch(d, notify::RecursiveMode::NonRecursive)?;
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Cert and key are usually replaced together: let the pair settle.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
                let t = this.clone();
                let _ = tokio::task::spawn_blocking(move || t.reload()).await;
            }
        });
        Ok(WatchHandle {
            _watcher: Box::new(watcher),
            task,
        })
    }
}

/// Keeps a file watch alive; dropping it stops the watch.
pub struct WatchHandle {
    _watcher: Box<dyn Send + Sync>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}
