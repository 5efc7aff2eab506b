//! Forwarding (DESIGN §7.2 "Where traffic goes"): dialling what a decision allows, through the
//! guard, and splicing bytes between the tunnel and the upstream connection.
//!
//! * [`Dialer::dial`]: a [`Dial::Name`] is resolved with the PEP's own [`PepResolver`]; every
//!   answer is screened by the [`Guard`] (guarded ones skipped, private ones unless the rule
//!   allows them) and the rest are tried in answer order; a [`Dial::Address`] (tcp rules, `*` on
//!   an IP literal) is screened and dialled as is. Each dial gets a fresh connection: an upstream
//!   connection is never shared between tunnels, let alone actors.
//! * [`splice`]: a bidirectional copy with correct half-close (EOF one way shuts down the write
//!   side of the other, the other direction keeps running), an idle timeout, and per-direction
//!   buffers that are only held while bytes are in flight (an idle tunnel holds none). A buffer
//!   starts at [`SPLICE_BUFFER_START`] and doubles while reads keep filling it, up to
//!   [`SpliceLimits::max_buffer`]: a bulk stream then moves a lot per wakeup and per system
//!   call, which is what a byte costs least with. The size reached is kept for the direction's
//!   later bursts (allocations are not zeroed, so a large one costs no more than a small one);
//!   memory is held only while bytes are in flight. While one side takes nothing, the reader
//!   on the other side takes in what arrives ([`Absorb`]: an h2 stream's small frames, which
//!   h2 would otherwise count against the whole connection).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::decision::{Dial, Reason};
use crate::guard::{Guard, Via};
use crate::resolve::{PepResolver, ResolveError};

/// Dials upstream connections for allowed traffic. Share it behind an `Arc`.
#[derive(Debug)]
pub struct Dialer {
    resolver: Arc<PepResolver>,
    guard: Arc<Guard>,
    connect_timeout: Duration,
    /// Ingress's addresses as actors reach it (`egress.actor_forwarding.ingress_addresses`):
    /// never dialled, so actor traffic reaches ingress only through actor forwarding.
    ingress: Vec<crate::actor_hosts::IngressAddress>,
}

/// An upstream connection, ready to splice.
#[derive(Debug)]
pub struct Dialed {
    /// The connected socket (`TCP_NODELAY` set).
    pub stream: TcpStream,
    /// The address connected to.
    pub addr: SocketAddr,
    /// For [`Dial::Name`]: the actor's original destination IP is not among the PEP's answers
    /// for the name (SNI/Host names an allowed host, the actor dialed another IP — recorded in
    /// the audit record). For [`Dial::Address`]: the dialled address differs from the original
    /// destination.
    pub dst_mismatch: bool,
}

/// Why nothing was dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", reason.as_str())]
pub struct DialRefusal {
    /// [`Reason::Guarded`], [`Reason::PrivateAddress`], [`Reason::ResolveFailed`] or
    /// [`Reason::DialFailed`].
    pub reason: Reason,
    /// A human detail for the log (the address, the range, the error); never sent to the actor.
    pub detail: String,
}

impl DialRefusal {
    fn new(reason: Reason, detail: impl Into<String>) -> Self {
        DialRefusal {
            reason,
            detail: detail.into(),
        }
    }
}

impl Dialer {
    /// A dialer resolving with `resolver`, screening with `guard`, giving each connection
    /// attempt `connect_timeout`.
    pub fn new(resolver: Arc<PepResolver>, guard: Arc<Guard>, connect_timeout: Duration) -> Self {
        Dialer {
            resolver,
            guard,
            connect_timeout,
            ingress: Vec::new(),
        }
    }

    /// Refuses to dial `ingress` addresses ([`Reason::Guarded`]): what reaches ingress from an
    /// actor goes through actor forwarding, decided by `actors` rules (DESIGN §7.4), never by a
    /// hostname or `tcp` rule that happens to resolve or point there.
    pub fn with_ingress(mut self, ingress: Vec<crate::actor_hosts::IngressAddress>) -> Self {
        self.ingress = ingress;
        self
    }

