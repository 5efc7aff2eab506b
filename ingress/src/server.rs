//! Ingress listeners: HTTP (HTTP/1.1 and h2c prior knowledge on one port) and HTTPS (ALPN `h2`
//! and `http/1.1`, optional client certificates, reloadable material). Header size, header count
//! and header read time are bounded; on shutdown the listener stops accepting and open
//! connections finish their requests (HTTP/1.1 closes after the current response, HTTP/2 sends
//! GOAWAY).

use std::sync::Arc;
use std::time::Duration;

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
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_concurrent_streams: 250,
            tls_handshake_timeout: Duration::from_secs(10),
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
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
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
        let watcher = graceful.watcher();
        let handshake_timeout = limits.tls_handshake_timeout;
        tokio::spawn(async move {
            gauge.inc();
            let info = ConnInfo {
                peer,
                tls: tls.is_some(),
                trusted_source: false,
            };
            let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(proxy.handle(req, info).await) }
            });
            match tls {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                Some(tls) => {
                    match tokio::time::timeout(handshake_timeout, tls.acceptor().accept(tcp)).await
                    {
                        Ok(Ok(stream)) => {
                            let conn =
                                builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                            if let Err(e) = watcher.watch(conn.into_owned()).await {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
            gauge.dec();
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}
