//! One RFC 9113 CONNECT stream's bytes as a byte stream ([`AsyncRead`] + [`AsyncWrite`]) on the
//! `h2` crate's stream handles. Both ends of a pooled tunnel use it: the agent's client streams
//! ([`crate::agent::pooled`]) and the PEP's server streams ([`crate::tunnel`]).
//!
//! * Reads release flow-control capacity as bytes are taken, so the stream window bounds what is
//!   buffered for a slow reader.
//! * Writes send at most the capacity h2 assigns (the peer's window and the send buffer bound).
//! * Shutdown sends END_STREAM: a half-close, the other direction keeps flowing (RFC 9113 §8.5).
//! * A reset from the peer is a write error; END_STREAM from the peer is EOF.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An h2 CONNECT stream's bytes (see the module docs).
pub struct H2Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not read yet.
    pending: Bytes,
    eof: bool,
    /// END_STREAM sent.
    shut: bool,
}

impl H2Tunnel {
    /// The stream whose DATA goes out on `send` and comes in on `recv`.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            eof: false,
            shut: false,
        }
    }

    /// The error a write gets once the stream cannot carry more: the peer's reset, or a broken
    /// pipe when it ended the stream normally.
    fn poll_write_error(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        match std::task::ready!(self.send.poll_reset(cx)) {
            Ok(h2::Reason::NO_ERROR | h2::Reason::CANCEL | h2::Reason::STREAM_CLOSED) => {
                Poll::Ready(std::io::ErrorKind::BrokenPipe.into())
            }
            Ok(reason) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                format!("the peer reset the tunnel: {reason}"),
            )),
            Err(e) => Poll::Ready(h2_to_io(e)),
        }
    }
}

/// An h2 error as an I/O error (the underlying one when the connection's I/O failed).
pub fn h2_to_io(e: h2::Error) -> std::io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| std::io::Error::other("h2 I/O error"))
    } else {
        std::io::Error::other(e)
    }
}

impl AsyncRead for H2Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = buf.remaining().min(self.pending.len());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match std::task::ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window opens again as bytes are taken (bounded by the stream window).
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    self.pending = data;
                }
                Some(Err(e)) => {
                    if e.reason() == Some(h2::Reason::NO_ERROR) {
                        self.eof = true;
                    } else {
                        return Poll::Ready(Err(h2_to_io(e)));
                    }
                }
                None => self.eof = true,
            }
        }
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.shut {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        self.send.reserve_capacity(buf.len());
        match std::task::ready!(self.send.poll_capacity(cx)) {
            Some(Ok(n)) if n > 0 => {
                let n = n.min(buf.len());
                if self
                    .send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .is_ok()
                {
                    return Poll::Ready(Ok(n));
                }
            }
            // Nothing assigned yet: ask again on the next turn.
            Some(Ok(_)) => {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Some(Err(_)) | None => {}
        }
        self.poll_write_error(cx).map(Err)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // The connection's driver writes queued frames as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if self.shut {
            return Poll::Ready(Ok(()));
        }
        if self.send.send_data(Bytes::new(), true).is_ok() {
            self.shut = true;
            return Poll::Ready(Ok(()));
        }
        self.poll_write_error(cx).map(Err)
    }
}
