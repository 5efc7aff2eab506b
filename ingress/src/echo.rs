//! The echo worker (`actorgate echo-worker`): a backend for the local demo, the tests and the
//! benchmarks. One port serves HTTP/1.1 and h2c, WebSocket echo, and the gRPC `Echo` service.
//!
//! | path | answer |
//! |---|---|
//! | `/hello` | `hello\n` (benchmarks) |
//! | `/sse?events=N&interval_ms=M` | N server-sent events, M ms apart |
//! | `/bytes?n=N` | N bytes, streamed in 64 KiB chunks |
//! | `/upload` | consumes the body, answers `{"bytes": N}` |
//! | `/ws` | WebSocket echo |
//! | `/status/<code>` | that status |
//! | `/delay?ms=N` | answers after N ms |
//! | `/misdirected` | 421 with `X-Ate-Assignment-Stale: true` |
//! | anything else | JSON: worker, method, path, version, headers, body size |
//! | `content-type: application/grpc*` | `actorgate.echo.v1.Echo` |
//!
//! Every answer carries `x-echo-worker: <name>`.

use std::convert::Infallible;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, Stream, StreamExt};
use http::{Request, Response, StatusCode, header};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use runtime::drain::{Drain, DrainSignal};
use runtime::http::HttpServer;
use runtime::listener::BoundListener;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tonic::codegen::Service;

use crate::body::BoxError;

/// Generated gRPC types of `actorgate.echo.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("actorgate.echo.v1");
}

use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest};

type Body = UnsyncBoxBody<Bytes, BoxError>;

/// A connection with no request in progress this long is closed.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

fn full(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn query_u64(req: &Request<Incoming>, key: &str, default: u64) -> u64 {
    req.uri()
        .query()
        .and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        })
        .unwrap_or(default)
}

/// The gRPC echo service.
#[derive(Clone)]
struct EchoService {
    worker: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, tonic::Status>> + Send>>;

fn failure(code: i32) -> tonic::Status {
    tonic::Status::new(
        tonic::Code::from_i32(code),
        format!("requested failure {code}"),
    )
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoReply>, tonic::Status> {
        let r = request.into_inner();
        if r.fail_code != 0 {
            return Err(failure(r.fail_code));
        }
        Ok(tonic::Response::new(EchoReply {
            message: r.message,
            index: 0,
            worker: self.worker.clone(),
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
        let r = request.into_inner();
        let worker = self.worker.clone();
        let count = r.count.clamp(0, 100_000);
        let fail = r.fail_code;
        let replies = futures_util::stream::iter(0..count).map(move |i| {
            Ok(EchoReply {
                message: r.message.clone(),
                index: i,
                worker: worker.clone(),
            })
        });
        let tail = futures_util::stream::iter((fail != 0).then(|| Err(failure(fail))));
        Ok(tonic::Response::new(Box::pin(replies.chain(tail))))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<ReplyStream>, tonic::Status> {
        let worker = self.worker.clone();
        let mut i = 0;
        let out = request.into_inner().map(move |m| {
            let m = m?;
            if m.fail_code != 0 {
                return Err(failure(m.fail_code));
            }
            i += 1;
            Ok(EchoReply {
                message: m.message,
                index: i - 1,
                worker: worker.clone(),
            })
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

async fn handle(
    req: Request<Incoming>,
    worker: String,
    mut grpc: EchoServer<EchoService>,
    drain: DrainSignal,
) -> Result<Response<Body>, Infallible> {
    let is_grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let mut resp = if is_grpc {
        match grpc.call(req).await {
            Ok(r) => r.map(|b| b.map_err(|e| -> BoxError { Box::new(e) }).boxed_unsync()),
            Err(never) => match never {},
        }
    } else {
        http_route(req, &worker, &drain).await
    };
    if let Ok(v) = header::HeaderValue::from_str(&worker) {
        resp.headers_mut().insert("x-echo-worker", v);
    }
    Ok(resp)
}

async fn http_route(
    mut req: Request<Incoming>,
    worker: &str,
    drain: &DrainSignal,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/hello" => full(StatusCode::OK, "text/plain", "hello\n"),
        "/sse" => {
            let events = query_u64(&req, "events", 5).min(10_000);
            let interval = Duration::from_millis(query_u64(&req, "interval_ms", 100).min(60_000));
            let stream = futures_util::stream::unfold(0u64, move |i| async move {
                if i >= events {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(interval).await;
                }
                let frame = Frame::data(Bytes::from(format!("id: {i}\ndata: event {i}\n\n")));
                Some((Ok::<_, BoxError>(frame), i + 1))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/event-stream"),
            );
            r.headers_mut().insert(
                header::CACHE_CONTROL,
                header::HeaderValue::from_static("no-cache"),
            );
            r
        }
        "/bytes" => {
            let n = query_u64(&req, "n", 1024);
            const CHUNK: u64 = 64 * 1024;
            let chunk = Bytes::from(vec![b'x'; CHUNK as usize]);
            let stream = futures_util::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(CHUNK);
                    Some((
                        Ok::<_, BoxError>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/octet-stream"),
            );
            if let Ok(v) = header::HeaderValue::from_str(&n.to_string()) {
                r.headers_mut().insert(header::CONTENT_LENGTH, v);
            }
            r
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut total: u64 = 0;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        return full(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            format!("body error: {e}\n"),
                        );
                    }
                }
            }
            full(
                StatusCode::OK,
                "application/json",
                format!("{{\"bytes\":{total}}}"),
            )
        }
        "/ws" => websocket(&mut req, drain),
        "/delay" => {
            tokio::time::sleep(Duration::from_millis(
                query_u64(&req, "ms", 100).min(600_000),
            ))
            .await;
            full(StatusCode::OK, "text/plain", "delayed\n")
        }
        "/misdirected" => {
            let mut r = full(StatusCode::MISDIRECTED_REQUEST, "text/plain", "not here\n");
            r.headers_mut().insert(
                &routing_core::wire::ASSIGNMENT_STALE,
                header::HeaderValue::from_static("true"),
            );
            r
        }
        p if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            match code {
                Some(c) => full(c, "text/plain", format!("status {}\n", c.as_u16())),
                None => full(StatusCode::BAD_REQUEST, "text/plain", "bad status\n"),
            }
        }
        _ => {
            let headers: Vec<(String, String)> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let method = req.method().to_string();
            let uri = req.uri().to_string();
            let version = format!("{:?}", req.version());
            let mut body = req.into_body();
            let mut bytes: u64 = 0;
            while let Some(Ok(f)) = body.frame().await {
                bytes += f.data_ref().map_or(0, |d| d.len() as u64);
            }
            let json = serde_json::json!({
                "worker": worker,
                "method": method,
                "uri": uri,
                "version": version,
                "headers": headers,
                "body_bytes": bytes,
            });
            full(StatusCode::OK, "application/json", json.to_string())
        }
    }
}

/// Answers a WebSocket upgrade; the session runs as work `drain` waits for.
fn websocket(req: &mut Request<Incoming>, drain: &DrainSignal) -> Response<Body> {
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| tokio_tungstenite::tungstenite::handshake::derive_accept_key(k.as_bytes()));
    let (Some(accept), true) = (key, crate::headers::wants_upgrade(req.headers())) else {
        return full(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "websocket upgrade required\n",
        );
    };
    let on_upgrade = hyper::upgrade::on(req);
    drain.spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            None,
        )
        .await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_close() {
                let _ = ws.close(None).await;
                break;
            }
            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                break;
            }
        }
    });
    let mut r = full(StatusCode::SWITCHING_PROTOCOLS, "text/plain", Bytes::new());
    let h = r.headers_mut();
    h.remove(header::CONTENT_TYPE);
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(v) = header::HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}

