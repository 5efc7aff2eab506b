//! The app's wiring: the drain on SIGTERM (WebSocket tunnels and HTTP/2 streams finish, what is
//! still open at the deadline is closed and counted), the resolve endpoint on its own listener,
//! `/readyz` over exactly the registered checks, and the ExtProc dispatcher's directions. The
//! SIGTERM test runs the binary; the others run the app in process (`App::start`) on port 0.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use actorgate::app::{App, RunningApp};
use bytes::Bytes;
use common::*;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use routing_core::testing::FakeControlPlane;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

type WebSocket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// Loads `yaml` as the config file `actorgate.yaml` in `dir`.
fn load(dir: &Path, yaml: &str) -> actorgate::config::Loaded {
    let path = dir.join("actorgate.yaml");
    std::fs::write(&path, yaml).unwrap();
    actorgate::config::load(&path).unwrap_or_else(|e| panic!("{yaml}\n{e}"))
}

/// Starts the app in process.
async fn start(dir: &Path, yaml: &str) -> RunningApp {
    within(BOUND, "the app starts", App::start(load(dir, yaml)))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

fn addr(app: &RunningApp, listener: &str) -> SocketAddr {
    app.addr(listener)
        .unwrap_or_else(|| panic!("no {listener} listener in {:?}", app.addresses()))
}

/// Opens a WebSocket through the proxy at `proxy` to `actor`'s echo worker (`/ws`) and checks
/// one echo.
async fn open_websocket(proxy: SocketAddr, actor: &str) -> WebSocket {
    let mut req = format!("ws://{proxy}/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("ate-target-actor", actor.parse().unwrap());
    let tcp = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let (mut ws, resp) = within(
        BOUND,
        "WebSocket handshake",
        tokio_tungstenite::client_async(req, tcp),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    echo(&mut ws, "opened").await;
    ws
}

/// Sends `text` and expects it back.
async fn echo(ws: &mut WebSocket, text: &str) {
    within(
        BOUND,
        format!("send {text:?}"),
        ws.send(Message::text(text)),
    )
    .await
    .unwrap_or_else(|e| panic!("send {text:?}: {e}"));
    let back = within(BOUND, format!("the echo of {text:?}"), ws.next())
        .await
        .unwrap_or_else(|| panic!("the WebSocket closed instead of echoing {text:?}"))
        .unwrap_or_else(|e| panic!("the echo of {text:?}: {e}"));
    assert_eq!(back, Message::text(text));
}

/// Waits until `addr` refuses connections (its listener closed: the drain has started).
async fn refuses(addr: SocketAddr, what: &str) {
    eventually(BOUND, format!("{what} stops accepting"), async || {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await
}

#[tokio::test]
async fn sigterm_waits_for_a_websocket_and_an_http2_stream_then_exits_zero() {
    let (echo_addr, _echo) = echo_worker("127.0.0.1:0", "w").await;
    let (held, mut arrivals) = held_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\ningress: {{http: {{listen: HTTP_ADDR}}}}\n\
             shutdown: {{drain_delay: 0s, drain_timeout: 60s}}\n\
             directory: {{static: {{actors: [{{atespace: demo, name: ws, endpoint: '{echo_addr}'}}, \
             {{atespace: demo, name: held, endpoint: '{held}'}}]}}}}\n"
        ),
    )
    .await;
    let proxy = gw.http();
    let mut ws = open_websocket(proxy, "demo/ws").await;
    // An HTTP/2 stream in flight: the worker holds the request until released.
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = http::Request::get(format!("http://{proxy}/"))
        .header("ate-target-actor", "demo/held")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let stream = tokio::spawn(async move {
        let resp = h2c.request(req).await.map_err(|e| e.to_string())?;
        let version = resp.version();
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((version, status, body.to_bytes()))
    });
    let release = within(
        BOUND,
        "the HTTP/2 request reaches the worker",
        arrivals.recv(),
    )
    .await
    .expect("the held worker is gone");

    gw.signal("TERM");
    refuses(proxy, "the ingress listener").await;
    // Draining: both are still served.
    echo(&mut ws, "during the drain").await;
    release.send(()).unwrap();
    let (version, status, body) = within(BOUND, "the HTTP/2 stream finishes", stream)
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the HTTP/2 stream failed: {e}\n{}", gw.log_text()));
    assert_eq!(
        (version, status, body.as_ref()),
        (http::Version::HTTP_2, 200, b"held\n".as_ref())
    );
    // The tunnel holds the drain: with the stream done it still echoes, and the process waits.
    echo(&mut ws, "after the stream").await;
    assert!(
        gw.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "exited with the WebSocket open:\n{}",
        gw.log_text()
    );
    // The close handshake, then the client closes its connection (as browsers do).
    within(BOUND, "WebSocket close", ws.close(None))
        .await
        .unwrap();
    while let Some(Ok(_)) = within(BOUND, "the close reply", ws.next()).await {}
    drop(ws);
    let status = gw.wait_exit(BOUND).await;
    assert!(status.success(), "exit 0, got {status}\n{}", gw.log_text());
    let log = gw.log_text();
    assert!(log.contains("drained; exiting"), "{log}");
    assert!(!log.contains("drain timeout reached"), "{log}");
}

#[tokio::test]
async fn a_tunnel_open_at_the_drain_deadline_is_closed_and_counted() {
    let (echo_addr, _echo) = echo_worker("127.0.0.1:0", "w").await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:0'}}\ningress: {{http: {{listen: '127.0.0.1:0'}}}}\n\
             grpc: {{extproc: false, resolve_route: false}}\n\
             shutdown: {{drain_delay: 0s, drain_timeout: 200ms}}\n\
             directory: {{static: {{actors: [{{atespace: demo, name: ws, endpoint: '{echo_addr}'}}]}}}}\n"
        ),
    )
    .await;
    let (status, metrics) = get(addr(&app, "admin"), "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "actorgate_drain_forced_total", &[]), 0.0);
    let mut ws = open_websocket(addr(&app, "ingress_http"), "demo/ws").await;

    let drain = app.drain().clone();
    let report = within(BOUND, "the shutdown", app.shutdown()).await;
    assert_eq!(report.forced, 1, "the tunnel: {report:?}");
    assert_eq!(drain.forced_total().get(), 1);
    // The client sees its connection closed.
    let end = within(BOUND, "the WebSocket ends", ws.next()).await;
    assert!(
        !matches!(end, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{end:?}"
    );
}

#[tokio::test]
async fn the_resolve_endpoint_has_its_own_listener_and_is_not_on_the_admin_port() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\n\
         ingress: {enabled: false, resolve: {listen: '127.0.0.1:0'}}\n\
         grpc: {extproc: false, resolve_route: false}\n\
         directory: {static: {actors: [{atespace: demo, name: hello, endpoint: '127.0.0.1:9'}]}}\n",
    )
    .await;
    let (admin, resolve) = (addr(&app, "admin"), addr(&app, "ingress_resolve"));
    assert_eq!(app.addr("ingress_http"), None, "ingress.enabled: false");
    for path in ["/resolve", "/resolve/error"] {
        let (s, _, body) = request(admin, path, &[("ate-target-actor", "demo/hello")]).await;
        assert_eq!((s, body.as_str()), (404, "not found\n"), "{path} on admin");
    }
    let (s, h, body) = request(resolve, "/resolve", &[("ate-target-actor", "demo/hello")]).await;
    assert_eq!((s, body.as_str()), (200, ""));
    assert_eq!(h["x-gateway-destination-endpoint"], "127.0.0.1:9");
    let (s, _, body) = request(resolve, "/resolve", &[("ate-target-actor", "demo/nobody")]).await;
    assert_eq!((s, body.as_str()), (404, "actor demo/nobody not found"));
    // The admin endpoints are not on the resolve listener.
    let (s, _, _) = request(resolve, "/metrics", &[]).await;
    assert_eq!(s, 404);
    app.shutdown().await;
}

/// `/readyz?verbose` and the `checks` of `/statusz`.
async fn registered_checks(admin: SocketAddr) -> (u16, String, serde_json::Value) {
    let (status, verbose) = get(admin, "/readyz?verbose").await.unwrap();
    let (_, json) = get(admin, "/statusz?format=json").await.unwrap();
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    (status, verbose, json["checks"].clone())
}

#[tokio::test]
async fn readyz_reflects_exactly_the_registered_checks() {
    // Only admin: no directory, so no directory check; ready at once.
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path(), "admin: {listen: '127.0.0.1:0'}\n").await;
    assert_eq!(
        app.addresses().keys().collect::<Vec<_>>(),
        ["admin"],
        "nothing else runs"
    );
    let admin = addr(&app, "admin");
    assert_eq!(
        get(admin, "/readyz").await.unwrap(),
        (200, "ready\n".into())
    );
    let (status, verbose, checks) = registered_checks(admin).await;
    assert_eq!((status, verbose.as_str()), (200, "ready\n"));
    assert_eq!(checks, serde_json::json!({}));
    let (_, statusz) = get(admin, "/statusz?format=json").await.unwrap();
    let statusz: serde_json::Value = serde_json::from_str(&statusz).unwrap();
    assert_eq!(
        statusz["directory"],
        serde_json::json!({"kind": "none"}),
        "/statusz names the directory kind none"
    );
    app.shutdown().await;

    // admin and ingress over an ateapi directory: the directory check, and only it.
    let fake = FakeControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let app = start(
        dir.path(),
        &format!(
            "admin: {{listen: '127.0.0.1:0', readiness: {{interval: 100ms, timeout: 100ms}}}}\n\
             ingress: {{http: {{listen: '127.0.0.1:0'}}}}\n\
             grpc: {{extproc: false, resolve_route: false}}\n\
             directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
            fake.addr
        ),
    )
    .await;
    let admin = addr(&app, "admin");
    let (status, verbose, checks) = eventually(BOUND, "ready", async || {
        let c = registered_checks(admin).await;
        (c.0 == 200).then_some(c)
    })
    .await;
    assert_eq!(
        (status, verbose.as_str()),
        (200, "[+]directory ok\nready\n")
    );
    assert_eq!(checks, serde_json::json!({"directory": "ok"}));
    let names: Vec<String> = app
        .health()
        .ready()
        .checks
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["directory"]);
    app.begin_shutdown().await;
    let (status, verbose, _) = registered_checks(admin).await;
    assert_eq!(
        (status, verbose.as_str()),
        (503, "[+]directory ok\ndraining\n")
    );
    app.shutdown().await;
}

