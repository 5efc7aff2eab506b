//! Network tests of the guard, resolver, dialer and splice (DESIGN §7.2 "Where traffic goes").
//! Everything dials only `127.0.0.0/8` or `::1`; the resolver asks only a fake DNS server on
//! `127.0.0.1` (never real DNS).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use egress_pep::decision::{Dial, Reason};
use egress_pep::forward::{Dialer, SpliceCounters, SpliceLimits, splice, splice_counted};
use egress_pep::guard::{Guard, GuardSettings};
use egress_pep::resolve::{PepResolver, ResolveError, ResolverSettings};
use hickory_resolver::proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::A;
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Every await in these tests is bounded.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(10), fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out: {what}"),
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn static_resolver(entries: &[(&str, &[&str])]) -> Arc<PepResolver> {
    let static_entries = entries
        .iter()
        .map(|(n, ips)| (n.to_string(), ips.iter().map(|s| ip(s)).collect()))
        .collect();
    Arc::new(
        PepResolver::new(&ResolverSettings {
            static_entries,
            use_system: false,
            ..ResolverSettings::default()
        })
        .expect("resolver"),
    )
}

fn loopback_exempt_guard(own: Vec<SocketAddr>) -> Arc<Guard> {
    Arc::new(Guard::with_local_ips(
        &GuardSettings {
            exempt: vec!["127.0.0.0/8".parse().expect("cidr")],
            ..GuardSettings::default()
        },
        own,
        vec![],
    ))
}

fn name(host: &str, port: u16) -> Dial {
    Dial::Name {
        host: Arc::from(host),
        port,
        allow_private: false,
    }
}

/// A std listener polled without blocking: proves that no connection arrived.
fn quiet_listener(addr: &str) -> std::net::TcpListener {
    let l = std::net::TcpListener::bind(addr).expect("bind");
    l.set_nonblocking(true).expect("nonblocking");
    l
}

fn assert_no_connection(l: &std::net::TcpListener) {
    match l.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Ok((_, peer)) => panic!("unexpected connection from {peer}"),
        Err(e) => panic!("accept: {e}"),
    }
}

#[tokio::test]
async fn dial_by_name_uses_the_peps_answers_and_flags_a_mismatch() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    // The IP the actor dialed: it must receive nothing.
    let other = quiet_listener("127.0.0.2:0");
    let other_addr = other.local_addr().expect("addr");
    let dialer = Dialer::new(
        static_resolver(&[("api.example.com", &["127.0.0.1"])]),
        loopback_exempt_guard(vec![]),
        Duration::from_secs(5),
    );
    let accept = tokio::spawn(async move { upstream.accept().await.map(|(_, peer)| peer) });
    let dialed = within(
        "dial",
        dialer.dial(&name("api.example.com", port), other_addr),
    )
    .await
    .expect("dialed");
    assert_eq!(dialed.addr, SocketAddr::new(ip("127.0.0.1"), port));
    assert!(dialed.dst_mismatch, "the actor dialed another IP");
    let peer = within("accept", accept)
        .await
        .expect("join")
        .expect("accept");
    assert_eq!(peer, dialed.stream.local_addr().expect("local"));
    assert_no_connection(&other);

    // Same name, the actor dialed the right IP: no mismatch.
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    let dialed = within(
        "dial",
        dialer.dial(
            &name("API.example.com.", port),
            SocketAddr::new(ip("127.0.0.1"), port),
        ),
    )
    .await
    .expect("dialed");
    assert!(!dialed.dst_mismatch);
    assert!(dialed.stream.nodelay().expect("nodelay"));
}

