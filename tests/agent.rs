//! The tunnel agent in `actorgate serve` (issue 13), end to end with real processes in three
//! network namespaces of the test's own, joined by veth pairs: actor ↔ PEP ↔ origin. In the
//! actor's, the capture rules (`actorgate agent install-rules`) redirect curl's TCP to the agent,
//! which tunnels it per atunnel (one TLS connection and CONNECT each, its own connections marked
//! so they are not captured) to the PEP; the PEP decides and dials the original destination in
//! the origin namespace, which sees the PEP's address as the client (the PEP's namespace does
//! not forward packets: without the agent and the PEP there is no path). An allowed destination
//! answers through the whole chain, HTTP and HTTPS, with the actor and the original destination
//! in the PEP's audit record; a denied one gets the PEP's readable `403` for cleartext HTTP and
//! no bytes at all otherwise. IPv6 connections are captured with their original destination
//! too, and a certificate rotated on disk is used by the next tunnels without a restart. In both
//! tunnel modes gRPC over h2c, a WebSocket session, an HTTP/1.1 client that half-closes after
//! its request, TLS with h2 to a `tls_passthrough` name (the origin's own certificate) and a
//! gRPC stream open for 30 s reach the echo worker; DNS from the actor's namespace reaches the
//! test's resolver. Without capture rules the explicit proxy (`curl -x`) resolves names with
//! its configured DNS server. A shared agent with a component certificate proves each tunnel
//! with an egress assertion, and a signing key rotated on disk signs the next ones.
//!
//! Every address lives inside the three namespaces: nothing leaves the machine.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::egress::{
    ACTORS, TD, actor_cert, audit_records, config, http_upstream, https_upstream,
};
use common::netns::TestNetns;
use common::*;
use serde_json::Value;

const MARK: &str = "0x539";
/// The TLS origin's name (a `tls_passthrough` rule; the PEP resolves it to 10.9.9.9).
const TLS_NAME: &str = "tls.origin.test";
/// The PEP's address on the link to the origin namespace: what the origins see as the client.
const PEP_TO_ORIGIN: &str = "10.201.0.1";
const PEP_TO_ORIGIN6: &str = "fd00:201::1";
/// The test's DNS server, in the PEP's namespace (UDP 53 from the actor is never captured).
const DNS: &str = "10.200.0.2:53";
/// The actor a shared agent's assertions name.
const SHARED_ACTOR: &str = "demo/named";

/// The servers in the origin namespace.
struct OriginSide {
    origin: SocketAddr,
    /// The same origin service on IPv6.
    origin6: SocketAddr,
    /// The same origin service over TLS for [`TLS_NAME`] (`tls_passthrough`).
    https: SocketAddr,
    /// The echo worker (h2c gRPC, WebSocket).
    echo: SocketAddr,
    /// The echo worker over TLS for [`TLS_NAME`].
    tls_echo: SocketAddr,
    /// The CA of the TLS origins' certificate.
    origin_ca: PathBuf,
}

/// What the PEP side tells the actor side.
struct PepSide {
    pep: SocketAddr,
    ca: PathBuf,
    cert: (PathBuf, PathBuf),
    /// Another actor's certificate, for the rotation.
    next_cert: (PathBuf, PathBuf),
    /// A shared agent's component certificate.
    component: (PathBuf, PathBuf),
    /// The agents' JWKS the PEP verifies assertions with (watched).
    jwks: PathBuf,
}

/// Adds `addr` (IPv6, with prefix) to `dev` in `ns`, without duplicate address detection.
fn add_v6(ns: &TestNetns, dev: &str, addr: &str) {
    ns.exec_ip(&["-6", "addr", "add", addr, "dev", dev, "nodad"]);
}

