//! The ingress HTTP proxy end to end: real `actorgate serve`, real echo workers, real sockets.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method, Step};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUFFIX: &str = "actors.resources.substrate.ate.dev";

fn static_config(worker: SocketAddr, extra: &str) -> String {
    format!(
        "admin: {{listen: ADMIN_ADDR}}\n{extra}\ndirectory:\n  static:\n    actors:\n\
         \x20   - {{atespace: demo, name: hello, endpoint: '{worker}'}}\n\
         \x20   - {{atespace: default, name: legacy, endpoint: '{worker}'}}\n"
    )
}

async fn start(body: &str) -> (tempfile::TempDir, Gateway) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(dir.path(), body).await;
    (dir, gw)
}

type Resp = (u16, http::HeaderMap, Bytes);

async fn send(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    req: http::Request<Full<Bytes>>,
) -> Resp {
    let what = format!("{} {}", req.method(), req.uri());
    within(BOUND, &what, async {
        let resp = client
            .request(req)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    })
    .await
}

fn h1() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn seen_headers(body: &Bytes) -> Vec<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    serde_json::from_value(v["headers"].clone()).unwrap()
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    h.iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

#[tokio::test]
async fn every_addressing_form_reaches_the_worker_with_proxy_headers() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let host_form = format!("hello.demo.{SUFFIX}:8080");
    let legacy_form = format!("legacy.{SUFFIX}");
    // (request headers, Host the worker must see, actor)
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![
                ("host", "gateway.example:8080"),
                ("ate-target-actor", "demo/hello"),
            ],
            "gateway.example:8080",
            "demo/hello",
        ),
        (vec![("host", &host_form)], &host_form, "demo/hello"),
        (vec![("host", &legacy_form)], &legacy_form, "default/legacy"),
    ];
    for (extra, want_host, actor) in cases {
        let mut headers = extra.clone();
        headers.extend([
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "Basic eDp5"),
            ("ate-source-actor", "evil/impostor"),
            ("x-forwarded-client-cert", "By=spiffe://evil"),
            ("x-request-id", "req-123"),
        ]);
        let (status, resp_headers, body) = send(&h1(), get(gw.http(), "/echo?x=1", &headers)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(resp_headers["x-request-id"], "req-123");
        let seen = seen_headers(&body);
        assert_eq!(
            header(&seen, "host"),
            [want_host],
            "original Host preserved"
        );
        assert_eq!(header(&seen, "ate-target-actor"), [actor]);
        assert_eq!(header(&seen, "x-forwarded-for"), ["127.0.0.1"]);
        assert_eq!(header(&seen, "x-forwarded-proto"), ["http"]);
        assert_eq!(header(&seen, "x-forwarded-host"), [want_host]);
        assert_eq!(
            header(&seen, "forwarded"),
            [format!("for=127.0.0.1;proto=http;host=\"{want_host}\"").as_str()]
        );
        assert_eq!(header(&seen, "x-request-id"), ["req-123"]);
        for gone in [
            "connection",
            "x-hop",
            "keep-alive",
            "proxy-authorization",
            "ate-source-actor",
            "x-forwarded-client-cert",
        ] {
            assert!(
                header(&seen, gone).is_empty(),
                "{gone} reached the worker: {seen:?}"
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["uri"], "/echo?x=1");
    }
    // A request without a usable id gets a generated one, on both sides.
    let (_, h, body) = send(
        &h1(),
        get(gw.http(), "/", &[("ate-target-actor", "demo/hello")]),
    )
    .await;
    let id = h["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert_eq!(header(&seen_headers(&body), "x-request-id"), [id.as_str()]);
}

#[tokio::test]
async fn h2c_and_h2_over_tls_reach_the_worker() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    write_test_ca(dir.path());
    let extra = "ingress:\n  http: {listen: HTTP_ADDR}\n  https:\n    listen: HTTPS_ADDR\n    tls: {cert_file: server.crt, key_file: server.key}\n";
    let gw = Gateway::ready(dir.path(), &static_config(worker, extra)).await;

    // h2c, prior knowledge.
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let resp = within(
        BOUND,
        "h2c request",
        h2c.request(get(gw.http(), "/", &[("ate-target-actor", "demo/hello")])),
    )
    .await
    .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = within(BOUND, "h2c body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(header(&seen_headers(&body), "x-forwarded-proto"), ["http"]);

    // h2 over TLS (ALPN), authority form.
    let tls = tls_client_config(&dir.path().join("ca.crt"), &[], None);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http2()
        .build();
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let req = http::Request::get(format!("https://localhost:{}/", gw.https().port()))
        .header("ate-target-actor", "demo/hello")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = within(BOUND, "h2 over TLS request", client.request(req))
        .await
        .unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = within(BOUND, "h2 over TLS body", resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(header(&seen_headers(&body), "x-forwarded-proto"), ["https"]);
}

#[tokio::test]
async fn server_sent_events_arrive_chunk_by_chunk() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{}/sse?events=3&interval_ms=400", gw.http()))
        .header("ate-target-actor", "demo/hello")
        .body(Empty::new())
        .unwrap();
    let mut body = within(BOUND, "SSE response", client.request(req))
        .await
        .unwrap()
        .into_body();
    let first = within(BOUND, "the first event", body.frame())
        .await
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    let first = String::from_utf8_lossy(&first).into_owned();
    assert!(first.contains("id: 0"), "{first}");
    assert!(
        !first.contains("id: 1"),
        "the first event came alone, before the worker produced the next: {first}"
    );
    let rest = within(BOUND, "the other events", body.collect())
        .await
        .unwrap()
        .to_bytes();
    assert!(String::from_utf8_lossy(&rest).contains("id: 2"));
}

fn rss_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// A proxy that buffered a body would grow by at least its size (200 MiB). The bound is half of
/// that: far above what streaming costs (pools, buffers, allocator arenas: a few MiB, however
/// loaded the machine), far below what buffering would. Memory use is measured in the benchmark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_through_in_bounded_memory() {
    const SIZE: u64 = 200 * 1024 * 1024;
    const BOUND_MB: u64 = SIZE / 2 / (1024 * 1024);
    const TRANSFER: Duration = Duration::from_secs(180);
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let pid = gw.child.as_ref().unwrap().id();
    // Warm up (pools, first route), then take the idle baseline.
    send(
        &h1(),
        get(gw.http(), "/hello", &[("ate-target-actor", "demo/hello")]),
    )
    .await;
    let idle = rss_kb(pid, "VmRSS:");

    let chunk = Bytes::from(vec![7u8; 256 * 1024]);
    let chunks = (SIZE / chunk.len() as u64) as usize;
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(Frame::data(chunk.clone()))),
    );
    let client: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::post(format!("http://{}/upload", gw.http()))
        .header("ate-target-actor", "demo/hello")
        .body(StreamBody::new(stream))
        .unwrap();
    let body = within(TRANSFER, "200 MiB upload", async {
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    })
    .await;
    assert_eq!(
        String::from_utf8_lossy(&body),
        format!("{{\"bytes\":{SIZE}}}")
    );

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{}/bytes?n={SIZE}", gw.http()))
        .header("ate-target-actor", "demo/hello")
        .body(Empty::new())
        .unwrap();
    let got = within(TRANSFER, "200 MiB download", async {
        let mut body = client.request(req).await.unwrap().into_body();
        let mut got = 0u64;
        while let Some(f) = body.frame().await {
            got += f.unwrap().into_data().map(|d| d.len() as u64).unwrap_or(0);
        }
        got
    })
    .await;
    assert_eq!(got, SIZE);
    let peak = rss_kb(pid, "VmHWM:");
    let grew_mb = peak.saturating_sub(idle) / 1024;
    eprintln!(
        "proxy RSS: idle {} MiB, peak {} MiB",
        idle / 1024,
        peak / 1024
    );
    assert!(
        grew_mb < BOUND_MB,
        "proxy memory grew {grew_mb} MiB over idle for 2 × 200 MiB (bound {BOUND_MB} MiB)"
    );
}

