//! Shared helpers for identity tests: a dev CA in a temp dir, JWT keys and a TLS test server.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use identity::devca::{DevCa, Issued};
use identity::jwks::{JwksSource, KeySet};
use identity::keys::{encoding_key, generate_private_key_pem, jwks, public_jwk};
use identity::{Signer, Verifier, VerifierSettings};
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const ISSUER: &str = "https://issuer.test";
pub const AUDIENCE: &str = "actorgate-pep";
pub const TD: &str = "substrate-actor.local";
pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A signing key with its kid and PEM.
pub struct TestKey {
    pub alg: Algorithm,
    pub kid: String,
    pub pem: String,
}

impl TestKey {
    pub fn new(alg: Algorithm, kid: &str) -> Self {
        Self {
            alg,
            kid: kid.into(),
            pem: generate_private_key_pem(alg).unwrap(),
        }
    }
    pub fn signer(&self) -> Signer {
        Signer::from_pem(self.alg, &self.kid, self.pem.as_bytes(), ISSUER).unwrap()
    }
    pub fn jwk(&self) -> jsonwebtoken::jwk::Jwk {
        public_jwk(
            self.alg,
            &self.kid,
            &encoding_key(self.alg, self.pem.as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

/// Writes a JWKS file with the public halves of `keys`.
pub fn write_jwks(path: &Path, keys: &[&TestKey]) {
    let set = jwks(keys.iter().map(|k| k.jwk()).collect());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

pub async fn verifier_for(path: &Path, max_lifetime: Duration) -> Verifier {
    let keys = KeySet::load(JwksSource::File(path.to_path_buf()), Duration::ZERO)
        .await
        .unwrap();
    Verifier::new(
        keys,
        VerifierSettings {
            issuers: vec![ISSUER.into()],
            audience: AUDIENCE.into(),
            leeway: Duration::from_secs(5),
            max_lifetime,
        },
    )
}

/// A dev CA written to `dir` (ca.crt, ca.key).
pub fn dev_ca(dir: &Path) -> DevCa {
    // Distinct names: two CAs with one name would look like a bad signature, not a stranger.
    let ca = DevCa::generate(
        &format!("actorgate test CA {:08x}", fastrand::u32(..)),
        YEAR,
    )
    .unwrap();
    ca.write_dir(dir).unwrap();
    ca
}

/// Writes an issued cert as `<stem>.crt/.key` and returns both paths.
pub fn write_issued(dir: &Path, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    issued.write(dir, stem).unwrap();
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// What the test TLS server saw for one connection.
#[derive(Debug)]
pub enum Seen {
    Identity(Result<identity::PeerIdentity, identity::CertIdentityError>),
    HandshakeFailed(String),
}

/// A TLS server on loopback using `acceptor()` of the reloadable config for every connection.
/// It answers HTTP/1.1 with the peer's identity in the body (so curl can talk to it), and reports
/// every connection's outcome on the returned channel.
pub async fn tls_server(
    tls: Arc<identity::tls::ReloadableServerConfig>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Seen::HandshakeFailed(format!("{e:?}")));
                    }
                    Ok(mut stream) => {
                        let id = identity::cert::peer_identity(
                            stream.get_ref().1.peer_certificates(),
                            TD,
                        );
                        let body = match &id {
                            Ok(identity::PeerIdentity::Actor(a)) => format!("actor {a}"),
                            Ok(other) => format!("{other:?}"),
                            Err(e) => format!("refused: {e}"),
                        };
                        let _ = tx.send(Seen::Identity(id));
                        // Serve HTTP/1.1 requests (curl) or echo raw lines (tests) until EOF.
                        let mut buf = vec![0u8; 4096];
                        loop {
                            let n = match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if buf[..n].starts_with(b"GET ") {
                                let resp = format!(
                                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                                    body.len()
                                );
                                let _ = stream.write_all(resp.as_bytes()).await;
                                let _ = stream.shutdown().await;
                                return;
                            }
                            if stream.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}
