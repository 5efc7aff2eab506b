//! A read-ahead buffer under TLS: rustls reads the socket at most 4 KiB at a time (its
//! deframer's read size), which costs one `recvmsg` per 4 KiB of a bulk transfer. [`ReadAhead`]
//! reads up to its maximum (default [`READ_AHEAD`]) per system call and serves rustls's small
//! reads from memory. Fewer, larger reads also mean fewer wakeups per byte: a bulk stream is
//! cheapest when each wakeup takes everything the kernel has queued.
//!
//! The buffer exists only while bytes wait in it or the peer keeps sending: it is allocated on
//! the first read and freed when the socket has nothing more to give, so an idle connection
//! holds no buffer (thousands of idle tunnels stay cheap). Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The default for the most bytes one read from the socket asks for (four TLS records of
/// 16 KiB plus framing); [`ReadAhead::with_max`] sets another.
pub const READ_AHEAD: usize = 64 * 1024 + 256;

/// What a buffer starts with: one TLS record. Handshakes and small exchanges never need more;
/// a read that fills the buffer doubles it, up to the maximum.
const FIRST_READ: usize = 16 * 1024 + 256;

/// An IO whose reads go through a lazily allocated read-ahead buffer (see the module docs).
#[derive(Debug)]
pub struct ReadAhead<IO> {
    inner: IO,
    /// Bytes read from `inner` and not yet handed out (`buf[..]`, consumed from the front).
    buf: BytesMut,
    /// How much the next fill asks for (grows while reads fill the buffer).
    want: usize,
    /// The most `want` grows to, bytes.
    max: usize,
    /// Size of `buf`'s allocation (0: none).
    allocated: usize,
}

impl<IO> ReadAhead<IO> {
    /// Wraps `inner` with reads of up to [`READ_AHEAD`]; no buffer is allocated until the first
    /// read.
    pub fn new(inner: IO) -> Self {
        Self::with_max(inner, READ_AHEAD)
    }

    /// Wraps `inner` with reads of up to `max` bytes (at least one TLS record: smaller values
    /// are raised to it); no buffer is allocated until the first read.
    pub fn with_max(inner: IO, max: usize) -> Self {
        ReadAhead {
            inner,
            buf: BytesMut::new(),
            want: FIRST_READ,
            max: max.max(FIRST_READ),
            allocated: 0,
        }
    }

    /// The wrapped IO.
    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    /// The wrapped IO, mutably (reading from it directly would skip buffered bytes).
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.inner
    }

    /// Bytes buffered and not yet read.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Frees the (empty) buffer.
    fn release(&mut self) {
        self.buf = BytesMut::new();
        self.allocated = 0;
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ReadAhead<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.buf.is_empty() {
            // A caller that asks for at least as much as we would read gains nothing from the
            // buffer: read straight into its memory.
            if out.remaining() >= this.want {
                this.release();
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            // Not zeroed: `poll_read_buf` reads into the spare capacity. An emptied buffer that
            // is large enough is reclaimed from the front by `reserve`; a larger one is a new
            // allocation of exactly `want` (growing in place could double it past `max`).
            if this.allocated < this.want {
                this.buf = BytesMut::with_capacity(this.want);
                this.allocated = this.want;
            } else {
                this.buf.reserve(this.want);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.inner), cx, &mut this.buf) {
                Poll::Ready(Ok(0)) => {
                    // End of stream: nothing more will be buffered.
                    this.release();
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(n)) => {
                    if n >= this.want && this.want < this.max {
                        this.want = (this.want * 2).min(this.max);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read for now: an idle connection holds no buffer.
                    this.release();
                    return Poll::Pending;
                }
            }
        }
        let n = out.remaining().min(this.buf.len());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ReadAhead<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
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
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read_and_idle_frees_the_buffer() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(b);
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        a.write_all(&data).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < data.len() {
            let n = r.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
        // Nothing more to read: the next read is pending and the buffer is freed.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut chunk)).await;
        assert!(pending.is_err());
        assert_eq!((r.buffered(), r.buf.capacity(), r.allocated), (0, 0, 0));
        assert_eq!(r.want, READ_AHEAD, "full reads grow the buffer");
        drop(a);
        assert_eq!(r.read(&mut chunk).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn with_max_grows_past_the_default_up_to_its_bound() {
        const MAX: usize = 1024 * 1024 + 256;
        let (mut a, b) = tokio::io::duplex(8 << 20);
        let mut r = ReadAhead::with_max(b, MAX);
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
        a.write_all(&data).await.unwrap();
        drop(a);
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        let mut biggest = 0;
        loop {
            let n = r.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            biggest = biggest.max(r.allocated);
            assert!(
                r.buf.capacity() <= MAX,
                "{} past the bound",
                r.buf.capacity()
            );
            got.extend_from_slice(&chunk[..n]);
        }
        assert!(got == data, "bytes intact and in order");
        assert_eq!(r.want, MAX, "full reads grow the buffer to the bound");
        assert!(biggest > READ_AHEAD && biggest <= MAX, "{biggest}");
        assert_eq!(
            (r.allocated, r.buf.capacity()),
            (0, 0),
            "EOF frees the buffer"
        );
    }
}
