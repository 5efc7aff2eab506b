//! One accept loop for every listener of the process, plain TCP or TLS.
//!
//! [`BoundListener::bind`] binds (port 0 works: [`BoundListener::local_addr`] reports the port
//! the system chose). The accept loop then applies the listener's [`ListenerLimits`] (concurrent
//! connections, TLS handshake timeout and concurrency), sets `TCP_NODELAY`, backs off on accept
//! errors (e.g. out of file descriptors), stops accepting when the drain starts (the socket is
//! closed, so new connections are refused), and hands every established connection to the caller
//! as a [`Conn`]: an AsyncRead + AsyncWrite stream that carries its [`ConnInfo`] — peer and local
//! address, whether it is TLS, the negotiated ALPN protocol and, for a client that presented a
//! verified certificate, its [`PeerIdentity`] (the SPIFFE ID).
//!
//! The same loop feeds two consumers:
//! * [`BoundListener::serve`] runs a handler per connection as work the drain waits for (dropped,
//!   closing the socket, when the drain deadline passes);
//! * [`BoundListener::incoming`] yields the connections as a `Stream` for servers that own their
//!   connections, e.g. tonic's `serve_with_incoming_shutdown` ([`Conn`] implements tonic's
//!   `Connected`: each request carries a [`GrpcConnInfo`] extension with the peer's address and
//!   verified certificate identity). Each such connection holds the drain until it
//!   is dropped, and fails its reads and writes once the drain deadline passes.
//!
//! Why hand-written: no TLS-accept crate (tls-listener, axum-server, tonic's own TLS)
//! gives the verified peer identity per connection, holds the drain per connection, and feeds
//! hyper and tonic from one loop with one set of limits.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::server::TlsStream;

use crate::read_ahead::ReadAhead;
use tokio_util::sync::WaitForCancellationFutureOwned;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::drain::{DrainGuard, DrainSignal};

/// First pause after a failed `accept` (doubles on each failure in a row).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest pause after failed `accept`s.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Established connections waiting for an [`Incoming`] consumer to take them.
const INCOMING_BACKLOG: usize = 256;

/// Where a TLS listener gets its configuration, read once per connection so rotated material
/// applies to new connections (identity's reloadable server config implements it).
pub trait ServerTlsSource: Send + Sync + 'static {
    /// An acceptor with the current configuration.
    fn acceptor(&self) -> TlsAcceptor;
}

impl ServerTlsSource for TlsAcceptor {
    fn acceptor(&self) -> TlsAcceptor {
        self.clone()
    }
}

impl ServerTlsSource for Arc<ServerConfig> {
    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.clone())
    }
}

/// Limits of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerLimits {
    /// Most connections open at once (from accept to close, handshakes included). At the limit
    /// the listener stops accepting: new connections wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Longest a TLS handshake may take; a client that has not finished by then is closed.
    pub tls_handshake_timeout: Duration,
    /// Most TLS handshakes in progress at once; past it the listener stops accepting until one
    /// ends (a bounded number of silent clients cannot use up memory or CPU).
    pub max_concurrent_handshakes: usize,
    /// Most bytes one read under TLS asks the socket for, bytes: the per-connection read-ahead
    /// ([`crate::read_ahead`]) starts at one TLS record (16 KiB + 256, also the floor of this
    /// setting), grows to it while reads keep filling it and is freed when the socket drains.
    /// Default [`crate::read_ahead::READ_AHEAD`] (64 KiB + 256).
    pub read_ahead_bytes: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_connections: 65_536,
            tls_handshake_timeout: Duration::from_secs(10),
            max_concurrent_handshakes: 1024,
            read_ahead_bytes: crate::read_ahead::READ_AHEAD,
        }
    }
}

/// Binding problems.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    /// The address could not be bound (in use, not local, no permission).
    #[error("{name}: cannot listen on {addr}: {source}")]
    Bind {
        /// The listener's name, usually its config field (`ingress.http.listen`).
        name: String,
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// The bound socket has no local address (should not happen).
    #[error("{name}: cannot read the bound address: {source}")]
    LocalAddr {
        /// The listener's name.
        name: String,
        /// What the system said.
        #[source]
        source: io::Error,
    },
}

/// The verified certificate a TLS client presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The certificate's SPIFFE ID, when it has exactly one `spiffe://` URI SAN and that URI is
    /// a well-formed SPIFFE ID; `None` otherwise.
    pub spiffe_id: Option<String>,
    /// The client's leaf certificate (DER), for checks beyond the SPIFFE ID.
    pub certificate: CertificateDer<'static>,
}

