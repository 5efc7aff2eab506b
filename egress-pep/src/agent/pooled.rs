//! `pooled` tunnels (DESIGN §7.1, actorgate extension): RFC 9113 CONNECT streams over h2
//! connections to the PEP shared by many captured connections — no TLS handshake per
//! connection. At most `max_streams` tunnels per connection; a new connection is opened when
//! every open one is full (or none is usable), and closed connections leave the pool. A
//! connection that fails to open is retried for the next tunnel after a backoff that doubles up
//! to 5 s, so a PEP that is down is not hammered; one connection is opened at a time. Every
//! connection is pinged every 30 s and closed when a ping goes unanswered for 20 s, and closed
//! after 5 minutes without a tunnel. A tunnel whose connection was closing (the PEP's GOAWAY
//! on a drain or restart) is retried once on another connection.
//!
//! Built on the h2 crate directly (not hyper's CONNECT upgrade) so that a tunnel's first bytes,
//! when the actor has already sent them, leave with the CONNECT instead of one round trip later
//! (RFC 9113 §8.5 lets DATA follow the request's HEADERS; the PEP reads them after its `200`,
//! and a refused tunnel discards them). This saves a round trip to the PEP on every new
//! connection whose client speaks first (HTTP, TLS).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use std::sync::atomic::AtomicBool;

use bytes::{BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::agent::per_connection::{PepEndpoint, TunnelError};
use crate::agent::tunnels::EARLY_BYTES;
use crate::h2_tunnel::{H2Tunnel, h2_to_io};

/// Longest wait before the next attempt to open a connection after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often an h2 connection to the PEP is pinged, and how long a ping may go unanswered.
const KEEP_ALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(20));
/// A connection without a tunnel this long is closed (checked at each ping).
const IDLE_CLOSE: Duration = Duration::from_secs(300);

struct Conn {
    send: SendRequest<Bytes>,
    streams: Arc<AtomicUsize>,
    /// Set when the connection has ended (its driver returned).
    closed: Arc<AtomicBool>,
}

/// What a tunnel needs of a pooled connection: its sender, the stream slot reserved on it,
/// and its closed flag (set when a request on it fails, so no other tunnel picks it).
type Usable = (SendRequest<Bytes>, StreamSlot, Arc<AtomicBool>);

struct Backoff {
    until: Option<Instant>,
    next: Duration,
}

/// Opens `pooled` tunnels to one PEP.
pub struct Pooled {
    pep: PepEndpoint,
    max_streams: usize,
    conns: Mutex<Vec<Conn>>,
    /// Held while a connection opens: a burst of tunnels opens one, not one each.
    connecting: tokio::sync::Mutex<()>,
    backoff: Mutex<Backoff>,
    metrics: Option<crate::agent::metrics::AgentMetrics>,
}

impl Pooled {
    /// Tunnels to `pep` (whose client config must offer ALPN `h2`), at most `max_streams` per
    /// connection (at least 1).
    pub fn new(pep: PepEndpoint, max_streams: usize) -> Self {
        Self {
            pep,
            max_streams: max_streams.max(1),
            conns: Mutex::new(Vec::new()),
            connecting: tokio::sync::Mutex::new(()),
            backoff: Mutex::new(Backoff {
                until: None,
                next: Duration::from_millis(100),
            }),
            metrics: None,
        }
    }

    /// Counts the open h2 connections in `actorgate_agent_pep_connections`.
    pub fn with_metrics(mut self, metrics: crate::agent::metrics::AgentMetrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Open h2 connections to the PEP now.
    pub fn connections(&self) -> usize {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.closed.load(Ordering::Relaxed));
        conns.len()
    }

    /// A tunnel to `dst` on a shared connection.
    ///
    /// # Errors
    /// [`TunnelError`]; [`TunnelError::Refused`] carries the PEP's status.
    pub async fn open(&self, dst: SocketAddr) -> Result<PooledTunnel, TunnelError> {
        self.open_named(dst, None).await
    }

