//! The tunnel agent in `actorgate serve` (issue 13, first part), end to end with real processes
//! in two network namespaces of the test's own joined by a veth pair: in the actor's, the
//! capture rules (`actorgate agent install-rules`) redirect curl's TCP to the agent, which tunnels
//! it per atunnel (one TLS connection and CONNECT each, its own connections marked so they are
//! not captured) to the PEP in the other namespace; the PEP decides and dials the original
//! destination there. An allowed destination answers through the whole chain, with the actor and
//! the original destination in the PEP's audit record; a denied one gets the PEP's readable
//! `403` for cleartext HTTP and no bytes at all otherwise. IPv6 connections are captured with
//! their original destination too, and a certificate rotated on disk is used by the next
//! tunnels without a restart. In both tunnel modes gRPC over h2c, a WebSocket session and an
//! HTTP/1.1 client that half-closes after its request reach the echo worker, and TLS to a
//! `tls_passthrough` name carries h2 with the origin's own certificate; DNS from the actor's
//! namespace reaches the test's resolver, and a gRPC stream stays open for 30 s (pooled).
//!
//! Every address lives inside the two namespaces: nothing leaves the machine.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::egress::{ACTORS, actor_cert, audit_records, config, http_upstream};
use common::netns::TestNetns;
use common::*;
use serde_json::Value;

const MARK: &str = "0x539";
/// The TLS origin's name (a `tls_passthrough` rule; the PEP resolves it to 10.9.9.9).
const TLS_NAME: &str = "tls.origin.test";

/// What the PEP side tells the actor side.
struct PepSide {
    pep: SocketAddr,
    origin: SocketAddr,
    /// The same origin service on IPv6.
    origin6: SocketAddr,
    /// The echo worker (h2c gRPC, WebSocket).
    echo: SocketAddr,
    /// The echo worker over TLS for [`TLS_NAME`].
    tls_echo: SocketAddr,
    /// The CA of its certificate.
    origin_ca: PathBuf,
    ca: PathBuf,
    cert: (PathBuf, PathBuf),
    /// Another actor's certificate, for the rotation.
    next_cert: (PathBuf, PathBuf),
}