/// What a handler knows about its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// The listener's name.
    pub listener: Arc<str>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address the connection arrived on.
    pub local: SocketAddr,
    /// Whether TLS was terminated here.
    pub tls: bool,
    /// The ALPN protocol agreed in the TLS handshake (e.g. `h2`), if any.
    pub alpn: Option<Vec<u8>>,
    /// The client certificate verified in the handshake: `None` for plaintext connections and
    /// TLS clients that sent no certificate.
    pub peer_identity: Option<PeerIdentity>,
}

impl ConnInfo {
    /// The peer's SPIFFE ID, if it presented a certificate with one.
    pub fn spiffe_id(&self) -> Option<&str> {
        self.peer_identity.as_ref()?.spiffe_id.as_deref()
    }
}

/// How many connections a listener has open; see [`BoundListener::open_connections`].
#[derive(Debug, Clone, Default)]
pub struct OpenConnections(Arc<AtomicUsize>);

impl OpenConnections {
    /// Connections open now (handshakes included).
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }
}

/// A bound listening socket, not yet accepting.
pub struct BoundListener {
    name: Arc<str>,
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<Arc<dyn ServerTlsSource>>,
    limits: ListenerLimits,
    open: OpenConnections,
}

impl std::fmt::Debug for BoundListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundListener")
            .field("name", &self.name)
            .field("local", &self.local)
            .field("tls", &self.tls.is_some())
            .field("limits", &self.limits)
            .finish()
    }
}

