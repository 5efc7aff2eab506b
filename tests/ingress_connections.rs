//! Connection-level behaviour of the ingress proxy and the echo worker, over raw sockets:
//! half-closing clients (RFC 9112 §9.6), worker responses framed by both Content-Length and
//! Transfer-Encoding (RFC 9112 §6.3), and the idle connection timeout (HTTP/2 GOAWAY, HTTP/1.1
//! close).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const SUFFIX: &str = "actors.resources.substrate.ate.dev";

fn static_config(worker: SocketAddr, extra: &str) -> String {
    format!(
        "admin: {{listen: ADMIN_ADDR}}\n{extra}\ndirectory:\n  static:\n    actors:\n\
         \x20   - {{atespace: demo, name: hello, endpoint: '{worker}'}}\n"
    )
}

/// Writes `request`, shuts down the write side (a half-close) and reads until the server closes.
async fn half_closed_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    request: &str,
) -> String {
    s.write_all(request.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    within(
        BOUND,
        "reading the answer to a half-closed request until the server closes",
        s.read_to_end(&mut out),
    )
    .await
    .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP and an HTTPS listener (the certificate of [`write_test_ca`]), then `limits`.
fn https_extra(limits: &str) -> String {
    format!(
        "ingress:\n  http: {{listen: HTTP_ADDR}}\n  https:\n    listen: HTTPS_ADDR\n    tls: {{cert_file: server.crt, key_file: server.key}}\n{limits}"
    )
}

// ---------------------------------------------------------------------------------------------
// Fault 2: a half-close is not an abort.

#[tokio::test]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    write_test_ca(dir.path());
    let gw = Gateway::ready(dir.path(), &static_config(worker, &https_extra(""))).await;

    let by_host = format!("GET / HTTP/1.1\r\nHost: hello.demo.{SUFFIX}\r\n\r\n");
    let by_header =
        "GET /x HTTP/1.1\r\nHost: gateway.example\r\nate-target-actor: demo/hello\r\n\r\n";
    for (front, request) in [("proxy", by_host.as_str()), ("proxy", by_header)] {
        let s = TcpStream::connect(gw.http()).await.unwrap();
        let r = half_closed_exchange(s, request).await;
        assert!(
            r.starts_with("HTTP/1.1 200"),
            "{front}: {request:?} → {r:?}"
        );
        assert!(r.contains("\"worker\":\"w1\""), "{front}: {r}");
        assert!(r.contains("demo/hello"), "{front}: {r}");
    }

    // Directly against the echo worker, with an answer that is not ready at once.
    let s = TcpStream::connect(worker).await.unwrap();
    let r = half_closed_exchange(s, "GET /delay?ms=100 HTTP/1.1\r\nHost: w\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 200"), "echo worker: {r:?}");
    assert!(r.ends_with("delayed\n"), "echo worker: {r:?}");

    // A request with a body, and two pipelined requests: all answered, then the connection closes.
    let s = TcpStream::connect(gw.http()).await.unwrap();
    let r = half_closed_exchange(
        s,
        "POST /upload HTTP/1.1\r\nHost: gw\r\nate-target-actor: demo/hello\r\ncontent-length: 3\r\n\r\nabc",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r:?}");
    assert!(
        r.ends_with("{\"bytes\":3}"),
        "the worker got the body: {r:?}"
    );
    let s = TcpStream::connect(gw.http()).await.unwrap();
    let r = half_closed_exchange(
        s,
        "GET /hello HTTP/1.1\r\nHost: gw\r\nate-target-actor: demo/hello\r\n\r\n\
         GET /status/204 HTTP/1.1\r\nHost: gw\r\nate-target-actor: demo/hello\r\n\r\n",
    )
    .await;
    assert_eq!(r.matches("HTTP/1.1 ").count(), 2, "two answers: {r:?}");
    assert!(r.starts_with("HTTP/1.1 200"), "{r:?}");
    assert!(r.contains("HTTP/1.1 204"), "{r:?}");

    // Over TLS: close_notify plus FIN after the request.
    let s = tls_connect(&dir.path().join("ca.crt"), gw.https(), b"http/1.1").await;
    let r = half_closed_exchange(s, &by_host).await;
    assert!(r.starts_with("HTTP/1.1 200"), "https: {r:?}");
    assert!(r.contains("\"x-forwarded-proto\",\"https\""), "https: {r}");

    // A connection half-closed before any request does not linger.
    let s = TcpStream::connect(gw.http()).await.unwrap();
    let r = half_closed_exchange(s, "").await;
    assert_eq!(r, "", "nothing sent, nothing answered, closed");
}

