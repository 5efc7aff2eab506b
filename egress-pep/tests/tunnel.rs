//! The tunnel server over real mTLS on loopback (DESIGN §7.1): an upstream-atunnel-like HTTP/1.1
//! client and h2 CONNECT streams carry bytes to a loopback destination; identity, liveness and
//! policy refusals answer 403/503 with the reason only in audit records and metrics; limits close
//! and count. Destinations are on 127.0.0.0/8, which the guard's exempt list opens for the tests.

#[path = "../../tests/common/netns.rs"]
#[allow(dead_code)]
mod netns;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use egress_pep::audit::{AuditRecord, AuditSink};
use egress_pep::classify::ClassifyLimits;
use egress_pep::cleartext::CleartextLimits;
use egress_pep::decision::{Reason, Verdict};
use egress_pep::forward::Dialer;
use egress_pep::guard::{Guard, GuardSettings};
use egress_pep::metrics::{EgressMetrics, Limit};
use egress_pep::policy::model::{self, HostRule, Mode, Ports, Rule, RuleSpec, TcpRule};
use egress_pep::policy::{CompiledPolicy, PolicySource, PolicyUnavailable};
use egress_pep::resolve::{PepResolver, ResolverSettings};
use egress_pep::subject::Subject;
use egress_pep::tunnel::{ASSERTION_HEADER, IdentitySettings, Pep, PepParts, TunnelLimits};
use futures_util::future::BoxFuture;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use identity::ActorIdentity;
use identity::assertion::{AssertionMinter, AssertionVerifier};
use identity::testing::{TD, TestKey, TestPki, YEAR, verifier_for, write_jwks};
use identity::tls::{
    ClientAuth, ClientTlsFiles, ReloadableServerConfig, ServerIdentity, ServerTlsFiles,
};
use parking_lot::Mutex;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, SanType};
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method as CpMethod, Step};
use runtime::drain::Drain;
use runtime::listener::BoundListener;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;

const BOUND: Duration = Duration::from_secs(30);
const ACTOR: &str = "demo/bot";

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(BOUND, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: nothing within {BOUND:?}"),
    }
}

/// Polls `cond` (a counter the PEP bumps after the client already saw the effect) for at most
/// the bound.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    routing_core::testing::wait_until(what, BOUND, &mut cond).await;
}

/// A policy source with one swappable answer for every actor.
struct TestPolicy {
    answer: Mutex<Result<Option<Arc<CompiledPolicy>>, PolicyUnavailable>>,
    asked: AtomicUsize,
}

impl TestPolicy {
    fn new(policy: model::Policy) -> Arc<Self> {
        Arc::new(Self {
            answer: Mutex::new(Ok(Some(Arc::new(
                CompiledPolicy::compile(&policy).unwrap(),
            )))),
            asked: AtomicUsize::new(0),
        })
    }
    fn set(&self, answer: Result<Option<model::Policy>, PolicyUnavailable>) {
        *self.answer.lock() =
            answer.map(|p| p.map(|p| Arc::new(CompiledPolicy::compile(&p).unwrap())));
    }
}

impl PolicySource for TestPolicy {
    fn kind(&self) -> &'static str {
        "test"
    }
    fn policy_for(
        &self,
        _subject: &Subject,
    ) -> BoxFuture<'static, Result<Option<Arc<CompiledPolicy>>, PolicyUnavailable>> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        let a = self.answer.lock().clone();
        Box::pin(async move { a })
    }
    fn status(&self) -> serde_json::Value {
        serde_json::json!({"kind": "test"})
    }
}

/// `tcp` 127.0.0.1/32 all ports, `tls_passthrough` allowed.test all ports.
fn loopback_policy() -> model::Policy {
    model::Policy {
        name: "test".into(),
        mode: Mode::Enforce,
        rules: vec![
            Rule {
                spec: RuleSpec::Tcp(TcpRule {
                    // 10.9.9.9: the origin inside the agent test's network namespace.
                    cidrs: vec![
                        "127.0.0.1/32".parse().unwrap(),
                        "10.9.9.9/32".parse().unwrap(),
                    ],
                    ports: Ports::All,
                }),
                mode: None,
            },
            Rule {
                spec: RuleSpec::TlsPassthrough(HostRule {
                    hostnames: vec!["allowed.test".parse().unwrap()],
                    ports: Ports::All,
                    methods: vec![],
                    path_prefixes: vec![],
                    allow_private: false,
                    effects: vec![],
                }),
                mode: None,
            },
        ],
    }
}

/// A TCP echo server counting connections.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

async fn echo_on(addr: &str) -> Echo {
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    Echo { addr, accepted }
}

struct Harness {
    pki: TestPki,
    pep_addr: SocketAddr,
    pep: Arc<Pep>,
    metrics: EgressMetrics,
    audit: Arc<AuditSink>,
    cp: FakeControlPlane,
    policy: Arc<TestPolicy>,
    echo: Echo,
    key: TestKey,
    drain: Drain,
}

struct Options {
    limits: TunnelLimits,
    legacy: bool,
    agents: Vec<String>,
    /// The PEP's listener address (port 0).
    listen: SocketAddr,
    /// The echo destination's bind address.
    echo_bind: &'static str,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            limits: TunnelLimits {
                max_header_bytes: 8 * 1024,
                ..TunnelLimits::default()
            },
            legacy: false,
            agents: vec![identity::spiffe::component_uri(TD, "ate-system", "atunnel")],
            listen: "127.0.0.1:0".parse().unwrap(),
            echo_bind: "127.0.0.1:0",
        }
    }
}

impl Harness {
    async fn start() -> Self {
        Self::with(Options::default()).await
    }

    async fn with_limits(limits: TunnelLimits) -> Self {
        Self::with(Options {
            limits,
            ..Options::default()
        })
        .await
    }

    async fn with(opts: Options) -> Self {
        let pki = TestPki::new();
        let (cert, key) = pki.localhost_server("pep");
        let tls = ReloadableServerConfig::server(ServerTlsFiles {
            cert_file: cert,
            key_file: key,
            client_ca_file: Some(pki.ca_file()),
            client_auth: ClientAuth::Required,
            client_trust_domain: None,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        })
        .unwrap();
        let cp = FakeControlPlane::start().await;
        cp.add_actor(ACTOR, ActorState::Running, "10.0.0.1", Duration::ZERO);
        let directory = Arc::new(AteApiDirectory::new(&cp.plaintext_settings()).unwrap());
        let echo = echo_on(opts.echo_bind).await;
        let listener = BoundListener::bind("egress.listen", opts.listen)
            .await
            .unwrap()
            .with_tls(tls.clone());
        let pep_addr = listener.local_addr();
        let resolver = PepResolver::new(&ResolverSettings {
            static_entries: HashMap::from([(
                "allowed.test".to_owned(),
                vec!["127.0.0.1".parse().unwrap()],
            )]),
            use_system: false,
            ..ResolverSettings::default()
        })
        .unwrap();
        let guard = Guard::new(
            &GuardSettings {
                exempt: vec!["127.0.0.0/8".parse().unwrap()],
                ..GuardSettings::default()
            },
            vec![pep_addr],
        );
        let dialer = Dialer::new(Arc::new(resolver), Arc::new(guard), Duration::from_secs(2));
        let key = TestKey::new(jsonwebtoken::Algorithm::ES256, "k1");
        let jwks = pki.path("jwks.json");
        write_jwks(&jwks, &[&key]);
        let verifier =
            AssertionVerifier::new(verifier_for(&jwks, Duration::from_secs(60)).await, 1000);
        let metrics = EgressMetrics::unregistered();
        let audit = Arc::new(AuditSink::new(None).unwrap());
        let policy = TestPolicy::new(loopback_policy());
        let pep = Pep::new(PepParts {
            tls,
            directory,
            policy: policy.clone(),
            dialer: Arc::new(dialer),
            audit: audit.clone(),
            metrics: metrics.clone(),
            identity: IdentitySettings {
                spiffe: identity::spiffe::SpiffeOptions {
                    accept_legacy_actor: opts.legacy,
                },
                agents: opts.agents,
                assertion: Some(Arc::new(verifier)),
                ..IdentitySettings::default()
            },
            limits: opts.limits,
            classify: ClassifyLimits {
                peek_timeout: Duration::from_millis(200),
                ..ClassifyLimits::default()
            },
            cleartext: CleartextLimits::default(),
            actor_hosts: egress_pep::actor_hosts::ActorHosts::new("actors.local", None),
            ingress: None,
            credentials: Arc::new(egress_pep::credentials::Credentials::new(
                "substrate-actor.local".into(),
                Default::default(),
                None,
                Default::default(),
                Default::default(),
            )),
            interception: None,
        });
        let drain = Drain::new();
        tokio::spawn(pep.clone().serve(listener, drain.signal()));
        Self {
            pki,
            pep_addr,
            pep,
            metrics,
            audit,
            cp,
            policy,
            echo,
            key,
            drain,
        }
    }

    /// Writes a certificate signed by this PKI's CA from `params`; returns (cert, key) paths.
    fn cert(
        &self,
        stem: &str,
        params: CertificateParams,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let issued = self.pki.ca.sign(params, YEAR).unwrap();
        self.pki.write(stem, &issued)
    }

    fn actor_cert(&self, atespace: &str, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let a = ActorIdentity::new(atespace, name, None).unwrap();
        let issued = self.pki.ca.issue_actor(TD, &a, false, YEAR).unwrap();
        self.pki.write(&format!("{atespace}.{name}"), &issued)
    }

