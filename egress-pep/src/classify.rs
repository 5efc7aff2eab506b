//! Classification of a tunnel's first bytes (DESIGN §7.2): a TLS ClientHello (its SNI), a
//! cleartext HTTP/1.x request (decided per request by [`crate::cleartext`]), or anything else
//! (opaque TCP, decided by `tcp` rules only).
//!
//! The read is bounded in size ([`ClassifyLimits::max_bytes`]) and time
//! ([`ClassifyLimits::timeout`]); a peer that sends nothing within
//! [`ClassifyLimits::peek_timeout`] speaks a server-first protocol (SSH, SMTP) and is opaque.
//! A ClientHello may be split over several TLS records and any number of TCP segments: the
//! handshake fragments are reassembled before the message is parsed (with `tls-parser`).
//! Every byte read is returned so that the caller can replay it upstream through [`Rewind`].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// TLS record content type of a handshake record.
const CONTENT_HANDSHAKE: u8 = 0x16;
/// TLS handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
/// Size of a TLS record header (type, version, length).
const RECORD_HEADER: usize = 5;
/// Longest HTTP method token accepted in a request line (longer → not HTTP).
const MAX_METHOD: usize = 32;

/// Bounds of one classification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassifyLimits {
    /// Most bytes read while classifying (a ClientHello may span several records; post-quantum
    /// key shares make it over 1 KiB). Default 16 KiB + 5 (one full record and its header);
    /// values above 64 KiB are clamped to 64 KiB.
    pub max_bytes: usize,
    /// Longest time from the start of classification to a verdict once the first byte arrived.
    /// Default 5 s.
    pub timeout: Duration,
    /// How long to wait for the first byte: nothing by then → [`Classified::Opaque`] (a
    /// server-first protocol). Default 1 s: it starts when the CONNECT is answered, so it also
    /// covers the agent↔PEP round trip before the actor's first flight arrives.
    pub peek_timeout: Duration,
}

impl ClassifyLimits {
    /// The hard ceiling of [`ClassifyLimits::max_bytes`].
    pub const MAX_BYTES_CEILING: usize = 64 * 1024;
}

impl Default for ClassifyLimits {
    fn default() -> Self {
        ClassifyLimits {
            max_bytes: 16 * 1024 + RECORD_HEADER,
            timeout: Duration::from_secs(5),
            peek_timeout: Duration::from_secs(1),
        }
    }
}

/// What a tunnel's first bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Classified {
    /// A complete TLS ClientHello.
    Tls {
        /// The `host_name` entry of its server_name extension, as sent (not normalised);
        /// `None` when there is none or it is not UTF-8.
        sni: Option<String>,
    },
    /// An HTTP/1.x request line (`METHOD SP target SP HTTP/1.x CRLF`).
    Http,
    /// Anything else, including nothing at all before the peek timeout or end of stream.
    Opaque,
}

/// Why classification produced no verdict. In both timeout and size cases the bytes looked like
/// the start of a ClientHello or of an HTTP request line that never completed.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// Reading from the tunnel failed.
    #[error("reading the tunnel's first bytes: {0}")]
    Io(#[from] io::Error),
    /// The ClientHello or request line did not complete within [`ClassifyLimits::timeout`].
    #[error("first bytes incomplete after {0:?} ({1} bytes read)")]
    Timeout(Duration, usize),
    /// The ClientHello or request line is longer than [`ClassifyLimits::max_bytes`].
    #[error("first bytes exceed {0} bytes without a complete ClientHello or request line")]
    TooLarge(usize),
}

/// What the bytes read so far say.
enum Progress {
    /// Decided.
    Done(Classified),
    /// Looks like TLS or HTTP but is incomplete: read more.
    More,
    /// A ClientHello announces a length beyond the limit.
    TooLarge,
}

