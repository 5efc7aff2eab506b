//! Trusted peers on the ingress HTTPS listener (issue 14, DESIGN §5 and §7.4): a client whose
//! verified certificate names a SPIFFE ID on `ingress.https.trusted_peers` (an egress PEP) may
//! name the calling actor in `ate-source-actor`, and the worker receives exactly that value;
//! a malformed or repeated value from it is dropped. Everyone else's `ate-source-actor` is
//! stripped: a client with another certificate, one without a certificate, and plaintext HTTP.
//! A trusted peer may also `CONNECT <actor-host>:<port>`: ingress resolves the actor and
//! splices raw bytes to its worker (a TCP echo here); anyone else's CONNECT is refused.

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const PEP_ID: &str = "spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep";

/// Sends `request` and reads the answer until the server closes (the request asks it to; after
/// refusing a CONNECT the server closes without TLS close_notify, which is not an error here).
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, request: &str) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = within(BOUND, "the answer", s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// TLS to `addr` trusting `ca`, with the client certificate `client` if any.
async fn tls(
    ca: &Path,
    addr: SocketAddr,
    client: Option<(&Path, &Path)>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_as(ca, addr, b"http/1.1", client).await
}

/// A request to actor demo/hello carrying `source` headers.
fn request(sources: &[&str]) -> String {
    let mut r = String::from(
        "GET /echo HTTP/1.1\r\nHost: gw\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\
         x-forwarded-client-cert: By=spiffe://evil;URI=spiffe://evil/actor/a/b\r\n\
         x-gateway-destination-endpoint: 10.0.0.1:80\r\n",
    );
    for s in sources {
        r.push_str(&format!("ate-source-actor: {s}\r\n"));
    }
    r.push_str("\r\n");
    r
}

/// The `ate-source-actor` values the echo worker reports having received.
fn seen_sources(answer: &str) -> Vec<String> {
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("a head") + 4..];
    let v: serde_json::Value = serde_json::from_str(body).expect("the echo's JSON");
    // Whoever sent them, these never reach a worker: a trusted peer vouches only for the
    // source actor.
    for gone in ["x-forwarded-client-cert", "x-gateway-destination-endpoint"] {
        assert!(
            !v["headers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h[0] == gone),
            "{gone} reached the worker: {body}"
        );
    }
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h[0] == "ate-source-actor")
        .map(|h| h[1].as_str().unwrap().to_owned())
        .collect()
}

/// A gateway whose HTTPS listener trusts [`PEP_ID`], with actors demo/hello (the echo worker
/// `worker`) and demo/tcp (the TCP echo `tcp`).
async fn gateway(
    pki: &TestPki,
    worker: SocketAddr,
    tcp: SocketAddr,
) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "admin: {{listen: ADMIN_ADDR}}\n\
         ingress:\n  http: {{listen: HTTP_ADDR}}\n  https:\n    listen: HTTPS_ADDR\n    \
         tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca}, client_auth: optional}}\n    \
         trusted_peers: ['{PEP_ID}']\n\
         directory:\n  static:\n    actors:\n    - {{atespace: demo, name: hello, endpoint: '{worker}'}}\n    \
         - {{atespace: demo, name: tcp, endpoint: '{tcp}'}}\n",
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
        ca = pki.ca_file().display(),
    );
    (Gateway::ready(dir.path(), &config).await, dir)
}

#[tokio::test]
async fn only_trusted_peers_name_the_source_actor() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let pki = test_pki(&["actorgate-pep", "other"]);
    let (gw, _dir) = gateway(&pki, worker, worker).await;
    let ca = pki.ca_file();
    let pep = (pki.path("actorgate-pep.crt"), pki.path("actorgate-pep.key"));
    let other = (pki.path("other.crt"), pki.path("other.key"));

    // The trusted PEP: its one valid value reaches the worker.
    let s = tls(&ca, gw.https(), Some((&pep.0, &pep.1))).await;
    let answer = exchange(s, &request(&["demo/caller"])).await;
    assert_eq!(seen_sources(&answer), ["demo/caller"]);
    // ... but not a malformed one, nor two of them.
    for bad in [
        &["not an actor"][..],
        &["demo/a", "demo/b"][..],
        &["demo/a,demo/b"][..],
    ] {
        let s = tls(&ca, gw.https(), Some((&pep.0, &pep.1))).await;
        let answer = exchange(s, &request(bad)).await;
        assert!(seen_sources(&answer).is_empty(), "{bad:?} passed: {answer}");
    }
    // Another certificate from the same CA, no certificate, plaintext: stripped.
    let s = tls(&ca, gw.https(), Some((&other.0, &other.1))).await;
    assert!(seen_sources(&exchange(s, &request(&["demo/caller"])).await).is_empty());
    let s = tls(&ca, gw.https(), None).await;
    assert!(seen_sources(&exchange(s, &request(&["demo/caller"])).await).is_empty());
    let s = TcpStream::connect(gw.http()).await.unwrap();
    assert!(seen_sources(&exchange(s, &request(&["demo/caller"])).await).is_empty());
}