/// How long [`serve`] lets open connections finish after `shutdown` resolved.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Serves the echo worker on a runtime listener until the drain starts (accept loop, limits
/// and graceful close are the runtime's). Connections and WebSocket sessions are work the drain
/// waits for. Returns once the listener has stopped accepting.
pub async fn serve_listener(listener: BoundListener, worker: String, drain: DrainSignal) {
    let grpc = EchoServer::new(EchoService {
        worker: worker.clone(),
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    // Answer a client that shuts down its write side after the request (RFC 9112 §9.6).
    builder.http1().half_close(true);
    let server = HttpServer::from_builder(builder, IDLE_CONNECTION_TIMEOUT);
    let signal = drain.clone();
    server
        .serve(listener, drain, move |_| {
            let worker = worker.clone();
            let grpc = grpc.clone();
            let drain = signal.clone();
            hyper::service::service_fn(move |req| {
                handle(req, worker.clone(), grpc.clone(), drain.clone())
            })
        })
        .await
}

/// Serves the echo worker on `listener` until `shutdown` resolves, then lets open connections
/// and WebSocket sessions finish for up to 5 s (the `actorgate echo-worker` process, and tests
/// that run a worker of their own). Returns once they have ended.
pub async fn serve(
    listener: TcpListener,
    worker: String,
    shutdown: impl std::future::Future<Output = ()>,
) {
    serve_with_tls(listener, worker, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (the demo's HTTPS origin, e.g. behind the egress
/// PEP's interception).
pub async fn serve_with_tls(
    listener: TcpListener,
    worker: String,
    tls: Option<std::sync::Arc<dyn runtime::listener::ServerTlsSource>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let listener = match BoundListener::from_tcp("echo-worker --listen", listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "echo worker cannot serve");
            return;
        }
    };
    let listener = match tls {
        Some(tls) => listener.with_tls(tls),
        None => listener,
    };
    let drain = Drain::new();
    let accepting = tokio::spawn(serve_listener(listener, worker, drain.signal()));
    shutdown.await;
    drain.shutdown(SHUTDOWN_GRACE).await;
    let _ = accepting.await;
}
