//! Classification of a tunnel's first bytes over real loopback sockets: a real rustls
//! ClientHello re-framed into several TLS records and written in small segments, HTTP/1.x
//! request lines, server-first protocols, and the size and time bounds.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use egress_pep::classify::{Classified, ClassifyError, ClassifyLimits, Rewind, classify};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, timeout};

/// Bound of every await in these tests.
const BOUND: Duration = Duration::from_secs(10);

/// A ClientHello exactly as rustls sends it (one TLS record), for `server_name` (`None`: SNI
/// disabled).
fn rustls_client_hello(server_name: &str, sni: bool) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    config.enable_sni = sni;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let name = rustls_pki_types::ServerName::try_from(server_name.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).expect("write_tls");
    }
    out
}

/// Splits the single handshake record of `hello` into `parts` records of near-equal size.
fn reframe(hello: &[u8], parts: usize) -> Vec<u8> {
    assert_eq!(hello[0], 0x16, "a handshake record");
    let len = usize::from(u16::from_be_bytes([hello[3], hello[4]]));
    assert_eq!(hello.len(), 5 + len, "exactly one record");
    let payload = &hello[5..];
    let size = payload.len().div_ceil(parts);
    let mut out = Vec::new();
    for chunk in payload.chunks(size) {
        out.extend_from_slice(&[0x16, hello[1], hello[2]]);
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    assert_eq!(out.len(), hello.len() + 5 * (parts - 1));
    out
}

/// A connected loopback pair: (client side, server side).
async fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (client.expect("connect"), server.expect("accept").0)
}

