//! `pooled` tunnels (DESIGN §7.1, actorgate extension): RFC 9113 CONNECT streams over h2
//! connections to the PEP shared by many captured connections — no TLS handshake per
//! connection. At most `max_streams` tunnels per connection; a new connection is opened when
//! every open one is full (or none is usable), and closed connections leave the pool. A
//! connection that fails to open is retried for the next tunnel after a backoff that doubles up
//! to 5 s, so a PEP that is down is not hammered.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use identity::tls::ReloadableClientConfig;
use parking_lot::Mutex;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::agent::per_connection::{Assertions, TunnelError, connect_tls};

/// Longest wait before the next attempt to open a connection after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

struct Conn {
    send: http2::SendRequest<Empty<Bytes>>,
    streams: Arc<AtomicUsize>,
}

struct Backoff {
    until: Option<Instant>,
    next: Duration,
}

/// Opens `pooled` tunnels to one PEP.
pub struct Pooled {
    pep: SocketAddr,
    name: ServerName<'static>,
    tls: Arc<ReloadableClientConfig>,
    timeout: Duration,
    mark: Option<u32>,
    max_streams: usize,
    conns: Mutex<Vec<Conn>>,
    backoff: Mutex<Backoff>,
    assertions: Option<Arc<Assertions>>,
}

impl Pooled {
    /// Tunnels to `pep` named `name` over h2 with `tls` (which must offer ALPN `h2`), at most
    /// `max_streams` per connection (at least 1), each opened within `timeout`.
    ///
    /// # Errors
    /// [`TunnelError::BadName`] for a `name` that is not a DNS name or IP address.
    pub fn new(
        pep: SocketAddr,
        name: &str,
        tls: Arc<ReloadableClientConfig>,
        timeout: Duration,
        max_streams: usize,
    ) -> Result<Self, TunnelError> {
        let server = ServerName::try_from(name.to_owned())
            .map_err(|_| TunnelError::BadName(name.to_owned()))?;
        Ok(Self {
            pep,
            name: server,
            tls,
            timeout,
            mark: None,
            max_streams: max_streams.max(1),
            conns: Mutex::new(Vec::new()),
            backoff: Mutex::new(Backoff {
                until: None,
                next: Duration::from_millis(100),
            }),
            assertions: None,
        })
    }

    /// Sends an egress assertion with every CONNECT (see [`Assertions`]).
    pub fn with_assertions(mut self, assertions: Arc<Assertions>) -> Self {
        self.assertions = Some(assertions);
        self
    }

    /// Sets `SO_MARK` on the connections to the PEP.
    pub fn with_mark(mut self, mark: u32) -> Self {
        self.mark = Some(mark);
        self
    }

    /// Open h2 connections to the PEP now.
    pub fn connections(&self) -> usize {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.send.is_closed());
        conns.len()
    }

    /// A tunnel to `dst` on a shared connection.
    ///
    /// # Errors
    /// [`TunnelError`]; [`TunnelError::Refused`] carries the PEP's status.
    pub async fn open(&self, dst: SocketAddr) -> Result<PooledTunnel, TunnelError> {
        tokio::time::timeout(self.timeout, self.open_now(dst))
            .await
            .map_err(|_| TunnelError::Timeout(self.timeout))?
    }

    async fn open_now(&self, dst: SocketAddr) -> Result<PooledTunnel, TunnelError> {
        let (mut send, streams) = match self.usable() {
            Some(c) => c,
            None => self.connect().await?,
        };
        streams.fetch_add(1, Ordering::Relaxed);
        let slot = StreamSlot(streams);
        let mut req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(dst.to_string());
        if let Some(a) = &self.assertions {
            req = req.header(crate::tunnel::ASSERTION_HEADER, a.for_dst(dst)?);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| TunnelError::BadAnswer(format!("CONNECT request: {e}")))?;
        send.ready()
            .await
            .map_err(|e| TunnelError::Io(std::io::Error::other(e)))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| TunnelError::Io(std::io::Error::other(e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(TunnelError::Refused {
                status: status.as_u16(),
                reason: status.canonical_reason().unwrap_or("").to_owned(),
            });
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| TunnelError::Io(std::io::Error::other(e)))?;
        Ok(PooledTunnel {
            io: TokioIo::new(upgraded),
            _slot: slot,
        })
    }

    /// An open connection with room for another stream.
    fn usable(&self) -> Option<(http2::SendRequest<Empty<Bytes>>, Arc<AtomicUsize>)> {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.send.is_closed());
        conns
            .iter()
            .find(|c| c.streams.load(Ordering::Relaxed) < self.max_streams && c.send.is_ready())
            .map(|c| (c.send.clone(), c.streams.clone()))
    }

    /// Opens a new h2 connection (unless backing off after failures) and keeps it.
    async fn connect(
        &self,
    ) -> Result<(http2::SendRequest<Empty<Bytes>>, Arc<AtomicUsize>), TunnelError> {
        if let Some(until) = self.backoff.lock().until
            && Instant::now() < until
        {
            return Err(TunnelError::Connect(std::io::Error::other(
                "backing off after failed connections to the PEP",
            )));
        }
        let opened = async {
            let tls = connect_tls(self.pep, &self.name, &self.tls, self.mark).await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err(TunnelError::BadAnswer(
                    "the PEP did not agree to h2 (ALPN)".into(),
                ));
            }
            let (send, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(20))
                .handshake(TokioIo::new(tls))
                .await
                .map_err(|e| TunnelError::Handshake(std::io::Error::other(e)))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "pooled h2 connection to the PEP ended");
                }
            });
            Ok(send)
        }
        .await;
        let mut backoff = self.backoff.lock();
        match opened {
            Ok(send) => {
                backoff.until = None;
                backoff.next = Duration::from_millis(100);
                let streams = Arc::new(AtomicUsize::new(0));
                self.conns.lock().push(Conn {
                    send: send.clone(),
                    streams: streams.clone(),
                });
                Ok((send, streams))
            }
            Err(e) => {
                backoff.until = Some(Instant::now() + backoff.next);
                backoff.next = (backoff.next * 2).min(MAX_BACKOFF);
                Err(e)
            }
        }
    }
}

/// Counts one open stream of a connection until dropped.
struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pooled tunnel: a CONNECT stream's bytes.
pub struct PooledTunnel {
    io: TokioIo<hyper::upgrade::Upgraded>,
    _slot: StreamSlot,
}

impl AsyncRead for PooledTunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PooledTunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