    fn uri_cert(&self, stem: &str, uris: &[String]) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut p = CertificateParams::default();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(u.clone().try_into().unwrap()))
            .collect();
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.cert(stem, p)
    }

    /// A tunnel agent's client config towards this PEP: `cert` presented, `alpn` offered.
    fn agent_tls(
        &self,
        cert: &(std::path::PathBuf, std::path::PathBuf),
        alpn: Vec<Vec<u8>>,
    ) -> Arc<identity::tls::ReloadableClientConfig> {
        identity::tls::ReloadableClientConfig::client(ClientTlsFiles {
            ca_file: self.pki.ca_file(),
            cert_file: Some(cert.0.clone()),
            key_file: Some(cert.1.clone()),
            server_identity: ServerIdentity::Hostname,
            alpn,
        })
        .unwrap()
    }

    fn agent_cert(&self, sa: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let issued = self
            .pki
            .ca
            .issue_component(TD, "ate-system", sa, &[], &[], YEAR)
            .unwrap();
        self.pki.write(&format!("agent-{sa}"), &issued)
    }

    /// A TLS connection to the PEP as `cert`, offering `alpn`, SNI `localhost`.
    async fn tls(
        &self,
        cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
        alpn: &[&[u8]],
    ) -> std::io::Result<TlsStream<TcpStream>> {
        let cfg = identity::tls::client_config(&ClientTlsFiles {
            ca_file: self.pki.ca_file(),
            cert_file: cert.map(|c| c.0.clone()),
            key_file: cert.map(|c| c.1.clone()),
            server_identity: ServerIdentity::Hostname,
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        })
        .unwrap();
        let tcp = TcpStream::connect(self.pep_addr).await?;
        let mut tls = TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await?;
        // TLS 1.3: a refused client certificate shows on the first read, not in connect.
        tls.flush().await?;
        Ok(tls)
    }

    /// What upstream atunnel does: new TLS connection, no ALPN, `CONNECT ip:port HTTP/1.1`,
    /// `Host` the same, a Go `User-Agent`, nothing else. Returns the status (0: the connection
    /// closed or failed before an answer), the body and the stream.
    async fn atunnel(
        &self,
        cert: &(std::path::PathBuf, std::path::PathBuf),
        target: &str,
        extra: &str,
    ) -> (u16, String, Option<TlsStream<TcpStream>>) {
        let mut tls = match self.tls(Some(cert), &[]).await {
            Ok(t) => t,
            Err(_) => return (0, String::new(), None),
        };
        let head = format!(
            "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: Go-http-client/1.1\r\n{extra}\r\n"
        );
        if tls.write_all(head.as_bytes()).await.is_err() {
            return (0, String::new(), None);
        }
        let (status, body) = read_response(&mut tls).await;
        (status, body, Some(tls))
    }

    fn last_tunnel(&self) -> AuditRecord {
        self.audit
            .recent()
            .into_iter()
            .rev()
            .find(|r| r.kind == egress_pep::audit::RecordKind::Tunnel)
            .expect("a tunnel record")
    }

    fn assertion(&self, dst: &str) -> String {
        AssertionMinter::new(
            self.key.signer(),
            identity::testing::AUDIENCE,
            Duration::from_secs(30),
        )
        .mint(&actor(), dst.parse().unwrap())
        .unwrap()
    }
}

fn actor() -> ActorIdentity {
    ActorIdentity::new("demo", "bot", None).unwrap()
}

/// Reads an HTTP/1.1 response head (and a short body by content-length); status 0 when the
/// connection ends first.
async fn read_response<IO: AsyncRead + Unpin>(io: &mut IO) -> (u16, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match within("response head", io.read(&mut byte)).await {
            Ok(1) => buf.push(byte[0]),
            _ => return (0, String::new()),
        }
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if len > 0 {
        let _ = within("response body", io.read_exact(&mut body)).await;
    }
    assert!(
        len == 0
            || head
                .to_ascii_lowercase()
                .contains("content-type: text/plain"),
        "{head}"
    );
    (status, String::from_utf8_lossy(&body).to_string())
}

/// Sends `data` through `io` to the echo server and checks it comes back intact.
async fn echo_through<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO, data: Vec<u8>) {
    let (mut r, mut w) = tokio::io::split(io);
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::with_capacity(expected.len());
    within("echoed bytes", r.read_to_end(&mut got))
        .await
        .unwrap();
    within("writer", writer).await.unwrap();
    assert_eq!(got.len(), expected.len());
    assert!(got == expected, "echoed bytes differ");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn atunnel_like_client_gets_200_and_its_bytes_arrive() {
    let h = Harness::start().await;
    let cert = h.actor_cert("demo", "bot");
    let target = h.echo.addr.to_string();
    let (status, _, tls) = h.atunnel(&cert, &target, "").await;
    assert_eq!(status, 200);
    echo_through(tls.unwrap(), pattern(200_000, 1)).await;
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 1);
    eventually("tunnel record", || {
        h.metrics.tunnels(Verdict::Allow, Reason::Allowed) == 1
    })
    .await;
    let r = h.last_tunnel();
    assert_eq!(r.verdict, Verdict::Allow);
    assert_eq!(r.dst, Some(h.echo.addr));
    assert_eq!(r.actor.as_ref().unwrap().uid.as_deref(), Some("uid-bot"));
    assert_eq!(r.rule.as_ref().unwrap().index, 0);
    assert_eq!((r.bytes_up, r.bytes_down), (200_000, 200_000));
    assert_eq!(h.metrics.active_tunnels(), 0);
    // The liveness answer is cached: a second tunnel makes no second GetActor.
    let (status, _, _) = h.atunnel(&cert, &target, "").await;
    assert_eq!(status, 200);
    assert_eq!(h.cp.calls(CpMethod::GetActor, ACTOR), 1);
}

#[tokio::test]
async fn tls_sni_decides_and_the_pep_dials_the_names_own_address() {
    let h = Harness::start().await;
    let cert = h.actor_cert("demo", "bot");
    // The actor dialed 127.0.0.2 (same port); its SNI names allowed.test = 127.0.0.1.
    let decoy = echo_on(&format!("127.0.0.2:{}", h.echo.addr.port())).await;
    let target = decoy.addr.to_string();
    let (status, _, tls) = h.atunnel(&cert, &target, "").await;
    assert_eq!(status, 200);
    let mut tls = tls.unwrap();
    // A ClientHello for allowed.test, written by hand-rolled rustls client over the tunnel: the
    // echo server sends the bytes back, which is not a ServerHello, so only the first bytes are
    // checked.
    let hello = client_hello("allowed.test").await;
    tls.write_all(&hello).await.unwrap();
    let mut back = vec![0u8; hello.len()];
    within("hello echoed", tls.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(back, hello);
    drop(tls);
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(
        decoy.accepted.load(Ordering::SeqCst),
        0,
        "the dialed IP got no connection"
    );
    eventually("tunnel record", || {
        h.metrics.tunnels(Verdict::Allow, Reason::Allowed) == 1
    })
    .await;
    let r = h.last_tunnel();
    assert_eq!(r.sni.as_deref(), Some("allowed.test"));
    assert!(r.dst_mismatch);

    // An SNI no rule allows: the tunnel closes with no byte sent back, counted and audited.
    let (status, _, tls) = h.atunnel(&cert, &target, "").await;
    assert_eq!(status, 200);
    let mut tls = tls.unwrap();
    tls.write_all(&client_hello("denied.test").await)
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within("denied tunnel closes", tls.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
    eventually("deny record", || {
        h.metrics.tunnels(Verdict::Deny, Reason::NoMatchingRule) == 1
    })
    .await;
    // An actor host name: actor forwarding is not configured.
    let (_, _, tls) = h.atunnel(&cert, &target, "").await;
    let mut tls = tls.unwrap();
    tls.write_all(&client_hello("peer.demo.actors.local").await)
        .await
        .unwrap();
    let _ = within("actor tunnel closes", tls.read_to_end(&mut Vec::new())).await;
    eventually("actor record", || {
        h.metrics
            .tunnels(Verdict::Deny, Reason::ActorForwardingNotConfigured)
            == 1
    })
    .await;
}

/// The first flight of a rustls client for `sni` (captured from an in-memory connection).
async fn client_hello(sni: &str) -> Vec<u8> {
    let cfg = tokio_rustls::rustls::ClientConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(tokio_rustls::rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = tokio_rustls::rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(sni.to_owned()).unwrap(),
    )
    .unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn h2_carries_many_tunnels_on_one_connection() {
    let h = Harness::start().await;
    let cert = h.actor_cert("demo", "bot");
    let tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..100u8 {
        let mut send = send.clone();
        let target = h.echo.addr.to_string();
        tasks.push(tokio::spawn(async move {
            let req = http::Request::connect(target)
                .body(Empty::<Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200);
            let io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
            echo_through(io, pattern(1 << 20, i)).await;
        }));
    }
    for t in tasks {
        within("h2 tunnel", t).await.unwrap();
    }
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 100);
    eventually("100 records", || {
        h.metrics.tunnels(Verdict::Allow, Reason::Allowed) == 100
    })
    .await;
    // A refusal on one stream leaves the others alone: a name target is 403.
    let mut send = send.clone();
    let resp = send
        .send_request(
            http::Request::connect("example.com:443")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(h.last_tunnel().reason, Reason::BadTarget);
}

#[tokio::test]
async fn connect_answers_for_targets_methods_and_policy() {
    let h = Harness::start().await;
    let cert = h.actor_cert("demo", "bot");
    let (s, body, _) = h.atunnel(&cert, "example.com:443", "").await;
    assert_eq!((s, body.as_str()), (403, "egress denied"));
    assert_eq!(h.last_tunnel().reason, Reason::BadTarget);
    // Not CONNECT: 405.
    let mut tls = h.tls(Some(&cert), &[]).await.unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut tls).await.0, 405);
    let target = h.echo.addr.to_string();
    // No policy → 403; policy source down → 503.
    h.policy.set(Ok(None));
    let (s, _, _) = h.atunnel(&cert, &target, "").await;
    assert_eq!(s, 403);
    assert_eq!(h.last_tunnel().reason, Reason::NoPolicy);
    h.policy.set(Err(PolicyUnavailable("down".into())));
    let (s, body, _) = h.atunnel(&cert, &target, "").await;
    assert_eq!((s, body.as_str()), (503, "egress unavailable"));
    assert_eq!(h.last_tunnel().reason, Reason::ControlPlaneUnavailable);
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 0);
}

