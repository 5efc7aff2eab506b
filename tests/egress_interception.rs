//! Interception of `https` rules in `actorgate serve` (issue 12), end to end over real TLS on
//! loopback: the actor tunnels through the PEP (mTLS CONNECT as upstream atunnel sends it, or
//! `curl --proxytunnel`), opens TLS inside the tunnel trusting only the interception CA, and the
//! PEP decides each decrypted request and re-originates TLS to the origin — the echo worker
//! served over TLS with a certificate from a CA of its own, listed as an extra upstream root.
//!
//! Covered: curl gets the origin's body under a leaf for the SNI signed by the interception CA
//! within the configured lifetime; requests on one connection decided one by one (HTTP/1.1 and
//! h2 streams in parallel: 403 for a refused name, 421 for a name the leaf does not cover, the
//! allowed stream completes); gRPC unary, server streaming and a non-OK status in trailers;
//! a WebSocket echo session; an origin whose certificate does not verify (502, audit reason);
//! a ClientHello without SNI (denied); `tls_passthrough` (the actor sees the origin's real
//! certificate); a denied name answered readably without contacting the origin; 200 concurrent
//! first connections minting one leaf; the interception CA rotated on disk.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::egress::*;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use identity::tls::{ClientAuth, ServerTlsFiles};
use runtime::drain::Drain;
use runtime::listener::BoundListener;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The name the origin's certificate carries and an `https` rule allows.
const API: &str = "api.intercept.test";
/// In the origin's certificate and a `tls_passthrough` rule.
const PASS: &str = "pass.intercept.test";
/// Allowed by an `https` rule, not in the origin's certificate.
const BAD_CERT: &str = "badcert.intercept.test";
/// Allowed by an `https` rule (and in the origin's certificate).
const ALSO: &str = "also.intercept.test";
/// Resolved, named by no rule.
const DENIED: &str = "denied.intercept.test";
/// Served by an origin that speaks only HTTP/1.1 (ALPN), allowed by an `https` rule.
const H1ONLY: &str = "h1only.intercept.test";
/// Leaf lifetime configured.
const LEAF_LIFETIME: Duration = Duration::from_secs(600);

/// A TLS stream inside a tunnel inside the PEP's mTLS connection.
type Inner = tokio_rustls::client::TlsStream<tokio_rustls::client::TlsStream<TcpStream>>;

/// The PEP with interception, the origin (echo worker over TLS) and the PKIs.
struct Lab {
    pep: Pep,
    /// The origin's CA (an extra upstream root of the PEP).
    origin_pki: TestPki,
    /// The interception CA: `ca.crt`, `ca.key` in its directory.
    intercept_pki: TestPki,
    origin: SocketAddr,
    /// An origin that speaks only HTTP/1.1 (for [`H1ONLY`]).
    h1_origin: SocketAddr,
    _origin_drain: Drain,
}