#[tokio::test]
async fn guarded_answers_are_skipped_and_all_guarded_is_refused() {
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    let pep = quiet_listener("127.0.0.3:0");
    let pep_addr = pep.local_addr().expect("addr");
    // ::1 is guarded (only 127.0.0.0/8 is exempt): skipped; 127.0.0.1 is dialled.
    let dialer = Dialer::new(
        static_resolver(&[
            ("mixed.example", &["::1", "127.0.0.1"]),
            ("guarded.example", &["::1", "::ffff:127.0.0.3"]),
            ("pep.example", &["127.0.0.3"]),
        ]),
        loopback_exempt_guard(vec![pep_addr]),
        Duration::from_secs(5),
    );
    let dialed = within(
        "dial",
        dialer.dial(&name("mixed.example", port), sa("127.0.0.1:1")),
    )
    .await
    .expect("dialed");
    assert_eq!(dialed.addr, SocketAddr::new(ip("127.0.0.1"), port));

    // Every answer guarded (loopback ::1; the PEP's own listener, mapped) → Guarded.
    let refusal = within(
        "dial",
        dialer.dial(&name("guarded.example", pep_addr.port()), pep_addr),
    )
    .await
    .expect_err("refused");
    assert_eq!(refusal.reason, Reason::Guarded, "{refusal}");
    // The PEP's own listener address, even inside the exempt range.
    let refusal = within(
        "dial",
        dialer.dial(&name("pep.example", pep_addr.port()), pep_addr),
    )
    .await
    .expect_err("refused");
    assert_eq!(refusal.reason, Reason::Guarded, "{refusal}");
    assert!(refusal.detail.contains("own listener"), "{refusal}");
    assert_no_connection(&pep);
}

#[tokio::test]
async fn dial_by_address_needs_a_tcp_rule_inside_the_guarded_range() {
    let target = quiet_listener("127.0.0.4:0");
    let addr = target.local_addr().expect("addr");
    // No exemption: loopback is guarded.
    let dialer = Dialer::new(
        static_resolver(&[]),
        Arc::new(Guard::with_local_ips(
            &GuardSettings::default(),
            vec![],
            vec![],
        )),
        Duration::from_secs(5),
    );
    for tcp_rule in [None, Some("0.0.0.0/0"), Some("127.0.0.0/7")] {
        let dial = Dial::Address {
            addr,
            tcp_rule: tcp_rule.map(|c| c.parse().expect("cidr")),
        };
        let refusal = within("dial", dialer.dial(&dial, addr))
            .await
            .expect_err("refused");
        assert_eq!(refusal.reason, Reason::Guarded, "{tcp_rule:?}: {refusal}");
    }
    assert_no_connection(&target);
    for tcp_rule in ["127.0.0.4/32", "127.0.0.0/8"] {
        let dial = Dial::Address {
            addr,
            tcp_rule: Some(tcp_rule.parse().expect("cidr")),
        };
        let dialed = within("dial", dialer.dial(&dial, addr))
            .await
            .unwrap_or_else(|e| panic!("{tcp_rule}: {e}"));
        assert_eq!(dialed.addr, addr);
        assert!(!dialed.dst_mismatch);
        target.set_nonblocking(false).expect("blocking");
        let (_, peer) = target.accept().expect("accept");
        target.set_nonblocking(true).expect("nonblocking");
        assert_eq!(peer, dialed.stream.local_addr().expect("local"));
    }
}

#[tokio::test]
async fn resolve_and_dial_failures() {
    // A port nobody listens on.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let dialer = Dialer::new(
        static_resolver(&[("closed.example", &["127.0.0.1"])]),
        loopback_exempt_guard(vec![]),
        Duration::from_secs(5),
    );
    let refusal = within(
        "dial",
        dialer.dial(&name("unknown.example", 80), sa("127.0.0.1:80")),
    )
    .await
    .expect_err("refused");
    assert_eq!(refusal.reason, Reason::ResolveFailed, "{refusal}");
    let refusal = within(
        "dial",
        dialer.dial(&name("closed.example", closed.port()), closed),
    )
    .await
    .expect_err("refused");
    assert_eq!(refusal.reason, Reason::DialFailed, "{refusal}");
    assert!(refusal.detail.contains(&closed.to_string()), "{refusal}");
}

/// A fake DNS server on 127.0.0.1: `A` answers for the names it knows (with `ttl`), an empty
/// NOERROR for `AAAA`, NXDOMAIN for the rest; counts `A` queries per name. `silent` drops
/// every query (a server that never answers).
struct FakeDns {
    addr: SocketAddr,
    a_queries: Arc<counts::Counts>,
}

/// Query counts per name.
mod counts {
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Counts(Mutex<HashMap<String, usize>>);

    impl Counts {
        pub fn bump(&self, name: &str) {
            if let Ok(mut m) = self.0.lock() {
                *m.entry(name.to_string()).or_default() += 1;
            }
        }
        pub fn get(&self, name: &str) -> usize {
            self.0
                .lock()
                .map(|m| m.get(name).copied().unwrap_or(0))
                .unwrap_or(0)
        }
    }
}