    /// A refusal when `addr` is one of the ingress addresses.
    fn screen_ingress(&self, addr: SocketAddr) -> Result<(), DialRefusal> {
        let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
        if self.ingress.iter().any(|i| i.matches(addr)) {
            return Err(DialRefusal::new(
                Reason::Guarded,
                format!("{addr} is ingress: actor traffic is forwarded, never dialled"),
            ));
        }
        Ok(())
    }

    /// The resolver (for the DNS cache gauge).
    pub fn resolver(&self) -> &Arc<PepResolver> {
        &self.resolver
    }

    /// The guard.
    pub fn guard(&self) -> &Arc<Guard> {
        &self.guard
    }

    /// Connects to where `dial` says. `original_dst` is the tunnel's CONNECT target (for
    /// [`Dialed::dst_mismatch`]). Refusals: every answer guarded → `Guarded`; every
    /// remaining answer private without `allow_private` → `PrivateAddress`; the name does not
    /// resolve → `ResolveFailed`; no screened address accepted a connection within the timeout
    /// → `DialFailed`; [`Dial::Actor`] is never dialled here → `ActorForwardingNotConfigured`.
    pub async fn dial(&self, dial: &Dial, original_dst: SocketAddr) -> Result<Dialed, DialRefusal> {
        match dial {
            Dial::Name {
                host,
                port,
                allow_private,
            } => {
                let answers = self.resolver.lookup(host).await.map_err(|e| {
                    let detail = e.to_string();
                    match e {
                        ResolveError::Config(_)
                        | ResolveError::NotFound { .. }
                        | ResolveError::Failed { .. } => {
                            DialRefusal::new(Reason::ResolveFailed, detail)
                        }
                    }
                })?;
                let via = Via::Name {
                    allow_private: *allow_private,
                };
                let mut refused: Option<DialRefusal> = None;
                let mut candidates: Vec<SocketAddr> = Vec::with_capacity(answers.len());
                for ip in answers.iter() {
                    let addr = SocketAddr::new(*ip, *port);
                    if let Err(r) = self.screen_ingress(addr) {
                        refused = Some(r);
                        continue;
                    }
                    match self.guard.screen(addr, via) {
                        Ok(()) => candidates.push(addr),
                        Err(r) => {
                            // Guarded outranks private in the reported reason.
                            if refused.as_ref().is_none_or(|p| p.reason != Reason::Guarded) {
                                refused = Some(DialRefusal::new(
                                    r.reason,
                                    format!("{host} resolves to {addr}: {r}"),
                                ));
                            }
                        }
                    }
                }
                if candidates.is_empty() {
                    return Err(refused.unwrap_or_else(|| {
                        DialRefusal::new(Reason::ResolveFailed, format!("{host}: no addresses"))
                    }));
                }
                let dst = original_dst.ip().to_canonical();
                let dst_mismatch = !answers.iter().any(|a| a.to_canonical() == dst);
                let (stream, addr) = self.connect_first(&candidates).await?;
                Ok(Dialed {
                    stream,
                    addr,
                    dst_mismatch,
                })
            }
            Dial::Address { addr, tcp_rule } => {
                self.screen_ingress(*addr)?;
                self.guard
                    .screen(
                        *addr,
                        Via::Address {
                            tcp_rule: *tcp_rule,
                        },
                    )
                    .map_err(|r| DialRefusal::new(r.reason, format!("{addr}: {r}")))?;
                let (stream, addr) = self.connect_first(&[*addr]).await?;
                Ok(Dialed {
                    stream,
                    addr,
                    dst_mismatch: addr.ip().to_canonical() != original_dst.ip().to_canonical(),
                })
            }
            // Actor traffic goes to ingress (`actor_forward::IngressPeer`), never dialled here.
            Dial::Actor { target, .. } => Err(DialRefusal::new(
                Reason::ActorForwardingNotConfigured,
                format!("{target:?} is an actor: forwarded through ingress, not dialled"),
            )),
        }
    }

