//! Serving the proxy on an ingress listener: HTTP (HTTP/1.1 and h2c prior knowledge on one port)
//! or HTTPS (ALPN `h2` and `http/1.1`, optional client certificates, reloadable material).
//!
//! The accept loop, TLS handshakes, connection limits, graceful close on drain and on idleness
//! are the runtime's ([`runtime::listener`], [`runtime::http`]): every listener of the process
//! shares them. This module only maps the ingress limits onto them, builds the per-connection
//! [`ConnInfo`] (peer address, TLS, the client certificate's SPIFFE ID) and keeps the
//! active-connections gauge.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use prometheus_client::metrics::gauge::Gauge;
use runtime::drain::DrainSignal;
use runtime::http::{HttpServer, HttpSettings};
use runtime::listener::BoundListener;

use crate::metrics::IngressMetrics;
use crate::proxy::{ConnInfo, Proxy};
use crate::trusted_peers::TrustedPeers;

/// Limits of an ingress listener (the `ingress.limits` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
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
        let http = HttpSettings::default();
        Self {
            header_read_timeout: http.header_read_timeout,
            max_header_bytes: http.max_header_bytes,
            max_headers: http.max_headers,
            max_concurrent_streams: http.max_concurrent_streams,
            tls_handshake_timeout: runtime::ListenerLimits::default().tls_handshake_timeout,
            idle_connection_timeout: http.idle_connection_timeout,
        }
    }
}

impl ListenerLimits {
    /// The HTTP protocol settings of the listener (HTTP/2 keepalive and send buffer at the
    /// runtime's defaults: PING every 30 s, 10 s to answer, 64 KiB buffered per stream).
    pub fn http_settings(&self) -> HttpSettings {
        HttpSettings {
            header_read_timeout: self.header_read_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            max_concurrent_streams: self.max_concurrent_streams,
            idle_connection_timeout: self.idle_connection_timeout,
            ..HttpSettings::default()
        }
    }

    /// The accept loop's limits (TLS handshake timeout; connection counts at the runtime's
    /// defaults).
    pub fn listener_limits(&self) -> runtime::ListenerLimits {
        runtime::ListenerLimits {
            tls_handshake_timeout: self.tls_handshake_timeout,
            ..runtime::ListenerLimits::default()
        }
    }
}

/// Decrements the connection gauge when the connection's service is dropped (the connection
/// ended, or was handed over as an upgraded connection).
struct Counted(Gauge);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves `proxy` on `listener` until the drain starts; open connections then finish their
/// requests (HTTP/1.1 closes after the current response, HTTP/2 sends GOAWAY) and are held by
/// the drain. `name` labels the connection gauge (`http`, `https`). Clients whose verified
/// certificate `trusted` names may send `ate-source-actor`; everyone else's is stripped.
/// Returns once the listener has stopped accepting. The listener's own limits and TLS are set
/// by the caller (see [`ListenerLimits::listener_limits`]).
pub async fn serve(
    listener: BoundListener,
    proxy: Proxy,
    limits: &ListenerLimits,
    name: &'static str,
    trusted: Arc<TrustedPeers>,
    metrics: &IngressMetrics,
    drain: DrainSignal,
) {
    let gauge = metrics.connections(name);
    let server = HttpServer::new(&limits.http_settings());
    server
        .serve(listener, drain, move |conn| {
            // One reference per request to what the connection's requests share: cloning the
            // `Proxy` itself per request would clone its drain signal, whose tokens lock.
            let shared = Arc::new((
                proxy.clone(),
                ConnInfo {
                    peer: conn.peer,
                    tls: conn.tls,
                    peer_identity: conn.peer_identity.clone().map(Arc::new),
                    trusted_source: trusted.trusts(conn.spiffe_id()),
                },
            ));
            gauge.inc();
            let counted = Counted(gauge.clone());
            hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                let _counted = &counted;
                let shared = shared.clone();
                async move {
                    let (proxy, info) = &*shared;
                    Ok::<_, std::convert::Infallible>(proxy.handle(req, info.clone()).await)
                }
            })
        })
        .await
}