// ---------------------------------------------------------------------------------------------
// Fault 4: Transfer-Encoding overrides Content-Length.

/// A "worker" that answers every request with `Content-Length: 3` and a chunked 5-byte body.
async fn conflicting_length_worker() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // Each request is a head without a body: answer once per head.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let resp = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
                                    content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n\
                                    5\r\nhello\r\n0\r\n\r\n";
                        if s.write_all(resp.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_worker_response_with_content_length_and_chunked_is_relayed_by_its_chunks() {
    let worker = conflicting_length_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(dir.path(), &static_config(worker, "")).await;

    let req = || {
        http::Request::get(format!("http://{}/", gw.http()))
            .header("ate-target-actor", "demo/hello")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let h1: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let h2c: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    // Twice per client: the second request rides the same (still coherent) connection.
    for (name, client) in [("http/1.1", &h1), ("h2c", &h2c)] {
        for round in 0..2 {
            let resp = within(BOUND, "response", client.request(req()))
                .await
                .unwrap_or_else(|e| panic!("{name} round {round}: {e:?}"));
            assert_eq!(resp.status(), 200, "{name}");
            assert_ne!(
                resp.headers()
                    .get(http::header::CONTENT_LENGTH)
                    .map(|v| v.as_bytes()),
                Some(&b"3"[..]),
                "{name}: the stale length is not relayed"
            );
            let body = within(BOUND, "body", resp.into_body().collect())
                .await
                .unwrap_or_else(|e| panic!("{name} round {round}: body: {e:?}"))
                .to_bytes();
            assert_eq!(&body[..], b"hello", "{name} round {round}");
        }
    }

    // The raw HTTP/1.1 bytes: framed by chunks (or 5), never by 3.
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(
        b"GET / HTTP/1.1\r\nhost: gw\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    within(BOUND, "raw response", s.read_to_end(&mut out))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(!text.contains("content-length: 3\r\n"), "{text}");
    assert!(text.contains("hello"), "{text}");
}

// ---------------------------------------------------------------------------------------------
// Fault 9: the idle connection timeout.

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 1;
const ACK: u8 = 1;

/// A minimal HTTP/2 client speaking raw frames: it answers SETTINGS and PING like a live client
/// and hands every other frame to the test.
struct RawH2<S> {
    io: S,
}

struct H2Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawH2<S> {
    async fn start(mut io: S) -> Self {
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut h2 = Self { io };
        h2.write(SETTINGS, 0, 0, &[]).await;
        h2
    }

    async fn write(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.io.write_all(&f).await.unwrap();
    }

    /// The next frame other than SETTINGS and PING (which are acknowledged); None once the
    /// server has closed the connection.
    async fn next(&mut self) -> Option<H2Frame> {
        loop {
            let mut head = [0u8; 9];
            match self.io.read_exact(&mut head).await {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("reading a frame: {e}"),
            }
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
            let mut payload = vec![0u8; len];
            self.io.read_exact(&mut payload).await.unwrap();
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match kind {
                SETTINGS if flags & ACK == 0 => self.write(SETTINGS, ACK, 0, &[]).await,
                SETTINGS => {}
                PING if flags & ACK == 0 => self.write(PING, ACK, 0, &payload).await,
                PING => {}
                _ => {
                    return Some(H2Frame {
                        kind,
                        flags,
                        stream,
                        payload,
                    });
                }
            }
        }
    }

    /// Opens stream `id` with a GET of `path` naming demo/hello (HPACK literals, no Huffman).
    async fn get(&mut self, id: u32, path: &str) {
        fn lit(out: &mut Vec<u8>, s: &str) {
            assert!(s.len() < 127);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        block.push(0x04); // :path, literal without indexing
        lit(&mut block, path);
        block.push(0x01); // :authority
        lit(&mut block, "gateway.example");
        block.push(0x00); // a new name
        lit(&mut block, "ate-target-actor");
        lit(&mut block, "demo/hello");
        self.write(HEADERS, END_STREAM | 0x4, id, &block).await;
    }
}

/// Waits for GOAWAY and then for the server to close; returns when GOAWAY first arrived.
async fn goaway_then_close<S: AsyncRead + AsyncWrite + Unpin>(h2: &mut RawH2<S>) -> Instant {
    let mut goaway = None;
    while let Some(f) = h2.next().await {
        match f.kind {
            GOAWAY => {
                goaway.get_or_insert_with(Instant::now);
            }
            RST_STREAM => panic!("stream {} reset", f.stream),
            _ => {}
        }
    }
    goaway.expect("the server closed the connection without GOAWAY")
}

fn idle_limits(idle: &str, header_read: &str) -> String {
    format!("  limits: {{idle_connection_timeout: {idle}, header_read_timeout: {header_read}}}\n")
}

#[tokio::test]
async fn an_idle_http2_connection_gets_goaway_and_is_closed() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    write_test_ca(dir.path());
    let extra = https_extra(&idle_limits("1s", "60s"));
    let gw = Gateway::ready(dir.path(), &static_config(worker, &extra)).await;

    // h2c: preface, SETTINGS, PINGs answered, no stream.
    let opened = Instant::now();
    let tcp = TcpStream::connect(gw.http()).await.unwrap();
    let mut h2 = RawH2::start(tcp).await;
    let at = within(
        BOUND,
        "GOAWAY and close of an idle h2c connection",
        goaway_then_close(&mut h2),
    )
    .await;
    assert!(
        at - opened >= Duration::from_millis(900),
        "GOAWAY only after the idle timeout ({:?})",
        at - opened
    );

    // h2 over TLS.
    let tls = tls_connect(&dir.path().join("ca.crt"), gw.https(), b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut h2 = RawH2::start(tls).await;
    within(
        BOUND,
        "GOAWAY and close of an idle h2 TLS connection",
        goaway_then_close(&mut h2),
    )
    .await;
}

#[tokio::test]
async fn an_open_http2_stream_is_not_cut_by_the_idle_timeout() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "ingress:\n  http: {{listen: HTTP_ADDR}}\n{}",
        idle_limits("1s", "60s")
    );
    let gw = Gateway::ready(dir.path(), &static_config(worker, &extra)).await;

    let tcp = TcpStream::connect(gw.http()).await.unwrap();
    let mut h2 = RawH2::start(tcp).await;
    let opened = Instant::now();
    // A stream that stays open for 2.5 s, longer than the idle timeout.
    h2.get(1, "/delay?ms=2500").await;
    let mut status_seen = false;
    let mut body = Vec::new();
    loop {
        let f = within(BOUND, "frames of the open stream", h2.next())
            .await
            .expect("the connection was closed while the stream was open");
        match f.kind {
            HEADERS => {
                assert_eq!(f.stream, 1);
                // :status 200 is HPACK static index 8.
                assert_eq!(f.payload.first(), Some(&0x88), "status 200");
                status_seen = true;
            }
            DATA => body.extend_from_slice(&f.payload),
            GOAWAY => panic!("GOAWAY while a stream was open"),
            RST_STREAM => panic!("stream reset"),
            _ => {}
        }
        if f.stream == 1 && f.flags & END_STREAM != 0 && matches!(f.kind, HEADERS | DATA) {
            break;
        }
    }
    assert!(status_seen);
    assert_eq!(body, b"delayed\n");
    assert!(opened.elapsed() >= Duration::from_millis(2500));
    // Idle again: now it goes.
    let ended = Instant::now();
    let at = within(
        BOUND,
        "GOAWAY after the stream ended",
        goaway_then_close(&mut h2),
    )
    .await;
    assert!(at - ended >= Duration::from_millis(900), "{:?}", at - ended);
}

#[tokio::test]
async fn idle_http1_connections_are_closed_by_the_same_timeout() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "ingress:\n  http: {{listen: HTTP_ADDR}}\n{}",
        idle_limits("1s", "60s")
    );
    let gw = Gateway::ready(dir.path(), &static_config(worker, &extra)).await;

    // Keep-alive after a response: closed once idle for the timeout (header_read_timeout is 60 s).
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\nhost: gw\r\nate-target-actor: demo/hello\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    while !out.ends_with(b"hello\n") {
        let n = within(BOUND, "the keep-alive response", s.read(&mut chunk))
            .await
            .unwrap();
        assert!(
            n > 0,
            "closed before the response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&chunk[..n]);
    }
    assert!(out.starts_with(b"HTTP/1.1 200"));
    let answered = Instant::now();
    let mut rest = Vec::new();
    within(
        BOUND,
        "close of an idle keep-alive connection",
        s.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(answered.elapsed() >= Duration::from_millis(900));

    // A connection that never sends a byte is closed too.
    let mut s = TcpStream::connect(gw.http()).await.unwrap();
    let mut rest = Vec::new();
    within(
        BOUND,
        "close of a silent connection",
        s.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn an_out_of_range_idle_connection_timeout_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "ingress:\n  http: {{listen: HTTP_ADDR}}\n{}\ndirectory: {{static: {{actors: []}}}}\n",
            idle_limits("0s", "30s")
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("ingress.limits.idle_connection_timeout") && err.contains("out of range"),
        "{err}"
    );
}
