//! Actor-to-actor through the PEP and ingress (issue 14, DESIGN §7.4), with real processes: a
//! PEP (`actorgate serve` with `egress.actor_forwarding`) and an ingress (`actorgate serve` with
//! `ingress.https.trusted_peers` naming the PEP's component identity, its directory a fake
//! ate-api-server). Actors are atunnel-like clients with upstream's actor certificates.
//!
//! * A → PEP → ingress → B: B's worker sees `ate-source-actor` = A and `ate-target-actor` = B;
//!   B was suspended and 50 concurrent calls resume it exactly once.
//! * An actor whose policy has no `actors` rule for B gets `403` from the PEP, and not one
//!   connection reaches ingress (a counting TCP relay stands in front of it).
//! * Raw TCP between two actors: the tunnel's target is an ingress address and its
//!   `ate-destination-host` names the actor; the PEP sends `CONNECT` to ingress, which splices.
//! * A loop: B's worker relays what it received (its `Via` included) back through the PEP as B;
//!   the PEP refuses it with reason `forwarding_loop` in the audit record.
//! * Raw TCP through the real tunnel agent's explicit proxy, which names the actor host.
//! * TLS to an actor passed through (the worker's own certificate verifies end to end), and
//!   HTTPS to an actor intercepted under an `https` rule and forwarded with the caller.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::egress::*;
use common::*;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const SUFFIX: &str = "actors.resources.substrate.ate.dev";
const PEP_ID: &str = "spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep";
/// The address actor hosts resolve to for actors: ingress's Service IP in a cluster. Never
/// dialled: the PEP forwards to `actor_forwarding.ingress`.
const INGRESS_SERVICE_IP: &str = "127.0.0.3";

/// The headers a worker received that say who called whom.
type Seen = Arc<Mutex<Vec<Vec<(String, String)>>>>;

/// A worker that records the actor headers of every request and answers `200 <name>`.
async fn recording_worker(name: &'static str) -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = s.clone();
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let headers = req
                        .headers()
                        .iter()
                        .filter(|(n, _)| {
                            n.as_str().starts_with("ate-")
                                || *n == "via"
                                || *n == "x-forwarded-client-cert"
                        })
                        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_owned()))
                        .collect();
                    seen.lock().unwrap().push(headers);
                    async move {
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(name),
                        )))
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// A TCP relay to `to` that counts the connections it accepted: it stands in front of ingress
/// so a test can tell that nothing reached it.
async fn counting_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut a, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut b) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                }
            });
        }
    });
    (addr, count)
}

/// Ingress in its own process: HTTPS with client certificates optional, `trusted_peers` naming
/// the PEP, the fake control plane as directory.
async fn ingress(pki: &TestPki, fake: &FakeControlPlane) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "admin: {{listen: ADMIN_ADDR}}\n\
         ingress:\n  http: {{listen: HTTP_ADDR}}\n  https:\n    listen: HTTPS_ADDR\n    \
         tls: {{cert_file: {cert}, key_file: {key}, client_ca_file: {ca}, client_auth: optional}}\n    \
         trusted_peers: ['{PEP_ID}']\n\
         resolver: {{budget: 10s}}\n\
         directory: {{ateapi: {{address: '{addr}', tls: plaintext}}}}\n",
        cert = pki.path("server.crt").display(),
        key = pki.path("server.key").display(),
        ca = pki.ca_file().display(),
        addr = fake.addr,
    );
    (Gateway::ready(dir.path(), &config).await, dir)
}

/// The PEP: `policy`, the actors hello/stranger/relay in its static directory, forwarding to
/// `to` (ingress, or a relay in front of it) as the component `actorgate-pep` of `ingress_pki`.
async fn pep(policy: &str, ingress_pki: &TestPki, to: SocketAddr) -> Pep {
    pep_with(policy, ingress_pki, to, "").await
}

