//! The agent's two tunnel modes behind one interface: [`Tunnels::PerConnection`] (upstream
//! atunnel's wire behaviour) and [`Tunnels::Pooled`] (h2 CONNECT streams over shared
//! connections).

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::agent::per_connection::{PerConnection, TunnelError};
use crate::agent::pooled::{Pooled, PooledTunnel};

/// Most bytes of a captured connection sent before the PEP answers its CONNECT (`pooled`): a
/// ClientHello or a request head fits.
pub const EARLY_BYTES: usize = 16 * 1024;

/// How the agent tunnels to the PEP.
pub enum Tunnels {
    /// One TLS connection and HTTP/1.1 CONNECT per captured connection.
    PerConnection(PerConnection),
    /// CONNECT streams over shared h2 connections.
    Pooled(Pooled),
}

impl Tunnels {
    /// `per-connection` or `pooled` (the metrics label).
    pub fn mode(&self) -> &'static str {
        match self {
            Tunnels::PerConnection(_) => "per-connection",
            Tunnels::Pooled(_) => "pooled",
        }
    }

    /// A tunnel to `dst`.
    ///
    /// # Errors
    /// The mode's [`TunnelError`].
    pub async fn open(&self, dst: SocketAddr) -> Result<TunnelStream, TunnelError> {
        self.open_named(dst, None).await
    }

    /// [`Tunnels::open`], the CONNECT naming `host` (`name:port`, what the actor asked for) in
    /// `ate-destination-host` when given (the explicit proxy, for names).
    ///
    /// # Errors
    /// As [`Tunnels::open`].
    pub async fn open_named(
        &self,
        dst: SocketAddr,
        host: Option<&str>,
    ) -> Result<TunnelStream, TunnelError> {
        match self {
            Tunnels::PerConnection(p) => p
                .open_named(dst, host)
                .await
                .map(|t| TunnelStream::Tls(Box::new(t))),
            Tunnels::Pooled(p) => p.open_named(dst, host).await.map(TunnelStream::H2),
        }
    }

    /// A tunnel to `dst` for the captured connection `client`. `pooled`: the client's bytes
    /// (up to [`EARLY_BYTES`]) do not wait for the PEP's answer: what it has already sent goes
    /// with the CONNECT, what it sends meanwhile right after ([`Pooled::open_for`]).
    /// `per-connection` sends nothing before the PEP's answer, as atunnel.
    ///
    /// # Errors
    /// The mode's [`TunnelError`]; [`TunnelError::Client`] when reading the client fails.
    pub async fn open_for(
        &self,
        client: &TcpStream,
        dst: SocketAddr,
    ) -> Result<TunnelStream, TunnelError> {
        match self {
            Tunnels::PerConnection(_) => self.open(dst).await,
            Tunnels::Pooled(p) => p.open_for(dst, client).await.map(TunnelStream::H2),
        }
    }
}

/// An open tunnel's bytes.
pub enum TunnelStream {
    /// A TLS connection of its own (boxed: the TLS state is large, a pooled stream is not).
    Tls(Box<TlsStream<TcpStream>>),
    /// A CONNECT stream of a shared h2 connection.
    H2(PooledTunnel),
}

impl crate::forward::Absorb for TunnelStream {
    fn poll_absorb(self: Pin<&mut Self>, cx: &mut Context<'_>) {
        match self.get_mut() {
            TunnelStream::Tls(s) => Pin::new(s.as_mut()).poll_absorb(cx),
            TunnelStream::H2(s) => Pin::new(s).poll_absorb(cx),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TunnelStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            TunnelStream::H2(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            TunnelStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            TunnelStream::H2(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TunnelStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            TunnelStream::H2(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            TunnelStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            TunnelStream::H2(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
