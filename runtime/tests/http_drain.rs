//! Draining real HTTP connections served by `runtime::http`: work that ends within the deadline
//! is not forced, work still open at the deadline is closed and counted, new connections are
//! refused once draining starts, upgraded connections hold the drain, idle connections close.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{BOUND, bounded};
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use runtime::Drain;
use runtime::drain::DrainSignal;
use runtime::http::{HttpServer, HttpSettings};
use runtime::listener::BoundListener;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// What the test service does per path:
/// * `/fast`: answers at once;
/// * `/slow`: reports arrival, answers once the test releases it;
/// * `/stuck`: reports arrival, never answers;
/// * `/upgrade`: switches to an echo protocol run as drained work.
struct Service {
    arrived: mpsc::UnboundedSender<&'static str>,
    release: Mutex<Option<oneshot::Receiver<()>>>,
    drain: DrainSignal,
}

async fn handle(
    s: Arc<Service>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    match req.uri().path() {
        "/slow" => {
            let release = s.release.lock().expect("lock").take();
            let _ = s.arrived.send("slow");
            if let Some(r) = release {
                let _ = r.await;
            }
            Ok(Response::new(Full::from("done")))
        }
        "/stuck" => {
            let _ = s.arrived.send("stuck");
            std::future::pending().await
        }
        "/upgrade" => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            s.drain.spawn(async move {
                let Ok(upgraded) = on_upgrade.await else {
                    return;
                };
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 64];
                // Echoes until the client closes; ignores draining on purpose.
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
            let mut r = Response::new(Full::default());
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            r.headers_mut()
                .insert(header::UPGRADE, "echo".parse().expect("value"));
            r.headers_mut()
                .insert(header::CONNECTION, "upgrade".parse().expect("value"));
            Ok(r)
        }
        _ => Ok(Response::new(Full::from("fast"))),
    }
}

struct Harness {
    addr: SocketAddr,
    drain: Drain,
    arrived: mpsc::UnboundedReceiver<&'static str>,
    release: Option<oneshot::Sender<()>>,
    /// Resolves when the listener has stopped accepting.
    accepting: tokio::task::JoinHandle<()>,
}

async fn start(settings: HttpSettings) -> Harness {
    let listener = BoundListener::bind("test.http", SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let drain = Drain::new();
    let (arrived_tx, arrived) = mpsc::unbounded_channel();
    let (release_tx, release_rx) = oneshot::channel();
    let service = Arc::new(Service {
        arrived: arrived_tx,
        release: Mutex::new(Some(release_rx)),
        drain: drain.signal(),
    });
    let accepting =
        tokio::spawn(
            HttpServer::new(&settings).serve(listener, drain.signal(), move |_info| {
                let s = service.clone();
                hyper::service::service_fn(move |req| handle(s.clone(), req))
            }),
        );
    Harness {
        addr,
        drain,
        arrived,
        release: Some(release_tx),
        accepting,
    }
}

type H1Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// An HTTP/1.1 client connection; the returned task ends when the connection does.
async fn http1(addr: SocketAddr) -> (H1Sender, tokio::task::JoinHandle<()>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .expect("HTTP/1.1 handshake");
    let task = tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    (sender, task)
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .uri(path)
        .header(header::HOST, "test")
        .body(Empty::new())
        .expect("request")
}

#[tokio::test]
async fn an_http2_stream_in_flight_finishes_and_new_connections_are_refused() {
    let mut h = start(HttpSettings::default()).await;
    let tcp = TcpStream::connect(h.addr).await.expect("connect");
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    let client_conn = tokio::spawn(conn);
    let req = Request::builder()
        .uri(format!("http://{}/slow", h.addr))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = tokio::spawn(sender.send_request(req));
    assert_eq!(
        bounded("the request to arrive", h.arrived.recv()).await,
        Some("slow")
    );

    let drain = h.drain.clone();
    let shutdown = tokio::spawn(async move { drain.shutdown(BOUND).await });
    bounded("the listener to stop accepting", &mut h.accepting)
        .await
        .expect("accept loop");
    let refused = TcpStream::connect(h.addr).await;
    assert!(
        refused.is_err(),
        "a new connection after draining started was accepted"
    );

    let _ = h.release.take().expect("release").send(());
    let resp = bounded("the in-flight response", response)
        .await
        .expect("task")
        .expect("the stream in flight was answered");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = bounded("the body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"done");
    let report = bounded("the drain", shutdown).await.expect("shutdown task");
    assert_eq!(report.forced, 0, "{report:?}");
    assert_eq!(report.finished, 1, "{report:?}");
    assert_eq!(h.drain.forced_total().get(), 0);
    // GOAWAY: the client connection ends.
    bounded("the client connection to end", client_conn)
        .await
        .expect("client connection task")
        .expect("h2 connection closed cleanly");
}

#[tokio::test]
async fn a_connection_open_at_the_deadline_is_closed_and_counted() {
    let mut h = start(HttpSettings::default()).await;
    let (mut sender, client_conn) = http1(h.addr).await;
    let response = tokio::spawn(sender.send_request(get("/stuck")));
    assert_eq!(
        bounded("the request to arrive", h.arrived.recv()).await,
        Some("stuck")
    );
    let report = bounded("the drain", h.drain.shutdown(Duration::from_millis(200))).await;
    assert_eq!(report.forced, 1, "{report:?}");
    assert_eq!(report.finished, 0, "{report:?}");
    assert_eq!(h.drain.forced_total().get(), 1);
    let result = bounded("the client to see the close", response)
        .await
        .expect("task");
    assert!(
        result.is_err(),
        "no response, the connection was closed: {result:?}"
    );
    bounded("the client connection to end", client_conn)
        .await
        .expect("client connection task");
}

#[tokio::test]
async fn an_upgraded_connection_holds_the_drain_until_forced() {
    let h = start(HttpSettings::default()).await;
    let (mut sender, _client_conn) = http1(h.addr).await;
    let req = Request::builder()
        .uri("/upgrade")
        .header(header::HOST, "test")
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "echo")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let resp = bounded("the upgrade", sender.send_request(req))
        .await
        .expect("upgrade answered");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = bounded("the upgraded stream", hyper::upgrade::on(resp))
        .await
        .expect("upgraded");
    let mut io = TokioIo::new(upgraded);
    io.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 4];
    bounded("the echo", io.read_exact(&mut buf))
        .await
        .expect("echo");
    assert_eq!(&buf, b"ping");
    // Only the upgraded connection is open now: hyper's connection task ended at the upgrade.
    let report = bounded("the drain", h.drain.shutdown(Duration::from_millis(200))).await;
    assert_eq!(
        report.forced, 1,
        "the upgraded connection was held: {report:?}"
    );
    let mut rest = Vec::new();
    let read = bounded("the forced close", io.read_to_end(&mut rest)).await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "closed by the drain: {read:?}"
    );
}

#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let h = start(HttpSettings {
        idle_connection_timeout: Duration::from_millis(200),
        ..HttpSettings::default()
    })
    .await;
    let (mut sender, client_conn) = http1(h.addr).await;
    let resp = bounded("a request", sender.send_request(get("/fast")))
        .await
        .expect("answered");
    let body = bounded("the body", resp.into_body().collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(&body[..], b"fast");
    let started = std::time::Instant::now();
    bounded("the server to close the idle connection", client_conn)
        .await
        .expect("client connection task");
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "closed by the idle timer, not at once: {:?}",
        started.elapsed()
    );
    let report = bounded("the drain", h.drain.shutdown(BOUND)).await;
    assert_eq!(
        report.forced, 0,
        "the idle connection had already closed: {report:?}"
    );
}