    /// [`Pooled::open`], the CONNECT naming `host` in `ate-destination-host` when given (see
    /// [`super::per_connection::PerConnection::open_named`]).
    ///
    /// # Errors
    /// As [`Pooled::open`].
    pub async fn open_named(
        &self,
        dst: SocketAddr,
        host: Option<&str>,
    ) -> Result<PooledTunnel, TunnelError> {
        self.open_timed(dst, Early::default(), host).await
    }

    /// A tunnel to `dst` whose first bytes `early` (what the actor already sent; may be empty)
    /// are sent right after the CONNECT, without waiting for the PEP's answer.
    ///
    /// # Errors
    /// As [`Pooled::open`]; a refused tunnel's early bytes reach nobody.
    pub async fn open_with(
        &self,
        dst: SocketAddr,
        early: Bytes,
    ) -> Result<PooledTunnel, TunnelError> {
        let mut sent = Early::default();
        sent.push(early);
        self.open_timed(dst, sent, None).await
    }

    /// A tunnel to `dst` for the captured connection `client`. What the actor has already
    /// sent leaves with the CONNECT, and what it sends while the PEP's answer is awaited
    /// follows at once instead of one round trip later (client-first protocols: HTTP, TLS);
    /// up to [`EARLY_BYTES`] in all, the rest waits for the answer. Bytes sent before the
    /// answer are sent again when the tunnel is retried on another connection.
    ///
    /// # Errors
    /// As [`Pooled::open`]; [`TunnelError::Client`] when reading `client` fails. A refused
    /// tunnel's bytes reach nobody.
    pub async fn open_for(
        &self,
        dst: SocketAddr,
        client: &TcpStream,
    ) -> Result<PooledTunnel, TunnelError> {
        let mut sent = Early {
            client: Some(client),
            ..Early::default()
        };
        sent.read_now().map_err(TunnelError::Client)?;
        self.open_timed(dst, sent, None).await
    }

    /// [`Pooled::open_now`] within the PEP endpoint's timeout.
    async fn open_timed(
        &self,
        dst: SocketAddr,
        early: Early<'_>,
        host: Option<&str>,
    ) -> Result<PooledTunnel, TunnelError> {
        let timeout = self.pep.timeout();
        tokio::time::timeout(timeout, self.open_now(dst, early, host))
            .await
            .map_err(|_| TunnelError::Timeout(timeout))?
    }

    async fn open_now(
        &self,
        dst: SocketAddr,
        mut early: Early<'_>,
        host: Option<&str>,
    ) -> Result<PooledTunnel, TunnelError> {
        // A connection the PEP is closing (GOAWAY) refuses new streams: the tunnel is retried
        // once on another one (a new one when none is left).
        let assertion = self.pep.assertion(dst)?;
        let mut retried = false;
        loop {
            let mut req = http::Request::builder()
                .method(http::Method::CONNECT)
                .uri(dst.to_string());
            if let Some(a) = &assertion {
                req = req.header(crate::tunnel::ASSERTION_HEADER, a.as_str());
            }
            if let Some(h) = host {
                req = req.header(crate::actor_forward::DESTINATION_HOST_HEADER, h);
            }
            let req = req
                .body(())
                .map_err(|e| TunnelError::BadAnswer(format!("CONNECT request: {e}")))?;
            let (send, slot, closed) = self.pick().await?;
            let (response, mut stream) = match send_connect(send, req, &early.chunks).await {
                Ok(sent) => sent,
                Err(e) if !retried => {
                    closed.store(true, Ordering::Relaxed);
                    tracing::debug!(error = %e, "pooled connection refused a tunnel; retrying");
                    retried = true;
                    continue;
                }
                Err(e) => return Err(h2_io(e)),
            };
            let resp = match early.answer(response, &mut stream).await {
                Err(e) => return Err(TunnelError::Client(e)),
                Ok(Ok(r)) => r,
                // Not processed by the PEP (RFC 9113 §8.7): safe to send again.
                Ok(Err(e)) if !retried && e.reason() == Some(h2::Reason::REFUSED_STREAM) => {
                    retried = true;
                    continue;
                }
                Ok(Err(e)) => return Err(h2_io(e)),
            };
            let status = resp.status();
            if !status.is_success() {
                return Err(TunnelError::Refused {
                    status: status.as_u16(),
                    reason: status.canonical_reason().unwrap_or("").to_owned(),
                });
            }
            return Ok(PooledTunnel {
                io: H2Tunnel::new(stream, resp.into_body()),
                early: early.len as u64,
                _slot: slot,
            });
        }
    }