#[test]
fn curl_in_the_actor_namespace_reaches_allowed_destinations_through_agent_and_pep() {
    let actor_ns = TestNetns::create();
    let pep_ns = TestNetns::create();
    let (va, vb) = actor_ns.veth_to(&pep_ns, "10.200.0.1/24", "10.200.0.2/24");
    actor_ns.route(&["default", "via", "10.200.0.2"]);
    pep_ns.add_address("10.9.9.9/32");
    // IPv6 too: the actor's IPv6 connections are captured with their original destination.
    for (ns, dev, addr) in [
        (&actor_ns, &va, "fd00:200::1/64"),
        (&pep_ns, &vb, "fd00:200::2/64"),
    ] {
        let out = ns
            .command("ip")
            .args(["-6", "addr", "add", addr, "dev", dev, "nodad"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    actor_ns.route(&["default", "via", "fd00:200::2"]);
    pep_ns.add_address("fd00:9::9/128");

    let (side_tx, side_rx) = std::sync::mpsc::channel::<PepSide>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let pep_thread = std::thread::spawn(move || {
        pep_ns.run(move || async move {
            // The origin and the PEP, both inside the PEP's namespace.
            let origin = http_upstream("10.9.9.9:0", "origin").await;
            let origin6 = http_upstream("[fd00:9::9]:0", "origin6").await;
            // The echo worker: h2c gRPC, WebSocket, HTTP/1.1 with half-close.
            let echo_listener = tokio::net::TcpListener::bind("10.9.9.9:0").await.unwrap();
            let (echo, _echo_stop) = echo_worker_on(echo_listener, "echo");
            // The same echo worker over TLS for a name (h2 and HTTP/1.1 by ALPN): passed
            // through by the PEP, so the actor sees the origin's own certificate.
            let origin_pki = TestPki::new();
            let issued = origin_pki
                .ca
                .issue_server(&[TLS_NAME.into()], &[], YEAR)
                .unwrap();
            let (cert_file, key_file) = origin_pki.write("origin", &issued);
            let tls = identity::tls::ReloadableServerConfig::server(identity::tls::ServerTlsFiles {
                cert_file,
                key_file,
                client_ca_file: None,
                client_auth: identity::tls::ClientAuth::None,
                client_trust_domain: None,
                alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            })
            .unwrap();
            let tls_listener =
                runtime::listener::BoundListener::bind("origin", "10.9.9.9:0".parse().unwrap())
                    .await
                    .unwrap()
                    .with_tls(tls);
            let tls_echo = tls_listener.local_addr();
            let tls_drain = runtime::drain::Drain::new();
            tokio::spawn(ingress::echo::serve_listener(
                tls_listener,
                "tls-echo".into(),
                tls_drain.signal(),
            ));
            // A resolver for the actor (UDP 53 is never captured).
            let dns = tokio::net::UdpSocket::bind("10.9.9.9:53").await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                while let Ok((n, from)) = dns.recv_from(&mut buf).await {
                    let _ = dns.send_to(&dns_answer(&buf[..n]), from).await;
                }
            });
            let pki = test_pki(&[]);
            let dir = tempfile::tempdir().unwrap();
            let audit = dir.path().join("audit.jsonl");
            std::fs::write(dir.path().join("actors.yaml"), ACTORS).unwrap();
            std::fs::write(
                dir.path().join("policy.yaml"),
                format!(
                    "policies:\n- name: demo\n  selector: {{atespace: demo}}\n  rules:\n  \
                     - tcp: {{cidrs: [10.9.9.9/32], ports: [{}]}}\n  \
                     - tcp: {{cidrs: ['fd00:9::9/128'], ports: [{}]}}\n  \
                     - tcp: {{cidrs: [10.9.9.9/32], ports: [{}]}}\n  \
                     - tls_passthrough: {{hostnames: [{TLS_NAME}], ports: [{}], allow_private: true}}\n",
                    origin.addr.port(),
                    origin6.addr.port(),
                    echo.port(),
                    tls_echo.port()
                ),
            )
            .unwrap();
            let text = config(
                &pki,
                "10.200.0.2:0",
                &format!("{TLS_NAME}: [10.9.9.9]"),
                "",
                &audit,
            );
            let gw = Gateway::start(&write_config(dir.path(), &text)).await;
            side_tx
                .send(PepSide {
                    pep: gw.addr("egress"),
                    origin: origin.addr,
                    origin6: origin6.addr,
                    echo,
                    tls_echo,
                    origin_ca: origin_pki.ca_file(),
                    ca: pki.ca_file(),
                    cert: actor_cert(&pki, "hello"),
                    next_cert: actor_cert(&pki, "audit"),
                })
                .unwrap();
            let _ = done_rx.await;
            drop((tls_drain, origin_pki));
            let records = audit_records(&audit);
            // Requests answered (the PEP keeps upstream connections per actor: fewer
            // connections than requests).
            let answered = origin.hosts().len() + origin6.hosts().len();
            (records, answered, gw.log_text(), pki, dir)
        })
    });
    let side = side_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the PEP side started");

    let netns = actor_ns.name().to_owned();
    let rules = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args([
            "agent",
            "install-rules",
            "--exclude-mark",
            MARK,
            "--netns",
            &netns,
        ])
        .output()
        .unwrap();
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stderr)
    );

    let origin = side.origin;
    let origin6 = side.origin6;
    let echo = side.echo;
    let (tls_echo, origin_ca) = (side.tls_echo, side.origin_ca.clone());
    let agent_log = actor_ns.run(move || async move {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "ingress: {{enabled: false}}
agent:
  listen: ['127.0.0.1:15001', '[::1]:15001']
  mark: {MARK}
  pep:
    address: {pep}
    server_name: localhost
    ca_file: {ca}
    cert_file: {cert}
    key_file: {key}
",
            pep = side.pep,
            ca = side.ca.display(),
            cert = side.cert.0.display(),
            key = side.cert.1.display(),
        );
        let (cert_file, key_file) = side.cert.clone();
        let next = side.next_cert.clone();
        let agent = Gateway::start(&write_config(dir.path(), &text)).await;
        let curl = |host: String, port: u16| {
            let url = format!("http://{host}:{port}/hello");
            async move {
                within(
                    BOUND,
                    format!("curl {url}"),
                    tokio::process::Command::new("curl")
                        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
                        .arg(&url)
                        .env_remove("http_proxy")
                        .env_remove("HTTP_PROXY")
                        .env_remove("ALL_PROXY")
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .expect("run curl")
            }
        };
        let out = curl(origin.ip().to_string(), origin.port()).await;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            stdout,
            format!("origin {}:{} /hello\n200", origin.ip(), origin.port()),
            "curl: {}\nagent log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            agent.log_text()
        );
        // A destination the PEP denies: cleartext HTTP gets the PEP's readable denial per
        // request; other bytes get nothing at all (the connection closes).
        let denied = curl(origin.ip().to_string(), origin.port() + 1).await;
        assert_eq!(
            String::from_utf8_lossy(&denied.stdout),
            "egress denied\n403",
            "{}",
            String::from_utf8_lossy(&denied.stderr)
        );
        let denied_dst = SocketAddr::new(origin.ip(), origin.port() + 2);
        let mut raw = within(
            BOUND,
            "a captured connection",
            tokio::net::TcpStream::connect(denied_dst),
        )
        .await
        .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = raw.write_all(b"\x00\x01opaque bytes\n").await;
        let mut got = Vec::new();
        let _ = within(
            BOUND,
            "the denied connection's end",
            raw.read_to_end(&mut got),
        )
        .await;
        assert!(
            got.is_empty(),
            "a denied connection got {} bytes",
            got.len()
        );
        // IPv6: captured and tunnelled to its original destination.
        let out = curl(format!("[{}]", origin6.ip()), origin6.port()).await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("origin6 [{}]:{} /hello\n200", origin6.ip(), origin6.port()),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Certificate rotation on disk: new tunnels carry the new actor's certificate.
        replace_file(&key_file, &std::fs::read_to_string(&next.1).unwrap());
        replace_file(&cert_file, &std::fs::read_to_string(&next.0).unwrap());
        agent
            .eventually(BOUND, "the agent's certificate reloaded", async || {
                agent.log_text().contains("reloaded").then_some(())
            })
            .await;
        let out = curl(origin.ip().to_string(), origin.port()).await;
        assert!(String::from_utf8_lossy(&out.stdout).ends_with("200"));

        // The agent's counters and /statusz section.
        let m = agent.metrics().await;
        assert_eq!(metric(&m, "actorgate_agent_captured_total", &[]), 5.0);
        assert_eq!(
            metric(
                &m,
                "actorgate_agent_tunnels_total",
                &[("mode", "per-connection"), ("result", "opened")]
            ),
            5.0
        );
        let (status, body) = within(BOUND, "/statusz", get(agent.admin, "/statusz?format=json"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let statusz: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(statusz["agent"]["mode"], "per-connection", "{statusz}");
        assert_eq!(statusz["agent"]["captured"], 5, "{statusz}");
        protocols(echo).await;
        passthrough_h2(tls_echo, &origin_ca).await;
        let log = agent.log_text();
        drop(agent);

        // The same through a `pooled` agent: CONNECT streams over one h2 connection.
        let pooled = text.replace(
            "agent:\n",
            "agent:\n  mode: pooled\n  max_streams_per_connection: 10\n",
        );
        let dir = tempfile::tempdir().unwrap();
        let agent = Gateway::start(&write_config(dir.path(), &pooled)).await;
        for _ in 0..3 {
            let out = curl(origin.ip().to_string(), origin.port()).await;
            assert!(
                String::from_utf8_lossy(&out.stdout).ends_with("200"),
                "{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                agent.log_text()
            );
        }
        let (_, body) = within(BOUND, "/statusz", get(agent.admin, "/statusz?format=json"))
            .await
            .unwrap();
        let statusz: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(statusz["agent"]["mode"], "pooled", "{statusz}");
        assert_eq!(statusz["agent"]["pep_connections"], 1, "{statusz}");
        assert_eq!(statusz["agent"]["tunnels"]["opened"], 3, "{statusz}");
        protocols(echo).await;
        passthrough_h2(tls_echo, &origin_ca).await;
        // DNS from the actor's namespace reaches the test's resolver.
        assert_eq!(resolve_a("10.9.9.9:53", "origin.test").await, [10, 9, 9, 9]);
        // A gRPC stream that stays open for 30 s through a pooled tunnel.
        long_stream(echo).await;
        drop(agent);

        // Explicit proxy, without capture rules: `curl -x` reaches the allowed destination
        // (absolute-form and CONNECT) and gets the PEP's refusal for a denied one.
        let rules = Command::new(env!("CARGO_BIN_EXE_actorgate"))
            .args(["agent", "remove-rules", "--netns", &netns])
            .output()
            .unwrap();
        assert!(rules.status.success());
        let proxy = text.replace("agent:\n", "agent:\n  proxy_listen: '127.0.0.1:15080'\n");
        let dir = tempfile::tempdir().unwrap();
        let agent = Gateway::start(&write_config(dir.path(), &proxy)).await;
        let proxy_addr = agent.addr("agent_proxy");
        let curl_x = |extra: &'static [&'static str], port: u16| {
            let url = format!("http://{}:{port}/hello", origin.ip());
            async move {
                let out = within(
                    BOUND,
                    format!("curl -x {url}"),
                    tokio::process::Command::new("curl")
                        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}", "-x"])
                        .arg(format!("http://{proxy_addr}"))
                        .args(extra)
                        .arg(&url)
                        .kill_on_drop(true)
                        .output(),
                )
                .await
                .expect("run curl");
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        let want = format!("origin {}:{} /hello\n200", origin.ip(), origin.port());
        assert_eq!(
            curl_x(&[], origin.port()).await,
            want,
            "{}",
            agent.log_text()
        );
        assert_eq!(
            curl_x(&["-p"], origin.port()).await,
            want,
            "{}",
            agent.log_text()
        );
        assert_eq!(curl_x(&[], origin.port() + 1).await, "egress denied\n403");
        log
    });
    let _ = done_tx.send(());
    let (records, answered, pep_log, _pki, _dir) = pep_thread.join().unwrap();
    assert_eq!(answered, 8, "agent log:\n{agent_log}\nPEP log:\n{pep_log}");
    let tunnel = |dst: SocketAddr| -> Option<&Value> {
        records
            .iter()
            .find(|r| r["kind"] == "tunnel" && r["dst"] == dst.to_string())
    };
    let allowed = tunnel(origin).expect("the allowed tunnel's record");
    assert_eq!(allowed["actor"]["name"], "hello", "{allowed}");
    assert_eq!(allowed["verdict"], "allow", "{allowed}");
    let v6 = tunnel(origin6).expect("the IPv6 tunnel's record");
    assert_eq!(v6["verdict"], "allow", "{v6}");
    assert!(
        records.iter().any(|r| r["kind"] == "request"
            && r["dst"] == origin.to_string()
            && r["actor"]["name"] == "audit"),
        "no request by the rotated certificate's actor: {records:?}"
    );
    let denied_dst = SocketAddr::new(origin.ip(), origin.port() + 2);
    let denied = tunnel(denied_dst).expect("the denied tunnel's record");
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert_eq!(denied["actor"]["name"], "hello", "{denied}");
}