#[tokio::test]
async fn websocket_echo_through_the_proxy() {
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let mut req = format!("ws://{}/ws", gw.http())
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("ate-target-actor", "demo/hello".parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    let (mut ws, resp) = within(
        BOUND,
        "WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("hello {i}"))).await.unwrap();
        assert_eq!(
            within(BOUND, "WebSocket echo", ws.next())
                .await
                .unwrap()
                .unwrap(),
            Message::text(format!("hello {i}"))
        );
    }
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(
        within(BOUND, "WebSocket echo", ws.next())
            .await
            .unwrap()
            .unwrap(),
        Message::binary(vec![1u8, 2, 3])
    );
    within(BOUND, "WebSocket close", ws.close(None))
        .await
        .unwrap();
}

#[tokio::test]
async fn grpc_unary_streaming_bidi_and_error_status_through_the_proxy() {
    use ingress::echo::proto::EchoRequest;
    use ingress::echo::proto::echo_client::EchoClient;
    let (worker, _w) = echo_worker("127.0.0.1:0", "grpc-worker").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let channel = grpc_channel(gw.http()).await;
    let mut c = EchoClient::with_interceptor(channel, |mut r: tonic::Request<()>| {
        r.metadata_mut()
            .insert("ate-target-actor", "demo/hello".parse().unwrap());
        Ok(r)
    });
    let req = |m: &str, count: i32, fail: i32| EchoRequest {
        message: m.into(),
        count,
        fail_code: fail,
    };
    let r = c.unary(req("hi", 0, 0)).await.unwrap().into_inner();
    assert_eq!(
        (r.message.as_str(), r.worker.as_str()),
        ("hi", "grpc-worker")
    );

    // The channel bounds each call's head; the streamed messages are bounded here.
    let mut s = c.server_stream(req("s", 5, 0)).await.unwrap().into_inner();
    let mut n = 0;
    while let Some(m) = within(BOUND, "a server-stream message", s.message())
        .await
        .unwrap()
    {
        assert_eq!(m.index, n);
        n += 1;
    }
    assert_eq!(n, 5);

    let outbound = futures_util::stream::iter((0..3).map(move |i| req(&format!("b{i}"), 0, 0)));
    let mut b = c.bidi(outbound).await.unwrap().into_inner();
    let mut got = vec![];
    while let Some(m) = within(BOUND, "a bidi message", b.message()).await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, ["b0", "b1", "b2"]);

    let err = c.unary(req("x", 0, 9)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert_eq!(err.message(), "requested failure 9");
    // A non-OK status after messages arrives in the trailers.
    let mut s = c.server_stream(req("t", 2, 5)).await.unwrap().into_inner();
    for _ in 0..2 {
        assert!(
            within(BOUND, "a message before the error", s.message())
                .await
                .unwrap()
                .is_some()
        );
    }
    let err = within(BOUND, "the error in the trailers", s.message())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

fn ateapi_config(fake: &FakeControlPlane, budget: &str) -> String {
    format!(
        "admin: {{listen: ADMIN_ADDR}}\nresolver: {{budget: {budget}, backoff: {{initial: 20ms, max: 50ms}}}}\n\
         directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
        fake.addr
    )
}

#[tokio::test]
async fn routing_errors_answer_with_the_table() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let port = worker.port();
    let mut fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/sleepy",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::from_millis(700),
    );
    fake.add_actor(
        "ns/stuck",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::ZERO,
    );
    fake.script(Method::ResumeActor, "ns/stuck", [Step::Hang]);
    let (_d, gw) = start(&ateapi_config(&fake, "2s")).await;
    let host = |a: &str| format!("{a}.ns.{SUFFIX}:{port}");

    let (s, h, b) = send(&h1(), get(gw.http(), "/", &[("host", &host("ghost"))])).await;
    assert_eq!(
        (s, String::from_utf8_lossy(&b).as_ref()),
        (404, "actor ns/ghost not found")
    );
    assert_eq!(h["content-type"], "text/plain; charset=utf-8");
    let (s, _, b) = send(&h1(), get(gw.http(), "/", &[("host", "example.com")])).await;
    assert_eq!(
        (s, String::from_utf8_lossy(&b).as_ref()),
        (404, "invalid actor reference")
    );

    // Suspended behind a slow resume: the request waits, then reaches the worker.
    let (s, h, _) = send(
        &h1(),
        get(gw.http(), "/hello", &[("host", &host("sleepy"))]),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["x-echo-worker"], "w1");
    assert_eq!(fake.calls(Method::ResumeActor, "ns/sleepy"), 1);

    let (s, _, b) = send(&h1(), get(gw.http(), "/", &[("host", &host("stuck"))])).await;
    assert_eq!(
        (s, String::from_utf8_lossy(&b).as_ref()),
        (504, "actor ns/stuck request timed out")
    );

    // Control plane down: 503. The stopped fake may still finish the connection the gateway
    // holds, so poll, each time with an actor never asked for before (nothing cached) and
    // running if the fake still answered; what is answered before it is gone is not asserted.
    fake.stop();
    let mut n = 0;
    gw.eventually(BOUND, "control plane down read as 503", async || {
        n += 1;
        let name = format!("later{n}");
        fake.add_actor(
            &format!("ns/{name}"),
            ActorState::Running,
            "127.0.0.1",
            Duration::ZERO,
        );
        let (s, _, b) = send(&h1(), get(gw.http(), "/", &[("host", &host(&name))])).await;
        let b = String::from_utf8_lossy(&b);
        if s == 503 {
            assert_eq!(b, format!("actor ns/{name} unavailable"));
            return Some(());
        }
        assert_eq!(s, 200, "only the fake's last answer may route: {b}");
        None
    })
    .await;
}