impl FakeDns {
    async fn start(records: HashMap<&'static str, Ipv4Addr>, ttl: u32, silent: bool) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = sock.local_addr().expect("addr");
        let a_queries = Arc::new(counts::Counts::default());
        let counts = a_queries.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = sock.recv_from(&mut buf).await else {
                    return;
                };
                if silent {
                    continue;
                }
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let mut resp = Message::response(query.metadata.id, OpCode::Query);
                resp.metadata.message_type = MessageType::Response;
                resp.metadata.recursion_desired = query.metadata.recursion_desired;
                resp.metadata.recursion_available = true;
                resp.metadata.authoritative = true;
                let Some(q) = query.queries.first().cloned() else {
                    continue;
                };
                let qname = q
                    .name()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase();
                resp.add_query(q.clone());
                match records.get(qname.as_str()) {
                    Some(v4) => {
                        if q.query_type() == RecordType::A {
                            counts.bump(&qname);
                            resp.add_answer(Record::from_rdata(
                                q.name().clone(),
                                ttl,
                                RData::A(A(*v4)),
                            ));
                        }
                    }
                    None => resp.metadata.response_code = ResponseCode::NXDomain,
                }
                if let Ok(bytes) = resp.to_vec() {
                    let _ = sock.send_to(&bytes, peer).await;
                }
            }
        });
        FakeDns { addr, a_queries }
    }
}

fn dns_resolver(server: SocketAddr, max_ttl: Duration) -> PepResolver {
    PepResolver::new(&ResolverSettings {
        static_entries: HashMap::from([("static.test".to_string(), vec![ip("127.0.0.77")])]),
        use_system: true,
        name_servers: vec![server],
        cache_size: 100,
        min_ttl: Duration::ZERO,
        max_ttl,
        timeout: Duration::from_secs(2),
    })
    .expect("resolver")
}

#[tokio::test]
async fn resolver_caches_answers_single_flight_and_static_first() {
    let dns = FakeDns::start(
        HashMap::from([
            ("svc.test", Ipv4Addr::new(127, 0, 0, 9)),
            ("static.test", Ipv4Addr::new(127, 0, 0, 66)),
        ]),
        3600,
        false,
    )
    .await;
    let r = Arc::new(dns_resolver(dns.addr, Duration::from_secs(300)));
    // Static entries answer first and never reach DNS.
    let got = within("static", r.lookup("static.test"))
        .await
        .expect("static");
    assert_eq!(&*got, &[ip("127.0.0.77")]);
    assert_eq!(dns.a_queries.get("static.test"), 0);

    // Ten concurrent lookups of one name: one query.
    let lookups: Vec<_> = (0..10)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.lookup("SVC.test.").await })
        })
        .collect();
    for l in lookups {
        let got = within("lookup", l).await.expect("join").expect("answer");
        assert_eq!(&*got, &[ip("127.0.0.9")]);
    }
    assert_eq!(dns.a_queries.get("svc.test"), 1, "single flight");
    // Cached: no second query.
    let got = within("cached", r.lookup("svc.test"))
        .await
        .expect("answer");
    assert_eq!(&*got, &[ip("127.0.0.9")]);
    assert_eq!(dns.a_queries.get("svc.test"), 1, "answered from the cache");
    within("cache maintenance", r.run_cache_maintenance()).await;
    assert_eq!(r.cache_entries(), 1);

    // NXDOMAIN → NotFound, not cached as an answer.
    let err = within("nxdomain", r.lookup("missing.test"))
        .await
        .expect_err("nx");
    assert_eq!(
        err,
        ResolveError::NotFound {
            name: "missing.test".into()
        }
    );
    within("cache maintenance", r.run_cache_maintenance()).await;
    assert_eq!(r.cache_entries(), 1, "failures are not cached as answers");
}