/// Through the capture (either tunnel mode) to the echo worker: a gRPC call over h2c (prior
/// knowledge: opaque to the PEP, allowed by the `tcp` rule), a WebSocket session, and an
/// HTTP/1.1 client that shuts down its write side after the request and still reads the whole
/// answer.
async fn protocols(echo: SocketAddr) {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let reply = echo_unary(echo, &echo.to_string(), &[], "over the agent")
        .await
        .expect("a gRPC answer");
    assert_eq!(reply.message, "over the agent");

    let (mut ws, _) = within(
        BOUND,
        "a WebSocket handshake",
        tokio_tungstenite::connect_async(format!("ws://{echo}/ws")),
    )
    .await
    .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    let back = within(BOUND, "the echo", ws.next()).await.unwrap().unwrap();
    assert_eq!(back, Message::text("ping"));
    let _ = ws.close(None).await;

    let mut raw = within(BOUND, "a connection", tokio::net::TcpStream::connect(echo))
        .await
        .unwrap();
    raw.write_all(format!("GET /bytes?n=300000 HTTP/1.1\r\nHost: {echo}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    raw.shutdown().await.unwrap();
    let mut got = Vec::new();
    within(
        BOUND,
        "the answer after half-close",
        raw.read_to_end(&mut got),
    )
    .await
    .unwrap();
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got[..got.len().min(200)])
    );
    assert!(got.len() > 300_000, "{} bytes after half-close", got.len());
}