/// Refused in the TLS handshake or answered 403; either way no tunnel and no destination
/// connection.
async fn refused_in_handshake(
    h: &Harness,
    cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) {
    let target = h.echo.addr.to_string();
    let outcome = match h.tls(cert, &[]).await {
        Err(_) => 0,
        Ok(mut tls) => {
            let head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            match tls.write_all(head.as_bytes()).await {
                Err(_) => 0,
                Ok(()) => read_response(&mut tls).await.0,
            }
        }
    };
    assert_eq!(outcome, 0, "the handshake should have failed");
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn certificates_refused_in_the_handshake() {
    let h = Harness::start().await;
    // No client certificate.
    refused_in_handshake(&h, None).await;
    // Another CA.
    let other = TestPki::new();
    let issued = other.ca.issue_actor(TD, &actor(), false, YEAR).unwrap();
    refused_in_handshake(&h, Some(&other.write("stranger", &issued))).await;
    // A CA certificate as leaf.
    let mut p = CertificateParams::default();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.subject_alt_names = vec![SanType::URI(
        identity::spiffe::actor_uri(TD, "demo", "bot")
            .try_into()
            .unwrap(),
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    refused_in_handshake(&h, Some(&h.cert("ca-leaf", p))).await;
    // No client-auth EKU.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        identity::spiffe::actor_uri(TD, "demo", "bot")
            .try_into()
            .unwrap(),
    )];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    refused_in_handshake(&h, Some(&h.cert("server-eku", p))).await;
    assert_eq!(h.cp.calls(CpMethod::GetActor, ACTOR), 0);
}

/// A CONNECT answered `status`, with `reason` audited and counted as an identity failure.
async fn refused_with(
    h: &Harness,
    cert: &(std::path::PathBuf, std::path::PathBuf),
    extra: &str,
    status: u16,
    reason: Reason,
) {
    let before = h.metrics.identity_failures(reason);
    let accepted = h.echo.accepted.load(Ordering::SeqCst);
    let target = h.echo.addr.to_string();
    let (s, body, _) = h.atunnel(cert, &target, extra).await;
    let want = if status == 503 {
        "egress unavailable"
    } else {
        "egress denied"
    };
    assert_eq!((s, body.as_str()), (status, want), "{reason:?}");
    assert_eq!(h.last_tunnel().reason, reason);
    assert_eq!(
        h.metrics.identity_failures(reason),
        before + 1,
        "{reason:?}"
    );
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), accepted);
}