#[test]
fn curl_in_the_actor_namespace_reaches_allowed_destinations_through_agent_and_pep() {
    let actor_ns = TestNetns::create();
    let pep_ns = TestNetns::create();
    let origin_ns = TestNetns::create();
    let (va, vb) = actor_ns.veth_to(&pep_ns, "10.200.0.1/24", "10.200.0.2/24");
    let (vc, vd) = pep_ns.veth_to(&origin_ns, "10.201.0.1/24", "10.201.0.2/24");
    add_v6(&actor_ns, &va, "fd00:200::1/64");
    add_v6(&pep_ns, &vb, "fd00:200::2/64");
    add_v6(&pep_ns, &vc, "fd00:201::1/64");
    add_v6(&origin_ns, &vd, "fd00:201::2/64");
    origin_ns.add_address("10.9.9.9/32");
    origin_ns.add_address("fd00:9::9/128");
    actor_ns.route(&["default", "via", "10.200.0.2"]);
    actor_ns.route(&["default", "via", "fd00:200::2"]);
    pep_ns.route(&["10.9.9.9/32", "via", "10.201.0.2"]);
    pep_ns.route(&["fd00:9::9/128", "via", "fd00:201::2"]);
    origin_ns.route(&["default", "via", PEP_TO_ORIGIN]);
    origin_ns.route(&["default", "via", PEP_TO_ORIGIN6]);

    // The origin namespace: HTTP on IPv4 and IPv6, HTTPS, the echo worker in cleartext and TLS.
    let (origin_tx, origin_rx) = std::sync::mpsc::channel::<OriginSide>();
    let (origin_done_tx, origin_done_rx) = tokio::sync::oneshot::channel::<()>();
    let origin_thread = std::thread::spawn(move || {
        origin_ns.run(move || async move {
            let origin = http_upstream("10.9.9.9:0", "origin").await;
            let origin6 = http_upstream("[fd00:9::9]:0", "origin6").await;
            let origin_pki = TestPki::new();
            let issued = origin_pki
                .ca
                .issue_server(&[TLS_NAME.into()], &[], YEAR)
                .unwrap();
            let (cert_file, key_file) = origin_pki.write("origin", &issued);
            let files = |alpn: Vec<Vec<u8>>| identity::tls::ServerTlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: None,
                client_auth: identity::tls::ClientAuth::None,
                client_trust_domain: None,
                alpn,
            };
            let https = https_upstream(
                "10.9.9.9:0",
                "https",
                tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(
                    identity::tls::server_config(&files(vec![b"http/1.1".to_vec()])).unwrap(),
                )),
            )
            .await;
            // The echo worker: h2c gRPC, WebSocket, HTTP/1.1 with half-close.
            let echo_listener = tokio::net::TcpListener::bind("10.9.9.9:0").await.unwrap();
            let (echo, _echo_stop) = echo_worker_on(echo_listener, "echo");
            // The same echo worker over TLS for a name (h2 and HTTP/1.1 by ALPN): passed
            // through by the PEP, so the actor sees the origin's own certificate.
            let tls = identity::tls::ReloadableServerConfig::server(files(vec![
                b"h2".to_vec(),
                b"http/1.1".to_vec(),
            ]))
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
            origin_tx
                .send(OriginSide {
                    origin: origin.addr,
                    origin6: origin6.addr,
                    https: https.addr,
                    echo,
                    tls_echo,
                    origin_ca: origin_pki.ca_file(),
                })
                .unwrap();
            let _ = origin_done_rx.await;
            drop((tls_drain, origin_pki));
            let peers: Vec<SocketAddr> = [&origin, &origin6, &https]
                .iter()
                .flat_map(|u| u.peers())
                .collect();
            (origin.hosts(), origin6.hosts(), https.hosts(), peers)
        })
    });
    let o = origin_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the origin side started");
    let (origin, origin6, https, echo, tls_echo) =
        (o.origin, o.origin6, o.https, o.echo, o.tls_echo);
    let origin_ca = o.origin_ca.clone();

    // The PEP's namespace: the PEP and the test's DNS server.
    let (side_tx, side_rx) = std::sync::mpsc::channel::<PepSide>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let pep_thread = std::thread::spawn(move || {
        pep_ns.run(move || async move {
            common::dns::dns_server(DNS, "origin.test", std::net::Ipv4Addr::new(10, 9, 9, 9)).await;
            let pki = test_pki(&["atunnel"]);
            let dir = tempfile::tempdir().unwrap();
            let audit = dir.path().join("audit.jsonl");
            std::fs::write(dir.path().join("actors.yaml"), ACTORS).unwrap();
            std::fs::write(
                dir.path().join("policy.yaml"),
                format!(
                    "policies:\n- name: demo\n  selector: {{atespace: demo}}\n  rules:\n  \
                     - tcp: {{cidrs: [10.9.9.9/32], ports: [{}, {}]}}\n  \
                     - tcp: {{cidrs: ['fd00:9::9/128'], ports: [{}]}}\n  \
                     - tls_passthrough: {{hostnames: [{TLS_NAME}], ports: [{}, {}], allow_private: true}}\n",
                    origin.port(),
                    echo.port(),
                    origin6.port(),
                    https.port(),
                    tls_echo.port()
                ),
            )
            .unwrap();
            // Shared agents: the `atunnel` component proves each tunnel with an assertion
            // signed by a key in this JWKS.
            let jwks = dir.path().join("agents-jwks.json");
            identity::testing::write_jwks(&jwks, &[agent_key(0)]);
            let text = config(
                &pki,
                "10.200.0.2:0",
                &format!("{TLS_NAME}: [10.9.9.9]"),
                "",
                &audit,
            )
            .replace(
                "egress:\n",
                &format!(
                    "egress:\n  agents:\n    allow: [spiffe://{TD}/ns/ate-system/sa/atunnel]\n    \
                     assertion: {{jwks_file: {}, issuers: ['{}'], audience: {}}}\n",
                    jwks.display(),
                    identity::testing::ISSUER,
                    identity::testing::AUDIENCE
                ),
            );
            let gw = Gateway::start(&write_config(dir.path(), &text)).await;
            side_tx
                .send(PepSide {
                    pep: gw.addr("egress"),
                    ca: pki.ca_file(),
                    cert: actor_cert(&pki, "hello"),
                    next_cert: actor_cert(&pki, "audit"),
                    component: (pki.path("atunnel.crt"), pki.path("atunnel.key")),
                    jwks,
                })
                .unwrap();
            let _ = done_rx.await;
            let records = audit_records(&audit);
            (records, gw.log_text(), pki, dir)
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
        let origin_body = format!("origin {}:{} /hello\n200", origin.ip(), origin.port());
        let out = curl(&format!("http://{origin}/hello"), &[]).await;
        assert_eq!(
            out.0,
            origin_body,
            "curl: {}\nagent log:\n{}",
            out.1,
            agent.log_text()
        );
        // HTTPS to a `tls_passthrough` name: curl verifies the origin's own certificate.
        let https_url = format!("https://{TLS_NAME}:{}/hello", https.port());
        let https_args = [
            "--cacert".to_owned(),
            origin_ca.display().to_string(),
            "--resolve".to_owned(),
            format!("{TLS_NAME}:{}:{}", https.port(), https.ip()),
        ];
        let out = curl(&https_url, &https_args).await;
        assert_eq!(
            out.0,
            format!("https {TLS_NAME}:{} /hello\n200", https.port()),
            "{}",
            out.1
        );
        // A destination the PEP denies: cleartext HTTP gets the PEP's readable denial per
        // request; other bytes get nothing at all (the connection closes).
        let denied = curl(&format!("http://{}:{}/hello", origin.ip(), origin.port() + 1), &[]).await;
        assert_eq!(denied.0, "egress denied\n403", "{}", denied.1);
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
        drop(raw);
        // IPv6: captured and tunnelled to its original destination.
        let out = curl(&format!("http://{origin6}/hello"), &[]).await;
        assert_eq!(
            out.0,
            format!("origin6 [{}]:{} /hello\n200", origin6.ip(), origin6.port()),
            "{}",
            out.1
        );

        // Certificate rotation on disk: new tunnels carry the new actor's certificate.
        replace_file(&key_file, &std::fs::read_to_string(&next.1).unwrap());
        replace_file(&cert_file, &std::fs::read_to_string(&next.0).unwrap());
        agent
            .eventually(BOUND, "the agent's certificate reloaded", async || {
                agent.log_text().contains("reloaded").then_some(())
            })
            .await;
        let out = curl(&format!("http://{origin}/hello"), &[]).await;
        assert_eq!(out.0, origin_body, "{}", out.1);

        // The agent's counters and /statusz section.
        let m = agent.metrics().await;
        assert_eq!(metric(&m, "actorgate_agent_captured_total", &[]), 6.0);
        assert_eq!(
            metric(
                &m,
                "actorgate_agent_tunnels_total",
                &[("mode", "per-connection"), ("result", "opened")]
            ),
            6.0
        );
        let (status, body) = within(BOUND, "/statusz", get(agent.admin, "/statusz?format=json"))
            .await
            .unwrap();
        assert_eq!(status, 200);
        let statusz: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(statusz["agent"]["mode"], "per-connection", "{statusz}");
        assert_eq!(statusz["agent"]["captured"], 6, "{statusz}");
        // Each per-connection tunnel was a connection to the PEP of its own, closed with it.
        agent
            .eventually(BOUND, "no connection to the PEP left open", async || {
                let m = agent.metrics().await;
                (metric(&m, "actorgate_agent_pep_connections", &[]) == 0.0).then_some(())
            })
            .await;
        // A gRPC stream held open for 30 s while the other protocols run.
        let long = tokio::spawn(long_stream(echo));
        protocols(echo).await;
        passthrough_h2(tls_echo, &origin_ca).await;
        long.await.expect("the 30 s stream (per-connection)");
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
            let out = curl(&format!("http://{origin}/hello"), &[]).await;
            assert_eq!(out.0, origin_body, "{}\n{}", out.1, agent.log_text());
        }
        let (_, body) = within(BOUND, "/statusz", get(agent.admin, "/statusz?format=json"))
            .await
            .unwrap();
        let statusz: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(statusz["agent"]["mode"], "pooled", "{statusz}");
        assert_eq!(statusz["agent"]["pep_connections"], 1, "{statusz}");
        let m = agent.metrics().await;
        assert_eq!(metric(&m, "actorgate_agent_pep_connections", &[]), 1.0);
        assert_eq!(statusz["agent"]["tunnels"]["opened"], 3, "{statusz}");
        let long = tokio::spawn(long_stream(echo));
        let out = curl(&https_url, &https_args).await;
        assert!(out.0.ends_with("\n200"), "{}", out.1);
        let out = curl(&format!("http://{origin6}/hello"), &[]).await;
        assert!(out.0.ends_with("\n200"), "{}", out.1);
        protocols(echo).await;
        passthrough_h2(tls_echo, &origin_ca).await;
        // DNS from the actor's namespace reaches the test's resolver.
        assert_eq!(resolve_a(DNS, "origin.test").await, [10, 9, 9, 9]);
        long.await.expect("the 30 s stream (pooled)");
        drop(agent);

        // A shared agent: the component certificate, and an egress assertion per tunnel
        // naming the actor, signed with the key in `signing_key_file`.
        let key_dir = tempfile::tempdir().unwrap();
        let signing_key = key_dir.path().join("signing.pem");
        std::fs::write(&signing_key, &agent_key(0).pem).unwrap();
        let shared = text
            .replace(&side.cert.0.display().to_string(), &side.component.0.display().to_string())
            .replace(&side.cert.1.display().to_string(), &side.component.1.display().to_string())
            + &format!(
                "  assertion: {{actor: {SHARED_ACTOR}, signing_key_file: {}, kid: {}, issuer: '{}', audience: {}}}\n",
                signing_key.display(),
                agent_key(0).kid,
                identity::testing::ISSUER,
                identity::testing::AUDIENCE
            );
        let dir = tempfile::tempdir().unwrap();
        let agent = Gateway::start(&write_config(dir.path(), &shared)).await;
        let out = curl(&format!("http://{origin}/hello?shared"), &[]).await;
        assert_eq!(
            out.0,
            format!("origin {}:{} /hello\n200", origin.ip(), origin.port()),
            "{}\n{}",
            out.1,
            agent.log_text()
        );
        // A new signing key on disk signs the next tunnels' assertions: the PEP, still
        // trusting only the old key, refuses them (no bytes) until its JWKS names the new one.
        replace_file(&signing_key, &agent_key(1).pem);
        agent
            .eventually(BOUND, "the signing key reloaded", async || {
                agent
                    .log_text()
                    .lines()
                    .any(|l| l.contains("agent signing key") && l.contains("reloaded"))
                    .then_some(())
            })
            .await;
        let out = curl(&format!("http://{origin}/hello"), &[]).await;
        assert_eq!(out.0, "\n000", "the old JWKS accepted the new key: {}", out.1);
        identity::testing::write_jwks(&side.jwks, &[agent_key(1)]);
        let accepted = eventually(BOUND, "the PEP trusts the new key", async || {
            let out = curl(&format!("http://{origin}/hello?rotated"), &[]).await;
            out.0.ends_with("\n200").then_some(out)
        })
        .await;
        assert_eq!(accepted.0, origin_body);
        drop(agent);

        // Explicit proxy, without capture rules: `curl -x` reaches the allowed destination
        // (absolute-form and CONNECT, by address and by a name the agent resolves with its DNS
        // server) and gets the PEP's refusal for a denied one.
        let rules = Command::new(env!("CARGO_BIN_EXE_actorgate"))
            .args(["agent", "remove-rules", "--netns", &netns])
            .output()
            .unwrap();
        assert!(rules.status.success());
        let proxy = text.replace(
            "agent:\n",
            &format!("agent:\n  proxy_listen: '127.0.0.1:15080'\n  proxy_name_servers: ['{DNS}']\n"),
        );
        let dir = tempfile::tempdir().unwrap();
        let agent = Gateway::start(&write_config(dir.path(), &proxy)).await;
        let proxy_arg = format!("http://{}", agent.addr("agent_proxy"));
        let via_proxy = |url: String, tunnel: bool| {
            let mut args = vec!["-x".to_owned(), proxy_arg.clone()];
            if tunnel {
                args.push("-p".to_owned());
            }
            async move { curl(&url, &args).await.0 }
        };
        let by_ip = format!("http://{origin}/hello");
        assert_eq!(via_proxy(by_ip.clone(), false).await, origin_body, "{}", agent.log_text());
        assert_eq!(via_proxy(by_ip, true).await, origin_body, "{}", agent.log_text());
        let by_name = format!("http://origin.test:{}/hello", origin.port());
        let want = format!("origin origin.test:{} /hello\n200", origin.port());
        assert_eq!(via_proxy(by_name.clone(), false).await, want, "{}", agent.log_text());
        assert_eq!(via_proxy(by_name, true).await, want, "{}", agent.log_text());
        assert_eq!(
            via_proxy(format!("http://{}:{}/hello", origin.ip(), origin.port() + 1), false).await,
            "egress denied\n403"
        );
        assert_eq!(
            via_proxy("http://unknown.test/hello".into(), false).await,
            "name did not resolve\n502"
        );
        log
    });
    let _ = done_tx.send(());
    let _ = origin_done_tx.send(());
    let (records, pep_log, _pki, _dir) = pep_thread.join().unwrap();
    let (hosts, hosts6, https_hosts, peers) = origin_thread.join().unwrap();
    // Every allowed request reached the origins (HTTP on IPv4: 2 per-connection, 3 pooled, 2
    // by the shared agent, 4 through the explicit proxy) through the PEP, which the origins
    // saw as the client; the refused ones reached nothing.
    assert_eq!(
        (hosts.len(), hosts6.len(), https_hosts.len()),
        (11, 2, 2),
        "agent log:\n{agent_log}\nPEP log:\n{pep_log}"
    );
    assert!(!peers.is_empty());
    for peer in &peers {
        assert!(
            [PEP_TO_ORIGIN, PEP_TO_ORIGIN6].contains(&peer.ip().to_string().as_str()),
            "an origin saw {peer} as the client"
        );
    }
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
    let tls = tunnel(https).expect("the HTTPS tunnel's record");
    assert_eq!(tls["verdict"], "allow", "{tls}");
    assert_eq!(tls["sni"], TLS_NAME, "{tls}");
    assert!(
        records.iter().any(|r| r["kind"] == "request"
            && r["dst"] == origin.to_string()
            && r["actor"]["name"] == "audit"),
        "no request by the rotated certificate's actor: {records:?}"
    );
    let shared = records
        .iter()
        .filter(|r| r["kind"] == "tunnel" && r["actor"]["name"] == "named")
        .collect::<Vec<_>>();
    assert!(
        shared.iter().any(|r| r["verdict"] == "allow"),
        "no tunnel by the shared agent's actor: {records:?}"
    );
    let denied_dst = SocketAddr::new(origin.ip(), origin.port() + 2);
    let denied = tunnel(denied_dst).expect("the denied tunnel's record");
    assert_eq!(denied["verdict"], "deny", "{denied}");
    assert_eq!(denied["actor"]["name"], "hello", "{denied}");
}

/// `curl -sS URL` with `args` and no proxy from the environment: stdout (the body, a newline,
/// the status code) and stderr.
async fn curl(url: &str, args: &[String]) -> (String, String) {
    let out = within(
        BOUND,
        format!("curl {url}"),
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(args)
            .arg(url)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTPS_PROXY")
            .env_remove("ALL_PROXY")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("run curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The shared agent's signing keys: 0 before the rotation, 1 after (one `kid`). The same key
/// for the same index within the test run.
fn agent_key(i: usize) -> &'static identity::testing::TestKey {
    static KEYS: std::sync::OnceLock<[identity::testing::TestKey; 2]> = std::sync::OnceLock::new();
    let alg = identity::keys::parse_algorithm("ES256").unwrap();
    &KEYS.get_or_init(|| [0, 1].map(|_| identity::testing::TestKey::new(alg, "atunnel-1")))[i]
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