#[tokio::test]
async fn a_restarted_worker_is_absorbed_by_re_resolving_once() {
    let (a, stop_a) = echo_worker("127.0.0.2:0", "old").await;
    let port = a.port();
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/r", ActorState::Running, "127.0.0.2", Duration::ZERO);
    let (_d, gw) = start(&ateapi_config(&fake, "2s")).await;
    let host = format!("r.ns.{SUFFIX}:{port}");
    let (s, h, _) = send(&h1(), get(gw.http(), "/hello", &[("host", &host)])).await;
    assert_eq!((s, h["x-echo-worker"].to_str().unwrap()), (200, "old"));
    assert_eq!(fake.calls(Method::GetActor, "ns/r"), 1, "the first lookup");

    // The worker restarts elsewhere: the old address refuses connections, the control plane
    // knows the new one, the gateway's cached route is stale.
    stop_a.stop().await;
    let (_b, _stop_b) = echo_worker(&format!("127.0.0.3:{port}"), "new").await;
    fake.set_pod_ip("ns/r", "127.0.0.3");
    let (s, h, _) = send(&h1(), get(gw.http(), "/hello", &[("host", &host)])).await;
    assert_eq!(
        (s, h["x-echo-worker"].to_str().unwrap()),
        (200, "new"),
        "absorbed by one retry"
    );
    assert_retried_once(&gw, &fake, "ns/r").await;
}

