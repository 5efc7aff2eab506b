//! Counts the HTTP/2 streams the server refuses (RST_STREAM with REFUSED_STREAM) by watching the
//! frames it writes. The h2 server enforces `max_concurrent_streams` itself and refuses a stream
//! beyond it before the PEP sees the request; this wrapper is how such refusals
//! are still counted (`actorgate_egress_limits_total{limit="too_many_streams"}`).
//!
//! Streams refused because the connection is closing are not a limit: once the server has written
//! a GOAWAY (drain, idle connection) or the drain has started, refusals are no longer counted.
//!
//! The server side of an h2 connection writes only frames (9-byte header, payload), so a small
//! state machine over the written bytes finds them without buffering anything but a header.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use runtime::drain::DrainSignal;

use crate::metrics::{EgressMetrics, Limit};

/// RST_STREAM frame type.
const RST_STREAM: u8 = 0x3;
/// GOAWAY frame type.
const GOAWAY: u8 = 0x7;
/// REFUSED_STREAM error code.
const REFUSED_STREAM: u32 = 0x7;

/// Where the parser is within the written frame stream.
#[derive(Debug, Default)]
struct Frames {
    /// Bytes of the current frame header collected so far.
    header: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// Collecting an RST_STREAM payload: its error code so far and bytes seen.
    rst: Option<(u32, usize)>,
    /// Whether a GOAWAY frame header has been written: the connection is closing.
    goaway: bool,
}

impl Frames {
    /// Feeds written bytes; returns how many REFUSED_STREAM resets they completed before any
    /// GOAWAY (refusals after one are the shutdown's, not the stream limit's).
    fn feed(&mut self, mut buf: &[u8]) -> u64 {
        let mut refused = 0;
        while !buf.is_empty() {
            if let Some((code, seen)) = self.rst.as_mut() {
                while *seen < 4 && !buf.is_empty() {
                    *code = (*code << 8) | u32::from(buf[0]);
                    *seen += 1;
                    self.skip -= 1;
                    buf = &buf[1..];
                }
                if *seen == 4 {
                    if *code == REFUSED_STREAM && !self.goaway {
                        refused += 1;
                    }
                    self.rst = None;
                }
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(buf.len());
                self.skip -= n;
                buf = &buf[n..];
                continue;
            }
            let n = (9 - self.have).min(buf.len());
            self.header[self.have..self.have + n].copy_from_slice(&buf[..n]);
            self.have += n;
            buf = &buf[n..];
            if self.have == 9 {
                self.have = 0;
                let len = (usize::from(self.header[0]) << 16)
                    | (usize::from(self.header[1]) << 8)
                    | usize::from(self.header[2]);
                self.skip = len;
                if self.header[3] == RST_STREAM && len == 4 {
                    self.rst = Some((0, 0));
                } else if self.header[3] == GOAWAY {
                    self.goaway = true;
                }
            }
        }
        refused
    }
}

/// An h2 server connection's IO that counts refused streams in what it writes.
pub struct CountRefused<IO> {
    inner: IO,
    frames: Frames,
    metrics: EgressMetrics,
    drain: DrainSignal,
}

impl<IO> CountRefused<IO> {
    /// Wraps the server side of an h2 connection; refusals while `drain` is draining are not
    /// counted.
    pub fn new(inner: IO, metrics: EgressMetrics, drain: DrainSignal) -> Self {
        Self {
            inner,
            frames: Frames::default(),
            metrics,
            drain,
        }
    }

    fn count(&mut self, written: &[u8]) {
        let refused = self.frames.feed(written);
        if refused == 0 || self.drain.is_draining() {
            return;
        }
        for _ in 0..refused {
            self.metrics.limit(Limit::TooManyStreams);
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for CountRefused<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for CountRefused<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.count(&buf[..n]);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = polled {
            for b in bufs {
                if n == 0 {
                    break;
                }
                let take = n.min(b.len());
                this.count(&b[..take]);
                n -= take;
            }
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::Frames;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, 0];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn finds_refused_resets_across_any_split() {
        let mut bytes = frame(0x4, 0, &[0; 12]);
        bytes.extend(frame(0x3, 5, &7u32.to_be_bytes()));
        bytes.extend(frame(0x0, 1, &[0x3; 40]));
        bytes.extend(frame(0x3, 7, &8u32.to_be_bytes()));
        bytes.extend(frame(0x3, 9, &7u32.to_be_bytes()));
        for chunk in 1..bytes.len() {
            let mut f = Frames::default();
            let n: u64 = bytes.chunks(chunk).map(|c| f.feed(c)).sum();
            assert_eq!(n, 2, "chunk size {chunk}");
        }
    }

    #[test]
    fn refusals_after_a_goaway_are_not_counted() {
        let mut bytes = frame(0x3, 1, &7u32.to_be_bytes());
        bytes.extend(frame(0x7, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
        bytes.extend(frame(0x3, 3, &7u32.to_be_bytes()));
        for chunk in 1..bytes.len() {
            let mut f = Frames::default();
            let n: u64 = bytes.chunks(chunk).map(|c| f.feed(c)).sum();
            assert_eq!(n, 1, "chunk size {chunk}");
        }
    }
}