/// [`pep`] with more lines of the `egress` section (indented by two spaces).
async fn pep_with(policy: &str, ingress_pki: &TestPki, to: SocketAddr, extra: &str) -> Pep {
    let (ca, cert, key) = (
        ingress_pki.ca_file(),
        ingress_pki.path("actorgate-pep.crt"),
        ingress_pki.path("actorgate-pep.key"),
    );
    Pep::start_with(policy, "", "", |dir| {
        std::fs::write(
            dir.join("actors.yaml"),
            "actors:\n\
             - {atespace: demo, name: hello, endpoint: 127.0.0.1:1}\n\
             - {atespace: demo, name: stranger, endpoint: 127.0.0.1:1}\n\
             - {atespace: demo, name: relay, endpoint: 127.0.0.1:1}\n",
        )
        .unwrap();
        format!(
            "  actor_forwarding:\n    ingress: '{to}'\n    server_name: localhost\n    \
             ca_file: {ca}\n    cert_file: {cert}\n    key_file: {key}\n    \
             ingress_addresses: ['{INGRESS_SERVICE_IP}']\n{extra}",
            ca = ca.display(),
            cert = cert.display(),
            key = key.display(),
        )
    })
    .await
}

const POLICY: &str = "policies:
- name: hello
  selector: {actor: demo/hello}
  rules:
  - actors: {targets: [demo/b, demo/tcp, demo/relay]}
- name: relay
  selector: {actor: demo/relay}
  rules:
  - actors: {targets: ['demo/*']}
- name: stranger
  selector: {actor: demo/stranger}
  rules:
  - http: {hostnames: [example.org]}
";

/// One GET through a new tunnel as `cert` to `dst` with `Host: host` → (status, body).
async fn call(pep: &Pep, cert: &Cert, dst: &str, host: &str) -> (u16, String) {
    let (status, body, tls) = pep.tunnel(cert, dst).await;
    assert_eq!(status, 200, "CONNECT {dst}: {body}");
    TunnelClient::new(tls).await.get(host, "/call").await
}

