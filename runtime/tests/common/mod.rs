//! Shared helpers of runtime's integration tests: a test PKI made with rcgen (CA, server
//! certificate, client certificates with SPIFFE IDs) and rustls configs built from it.
#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Upper bound of every await in the tests: a hang fails with a message instead.
pub const BOUND: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test with `what` if it takes longer than [`BOUND`].
pub async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {BOUND:?} waiting for {what}"),
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate chain (leaf only) and its key, with the PEM forms for tonic.
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// Whether a test server asks for client certificates.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ClientCerts {
    /// Verified when sent; clients without one get in.
    Optional,
    /// Required.
    Required,
}

/// A test CA.
pub struct Pki {
    pub ca_der: CertificateDer<'static>,
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        Self {
            ca_der: cert.der().clone(),
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, mut params: CertificateParams) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Issued {
            chain: vec![cert.der().clone()],
            key_der: key.serialize_der(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self) -> Issued {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned()]).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose URI SANs are `uris` (e.g. one SPIFFE ID).
    pub fn client(&self, uris: &[&str]) -> Issued {
        let mut params = CertificateParams::default();
        params.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().expect("URI SAN")))
            .collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn roots(&self) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der.clone()).expect("CA into root store");
        Arc::new(roots)
    }

    /// A server config with this CA's server certificate, verifying client certificates
    /// against this CA, offering `alpn`.
    pub fn server_config(&self, client_certs: ClientCerts, alpn: &[&[u8]]) -> Arc<ServerConfig> {
        let server = self.server();
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots(), provider());
        let verifier = match client_certs {
            ClientCerts::Optional => verifier.allow_unauthenticated(),
            ClientCerts::Required => verifier,
        }
        .build()
        .expect("client verifier");
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_client_cert_verifier(verifier)
            .with_single_cert(server.chain.clone(), server.key())
            .expect("server config");
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// A client config trusting this CA, presenting `cert` when given, offering `alpn`.
    pub fn client_config(&self, cert: Option<&Issued>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(self.roots());
        let mut cfg = match cert {
            Some(c) => builder
                .with_client_auth_cert(c.chain.clone(), c.key())
                .expect("client certificate"),
            None => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }

    /// Connects to `addr` with TLS as `localhost`.
    pub async fn connect(
        &self,
        addr: std::net::SocketAddr,
        cert: Option<&Issued>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let connector = tokio_rustls::TlsConnector::from(self.client_config(cert, alpn));
        let name = ServerName::try_from("localhost").expect("server name");
        connector.connect(name, tcp).await
    }
}