/// TLS through the capture to a `tls_passthrough` name: the actor verifies the origin's own
/// certificate (trusting only the origin's CA) and speaks h2 to it.
async fn passthrough_h2(dst: SocketAddr, origin_ca: &std::path::Path) {
    let config = tls_client_config(origin_ca, &[b"h2"], None);
    let tcp = within(BOUND, "a connection", tokio::net::TcpStream::connect(dst))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from(TLS_NAME).unwrap();
    let tls = within(
        BOUND,
        "TLS to the origin through the agent and the PEP",
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("the origin's own certificate verifies");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let resp = within(
        BOUND,
        "an h2 answer",
        send.send_request(
            http::Request::get(format!("https://{TLS_NAME}/hello"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
}

/// An answer to a DNS query for an A record: the query's id and question, one answer
/// 10.9.9.9 (the name compressed to the question's).
fn dns_answer(query: &[u8]) -> Vec<u8> {
    let mut out = query.to_vec();
    out[2] = 0x81; // QR, RD
    out[3] = 0x80; // RA, NOERROR
    out[6..8].copy_from_slice(&1u16.to_be_bytes()); // ANCOUNT
    out[8..12].fill(0);
    out.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 10, 9, 9, 9]);
    out
}

/// Asks `server` for `name`'s A record over UDP; the first answer's address.
async fn resolve_a(server: &str, name: &str) -> [u8; 4] {
    let mut q = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
    sock.send_to(&q, server).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = within(BOUND, "a DNS answer", sock.recv_from(&mut buf))
        .await
        .unwrap();
    assert_eq!(&buf[..2], &[0x12, 0x34], "the answer's id");
    let mut a = [0u8; 4];
    a.copy_from_slice(&buf[n - 4..n]);
    a
}

/// A bidirectional gRPC stream to the echo worker kept open for 30 s: a message every 5 s,
/// each echoed back on the same stream.
async fn long_stream(echo: SocketAddr) {
    use ingress::echo::proto::EchoRequest;
    use ingress::echo::proto::echo_client::EchoClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{echo}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = EchoClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel::<EchoRequest>(4);
    let mut replies = client
        .bidi(tokio_stream_from(rx))
        .await
        .unwrap()
        .into_inner();
    let start = std::time::Instant::now();
    for i in 0..7 {
        tx.send(EchoRequest {
            message: format!("tick {i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        let reply = within(BOUND, "a streamed reply", replies.message())
            .await
            .unwrap()
            .expect("the stream is still open");
        assert_eq!(reply.message, format!("tick {i}"));
        if i < 6 {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }
    assert!(start.elapsed() >= Duration::from_secs(30));
    drop(tx);
}

/// A `Stream` of the requests sent on `rx`.
fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<ingress::echo::proto::EchoRequest>,
) -> impl futures_util::Stream<Item = ingress::echo::proto::EchoRequest> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