    /// Tries `addrs` in order; the first connection wins.
    async fn connect_first(
        &self,
        addrs: &[SocketAddr],
    ) -> Result<(TcpStream, SocketAddr), DialRefusal> {
        let mut errors: Vec<String> = Vec::new();
        if addrs.len() > MAX_DIAL_ATTEMPTS {
            errors.push(format!(
                "{} more answers not tried",
                addrs.len() - MAX_DIAL_ATTEMPTS
            ));
        }
        for &addr in addrs.iter().take(MAX_DIAL_ATTEMPTS) {
            // An IPv4-mapped answer is dialled as the IPv4 address it is.
            let target = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(target)).await {
                Ok(Ok(stream)) => {
                    // Latency over batching: the tunnel already batches what the actor wrote.
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%addr, error = %e, "set TCP_NODELAY failed");
                    }
                    return Ok((stream, addr));
                }
                Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
                Err(_) => errors.push(format!(
                    "{addr}: connect timed out after {:?}",
                    self.connect_timeout
                )),
            }
        }
        Err(DialRefusal::new(Reason::DialFailed, errors.join("; ")))
    }
}

/// Most answers one dial tries, each with the connect timeout: a name with many unreachable
/// addresses holds a tunnel at most this many connect timeouts.
pub const MAX_DIAL_ATTEMPTS: usize = 3;

/// What a direction's buffer starts with, bytes (none is held while a direction waits for data).
pub const SPLICE_BUFFER_START: usize = 64 * 1024;

/// The default most a direction's buffer grows to, bytes (Envoy's default per-connection buffer
/// limit is the same 1 MiB).
pub const DEFAULT_SPLICE_BUFFER_MAX: usize = 1024 * 1024;

/// Bounds of one [`splice_counted`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpliceLimits {
    /// No byte either way this long ends the splice (`idle_timeout` in its stats).
    pub idle: Duration,
    /// The most a direction's buffer grows to, bytes (at least [`SPLICE_BUFFER_START`]).
    pub max_buffer: usize,
}

impl SpliceLimits {
    /// `idle` with the default buffer bound ([`DEFAULT_SPLICE_BUFFER_MAX`]).
    pub fn with_idle(idle: Duration) -> Self {
        SpliceLimits {
            idle,
            max_buffer: DEFAULT_SPLICE_BUFFER_MAX,
        }
    }
}

/// What a splice moved and how it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SpliceStats {
    /// Bytes written to `b` (read from `a`): actor → upstream when `a` is the tunnel.
    pub up: u64,
    /// Bytes written to `a` (read from `b`): upstream → actor.
    pub down: u64,
    /// The splice ended because no byte moved either way for the idle timeout.
    pub idle_timeout: bool,
}

/// Live byte counters of a splice ([`splice_counted`]): readable while it runs (metrics) and
/// after it failed (audit records still get the bytes moved).
#[derive(Debug, Default)]
pub struct SpliceCounters {
    up: AtomicU64,
    down: AtomicU64,
}

impl SpliceCounters {
    /// Zeroed counters.
    pub fn new() -> Self {
        Self::default()
    }
    /// Bytes written to `b` so far.
    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }
    /// Bytes written to `a` so far.
    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }
}

/// A splice end that takes in what its peer sends while the splice cannot pass it on (the other
/// side is not taking bytes), so that the peer's framing is not left queued.
///
/// An h2 stream ([`crate::h2_tunnel::H2Tunnel`]) needs it: h2 keeps every DATA frame it has
/// received and not handed out as a separate entry, and closes the whole connection, with every
/// tunnel on it, once small frames pile up past its budget (GOAWAY `ENHANCE_YOUR_CALM`). A
/// socket does not: its kernel buffer holds bytes, not frames, so the default does nothing.
pub trait Absorb {
    /// Takes in what has arrived, within the end's own flow-control bound (nothing is released
    /// to the peer until the bytes are read), and registers `cx` for more while more can come
    /// (the pending write's wakeup brings the splice back in any case).
    fn poll_absorb(self: Pin<&mut Self>, cx: &mut Context<'_>) {
        let _ = cx;
    }
}