    /// A connection with room for one more tunnel (its slot reserved), opening one when none
    /// has room; concurrent callers wait for one opening rather than each opening their own.
    async fn pick(&self) -> Result<Usable, TunnelError> {
        if let Some(c) = self.usable() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.usable() {
            return Ok(c);
        }
        self.connect().await
    }

    /// An open connection with room for another stream, its slot reserved under the pool's
    /// lock. Room is the smaller of `max_streams` and what the PEP allows
    /// (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    fn usable(&self) -> Option<Usable> {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.closed.load(Ordering::Relaxed));
        let c = conns.iter().find(|c| {
            let room = self.max_streams.min(c.send.current_max_send_streams());
            c.streams.load(Ordering::Relaxed) < room
        })?;
        c.streams.fetch_add(1, Ordering::Relaxed);
        Some((
            c.send.clone(),
            StreamSlot(c.streams.clone()),
            c.closed.clone(),
        ))
    }

    /// Opens a new h2 connection (unless backing off after failures) and keeps it.
    async fn connect(&self) -> Result<Usable, TunnelError> {
        if let Some(until) = self.backoff.lock().until
            && Instant::now() < until
        {
            return Err(TunnelError::Connect(std::io::Error::other(
                "backing off after failed connections to the PEP",
            )));
        }
        let opened = async {
            let tls = self.pep.connect().await?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2".as_slice()) {
                return Err(TunnelError::BadAnswer(
                    "the PEP did not agree to h2 (ALPN)".into(),
                ));
            }
            let (send, mut conn) = h2::client::Builder::new()
                // As hyper's client: windows large enough for one fast stream.
                .initial_window_size(2 * 1024 * 1024)
                .initial_connection_window_size(5 * 1024 * 1024)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(|e| TunnelError::Handshake(std::io::Error::other(e)))?;
            let closed = Arc::new(AtomicBool::new(false));
            let streams = Arc::new(AtomicUsize::new(0));
            let ping = conn.ping_pong();
            let (ended, watched) = (closed.clone(), streams.clone());
            let counted = self.metrics.as_ref().map(|m| m.pep_connection());
            tokio::spawn(async move {
                let _counted = counted;
                tokio::select! {
                    r = &mut conn => if let Err(e) = r {
                        tracing::debug!(error = %e, "pooled h2 connection to the PEP ended");
                    },
                    why = keep_alive(ping, &watched) => {
                        tracing::debug!(why, "pooled h2 connection to the PEP closed");
                    }
                }
                ended.store(true, Ordering::Relaxed);
            });
            Ok((send, closed, streams))
        }
        .await;
        let mut backoff = self.backoff.lock();
        match opened {
            Ok((send, closed, streams)) => {
                backoff.until = None;
                backoff.next = Duration::from_millis(100);
                // This tunnel's slot, reserved before the connection is visible to others.
                streams.fetch_add(1, Ordering::Relaxed);
                self.conns.lock().push(Conn {
                    send: send.clone(),
                    streams: streams.clone(),
                    closed: closed.clone(),
                });
                Ok((send, StreamSlot(streams), closed))
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

/// Pings every [`KEEP_ALIVE`] interval; returns (which ends the connection) when a ping is
/// not answered in time or cannot be sent, or when `streams` has been 0 for [`IDLE_CLOSE`].
async fn keep_alive(ping: Option<h2::PingPong>, streams: &AtomicUsize) -> &'static str {
    let mut idle_since: Option<Instant> = None;
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEP_ALIVE.0).await;
        if streams.load(Ordering::Relaxed) == 0 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE_CLOSE {
                return "no tunnel for 5 minutes";
            }
        } else {
            idle_since = None;
        }
        match tokio::time::timeout(KEEP_ALIVE.1, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return "ping failed",
            Err(_) => return "ping unanswered",
        }
    }
}