/// Exactly one retry, after exactly one more control-plane lookup (the re-resolution).
async fn assert_retried_once(gw: &Gateway, fake: &FakeControlPlane, actor: &str) {
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "actorgate_ingress_retries_total", &[]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        (
            fake.calls(Method::GetActor, actor),
            fake.calls(Method::ResumeActor, actor)
        ),
        (2, 0),
        "one lookup, then one re-resolution"
    );
}

#[tokio::test]
async fn a_421_from_the_worker_re_resolves_and_retries_once() {
    let (a, stop_a) = echo_worker("127.0.0.4:0", "old").await;
    let port = a.port();
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/m", ActorState::Running, "127.0.0.4", Duration::ZERO);
    let (_d, gw) = start(&ateapi_config(&fake, "2s")).await;
    let host = format!("m.ns.{SUFFIX}:{port}");
    assert_eq!(
        send(&h1(), get(gw.http(), "/hello", &[("host", &host)]))
            .await
            .0,
        200
    );
    // The old address now answers 421 (the actor moved): a worker agent saying "not here".
    stop_a.stop().await;
    let misdirected = tokio::net::TcpListener::bind(format!("127.0.0.4:{port}"))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = misdirected.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 421 Misdirected Request\r\nx-ate-assignment-stale: true\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let (_b, _stop_b) = echo_worker(&format!("127.0.0.5:{port}"), "new").await;
    fake.set_pod_ip("ns/m", "127.0.0.5");
    let (s, h, _) = send(&h1(), get(gw.http(), "/hello", &[("host", &host)])).await;
    assert_eq!((s, h["x-echo-worker"].to_str().unwrap()), (200, "new"));
    assert!(h.get("x-ate-assignment-stale").is_none());
    assert_retried_once(&gw, &fake, "ns/m").await;
}