impl Absorb for TcpStream {}
impl Absorb for tokio::io::DuplexStream {}
impl<T> Absorb for hyper_util::rt::TokioIo<T> {}
impl<IO> Absorb for tokio_rustls::client::TlsStream<IO> {}
impl<IO> Absorb for tokio_rustls::server::TlsStream<IO> {}

/// Copies bytes both ways between `a` and `b` until both directions reached EOF (each EOF
/// shuts down the write side of the other stream; the other direction keeps running), or no
/// byte moved either way for `idle` (then `idle_timeout` is set and the streams are dropped by
/// the caller). An I/O error in either direction ends the splice with that error. Buffers grow
/// up to [`DEFAULT_SPLICE_BUFFER_MAX`]; [`splice_counted`] takes other bounds.
pub async fn splice<A, B>(a: A, b: B, idle: Duration) -> io::Result<SpliceStats>
where
    A: AsyncRead + AsyncWrite + Absorb + Unpin,
    B: AsyncRead + AsyncWrite + Absorb + Unpin,
{
    let counters = SpliceCounters::new();
    splice_counted(a, b, SpliceLimits::with_idle(idle), &counters).await
}

/// As [`splice`] with `limits`, publishing the byte counts in `counters` (fresh ones: the counts
/// add up) as they move.
pub async fn splice_counted<A, B>(
    mut a: A,
    mut b: B,
    limits: SpliceLimits,
    counters: &SpliceCounters,
) -> io::Result<SpliceStats>
where
    A: AsyncRead + AsyncWrite + Absorb + Unpin,
    B: AsyncRead + AsyncWrite + Absorb + Unpin,
{
    let max = limits.max_buffer.max(SPLICE_BUFFER_START);
    let mut splice = Splice {
        a: &mut a,
        b: &mut b,
        up: Half::new(max),
        down: Half::new(max),
        idle: limits.idle,
        last_activity: Instant::now(),
        timer: Box::pin(tokio::time::sleep(limits.idle)),
        counters,
    };
    std::future::poll_fn(|cx| splice.poll(cx)).await
}

/// One direction of a splice.
struct Half {
    /// Held only while `pos < cap` or during a read.
    buf: Option<BytesMut>,
    /// Capacity of the next buffer: doubles while batches fill it, up to `max`.
    want: usize,
    max: usize,
    /// A read error that followed bytes still to be written.
    deferred: Option<io::Error>,
    pos: usize,
    cap: usize,
    read_eof: bool,
    need_flush: bool,
    done: bool,
}

impl Half {
    fn new(max: usize) -> Self {
        Half {
            buf: None,
            want: SPLICE_BUFFER_START,
            max,
            deferred: None,
            pos: 0,
            cap: 0,
            read_eof: false,
            need_flush: false,
            done: false,
        }
    }

