//! The accept loop over real sockets and real TLS: what handlers learn about their peer, bound
//! addresses, connection and handshake limits, and the `Stream` form under tonic.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BOUND, ClientCerts, Pki, bounded};
use runtime::listener::{BoundListener, ConnInfo, ListenerLimits};
use runtime::{Drain, ServerTlsSource};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const SPIFFE: &str = "spiffe://cluster.local/actor/default/echo";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Serves `listener`, sending each connection's info to the returned receiver and then closing
/// the connection.
fn report_infos(listener: BoundListener, drain: &Drain) -> mpsc::UnboundedReceiver<ConnInfo> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(listener.serve(drain.signal(), move |conn| {
        let _ = tx.send((**conn.info()).clone());
        async move { drop(conn) }
    }));
    rx
}

#[tokio::test]
async fn mtls_handler_sees_the_client_spiffe_id_and_none_without_a_certificate() {
    let pki = Pki::new();
    let tls: Arc<dyn ServerTlsSource> =
        Arc::new(pki.server_config(ClientCerts::Optional, &[b"h2", b"http/1.1"]));
    let listener = BoundListener::bind("test.tls", loopback())
        .await
        .expect("bind")
        .with_tls(tls);
    let addr = listener.local_addr();
    let drain = Drain::new();
    let mut infos = report_infos(listener, &drain);

    let client = pki.client(&[SPIFFE]);
    let stream = bounded(
        "mTLS handshake",
        pki.connect(addr, Some(&client), &[b"http/1.1"]),
    )
    .await
    .expect("mTLS handshake");
    let info = bounded("the mTLS connection's info", infos.recv())
        .await
        .expect("listener gone");
    assert!(info.tls);
    assert_eq!(info.spiffe_id(), Some(SPIFFE));
    assert_eq!(info.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(info.local, addr);
    assert_eq!(
        info.peer,
        stream.get_ref().0.local_addr().expect("client addr")
    );
    assert_eq!(&*info.listener, "test.tls");
    let identity = info.peer_identity.expect("a verified client certificate");
    assert_eq!(
        identity.certificate, client.chain[0],
        "the leaf is the client's"
    );
    drop(stream);

    let stream = bounded(
        "TLS handshake without a certificate",
        pki.connect(addr, None, &[]),
    )
    .await
    .expect("TLS handshake without a certificate");
    let info = bounded("the TLS connection's info", infos.recv())
        .await
        .expect("listener gone");
    assert!(info.tls);
    assert_eq!(info.peer_identity, None);
    assert_eq!(info.alpn, None);
    drop(stream);

    // A certificate with two SPIFFE IDs names no single identity.
    let two = pki.client(&[SPIFFE, "spiffe://cluster.local/actor/default/other"]);
    let _stream = bounded("mTLS handshake", pki.connect(addr, Some(&two), &[]))
        .await
        .expect("mTLS handshake");
    let info = bounded("the connection's info", infos.recv())
        .await
        .expect("listener gone");
    let identity = info.peer_identity.expect("the certificate was verified");
    assert_eq!(identity.spiffe_id, None);
}

#[tokio::test]
async fn plaintext_peer_has_no_identity_and_port_zero_reports_the_bound_port() {
    let listener = BoundListener::bind("test.plain", loopback())
        .await
        .expect("bind");
    let addr = listener.local_addr();
    assert_ne!(addr.port(), 0, "the system chose a port");
    let drain = Drain::new();
    let mut infos = report_infos(listener, &drain);
    let tcp = bounded("connect", TcpStream::connect(addr))
        .await
        .expect("connect to the reported address");
    let info = bounded("the connection's info", infos.recv())
        .await
        .expect("listener gone");
    assert!(!info.tls);
    assert_eq!(info.peer_identity, None);
    assert_eq!(info.spiffe_id(), None);
    assert_eq!(info.local, addr);
    assert_eq!(info.peer, tcp.local_addr().expect("client addr"));
}

#[tokio::test]
async fn a_required_client_certificate_is_enforced_in_the_handshake() {
    let pki = Pki::new();
    let tls: Arc<dyn ServerTlsSource> = Arc::new(pki.server_config(ClientCerts::Required, &[]));
    let listener = BoundListener::bind("test.mtls", loopback())
        .await
        .expect("bind")
        .with_tls(tls);
    let addr = listener.local_addr();
    let drain = Drain::new();
    let mut infos = report_infos(listener, &drain);
    // TLS 1.3: the client finishes first; the server's refusal arrives as an alert on read.
    let mut stream = bounded("TLS handshake", pki.connect(addr, None, &[]))
        .await
        .expect("client side of the handshake");
    let mut buf = [0u8; 1];
    let err = bounded("the server's refusal", stream.read(&mut buf))
        .await
        .expect_err("the server refuses a client without a certificate");
    assert!(
        err.to_string().contains("CertificateRequired"),
        "refused for the missing certificate: {err}"
    );
    assert!(infos.try_recv().is_err(), "the handler never saw it");
}

#[tokio::test]
async fn connections_past_the_limit_wait_until_one_closes() {
    let listener = BoundListener::bind("test.limit", loopback())
        .await
        .expect("bind")
        .with_limits(ListenerLimits {
            max_connections: 1,
            ..ListenerLimits::default()
        });
    let addr = listener.local_addr();
    let open = listener.open_connections();
    let drain = Drain::new();
    // Each connection is greeted, then held until the client closes it.
    tokio::spawn(listener.serve(drain.signal(), |mut conn| async move {
        let _ = conn.write_all(b"hi").await;
        let mut buf = [0u8; 16];
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    }));
    let mut first = TcpStream::connect(addr).await.expect("connect");
    let mut buf = [0u8; 2];
    bounded("the first greeting", first.read_exact(&mut buf))
        .await
        .expect("first greeting");
    assert_eq!(open.get(), 1);
    // The kernel completes the second connection, but the listener does not take it.
    let mut second = TcpStream::connect(addr).await.expect("connect");
    let early = tokio::time::timeout(Duration::from_millis(300), second.read_exact(&mut buf)).await;
    assert!(
        early.is_err(),
        "the second connection was served past the limit"
    );
    drop(first);
    bounded("the second greeting", second.read_exact(&mut buf))
        .await
        .expect("second greeting once the first closed");
    assert_eq!(&buf, b"hi");
    assert_eq!(open.get(), 1);
}

#[tokio::test]
async fn a_silent_tls_client_is_closed_at_the_handshake_timeout() {
    let pki = Pki::new();
    let tls: Arc<dyn ServerTlsSource> = Arc::new(pki.server_config(ClientCerts::Optional, &[]));
    let listener = BoundListener::bind("test.handshake", loopback())
        .await
        .expect("bind")
        .with_tls(tls)
        .with_limits(ListenerLimits {
            tls_handshake_timeout: Duration::from_millis(200),
            ..ListenerLimits::default()
        });
    let addr = listener.local_addr();
    let open = listener.open_connections();
    let drain = Drain::new();
    let mut infos = report_infos(listener, &drain);
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1];
    let read = bounded(
        "the server to close the silent client",
        silent.read(&mut buf),
    )
    .await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "closed without a byte: {read:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "closed by the timeout, not at once: {:?}",
        started.elapsed()
    );
    assert!(infos.try_recv().is_err(), "the handler never saw it");
    // The slot is free again: a real client gets through.
    let _ok = bounded("TLS handshake", pki.connect(addr, None, &[]))
        .await
        .expect("handshake after the timeout");
    bounded("the next connection's info", infos.recv())
        .await
        .expect("listener gone");
    assert!(open.get() <= 1);
}