impl Lab {
    async fn start() -> Self {
        let origin_pki = TestPki::new();
        let issued = origin_pki
            .ca
            .issue_server(
                &[API.into(), PASS.into(), ALSO.into(), H1ONLY.into()],
                &[],
                YEAR,
            )
            .unwrap();
        let (cert_file, key_file) = origin_pki.write("origin", &issued);
        let drain = Drain::new();
        // The origin (h2 and HTTP/1.1), and one that speaks only HTTP/1.1.
        let mut addrs = Vec::new();
        for alpn in [
            vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            vec![b"http/1.1".to_vec()],
        ] {
            let tls = identity::tls::ReloadableServerConfig::server(ServerTlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: None,
                client_auth: ClientAuth::None,
                client_trust_domain: None,
                alpn,
            })
            .unwrap();
            let listener = BoundListener::bind("origin", "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap()
                .with_tls(tls);
            addrs.push(listener.local_addr());
            tokio::spawn(ingress::echo::serve_listener(
                listener,
                "origin".into(),
                drain.signal(),
            ));
        }
        let (origin, h1_origin) = (addrs[0], addrs[1]);

        let intercept_pki = TestPki::new();
        let port = origin.port();
        let policy = format!(
            "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - https: {{hostnames: [{API}, {ALSO}, {BAD_CERT}], ports: [{port}]}}
  - tls_passthrough: {{hostnames: [{PASS}], ports: [{port}]}}
  - https: {{hostnames: [{H1ONLY}], ports: [{h1_port}]}}
",
            h1_port = h1_origin.port()
        );
        let statics = format!(
            "{API}: [127.0.0.1], {PASS}: [127.0.0.1], {BAD_CERT}: [127.0.0.1], \
             {ALSO}: [127.0.0.1], {DENIED}: [127.0.0.1], {H1ONLY}: [127.0.0.1]"
        );
        let (ca, key, origin_ca) = (
            intercept_pki.ca_file(),
            intercept_pki.path("ca.key"),
            origin_pki.ca_file(),
        );
        let pep = Pep::start_with(&policy, &statics, "exempt: [127.0.0.0/8]", |_| {
            format!(
                "  interception:
    ca_cert_file: {}
    ca_key_file: {}
    leaf_lifetime: 10m
    renew_before: 2m
    upstream:
      system_roots: false
      extra_ca_files: [{}]
",
                ca.display(),
                key.display(),
                origin_ca.display()
            )
        })
        .await;
        Lab {
            pep,
            origin_pki,
            intercept_pki,
            origin,
            h1_origin,
            _origin_drain: drain,
        }
    }

    /// The origin's address with the port every rule names.
    fn target(&self) -> String {
        self.origin.to_string()
    }

    /// A tunnel to the origin's address as `demo/hello`, then TLS inside it with `sni`, ALPN
    /// `alpn`, trusting only `ca_file`.
    async fn inner_tls(&self, sni: &str, alpn: &[&[u8]], ca_file: &Path) -> std::io::Result<Inner> {
        let target = if sni == H1ONLY {
            self.h1_origin.to_string()
        } else {
            self.target()
        };
        let cert = self.pep.actor("hello");
        let (status, body, tunnel) = self.pep.tunnel(&cert, &target).await;
        assert_eq!(status, 200, "CONNECT: {body}");
        let config = tls_client_config(ca_file, alpn, None);
        let name = rustls_pki_types::ServerName::try_from(sni.to_owned()).unwrap();
        within(
            BOUND,
            format!("TLS inside the tunnel to {sni}"),
            tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tunnel),
        )
        .await
    }

    /// [`Lab::inner_tls`] trusting the interception CA.
    async fn intercepted(&self, sni: &str, alpn: &[&[u8]]) -> Inner {
        self.inner_tls(sni, alpn, &self.intercept_pki.ca_file())
            .await
            .unwrap_or_else(|e| panic!("intercepted TLS to {sni}: {e}"))
    }

    async fn statusz(&self) -> Value {
        self.pep.statusz().await
    }
}