    /// Moves bytes from `r` to `w` until it would block or finishes; `moved` counts bytes
    /// written, `progress` is set when anything happened (bytes, EOF).
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut r: Pin<&mut R>,
        mut w: Pin<&mut W>,
        moved: &AtomicU64,
        progress: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Absorb + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos == self.cap
                && let Some(e) = self.deferred.take()
            {
                return Poll::Ready(Err(e));
            }
            if self.pos == self.cap && !self.read_eof {
                // Not zeroed: `poll_read_buf` reads into the spare capacity.
                let buf = self
                    .buf
                    .get_or_insert_with(|| BytesMut::with_capacity(self.want));
                buf.clear();
                if buf.capacity() < self.want {
                    // Grown since the buffer was taken: a fresh allocation of exactly `want`
                    // (`reserve` could double it past `max`).
                    *buf = BytesMut::with_capacity(self.want);
                }
                match tokio_util::io::poll_read_buf(r.as_mut(), cx, buf) {
                    Poll::Pending => {
                        // Nothing in flight: give the buffer back (an idle tunnel holds none).
                        self.buf = None;
                        if self.need_flush {
                            match w.as_mut().poll_flush(cx) {
                                Poll::Ready(Ok(())) => self.need_flush = false,
                                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                                Poll::Pending => {}
                            }
                        }
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(0)) => {
                        *progress = true;
                        self.read_eof = true;
                        self.buf = None;
                    }
                    Poll::Ready(Ok(_)) => {
                        *progress = true;
                        // Batch: take what else is ready now (a TLS stream hands out one record
                        // per read), so the other side gets fewer, larger writes.
                        while buf.len() < buf.capacity() {
                            match tokio_util::io::poll_read_buf(r.as_mut(), cx, buf) {
                                Poll::Ready(Ok(n)) if n > 0 => {}
                                Poll::Ready(Ok(_)) => {
                                    self.read_eof = true;
                                    break;
                                }
                                // Registered for the next wakeup.
                                Poll::Pending => break,
                                // Reported once the bytes read before it are written.
                                Poll::Ready(Err(e)) => {
                                    self.deferred = Some(e);
                                    break;
                                }
                            }
                        }
                        if buf.len() >= self.want && self.want < self.max {
                            // Full batch: the stream is bulk, take more per wakeup next time.
                            self.want = (self.want * 2).min(self.max);
                        }
                        self.pos = 0;
                        self.cap = buf.len();
                    }
                }
            }
            while self.pos < self.cap {
                let Some(buf) = self.buf.as_deref() else {
                    // Unreachable by construction (bytes in flight keep their buffer).
                    self.pos = self.cap;
                    break;
                };
                let Poll::Ready(written) = w.as_mut().poll_write(cx, &buf[self.pos..self.cap])
                else {
                    // The other side takes nothing for now: the reader takes in what arrives
                    // meanwhile (h2 frames), within its own flow control.
                    r.as_mut().poll_absorb(cx);
                    return Poll::Pending;
                };
                let n = written?;
                if n == 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "write zero bytes into the other side",
                    )));
                }
                self.pos += n;
                self.need_flush = true;
                *progress = true;
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            if self.read_eof && self.pos == self.cap {
                // Half-close: flush, then shut down the other side's write half.
                ready!(w.as_mut().poll_flush(cx))?;
                self.need_flush = false;
                match ready!(w.as_mut().poll_shutdown(cx)) {
                    Ok(()) => {}
                    // The peer already went away entirely: nothing left to tell it.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
                self.done = true;
                // A finished direction holds no buffer while the other one runs on.
                self.buf = None;
                *progress = true;
            }
        }
    }
}

struct Splice<'s, A: ?Sized, B: ?Sized> {
    a: &'s mut A,
    b: &'s mut B,
    up: Half,
    down: Half,
    idle: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
    counters: &'s SpliceCounters,
}