#[tokio::test]
async fn incoming_feeds_tonic_with_peer_addresses_and_ends_on_drain() {
    let pki = Pki::new();
    let tls: Arc<dyn ServerTlsSource> =
        Arc::new(pki.server_config(ClientCerts::Required, &[b"h2"]));
    let listener = BoundListener::bind("test.grpc", loopback())
        .await
        .expect("bind")
        .with_tls(tls);
    let addr = listener.local_addr();
    let drain = Drain::new();
    let incoming = listener.incoming(drain.signal());
    assert_eq!(incoming.local_addr(), addr);

    let (_reporter, health) = tonic_health::server::health_reporter();
    let seen: Arc<Mutex<Vec<Option<SocketAddr>>>> = Arc::default();
    let record = seen.clone();
    let health = tonic::service::interceptor::InterceptedService::new(
        health,
        move |req: tonic::Request<()>| {
            if let Ok(mut s) = record.lock() {
                s.push(
                    req.extensions()
                        .get::<runtime::listener::GrpcConnInfo>()
                        .map(|c| c.0.peer),
                );
            }
            Ok(req)
        },
    );
    let signal = drain.signal();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move { signal.draining().await }),
    );

    let client = pki.client(&[SPIFFE]);
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem))
        .identity(tonic::transport::Identity::from_pem(
            &client.cert_pem,
            &client.key_pem,
        ))
        .domain_name("localhost");
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)
        .expect("client TLS")
        .connect_timeout(BOUND);
    let channel = bounded("gRPC connect", channel.connect())
        .await
        .expect("gRPC connect");
    let mut health_client = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = bounded(
        "health check",
        health_client.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        }),
    )
    .await
    .expect("health check answered");
    assert_eq!(
        reply.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let remote = seen.lock().expect("lock")[0].expect("tonic saw the remote address");
    assert_eq!(remote.ip(), addr.ip());
    assert_ne!(
        remote.port(),
        addr.port(),
        "the client's port, not the server's"
    );

    let report = bounded("drain", drain.shutdown(BOUND)).await;
    bounded("tonic to stop", server)
        .await
        .expect("server task")
        .expect("server ended cleanly");
    assert_eq!(report.forced, 0, "tonic closed its connection gracefully");
    let refused = TcpStream::connect(addr).await;
    assert!(refused.is_err(), "the listener is closed after the drain");
}

#[tokio::test]
async fn an_incoming_connection_held_past_the_deadline_fails_its_io_and_is_counted() {
    use futures_util::StreamExt;
    let listener = BoundListener::bind("test.incoming", loopback())
        .await
        .expect("bind");
    let addr = listener.local_addr();
    let drain = Drain::new();
    let mut incoming = listener.incoming(drain.signal());
    let mut client = TcpStream::connect(addr).await.expect("connect");
    let mut conn = bounded("the connection", incoming.next())
        .await
        .expect("stream ended")
        .expect("connection");
    assert_eq!(conn.info().local, addr);
    // Whoever owns the connection reads from it and ignores draining.
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 8];
        conn.read(&mut buf).await
    });
    let report = bounded("the drain", drain.shutdown(Duration::from_millis(100))).await;
    assert_eq!(report.forced, 1, "{report:?}");
    let read = bounded("the forced read", reader)
        .await
        .expect("reader task");
    let err = read.expect_err("the read fails once forced");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
    let mut buf = [0u8; 1];
    let closed = bounded("the client to see the close", client.read(&mut buf)).await;
    assert!(matches!(closed, Ok(0)) || closed.is_err(), "{closed:?}");
    assert!(
        bounded("the stream to end", incoming.next())
            .await
            .is_none(),
        "no connections after the drain"
    );
}