/// An HTTP/1.1 client on `io`.
async fn h1<IO>(io: IO) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// An h2 client on `io`.
async fn h2<IO>(io: IO) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>>
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Status, `content-type` and body of a response.
async fn read(resp: http::Response<hyper::body::Incoming>) -> (u16, String) {
    let status = resp.status().as_u16();
    let body = within(BOUND, "a response body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// `GET <path>` with `Host: <host>` over HTTP/1.1.
async fn get_h1(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
    host: &str,
    path: &str,
) -> (u16, String) {
    within(BOUND, format!("GET {path} Host: {host}"), async {
        sender.ready().await.expect("the connection stays open");
        let req = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(Empty::new())
            .unwrap();
        read(sender.send_request(req).await.unwrap()).await
    })
    .await
}

/// The leaf the actor saw: (DNS SANs, issuer DN, seconds from now to `notAfter`).
fn leaf_facts(tls: &Inner) -> (Vec<String>, String, i64) {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let certs = tls.get_ref().1.peer_certificates().expect("a certificate");
    let (_, cert) = X509Certificate::from_der(certs[0].as_ref()).unwrap();
    let sans = cert
        .subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    (
        sans,
        cert.issuer().to_string(),
        cert.validity().not_after.timestamp() - now,
    )
}

/// The subject DN of the CA certificate in `pki`.
fn ca_subject(pki: &TestPki) -> String {
    use x509_parser::prelude::FromDer;
    let der = identity::pem::load_certs(&pki.ca_file()).unwrap();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der[0].as_ref()).unwrap();
    cert.subject().to_string()
}

fn is_request(r: &Value, authority: &str) -> bool {
    r["kind"] == "request" && r["authority"] == authority
}

// ---------------------------------------------------------------------------------------------
// Tests.

/// curl, trusting the interception CA, through the PEP (as in the README's egress lines) to the
/// origin: 200 with the origin's answer; the leaf is for the SNI, signed by the interception CA,
/// and expires within the configured lifetime; the audit has the tunnel (intercepted) and the
/// request (allowed by the `https` rule, with the SNI).
#[tokio::test]
async fn curl_gets_the_origin_through_a_leaf_for_the_sni() {
    let lab = Lab::start().await;
    let cert = lab.pep.actor("hello");
    let port = lab.origin.port();
    let out = within(
        BOUND,
        "curl through the PEP",
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "15", "--proxytunnel", "--proxy"])
            .arg(format!("https://127.0.0.1:{}", lab.pep.addr().port()))
            .arg("--proxy-cacert")
            .arg(lab.pep.pki.ca_file())
            .arg("--proxy-cert")
            .arg(&cert.0)
            .arg("--proxy-key")
            .arg(&cert.1)
            .arg("--cacert")
            .arg(lab.intercept_pki.ca_file())
            .arg("--connect-to")
            .arg(format!("{API}:{port}:127.0.0.1:{port}"))
            .args(["-w", "\n%{http_code} %{http_version}"])
            .arg(format!("https://{API}:{port}/hello"))
            .env_remove("NO_PROXY")
            .env_remove("no_proxy")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        stdout,
        "hello\n\n200 2",
        "curl: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.pep.gw.log_text()
    );

    // The leaf, as an actor sees it.
    let tls = lab.intercepted(API, &[b"http/1.1"]).await;
    let (sans, issuer, expires_in) = leaf_facts(&tls);
    assert_eq!(sans, [API]);
    assert_eq!(issuer, ca_subject(&lab.intercept_pki));
    assert!(
        expires_in > 0 && expires_in <= LEAF_LIFETIME.as_secs() as i64,
        "the leaf expires in {expires_in} s"
    );

    let rec = lab
        .pep
        .audit_record("the request", |r| is_request(r, &format!("{API}:{port}")))
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
    assert_eq!(rec["reason"], "allowed", "{rec}");
    assert_eq!(rec["rule"]["kind"], "https", "{rec}");
    assert_eq!(rec["sni"], API, "{rec}");
    assert_eq!(rec["path"], "/hello", "{rec}");
    assert_eq!(rec["status"], 200, "{rec}");
    let rec = lab
        .pep
        .audit_record("the tunnel", |r| {
            r["kind"] == "tunnel" && r["sni"] == API && r["reason"] == "intercepted"
        })
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
    let status = lab.statusz().await;
    let i = &status["egress"]["interception"];
    assert_eq!(i["leaves_minted"], 1, "{i}");
    assert!(i["ca_not_after"].is_string(), "{i}");
    assert_eq!(i["upstream_roots"], 1, "{i}");
}