/// Reads the tunnel's first bytes and classifies them. Returns the verdict and every byte read
/// (replay them with [`Rewind`]). End of stream before a verdict → [`Classified::Opaque`] with
/// what was read.
///
/// # Errors
/// [`ClassifyError::Io`] on a read error, [`ClassifyError::Timeout`] /
/// [`ClassifyError::TooLarge`] when the bytes look like a ClientHello or a request line that
/// does not complete within the limits.
pub async fn classify<IO>(
    io: &mut IO,
    limits: ClassifyLimits,
) -> Result<(Classified, Bytes), ClassifyError>
where
    IO: AsyncRead + Unpin + ?Sized,
{
    let max = limits.max_bytes.clamp(1, ClassifyLimits::MAX_BYTES_CEILING);
    let start = Instant::now();
    let deadline = start + limits.timeout;
    let mut buf = BytesMut::with_capacity(max.min(4096));

    // The first byte: nothing within the peek timeout → server-first protocol.
    match tokio::time::timeout(limits.peek_timeout, read_some(io, &mut buf, max)).await {
        Err(_) => return Ok((Classified::Opaque, Bytes::new())),
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(0)) => return Ok((Classified::Opaque, Bytes::new())),
        Ok(Ok(_)) => {}
    }
    loop {
        match inspect(&buf, max) {
            Progress::Done(c) => return Ok((c, buf.freeze())),
            Progress::TooLarge => return Err(ClassifyError::TooLarge(max)),
            Progress::More => {}
        }
        if buf.len() >= max {
            return Err(ClassifyError::TooLarge(max));
        }
        match tokio::time::timeout_at(deadline, read_some(io, &mut buf, max)).await {
            Err(_) => return Err(ClassifyError::Timeout(limits.timeout, buf.len())),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(0)) => return Ok((Classified::Opaque, buf.freeze())),
            Ok(Ok(_)) => {}
        }
    }
}

/// Reads at most `max - buf.len()` more bytes into `buf`.
async fn read_some<IO>(io: &mut IO, buf: &mut BytesMut, max: usize) -> io::Result<usize>
where
    IO: AsyncRead + Unpin + ?Sized,
{
    let room = max.saturating_sub(buf.len());
    buf.reserve(room.min(16 * 1024));
    let mut limited = (&mut *io).take(room as u64);
    limited.read_buf(buf).await
}

/// Classifies the bytes read so far.
fn inspect(buf: &[u8], max: usize) -> Progress {
    match buf.first() {
        None => Progress::More,
        Some(&CONTENT_HANDSHAKE) => inspect_tls(buf, max),
        Some(_) => inspect_http(buf),
    }
}

/// Reassembles the handshake fragments of consecutive handshake records and parses the first
/// handshake message once it is complete.
fn inspect_tls(buf: &[u8], max: usize) -> Progress {
    let mut handshake: Vec<u8> = Vec::new();
    let mut rest = buf;
    loop {
        if rest.len() < RECORD_HEADER {
            return Progress::More;
        }
        let (after, header) = match tls_parser::parse_tls_record_header(rest) {
            Ok(parsed) => parsed,
            Err(_) => return Progress::Done(Classified::Opaque),
        };
        // SSL 3.0 .. TLS 1.3 all carry major version 3 in the record layer; a record of
        // another type, an empty one or one over 2^14 + 2048 is not a ClientHello.
        if header.record_type.0 != CONTENT_HANDSHAKE
            || header.version.0 >> 8 != 3
            || header.len == 0
            || usize::from(header.len) > 16 * 1024 + 2048
        {
            return Progress::Done(Classified::Opaque);
        }
        let len = usize::from(header.len);
        // A record that cannot fit within the limit is refused without waiting for it.
        if buf.len() - after.len() + len > max {
            return Progress::TooLarge;
        }
        if after.len() < len {
            return Progress::More;
        }
        handshake.extend_from_slice(&after[..len]);
        rest = &after[len..];
        if handshake.len() >= 4 {
            if handshake[0] != HANDSHAKE_CLIENT_HELLO {
                return Progress::Done(Classified::Opaque);
            }
            let body_len = (usize::from(handshake[1]) << 16)
                | (usize::from(handshake[2]) << 8)
                | usize::from(handshake[3]);
            if body_len + 4 > max {
                return Progress::TooLarge;
            }
            if handshake.len() >= body_len + 4 {
                return Progress::Done(parse_client_hello(&handshake[..body_len + 4]));
            }
        }
    }
}

/// Parses one complete ClientHello handshake message and extracts its SNI.
fn parse_client_hello(message: &[u8]) -> Classified {
    use tls_parser::{SNIType, TlsExtension, TlsMessage, TlsMessageHandshake};
    let hello = match tls_parser::parse_tls_message_handshake(message) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        _ => return Classified::Opaque,
    };
    let Some(ext) = hello.ext else {
        return Classified::Tls { sni: None };
    };
    let extensions = match tls_parser::parse_tls_client_hello_extensions(ext) {
        Ok((_, extensions)) => extensions,
        Err(_) => return Classified::Opaque,
    };
    let sni = extensions.iter().find_map(|e| match e {
        TlsExtension::SNI(names) => names
            .iter()
            .find(|(kind, _)| *kind == SNIType::HostName)
            // Escaped (`\n`, `\xff`): the SNI reaches logs and audit records, so control bytes
            // must not forge lines; an escaped name is never a valid authority (denied).
            .map(|(_, name)| name.escape_ascii().to_string()),
        _ => None,
    });
    Classified::Tls { sni }
}