#[tokio::test]
async fn certificate_identities_refused_by_the_pep() {
    let h = Harness::start().await;
    let two = h.uri_cert(
        "two-uris",
        &[
            identity::spiffe::actor_uri(TD, "demo", "bot"),
            "https://example.com/x".into(),
        ],
    );
    refused_with(&h, &two, "", 403, Reason::IdentityInvalid).await;
    let bad_path = h.uri_cert("bad-path", &[format!("spiffe://{TD}/ateom-for-actor/demo")]);
    refused_with(&h, &bad_path, "", 403, Reason::IdentityInvalid).await;
    let legacy = h.uri_cert(
        "legacy",
        &[format!("spiffe://{TD}/atespace/demo/actor/bot")],
    );
    refused_with(&h, &legacy, "", 403, Reason::IdentityInvalid).await;
    let stranger = h.agent_cert("stranger");
    refused_with(&h, &stranger, "", 403, Reason::ComponentNotAllowed).await;
    assert_eq!(h.cp.calls(CpMethod::GetActor, ACTOR), 0);

    // With legacy ids configured the older spelling opens a tunnel.
    let h = Harness::with(Options {
        legacy: true,
        ..Options::default()
    })
    .await;
    let legacy = h.uri_cert(
        "legacy",
        &[format!("spiffe://{TD}/atespace/demo/actor/bot")],
    );
    let (s, _, _) = h.atunnel(&legacy, &h.echo.addr.to_string(), "").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn liveness_refusals() {
    let h = Harness::start().await;
    let ghost = h.actor_cert("demo", "ghost");
    refused_with(&h, &ghost, "", 403, Reason::ActorNotFound).await;
    h.cp.add_actor(
        "demo/sleepy",
        ActorState::Suspended,
        "10.0.0.2",
        Duration::ZERO,
    );
    let sleepy = h.actor_cert("demo", "sleepy");
    refused_with(&h, &sleepy, "", 403, Reason::ActorNotRunning).await;
    let bot = h.actor_cert("demo", "bot");
    h.cp.script(
        CpMethod::GetActor,
        ACTOR,
        [Step::Fail(tonic::Code::Unavailable, "down".into())],
    );
    refused_with(&h, &bot, "", 503, Reason::ControlPlaneUnavailable).await;
    // Errors are not cached: the next CONNECT asks again and passes.
    let (s, _, _) = h.atunnel(&bot, &h.echo.addr.to_string(), "").await;
    assert_eq!(s, 200);
    assert_eq!(h.cp.calls(CpMethod::GetActor, ACTOR), 2);
}

#[tokio::test]
async fn agents_need_a_valid_assertion_for_the_target() {
    let h = Harness::start().await;
    let agent = h.agent_cert("atunnel");
    let target = h.echo.addr.to_string();
    let good = h.assertion(&target);
    let (s, _, tls) = h
        .atunnel(&agent, &target, &format!("{ASSERTION_HEADER}: {good}\r\n"))
        .await;
    assert_eq!(s, 200);
    echo_through(tls.unwrap(), pattern(1000, 7)).await;
    eventually("agent tunnel", || {
        h.metrics.tunnels(Verdict::Allow, Reason::Allowed) == 1
    })
    .await;
    assert_eq!(
        h.last_tunnel().identity,
        Some(egress_pep::subject::IdentityKind::Assertion)
    );
    // Replayed jti.
    refused_with(
        &h,
        &agent,
        &format!("{ASSERTION_HEADER}: {good}\r\n"),
        403,
        Reason::AssertionReplayed,
    )
    .await;
    // Missing.
    refused_with(&h, &agent, "", 403, Reason::AssertionInvalid).await;
    // Wrong dst.
    let other = h.assertion("127.0.0.1:1");
    refused_with(
        &h,
        &agent,
        &format!("{ASSERTION_HEADER}: {other}\r\n"),
        403,
        Reason::AssertionInvalid,
    )
    .await;
    // Expired, wrong audience.
    let signer = h.key.signer();
    let mut claims = signer.claims(
        &actor(),
        identity::testing::AUDIENCE,
        Duration::from_secs(30),
    );
    claims.dst = Some(target.clone());
    let mut expired = claims.clone();
    expired.iat -= 120;
    expired.nbf = expired.iat;
    expired.exp = expired.iat + 30;
    expired.jti = "expired".into();
    let expired = signer.sign(&expired).unwrap();
    refused_with(
        &h,
        &agent,
        &format!("{ASSERTION_HEADER}: {expired}\r\n"),
        403,
        Reason::AssertionInvalid,
    )
    .await;
    let mut wrong_aud = claims.clone();
    wrong_aud.aud = identity::token::Audience::One("someone-else".into());
    wrong_aud.jti = "aud".into();
    let wrong_aud = signer.sign(&wrong_aud).unwrap();
    refused_with(
        &h,
        &agent,
        &format!("{ASSERTION_HEADER}: {wrong_aud}\r\n"),
        403,
        Reason::AssertionInvalid,
    )
    .await;
    // An actor certificate's identity is never replaced by a header.
    let bot = h.actor_cert("demo", "bot");
    let (s, _, _) = h
        .atunnel(&bot, &target, &format!("{ASSERTION_HEADER}: garbage\r\n"))
        .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn limits_close_and_count() {
    let h = Harness::with(Options {
        limits: TunnelLimits {
            header_read_timeout: Duration::from_millis(300),
            max_header_bytes: 8 * 1024,
            max_streams_per_connection: 2,
            idle_timeout: Duration::from_millis(300),
            ..TunnelLimits::default()
        },
        ..Options::default()
    })
    .await;
    let cert = h.actor_cert("demo", "bot");
    // Slow CONNECT header: closed.
    let mut tls = h.tls(Some(&cert), &[]).await.unwrap();
    tls.write_all(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let _ = within("slow header closes", tls.read_to_end(&mut rest)).await;
    eventually("slow_header", || h.metrics.limits(Limit::SlowHeader) == 1).await;
    // Oversized header: 431.
    let big = format!("X-Pad: {}\r\n", "a".repeat(10_000));
    let (s, _, _) = h.atunnel(&cert, &h.echo.addr.to_string(), &big).await;
    assert_eq!(s, 431);
    eventually("oversized_header", || {
        h.metrics.limits(Limit::OversizedHeader) == 1
    })
    .await;
    // Idle tunnel: opaque bytes, then silence.
    let (s, _, tls) = h.atunnel(&cert, &h.echo.addr.to_string(), "").await;
    assert_eq!(s, 200);
    let mut tls = tls.unwrap();
    tls.write_all(b"\x00ping").await.unwrap();
    let mut back = [0u8; 5];
    within("ping echoed", tls.read_exact(&mut back))
        .await
        .unwrap();
    let _ = within("idle tunnel closes", tls.read_to_end(&mut Vec::new())).await;
    eventually("idle", || h.metrics.limits(Limit::Idle) == 1).await;
    // Too many streams: a client that ignores SETTINGS opens 3 streams at once; the third is
    // refused.
    let mut tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    let target = h.echo.addr.to_string();
    let mut out = client_preface();
    for id in [1u32, 3, 5] {
        out.extend(connect_headers(id, 0x4, &target));
    }
    tls.write_all(&out).await.unwrap();
    let refused = within("RST_STREAM on stream 5", async {
        loop {
            let mut head = [0u8; 9];
            tls.read_exact(&mut head).await.unwrap();
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            tls.read_exact(&mut payload).await.unwrap();
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            if head[3] == 0x3 && stream == 5 {
                break u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            }
        }
    })
    .await;
    assert_eq!(refused, 7, "REFUSED_STREAM");
    eventually("too_many_streams", || {
        h.metrics.limits(Limit::TooManyStreams) == 1
    })
    .await;
}

/// An h2 CONNECT to `target` on a new hyper client connection over `tls`: the answer, and the
/// task driving the connection with its sender (the connection ends once both are dropped).
async fn h2_connect(
    tls: TlsStream<TcpStream>,
    target: &str,
) -> (
    http::Response<hyper::body::Incoming>,
    (
        tokio::task::JoinHandle<hyper::Result<()>>,
        hyper::client::conn::http2::SendRequest<Empty<Bytes>>,
    ),
) {
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let req = http::Request::connect(target)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = within("CONNECT", send.send_request(req)).await.unwrap();
    (resp, (conn, send))
}

/// A HEADERS frame with a CONNECT to `target` (HPACK literals without indexing; `target`
/// shorter than 127 bytes), with `flags` (END_HEADERS 0x4, END_STREAM 0x1).
fn connect_headers(stream: u32, flags: u8, target: &str) -> Vec<u8> {
    let mut block = vec![0x02, 7];
    block.extend(b"CONNECT");
    block.push(0x01);
    block.push(target.len() as u8);
    block.extend(target.as_bytes());
    frame(0x1, flags, stream, &block)
}

/// What an h2 client sends first: the connection preface and an empty SETTINGS frame.
fn client_preface() -> Vec<u8> {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn draining_refuses_new_connects_and_status_reports() {
    let h = Harness::start().await;
    let cert = h.actor_cert("demo", "bot");
    let target = h.echo.addr.to_string();
    // An h2 connection open before the drain.
    let tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    let (resp, _conn) = h2_connect(tls, &target).await;
    assert_eq!(resp.status(), 200);
    let open = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let status = h.pep.status();
    assert_eq!(status["active_tunnels"], 1);
    assert_eq!(status["policy"]["source"], "test");
    h.drain.start();
    // The open tunnel still carries bytes.
    echo_through(open, pattern(10_000, 3)).await;
    // New connections are refused (the listener closed).
    eventually("listener closed", || {
        std::net::TcpStream::connect(h.pep_addr).is_err()
    })
    .await;
    let _ = (&h.policy, &h.pki);
}

#[tokio::test]
async fn client_certificate_without_any_eku_is_refused_by_the_pep() {
    let h = Harness::start().await;
    // No extended-key-usage extension at all (rcgen writes none for an empty list): the TLS
    // handshake accepts such a certificate, the PEP's leaf check does not.
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(
        identity::spiffe::actor_uri(TD, "demo", "bot")
            .try_into()
            .unwrap(),
    )];
    assert!(p.extended_key_usages.is_empty());
    let no_eku = h.cert("no-eku", p);
    refused_with(&h, &no_eku, "", 403, Reason::IdentityInvalid).await;
    assert_eq!(h.last_tunnel().verdict, Verdict::Deny);
    assert_eq!(h.cp.calls(CpMethod::GetActor, ACTOR), 0);
}

#[tokio::test]
async fn h2_connections_without_a_connect_close_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(300);
    let h = Harness::with_limits(TunnelLimits {
        header_read_timeout: timeout,
        ..Options::default().limits
    })
    .await;
    let cert = h.actor_cert("demo", "bot");
    // TLS with ALPN h2, then nothing at all (not even the preface).
    let mut tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let opened = std::time::Instant::now();
    let _ = within(
        "silent h2 connection closes",
        tls.read_to_end(&mut Vec::new()),
    )
    .await;
    assert!(opened.elapsed() >= timeout / 2, "closed before the timeout");
    eventually("slow_header 1", || h.metrics.limits(Limit::SlowHeader) == 1).await;
    // The preface and SETTINGS, then no CONNECT.
    let mut tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    tls.write_all(&client_preface()).await.unwrap();
    let _ = within(
        "h2 connection without a CONNECT closes",
        tls.read_to_end(&mut Vec::new()),
    )
    .await;
    eventually("slow_header 2", || h.metrics.limits(Limit::SlowHeader) == 2).await;
    assert_eq!(h.metrics.tunnels(Verdict::Allow, Reason::Allowed), 0);
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn h2_connection_closes_once_idle_after_its_last_tunnel() {
    let idle = Duration::from_millis(500);
    let h = Harness::with_limits(TunnelLimits {
        idle_timeout: idle,
        ..Options::default().limits
    })
    .await;
    let cert = h.actor_cert("demo", "bot");
    let tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    let (resp, (conn, _send)) = h2_connect(tls, &h.echo.addr.to_string()).await;
    assert_eq!(resp.status(), 200);
    let mut io = TokioIo::new(within("upgrade", hyper::upgrade::on(resp)).await.unwrap());
    // An open tunnel with traffic keeps the connection past the idle timeout (pacing, not
    // synchronisation: the tunnel spans 4 × 200 ms > 500 ms).
    for _ in 0..4 {
        io.write_all(b"\x00ping").await.unwrap();
        let mut back = [0u8; 5];
        within("ping echoed", io.read_exact(&mut back))
            .await
            .unwrap();
        assert_eq!(&back, b"\x00ping");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!conn.is_finished(), "closed with a tunnel open");
    assert_eq!(h.metrics.limits(Limit::Idle), 0);
    // The last tunnel ends; the connection then closes after the idle timeout.
    io.shutdown().await.unwrap();
    within("tunnel end", io.read_to_end(&mut Vec::new()))
        .await
        .unwrap();
    let last_closed = std::time::Instant::now();
    let _ = within("idle h2 connection closes", conn).await.unwrap();
    assert!(
        last_closed.elapsed() >= idle / 2,
        "closed {:?} after the last tunnel",
        last_closed.elapsed()
    );
    eventually("idle", || h.metrics.limits(Limit::Idle) == 1).await;
    eventually("tunnel record", || {
        h.metrics.tunnels(Verdict::Allow, Reason::Allowed) == 1
    })
    .await;
}

/// A CONNECT whose client resets its stream while the PEP is still deciding is audited all the
/// same (denied, `unclassified`), and nothing is dialled.
#[tokio::test]
async fn an_h2_connect_reset_before_its_answer_is_audited() {
    let h = Harness::start().await;
    h.cp.script(
        CpMethod::GetActor,
        ACTOR,
        [Step::Delay(Duration::from_millis(300))],
    );
    let mut tls = h
        .tls(Some(&h.actor_cert("demo", "bot")), &[b"h2"])
        .await
        .unwrap();
    let mut out = client_preface();
    out.extend(connect_headers(1, 0x4, &h.echo.addr.to_string()));
    // RST_STREAM (CANCEL) right behind it, while liveness is still being asked.
    out.extend(frame(0x3, 0, 1, &8u32.to_be_bytes()));
    tls.write_all(&out).await.unwrap();
    eventually("the tunnel's record", || {
        h.metrics.tunnels(Verdict::Deny, Reason::Unclassified) == 1
    })
    .await;
    assert_eq!(h.last_tunnel().reason, Reason::Unclassified);
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 0);
}

/// Flow control bounds the payload bytes a peer may send ahead, not the frames carrying them. A
/// peer that splits its bytes into 1-byte DATA frames while the PEP is not reading the stream
/// (here: still asking liveness) is cut off by h2's small-DATA-frame budget (half the
/// connection window of framing overhead) with GOAWAY ENHANCE_YOUR_CALM, long before its
/// windows would stop it: counted `h2_flood`, nothing is dialled, and the PEP serves the next
/// connection.
#[tokio::test]
async fn tiny_data_frames_the_pep_is_not_reading_are_bounded() {
    let h = Harness::start().await;
    h.cp.script(
        CpMethod::GetActor,
        ACTOR,
        [Step::Delay(Duration::from_secs(2))],
    );
    let cert = h.actor_cert("demo", "bot");
    let (mut rd, mut wr) = raw_h2_client(&h, &cert).await;
    // A CONNECT and 1 MiB in 1-byte DATA frames behind it, while the PEP is still deciding.
    let target = h.echo.addr.to_string();
    let writer = tokio::spawn(async move {
        wr.write_all(&connect_headers(1, 0x4, &target)).await?;
        let batch = frame(0x0, 0, 1, b"x").repeat(64 * 1024);
        for _ in 0..16 {
            wr.write_all(&batch).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let code = within("GOAWAY", async {
        loop {
            match read_frame(&mut rd).await {
                Some((0x7, _, 0, payload)) => {
                    break Some(u32::from_be_bytes(payload[4..8].try_into().unwrap()));
                }
                Some(_) => {}
                None => break None,
            }
        }
    })
    .await;
    assert_eq!(code, Some(0xb), "GOAWAY ENHANCE_YOUR_CALM");
    let _ = writer.await.unwrap();
    eventually("counted", || h.metrics.limits(Limit::H2Flood) == 1).await;
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 0);
    // The next connection is served.
    let tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    let (resp, _conn) = h2_connect(tls, &h.echo.addr.to_string()).await;
    assert_eq!(resp.status(), 200);
    let io = TokioIo::new(within("upgrade", hyper::upgrade::on(resp)).await.unwrap());
    echo_through(io, pattern(64 * 1024, 7)).await;
}

/// An h2 connection to the PEP as `cert`, spoken by hand: the preface and empty SETTINGS sent;
/// the PEP's SETTINGS (its stream window) and connection WINDOW_UPDATE, which it sends first,
/// read, and its SETTINGS acknowledged (h2 applies its stream window once they are). From then
/// on the windows are the PEP's, not the protocol's initial 64 KiB.
async fn raw_h2_client(
    h: &Harness,
    cert: &(std::path::PathBuf, std::path::PathBuf),
) -> (
    tokio::io::ReadHalf<TlsStream<TcpStream>>,
    tokio::io::WriteHalf<TlsStream<TcpStream>>,
) {
    let tls = h.tls(Some(cert), &[b"h2"]).await.unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    wr.write_all(&client_preface()).await.unwrap();
    let (mut settings, mut window) = (false, false);
    while !(settings && window) {
        let (kind, flags, stream, _) = within("SETTINGS", read_frame(&mut rd)).await.unwrap();
        settings |= kind == 0x4 && flags & 0x1 == 0;
        window |= kind == 0x8 && stream == 0;
    }
    wr.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap();
    (rd, wr)
}

/// A tunnel whose upstream stops reading while its peer keeps sending small DATA frames (an
/// actor trickling small writes at a stalled server) keeps its connection: the PEP takes the
/// frames in as they arrive (within the stream window) instead of leaving them to h2's
/// small-DATA-frame budget, which would close the connection with every other tunnel on it.
/// Another tunnel on the same connection works meanwhile, and once the upstream reads again it
/// gets every byte in order.
///
/// 300,000 frames of 20 bytes (6 MB) with 16 MiB windows: the PEP's socket and splice buffers
/// take about 3 MB before its writes stall, h2's budget about 35,500 such frames more
/// (8 MiB / 236), so without absorbing them the connection would close halfway. They are paced
/// (250 frames, then a pause), as a trickle is: h2 charges every frame it reads in one go
/// before the tunnel's task runs, so a burst of more frames than the budget is refused whatever
/// the PEP does.
#[tokio::test]
async fn small_data_frames_to_a_stalled_upstream_keep_the_connection() {
    const SIZE: usize = 20;
    const FRAMES: usize = 300_000;
    const BATCH: usize = 250;
    let h = Harness::with_limits(TunnelLimits {
        h2_stream_window: 16 * 1024 * 1024,
        h2_connection_window: 16 * 1024 * 1024,
        ..Options::default().limits
    })
    .await;
    // The upstream: a small receive buffer, reads nothing until told to.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stalled = socket.listen(1).unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let (go, read_now) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        let (mut conn, _) = stalled.accept().await.unwrap();
        let _ = read_now.await;
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        got
    });
    let cert = h.actor_cert("demo", "bot");
    let (mut rd, mut wr) = raw_h2_client(&h, &cert).await;
    wr.write_all(&connect_headers(1, 0x4, &stalled_addr.to_string()))
        .await
        .unwrap();
    loop {
        let (kind, _, stream, _) = within("200", read_frame(&mut rd)).await.unwrap();
        if kind == 0x1 && stream == 1 {
            break;
        }
    }
    // The PEP's frames from here on: GOAWAYs, and what arrives on stream 3.
    let seen = Arc::new(Mutex::new((0usize, Vec::new())));
    let seen_by_reader = seen.clone();
    let reader = tokio::spawn(async move {
        while let Some((kind, _, stream, payload)) = read_frame(&mut rd).await {
            let mut seen = seen_by_reader.lock();
            match (kind, stream) {
                (0x7, _) => seen.0 += 1,
                (0x0, 3) => seen.1.extend_from_slice(&payload),
                _ => {}
            }
        }
    });
    let sent: Vec<u8> = (0..FRAMES * SIZE).map(|i| (i % 251) as u8).collect();
    for batch in sent.chunks(SIZE * BATCH) {
        let frames: Vec<u8> = batch
            .chunks(SIZE)
            .flat_map(|payload| frame(0x0, 0, 1, payload))
            .collect();
        if let Err(e) = wr.write_all(&frames).await {
            panic!("{e} (h2_flood {})", h.metrics.limits(Limit::H2Flood));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // A second tunnel on the same connection still works.
    wr.write_all(&connect_headers(3, 0x4, &h.echo.addr.to_string()))
        .await
        .unwrap();
    wr.write_all(&frame(0x0, 0, 3, b"eping")).await.unwrap();
    eventually("the second tunnel's echo", || seen.lock().1 == b"eping").await;
    // The first tunnel ends; the upstream reads again and gets every byte.
    wr.write_all(&frame(0x0, 0x1, 1, &[])).await.unwrap();
    go.send(()).unwrap();
    let got = within("the upstream's bytes", upstream).await.unwrap();
    assert!(
        got == sent,
        "{} bytes of {}, in order",
        got.len(),
        sent.len()
    );
    assert_eq!(h.metrics.limits(Limit::H2Flood), 0);
    assert_eq!(
        seen.lock().0,
        0,
        "no GOAWAY while the connection was in use"
    );
    reader.abort();
}

/// The next frame on `rd`: kind, flags, stream and payload; `None` once the connection ends.
async fn read_frame<R: AsyncRead + Unpin>(rd: &mut R) -> Option<(u8, u8, u32, Vec<u8>)> {
    let mut head = [0u8; 9];
    rd.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    rd.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

/// A peer that never answers the idle GOAWAY (nor its PING) is dropped: its tunnel ended, the
/// PEP sends GOAWAY after the idle timeout and closes the connection a bounded time later.
#[tokio::test]
async fn idle_h2_connections_whose_peer_ignores_the_goaway_are_dropped() {
    let idle = Duration::from_millis(300);
    let h = Harness::with_limits(TunnelLimits {
        idle_timeout: idle,
        ..Options::default().limits
    })
    .await;
    let cert = h.actor_cert("demo", "bot");
    let mut tls = h.tls(Some(&cert), &[b"h2"]).await.unwrap();
    // Preface, SETTINGS, then a CONNECT whose stream ends at once (no DATA): the tunnel ends
    // unclassified and the connection has no open stream.
    let target = h.echo.addr.to_string();
    let mut out = client_preface();
    out.extend(connect_headers(1, 0x4 | 0x1, &target));
    tls.write_all(&out).await.unwrap();
    // Read without ever answering: no SETTINGS ack, no PING ack, no GOAWAY of ours.
    let started = std::time::Instant::now();
    let mut kinds = Vec::new();
    within("the PEP closes the connection", async {
        while let Some((kind, ..)) = read_frame(&mut tls).await {
            kinds.push(kind);
        }
    })
    .await;
    assert!(kinds.contains(&0x7), "a GOAWAY before the close: {kinds:?}");
    assert!(started.elapsed() >= idle, "closed before the idle timeout");
    eventually("idle", || h.metrics.limits(Limit::Idle) == 1).await;
}

/// An HTTP/1.1 server answering `ok` (`text/plain`), counting connections and requests.
async fn counting_http(addr: &str) -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind(addr).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (connections, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c, r) = (connections.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let r = r.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| {
                    r.fetch_add(1, Ordering::SeqCst);
                    async move {
                        http::Response::builder()
                            .header("content-type", "text/plain")
                            .body(http_body_util::Full::new(Bytes::from_static(b"ok")))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service)
                    .await;
            });
        }
    });
    (addr, connections, requests)
}

#[tokio::test]
async fn cleartext_mismatch_is_audited_for_every_request_on_a_reused_upstream() {
    let h = Harness::start().await;
    h.policy.set(Ok(Some(model::Policy {
        name: "http".into(),
        mode: Mode::Enforce,
        rules: vec![Rule {
            spec: RuleSpec::Http(HostRule {
                hostnames: vec!["allowed.test".parse().unwrap()],
                ports: Ports::All,
                methods: vec![],
                path_prefixes: vec![],
                allow_private: false,
                effects: vec![],
            }),
            mode: None,
        }],
    })));
    // The server for allowed.test (static entry 127.0.0.1); the actor dials 127.0.0.2 instead.
    let (server, connections, requests) = counting_http("127.0.0.1:0").await;
    let decoy = echo_on(&format!("127.0.0.2:{}", server.port())).await;
    let cert = h.actor_cert("demo", "bot");
    let (status, _, tls) = h.atunnel(&cert, &decoy.addr.to_string(), "").await;
    assert_eq!(status, 200);
    let mut tls = tls.unwrap();
    for path in ["/one", "/two"] {
        let head = format!("GET {path} HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
        tls.write_all(head.as_bytes()).await.unwrap();
        assert_eq!(
            read_response(&mut tls).await,
            (200, "ok".to_owned()),
            "{path}"
        );
    }
    assert_eq!(requests.load(Ordering::SeqCst), 2);
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one kept upstream connection"
    );
    assert_eq!(
        decoy.accepted.load(Ordering::SeqCst),
        0,
        "the dialed IP got no connection"
    );
    let requests = || {
        h.audit
            .recent()
            .into_iter()
            .filter(|r| r.kind == egress_pep::audit::RecordKind::Request)
            .collect::<Vec<_>>()
    };
    eventually("two request records", || requests().len() == 2).await;
    for r in requests() {
        assert_eq!(r.verdict, Verdict::Allow, "{r:?}");
        assert!(r.dst_mismatch, "{:?}: mismatch recorded", r.path);
    }
}

/// The tunnel agent's `per-connection` mode against the real PEP: a tunnel opens with the actor
/// certificate and carries bytes both ways; a CONNECT the PEP refuses (an actor the control
/// plane does not know) comes back as `Refused` with the PEP's status, before any byte is sent.
#[tokio::test]
async fn the_agents_per_connection_tunnels_open_and_report_refusals() {
    use egress_pep::agent::per_connection::{PerConnection, TunnelError};
    let h = Harness::start().await;
    let client = |cert: (std::path::PathBuf, std::path::PathBuf)| {
        let tls = h.agent_tls(&cert, Vec::new());
        PerConnection::new(pep(h.pep_addr, tls))
    };
    let agent = client(h.actor_cert("demo", "bot"));
    let tunnel = within("a tunnel", agent.open(h.echo.addr)).await.unwrap();
    echo_through(tunnel, pattern(100_000, 7)).await;
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 1);

    let ghost = client(h.actor_cert("demo", "ghost"));
    match within("a refused tunnel", ghost.open(h.echo.addr)).await {
        Err(TunnelError::Refused { status, .. }) => assert_eq!(status, 403),
        Err(e) => panic!("want a 403 refusal, got {e}"),
        Ok(_) => panic!("a tunnel opened for an unknown actor"),
    }
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 1);
}