/// One HTTP/1.1 connection: each request is decided on its own `Host`; a name no rule allows
/// is 403 and a name the leaf does not cover is 421, and the connection goes on.
#[tokio::test]
async fn requests_on_one_connection_are_decided_one_by_one() {
    let lab = Lab::start().await;
    let port = lab.origin.port();
    let tls = lab.intercepted(API, &[b"http/1.1"]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        Some(b"http/1.1".as_slice())
    );
    let mut sender = h1(tls).await;
    let api = format!("{API}:{port}");
    let (status, body) = get_h1(&mut sender, &api, "/first").await;
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["uri"], "/first", "{echoed}");
    assert_eq!(echoed["worker"], "origin", "{echoed}");
    assert_eq!(
        echoed["headers"],
        serde_json::json!([["host", api]]),
        "the origin sees the actor's Host: {echoed}"
    );
    assert_eq!(
        get_h1(&mut sender, &format!("{DENIED}:{port}"), "/x").await,
        (403, "egress denied".into())
    );
    assert_eq!(
        get_h1(&mut sender, &format!("{ALSO}:{port}"), "/y").await,
        (421, "misdirected request".into())
    );
    let (status, _) = get_h1(&mut sender, &api, "/again").await;
    assert_eq!(status, 200);

    let rec = lab
        .pep
        .audit_record("the denied request", |r| {
            is_request(r, &format!("{DENIED}:{port}"))
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["reason"], "no_matching_rule", "{rec}");
    let rec = lab
        .pep
        .audit_record("the misdirected request", |r| {
            is_request(r, &format!("{ALSO}:{port}"))
        })
        .await;
    assert_eq!(rec["reason"], "not_covered_by_certificate", "{rec}");
    let m = lab.pep.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "actorgate_egress_intercepted_requests_total",
            &[("verdict", "allow")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &m,
            "actorgate_egress_intercepted_requests_total",
            &[("verdict", "deny")]
        ),
        2.0
    );
}

/// h2: streams on one connection are decided one by one. A slow allowed stream completes while
/// a parallel stream for a refused name gets 403, one for a name the leaf does not cover 421,
/// and one whose `Host` disagrees with `:authority` 403.
#[tokio::test]
async fn h2_streams_are_refused_alone_while_a_parallel_stream_completes() {
    let lab = Lab::start().await;
    let port = lab.origin.port();
    let tls = lab.intercepted(API, &[b"h2", b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let sender = h2(tls).await;
    let send = |uri: String, host: Option<String>| {
        let mut s = sender.clone();
        async move {
            let mut req = http::Request::get(uri);
            if let Some(h) = host {
                req = req.header(http::header::HOST, h);
            }
            let resp = within(
                BOUND,
                "an h2 response",
                s.send_request(req.body(Empty::new()).unwrap()),
            )
            .await
            .unwrap();
            read(resp).await
        }
    };
    let slow = tokio::spawn(send(format!("https://{API}:{port}/delay?ms=500"), None));
    let (denied, misdirected, mismatch) = tokio::join!(
        send(format!("https://{DENIED}:{port}/"), None),
        send(format!("https://{ALSO}:{port}/"), None),
        send(
            format!("https://{API}:{port}/"),
            Some(format!("{ALSO}:{port}"))
        ),
    );
    assert_eq!(denied, (403, "egress denied".into()));
    assert_eq!(misdirected, (421, "misdirected request".into()));
    assert_eq!(mismatch, (403, "egress denied".into()));
    assert!(
        !slow.is_finished(),
        "the slow stream ended before the refusals"
    );
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let rec = lab
        .pep
        .audit_record("the mismatched stream", |r| {
            r["kind"] == "request" && r["reason"] == "authority_mismatch"
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
}

/// A tonic client (trusting the interception CA) calls the origin's gRPC service through the
/// PEP: unary, server streaming, and a non-OK status carried in trailers.
#[tokio::test]
async fn grpc_unary_streaming_and_trailers_pass_intercepted() {
    use ingress::echo::proto::EchoRequest;
    use ingress::echo::proto::echo_client::EchoClient;
    let lab = Arc::new(Lab::start().await);
    let port = lab.origin.port();
    let connector = Connector(lab.clone());
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{API}:{port}"))
        .unwrap()
        .connect_with_connector(connector)
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);
    let reply = within(
        BOUND,
        "unary",
        client.unary(EchoRequest {
            message: "hi".into(),
            ..Default::default()
        }),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.worker.as_str()),
        ("hi", "origin")
    );

    let mut stream = within(
        BOUND,
        "server stream",
        client.server_stream(EchoRequest {
            message: "s".into(),
            count: 5,
            fail_code: tonic::Code::ResourceExhausted as i32,
        }),
    )
    .await
    .unwrap()
    .into_inner();
    let mut got = Vec::new();
    let end = loop {
        match within(BOUND, "a streamed reply", stream.message()).await {
            Ok(Some(m)) => got.push(m.index),
            Ok(None) => break None,
            Err(status) => break Some(status),
        }
    };
    assert_eq!(got, [0, 1, 2, 3, 4]);
    let status = end.expect("the stream ends with the status from the trailers");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "requested failure 8");

    let err = within(
        BOUND,
        "a failing unary call",
        client.unary(EchoRequest {
            fail_code: tonic::Code::NotFound as i32,
            ..Default::default()
        }),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let rec = lab
        .pep
        .audit_record("a gRPC request", |r| {
            r["kind"] == "request" && r["path"] == "/actorgate.echo.v1.Echo/Unary"
        })
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
}

/// Connects tonic through the PEP: a tunnel per connection, TLS to the name inside it (ALPN
/// `h2`, trusting the interception CA).
#[derive(Clone)]
struct Connector(Arc<Lab>);

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = TokioIo<Inner>;
    type Error = std::io::Error;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let lab = self.0.clone();
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_owned();
            Ok(TokioIo::new(lab.intercepted(&host, &[b"h2"]).await))
        })
    }
}

