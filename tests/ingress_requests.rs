//! Request-shape correctness of the ingress (issue 9: faults 1, 3, 5, 6, 10 and the decisions on
//! conflicting actor references, `TE: trailers` and the header-count limit), end to end against
//! the real binary over real sockets: HTTP/1.1 (raw bytes for malformed input), h2c, h2 over
//! TLS, and the other fronts that read the same input (`/resolve`, ResolveRoute, ExtProc).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioExecutor;
use ingress::router_api::proto::ResolveRouteRequest;
use ingress::router_api::proto::resolve_route_response::Result as Resolved;
use ingress::router_api::proto::router_client::RouterClient;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUFFIX: &str = "actors.resources.substrate.ate.dev";
const T: Duration = Duration::from_secs(10);

/// A gateway over a static directory (demo/hello and demo/other on `worker`), with an HTTPS
/// listener (h2 over TLS) whose CA is in the returned directory.
struct Gw {
    dir: tempfile::TempDir,
    _gw: Gateway,
    cfg: TestConfig,
    https: SocketAddr,
}

async fn start(worker: SocketAddr, extra: &str) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let ca =
        identity::devca::DevCa::generate("requests test CA", Duration::from_secs(86400)).unwrap();
    ca.write_dir(dir.path()).unwrap();
    ca.issue_server(
        &["localhost".into()],
        &["127.0.0.1".parse().unwrap()],
        Duration::from_secs(86400),
    )
    .unwrap()
    .write(dir.path(), "server")
    .unwrap();
    let https: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let body = format!(
        "admin: {{listen: ADMIN_ADDR}}\n{extra}\n\
         ingress:\n  http: {{listen: HTTP_ADDR}}\n  https:\n    listen: '{https}'\n    tls: {{cert_file: server.crt, key_file: server.key}}\n\
         directory:\n  static:\n    actors:\n\
         \x20   - {{atespace: demo, name: hello, endpoint: '{worker}'}}\n\
         \x20   - {{atespace: demo, name: other, endpoint: '{worker}'}}\n"
    );
    let cfg = write_config(dir.path(), &body);
    let gw = Gateway::start(&cfg.path, cfg.admin).await;
    gw.wait_ready().await;
    Gw {
        dir,
        _gw: gw,
        cfg,
        https,
    }
}