impl BoundListener {
    /// Binds `addr` (port 0: any free port; read it with [`BoundListener::local_addr`]). `name`
    /// names the listener in errors and logs; use its config field, e.g. `admin.listen`.
    pub async fn bind(name: impl Into<String>, addr: SocketAddr) -> Result<Self, ListenerError> {
        let name = name.into();
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenerError::Bind {
                name: name.clone(),
                addr,
                source,
            })?;
        Self::from_tcp(name, listener)
    }

    /// Wraps a socket that is already bound and listening.
    pub fn from_tcp(name: impl Into<String>, listener: TcpListener) -> Result<Self, ListenerError> {
        let name = name.into();
        let local = listener
            .local_addr()
            .map_err(|source| ListenerError::LocalAddr {
                name: name.clone(),
                source,
            })?;
        Ok(Self {
            name: name.into(),
            listener,
            local,
            tls: None,
            limits: ListenerLimits::default(),
            open: OpenConnections::default(),
        })
    }

    /// Terminates TLS on every connection with `tls`'s current configuration.
    pub fn with_tls(mut self, tls: Arc<dyn ServerTlsSource>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Replaces the default [`ListenerLimits`].
    pub fn with_limits(mut self, limits: ListenerLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The bound address (with the port the system chose for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether connections are TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A live count of this listener's open connections (for a gauge or `/statusz`).
    pub fn open_connections(&self) -> OpenConnections {
        self.open.clone()
    }

    /// Accepts until the drain starts, running `handler` for every established connection as
    /// work the drain waits for (dropped, closing the connection, at the drain deadline).
    /// Returns once the listening socket is closed; connections go on.
    pub async fn serve<H, F>(self, drain: DrainSignal, handler: H)
    where
        H: Fn(Conn) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let deliver = move |conn: Conn, guard: DrainGuard| {
            let work = handler(conn);
            async move {
                // The deadline is polled only when it wakes, not on every wakeup of the
                // connection's work: polling a pending cancellation future takes a lock that
                // every connection of the process shares.
                let mut forced = futures_util::stream::FuturesUnordered::new();
                forced.push(guard.forced());
                tokio::select! {
                    _ = work => {}
                    _ = futures_util::StreamExt::next(&mut forced) => {}
                }
            }
        };
        self.accept_loop(drain, std::future::pending(), deliver)
            .await
    }

    /// The established connections as a `Stream` (for tonic's `serve_with_incoming_shutdown`).
    /// Accepting stops when the drain starts (the stream then ends) or the stream is dropped.
    /// Needs a tokio runtime (the accept loop runs on its own task).
    pub fn incoming(self, drain: DrainSignal) -> Incoming {
        let (tx, rx) = mpsc::channel::<Conn>(INCOMING_BACKLOG);
        let local = self.local;
        let closed = tx.clone();
        let deliver = move |mut conn: Conn, guard: DrainGuard| {
            let tx = tx.clone();
            async move {
                conn.hold(guard);
                // Fails only when the consumer is gone: the connection is then dropped.
                let _ = tx.send(conn).await;
            }
        };
        tokio::spawn(self.accept_loop(drain, async move { closed.closed().await }, deliver));
        Incoming { rx, local }
    }

    /// The accept loop behind [`BoundListener::serve`] and [`BoundListener::incoming`].
    async fn accept_loop<D, F>(self, drain: DrainSignal, stop: impl Future<Output = ()>, deliver: D)
    where
        D: Fn(Conn, DrainGuard) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Self {
            name,
            listener,
            local,
            tls,
            limits,
            open,
        } = self;
        let deliver = Arc::new(deliver);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let handshakes = Arc::new(Semaphore::new(limits.max_concurrent_handshakes.max(1)));
        let mut backoff = ACCEPT_BACKOFF_MIN;
        tokio::pin!(stop);
        loop {
            // Slots are taken before accepting: at a limit, new connections wait in the
            // kernel's accept queue rather than being accepted and starved.
            let permits = async {
                let slot = slots.clone().acquire_owned().await.ok()?;
                let handshake = match tls {
                    Some(_) => Some(handshakes.clone().acquire_owned().await.ok()?),
                    None => None,
                };
                Some((slot, handshake))
            };
            let (slot, handshake) = tokio::select! {
                biased;
                _ = drain.draining() => break,
                _ = &mut stop => break,
                p = permits => match p {
                    Some(p) => p,
                    None => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                biased;
                _ = drain.draining() => break,
                _ = &mut stop => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        a
                    }
                    Err(e) => {
                        tracing::warn!(listener = %name, error = %e, "accept failed");
                        tokio::select! {
                            _ = drain.draining() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(listener = %name, %peer, error = %e, "cannot set TCP_NODELAY");
            }
            open.0.fetch_add(1, Ordering::AcqRel);
            let slot = Slot {
                _permit: slot,
                open: open.clone(),
            };
            let guard = drain.guard();
            let acceptor = tls.as_ref().map(|t| t.acceptor());
            let deliver = deliver.clone();
            let name = name.clone();
            let handshake_timeout = limits.tls_handshake_timeout;
            let read_ahead = limits.read_ahead_bytes;
            tokio::spawn(async move {
                let established = tokio::select! {
                    biased;
                    _ = guard.forced() => None,
                    c = establish(Accepted { tcp, peer, local, name, slot }, acceptor, handshake, handshake_timeout, read_ahead) => c,
                };
                if let Some(conn) = established {
                    deliver(conn, guard).await;
                }
            });
        }
        drop(listener);
        tracing::debug!(listener = %name, addr = %local, "stopped accepting");
    }
}

/// A TCP connection just accepted.
struct Accepted {
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    name: Arc<str>,
    slot: Slot,
}

/// Runs the TLS handshake (if any) and builds the [`Conn`]; `None` when the handshake failed or
/// timed out (the socket is closed).
async fn establish(
    a: Accepted,
    acceptor: Option<TlsAcceptor>,
    handshake: Option<OwnedSemaphorePermit>,
    handshake_timeout: Duration,
    read_ahead: usize,
) -> Option<Conn> {
    let Some(acceptor) = acceptor else {
        return Some(Conn {
            io: Io::Plain(a.tcp),
            info: Arc::new(ConnInfo {
                listener: a.name,
                peer: a.peer,
                local: a.local,
                tls: false,
                alpn: None,
                peer_identity: None,
            }),
            _slot: a.slot,
            hold: None,
        });
    };
    let result = tokio::time::timeout(
        handshake_timeout,
        acceptor.accept(ReadAhead::with_max(a.tcp, read_ahead)),
    )
    .await;
    drop(handshake);
    let stream = match result {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(listener = %a.name, peer = %a.peer, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(listener = %a.name, peer = %a.peer, timeout = ?handshake_timeout, "TLS handshake timed out");
            return None;
        }
    };
    let session = stream.get_ref().1;
    let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
    let peer_identity = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| PeerIdentity {
            spiffe_id: spiffe_id(leaf),
            certificate: leaf.clone().into_owned(),
        });
    Some(Conn {
        io: Io::Tls(Box::new(stream)),
        info: Arc::new(ConnInfo {
            listener: a.name,
            peer: a.peer,
            local: a.local,
            tls: true,
            alpn,
            peer_identity,
        }),
        _slot: a.slot,
        hold: None,
    })
}

/// The SPIFFE ID of a certificate (DER): its one `spiffe://` URI SAN, if it has exactly one and
/// it is well formed (SPIFFE ID spec §2: lowercase trust domain of `a-z 0-9 . - _`, path
/// segments of `a-z A-Z 0-9 . - _`, none empty, `.` or `..`, no trailing `/`).
pub fn spiffe_id(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    match spiffe_uris(&cert).ok()?.as_slice() {
        [id] if is_spiffe_id(id) => Some((*id).to_owned()),
        _ => None,
    }
}

/// Every `spiffe://` URI SAN of a parsed certificate, in certificate order and unchecked: the
/// one place that reads URI SANs, for callers that apply their own rules (how many, which ID
/// forms). Empty without a SAN extension; an error when the extension does not parse.
pub fn spiffe_uris<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, X509Error> {
    let Some(san) = cert.subject_alternative_name()? else {
        return Ok(Vec::new());
    };
    Ok(san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(*u),
            _ => None,
        })
        .collect())
}