/// A WebSocket session through the intercepted connection echoes what it is sent.
#[tokio::test]
async fn a_websocket_session_echoes_through_interception() {
    use tokio_tungstenite::tungstenite::Message;
    let lab = Lab::start().await;
    let port = lab.origin.port();
    let tls = lab.intercepted(API, &[b"http/1.1"]).await;
    let (mut ws, resp) = within(
        BOUND,
        "the WebSocket handshake",
        tokio_tungstenite::client_async(format!("wss://{API}:{port}/ws"), tls),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = within(BOUND, "an echoed message", ws.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(text));
    }
    ws.close(None).await.unwrap();
    let rec = lab
        .pep
        .audit_record("the upgrade", |r| {
            r["kind"] == "request" && r["path"] == "/ws" && r["status"] == 101
        })
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
}

/// An origin whose certificate does not verify for the name: 502 to the actor, the audit
/// reason `upstream_certificate_invalid`, a failure counted.
#[tokio::test]
async fn an_origin_certificate_that_does_not_verify_is_502() {
    let lab = Lab::start().await;
    let port = lab.origin.port();
    let tls = lab.intercepted(BAD_CERT, &[b"http/1.1"]).await;
    let mut sender = h1(tls).await;
    assert_eq!(
        get_h1(&mut sender, &format!("{BAD_CERT}:{port}"), "/").await,
        (502, "egress upstream TLS failed".into())
    );
    let rec = lab
        .pep
        .audit_record("the request", |r| {
            is_request(r, &format!("{BAD_CERT}:{port}"))
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["reason"], "upstream_certificate_invalid", "{rec}");
    let m = lab.pep.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "actorgate_egress_upstream_tls_failures_total",
            &[("reason", "upstream_certificate_invalid")]
        ),
        1.0
    );
}