impl<A, B> Splice<'_, A, B>
where
    A: AsyncRead + AsyncWrite + Absorb + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Absorb + Unpin + ?Sized,
{
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<SpliceStats>> {
        let mut progress = false;
        let up = self.up.poll_copy(
            cx,
            Pin::new(&mut *self.a),
            Pin::new(&mut *self.b),
            &self.counters.up,
            &mut progress,
        );
        if let Poll::Ready(Err(e)) = up {
            return Poll::Ready(Err(e));
        }
        let down = self.down.poll_copy(
            cx,
            Pin::new(&mut *self.b),
            Pin::new(&mut *self.a),
            &self.counters.down,
            &mut progress,
        );
        if let Poll::Ready(Err(e)) = down {
            return Poll::Ready(Err(e));
        }
        if up.is_ready() && down.is_ready() {
            return Poll::Ready(Ok(self.stats(false)));
        }
        if progress {
            // Cheap: the timer is only re-armed when it fires (below).
            self.last_activity = Instant::now();
        }
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let deadline = self.last_activity + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Ok(self.stats(true)));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    fn stats(&self, idle_timeout: bool) -> SpliceStats {
        SpliceStats {
            up: self.counters.up(),
            down: self.counters.down(),
            idle_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A bulk stream doubles its direction's buffer up to the bound and no further, the bytes
    /// arrive intact, with nothing in flight the buffer is released (an idle tunnel holds none),
    /// the quiet direction never grows, and a finished direction holds nothing.
    #[tokio::test]
    async fn bulk_grows_the_buffer_to_the_bound_and_a_drained_direction_releases_it() {
        // Not 64 KiB times a power of two: doubling must stop at the bound, not pass it.
        const MAX: usize = 200 * 1000;
        let (mut client, mut a) = tokio::io::duplex(8 << 20);
        // A small upstream pipe: writes block with bytes in flight, so the buffers a direction
        // holds are seen between polls.
        let (mut b, mut server) = tokio::io::duplex(100_000);
        let data: Vec<u8> = (0..6u32 << 20).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.expect("write");

        let counters = SpliceCounters::new();
        let idle = Duration::from_secs(10);
        let mut splice = Splice {
            a: &mut a,
            b: &mut b,
            up: Half::new(MAX),
            down: Half::new(MAX),
            idle,
            last_activity: Instant::now(),
            timer: Box::pin(tokio::time::sleep(idle)),
            counters: &counters,
        };
        let mut biggest = 0;
        let mut moved = 0u64;
        for (round, len) in [(0, data.len()), (1, 3 * MAX), (2, 3 * MAX)] {
            if round > 0 {
                client.write_all(&data[..len]).await.expect("write");
            }
            moved += len as u64;
            let drive = std::future::poll_fn(|cx| {
                let r = splice.poll(cx);
                biggest = biggest.max(splice.up.buf.as_ref().map_or(0, BytesMut::capacity));
                match r {
                    Poll::Ready(r) => panic!("splice ended early: {r:?}"),
                    Poll::Pending if counters.up() == moved => Poll::Ready(()),
                    Poll::Pending => Poll::Pending,
                }
            });
            let mut got = vec![0u8; len];
            let (_, read) = tokio::join!(drive, server.read_exact(&mut got));
            read.expect("read");
            assert!(got == data[..len], "bytes arrive intact and in order");
            assert_eq!(
                splice.up.want, MAX,
                "full batches grow the buffer to the bound"
            );
            assert!(
                splice.up.buf.is_none(),
                "a drained direction holds no buffer"
            );
        }
        assert!(
            biggest > SPLICE_BUFFER_START,
            "held buffers were observed ({biggest})"
        );
        assert!(
            biggest <= MAX,
            "a buffer of {biggest} bytes passed the bound {MAX}"
        );
        assert_eq!(
            splice.down.want, SPLICE_BUFFER_START,
            "the quiet direction stays small"
        );

        // The actor finishes its side: the up direction ends (EOF passed on) holding nothing,
        // while the down direction keeps running.
        client.write_all(&data[..100_000]).await.expect("write");
        client.shutdown().await.expect("shutdown");
        std::future::poll_fn(|cx| match splice.poll(cx) {
            Poll::Ready(r) => panic!("splice ended early: {r:?}"),
            Poll::Pending if splice.up.done => Poll::Ready(()),
            Poll::Pending => Poll::Pending,
        })
        .await;
        assert!(
            splice.up.buf.is_none(),
            "a finished direction holds no buffer"
        );
        let mut rest = Vec::new();
        server
            .read_to_end(&mut rest)
            .await
            .expect("EOF reaches the upstream");
        assert!(rest == data[..100_000], "the last bytes arrive before EOF");
    }
}