/// The tunnel agent end to end in two network namespaces of the test's own, joined by a veth
/// pair: in the actor's, the capture rules redirect TCP to the agent's capture listener, and the
/// agent (its connections marked, so not captured) tunnels each connection per atunnel to the
/// PEP in the other namespace, which dials the original destination there. The bytes arrive and
/// come back, half-close included; a connection the PEP refuses is closed with no bytes.
#[test]
fn captured_connections_reach_their_destination_through_the_agent_and_the_pep() {
    use egress_pep::agent::capture;
    use egress_pep::agent::per_connection::PerConnection;
    use egress_pep::agent::rules::CaptureRules;
    use egress_pep::agent::tunnels::Tunnels;
    use egress_pep::forward::SpliceLimits;
    use identity::tls::{ClientTlsFiles, ReloadableClientConfig, ServerIdentity};
    use std::io::Write as _;

    const MARK: u32 = 0x539;
    let actor_ns = netns::TestNetns::create();
    let pep_ns = netns::TestNetns::create();
    // The veth pair: 10.200.0.1 (actor) — 10.200.0.2 (PEP); the origin is 10.9.9.9 on the PEP
    // side's loopback, and the actor routes everything through the PEP side.
    actor_ns.veth_to(&pep_ns, "10.200.0.1/24", "10.200.0.2/24");
    actor_ns.route(&["default", "via", "10.200.0.2"]);
    pep_ns.add_address("10.9.9.9/32");
    let script = CaptureRules {
        port: 15001,
        exclude_uid: None,
        exclude_mark: Some(MARK),
    }
    .install_script()
    .unwrap();
    let mut nft = actor_ns
        .command("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("nft");
    nft.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(
        nft.wait().unwrap().success(),
        "nft refused the capture rules"
    );

    // The PEP side runs until the actor side is done.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let pep_side = std::thread::spawn(move || {
        pep_ns.run(move || async move {
            let h = Harness::with(Options {
                listen: "10.200.0.2:0".parse().unwrap(),
                echo_bind: "10.9.9.9:0",
                ..Options::default()
            })
            .await;
            let bot = h.actor_cert("demo", "bot");
            let ghost = h.actor_cert("demo", "ghost");
            ready_tx
                .send((h.pep_addr, h.echo.addr, h.pki.ca_file(), bot, ghost))
                .unwrap();
            let _ = done_rx.await;
            h.echo.accepted.load(Ordering::SeqCst)
        })
    });
    let (pep_addr, echo_addr, ca, bot, ghost) = ready_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the PEP side started");

    actor_ns.run(move || async move {
        let agent = |cert: (std::path::PathBuf, std::path::PathBuf)| {
            let tls = ReloadableClientConfig::client(ClientTlsFiles {
                ca_file: ca.clone(),
                cert_file: Some(cert.0),
                key_file: Some(cert.1),
                server_identity: ServerIdentity::Hostname,
                alpn: Vec::new(),
            })
            .unwrap();
            Arc::new(Tunnels::PerConnection(PerConnection::new(
                pep(pep_addr, tls).with_mark(Some(MARK)),
            )))
        };
        let metrics = egress_pep::agent::metrics::AgentMetrics::default();
        let drain = Drain::new();
        let listener = TcpListener::bind("127.0.0.1:15001").await.unwrap();
        let first = tokio::spawn(capture::serve(
            listener,
            agent(bot),
            SpliceLimits::with_idle(Duration::from_secs(30)),
            metrics.clone(),
            drain.signal(),
        ));
        // The actor dials the origin's address; the rules capture it.
        let stream = within("a captured connection", TcpStream::connect(echo_addr))
            .await
            .unwrap();
        echo_through(stream, pattern(300_000, 3)).await;

        // An agent whose actor the PEP refuses: the actor's connection closes with no byte.
        drain.shutdown(Duration::from_secs(1)).await;
        within("the first agent's listener closes", first)
            .await
            .unwrap();
        let drain = Drain::new();
        let listener = TcpListener::bind("127.0.0.1:15001").await.unwrap();
        tokio::spawn(capture::serve(
            listener,
            agent(ghost),
            SpliceLimits::with_idle(Duration::from_secs(30)),
            metrics.clone(),
            drain.signal(),
        ));
        let mut stream = within("a captured connection", TcpStream::connect(echo_addr))
            .await
            .unwrap();
        let _ = stream.write_all(b"e").await;
        let mut got = Vec::new();
        let _ = within("the refused connection's end", stream.read_to_end(&mut got)).await;
        assert!(got.is_empty(), "a refused tunnel sent {} bytes", got.len());
        use egress_pep::agent::metrics::TunnelResult;
        assert_eq!(metrics.captured_count(), 2);
        assert_eq!(metrics.tunnels("per-connection", TunnelResult::Opened), 1);
        assert_eq!(metrics.tunnels("per-connection", TunnelResult::Refused), 1);
    });
    let _ = done_tx.send(());
    let accepted = pep_side.join().unwrap();
    assert_eq!(
        accepted, 1,
        "only the allowed connection reached the origin"
    );
}