/// A ClientHello without SNI is denied (no leaf, no upstream); a `tls_passthrough` name is
/// passed through untouched (the actor verifies the origin's real certificate); a name no rule
/// allows is intercepted only to answer `403` (the origin sees no request).
#[tokio::test]
async fn no_sni_passthrough_and_readable_denials() {
    let lab = Lab::start().await;
    let port = lab.origin.port();
    // No SNI: rustls sends none for an IP address.
    let cert = lab.pep.actor("hello");
    let (status, _, tunnel) = lab.pep.tunnel(&cert, &lab.target()).await;
    assert_eq!(status, 200);
    let config = tls_client_config(&lab.intercept_pki.ca_file(), &[b"http/1.1"], None);
    let ip = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let refused = within(
        BOUND,
        "TLS without SNI",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(ip, tunnel),
    )
    .await;
    assert!(refused.is_err(), "a ClientHello without SNI was served");
    let rec = lab
        .pep
        .audit_record("the no-SNI tunnel", |r| {
            r["kind"] == "tunnel" && r["reason"] == "no_sni"
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");

    // Passthrough: only the origin's CA is trusted, and the handshake succeeds.
    let tls = lab
        .inner_tls(PASS, &[b"http/1.1"], &lab.origin_pki.ca_file())
        .await
        .expect("the origin's own certificate");
    let (sans, issuer, _) = leaf_facts(&tls);
    assert!(sans.contains(&PASS.to_owned()), "{sans:?}");
    assert_eq!(issuer, ca_subject(&lab.origin_pki));
    let mut sender = h1(tls).await;
    let (status, body) = get_h1(&mut sender, &format!("{PASS}:{port}"), "/p").await;
    assert_eq!(status, 200, "{body}");

    // A denied name: readable 403, no request at the origin.
    let tls = lab.intercepted(DENIED, &[b"http/1.1"]).await;
    let mut sender = h1(tls).await;
    assert_eq!(
        get_h1(&mut sender, &format!("{DENIED}:{port}"), "/nope").await,
        (403, "egress denied".into())
    );
    let rec = lab
        .pep
        .audit_record("the readable denial", |r| {
            is_request(r, &format!("{DENIED}:{port}"))
        })
        .await;
    assert_eq!(rec["reason"], "no_matching_rule", "{rec}");
    assert_eq!(rec["bytes_up"], 0, "{rec}");
    let rec = lab
        .pep
        .audit_record("the denied tunnel", |r| {
            r["kind"] == "tunnel" && r["sni"] == DENIED
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
}

/// 200 concurrent first connections for one name mint exactly one leaf; a CA rotated on disk
/// signs the next leaves without a restart.
#[tokio::test]
async fn one_leaf_for_two_hundred_first_connections_and_rotation_on_disk() {
    let lab = Arc::new(Lab::start().await);
    let minted = |s: &Value| s["egress"]["interception"]["leaves_minted"].as_u64();
    let before = minted(&lab.statusz().await).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let lab = lab.clone();
        tasks.push(tokio::spawn(async move {
            let tls = lab.intercepted(API, &[b"http/1.1"]).await;
            tls.get_ref().1.peer_certificates().unwrap()[0].clone()
        }));
    }
    let mut leaves = std::collections::HashSet::new();
    for t in tasks {
        leaves.insert(t.await.unwrap());
    }
    assert_eq!(leaves.len(), 1, "one leaf served to all");
    assert_eq!(minted(&lab.statusz().await), Some(before + 1));
    let m = lab.pep.gw.metrics().await;
    assert_eq!(
        metric(&m, "actorgate_egress_intercept_leaves_minted_total", &[]),
        (before + 1) as f64
    );

    // Rotate: a new CA in the same files.
    let next = TestPki::new();
    let dir = lab.intercept_pki.dir().to_path_buf();
    replace_file(
        &dir.join("ca.key"),
        &std::fs::read_to_string(next.path("ca.key")).unwrap(),
    );
    replace_file(&dir.join("ca.crt"), &next.ca_pem());
    let new_ca: PathBuf = next.ca_file();
    lab.pep
        .gw
        .eventually(BOUND, "a leaf from the rotated CA", async || {
            lab.inner_tls(ALSO, &[b"http/1.1"], &new_ca).await.ok()
        })
        .await;
    let mut sender = h1(lab.inner_tls(API, &[b"http/1.1"], &new_ca).await.unwrap()).await;
    let (status, _) = get_h1(&mut sender, &format!("{API}:{}", lab.origin.port()), "/").await;
    assert_eq!(status, 200);
}

/// An actor offering only non-HTTP ALPN protocols inside an intercepted connection is closed,
/// with an audit record saying so.
#[tokio::test]
async fn a_connection_that_is_not_http_is_closed_and_audited() {
    let lab = Lab::start().await;
    let refused = lab
        .inner_tls(API, &[b"imap"], &lab.intercept_pki.ca_file())
        .await;
    if let Ok(mut tls) = refused {
        // TLS 1.3: the alert may arrive after the client's handshake completed.
        let _ = tls.write_all(b"a1 NOOP\r\n").await;
        let mut buf = [0u8; 16];
        let n = within(
            BOUND,
            "the close",
            tokio::io::AsyncReadExt::read(&mut tls, &mut buf),
        )
        .await
        .unwrap_or(0);
        assert_eq!(n, 0, "bytes came back on a non-HTTP connection");
    }
    let rec = lab
        .pep
        .audit_record("the not-HTTP tunnel", |r| {
            r["kind"] == "tunnel" && r["reason"] == "not_http"
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
}

/// Readable denials are bounded per actor: beyond 20 new leaves a minute for denied names, a
/// denied ClientHello for a name without a leaf is closed instead of answered (no key is
/// generated for it); the tunnel record keeps the policy's reason either way.
#[tokio::test]
async fn readable_denials_mint_at_most_twenty_new_leaves_a_minute_per_actor() {
    let lab = Lab::start().await;
    let before = lab.statusz().await["egress"]["interception"]["leaves_minted"]
        .as_u64()
        .unwrap();
    let mut answered = 0;
    for i in 0..25 {
        if lab
            .inner_tls(
                &format!("n{i}.denied.test"),
                &[b"http/1.1"],
                &lab.intercept_pki.ca_file(),
            )
            .await
            .is_ok()
        {
            answered += 1;
        }
    }
    assert_eq!(answered, 20, "readable denials within the budget");
    let minted = lab.statusz().await["egress"]["interception"]["leaves_minted"]
        .as_u64()
        .unwrap();
    assert_eq!(minted - before, 20, "no leaf minted beyond the budget");
    let rec = lab
        .pep
        .audit_record("a denial beyond the budget", |r| {
            r["kind"] == "tunnel" && r["sni"] == "n24.denied.test"
        })
        .await;
    assert_eq!(
        (rec["verdict"].as_str(), rec["reason"].as_str()),
        (Some("deny"), Some("no_matching_rule")),
        "{rec}"
    );
}

/// An h2 actor reaches an origin that speaks only HTTP/1.1: its requests are carried over
/// HTTP/1.1 (the response comes back on h2); gRPC, which needs h2 end to end, gets 502 with the
/// audit reason `upstream_tls_failed`. Hop-by-hop headers never reach the h2 actor.
#[tokio::test]
async fn an_h2_actor_reaches_an_http1_origin_and_grpc_needs_h2() {
    let lab = Lab::start().await;
    let port = lab.h1_origin.port();
    let tls = lab.intercepted(H1ONLY, &[b"h2"]).await;
    let mut sender = h2(tls).await;
    let resp = within(
        BOUND,
        "an h2 request to an HTTP/1.1 origin",
        sender.send_request(
            http::Request::get(format!("https://{H1ONLY}:{port}/v"))
                .body(Empty::new())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert!(
        !resp.headers().contains_key(http::header::CONNECTION),
        "{:?}",
        resp.headers()
    );
    let (status, body) = read(resp).await;
    assert_eq!(status, 200, "{body}");
    let echoed: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echoed["version"], "HTTP/1.1", "{echoed}");

    let grpc = within(
        BOUND,
        "a gRPC request to an HTTP/1.1 origin",
        sender.send_request(
            http::Request::post(format!(
                "https://{H1ONLY}:{port}/actorgate.echo.v1.Echo/Unary"
            ))
            .header(http::header::CONTENT_TYPE, "application/grpc")
            .header(http::header::TE, "trailers")
            .body(Empty::new())
            .unwrap(),
        ),
    )
    .await
    .unwrap();
    let (status, _) = read(grpc).await;
    assert_eq!(status, 502);
    let rec = lab
        .pep
        .audit_record("the gRPC request", |r| {
            r["kind"] == "request" && r["path"] == "/actorgate.echo.v1.Echo/Unary"
        })
        .await;
    assert_eq!(rec["reason"], "upstream_tls_failed", "{rec}");
}