#[tokio::test]
async fn actors_reach_actors_through_ingress_with_their_verified_identity() {
    let (b_worker, b_seen) = recording_worker("b").await;
    let tcp = echo_upstream("127.0.0.1:0").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/b",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::from_millis(400),
    );
    fake.add_actor("demo/tcp", ActorState::Running, "127.0.0.1", Duration::ZERO);
    let ingress_pki = test_pki(&["actorgate-pep"]);
    let (ing, _ing_dir) = ingress(&ingress_pki, &fake).await;
    let (relay, relayed) = counting_relay(ing.https()).await;
    let pep = pep(POLICY, &ingress_pki, relay).await;
    let hello = pep.actor("hello");
    let b_host = format!("b.demo.{SUFFIX}:{}", b_worker.port());

    // 50 concurrent calls from A, each on its own tunnel, to the suspended B: one resume.
    let dst = format!("127.0.0.4:{}", b_worker.port());
    let calls = (0..50).map(|_| {
        let (pep, hello, dst, b_host) = (&pep, &hello, &dst, &b_host);
        async move { call(pep, hello, dst, b_host).await }
    });
    let answers = within(BOUND, "50 calls", futures_util::future::join_all(calls)).await;
    for (status, body) in &answers {
        assert_eq!((*status, body.as_str()), (200, "b"));
    }
    assert_eq!(fake.calls(Method::ResumeActor, "demo/b"), 1);
    let seen = b_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 50);
    for headers in &seen {
        let get = |n: &str| -> Vec<&str> {
            headers
                .iter()
                .filter(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("ate-source-actor"), ["demo/hello"], "{headers:?}");
        assert_eq!(get("ate-target-actor"), ["demo/b"], "{headers:?}");
        assert_eq!(get("via"), ["1.1 actorgate-pep"], "{headers:?}");
    }
    let rec = pep
        .audit_record("the forwarded request", |r| {
            r["kind"] == "request" && r["authority"] == b_host.as_str()
        })
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
    assert_eq!(rec["rule"]["kind"], "actors", "{rec}");
    assert_eq!(rec["actor"]["name"], "hello", "{rec}");

    // What A claims about itself or its target is replaced by the PEP's verified values.
    let (status, _, tls) = pep.tunnel(&hello, &dst).await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tls).await;
    let req = http::Request::get("/claim")
        .header(http::header::HOST, b_host.as_str())
        .header("ate-source-actor", "demo/root")
        .header("ate-target-actor", "demo/tcp")
        .header("x-forwarded-client-cert", "By=spiffe://evil")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = within(BOUND, "the claiming call", client.sender.send_request(req))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        &body[..],
        b"b",
        "the claimed target demo/tcp did not take the request"
    );
    let last = b_seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        last.contains(&("ate-source-actor".into(), "demo/hello".into()))
            && last.contains(&("ate-target-actor".into(), "demo/b".into()))
            && !last.iter().any(|(k, _)| k == "x-forwarded-client-cert"),
        "{last:?}"
    );
    assert_eq!(
        last.iter().filter(|(k, _)| k.starts_with("ate-")).count(),
        2
    );

    // Raw TCP to another actor: the tunnel names the ingress Service address and the actor
    // host; ingress splices to demo/tcp's worker.
    let target = format!("{INGRESS_SERVICE_IP}:{}", tcp.addr.port());
    let tcp_host = format!("tcp.demo.{SUFFIX}");
    let mut tls = pep_tls(pep.addr(), &pep.pki.ca_file(), &hello).await;
    let head = format!(
        "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nate-destination-host: {tcp_host}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let (status, _) = read_answer(&mut tls).await;
    assert_eq!(status, 200);
    // Server-first silence, then bytes that are neither TLS nor HTTP: opaque.
    let data = pattern(100_000, 7);
    let back = echo_through(tls, data.clone()).await;
    assert_eq!(back.len(), data.len());
    assert!(back == data, "the echo differs");
    assert_eq!(tcp.accepted(), 1);
    let rec = pep
        .audit_record("the actor TCP tunnel", |r| {
            r["kind"] == "tunnel" && r["dst"] == target.as_str() && r["bytes_up"] == 100_000
        })
        .await;
    assert_eq!(
        (rec["verdict"].clone(), rec["reason"].clone()),
        ("allow".into(), "allowed".into()),
        "{rec}"
    );

    // The same without the actor host: ingress's address alone names no actor.
    let (status, _, tls) = pep.tunnel(&hello, &target).await;
    assert_eq!(status, 200);
    let back = echo_through(tls, b"no name".to_vec()).await;
    assert!(back.is_empty(), "{back:?}");
    pep.audit_record("the unnamed ingress tunnel", |r| {
        r["kind"] == "tunnel"
            && r["dst"] == target.as_str()
            && r["reason"] == "actor_target_unknown"
    })
    .await;

    // An actor whose policy has no actors rule for B: 403 at the PEP, nothing reaches ingress.
    let before = relayed.load(Ordering::SeqCst);
    let stranger = pep.actor("stranger");
    let (status, body) = call(&pep, &stranger, &dst, &b_host).await;
    assert_eq!((status, body.as_str()), (403, "egress denied"));
    let rec = pep
        .audit_record("the stranger's denial", |r| {
            r["kind"] == "request" && r["actor"]["name"] == "stranger"
        })
        .await;
    assert_eq!(
        (rec["verdict"].clone(), rec["reason"].clone()),
        ("deny".into(), "no_matching_rule".into()),
        "{rec}"
    );
    assert_eq!(
        relayed.load(Ordering::SeqCst),
        before,
        "a connection reached ingress"
    );
    assert_eq!(b_seen.lock().unwrap().len(), 51);
}