/// The agent's `pooled` mode against the real PEP: tunnels are CONNECT streams over one shared
/// h2 connection (no handshake per tunnel), carry bytes both ways, and a refused CONNECT is
/// reported with the PEP's status.
#[tokio::test]
async fn the_agents_pooled_tunnels_share_one_h2_connection() {
    use egress_pep::agent::per_connection::TunnelError;
    use egress_pep::agent::pooled::Pooled;
    let h = Harness::start().await;
    let client = |cert: (std::path::PathBuf, std::path::PathBuf)| {
        let tls = h.agent_tls(&cert, vec![b"h2".to_vec()]);
        Pooled::new(pep(h.pep_addr, tls), 2)
    };
    let agent = client(h.actor_cert("demo", "bot"));
    let first = within("a tunnel", agent.open(h.echo.addr)).await.unwrap();
    let second = within("a tunnel", agent.open(h.echo.addr)).await.unwrap();
    assert_eq!(agent.connections(), 1, "two tunnels share one connection");
    let third = within("a tunnel", agent.open(h.echo.addr)).await.unwrap();
    assert_eq!(
        agent.connections(),
        2,
        "a full connection (2 streams) gets a sibling"
    );
    tokio::join!(
        echo_through(first, pattern(50_000, 1)),
        echo_through(second, pattern(50_000, 2)),
        echo_through(third, pattern(50_000, 3))
    );
    assert_eq!(h.echo.accepted.load(Ordering::SeqCst), 3);
    let fourth = within("a tunnel", agent.open(h.echo.addr)).await.unwrap();
    echo_through(fourth, pattern(1000, 4)).await;
    assert_eq!(agent.connections(), 2, "freed streams are reused");

    let ghost = client(h.actor_cert("demo", "ghost"));
    match within("a refused tunnel", ghost.open(h.echo.addr)).await {
        Err(TunnelError::Refused { status, .. }) => assert_eq!(status, 403),
        Err(e) => panic!("want a 403 refusal, got {e}"),
        Ok(_) => panic!("a tunnel opened for an unknown actor"),
    }
}

/// The real PEP takes a pooled tunnel's early bytes: the destination receives them first, then
/// what follows, in order; a refused tunnel's early bytes reach nobody. (That they leave before
/// the PEP's answer is `pooled_early_bytes_arrive_before_the_answer`'s to show.)
#[tokio::test]
async fn pooled_tunnels_send_the_first_bytes_with_the_connect() {
    use egress_pep::agent::per_connection::TunnelError;
    use egress_pep::agent::pooled::Pooled;
    let h = Harness::start().await;
    let client = |cert: (std::path::PathBuf, std::path::PathBuf)| {
        let tls = h.agent_tls(&cert, vec![b"h2".to_vec()]);
        Pooled::new(pep(h.pep_addr, tls), 10)
    };
    let agent = client(h.actor_cert("demo", "bot"));
    let mut t = within(
        "a tunnel with early bytes",
        agent.open_with(h.echo.addr, bytes::Bytes::from_static(b"early|")),
    )
    .await
    .unwrap();
    t.write_all(b"late").await.unwrap();
    t.shutdown().await.unwrap();
    let mut got = Vec::new();
    within("the echo", t.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"early|late");

    let accepted = h.echo.accepted.load(Ordering::SeqCst);
    let ghost = client(h.actor_cert("demo", "ghost"));
    match within(
        "a refused tunnel",
        ghost.open_with(h.echo.addr, bytes::Bytes::from_static(b"secret")),
    )
    .await
    {
        Err(TunnelError::Refused { status, .. }) => assert_eq!(status, 403),
        Err(e) => panic!("want a 403 refusal, got {e}"),
        Ok(_) => panic!("a tunnel opened for an unknown actor"),
    }
    assert_eq!(
        h.echo.accepted.load(Ordering::SeqCst),
        accepted,
        "the refused tunnel's early bytes reached the destination"
    );
}