/// Sends `req` (a CONNECT) on `send` and the early bytes after it.
async fn send_connect(
    send: SendRequest<Bytes>,
    req: http::Request<()>,
    early: &[Bytes],
) -> Result<(h2::client::ResponseFuture, SendStream<Bytes>), h2::Error> {
    let mut send = send.ready().await?;
    let (response, mut stream) = send.send_request(req, false)?;
    for chunk in early {
        stream.send_data(chunk.clone(), false)?;
    }
    Ok((response, stream))
}

/// Most reads of a captured connection before the PEP's answer: an actor trickling bytes one
/// at a time cannot make a tunnel queue thousands of tiny DATA frames.
const EARLY_READS: usize = 64;

/// A tunnel's bytes sent before the PEP's answer (at most [`EARLY_BYTES`] in at most
/// [`EARLY_READS`] reads, all in one buffer of that size), kept to be sent again on a retry,
/// and the captured connection they are read from (none: only what the caller gave).
#[derive(Default)]
struct Early<'a> {
    chunks: Vec<Bytes>,
    len: usize,
    /// Where reads go: one allocation of [`EARLY_BYTES`] that every chunk shares.
    buf: BytesMut,
    client: Option<&'a TcpStream>,
    /// The client's write side has ended (its EOF stays for the splice to read).
    client_done: bool,
}

impl<'a> Early<'a> {
    fn push(&mut self, chunk: Bytes) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    /// Whether more of the client's bytes may be read before the answer.
    fn reading(&self) -> Option<&'a TcpStream> {
        self.client.filter(|_| {
            !self.client_done && self.len < EARLY_BYTES && self.chunks.len() < EARLY_READS
        })
    }

    /// Reads what the client has sent, without waiting (up to [`EARLY_BYTES`] in all); the new
    /// bytes, if any.
    fn read_now(&mut self) -> std::io::Result<Option<Bytes>> {
        let Some(client) = self.reading() else {
            return Ok(None);
        };
        let budget = EARLY_BYTES - self.len;
        if self.buf.capacity() == 0 {
            self.buf = BytesMut::with_capacity(budget);
        }
        match client.try_read_buf(&mut (&mut self.buf).limit(budget)) {
            Ok(0) => {
                self.client_done = true;
                Ok(None)
            }
            Ok(_) => {
                let chunk = self.buf.split().freeze();
                self.push(chunk.clone());
                Ok(Some(chunk))
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Awaits the PEP's answer on `response`; meanwhile what the client sends is read and
    /// sent on `stream` at once.
    ///
    /// # Errors
    /// Reading the client failed (the outer error); the stream failed (the inner one).
    async fn answer(
        &mut self,
        response: h2::client::ResponseFuture,
        stream: &mut SendStream<Bytes>,
    ) -> std::io::Result<Result<http::Response<RecvStream>, h2::Error>> {
        tokio::pin!(response);
        loop {
            let reading = self.reading();
            tokio::select! {
                biased;
                answer = &mut response => return Ok(answer),
                ready = async {
                    match reading {
                        Some(client) => client.readable().await,
                        None => std::future::pending().await,
                    }
                }, if reading.is_some() => {
                    ready?;
                    if let Some(chunk) = self.read_now()? {
                        // A stream that fails here fails its answer too.
                        let _ = stream.send_data(chunk, false);
                    }
                }
            }
        }
    }
}

/// An h2 error as the tunnel's I/O error.
fn h2_io(e: h2::Error) -> TunnelError {
    TunnelError::Io(h2_to_io(e))
}

/// One pooled tunnel: a CONNECT stream's bytes, holding its slot on the connection.
pub struct PooledTunnel {
    io: H2Tunnel,
    /// Bytes sent before the PEP's answer (they are not the splice's).
    early: u64,
    _slot: StreamSlot,
}

impl PooledTunnel {
    /// Bytes of the actor's sent with the CONNECT, before the PEP answered.
    pub fn sent_early(&self) -> u64 {
        self.early
    }
}

impl crate::forward::Absorb for PooledTunnel {
    fn poll_absorb(mut self: Pin<&mut Self>, cx: &mut Context<'_>) {
        Pin::new(&mut self.io).poll_absorb(cx);
    }
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
