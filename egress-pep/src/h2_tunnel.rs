//! One RFC 9113 CONNECT stream's bytes as a byte stream ([`AsyncRead`] + [`AsyncWrite`]) on the
//! `h2` crate's stream handles. Both ends of a pooled tunnel use it: the agent's client streams
//! ([`crate::agent::pooled`]) and the PEP's server streams ([`crate::tunnel`]).
//!
//! * Reads release flow-control capacity as bytes are taken, so the stream window bounds what is
//!   buffered for a slow reader.
//! * While a splice cannot pass the bytes on, it absorbs them ([`Absorb`]): frames are taken
//!   out of h2 as they arrive, frames under [`COALESCE_BELOW`] copied together. Their capacity
//!   is released as they are read, at most [`HELD_READ_MAX`] at a time, so absorbed bytes
//!   stay within the stream window and what is released but not yet passed on stays within
//!   one such piece, as without absorbing. h2's small-DATA-frame budget, which would otherwise
//!   close the connection with every tunnel on it, is not spent by a spliced tunnel whose far
//!   side stopped reading while small frames trickle in.
//! * Writes send at most the capacity h2 assigns (the peer's window and the send buffer bound).
//! * Shutdown sends END_STREAM: a half-close, the other direction keeps flowing (RFC 9113 §8.5).
//! * A reset from the peer is a write error; END_STREAM from the peer is EOF.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::forward::Absorb;

/// Absorbed DATA payloads shorter than this are copied together, bytes: h2 charges its
/// small-DATA-frame budget for frames under 256 bytes (`h2::proto::DEFAULT_DATA_FRAME_OVERHEAD_THRESHOLD`),
/// and one entry per larger frame is bounded by the window over 256.
pub const COALESCE_BELOW: usize = 256;

/// The most of the absorbed bytes a read takes (and releases capacity for) at a time, bytes: one
/// frame of the PEP's largest size, what a read took before absorbing existed.
pub const HELD_READ_MAX: usize = 256 * 1024;

/// An h2 CONNECT stream's bytes (see the module docs).
pub struct H2Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not read yet (their capacity released).
    pending: Bytes,
    /// Absorbed frames not read yet, in order, before `small` (capacity not released).
    held: VecDeque<Bytes>,
    /// Absorbed small frames since the last entry of `held`, copied together (capacity not
    /// released).
    small: BytesMut,
    /// An error absorbed after the held bytes, reported once they are read.
    held_error: Option<h2::Error>,
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
            held: VecDeque::new(),
            small: BytesMut::new(),
            held_error: None,
            eof: false,
            shut: false,
        }
    }

    /// The next absorbed piece (at most [`HELD_READ_MAX`]), its capacity released now that it
    /// is being read.
    fn take_held(&mut self) -> Option<Bytes> {
        let mut chunk = match self.held.pop_front() {
            Some(chunk) => chunk,
            // Taken whole: the next small frame starts a buffer of its own, so an idle tunnel
            // keeps no allocation from a stall.
            None if !self.small.is_empty() => std::mem::take(&mut self.small).freeze(),
            None => return None,
        };
        if chunk.len() > HELD_READ_MAX {
            self.held.push_front(chunk.split_off(HELD_READ_MAX));
        }
        let _ = self.recv.flow_control().release_capacity(chunk.len());
        Some(chunk)
    }

    /// A receive error as the reader sees it: `NO_ERROR` ends the stream like END_STREAM (EOF,
    /// `None`); any other reason is the error to report.
    fn received_error(&mut self, e: h2::Error) -> Option<h2::Error> {
        if e.reason() == Some(h2::Reason::NO_ERROR) {
            self.eof = true;
            None
        } else {
            Some(e)
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
            if let Some(chunk) = self.take_held() {
                self.pending = chunk;
                continue;
            }
            if let Some(e) = self.held_error.take() {
                return Poll::Ready(Err(h2_to_io(e)));
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
                    if let Some(e) = self.received_error(e) {
                        return Poll::Ready(Err(h2_to_io(e)));
                    }
                }
                None => self.eof = true,
            }
        }
    }
}

impl Absorb for H2Tunnel {
    fn poll_absorb(self: Pin<&mut Self>, cx: &mut Context<'_>) {
        let this = self.get_mut();
        while !this.eof && this.held_error.is_none() {
            match this.recv.poll_data(cx) {
                Poll::Pending => break,
                Poll::Ready(Some(Ok(data))) if data.len() < COALESCE_BELOW => {
                    this.small.extend_from_slice(&data);
                }
                Poll::Ready(Some(Ok(data))) => {
                    if !this.small.is_empty() {
                        this.held
                            .push_back(std::mem::take(&mut this.small).freeze());
                    }
                    this.held.push_back(data);
                }
                Poll::Ready(Some(Err(e))) => this.held_error = this.received_error(e),
                Poll::Ready(None) => this.eof = true,
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
