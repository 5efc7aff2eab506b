//! Shared helpers for tests (feature `test-util`), so each job has one helper instead of a copy
//! per test file:
//!
//! * [`TestPki`]: a development CA in a temporary directory, with helpers that issue and write
//!   certificates (`<stem>.crt` / `<stem>.key`) beside its `ca.crt` / `ca.key`;
//! * [`TestKey`], [`write_jwks`], [`verifier_for`]: JWT signing keys, the JWKS file holding their
//!   public halves, and a verifier reading it;
//! * [`sign_raw`], [`b64`]: sign hand-written header and payload JSON, as another JWS library
//!   would, for tokens `Signer` refuses to make;
//! * [`tls_server`]: a TLS server on loopback that reports each connection's handshake outcome
//!   and verified peer identity;
//! * [`wait_for_reload`]: wait, reload attempt by reload attempt, until a reloaded value shows;
//! * [`assert_plain_line`]: a refusal reason is one line of plain text.
//!
//! Everything here panics with a message on failure: it is test code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::devca::{DevCa, Issued};
use crate::jwks::{JwksSource, KeySet};
use crate::keys::{encoding_key, generate_private_key_pem, jwks, public_jwk};
use crate::{Signer, Verifier, VerifierSettings};

/// Upper bound of [`wait_for_reload`]: a missing reload fails with a message instead of hanging.
pub const RELOAD_BOUND: Duration = Duration::from_secs(10);

/// Waits, reload attempt by reload attempt (never by sleeping), until `done` holds; panics
/// naming `what` and the reload status after [`RELOAD_BOUND`]. `done` is checked before the
/// first wait, so a reload that happened before the call counts.
pub async fn wait_for_reload(
    reloader: &runtime::reload::Reloader,
    what: &str,
    mut done: impl FnMut() -> bool,
) {
    let mut attempts = reloader.attempts();
    let waited = tokio::time::timeout(RELOAD_BOUND, async {
        while !done() {
            attempts.changed().await.expect("the reloader is alive");
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "timed out after {RELOAD_BOUND:?} waiting for {what}; reload status {:?}",
        reloader.status()
    );
}

/// The issuer of test tokens (`iss`), the one [`verifier_for`] accepts.
pub const ISSUER: &str = "https://issuer.test";
/// The audience of test tokens (`aud`), the one [`verifier_for`] requires.
pub const AUDIENCE: &str = "actorgate-pep";
/// The SPIFFE trust domain of test certificates.
pub const TD: &str = "substrate-actor.local";
/// The lifetime of test CAs and certificates: one year.
pub const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// A JWT signing key: its algorithm, key id and private key (PEM).
pub struct TestKey {
    /// The signing algorithm (ES256, EdDSA or RS256).
    pub alg: Algorithm,
    /// The key id (`kid`) tokens name.
    pub kid: String,
    /// The private key, PKCS#8 PEM.
    pub pem: String,
}

impl TestKey {
    /// Generates a fresh key of `alg` named `kid`.
    pub fn new(alg: Algorithm, kid: &str) -> Self {
        Self {
            alg,
            kid: kid.into(),
            pem: generate_private_key_pem(alg).expect("generate a test signing key"),
        }
    }

    /// A signer with this key for [`ISSUER`].
    pub fn signer(&self) -> Signer {
        Signer::from_pem(self.alg, &self.kid, self.pem.as_bytes(), ISSUER)
            .expect("signer from a test key")
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> jsonwebtoken::jwk::Jwk {
        let key = encoding_key(self.alg, self.pem.as_bytes()).expect("encoding key of a test key");
        public_jwk(self.alg, &self.kid, &key).expect("public JWK of a test key")
    }
}

/// Writes a JWKS file with the public halves of `keys` (write-then-rename, so a watcher never
/// reads half a file).
pub fn write_jwks(path: &Path, keys: &[&TestKey]) {
    let set = jwks(keys.iter().map(|k| k.jwk()).collect());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).expect("JWKS as JSON")).expect("write JWKS");
    std::fs::rename(&tmp, path).expect("rename JWKS into place");
}

/// A verifier of the JWKS file at `path` for [`ISSUER`] and [`AUDIENCE`], 5 s leeway, tokens
/// living at most `max_lifetime`.
pub async fn verifier_for(path: &Path, max_lifetime: Duration) -> Verifier {
    let keys = KeySet::load(JwksSource::File(path.to_path_buf()), Duration::ZERO)
        .await
        .expect("load the test JWKS");
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

/// Base64url without padding, as JWS compact serialization uses.
pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// Signs raw header and payload JSON with `key`, as another JWS library would.
pub fn sign_raw(key: &TestKey, header: &serde_json::Value, payload: &serde_json::Value) -> String {
    let msg = format!(
        "{}.{}",
        b64(&serde_json::to_vec(header).expect("header as JSON")),
        b64(&serde_json::to_vec(payload).expect("payload as JSON"))
    );
    let enc = encoding_key(key.alg, key.pem.as_bytes()).expect("encoding key of a test key");
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &enc, key.alg).expect("sign");
    format!("{msg}.{sig}")
}

/// Asserts a refusal reason is one line of plain text: no debug formatting of library errors,
/// no JSON.
pub fn assert_plain_line(reason: &str) {
    assert!(!reason.is_empty(), "an empty reason");
    assert!(
        !reason.contains('\n') && !reason.contains('\r'),
        "not one line: {reason:?}"
    );
    for fragment in ["Error(", "Json(", "{", "}", "\""] {
        assert!(
            !reason.contains(fragment),
            "debug fragment {fragment:?} in {reason:?}"
        );
    }
}

/// A dev CA written to `dir` (`ca.crt`, `ca.key`). Each CA gets a distinct name: two CAs with
/// one name would look like a bad signature to a verifier, not like a stranger.
pub fn dev_ca(dir: &Path) -> DevCa {
    let ca = DevCa::generate(
        &format!("actorgate test CA {:08x}", fastrand::u32(..)),
        YEAR,
    )
    .expect("generate a test CA");
    ca.write_dir(dir).expect("write the test CA");
    ca
}

/// Writes an issued certificate as `<dir>/<stem>.crt` and `<dir>/<stem>.key`; returns both
/// paths.
pub fn write_issued(dir: &Path, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    issued
        .write(dir, stem)
        .expect("write an issued certificate");
    (
        dir.join(format!("{stem}.crt")),
        dir.join(format!("{stem}.key")),
    )
}

/// A dev CA in a temporary directory of its own (removed on drop), for issuing test
/// certificates as files.
pub struct TestPki {
    dir: tempfile::TempDir,
    /// The CA; its certificate and key are `ca.crt` and `ca.key` in [`TestPki::dir`].
    pub ca: DevCa,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A fresh CA with a distinct name in a new temporary directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let ca = dev_ca(dir.path());
        Self { dir, ca }
    }

    /// The directory holding `ca.crt`, `ca.key` and every certificate written here.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` in [`TestPki::dir`].
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CA certificate file (`ca.crt`).
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> String {
        self.ca.cert_pem().to_owned()
    }

    /// Writes `issued` as `<stem>.crt` / `<stem>.key` here; returns both paths.
    pub fn write(&self, stem: &str, issued: &Issued) -> (PathBuf, PathBuf) {
        write_issued(self.dir(), stem, issued)
    }

    /// A server certificate for `localhost` and `127.0.0.1`, valid a year (not written).
    pub fn issue_localhost(&self) -> Issued {
        self.ca
            .issue_server(
                &["localhost".into()],
                &[std::net::IpAddr::from([127, 0, 0, 1])],
                YEAR,
            )
            .expect("issue a localhost server certificate")
    }

    /// [`TestPki::issue_localhost`] written as `<stem>.crt` / `<stem>.key`; returns both paths.
    pub fn localhost_server(&self, stem: &str) -> (PathBuf, PathBuf) {
        self.write(stem, &self.issue_localhost())
    }
}