/// Sends raw bytes, reads until the server closes (bounded).
async fn raw(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(T, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The JSON the echo worker answered with, from a raw HTTP/1.1 response.
fn echo_json(resp: &str) -> serde_json::Value {
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let start = body
        .find('{')
        .unwrap_or_else(|| panic!("no JSON in {resp}"));
    let end = body
        .rfind('}')
        .unwrap_or_else(|| panic!("no JSON in {resp}"));
    serde_json::from_str(&body[start..=end]).unwrap_or_else(|e| panic!("{e}: {resp}"))
}

fn seen<'a>(v: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p[0] == name)
        .map(|p| p[1].as_str().unwrap())
        .collect()
}

/// A client whose body is streamed with no length (h2: DATA frames without content-length).
type StreamedBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn streamed(chunks: Vec<Result<&'static [u8], std::io::Error>>) -> StreamedBody {
    let frames = chunks
        .into_iter()
        .map(|c| c.map(|b| Frame::data(Bytes::from_static(b))));
    BodyExt::boxed(StreamBody::new(futures_util::stream::iter(frames)))
}

/// Which HTTP/2 path to take: h2c prior knowledge, or h2 over TLS (ALPN).
#[derive(Clone, Copy, Debug)]
enum H2 {
    Clear,
    Tls,
}

/// Sends one request over a fresh HTTP/2 connection (hyper's connection-level client, so the
/// URI's authority, userinfo included, is exactly the `:authority` sent) → (status, body), or
/// the client error text.
async fn h2_send(
    g: &Gw,
    path: H2,
    req: http::Request<StreamedBody>,
) -> Result<(u16, String), String> {
    let (status, body) = match path {
        H2::Clear => {
            let tcp = tokio::net::TcpStream::connect(g.cfg.http).await.unwrap();
            h2_on(hyper_util::rt::TokioIo::new(tcp), req).await?
        }
        H2::Tls => {
            let mut roots = rustls::RootCertStore::empty();
            for c in identity::pem::load_certs(&g.dir.path().join("ca.crt")).unwrap() {
                roots.add(c).unwrap();
            }
            let mut tls = rustls::ClientConfig::builder_with_provider(identity::tls::provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
            tls.alpn_protocols = vec![b"h2".to_vec()];
            let tcp = tokio::net::TcpStream::connect(g.https).await.unwrap();
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
                .connect(name, tcp)
                .await
                .unwrap();
            h2_on(hyper_util::rt::TokioIo::new(stream), req).await?
        }
    };
    Ok((status, body))
}

async fn h2_on<IO>(io: IO, req: http::Request<StreamedBody>) -> Result<(u16, String), String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = tokio::time::timeout(
        T,
        hyper::client::conn::http2::handshake(TokioExecutor::new(), io),
    )
    .await
    .expect("h2 handshake in time")
    .expect("h2 handshake");
    tokio::spawn(conn);
    let resp = tokio::time::timeout(T, send.send_request(req))
        .await
        .expect("answer in time")
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = tokio::time::timeout(T, resp.into_body().collect())
        .await
        .expect("body in time")
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The `actorgate_ingress_requests_total` sample of a class and outcome.
async fn requests_metric(admin: SocketAddr, class: &str, outcome: &str) -> f64 {
    let (_, text) = common::get(admin, "/metrics").await.unwrap();
    parse_metrics(&text)
        .samples
        .iter()
        .find(|s| {
            s.metric == "actorgate_ingress_requests_total"
                && s.labels.get("class") == Some(class)
                && s.labels.get("outcome") == Some(outcome)
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => -1.0,
        })
        .unwrap_or(0.0)
}

/// Polls until the metric reaches `at_least` (bounded).
async fn wait_metric(admin: SocketAddr, class: &str, outcome: &str, at_least: f64) {
    let deadline = Instant::now() + T;
    loop {
        let v = requests_metric(admin, class, outcome).await;
        if v >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{class}/{outcome} stayed at {v}, expected >= {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// ExtProc `request_headers` through the gateway's gRPC listener; returns the HTTP status of the
/// immediate response, or 0 when the request was routed.
async fn extproc_status(grpc: SocketAddr, headers: &[(&str, &str)]) -> (u32, String) {
    let mut client =
        ep::external_processor_client::ExternalProcessorClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
    let req = ep::ProcessingRequest {
        request: Some(ep::processing_request::Request::RequestHeaders(
            ep::HttpHeaders {
                headers: Some(core::HeaderMap {
                    headers: headers
                        .iter()
                        .map(|(k, v)| core::HeaderValue {
                            key: (*k).to_owned(),
                            raw_value: v.as_bytes().to_vec(),
                            ..Default::default()
                        })
                        .collect(),
                }),
                end_of_stream: true,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let mut answers =
        tokio::time::timeout(T, client.process(futures_util::stream::iter(vec![req])))
            .await
            .unwrap()
            .unwrap()
            .into_inner();
    let first = tokio::time::timeout(T, answers.message())
        .await
        .unwrap()
        .unwrap()
        .expect("an answer");
    match first.response {
        Some(ep::processing_response::Response::ImmediateResponse(i)) => (
            i.status.map(|s| s.code as u32).unwrap_or_default(),
            String::from_utf8_lossy(&i.body).into_owned(),
        ),
        Some(ep::processing_response::Response::RequestHeaders(_)) => (0, String::new()),
        other => panic!("{other:?}"),
    }
}

/// ResolveRoute through the gateway's gRPC listener → (http status or 0 for a route, message).
async fn resolve_route(grpc: SocketAddr, host: &str, headers: &[(&str, &str)]) -> (u32, String) {
    let mut c = RouterClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let answer = tokio::time::timeout(
        T,
        c.resolve_route(ResolveRouteRequest {
            host: host.to_owned(),
            path: "/".into(),
            method: "GET".into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }),
    )
    .await
    .unwrap()
    .unwrap();
    match answer.into_inner().result.unwrap() {
        Resolved::Route(r) => (0, r.actor),
        Resolved::Error(e) => (e.http_status, e.message),
    }
}

/// Fault 1: `OPTIONS *` is forwarded in asterisk form, answered by the worker, and never
/// invalidates the cached route (20 requests → one control-plane lookup); other methods may not
/// use `*`.
#[tokio::test]
async fn asterisk_form_is_forwarded_and_keeps_the_cached_route() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/hello",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\nresolver: {{budget: 2s}}\ndirectory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
            fake.addr
        ),
    );
    let gw = Gateway::start(&cfg.path, cfg.admin).await;
    gw.wait_ready().await;
    let host = format!("hello.demo.{SUFFIX}:{}", worker.port());
    for i in 0..20 {
        let r = raw(
            cfg.http,
            format!("OPTIONS * HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "request {i}: {r}");
        assert_eq!(
            echo_json(&r)["uri"],
            "*",
            "asterisk form reached the worker"
        );
        assert_eq!(echo_json(&r)["method"], "OPTIONS");
    }
    let lookups =
        fake.calls(Method::GetActor, "demo/hello") + fake.calls(Method::ResumeActor, "demo/hello");
    assert_eq!(lookups, 1, "20 asterisk requests, one control-plane lookup");
    let r = raw(
        cfg.http,
        format!("GET * HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
}

/// Fault 3: a body of unknown length reaches the worker intact whatever the method, over
/// HTTP/1.1 (chunked), h2c and h2 over TLS (DATA without content-length).
#[tokio::test]
async fn a_body_of_unknown_length_reaches_the_worker_for_every_method() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(worker, "").await;
    for method in ["GET", "DELETE", "OPTIONS", "POST", "PUT"] {
        let r = raw(
            g.cfg.http,
            format!(
                "{method} /upload HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\n\
                 transfer-encoding: chunked\r\nconnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{method}: {r}");
        assert!(
            r.contains("{\"bytes\":3}"),
            "{method}: the worker got 3 bytes: {r}"
        );
    }
    for path in [H2::Clear, H2::Tls] {
        let req = http::Request::get("http://gateway.example/upload")
            .header("ate-target-actor", "demo/hello")
            .body(streamed(vec![Ok(b"ab"), Ok(b"c")]))
            .unwrap();
        let answer = h2_send(&g, path, req).await;
        assert_eq!(
            answer,
            Ok((200, "{\"bytes\":3}".to_owned())),
            "{path:?} GET"
        );
    }
}

/// Fault 5: two Host lines, or an invalid Host value, are a 400 on the proxy and `/resolve`;
/// an invalid or repeated authority is a 400 through ResolveRoute and ExtProc too.
#[tokio::test]
async fn repeated_or_invalid_host_is_a_400_on_every_front() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(worker, "").await;
    let hello = format!("hello.demo.{SUFFIX}");
    let other = format!("other.demo.{SUFFIX}");
    for (a, b) in [(&hello, &other), (&other, &hello)] {
        let r = raw(
            g.cfg.http,
            format!("GET / HTTP/1.1\r\nhost: {a}\r\nhost: {b}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert!(r.ends_with("multiple host values"), "{r}");
        let r = raw(
            g.cfg.admin,
            format!("GET /resolve HTTP/1.1\r\nhost: {a}\r\nhost: {b}\r\nconnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "/resolve: {r}");
        assert!(!r.contains("x-gateway-destination-endpoint"), "{r}");
    }
    let r = raw(
        g.cfg.http,
        b"GET / HTTP/1.1\r\nhost: [::1\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "invalid Host forwarded: {r}");
    assert!(r.ends_with("invalid host"), "{r}");
    let (s, m) = common::get_with(
        g.cfg.admin,
        "/resolve",
        &[
            ("x-forwarded-host", "[::1"),
            ("ate-target-actor", "demo/hello"),
        ],
    )
    .await
    .unwrap();
    assert_eq!((s, m.as_str()), (400, "invalid host"), "/resolve");
    let (s, m) = resolve_route(g.cfg.grpc, "[::1", &[("ate-target-actor", "demo/hello")]).await;
    assert_eq!((s, m.as_str()), (400, "invalid host"), "ResolveRoute");
    let (s, m) = extproc_status(
        g.cfg.grpc,
        &[(":authority", &hello), (":authority", &other)],
    )
    .await;
    assert_eq!((s, m.as_str()), (400, "multiple host values"), "ExtProc");
    let (s, m) = extproc_status(
        g.cfg.grpc,
        &[(":authority", "[::1"), ("ate-target-actor", "demo/hello")],
    )
    .await;
    assert_eq!((s, m.as_str()), (400, "invalid host"), "ExtProc");
}

/// Fault 6: userinfo in the request target or `:authority` is a 400 and never reaches the
/// worker (HTTP/1.1 absolute form, h2c, h2 over TLS, `/resolve`, ResolveRoute, ExtProc);
/// authority form outside CONNECT and non-http(s) schemes are a 400.
#[tokio::test]
async fn userinfo_authority_form_and_foreign_schemes_are_refused() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(worker, "").await;
    let hello = format!("hello.demo.{SUFFIX}");
    for (target, want) in [
        (
            format!("http://user:pw@{hello}/"),
            "userinfo is not allowed in the authority",
        ),
        (
            format!("{hello}:80"),
            "authority-form request target is only for CONNECT",
        ),
        (format!("ftp://{hello}/"), "unsupported scheme"),
    ] {
        let r = raw(
            g.cfg.http,
            format!(
                "GET {target} HTTP/1.1\r\nhost: {hello}\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{target}: {r}");
        assert!(r.ends_with(want), "{target}: {r}");
        assert!(!r.contains("user:pw"), "{r}");
    }
    for path in [H2::Clear, H2::Tls] {
        let req = http::Request::get(format!("http://user:pw@{hello}/"))
            .header("ate-target-actor", "demo/hello")
            .body(streamed(vec![]))
            .unwrap();
        let answer = h2_send(&g, path, req).await;
        assert_eq!(
            answer,
            Ok((400, "userinfo is not allowed in the authority".to_owned())),
            "{path:?}"
        );
    }
    let with_userinfo = format!("user:pw@{hello}");
    let (s, _) = common::get_with(
        g.cfg.admin,
        "/resolve",
        &[("x-forwarded-host", &with_userinfo)],
    )
    .await
    .unwrap();
    assert_eq!(s, 400, "/resolve");
    let (s, _) = resolve_route(g.cfg.grpc, &with_userinfo, &[]).await;
    assert_eq!(s, 400, "ResolveRoute");
    let (s, _) = extproc_status(g.cfg.grpc, &[(":authority", &with_userinfo)]).await;
    assert_eq!(s, 400, "ExtProc");
}

/// Fault 10: a malformed client body is the client's error (400, `client_error`), never a
/// worker error, over HTTP/1.1 (bad chunk size; fewer bytes than Content-Length, then the
/// client closes its side) and HTTP/2 (the client resets the stream mid-body).
#[tokio::test]
async fn a_malformed_client_body_is_a_client_error_not_a_worker_error() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(worker, "").await;
    let admin = g.cfg.admin;
    let r = raw(
        g.cfg.http,
        b"POST /upload HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\n\
          transfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.ends_with("malformed request body"), "{r}");
    wait_metric(admin, "4xx", "client_error", 1.0).await;

    let mut s = tokio::net::TcpStream::connect(g.cfg.http).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\ncontent-length: 10\r\n\r\nabc",
    )
    .await
    .unwrap();
    s.shutdown().await.unwrap();
    wait_metric(admin, "4xx", "client_error", 2.0).await;

    // h2c: two DATA frames, then the client's body fails and the stream is reset.
    let req = http::Request::post(format!("http://{}/upload", g.cfg.http))
        .header("ate-target-actor", "demo/hello")
        .body(streamed(vec![
            Ok(b"abc"),
            Err(std::io::Error::other("client gives up")),
        ]))
        .unwrap();
    let sent = h2_send(&g, H2::Clear, req).await;
    assert!(matches!(sent, Err(_) | Ok((400, _))), "{sent:?}");
    // A later good request is counted; by then the reset request has been counted if at all.
    let before = requests_metric(admin, "2xx", "proxied").await;
    let (s, _) = common::get_with(g.cfg.http, "/hello", &[("ate-target-actor", "demo/hello")])
        .await
        .unwrap();
    assert_eq!(s, 200);
    wait_metric(admin, "2xx", "proxied", before + 1.0).await;
    assert_eq!(
        requests_metric(admin, "5xx", "upstream_error").await,
        0.0,
        "no malformed client body is counted against the worker"
    );
}

/// Decision A: `ate-target-actor` and an actor Host naming different actors are refused with
/// 400 on every front; the same actor in both is fine.
#[tokio::test]
async fn conflicting_actor_references_are_refused_on_every_front() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(worker, "").await;
    let hello = format!("hello.demo.{SUFFIX}");
    let r = raw(
        g.cfg.http,
        format!(
            "GET / HTTP/1.1\r\nhost: {hello}\r\nate-target-actor: demo/other\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.ends_with("conflicting actor references"), "{r}");
    let r = raw(
        g.cfg.http,
        format!(
            "GET / HTTP/1.1\r\nhost: {hello}\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "the same actor twice: {r}");
    for path in [H2::Clear, H2::Tls] {
        let req = http::Request::get(format!("http://{hello}/"))
            .header("ate-target-actor", "demo/other")
            .body(streamed(vec![]))
            .unwrap();
        let answer = h2_send(&g, path, req).await;
        assert_eq!(
            answer,
            Ok((400, "conflicting actor references".to_owned())),
            "{path:?}"
        );
    }
    let (s, m) = common::get_with(
        g.cfg.admin,
        "/resolve",
        &[
            ("x-forwarded-host", &hello),
            ("ate-target-actor", "demo/other"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        (s, m.as_str()),
        (400, "conflicting actor references"),
        "/resolve"
    );
    let (s, m) = resolve_route(g.cfg.grpc, &hello, &[("ate-target-actor", "demo/other")]).await;
    assert_eq!(
        (s, m.as_str()),
        (400, "conflicting actor references"),
        "ResolveRoute"
    );
    let (s, m) = extproc_status(
        g.cfg.grpc,
        &[(":authority", &hello), ("ate-target-actor", "demo/other")],
    )
    .await;
    assert_eq!(
        (s, m.as_str()),
        (400, "conflicting actor references"),
        "ExtProc"
    );
}

/// Decision A, the documented opt-out: `routing.conflicting_actors: first_extractor_wins`
/// restores "the first extractor that finds an actor decides".
#[tokio::test]
async fn first_extractor_wins_is_a_setting() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(
        worker,
        "routing: {conflicting_actors: first_extractor_wins}",
    )
    .await;
    let hello = format!("hello.demo.{SUFFIX}");
    let r = raw(
        g.cfg.http,
        format!(
            "GET / HTTP/1.1\r\nhost: {hello}\r\nate-target-actor: demo/other\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(seen(&echo_json(&r), "ate-target-actor"), ["demo/other"]);
    let (s, m) = resolve_route(g.cfg.grpc, &hello, &[("ate-target-actor", "demo/other")]).await;
    assert_eq!((s, m.as_str()), (0, "demo/other"));
}

/// Decision B: `TE: trailers` with `Connection: TE` (the form RFC 9110 requires) keeps
/// `te: trailers` to the worker.
#[tokio::test]
async fn te_trailers_named_in_connection_reaches_the_worker() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start(worker, "").await;
    let r = raw(
        g.cfg.http,
        b"GET / HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\nte: trailers\r\nconnection: TE, close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert_eq!(seen(&echo_json(&r), "te"), ["trailers"]);
}

/// Decision C: the header-count limit counts the headers actorgate adds, so a client near the
/// limit gets actorgate's 431, not a worker's answer to a request past the limit.
#[tokio::test]
async fn the_header_count_limit_counts_the_headers_actorgate_adds() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let g = start_limited(worker, 20).await;
    let head = |n: usize| {
        let mut h = String::from(
            "GET / HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\nconnection: close\r\n",
        );
        for i in 0..n {
            h.push_str(&format!("x-filler-{i}: 1\r\n"));
        }
        h.push_str("\r\n");
        h
    };
    // 3 + 15 = 18 client headers (within 20); actorgate adds x-forwarded-for, -proto, -host,
    // forwarded and x-request-id (connection goes): 22.
    let r = raw(g.cfg.http, head(15).as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    assert!(r.ends_with("too many request headers"), "{r}");
    assert!(!r.contains("x-echo-worker"), "the worker never saw it: {r}");
    let r = raw(g.cfg.http, head(10).as_bytes()).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

async fn start_limited(worker: SocketAddr, max_headers: usize) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let body = format!(
        "admin: {{listen: ADMIN_ADDR}}\n\
         ingress:\n  http: {{listen: HTTP_ADDR}}\n  limits: {{max_headers: {max_headers}}}\n\
         directory:\n  static:\n    actors:\n\
         \x20   - {{atespace: demo, name: hello, endpoint: '{worker}'}}\n"
    );
    let cfg = write_config(dir.path(), &body);
    let gw = Gateway::start(&cfg.path, cfg.admin).await;
    gw.wait_ready().await;
    Gw {
        dir,
        _gw: gw,
        cfg,
        https: "127.0.0.1:0".parse().unwrap(),
    }
}