fn headers_message(actor: &str, direction: Option<&str>) -> ep::ProcessingRequest {
    let header = core::HeaderValue {
        key: "ate-target-actor".into(),
        raw_value: actor.as_bytes().to_vec(),
        ..Default::default()
    };
    ep::ProcessingRequest {
        request: Some(ep::processing_request::Request::RequestHeaders(
            ep::HttpHeaders {
                headers: Some(core::HeaderMap {
                    headers: vec![header],
                }),
                ..Default::default()
            },
        )),
        metadata_context: direction.map(|d| core::Metadata {
            filter_metadata: [(
                "actorgate".to_owned(),
                Struct {
                    fields: [(
                        "direction".to_owned(),
                        Value {
                            kind: Some(Kind::StringValue(d.to_owned())),
                        },
                    )]
                    .into(),
                },
            )]
            .into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn extproc_streams_go_to_their_direction_handler() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\ningress: {enabled: false}\n\
         grpc: {listen: '127.0.0.1:0', extproc: true, resolve_route: false}\n\
         directory: {static: {actors: [{atespace: demo, name: hello, endpoint: '127.0.0.1:9'}]}}\n",
    )
    .await;
    let grpc = addr(&app, "grpc");
    for direction in [None, Some("ingress")] {
        let answers = extproc_answers(grpc, headers_message("demo/hello", direction)).await;
        assert_eq!(answers.len(), 1, "{direction:?}: {answers:?}");
        assert!(
            matches!(
                answers[0].response,
                Some(ep::processing_response::Response::RequestHeaders(_))
            ),
            "{direction:?}: {answers:?}"
        );
    }
    for direction in ["egress", "sideways"] {
        let answers = extproc_answers(grpc, headers_message("demo/hello", Some(direction))).await;
        let [
            ep::ProcessingResponse {
                response: Some(ep::processing_response::Response::ImmediateResponse(i)),
                ..
            },
        ] = answers.as_slice()
        else {
            panic!("{direction}: {answers:?}");
        };
        assert_eq!(i.status.as_ref().map(|s| s.code), Some(501), "{direction}");
        assert_eq!(i.body, b"egress mode is not available", "{direction}");
    }
    let mut observed = headers_message("demo/hello", Some("egress"));
    observed.observability_mode = true;
    assert_eq!(
        extproc_answers(grpc, observed).await,
        [],
        "observability: no answer"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn an_idle_app_shuts_down_at_once() {
    // With nothing open the shutdown does not wait for the drain deadline.
    let dir = tempfile::tempdir().unwrap();
    let app = start(
        dir.path(),
        "admin: {listen: '127.0.0.1:0'}\nshutdown: {drain_timeout: 60s}\n",
    )
    .await;
    let report = within(Duration::from_secs(5), "an idle shutdown", app.shutdown()).await;
    assert_eq!((report.forced, report.finished), (0, 0));
}