/// A captured connection's bytes do not wait for the PEP's answer: what the actor sends while
/// the CONNECT is unanswered leaves at once too. A raw h2 server answers only after it has read
/// both what the actor had sent before the tunnel opened and what it sent afterwards (an agent
/// that waited for the answer would never be answered), then echoes everything.
#[tokio::test]
async fn pooled_tunnels_send_what_the_actor_sends_while_the_connect_is_unanswered() {
    let h = Harness::start().await;
    let (listener, addr, tls) = raw_h2_pep(&h).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let (req, mut respond) = raw_h2_first_stream(&listener, &tls).await;
        let mut body = req.into_body();
        let mut got = Vec::new();
        // Both parts before any answer (bounded: a missing one fails the test).
        while got.len() < b"first|second".len() {
            let Ok(Some(Ok(data))) = tokio::time::timeout(WAIT_TUNNEL, body.data()).await else {
                break;
            };
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
            seen_tx.send(data.to_vec()).unwrap();
        }
        let resp = http::Response::builder().status(200).body(()).unwrap();
        let mut send = respond.send_response(resp, false).unwrap();
        let _ = send.send_data(Bytes::from(got), true);
    });
    let agent = pooled_as_bot(&h, addr);
    // The actor's connection, as captured: its first bytes already sent.
    let (mut actor, captured) = tcp_pair().await;
    actor.write_all(b"first|").await.unwrap();
    let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let opening = tokio::spawn(async move {
        let t = agent.open_for(dst, &captured).await;
        (t, captured)
    });
    assert_eq!(
        within("the first DATA", seen_rx.recv()).await.unwrap(),
        b"first|"
    );
    actor.write_all(b"second").await.unwrap();
    assert_eq!(
        within("DATA sent while unanswered", seen_rx.recv())
            .await
            .unwrap(),
        b"second"
    );
    let (t, _captured) = within("the answer", opening).await.unwrap();
    let mut t = t.unwrap();
    let mut back = Vec::new();
    within("the echo", t.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"first|second");
}

/// What an actor sends before the PEP's answer is bounded ([`EARLY_BYTES`]): a raw h2 server
/// that answers only once the agent has gone quiet sees exactly that much before its answer,
/// and the rest, in order, after it.
#[tokio::test]
async fn pooled_tunnels_send_at_most_early_bytes_before_the_answer() {
    use egress_pep::agent::tunnels::EARLY_BYTES;
    let h = Harness::start().await;
    let (listener, addr, tls) = raw_h2_pep(&h).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Vec<u8>)>();
    tokio::spawn(async move {
        let (req, mut respond) = raw_h2_first_stream(&listener, &tls).await;
        let mut body = req.into_body();
        let mut got = Vec::new();
        // Before answering: everything until the agent has sent nothing for 300 ms.
        while let Ok(Some(Ok(data))) =
            tokio::time::timeout(Duration::from_millis(300), body.data()).await
        {
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        let before = got.len();
        let resp = http::Response::builder().status(200).body(()).unwrap();
        let _send = respond.send_response(resp, false).unwrap();
        while let Some(Ok(data)) = body.data().await {
            let _ = body.flow_control().release_capacity(data.len());
            got.extend_from_slice(&data);
        }
        seen_tx.send((before, got)).unwrap();
    });
    let agent = pooled_as_bot(&h, addr);
    let (mut actor, mut captured) = tcp_pair().await;
    let data = pattern(3 * EARLY_BYTES, 9);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        actor.write_all(&sent).await.unwrap();
        actor.shutdown().await.unwrap();
        actor
    });
    let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut t = within("the answer", agent.open_for(dst, &captured))
        .await
        .unwrap();
    assert_eq!(t.sent_early(), EARLY_BYTES as u64);
    // The rest goes through the tunnel as the capture listener would splice it.
    let mut rest = Vec::new();
    within("the rest", captured.read_to_end(&mut rest))
        .await
        .unwrap();
    t.write_all(&rest).await.unwrap();
    t.shutdown().await.unwrap();
    let (before, got) = within("the server's view", seen_rx.recv()).await.unwrap();
    assert_eq!(before, EARLY_BYTES, "bytes before the answer");
    assert!(got == data, "all bytes, in order");
    let _actor = writer.await.unwrap();
}

/// An actor that resets its connection while its CONNECT is unanswered fails the tunnel as the
/// client's failure, not the PEP's (`client_gone` in the agent's metrics).
#[tokio::test]
async fn a_pooled_tunnel_whose_actor_resets_while_unanswered_is_the_clients_failure() {
    use egress_pep::agent::per_connection::TunnelError;
    let h = Harness::start().await;
    let (listener, addr, tls) = raw_h2_pep(&h).await;
    tokio::spawn(async move {
        // Never answers.
        let (_req, _respond) = raw_h2_first_stream(&listener, &tls).await;
        std::future::pending::<()>().await;
    });
    let agent = pooled_as_bot(&h, addr);
    let (actor, captured) = tcp_pair().await;
    let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let opening = tokio::spawn(async move { agent.open_for(dst, &captured).await.err() });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // RST instead of FIN.
    actor.set_zero_linger().unwrap();
    drop(actor);
    match within("the tunnel fails", opening).await.unwrap() {
        Some(TunnelError::Client(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset)
        }
        other => panic!("want the client's failure, got {other:?}"),
    }
}

/// The PEP's refusals on h2 carry the same answer as on HTTP/1.1: status, `text/plain`, the
/// body, its length.
#[tokio::test]
async fn h2_refusals_answer_with_a_plain_body() {
    use http_body_util::BodyExt;
    let h = Harness::start().await;
    let tls = h
        .tls(Some(&h.actor_cert("demo", "ghost")), &[b"h2"])
        .await
        .unwrap();
    let (resp, _conn) = h2_connect(tls, &h.echo.addr.to_string()).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["content-length"], "13");
    let body = within("body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "egress denied");
    assert_eq!(h.last_tunnel().verdict, Verdict::Deny);
}

