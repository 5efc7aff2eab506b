//! Connections to workers: plain TCP, or TLS (the worker agent's mTLS on port 443) using the
//! identity crate's reloadable client config, read per new connection so rotated gateway
//! certificates and CA bundles apply without restart. Pooled connections keep theirs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use identity::tls::ReloadableClientConfig;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::body::BoxError;

/// Dials workers over plain TCP, or TLS when a client config is given.
#[derive(Clone)]
pub struct WorkerConnector {
    http: HttpConnector,
    tls: Option<Arc<ReloadableClientConfig>>,
    /// Offer `h2` (the HTTP/2 client) or `http/1.1` (the HTTP/1.1 client) in ALPN, never both:
    /// the protocol is chosen per request, not by the worker.
    h2: bool,
    /// Bounds the TLS handshake like the TCP connect.
    handshake_timeout: std::time::Duration,
}

impl WorkerConnector {
    /// A connector over `http` (TCP), with TLS from `tls` when given; `h2` picks the ALPN offer,
    /// `handshake_timeout` bounds the TLS handshake.
    pub fn new(
        http: HttpConnector,
        tls: Option<Arc<ReloadableClientConfig>>,
        h2: bool,
        handshake_timeout: std::time::Duration,
    ) -> Self {
        let mut http = http;
        // TLS wraps the TCP stream itself; the inner connector must accept https:// URIs.
        http.enforce_http(tls.is_none());
        Self {
            http,
            tls,
            h2,
            handshake_timeout,
        }
    }

    /// The URI scheme requests to workers use.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

impl Service<Uri> for WorkerConnector {
    type Response = MaybeHttpsStream<TokioIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match &self.tls {
            None => {
                let connecting = self.http.call(dst);
                Box::pin(async move { Ok(MaybeHttpsStream::Http(connecting.await?)) })
            }
            Some(tls) => {
                let config = (*tls.current()).clone();
                let builder = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only();
                let mut https = if self.h2 {
                    builder.enable_http2().wrap_connector(self.http.clone())
                } else {
                    builder.enable_http1().wrap_connector(self.http.clone())
                };
                let limit = self.handshake_timeout;
                Box::pin(async move {
                    match tokio::time::timeout(limit, https.call(dst)).await {
                        Ok(r) => r,
                        Err(_) => Err(format!(
                            "TLS connection to the worker not established within {limit:?}"
                        )
                        .into()),
                    }
                })
            }
        }
    }
}