/// What [`tls_server`] saw for one connection.
#[derive(Debug)]
pub enum Seen {
    /// The handshake completed; the peer certificate's identity as [`TD`] reads it.
    Identity(Result<crate::PeerIdentity, crate::CertIdentityError>),
    /// The handshake failed; the error's debug text (rustls names the exact refusal).
    HandshakeFailed(String),
}

/// A TLS server on `127.0.0.1:<port 0>` that uses `acceptor()` of the reloadable config for every
/// connection. It reports each connection's outcome on the returned channel, then answers an
/// HTTP/1.1 `GET` with the peer's identity in the body (so curl can talk to it) or echoes the
/// bytes it reads (for raw TLS tests) until EOF.
pub async fn tls_server(
    tls: Arc<crate::tls::ReloadableServerConfig>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the TLS test server");
    let addr = listener
        .local_addr()
        .expect("the TLS test server's address");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut stream = match acceptor.accept(tcp).await {
                    Err(e) => {
                        let _ = tx.send(Seen::HandshakeFailed(format!("{e:?}")));
                        return;
                    }
                    Ok(s) => s,
                };
                let id = crate::cert::peer_identity(stream.get_ref().1.peer_certificates(), TD);
                let body = match &id {
                    Ok(crate::PeerIdentity::Actor(a)) => format!("actor {a}"),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => format!("refused: {e}"),
                };
                let _ = tx.send(Seen::Identity(id));
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
            });
        }
    });
    (addr, rx)
}

/// The next connection outcome [`tls_server`] reports; panics when none comes within 5 s.
pub async fn next_seen(seen: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>) -> Seen {
    tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the TLS test server saw a connection within 5 s")
        .expect("the TLS test server is running")
}