/// The agent side of `small_data_frames_to_a_stalled_upstream_keep_the_connection`: a server
/// answers an actor that stopped reading with 1 MiB, then trickles 40,000 DATA frames of 20
/// bytes (paced; 1.8 MB in all, within the agent's 2 MiB stream window, so the server never
/// waits for the actor), like heartbeats after a reply. The agent takes them in as they arrive
/// instead of leaving them to h2's small-DATA-frame budget (half its 5 MiB connection window:
/// about 11,100 such frames), which would close its connection to the PEP with every tunnel on
/// it. Once the actor reads again it gets every byte in order.
#[tokio::test]
async fn pooled_tunnels_take_in_small_frames_for_an_actor_that_stopped_reading() {
    const SIZE: usize = 20;
    const FRAMES: usize = 40_000;
    const BATCH: usize = 250;
    const REPLY: usize = 1024 * 1024;
    let h = Harness::start().await;
    let (listener, addr, tls) = raw_h2_pep(&h).await;
    let sent: Vec<u8> = (0..REPLY + FRAMES * SIZE)
        .map(|i| (i % 251) as u8)
        .collect();
    let to_send = sent.clone();
    let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let conn_ended = ended.clone();
    let server = tokio::spawn(async move {
        let mut conn = raw_h2_accept(&listener, &tls).await;
        let (_req, mut respond) = conn.accept().await.unwrap().unwrap();
        tokio::spawn(async move {
            while conn.accept().await.is_some() {}
            conn_ended.store(true, Ordering::SeqCst);
        });
        let resp = http::Response::builder().status(200).body(()).unwrap();
        let mut send = respond.send_response(resp, false).unwrap();
        // The reply: frames of the agent's largest size (16 KiB), within its window.
        send.send_data(Bytes::copy_from_slice(&to_send[..REPLY]), false)
            .unwrap();
        for batch in to_send[REPLY..].chunks(SIZE * BATCH) {
            for payload in batch.chunks(SIZE) {
                // One frame per call, each within the window the agent granted.
                send.reserve_capacity(SIZE);
                while send.capacity() < SIZE {
                    std::future::poll_fn(|cx| send.poll_capacity(cx))
                        .await
                        .expect("the agent's window")
                        .expect("the stream stays open");
                }
                send.send_data(Bytes::copy_from_slice(payload), false)
                    .expect("the connection stays open");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        send.send_data(Bytes::new(), true).unwrap();
    });
    let agent = pooled_as_bot(&h, addr);
    let tunnel = within(
        "a tunnel",
        agent.open_with("127.0.0.1:9".parse().unwrap(), Bytes::new()),
    )
    .await
    .unwrap();
    // The actor's connection to the agent, with small socket buffers: the actor reads nothing
    // until the server is done.
    let lst = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut actor = socket.connect(lst.local_addr().unwrap()).await.unwrap();
    let (captured, _) = lst.accept().await.unwrap();
    nix::sys::socket::setsockopt(&captured, nix::sys::socket::sockopt::SndBuf, &4096).unwrap();
    let counters = egress_pep::forward::SpliceCounters::new();
    let splice = tokio::spawn(async move {
        egress_pep::forward::splice_counted(
            captured,
            tunnel,
            egress_pep::forward::SpliceLimits::with_idle(Duration::from_secs(30)),
            &counters,
        )
        .await
    });
    within("the server sent everything", server).await.unwrap();
    let mut got = vec![0u8; sent.len()];
    within("the actor's bytes", actor.read_exact(&mut got))
        .await
        .unwrap();
    assert!(got == sent, "every byte, in order");
    assert!(
        !ended.load(Ordering::SeqCst),
        "the agent's connection to the PEP stays open"
    );
    actor.shutdown().await.unwrap();
    drop(actor);
    let _ = within("the splice ends", splice).await.unwrap();
}

/// The agent's pooled tunnels to `addr` as actor `demo/bot`.
fn pooled_as_bot(h: &Harness, addr: SocketAddr) -> egress_pep::agent::pooled::Pooled {
    let tls = h.agent_tls(&h.actor_cert("demo", "bot"), vec![b"h2".to_vec()]);
    egress_pep::agent::pooled::Pooled::new(pep(addr, tls), 10)
}

/// A loopback TCP connection: the actor's end and the captured end.
async fn tcp_pair() -> (TcpStream, TcpStream) {
    let lst = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let actor = TcpStream::connect(lst.local_addr().unwrap()).await.unwrap();
    let (captured, _) = lst.accept().await.unwrap();
    (actor, captured)
}

/// A listener standing in for the PEP with the PEP's certificate (ALPN h2), for raw h2 servers
/// that answer in ways the real PEP does not.
async fn raw_h2_pep(
    h: &Harness,
) -> (
    tokio::net::TcpListener,
    SocketAddr,
    Arc<identity::tls::ReloadableServerConfig>,
) {
    let tls = identity::tls::ReloadableServerConfig::server(identity::tls::ServerTlsFiles {
        cert_file: h.pki.path("pep.crt"),
        key_file: h.pki.path("pep.key"),
        client_ca_file: None,
        client_auth: identity::tls::ClientAuth::None,
        client_trust_domain: None,
        alpn: vec![b"h2".to_vec()],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr, tls)
}

/// The next connection to a [`raw_h2_pep`] listener, TLS and h2 handshakes done.
async fn raw_h2_accept(
    listener: &tokio::net::TcpListener,
    tls: &identity::tls::ReloadableServerConfig,
) -> h2::server::Connection<tokio_rustls::server::TlsStream<TcpStream>, Bytes> {
    let (tcp, _) = listener.accept().await.unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(tls.current())
        .accept(tcp)
        .await
        .unwrap();
    h2::server::handshake(tls).await.unwrap()
}

/// The first stream of the next connection to a [`raw_h2_pep`] listener; the connection keeps
/// being driven in a task of its own.
async fn raw_h2_first_stream(
    listener: &tokio::net::TcpListener,
    tls: &identity::tls::ReloadableServerConfig,
) -> (
    http::Request<h2::RecvStream>,
    h2::server::SendResponse<Bytes>,
) {
    let mut conn = raw_h2_accept(listener, tls).await;
    let first = conn.accept().await.unwrap().unwrap();
    tokio::spawn(async move { while conn.accept().await.is_some() {} });
    first
}

/// The early bytes leave with the CONNECT, before any answer: a raw h2 server (TLS with the
/// PEP's certificate) reads the stream's first DATA before it answers — `200` and an echo for
/// one tunnel, `403` for the next, which the agent then reports as refused. Without early data
/// the server would wait for DATA the agent only sends after an answer, and time out.
#[tokio::test]
async fn pooled_early_bytes_arrive_before_the_answer() {
    use egress_pep::agent::per_connection::TunnelError;
    let h = Harness::start().await;
    let (listener, addr, tls) = raw_h2_pep(&h).await;
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        let mut conn = raw_h2_accept(&listener, &tls).await;
        let mut answer = 200;
        while let Some(Ok((req, mut respond))) = conn.accept().await {
            let seen_tx = seen_tx.clone();
            let status = answer;
            answer = 403;
            tokio::spawn(async move {
                let mut body = req.into_body();
                // The first DATA, before any answer (bounded: a missing one fails the test).
                let first = tokio::time::timeout(Duration::from_secs(5), body.data())
                    .await
                    .ok()
                    .flatten()
                    .and_then(Result::ok)
                    .map(|b| b.to_vec())
                    .unwrap_or_default();
                let _ = body.flow_control().release_capacity(first.len());
                seen_tx.send(first.clone()).unwrap();
                let resp = http::Response::builder().status(status).body(()).unwrap();
                let Ok(mut send) = respond.send_response(resp, status != 200) else {
                    return;
                };
                if status == 200 {
                    let _ = send.send_data(bytes::Bytes::from(first), true);
                }
            });
        }
    });
    let agent = pooled_as_bot(&h, addr);
    let mut t = within(
        "a tunnel with early bytes",
        agent.open_with(
            "127.0.0.1:9".parse().unwrap(),
            bytes::Bytes::from_static(b"hello"),
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        seen_rx.recv().await.unwrap(),
        b"hello",
        "DATA before the answer"
    );
    let mut back = Vec::new();
    within("the echo", t.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"hello");
    match within(
        "a refused tunnel",
        agent.open_with(
            "127.0.0.1:9".parse().unwrap(),
            bytes::Bytes::from_static(b"second"),
        ),
    )
    .await
    {
        Err(TunnelError::Refused { status, .. }) => assert_eq!(status, 403),
        Err(e) => panic!("want a 403 refusal, got {e}"),
        Ok(_) => panic!("a refused tunnel opened"),
    }
    assert_eq!(seen_rx.recv().await.unwrap(), b"second");
}

/// A pooled connection the PEP is closing (GOAWAY, as on a drain or restart) is left for a new
/// one: a raw h2 server answers one tunnel on its first connection, then sends GOAWAY while
/// that tunnel is still open; the next tunnel is retried on a second connection and works.
#[tokio::test]
async fn pooled_tunnels_leave_a_connection_the_pep_is_closing() {
    let h = Harness::start().await;
    let (listener, addr, tls) = raw_h2_pep(&h).await;
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        for n in 0.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let tls = tokio_rustls::TlsAcceptor::from(tls.current())
                    .accept(tcp)
                    .await
                    .unwrap();
                let mut conn = h2::server::handshake(tls).await.unwrap();
                let mut first = true;
                while let Some(Ok((_req, mut respond))) = conn.accept().await {
                    let resp = http::Response::builder().status(200).body(()).unwrap();
                    let mut send = respond.send_response(resp, false).unwrap();
                    let _ = send.send_data(bytes::Bytes::from_static(b"hi"), false);
                    // Keep the stream open; the first connection then goes away.
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        drop(send);
                    });
                    if n == 0 && first {
                        conn.graceful_shutdown();
                    }
                    first = false;
                }
            });
        }
    });
    let agent = pooled_as_bot(&h, addr);
    let dst: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let mut first = within("the first tunnel", agent.open(dst)).await.unwrap();
    let mut b = [0u8; 2];
    within("its bytes", first.read_exact(&mut b)).await.unwrap();
    // Give the GOAWAY time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = within("a tunnel after the GOAWAY", agent.open(dst))
        .await
        .expect("retried on a new connection");
    within("its bytes", second.read_exact(&mut b))
        .await
        .unwrap();
    assert_eq!(&b, b"hi");
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "a second connection");
    assert_eq!(agent.connections(), 1, "the closing one left the pool");
    drop(first);
}

/// A shared agent with a component certificate: each of its tunnels carries an egress assertion
/// for its destination (both modes), and the PEP takes the actor from it; without assertions the
/// same component certificate is refused.
#[tokio::test]
async fn a_shared_agent_proves_each_tunnel_with_an_assertion() {
    use egress_pep::agent::per_connection::{Assertions, PerConnection, TunnelError};
    use egress_pep::agent::pooled::Pooled;
    let h = Harness::start().await;
    let cert = h.agent_cert("atunnel");
    let tls = |alpn: Vec<Vec<u8>>| h.agent_tls(&cert, alpn);
    let assertions = Arc::new(Assertions::new(
        AssertionMinter::new(
            h.key.signer(),
            identity::testing::AUDIENCE,
            Duration::from_secs(30),
        ),
        actor(),
    ));
    let per_connection =
        PerConnection::new(pep(h.pep_addr, tls(vec![])).with_assertions(Some(assertions.clone())));
    let t = within("an asserted tunnel", per_connection.open(h.echo.addr))
        .await
        .unwrap();
    echo_through(t, pattern(1000, 1)).await;
    let pooled = Pooled::new(
        pep(h.pep_addr, tls(vec![b"h2".to_vec()])).with_assertions(Some(assertions)),
        10,
    );
    for i in 0..2 {
        let t = within("an asserted pooled tunnel", pooled.open(h.echo.addr))
            .await
            .unwrap();
        echo_through(t, pattern(1000, i)).await;
    }
    eventually("three asserted tunnels", || {
        h.metrics.tunnels(Verdict::Allow, Reason::Allowed) == 3
    })
    .await;
    assert_eq!(
        h.last_tunnel().identity,
        Some(egress_pep::subject::IdentityKind::Assertion)
    );
    let bare = PerConnection::new(pep(h.pep_addr, tls(vec![])));
    match within("a tunnel without assertion", bare.open(h.echo.addr)).await {
        Err(TunnelError::Refused { status, .. }) => assert_eq!(status, 403),
        Err(e) => panic!("want 403, got {e}"),
        Ok(_) => panic!("a component certificate alone opened a tunnel"),
    }
}

const WAIT_TUNNEL: Duration = Duration::from_secs(5);

/// The agent's view of the PEP at `addr` (named `localhost`, as the test PKI's certificate),
/// reached with `tls`, tunnels opened within [`WAIT_TUNNEL`].
fn pep(
    addr: SocketAddr,
    tls: Arc<identity::tls::ReloadableClientConfig>,
) -> egress_pep::agent::per_connection::PepEndpoint {
    egress_pep::agent::per_connection::PepEndpoint::new(addr, "localhost", tls, WAIT_TUNNEL)
        .unwrap()
}