#[tokio::test]
async fn resolver_honours_max_ttl() {
    let dns = FakeDns::start(
        HashMap::from([("short.test", Ipv4Addr::new(127, 0, 0, 10))]),
        3600,
        false,
    )
    .await;
    // The record says an hour; the operator's max_ttl says 200 ms.
    let r = dns_resolver(dns.addr, Duration::from_millis(200));
    within("first", r.lookup("short.test"))
        .await
        .expect("answer");
    assert_eq!(dns.a_queries.get("short.test"), 1);
    // Once the clamped TTL passes, the next lookup asks again.
    within("re-query after max_ttl", async {
        loop {
            r.lookup("short.test").await.expect("answer");
            if dns.a_queries.get("short.test") >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn resolver_times_out_on_a_silent_server() {
    let dns = FakeDns::start(HashMap::new(), 60, true).await;
    let r = PepResolver::new(&ResolverSettings {
        use_system: true,
        name_servers: vec![dns.addr],
        timeout: Duration::from_millis(500),
        ..ResolverSettings::default()
    })
    .expect("resolver");
    let started = std::time::Instant::now();
    let err = within("silent", r.lookup("slow.test"))
        .await
        .expect_err("fails");
    assert!(matches!(err, ResolveError::Failed { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by timeout"
    );
}

/// A connected loopback TCP pair.
async fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let (c, s) = within("pair", async {
        tokio::join!(TcpStream::connect(addr), l.accept())
    })
    .await;
    (c.expect("connect"), s.expect("accept").0)
}

#[tokio::test]
async fn splice_half_close_client_first() {
    // client <-> [pep_a | splice | pep_b] <-> server
    let (mut client, pep_a) = pair().await;
    let (pep_b, mut server) = pair().await;
    let task = tokio::spawn(splice(pep_a, pep_b, Duration::from_secs(10)));

    let request = vec![7u8; 100_000];
    client.write_all(&request).await.expect("write");
    client
        .shutdown()
        .await
        .expect("client shuts its write side");
    // The server sees the whole request, then EOF.
    let mut got = Vec::new();
    within("server reads to EOF", server.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, request);
    // The other direction still runs after the client's half-close.
    let response = vec![9u8; 300_000];
    server.write_all(&response).await.expect("write");
    server.shutdown().await.expect("server shuts down");
    let mut got = Vec::new();
    within(
        "client reads the full response",
        client.read_to_end(&mut got),
    )
    .await
    .expect("read");
    assert_eq!(got.len(), response.len());
    assert_eq!(got, response);
    let stats = within("splice ends", task)
        .await
        .expect("join")
        .expect("splice");
    assert_eq!((stats.up, stats.down), (100_000, 300_000));
    assert!(!stats.idle_timeout);
}

#[tokio::test]
async fn splice_half_close_server_first() {
    let (mut client, pep_a) = pair().await;
    let (pep_b, mut server) = pair().await;
    let task = tokio::spawn(splice(pep_a, pep_b, Duration::from_secs(10)));
    // A server-first protocol that closes its side first (e.g. a banner, then EOF).
    server.write_all(b"220 banner\r\n").await.expect("write");
    server.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    within("client reads banner to EOF", client.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, b"220 banner\r\n");
    // The client can still send; the server receives it all.
    client.write_all(b"QUIT\r\n").await.expect("write");
    client.shutdown().await.expect("shutdown");
    let mut got = Vec::new();
    within("server reads to EOF", server.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, b"QUIT\r\n");
    let stats = within("splice ends", task)
        .await
        .expect("join")
        .expect("splice");
    assert_eq!((stats.up, stats.down), (6, 12));
}

#[tokio::test]
async fn splice_idle_timeout_closes_and_counts() {
    let (mut client, pep_a) = pair().await;
    let (pep_b, mut server) = pair().await;
    let counters = Arc::new(SpliceCounters::new());
    let c2 = counters.clone();
    let idle = Duration::from_millis(300);
    let task = tokio::spawn(async move {
        splice_counted(pep_a, pep_b, SpliceLimits::with_idle(idle), &c2).await
    });
    client.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 5];
    within("server reads", server.read_exact(&mut buf))
        .await
        .expect("read");
    server.write_all(b"hi").await.expect("write");
    let mut buf2 = [0u8; 2];
    within("client reads", client.read_exact(&mut buf2))
        .await
        .expect("read");
    let started = tokio::time::Instant::now();
    // Now nothing moves: the splice ends by itself after `idle`.
    let stats = within("idle timeout", task)
        .await
        .expect("join")
        .expect("splice");
    assert!(stats.idle_timeout);
    assert!(started.elapsed() >= idle - Duration::from_millis(50));
    assert_eq!((stats.up, stats.down), (5, 2));
    assert_eq!((counters.up(), counters.down()), (5, 2));
    // The splice dropped its streams: both ends see EOF.
    let mut rest = Vec::new();
    within("client EOF", client.read_to_end(&mut rest))
        .await
        .expect("read");
    within("server EOF", server.read_to_end(&mut rest))
        .await
        .expect("read");
    assert!(rest.is_empty());
}

#[tokio::test]
async fn splice_activity_keeps_the_tunnel_open() {
    let (mut client, pep_a) = pair().await;
    let (pep_b, mut server) = pair().await;
    let idle = Duration::from_millis(200);
    let task = tokio::spawn(splice(pep_a, pep_b, idle));
    // Trickle one byte every 50 ms for ~3 idle periods: never idle.
    for _ in 0..12 {
        client.write_all(b"x").await.expect("write");
        let mut b = [0u8; 1];
        within("server reads", server.read_exact(&mut b))
            .await
            .expect("read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!task.is_finished(), "activity keeps the splice running");
    client.shutdown().await.expect("shutdown");
    server.shutdown().await.expect("shutdown");
    let stats = within("ends", task).await.expect("join").expect("splice");
    assert_eq!(stats.up, 12);
    assert!(!stats.idle_timeout);
}

#[tokio::test]
async fn splice_works_over_in_memory_streams() {
    // Generic IO (what TLS streams and h2 `Upgraded` look like to splice).
    let (mut client, pep_a) = tokio::io::duplex(1024);
    let (pep_b, mut server) = tokio::io::duplex(1024);
    let task = tokio::spawn(splice(pep_a, pep_b, Duration::from_secs(10)));
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let d2 = data.clone();
    let writer = tokio::spawn(async move {
        client.write_all(&d2).await.expect("write");
        client.shutdown().await.expect("shutdown");
        client
    });
    let mut got = Vec::new();
    within("server reads", server.read_to_end(&mut got))
        .await
        .expect("read");
    assert_eq!(got, data);
    drop(server);
    let _client = within("writer", writer).await.expect("join");
    let stats = within("ends", task).await.expect("join").expect("splice");
    assert_eq!(stats.up, 200_000);
}

/// Ingress's addresses (`actor_forwarding.ingress_addresses`) are never dialled: a name that
/// resolves there, or a `tcp` rule's destination there, is refused before any packet, so actor
/// traffic reaches ingress only through actor forwarding (DESIGN §7.4). Other answers of the
/// same name are still used.
#[tokio::test]
async fn ingress_addresses_are_never_dialled() {
    use egress_pep::actor_hosts::IngressAddress;
    let ingress = quiet_listener("127.0.0.5:0");
    let ingress_addr = ingress.local_addr().expect("addr");
    let upstream = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = upstream.local_addr().expect("addr").port();
    let dialer = Dialer::new(
        static_resolver(&[
            ("ingress.svc.test", &["127.0.0.5"]),
            ("both.svc.test", &["127.0.0.5", "127.0.0.1"]),
        ]),
        loopback_exempt_guard(vec![]),
        Duration::from_secs(5),
    )
    .with_ingress(vec![IngressAddress::Ip(ip("127.0.0.5"))]);
    let refused = within(
        "dial",
        dialer.dial(&name("ingress.svc.test", ingress_addr.port()), ingress_addr),
    )
    .await
    .expect_err("ingress by name");
    assert_eq!(refused.reason, Reason::Guarded, "{refused}");
    assert!(refused.detail.contains("is ingress"), "{refused}");
    let refused = within(
        "dial",
        dialer.dial(
            &Dial::Address {
                addr: ingress_addr,
                tcp_rule: Some("127.0.0.0/8".parse().unwrap()),
            },
            ingress_addr,
        ),
    )
    .await
    .expect_err("ingress by address");
    assert_eq!(refused.reason, Reason::Guarded, "{refused}");
    assert!(refused.detail.contains("is ingress"), "{refused}");
    // An IPv4-mapped spelling of the ingress address is the same address.
    let mapped = SocketAddr::new(ip("::ffff:127.0.0.5"), ingress_addr.port());
    let refused = within(
        "dial",
        dialer.dial(
            &Dial::Address {
                addr: mapped,
                tcp_rule: Some("::ffff:127.0.0.0/104".parse().unwrap()),
            },
            mapped,
        ),
    )
    .await
    .expect_err("ingress by a mapped address");
    assert_eq!(refused.reason, Reason::Guarded, "{refused}");
    assert!(refused.detail.contains("is ingress"), "{refused}");
    assert_no_connection(&ingress);
    let dialed = within(
        "dial",
        dialer.dial(&name("both.svc.test", port), ingress_addr),
    )
    .await
    .expect("the other answer");
    assert_eq!(dialed.addr, SocketAddr::new(ip("127.0.0.1"), port));
}