/// HTTP/1.x detection by request line: a method token, SP, a target without controls or
/// spaces, SP, `HTTP/1.` and a digit, CRLF (LF alone tolerated).
fn inspect_http(buf: &[u8]) -> Progress {
    let opaque = Progress::Done(Classified::Opaque);
    let method_len = buf.iter().take_while(|b| is_method_char(**b)).count();
    if method_len > MAX_METHOD {
        return opaque;
    }
    let Some(&after_method) = buf.get(method_len) else {
        return Progress::More;
    };
    if method_len == 0 || after_method != b' ' {
        return opaque;
    }
    let rest = &buf[method_len + 1..];
    let target_len = rest
        .iter()
        .take_while(|b| **b > b' ' && **b != 0x7f)
        .count();
    let Some(&after_target) = rest.get(target_len) else {
        return Progress::More;
    };
    if target_len == 0 || after_target != b' ' {
        return opaque;
    }
    let version = &rest[target_len + 1..];
    const PREFIX: &[u8] = b"HTTP/1.";
    let n = version.len().min(PREFIX.len());
    if version[..n] != PREFIX[..n] {
        return opaque;
    }
    let tail = &version[n..];
    if n < PREFIX.len() || tail.is_empty() {
        return Progress::More;
    }
    if !tail[0].is_ascii_digit() {
        return opaque;
    }
    match tail.get(1) {
        None => Progress::More,
        Some(b'\n') => Progress::Done(Classified::Http),
        Some(b'\r') => match tail.get(2) {
            None => Progress::More,
            Some(b'\n') => Progress::Done(Classified::Http),
            Some(_) => opaque,
        },
        Some(_) => opaque,
    }
}

/// A byte of a method as clients send them: RFC 9110 allows any `tchar`, but methods are
/// case-sensitive and every registered one is uppercase letters with `-`/`_` (`GET`,
/// `M-SEARCH`, `BASELINE-CONTROL`). Restricting the class lets a client-first opaque protocol that
/// starts with a lowercase or other byte (`ping`, a binary frame) be classified at once instead of
/// waiting for the classification timeout.
fn is_method_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b == b'-' || b == b'_'
}

pin_project_lite::pin_project! {
    /// An IO that first replays a prefix (the bytes [`classify`] read) and then reads from the
    /// inner IO; writes go straight to the inner IO.
    #[derive(Debug)]
    pub struct Rewind<IO> {
        prefix: Bytes,
        #[pin]
        inner: IO,
    }
}

impl<IO: crate::forward::Absorb> crate::forward::Absorb for Rewind<IO> {
    fn poll_absorb(self: Pin<&mut Self>, cx: &mut Context<'_>) {
        self.project().inner.poll_absorb(cx);
    }
}

impl<IO> Rewind<IO> {
    /// Wraps `inner`, replaying `prefix` before its own bytes.
    pub fn new(prefix: Bytes, inner: IO) -> Self {
        Rewind { prefix, inner }
    }

    /// The bytes not yet replayed and the inner IO.
    pub fn into_parts(self) -> (Bytes, IO) {
        (self.prefix, self.inner)
    }

    /// The inner IO.
    pub fn inner(&self) -> &IO {
        &self.inner
    }
}

impl<IO: AsyncRead> AsyncRead for Rewind<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Release the classification buffer the prefix was cut from: a long-lived
                // tunnel must not keep it.
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Rewind<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        assert!(matches!(
            inspect(b"GET / HTTP/1.1\r\n", 100),
            Progress::Done(Classified::Http)
        ));
        assert!(matches!(
            inspect(b"GET http://a/ HTTP/1.0\n", 100),
            Progress::Done(Classified::Http)
        ));
        assert!(matches!(inspect(b"GET / HTT", 100), Progress::More));
        assert!(matches!(inspect(b"GE", 100), Progress::More));
        assert!(matches!(
            inspect(b"SSH-2.0-OpenSSH\r\n", 100),
            Progress::Done(Classified::Opaque)
        ));
        assert!(matches!(
            inspect(b"SET k v\r\n", 100),
            Progress::Done(Classified::Opaque)
        ));
        assert!(matches!(
            inspect(b"GET / HTTP/2.0\r\n", 100),
            Progress::Done(Classified::Opaque)
        ));
        assert!(matches!(
            inspect(b"\x00\x01", 100),
            Progress::Done(Classified::Opaque)
        ));
    }

    #[test]
    fn tls_record_of_other_type_is_opaque() {
        assert!(matches!(
            inspect(&[0x16, 0x03, 0x01, 0x00, 0x04, 0x02, 0, 0, 0], 100),
            Progress::Done(Classified::Opaque)
        ));
        assert!(matches!(
            inspect(&[0x16, 0x03, 0x01, 0x00], 100),
            Progress::More
        ));
    }
}
