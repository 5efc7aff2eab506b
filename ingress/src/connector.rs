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
}

impl WorkerConnector {
    pub fn new(http: HttpConnector, tls: Option<Arc<ReloadableClientConfig>>) -> Self {
        let mut http = http;
        // TLS wraps the TCP stream itself; the inner connector must accept https:// URIs.
        http.enforce_http(tls.is_none());
        Self { http, tls }
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
                let mut https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(self.http.clone());
                Box::pin(async move { https.call(dst).await })
            }
        }
    }
}