/// Writes `bytes` in `chunk`-sized segments with a pause after each, so that they arrive as
/// separate TCP segments.
async fn write_slowly(stream: &mut TcpStream, bytes: &[u8], chunk: usize) {
    stream.set_nodelay(true).expect("nodelay");
    for piece in bytes.chunks(chunk) {
        stream.write_all(piece).await.expect("write");
        stream.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn client_hello_split_over_three_records_and_many_segments() {
    let hello = rustls_client_hello("api.example.com", true);
    let framed = reframe(&hello, 3);
    let (mut client, mut server) = pair().await;
    let sent = framed.clone();
    let writer = tokio::spawn(async move {
        write_slowly(&mut client, &sent, 37).await;
        client.write_all(b"after the hello").await.expect("write");
        client
    });
    let (classified, read) = timeout(BOUND, classify(&mut server, ClassifyLimits::default()))
        .await
        .expect("classify within bound")
        .expect("classified");
    assert_eq!(
        classified,
        Classified::Tls {
            sni: Some("api.example.com".to_owned())
        }
    );
    assert!(
        framed.starts_with(&read) || read.starts_with(&framed),
        "returned bytes are the bytes read"
    );
    assert!(read.len() >= framed.len(), "the whole ClientHello was read");
    let _client = timeout(BOUND, writer).await.expect("writer").expect("join");

    // Rewind replays exactly what was read, then the rest of the stream.
    let mut rewound = Rewind::new(read, server);
    let mut replay = vec![0u8; framed.len() + b"after the hello".len()];
    timeout(BOUND, rewound.read_exact(&mut replay))
        .await
        .expect("replay within bound")
        .expect("replay");
    assert_eq!(&replay[..framed.len()], &framed[..]);
    assert_eq!(&replay[framed.len()..], b"after the hello");
}

#[tokio::test]
async fn client_hello_in_one_record_and_without_sni() {
    for (hello, sni) in [
        (
            rustls_client_hello("mixed.example.org", true),
            Some("mixed.example.org".to_owned()),
        ),
        (rustls_client_hello("nosni.example.org", false), None),
        // An IP literal server name is never sent as SNI.
        (rustls_client_hello("192.0.2.7", true), None),
    ] {
        let (mut client, mut server) = pair().await;
        client.write_all(&hello).await.expect("write");
        let (classified, read) = timeout(BOUND, classify(&mut server, ClassifyLimits::default()))
            .await
            .expect("bound")
            .expect("classified");
        assert_eq!(classified, Classified::Tls { sni });
        assert_eq!(read, Bytes::from(hello));
    }
}

#[tokio::test]
async fn http_request_line_in_small_segments() {
    let request = b"GET http://api.example.com/v1?q=1 HTTP/1.1\r\nHost: api.example.com\r\n\r\n";
    let (mut client, mut server) = pair().await;
    let writer = tokio::spawn(async move {
        write_slowly(&mut client, request, 3).await;
        client
    });
    let (classified, read) = timeout(BOUND, classify(&mut server, ClassifyLimits::default()))
        .await
        .expect("bound")
        .expect("classified");
    assert_eq!(classified, Classified::Http);
    assert!(request.starts_with(&read), "a prefix of the request");
    assert!(
        read.len() >= 45,
        "at least the request line: {}",
        read.len()
    );
    let _ = timeout(BOUND, writer).await.expect("writer");
}

#[tokio::test]
async fn server_first_is_opaque_after_the_peek_timeout() {
    let (_client, mut server) = pair().await;
    let limits = ClassifyLimits {
        peek_timeout: Duration::from_millis(150),
        ..ClassifyLimits::default()
    };
    let started = Instant::now();
    let (classified, read) = timeout(BOUND, classify(&mut server, limits))
        .await
        .expect("bound")
        .expect("classified");
    let waited = started.elapsed();
    assert_eq!(classified, Classified::Opaque);
    assert!(read.is_empty());
    assert!(
        waited >= Duration::from_millis(150) && waited < Duration::from_secs(3),
        "waited the peek timeout, not the full timeout: {waited:?}"
    );
}

#[tokio::test]
async fn other_protocols_are_opaque_with_their_bytes() {
    for first in [
        &b"SSH-2.0-OpenSSH_9.6\r\n"[..],
        b"*1\r\n$4\r\nPING\r\n",
        b"SET key value\r\n",
        b"GET / HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        // A TLS record that is not a handshake (alert).
        &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28],
        // A handshake record whose message is not a ClientHello.
        &[0x16, 0x03, 0x03, 0x00, 0x05, 0x02, 0x00, 0x00, 0x01, 0x00],
    ] {
        let (mut client, mut server) = pair().await;
        client.write_all(first).await.expect("write");
        let (classified, read) = timeout(BOUND, classify(&mut server, ClassifyLimits::default()))
            .await
            .expect("bound")
            .expect("classified");
        assert_eq!(classified, Classified::Opaque, "{first:?}");
        assert!(first.starts_with(&read) && !read.is_empty(), "{first:?}");
    }
}

#[tokio::test]
async fn end_of_stream_before_a_verdict_is_opaque() {
    let hello = rustls_client_hello("api.example.com", true);
    let (mut client, mut server) = pair().await;
    client.write_all(&hello[..50]).await.expect("write");
    client.shutdown().await.expect("shutdown");
    let (classified, read) = timeout(BOUND, classify(&mut server, ClassifyLimits::default()))
        .await
        .expect("bound")
        .expect("classified");
    assert_eq!(classified, Classified::Opaque);
    assert_eq!(&read[..], &hello[..50]);
}

#[tokio::test]
async fn incomplete_client_hello_times_out() {
    let hello = rustls_client_hello("api.example.com", true);
    let (mut client, mut server) = pair().await;
    client.write_all(&hello[..100]).await.expect("write");
    let limits = ClassifyLimits {
        timeout: Duration::from_millis(300),
        ..ClassifyLimits::default()
    };
    let started = Instant::now();
    let err = timeout(BOUND, classify(&mut server, limits))
        .await
        .expect("bound")
        .expect_err("stalled ClientHello");
    assert!(
        matches!(err, ClassifyError::Timeout(_, 100)),
        "timeout with 100 bytes read: {err:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    drop(client);
}

#[tokio::test]
async fn oversize_first_bytes_are_bounded() {
    let limits = ClassifyLimits {
        max_bytes: 1024,
        ..ClassifyLimits::default()
    };

    // A request line longer than the limit.
    let (mut client, mut server) = pair().await;
    let mut long = b"GET /".to_vec();
    long.extend(std::iter::repeat_n(b'a', 4096));
    let writer = tokio::spawn(async move {
        let _ = client.write_all(&long).await;
        client
    });
    let err = timeout(BOUND, classify(&mut server, limits))
        .await
        .expect("bound")
        .expect_err("too large");
    assert!(matches!(err, ClassifyError::TooLarge(1024)), "{err:?}");
    let _ = timeout(BOUND, writer).await.expect("writer");

    // A ClientHello announcing more than the limit: refused without waiting for it.
    let (mut client, mut server) = pair().await;
    let hello = rustls_client_hello("api.example.com", true);
    let mut big = hello[..9].to_vec();
    big[3..5].copy_from_slice(&4000u16.to_be_bytes());
    big[6..9].copy_from_slice(&[0x00, 0x0f, 0x9c]); // 3996
    client.write_all(&big).await.expect("write");
    let err = timeout(BOUND, classify(&mut server, limits))
        .await
        .expect("bound")
        .expect_err("too large");
    assert!(matches!(err, ClassifyError::TooLarge(1024)), "{err:?}");

    // A ClientHello over several records fits when the limit allows it.
    let (mut client, mut server) = pair().await;
    let framed = reframe(&hello, 3);
    client.write_all(&framed).await.expect("write");
    let exact = ClassifyLimits {
        max_bytes: framed.len(),
        ..ClassifyLimits::default()
    };
    let (classified, _) = timeout(BOUND, classify(&mut server, exact))
        .await
        .expect("bound")
        .expect("classified");
    assert_eq!(
        classified,
        Classified::Tls {
            sni: Some("api.example.com".to_owned())
        }
    );
}
