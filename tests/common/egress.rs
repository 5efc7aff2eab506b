//! The egress PEP harness of the end-to-end tests (`tests/egress.rs`,
//! `tests/egress_interception.rs`): destination servers, a PEP in `actorgate serve` with its
//! PKI, policy and audit file, the actor certificates upstream mints, and clients that behave
//! as upstream atunnel does.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use identity::ActorIdentity;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;

use super::*;

/// A client certificate and its key.
pub type Cert = (PathBuf, PathBuf);

pub const TD: &str = identity::spiffe::DEFAULT_TRUST_DOMAIN;

/// The actors of the static directory every test's PEP checks liveness against.
pub const ACTORS: &str = "\
actors:
  - {atespace: demo, name: hello, endpoint: 127.0.0.1:1}
  - {atespace: demo, name: audit, endpoint: 127.0.0.1:1}
  - {atespace: demo, name: meta, endpoint: 127.0.0.1:1}
  - {atespace: demo, name: named, endpoint: 127.0.0.1:1}
  - {atespace: demo, name: private, endpoint: 127.0.0.1:1}
";

// ---------------------------------------------------------------------------------------------
// Destinations.

/// A destination server that counts the connections it accepted.
#[derive(Clone)]
pub struct Upstream {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// `Host` of each HTTP request it answered.
    pub hosts: Arc<Mutex<Vec<String>>>,
    /// The client address of each connection it accepted.
    pub peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Upstream {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn hosts(&self) -> Vec<String> {
        self.hosts.lock().unwrap().clone()
    }

    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// An HTTP/1.1 server on `bind` answering every request `200` with `<name> <host> <path>`.
pub async fn http_upstream(bind: &str, name: &'static str) -> Upstream {
    serve_http(bind, name, None).await
}

/// [`http_upstream`] over TLS with the certificate in `tls`.
pub async fn https_upstream(
    bind: &str,
    name: &'static str,
    tls: tokio_rustls::TlsAcceptor,
) -> Upstream {
    serve_http(bind, name, Some(tls)).await
}

async fn serve_http(
    bind: &str,
    name: &'static str,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Upstream {
    let listener = TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::default(),
        hosts: Arc::default(),
        peers: Arc::default(),
    };
    let u = up.clone();
    tokio::spawn(async move {
        while let Ok((s, peer)) = listener.accept().await {
            u.accepted.fetch_add(1, Ordering::SeqCst);
            u.peers.lock().unwrap().push(peer);
            let hosts = u.hosts.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let host = req
                        .headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    hosts.lock().unwrap().push(host.clone());
                    let body = format!("{name} {host} {}", req.uri().path());
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    }
                });
            let tls = tls.clone();
            tokio::spawn(async move {
                let builder = hyper::server::conn::http1::Builder::new();
                let _ = match tls {
                    None => builder.serve_connection(TokioIo::new(s), svc).await,
                    Some(tls) => match tls.accept(s).await {
                        Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                        Err(_) => return,
                    },
                };
            });
        }
    });
    up
}

/// A TCP echo server on `bind` (bytes back until EOF, then EOF).
pub async fn echo_upstream(bind: &str) -> Upstream {
    let listener = TcpListener::bind(bind)
        .await
        .unwrap_or_else(|e| panic!("bind {bind}: {e}"));
    let up = Upstream {
        addr: listener.local_addr().unwrap(),
        accepted: Arc::default(),
        hosts: Arc::default(),
        peers: Arc::default(),
    };
    let u = up.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            u.accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    up
}

// ---------------------------------------------------------------------------------------------
// The PEP.

/// The config of a PEP on `listen` with `policy.yaml` and `actors.yaml` beside it, the test
/// PKI's `server.crt` (localhost, 127.0.0.1), static resolver entries only, `guard` as the
/// `egress.guard` section and the audit file `audit`.
pub fn config(
    pki: &TestPki,
    listen: &str,
    resolver_static: &str,
    guard: &str,
    audit: &Path,
) -> String {
    // The PEP refuses a resolver that could never answer: one entry no rule names.
    let resolver_static = if resolver_static.is_empty() {
        "unused.test: [192.0.2.1]"
    } else {
        resolver_static
    };
    format!(
        "ingress: {{enabled: false}}
directory:
  static:
    file: actors.yaml
shutdown: {{drain_delay: 0s, drain_timeout: 5s}}
egress:
  listen: {listen}
  tls:
    cert_file: {cert}
    key_file: {key}
    client_ca_file: {ca}
  policy:
    source: files
    files: [policy.yaml]
  resolver:
    system: false
    static: {{{resolver_static}}}
  guard: {{{guard}}}
  audit:
    file: {audit}
",
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
        ca = pki.ca_file().display(),
        audit = audit.display(),
    )
}