#[tokio::test]
async fn a_trusted_peer_connects_raw_bytes_to_an_actor() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let tcp = common::egress::echo_upstream("127.0.0.1:0").await;
    let pki = test_pki(&["actorgate-pep", "other"]);
    let (gw, _dir) = gateway(&pki, worker, tcp.addr).await;
    let ca = pki.ca_file();
    let pep = (pki.path("actorgate-pep.crt"), pki.path("actorgate-pep.key"));
    let other = (pki.path("other.crt"), pki.path("other.key"));
    let connect = format!(
        "CONNECT tcp.demo.actors.resources.substrate.ate.dev:{port} HTTP/1.1\r\n\
         Host: tcp.demo.actors.resources.substrate.ate.dev:{port}\r\n\r\n",
        port = tcp.addr.port()
    );

    // The trusted PEP: 200, then the worker's bytes both ways, then a clean end.
    let mut s = tls(&ca, gw.https(), Some((&pep.0, &pep.1))).await;
    s.write_all(connect.as_bytes()).await.unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    s.write_all(b"\x00raw actor bytes\xff").await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    within(BOUND, "the echo", s.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"\x00raw actor bytes\xff");
    assert_eq!(tcp.accepted(), 1);

    // An actor that does not exist: the routing error every front gives.
    let mut s = tls(&ca, gw.https(), Some((&pep.0, &pep.1))).await;
    s.write_all(
        b"CONNECT nope.demo.actors.resources.substrate.ate.dev:1 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Another certificate, none, plaintext: refused, and nothing reaches the worker.
    let connect = connect.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let s = tls(&ca, gw.https(), Some((&other.0, &other.1))).await;
    let answer = exchange(s, &connect).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let s = tls(&ca, gw.https(), None).await;
    assert!(exchange(s, &connect).await.starts_with("HTTP/1.1 405"));
    let s = TcpStream::connect(gw.http()).await.unwrap();
    assert!(exchange(s, &connect).await.starts_with("HTTP/1.1 405"));
    assert_eq!(tcp.accepted(), 1, "an untrusted CONNECT reached the worker");
}

/// Reads a response head (up to the blank line), byte by byte so nothing after it is taken.
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = within(BOUND, "a response head", s.read(&mut b))
            .await
            .unwrap();
        assert_eq!(
            n,
            1,
            "closed before the head ended: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// `ResolveRoute`'s `source_actor` (DESIGN §5): a caller whose verified client certificate is on
/// `grpc.trusted_peers` gets its one valid value back in the route (for the worker's
/// `ate-source-actor`); an invalid value from it, and any value from another certificate or a
/// caller without one, comes back empty.
#[tokio::test]
async fn resolve_route_takes_the_source_actor_only_from_trusted_callers() {
    use ingress::router_api::proto::resolve_route_response::Result as Outcome;
    use ingress::router_api::proto::{ResolveRouteRequest, router_client::RouterClient};
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let pki = test_pki(&["actorgate-pep", "other"]);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "admin: {{listen: ADMIN_ADDR}}\ningress: {{enabled: false}}\n\
         grpc:\n  listen: GRPC_ADDR\n  extproc: false\n  \
         tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca}, client_auth: optional}}\n  \
         trusted_peers: ['{PEP_ID}']\n\
         directory:\n  static:\n    actors:\n    - {{atespace: demo, name: hello, endpoint: '{worker}'}}\n",
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
        ca = pki.ca_file().display(),
    );
    let gw = Gateway::ready(dir.path(), &config).await;
    let grpc = gw.grpc();
    let ca_pem = std::fs::read(pki.ca_file()).unwrap();
    let client = |cert: Option<&str>| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&ca_pem))
            .domain_name("localhost");
        if let Some(stem) = cert {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(pki.path(&format!("{stem}.crt"))).unwrap(),
                std::fs::read(pki.path(&format!("{stem}.key"))).unwrap(),
            ));
        }
        async move {
            let ch = within(
                BOUND,
                "gRPC over TLS",
                Channel::from_shared(format!("https://{grpc}"))
                    .unwrap()
                    .timeout(BOUND)
                    .tls_config(tls)
                    .unwrap()
                    .connect(),
            )
            .await
            .unwrap();
            RouterClient::new(ch)
        }
    };
    let ask = |source: &str| ResolveRouteRequest {
        host: "hello.demo.actors.resources.substrate.ate.dev".into(),
        path: "/".into(),
        method: "GET".into(),
        headers: Default::default(),
        source_actor: source.into(),
    };
    let source_of = |resp: ingress::router_api::proto::ResolveRouteResponse| match resp.result {
        Some(Outcome::Route(r)) => {
            assert_eq!(r.actor, "demo/hello");
            r.source_actor
        }
        other => panic!("no route: {other:?}"),
    };
    let mut pep = client(Some("actorgate-pep")).await;
    let got = pep.resolve_route(ask("demo/caller")).await.unwrap();
    assert_eq!(source_of(got.into_inner()), "demo/caller");
    for bad in ["not an actor", "demo/a,demo/b", "demo/"] {
        let got = pep.resolve_route(ask(bad)).await.unwrap();
        assert_eq!(source_of(got.into_inner()), "", "{bad:?} passed");
    }
    for cert in [Some("other"), None] {
        let mut c = client(cert).await;
        let got = c.resolve_route(ask("demo/caller")).await.unwrap();
        assert_eq!(source_of(got.into_inner()), "", "{cert:?} named a source");
    }
}