/// A worker for actor demo/relay that relays every request it receives — headers as received,
/// `Via` included — through the PEP as demo/relay to `Host: to_host` on a tunnel to `dst`, and
/// answers with what came back.
async fn relaying_worker(
    pep: SocketAddr,
    ca: std::path::PathBuf,
    cert: Cert,
    dst: String,
    to_host: String,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (ca, cert, dst, to_host) = (ca.clone(), cert.clone(), dst.clone(), to_host.clone());
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (ca, cert, dst, to_host) =
                        (ca.clone(), cert.clone(), dst.clone(), to_host.clone());
                    async move {
                        let (status, _, tls) = atunnel(pep, &ca, &cert, &dst).await;
                        assert_eq!(status, 200);
                        let mut client = TunnelClient::new(tls).await;
                        let mut out = http::Request::get("/relayed")
                            .body(Empty::<Bytes>::new())
                            .unwrap();
                        for (n, v) in req.headers() {
                            if n != http::header::HOST {
                                out.headers_mut().append(n.clone(), v.clone());
                            }
                        }
                        out.headers_mut()
                            .insert(http::header::HOST, to_host.parse().unwrap());
                        let resp = client.sender.send_request(out).await.unwrap();
                        let status = resp.status();
                        let body = resp.into_body().collect().await.unwrap().to_bytes();
                        let mut answer = http::Response::new(Full::new(body));
                        *answer.status_mut() = status;
                        Ok::<_, std::convert::Infallible>(answer)
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_request_a_pep_forwarded_already_is_a_loop() {
    let (b_worker, b_seen) = recording_worker("b").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("demo/b", ActorState::Running, "127.0.0.1", Duration::ZERO);
    fake.add_actor(
        "demo/relay",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    let ingress_pki = test_pki(&["actorgate-pep"]);
    let (ing, _ing_dir) = ingress(&ingress_pki, &fake).await;
    let pep = pep(POLICY, &ingress_pki, ing.https()).await;
    let hello = pep.actor("hello");
    let relay = relaying_worker(
        pep.addr(),
        pep.pki.ca_file(),
        pep.actor("relay"),
        format!("127.0.0.4:{}", b_worker.port()),
        format!("b.demo.{SUFFIX}:{}", b_worker.port()),
    )
    .await;

    // hello → relay: relay's worker receives the PEP's Via and sends it on as relay → b.
    let relay_host = format!("relay.demo.{SUFFIX}:{}", relay.port());
    let dst = format!("127.0.0.4:{}", relay.port());
    let (status, body) = call(&pep, &hello, &dst, &relay_host).await;
    assert_eq!((status, body.as_str()), (403, "egress denied"));
    let rec = pep
        .audit_record("the looped request", |r| {
            r["kind"] == "request" && r["actor"]["name"] == "relay"
        })
        .await;
    assert_eq!(
        (rec["verdict"].clone(), rec["reason"].clone()),
        ("deny".into(), "forwarding_loop".into()),
        "{rec}"
    );
    assert!(b_seen.lock().unwrap().is_empty(), "the loop reached b");
    // relay itself may call b: without the forwarded Via there is no loop.
    let (status, body) = call(
        &pep,
        &pep.actor("relay"),
        &format!("127.0.0.4:{}", b_worker.port()),
        &format!("b.demo.{SUFFIX}:{}", b_worker.port()),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "b"));

    // A CONNECT that a PEP sent (its Via) arriving at a PEP's tunnel listener: refused.
    let mut tls = pep_tls(pep.addr(), &pep.pki.ca_file(), &hello).await;
    let target = format!("127.0.0.4:{}", b_worker.port());
    let head =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nVia: 1.1 actorgate-pep\r\n\r\n");
    tls.write_all(head.as_bytes()).await.unwrap();
    let (status, body) = read_answer(&mut tls).await;
    assert_eq!((status, body.as_str()), (403, "egress denied"));
    let rec = pep
        .audit_record("the looped CONNECT", |r| {
            r["kind"] == "tunnel" && r["reason"] == "forwarding_loop"
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(
        rec["actor"]["name"], "hello",
        "the record names the verified actor: {rec}"
    );
}

/// Raw TCP between two actors with the real tunnel agent: actor A's client asks the agent's
/// explicit proxy for `CONNECT tcp.demo.<suffix>:<port>`; the agent resolves the name (to the
/// ingress Service address, as a cluster's DNS would) and names it in the tunnel's
/// `ate-destination-host`; the PEP forwards the opaque bytes to ingress as a CONNECT, which
/// splices them to demo/tcp's worker (a TCP echo).
#[tokio::test]
async fn the_agents_explicit_proxy_names_the_actor_of_raw_tcp() {
    let tcp = echo_upstream("127.0.0.1:0").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("demo/tcp", ActorState::Running, "127.0.0.1", Duration::ZERO);
    let ingress_pki = test_pki(&["actorgate-pep"]);
    let (ing, _ing_dir) = ingress(&ingress_pki, &fake).await;
    let pep = pep(POLICY, &ingress_pki, ing.https()).await;
    let tcp_host: &'static str = Box::leak(format!("tcp.demo.{SUFFIX}").into_boxed_str());
    let dns =
        common::dns::dns_server("127.0.0.1:0", tcp_host, INGRESS_SERVICE_IP.parse().unwrap()).await;
    let hello = pep.actor("hello");
    let dir = tempfile::tempdir().unwrap();
    let agent = Gateway::start(&write_config(
        dir.path(),
        &format!(
            "ingress: {{enabled: false}}
agent:
  listen: ['127.0.0.1:0']
  proxy_listen: '127.0.0.1:0'
  proxy_name_servers: ['{dns}']
  pep:
    address: '{pep}'
    server_name: localhost
    ca_file: {ca}
    cert_file: {cert}
    key_file: {key}
",
            pep = pep.addr(),
            ca = pep.pki.ca_file().display(),
            cert = hello.0.display(),
            key = hello.1.display(),
        ),
    ))
    .await;
    let mut s = TcpStream::connect(agent.addr("agent_proxy")).await.unwrap();
    let authority = format!("{tcp_host}:{}", tcp.addr.port());
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let (status, _) = read_answer(&mut s).await;
    assert_eq!(status, 200, "{}", agent.log_text());
    let data = pattern(50_000, 3);
    let back = echo_through(s, data.clone()).await;
    assert!(
        back == data,
        "{} of {} bytes came back",
        back.len(),
        data.len()
    );
    let rec = pep
        .audit_record("the agent's actor tunnel", |r| {
            r["kind"] == "tunnel"
                && r["dst"] == format!("{INGRESS_SERVICE_IP}:{}", tcp.addr.port())
                && r["bytes_up"] == 50_000
        })
        .await;
    assert_eq!(rec["rule"]["kind"], "actors", "{rec}");
}

/// TLS to another actor that the PEP does not intercept (an `actors` rule decides the
/// ClientHello's SNI): the PEP sends `CONNECT <sni>:<port>` to ingress and splices, so the actor
/// verifies the worker's own certificate end to end; the worker answers over that TLS.
#[tokio::test]
async fn tls_to_an_actor_passes_through_to_its_worker() {
    let name: &'static str = Box::leak(format!("tlsb.demo.{SUFFIX}").into_boxed_str());
    let worker_pki = TestPki::new();
    let issued = worker_pki
        .ca
        .issue_server(&[name.into()], &[], YEAR)
        .unwrap();
    let (cert_file, key_file) = worker_pki.write("worker", &issued);
    let tls = identity::tls::server_config(&identity::tls::ServerTlsFiles {
        cert_file,
        key_file,
        client_ca_file: None,
        client_auth: identity::tls::ClientAuth::None,
        client_trust_domain: None,
        alpn: vec![b"http/1.1".to_vec()],
    })
    .unwrap();
    let worker = https_upstream(
        "127.0.0.1:0",
        "tls-worker",
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    )
    .await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/tlsb",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    let ingress_pki = test_pki(&["actorgate-pep"]);
    let (ing, _ing_dir) = ingress(&ingress_pki, &fake).await;
    let policy = POLICY.replace("[demo/b, demo/tcp, demo/relay]", "[demo/tlsb]");
    let pep = pep(&policy, &ingress_pki, ing.https()).await;
    let hello = pep.actor("hello");
    let dst = format!("127.0.0.4:{}", worker.addr.port());
    let (status, body, tunnel) = pep.tunnel(&hello, &dst).await;
    assert_eq!(status, 200, "{body}");
    // The worker's certificate, verified by the actor: nobody in between terminated the TLS.
    let config = tls_client_config(&worker_pki.ca_file(), &[b"http/1.1"], None);
    let inner = within(
        BOUND,
        "TLS to the actor's worker",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(
            rustls_pki_types::ServerName::try_from(name).unwrap(),
            tunnel,
        ),
    )
    .await
    .expect("the worker's own certificate verifies");
    let (status, body) = TunnelClient::new(inner).await.get(name, "/tls").await;
    assert_eq!(
        (status, body.as_str()),
        (200, format!("tls-worker {name} /tls").as_str())
    );
    assert_eq!(worker.accepted(), 1);
    let rec = pep
        .audit_record("the passed-through actor tunnel", |r| {
            r["kind"] == "tunnel" && r["sni"] == name
        })
        .await;
    assert_eq!(
        (rec["verdict"].clone(), rec["rule"]["kind"].clone()),
        ("allow".into(), "actors".into()),
        "{rec}"
    );
}

/// HTTPS to another actor that an `https` rule names (upstream's way): the PEP intercepts the
/// actor's TLS with a leaf for the actor host, decides the request inside, and forwards it to
/// ingress over mTLS with the verified caller, as it does cleartext requests.
#[tokio::test]
async fn intercepted_https_to_an_actor_is_forwarded_with_the_caller() {
    let (b_worker, b_seen) = recording_worker("b").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("demo/b", ActorState::Running, "127.0.0.1", Duration::ZERO);
    let ingress_pki = test_pki(&["actorgate-pep"]);
    let (ing, _ing_dir) = ingress(&ingress_pki, &fake).await;
    let intercept_pki = TestPki::new();
    let name: &'static str = Box::leak(format!("b.demo.{SUFFIX}").into_boxed_str());
    let policy = format!(
        "policies:\n- name: hello\n  selector: {{actor: demo/hello}}\n  rules:\n  \
         - https: {{hostnames: ['{name}'], ports: [{}]}}\n",
        b_worker.port()
    );
    let pep = pep_with(
        &policy,
        &ingress_pki,
        ing.https(),
        &format!(
            "  interception:\n    ca_cert_file: {}\n    ca_key_file: {}\n    upstream: {{system_roots: false, extra_ca_files: [{}]}}\n",
            intercept_pki.ca_file().display(),
            intercept_pki.path("ca.key").display(),
            intercept_pki.ca_file().display(),
        ),
    )
    .await;
    let hello = pep.actor("hello");
    let dst = format!("127.0.0.4:{}", b_worker.port());
    let (status, body, tunnel) = pep.tunnel(&hello, &dst).await;
    assert_eq!(status, 200, "{body}");
    let config = tls_client_config(&intercept_pki.ca_file(), &[b"http/1.1"], None);
    let inner = within(
        BOUND,
        "intercepted TLS to the actor host",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(
            rustls_pki_types::ServerName::try_from(name).unwrap(),
            tunnel,
        ),
    )
    .await
    .expect("a leaf for the actor host from the interception CA");
    let (status, body) = TunnelClient::new(inner).await.get(name, "/secure").await;
    assert_eq!((status, body.as_str()), (200, "b"));
    let seen = b_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0].contains(&("ate-source-actor".into(), "demo/hello".into()))
            && seen[0].contains(&("ate-target-actor".into(), "demo/b".into())),
        "{seen:?}"
    );
    let rec = pep
        .audit_record("the intercepted actor request", |r| {
            r["kind"] == "request" && r["sni"] == name
        })
        .await;
    assert_eq!(
        (rec["verdict"].clone(), rec["rule"]["kind"].clone()),
        ("allow".into(), "https".into()),
        "{rec}"
    );
}

/// A forwarding certificate ingress could never trust (the PEP's server certificate: no
/// client-auth EKU, no SPIFFE ID) stops `serve` with one line naming the field, instead of
/// failing every forwarded call later.
#[test]
fn a_certificate_ingress_cannot_trust_is_refused_at_start() {
    let pki = test_pki(&[]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = common::egress::config(&pki, "127.0.0.1:0", "", "", &audit)
        + "  actor_forwarding: {ingress: '127.0.0.1:9', server_name: localhost}\n";
    std::fs::write(
        dir.path().join("actors.yaml"),
        "actors:\n- {atespace: demo, name: hello, endpoint: 127.0.0.1:1}\n",
    )
    .unwrap();
    let (code, line) = serve_error(&write_config(dir.path(), &config));
    assert_eq!(code, Some(1));
    assert!(
        line.contains("egress.actor_forwarding.cert_file")
            && line.contains("actorgate dev-ca component"),
        "{line}"
    );
}