fn is_spiffe_id(uri: &str) -> bool {
    let Some(rest) = uri.strip_prefix("spiffe://") else {
        return false;
    };
    let (domain, path) = match rest.find('/') {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let domain_ok = !domain.is_empty()
        && domain
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b));
    let path_ok = path.is_none_or(|p| {
        p.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        })
    });
    domain_ok && path_ok
}

/// A connection slot: frees the listener's connection permit and count when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: OpenConnections,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.0.fetch_sub(1, Ordering::AcqRel);
    }
}

enum Io {
    Plain(TcpStream),
    /// TLS over a read-ahead buffer (rustls reads the socket 4 KiB at a time otherwise).
    Tls(Box<TlsStream<ReadAhead<TcpStream>>>),
}

/// Holds the drain for a connection handed to another server (see
/// [`BoundListener::incoming`]) and fails its IO once the drain deadline passes.
struct Hold {
    guard: DrainGuard,
    forced: Pin<Box<WaitForCancellationFutureOwned>>,
}

/// An established connection (plain TCP or TLS) with its [`ConnInfo`]. Use it with hyper through
/// `hyper_util::rt::TokioIo::new(conn)`. Dropping it closes the connection and frees its slot in
/// the listener's limit.
pub struct Conn {
    io: Io,
    info: Arc<ConnInfo>,
    _slot: Slot,
    hold: Option<Hold>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("info", &self.info).finish()
    }
}

fn forced_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "closed: the drain deadline passed",
    )
}

impl Conn {
    /// What is known about the connection.
    pub fn info(&self) -> &Arc<ConnInfo> {
        &self.info
    }

    fn hold(&mut self, guard: DrainGuard) {
        let forced = Box::pin(guard.signal().forced_token().cancelled_owned());
        self.hold = Some(Hold { guard, forced });
    }

    /// After a read or write: when forced, fail instead (and on `Pending`, make sure the task
    /// is woken when the drain deadline passes).
    fn check<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(hold) = self.hold.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Pending if hold.forced.as_mut().poll(cx).is_ready() => {
                Poll::Ready(Err(forced_error()))
            }
            Poll::Ready(_) if hold.guard.signal().is_forced() => Poll::Ready(Err(forced_error())),
            other => other,
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        this.check(cx, polled)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        };
        this.check(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        };
        this.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        };
        this.check(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What a gRPC handler knows about its connection: the request extension
/// `GrpcConnInfo` (one allocation per connection, shared by its requests). Handlers read the
/// peer's verified certificate identity from it (`request.extensions().get::<GrpcConnInfo>()`).
#[derive(Debug, Clone)]
pub struct GrpcConnInfo(pub Arc<ConnInfo>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = GrpcConnInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        GrpcConnInfo(self.info.clone())
    }
}

/// Established connections of a listener, as a `Stream` (see [`BoundListener::incoming`]).
/// The stream ends when the listener stops accepting and every handshake in progress is done.
pub struct Incoming {
    rx: mpsc::Receiver<Conn>,
    local: SocketAddr,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("local", &self.local)
            .finish()
    }
}

impl Incoming {
    /// The listener's bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl futures_util::Stream for Incoming {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx).map(|c| c.map(Ok))
    }
}

#[cfg(test)]
mod tests {
    use super::is_spiffe_id;

    #[test]
    fn spiffe_ids_follow_the_spec() {
        for ok in [
            "spiffe://example.org",
            "spiffe://td/actor/default/echo",
            "spiffe://a-b_c.d/ns/x.y-z_1",
        ] {
            assert!(is_spiffe_id(ok), "{ok}");
        }
        for bad in [
            "spiffe://",
            "spiffe://Example.org/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/a/..",
            "spiffe://td:443/x",
            "spiffe://user@td/x",
            "spiffe://td/x?q=1",
            "https://td/x",
        ] {
            assert!(!is_spiffe_id(bad), "{bad}");
        }
    }
}