#[tokio::test]
async fn sigterm_lets_a_long_request_finish_and_refuses_new_connections() {
    // The worker holds the request until the test releases it: no timing decides the order.
    let (worker, mut arrivals) = held_worker().await;
    let (_d, mut gw) = start(&static_config(
        worker,
        "shutdown: {drain_delay: 0s, drain_timeout: 30s}",
    ))
    .await;
    let http = gw.http();
    let long = tokio::spawn(async move {
        send(
            &h1(),
            get(http, "/long", &[("ate-target-actor", "demo/hello")]),
        )
        .await
    });
    let release = within(BOUND, "the request reaches the worker", arrivals.recv())
        .await
        .unwrap();
    gw.signal("TERM");
    gw.eventually(
        BOUND,
        "new connections are refused while draining",
        async || {
            tokio::net::TcpStream::connect(http)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(!long.is_finished(), "the request is still in flight");
    release.send(()).unwrap();
    let (s, _, b) = within(BOUND, "the in-flight request", long).await.unwrap();
    assert_eq!(
        (s, String::from_utf8_lossy(&b).as_ref()),
        (200, "held\n"),
        "the in-flight request completed"
    );
    assert!(gw.wait_exit(BOUND).await.success());
}

#[tokio::test]
async fn oversized_heads_and_expect_continue() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let big = "x".repeat(100 * 1024);
    let mut s = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(
        format!(
            "GET / HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\nx-big: {big}\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = within(BOUND, "the 431", s.read(&mut buf)).await.unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 431"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Expect: 100-continue: the client hears 100 before sending the body, then the answer.
    let mut s = tokio::net::TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let n = within(BOUND, "100 Continue", s.read(&mut buf))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100 Continue"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    s.write_all(b"hello").await.unwrap();
    let mut resp = String::new();
    while !resp.contains("{\"bytes\":5}") {
        let n = within(BOUND, "the answer after 100 Continue", s.read(&mut buf))
            .await
            .unwrap();
        assert!(n > 0, "closed early: {resp}");
        resp.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
}

#[tokio::test]
async fn a_stalled_worker_body_is_cut_by_the_idle_timeout_and_metrics_count_requests() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(
        worker,
        "ingress:\n  http: {listen: HTTP_ADDR}\n  upstream: {idle_timeout: 300ms}\n",
    ))
    .await;
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!(
        "http://{}/sse?events=2&interval_ms=3000",
        gw.http()
    ))
    .header("ate-target-actor", "demo/hello")
    .body(Empty::new())
    .unwrap();
    let mut body = within(BOUND, "SSE response", client.request(req))
        .await
        .unwrap()
        .into_body();
    let first = within(BOUND, "the first event", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert!(first.into_data().is_ok());
    // The worker pauses 3 s before the next event; the proxy gives up after 300 ms of silence.
    let next = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("cut before the worker resumed");
    assert!(
        matches!(next, Some(Err(_))),
        "the stream was cut with an error, not continued or ended: {next:?}"
    );

    send(
        &h1(),
        get(gw.http(), "/hello", &[("ate-target-actor", "demo/hello")]),
    )
    .await;
    send(
        &h1(),
        get(gw.http(), "/", &[("ate-target-actor", "demo/nobody")]),
    )
    .await;
    let metrics = gw.metrics().await;
    let requests = |class: &str, outcome: &str| {
        metric(
            &metrics,
            "actorgate_ingress_requests_total",
            &[("class", class), ("outcome", outcome)],
        )
    };
    // The SSE stream (counted at its response head) and /hello.
    assert_eq!(requests("2xx", "proxied"), 2.0, "{metrics}");
    assert_eq!(requests("4xx", "route_error"), 1.0, "{metrics}");
    assert!(
        metric_opt(
            &metrics,
            "actorgate_ingress_connections_active",
            &[("listener", "http")]
        )
        .is_some(),
        "{metrics}"
    );
}

/// A worker agent: terminates mTLS (requires a client certificate from `ca`), reports the
/// gateway's identity, and forwards the decrypted bytes to `worker`.
async fn tls_agent(
    dir: &std::path::Path,
    worker: SocketAddr,
) -> (
    SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<identity::PeerIdentity>,
) {
    let tls = identity::tls::ReloadableServerConfig::server(identity::tls::ServerTlsFiles {
        cert_file: dir.join("agent.crt"),
        key_file: dir.join("agent.key"),
        client_ca_file: Some(dir.join("ca.crt")),
        client_auth: identity::tls::ClientAuth::Required,
        client_trust_domain: Some(identity::spiffe::DEFAULT_TRUST_DOMAIN.into()),
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (tls.acceptor(), tx.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(id) = identity::cert::peer_identity(
                    tls.get_ref().1.peer_certificates(),
                    identity::spiffe::DEFAULT_TRUST_DOMAIN,
                ) {
                    let _ = tx.send(id);
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(worker).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn agent_mode_dials_the_worker_agent_over_mtls_with_the_target_port() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "behind-agent").await;
    let dir = tempfile::tempdir().unwrap();
    let td = identity::spiffe::DEFAULT_TRUST_DOMAIN;
    let day = DAY;
    let ca = write_test_ca(dir.path());
    ca.issue_component(
        td,
        "ate-workers",
        "atunnel",
        &[],
        &["127.0.0.1".parse().unwrap()],
        day,
    )
    .unwrap()
    .write(dir.path(), "agent")
    .unwrap();
    ca.issue_component(td, "ate-system", "actorgate", &[], &[], day)
        .unwrap()
        .write(dir.path(), "gateway")
        .unwrap();
    let (agent, mut seen) = tls_agent(dir.path(), worker).await;
    let config = |prefix: &str| {
        format!(
            "admin: {{listen: ADMIN_ADDR}}\n\
             routing: {{worker_transport: {{mode: agent}}}}\n\
             ingress:\n  http: {{listen: HTTP_ADDR}}\n  upstream:\n    tls: {{ca_file: ca.crt, cert_file: gateway.crt, key_file: gateway.key, server_spiffe_prefix: '{prefix}'}}\n\
             directory: {{static: {{actors: [{{atespace: demo, name: hello, endpoint: '{agent}'}}]}}}}\n"
        )
    };
    let gw = Gateway::ready(
        dir.path(),
        &config(&format!("spiffe://{td}/ns/ate-workers/")),
    )
    .await;
    let (s, h, body) = send(
        &h1(),
        get(gw.http(), "/", &[("ate-target-actor", "demo/hello")]),
    )
    .await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(h["x-echo-worker"], "behind-agent");
    let seen_headers = seen_headers(&body);
    assert_eq!(
        header(&seen_headers, "x-ate-target-port"),
        ["80"],
        "the actor port travels in a header"
    );
    assert_eq!(header(&seen_headers, "ate-target-actor"), ["demo/hello"]);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["version"], "HTTP/1.1",
        "ALPN offered only http/1.1 to the agent for a plain request"
    );
    match within(BOUND, "the agent reports the gateway", seen.recv())
        .await
        .unwrap()
    {
        identity::PeerIdentity::Component {
            namespace,
            service_account,
            ..
        } => {
            assert_eq!(
                (namespace.as_str(), service_account.as_str()),
                ("ate-system", "actorgate")
            )
        }
        other => panic!("agent saw {other:?}"),
    }
    drop(gw);

    // A worker that is not who the gateway expects is never sent the request.
    let dir2 = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "ca.key", "gateway.crt", "gateway.key"] {
        std::fs::copy(dir.path().join(f), dir2.path().join(f)).unwrap();
    }
    let gw = Gateway::ready(
        dir2.path(),
        &config(&format!("spiffe://{td}/ns/somewhere-else/")),
    )
    .await;
    let (s, _, body) = send(
        &h1(),
        get(gw.http(), "/", &[("ate-target-actor", "demo/hello")]),
    )
    .await;
    assert_eq!(
        (s, String::from_utf8_lossy(&body).as_ref()),
        (502, "actor demo/hello worker unreachable")
    );
}

#[tokio::test]
async fn only_the_agents_stale_421_is_retried_and_applications_421_pass_through() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let actor = [("ate-target-actor", "demo/hello")];
    assert_eq!(
        send(&h1(), get(gw.http(), "/hello", &actor)).await.0,
        200,
        "warm the route cache"
    );
    // An application's own 421: passed through, no retry.
    let (s, _, b) = send(&h1(), get(gw.http(), "/status/421", &actor)).await;
    assert_eq!(
        (s, String::from_utf8_lossy(&b).as_ref()),
        (421, "status 421\n")
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "actorgate_ingress_retries_total", &[]),
        0.0,
        "{metrics}"
    );
    let lookups = metric(&metrics, "actorgate_resolve_flights_total", &[]);
    // The agent's stale assignment: re-resolved and retried once; the marker never reaches clients.
    let (s, h, _) = send(&h1(), get(gw.http(), "/misdirected", &actor)).await;
    assert_eq!(
        s, 421,
        "the same worker still answers 421 after the one retry"
    );
    assert!(h.get("x-ate-assignment-stale").is_none());
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "actorgate_ingress_retries_total", &[]),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "actorgate_resolve_flights_total", &[]),
        lookups + 1.0,
        "one re-resolution: {metrics}"
    );
    // Each stale answer drops the route (the retry's too); only the first is retried.
    assert_eq!(
        metric(&metrics, "actorgate_route_cache_invalidations_total", &[]),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn a_request_with_a_body_is_not_retried() {
    let (a, stop_a) = echo_worker("127.0.0.6:0", "old").await;
    let port = a.port();
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/p", ActorState::Running, "127.0.0.6", Duration::ZERO);
    let (_d, gw) = start(&ateapi_config(&fake, "2s")).await;
    let host = format!("p.ns.{SUFFIX}:{port}");
    assert_eq!(
        send(&h1(), get(gw.http(), "/hello", &[("host", &host)]))
            .await
            .0,
        200
    );
    stop_a.stop().await;
    let (_b, _stop_b) = echo_worker(&format!("127.0.0.7:{port}"), "new").await;
    fake.set_pod_ip("ns/p", "127.0.0.7");
    let post = http::Request::post(format!("http://{}/upload", gw.http()))
        .header("host", &host)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (s, _, b) = send(&h1(), post).await;
    assert_eq!(
        (s, String::from_utf8_lossy(&b).as_ref()),
        (502, "actor ns/p worker unreachable"),
        "not sent twice"
    );
    // The stale route was dropped: the next request goes to the new worker directly.
    let (s, h, _) = send(&h1(), get(gw.http(), "/hello", &[("host", &host)])).await;
    assert_eq!((s, h["x-echo-worker"].to_str().unwrap()), (200, "new"));
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(&metrics, "actorgate_ingress_retries_total", &[]),
        0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn connect_odd_expectations_and_h2c_upgrades_are_not_forwarded() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let (_d, gw) = start(&static_config(worker, "")).await;
    let http = gw.http();
    let raw = |req: String| async move { raw_http(http, req.as_bytes()).await };
    let r = raw("CONNECT 10.0.0.1:443 HTTP/1.1\r\nhost: 10.0.0.1:443\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\r\n".into()).await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let r = raw("GET / HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\nexpect: something-else\r\nconnection: close\r\n\r\n".into()).await;
    assert!(r.starts_with("HTTP/1.1 417"), "{r}");
    // An h2c upgrade would let the client talk HTTP/2 to the worker past header stripping: it is
    // answered as a plain request instead.
    let r = raw(
        "GET / HTTP/1.1\r\nhost: a\r\nate-target-actor: demo/hello\r\nconnection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
            .into(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    assert!(
        !r.to_ascii_lowercase().contains("\"upgrade\""),
        "the worker saw no upgrade: {r}"
    );
    assert!(!r.to_ascii_lowercase().contains("http2-settings"), "{r}");
}
