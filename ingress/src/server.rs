//! Ingress listeners: HTTP (HTTP/1.1 and h2c prior knowledge on one port) and HTTPS (ALPN `h2`
//! and `http/1.1`, optional client certificates, reloadable material). Header size, header count
//! and header read time are bounded; on shutdown the listener stops accepting and open
//! connections finish their requests (HTTP/1.1 closes after the current response, HTTP/2 sends
//! GOAWAY). A connection with no request in progress for `idle_connection_timeout` is closed the
//! same way. An HTTP/1.1 client that half-closes after its request is answered (RFC 9112 §9.6).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use identity::tls::ReloadableServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::proxy::{ConnInfo, Proxy};

/// Limits of a listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Longest time to receive a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes (HTTP/1.1 buffer; HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Most request headers (HTTP/1.1).
    pub max_headers: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Longest TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// Longest time a connection may stay open with no request in progress (HTTP/2: no open
    /// stream; HTTP/1.1: between requests, or before the first). Then it is closed gracefully:
    /// HTTP/2 gets GOAWAY, HTTP/1.1 is closed. HTTP/1.1 connections are also bounded by
    /// `header_read_timeout`, which runs while waiting for the next request's head.
    pub idle_connection_timeout: Duration,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 250,
            tls_handshake_timeout: Duration::from_secs(10),
            idle_connection_timeout: Duration::from_secs(300),
        }
    }
}

fn builder(limits: &ListenerLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers)
        // A client that shuts down its write side after the request still gets the response
        // (RFC 9112 §9.6: a half-close is not an abort); the connection closes after it.
        .half_close(true)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(limits.max_concurrent_streams)
        // Bounds what a slow-reading client can make the proxy hold per stream.
        .max_send_buf_size(64 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    b
}

/// Serves the proxy on `listener` until `shutdown` is true, then drains open connections
/// (the caller bounds how long with a timeout). `name` labels the connection gauge.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    tls: Option<Arc<ReloadableServerConfig>>,
    limits: ListenerLimits,
    name: &'static str,
    metrics: crate::metrics::IngressMetrics,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = Arc::new(builder(&limits));
    // Every connection task holds a clone; draining waits until all are dropped.
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel::<()>(1);
    let gauge = metrics.connections(name);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let _ = tcp.set_nodelay(true);
        let proxy = proxy.clone();
        let builder = builder.clone();
        let gauge = gauge.clone();
        let tls = tls.clone();
        let open = open_tx.clone();
        let mut shutdown = shutdown.clone();
        let handshake_timeout = limits.tls_handshake_timeout;
        let idle_timeout = limits.idle_connection_timeout;
        tokio::spawn(async move {
            let _open = open;
            gauge.inc();
            let info = ConnInfo {
                peer,
                tls: tls.is_some(),
                trusted_source: false,
            };
            let active = Arc::new(watch::Sender::new(0usize));
            let idle = idle_for(active.subscribe(), idle_timeout);
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let proxy = proxy.clone();
                let guard = ActiveGuard::new(&active);
                async move {
                    let resp = proxy.handle(req, info).await;
                    Ok::<_, std::convert::Infallible>(resp.map(|body| Tracked {
                        body,
                        guard: Some(guard),
                    }))
                }
            });
            let ended = match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    drive(
                        conn.into_owned(),
                        |c| c.graceful_shutdown(),
                        idle,
                        &mut shutdown,
                    )
                    .await
                }
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            drive(
                                conn.into_owned(),
                                |c| c.graceful_shutdown(),
                                idle,
                                &mut shutdown,
                            )
                            .await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            gauge.dec();
        });
    }
    drop(listener);
    drop(open_tx);
    // Resolves once every connection task has ended.
    let _ = open_rx.recv().await;
}

/// Runs a connection to its end. On shutdown, or once it has been idle for the idle connection
/// timeout, it is asked to close gracefully (HTTP/2: GOAWAY, open streams finish; HTTP/1.1:
/// closed after the current response, at once when idle) and then run until it has.
async fn drive<C, E>(
    conn: C,
    graceful: impl FnOnce(Pin<&mut C>),
    idle: impl std::future::Future<Output = ()>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), E>
where
    C: std::future::Future<Output = Result<(), E>>,
{
    tokio::pin!(conn);
    tokio::pin!(idle);
    let why = tokio::select! {
        ended = conn.as_mut() => return ended,
        _ = &mut idle => "idle",
        _ = stopped(shutdown) => "shutdown",
    };
    tracing::debug!(reason = why, "closing connection gracefully");
    graceful(conn.as_mut());
    conn.await
}

/// Resolves once no request has been in progress on the connection for `timeout`.
async fn idle_for(mut active: watch::Receiver<usize>, timeout: Duration) {
    loop {
        if active.wait_for(|n| *n == 0).await.is_err() {
            // The connection (and its service) is gone.
            return std::future::pending().await;
        }
        match tokio::time::timeout(timeout, active.changed()).await {
            Err(_) => return,
            Ok(Ok(())) => continue,
            Ok(Err(_)) => return std::future::pending().await,
        }
    }
}

/// One request in progress on a connection (HTTP/2: one open stream), from the service call
/// until its response body has ended or been dropped.
struct ActiveGuard(Arc<watch::Sender<usize>>);

impl ActiveGuard {
    fn new(active: &Arc<watch::Sender<usize>>) -> Self {
        active.send_modify(|n| *n += 1);
        Self(active.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in progress until it ends.
    struct Tracked<B> {
        #[pin]
        body: B,
        guard: Option<ActiveGuard>,
    }
}

impl<B: Body<Data = Bytes>> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.guard.take();
        }
        polled
    }
    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