/// A PEP in `actorgate serve` with its PKI, config directory and audit file.
pub struct Pep {
    pub gw: Gateway,
    pub pki: TestPki,
    pub dir: tempfile::TempDir,
    pub audit: PathBuf,
    pub _audit_dir: tempfile::TempDir,
}

impl Pep {
    /// Starts a PEP on 127.0.0.1 with `policy` (the policy file's text), static resolver entries
    /// and the guard section (both in YAML flow form, without braces).
    pub async fn start(policy: &str, resolver_static: &str, guard: &str) -> Self {
        Self::start_with(policy, resolver_static, guard, |_| String::new()).await
    }

    /// As [`Pep::start`], with more of the `egress` section: `extra(dir)` returns YAML lines
    /// indented by two spaces (it may write files into the config directory `dir` first).
    pub async fn start_with(
        policy: &str,
        resolver_static: &str,
        guard: &str,
        extra: impl FnOnce(&Path) -> String,
    ) -> Self {
        let pki = test_pki(&[]);
        let dir = tempfile::tempdir().unwrap();
        let audit_dir = tempfile::tempdir().unwrap();
        let audit = audit_dir.path().join("audit.jsonl");
        std::fs::write(dir.path().join("actors.yaml"), ACTORS).unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        let text = config(&pki, "127.0.0.1:0", resolver_static, guard, &audit) + &extra(dir.path());
        let gw = Gateway::start(&write_config(dir.path(), &text)).await;
        Pep {
            gw,
            pki,
            dir,
            audit,
            _audit_dir: audit_dir,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.gw.addr("egress")
    }

    pub fn policy_file(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    pub fn actor(&self, name: &str) -> Cert {
        actor_cert(&self.pki, name)
    }

    /// An atunnel-like tunnel to `target` as `cert` ([`atunnel`]).
    pub async fn tunnel(&self, cert: &Cert, target: &str) -> (u16, String, TlsStream<TcpStream>) {
        atunnel(self.addr(), &self.pki.ca_file(), cert, target).await
    }

    /// The first audit record for which `pred` holds, waiting for it (the sink writes
    /// asynchronously).
    pub async fn audit_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.gw
            .eventually(BOUND, format!("an audit record: {what}"), async || {
                audit_records(&self.audit).into_iter().find(|r| pred(r))
            })
            .await
    }

    pub async fn statusz(&self) -> Value {
        let (status, body) = within(
            BOUND,
            "/statusz",
            get(self.gw.admin, "/statusz?format=json"),
        )
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap()
    }
}

/// The actor certificate of `demo/<name>` as upstream mints it: one URI SAN
/// `spiffe://<td>/ateom-for-actor/demo/<name>`, client-auth EKU.
pub fn actor_cert(pki: &TestPki, name: &str) -> Cert {
    let actor = ActorIdentity::new("demo", name, None).unwrap();
    assert_eq!(
        identity::spiffe::actor_id(TD, &actor),
        format!("spiffe://{TD}/ateom-for-actor/demo/{name}")
    );
    let issued = pki.ca.issue_actor(TD, &actor, false, YEAR).unwrap();
    pki.write(&format!("demo.{name}"), &issued)
}

/// Every record of a JSON-lines audit file (none yet: empty).
pub fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.ends_with('}'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l:?}: {e}")))
        .collect()
}

/// Whether an audit record is about `kind` (`tunnel`, `request`) to `dst` by actor `demo/<name>`.
pub fn about(r: &Value, kind: &str, dst: SocketAddr, name: &str) -> bool {
    r["kind"] == kind
        && r["dst"] == dst.to_string()
        && r["actor"]["atespace"] == "demo"
        && r["actor"]["name"] == name
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// What upstream atunnel does: a new TLS connection to `pep` with SNI = the PEP's name
/// (`localhost`, the name in its certificate), no ALPN, the actor certificate; then
/// `CONNECT <target> HTTP/1.1`, `Host` the same, a Go `User-Agent`, nothing else. Returns the
/// status, the body (of a refusal) and the stream, positioned right after the answer's head.
pub async fn atunnel(
    pep: SocketAddr,
    ca: &Path,
    cert: &Cert,
    target: &str,
) -> (u16, String, TlsStream<TcpStream>) {
    let mut tls = pep_tls(pep, ca, cert).await;
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: Go-http-client/1.1\r\n\r\n"
    );
    within(BOUND, "write CONNECT", tls.write_all(head.as_bytes()))
        .await
        .unwrap();
    let (status, body) = read_answer(&mut tls).await;
    (status, body, tls)
}

/// A TLS connection to the PEP as `cert`, no ALPN, SNI `localhost`.
pub async fn pep_tls(pep: SocketAddr, ca: &Path, cert: &Cert) -> TlsStream<TcpStream> {
    try_pep_tls(pep, ca, cert)
        .await
        .unwrap_or_else(|e| panic!("TLS to the PEP at {pep}: {e}"))
}

pub async fn try_pep_tls(
    pep: SocketAddr,
    ca: &Path,
    cert: &Cert,
) -> std::io::Result<TlsStream<TcpStream>> {
    let cfg = tls_client_config(ca, &[], Some((&cert.0, &cert.1)));
    assert!(cfg.alpn_protocols.is_empty());
    within(BOUND, format!("TLS to the PEP at {pep}"), async {
        let tcp = TcpStream::connect(pep).await?;
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await?;
        tls.flush().await?;
        Ok(tls)
    })
    .await
}

/// Reads an HTTP/1.1 answer head byte by byte (so nothing of the tunnel is read) and a body
/// framed by `content-length`; status 0 when the connection ends first.
pub async fn read_answer<IO: AsyncRead + Unpin>(io: &mut IO) -> (u16, String) {
    within(BOUND, "the CONNECT answer", async {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match io.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return (0, String::new()),
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        if io.read_exact(&mut body).await.is_err() {
            return (status, String::new());
        }
        if len > 0 {
            assert!(head.contains("content-type: text/plain"), "{head}");
        }
        (status, String::from_utf8_lossy(&body).into_owned())
    })
    .await
}

/// An HTTP/1.1 client on one tunnel: every request goes over this one connection.
pub struct TunnelClient {
    pub sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl TunnelClient {
    pub async fn new<IO>(io: IO) -> Self
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) = within(
            BOUND,
            "HTTP/1.1 handshake on the tunnel",
            hyper::client::conn::http1::handshake(TokioIo::new(io)),
        )
        .await
        .unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        TunnelClient { sender }
    }

    /// `GET <path>` with `Host: <host>` on the tunnel → (status, body); panics when the
    /// connection fails (a denial must not close it).
    pub async fn get(&mut self, host: &str, path: &str) -> (u16, String) {
        within(
            BOUND,
            format!("GET {path} Host: {host} on the tunnel"),
            async {
                self.sender.ready().await.unwrap_or_else(|e| {
                    panic!("the tunnel's HTTP connection closed before {host}: {e}")
                });
                let req = http::Request::get(path)
                    .header(http::header::HOST, host)
                    .body(Empty::new())
                    .unwrap();
                let resp = self
                    .sender
                    .send_request(req)
                    .await
                    .unwrap_or_else(|e| panic!("GET Host: {host}: {e}"));
                let status = resp.status().as_u16();
                let body = resp.into_body().collect().await.unwrap().to_bytes();
                (status, String::from_utf8_lossy(&body).into_owned())
            },
        )
        .await
    }
}

/// Sends `data` through an open tunnel to an echo server, half-closes, and returns what came
/// back until EOF.
pub async fn echo_through<IO: AsyncRead + AsyncWrite + Send + Unpin + 'static>(
    io: IO,
    data: Vec<u8>,
) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(io);
    // Errors end the exchange (a denied tunnel closes): the caller compares what came back.
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&data).await;
        let _ = w.shutdown().await;
        w
    });
    let mut got = Vec::new();
    let _ = within(BOUND, "echoed bytes until EOF", r.read_to_end(&mut got)).await;
    let _w = within(BOUND, "the writer", writer).await.unwrap();
    got
}

/// Writes `data` and reads what comes back until EOF or an error: a denied tunnel is closed
/// without a byte.
pub async fn bytes_back<IO: AsyncRead + AsyncWrite + Unpin>(io: &mut IO, data: &[u8]) -> Vec<u8> {
    within(BOUND, "the tunnel's answer to opaque bytes", async {
        let _ = io.write_all(data).await;
        let _ = io.flush().await;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
}

pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u8)
                .wrapping_mul(31)
                .wrapping_add(seed ^ (i >> 8) as u8)
        })
        .collect()
}
