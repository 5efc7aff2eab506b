//! The egress PEP in `actorgate serve` (issue 11), end to end over real mTLS: `curl
//! --proxytunnel` and an atunnel-like client reach allowed destinations and are refused
//! elsewhere, with audit records; cleartext keep-alive requests are decided one by one; policy
//! file edits apply to new tunnels and to open ones (a broken edit keeps the old set and shows
//! on `/statusz` and in a metric); SIGTERM drains open tunnels; and the guard, tested inside a
//! network namespace of the test's own, never lets a packet reach the metadata address, NAT64,
//! loopback or the PEP itself, whatever the policy says.
//!
//! Every destination dialled from the root namespace is on 127.0.0.1; addresses outside
//! 127.0.0.0/8 exist only on the loopback of the namespace [`TestNetns`] creates.

mod common;

use std::net::SocketAddr;

use common::egress::*;
use common::netns::TestNetns;
use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

// ---------------------------------------------------------------------------------------------
// Tests.

/// `curl --proxytunnel --proxy https://…` with the actor certificate reaches an allowed local
/// HTTP server; a destination no rule names gets `403 egress denied` and sees no connection;
/// the audit file records both with the actor, the verdict and the reason.
#[tokio::test]
async fn curl_through_the_pep_reaches_allowed_and_is_refused_elsewhere() {
    let allowed = http_upstream("127.0.0.1:0", "allowed").await;
    let denied = http_upstream("127.0.0.1:0", "denied").await;
    let policy = format!(
        "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - tcp: {{cidrs: [127.0.0.1/32], ports: [{}]}}
",
        allowed.addr.port()
    );
    let pep = Pep::start(&policy, "", "").await;
    let cert = pep.actor("hello");

    let curl = |url: String| {
        let (ca, cert, pep_addr) = (pep.pki.ca_file(), cert.clone(), pep.addr());
        async move {
            let out = within(
                BOUND,
                format!("curl {url}"),
                tokio::process::Command::new("curl")
                    .args(["-sS", "--max-time", "15", "--proxytunnel", "--proxy"])
                    .arg(format!("https://127.0.0.1:{}", pep_addr.port()))
                    .arg("--proxy-cacert")
                    .arg(&ca)
                    .arg("--proxy-cert")
                    .arg(&cert.0)
                    .arg("--proxy-key")
                    .arg(&cert.1)
                    .args(["-w", "\n%{http_code}"])
                    .arg(&url)
                    .env_remove("NO_PROXY")
                    .env_remove("no_proxy")
                    .env_remove("ALL_PROXY")
                    .env_remove("all_proxy")
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("run curl");
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
            (
                out.status.code(),
                code.to_owned(),
                body.to_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let url = format!("http://127.0.0.1:{}/hello", allowed.addr.port());
    let (exit, code, body, err) = curl(url).await;
    assert_eq!(
        (exit, code.as_str()),
        (Some(0), "200"),
        "{body}\n{err}\n{}",
        pep.gw.log_text()
    );
    assert_eq!(
        body,
        format!("allowed 127.0.0.1:{} /hello", allowed.addr.port())
    );
    assert_eq!(allowed.accepted(), 1);

    let url = format!("http://127.0.0.1:{}/secret?token=x", denied.addr.port());
    let (exit, code, body, err) = curl(url).await;
    assert_eq!((exit, code.as_str()), (Some(0), "403"), "{body}\n{err}");
    assert_eq!(body, "egress denied");
    assert_eq!(
        denied.accepted(),
        0,
        "a denied destination saw a connection"
    );

    let rec = pep
        .audit_record("the allowed request", |r| {
            about(r, "request", allowed.addr, "hello")
        })
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
    assert_eq!(rec["reason"], "allowed", "{rec}");
    assert_eq!(rec["method"], "GET", "{rec}");
    assert_eq!(rec["path"], "/hello", "{rec}");
    assert_eq!(rec["rule"]["policy"], "hello", "{rec}");
    assert_eq!(rec["rule"]["kind"], "tcp", "{rec}");
    assert!(rec["bytes_down"].as_u64().unwrap() > 0, "{rec}");
    let rec = pep
        .audit_record("the denied request", |r| {
            about(r, "request", denied.addr, "hello")
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["reason"], "no_matching_rule", "{rec}");
    assert_eq!(
        rec["path"], "/secret",
        "the query never reaches the audit: {rec}"
    );
    assert!(!rec.to_string().contains("token"), "{rec}");
    // curl's tunnels are recorded too, by the actor.
    pep.audit_record("the allowed tunnel", |r| {
        about(r, "tunnel", allowed.addr, "hello")
    })
    .await;
    let m = pep.gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            "actorgate_egress_requests_total",
            &[("verdict", "deny"), ("reason", "no_matching_rule")]
        ),
        1.0
    );
}

/// A client that behaves exactly like upstream atunnel gets 200, and its bytes arrive at the
/// destination and come back intact (opaque TCP, allowed by a `tcp` rule on the address).
#[tokio::test]
async fn an_atunnel_like_client_gets_200_and_its_bytes_arrive() {
    let echo = echo_upstream("127.0.0.1:0").await;
    let other = echo_upstream("127.0.0.1:0").await;
    let policy = format!(
        "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - tcp: {{cidrs: [127.0.0.1/32], ports: [{}]}}
",
        echo.addr.port()
    );
    let pep = Pep::start(&policy, "", "").await;
    let cert = pep.actor("hello");

    let (status, body, tls) = pep.tunnel(&cert, &echo.addr.to_string()).await;
    assert_eq!(status, 200, "{body}\n{}", pep.gw.log_text());
    let data = pattern(256 * 1024, 7);
    let got = echo_through(tls, data.clone()).await;
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the echoed bytes differ");
    assert_eq!(echo.accepted(), 1);
    let rec = pep
        .audit_record("the tunnel", |r| about(r, "tunnel", echo.addr, "hello"))
        .await;
    assert_eq!(rec["verdict"], "allow", "{rec}");
    assert_eq!(rec["identity"], "certificate", "{rec}");
    assert_eq!(rec["bytes_up"], data.len() as u64, "{rec}");
    assert_eq!(rec["bytes_down"], data.len() as u64, "{rec}");

    // The same client to a port no rule names: the tunnel closes without a byte.
    let (status, _, mut tls) = pep.tunnel(&cert, &other.addr.to_string()).await;
    assert_eq!(status, 200, "upstream answers 200 and decides on the bytes");
    assert!(bytes_back(&mut tls, b"ping\n").await.is_empty());
    assert_eq!(other.accepted(), 0);
    let rec = pep
        .audit_record("the denied tunnel", |r| {
            about(r, "tunnel", other.addr, "hello")
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["reason"], "no_matching_rule", "{rec}");

    // A name instead of an IP literal as CONNECT target: 403 egress denied.
    let (status, body, _) = pep
        .tunnel(&cert, &format!("localhost:{}", echo.addr.port()))
        .await;
    assert_eq!((status, body.as_str()), (403, "egress denied"));
}

/// Cleartext HTTP on one keep-alive tunnel is decided per request: allowed Host → 200, denied
/// Host → 403 for that request only, allowed again → 200 on the same connection; the denied
/// request never reaches the destination.
#[tokio::test]
async fn cleartext_keep_alive_requests_are_decided_one_by_one() {
    let up = http_upstream("127.0.0.1:0", "api").await;
    let port = up.addr.port();
    let policy = format!(
        "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - http: {{hostnames: [api.test], ports: [{port}]}}
"
    );
    // The test's destinations live on loopback: the lab exemption of the guard.
    let pep = Pep::start(
        &policy,
        "api.test: [127.0.0.1], other.test: [127.0.0.1]",
        "exempt: [127.0.0.0/8]",
    )
    .await;
    let cert = pep.actor("hello");
    let (status, body, tls) = pep.tunnel(&cert, &up.addr.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let mut client = TunnelClient::new(tls).await;

    let (s, b) = client.get(&format!("api.test:{port}"), "/one").await;
    assert_eq!(
        (s, b.as_str()),
        (200, &*format!("api api.test:{port} /one"))
    );
    let (s, b) = client.get(&format!("other.test:{port}"), "/two").await;
    assert_eq!((s, b.as_str()), (403, "egress denied"));
    let (s, b) = client.get(&format!("api.test:{port}"), "/three").await;
    assert_eq!(
        (s, b.as_str()),
        (200, &*format!("api api.test:{port} /three")),
        "the denial must not end the keep-alive connection"
    );
    assert_eq!(
        up.hosts(),
        vec![format!("api.test:{port}"), format!("api.test:{port}")],
        "only the allowed requests reach the destination"
    );
    let rec = pep
        .audit_record("the denied request", |r| {
            r["kind"] == "request" && r["authority"] == format!("other.test:{port}")
        })
        .await;
    assert_eq!(rec["verdict"], "deny", "{rec}");
    assert_eq!(rec["reason"], "no_matching_rule", "{rec}");
    assert_eq!(rec["actor"]["name"], "hello", "{rec}");
}

/// Upstream connections are kept per actor: an actor's later tunnels reuse the connection its
/// earlier tunnel opened (no new dial), and another actor never gets it.
#[tokio::test]
async fn upstream_connections_are_reused_across_an_actors_tunnels_and_never_shared() {
    let up = http_upstream("127.0.0.1:0", "api").await;
    let port = up.addr.port();
    let policy = format!(
        "policies:
- name: demo
  selector: {{atespace: demo}}
  rules:
  - http: {{hostnames: [api.test], ports: [{port}]}}
"
    );
    let pep = Pep::start(&policy, "api.test: [127.0.0.1]", "exempt: [127.0.0.0/8]").await;
    let host = format!("api.test:{port}");
    for (actor, want_accepted) in [("hello", 1), ("hello", 1), ("audit", 2), ("hello", 2)] {
        let cert = pep.actor(actor);
        let (status, body, tls) = pep.tunnel(&cert, &up.addr.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let mut client = TunnelClient::new(tls).await;
        let (s, b) = client.get(&host, "/x").await;
        assert_eq!((s, b), (200, format!("api {host} /x")));
        drop(client);
        assert_eq!(
            up.accepted(),
            want_accepted,
            "connections the destination accepted after {actor}'s tunnel"
        );
    }
    assert_eq!(pep.statusz().await["egress"]["upstream_pool_idle"], 2);
}

/// A kept upstream connection the destination closed while it sat idle (its keep-alive timed
/// out) is not used again: the actor's next request, on a later tunnel, gets a new connection
/// and its answer.
#[tokio::test]
async fn a_kept_connection_the_destination_closed_is_not_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // One keep-alive answer (no `Connection: close`), then close while idle.
                let mut s = tokio::io::BufReader::new(s);
                let mut line = String::new();
                while s.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    if line == "\r\n" {
                        break;
                    }
                    line.clear();
                }
                let _ = s
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            });
        }
    });
    let policy = format!(
        "policies:
- name: demo
  selector: {{atespace: demo}}
  rules:
  - http: {{hostnames: [api.test], ports: [{}]}}
",
        addr.port()
    );
    let pep = Pep::start(&policy, "api.test: [127.0.0.1]", "exempt: [127.0.0.0/8]").await;
    let host = format!("api.test:{}", addr.port());
    let cert = pep.actor("hello");
    for round in 0..2 {
        let (status, body, tls) = pep.tunnel(&cert, &addr.to_string()).await;
        assert_eq!(status, 200, "{body}");
        let mut client = TunnelClient::new(tls).await;
        assert_eq!(
            client.get(&host, "/").await,
            (200, "ok".to_owned()),
            "round {round}"
        );
        drop(client);
        // The destination closes its side of the idle connection.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// Policy edits: a valid edit applies to new tunnels and to the next cleartext request of a
/// tunnel that stays open; a broken edit keeps the previous set and shows on `/statusz` and as
/// `actorgate_egress_policy_reload_ok 0`.
#[tokio::test]
async fn policy_edits_apply_to_new_and_open_tunnels_and_broken_edits_keep_the_old_set() {
    let up = http_upstream("127.0.0.1:0", "api").await;
    let echo = echo_upstream("127.0.0.1:0").await;
    let port = up.addr.port();
    let before = format!(
        "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - http: {{hostnames: [a.test], ports: [{port}]}}
"
    );
    let after = format!(
        "{before}  - http: {{hostnames: [b.test], ports: [{port}]}}
  - tcp: {{cidrs: [127.0.0.1/32], ports: [{}]}}
",
        echo.addr.port()
    );
    let pep = Pep::start(
        &before,
        "a.test: [127.0.0.1], b.test: [127.0.0.1]",
        "exempt: [127.0.0.0/8]",
    )
    .await;
    let cert = pep.actor("hello");

    // A tunnel open across both edits.
    let (status, _, tls) = pep.tunnel(&cert, &up.addr.to_string()).await;
    assert_eq!(status, 200);
    let mut open = TunnelClient::new(tls).await;
    assert_eq!(open.get(&format!("a.test:{port}"), "/").await.0, 200);
    assert_eq!(open.get(&format!("b.test:{port}"), "/").await.0, 403);
    let (status, _, mut tls) = pep.tunnel(&cert, &echo.addr.to_string()).await;
    assert_eq!(status, 200);
    assert!(bytes_back(&mut tls, b"ping\n").await.is_empty());
    assert_eq!(echo.accepted(), 0);

    // A valid edit: new tunnels follow it (waited for: the watcher debounces).
    replace_file(&pep.policy_file(), &after);
    let data = pattern(4096, 3);
    pep.gw
        .eventually(
            BOUND,
            "a new tunnel follows the edited policy",
            async || {
                let (status, _, tls) = pep.tunnel(&cert, &echo.addr.to_string()).await;
                (status == 200 && echo_through(tls, data.clone()).await == data).then_some(())
            },
        )
        .await;
    // … and so does the next request on the tunnel opened before the edit.
    let (s, b) = open.get(&format!("b.test:{port}"), "/b").await;
    assert_eq!((s, b.as_str()), (200, &*format!("api b.test:{port} /b")));
    assert_eq!(open.get(&format!("a.test:{port}"), "/").await.0, 200);

    // A broken edit (an invalid hostname) keeps the edited set and is reported.
    replace_file(
        &pep.policy_file(),
        &after.replace("[b.test]", "[\"Bad_Host!\"]"),
    );
    let statusz = pep
        .gw
        .eventually(BOUND, "/statusz reports the broken edit", async || {
            let s = pep.statusz().await;
            s["egress"]["policy"]["state"]["reload"]["last_error"]
                .is_string()
                .then_some(s)
        })
        .await;
    let error = statusz["egress"]["policy"]["state"]["reload"]["last_error"]
        .as_str()
        .unwrap();
    assert!(error.contains("policy.yaml"), "{error}");
    assert!(error.contains("hostnames"), "{error}");
    pep.gw
        .eventually(BOUND, "actorgate_egress_policy_reload_ok 0", async || {
            let m = pep.gw.metrics().await;
            (metric(&m, "actorgate_egress_policy_reload_ok", &[]) == 0.0).then_some(())
        })
        .await;
    let (s, _) = open.get(&format!("b.test:{port}"), "/b").await;
    assert_eq!(s, 200, "the previous set stays in force");
    let (status, _, tls) = pep.tunnel(&cert, &echo.addr.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(echo_through(tls, data.clone()).await, data);
}

/// SIGTERM with a tunnel open: new CONNECTs are refused, the open tunnel keeps carrying bytes
/// until the drain deadline closes it, and the process exits 0.
#[tokio::test]
async fn sigterm_refuses_new_tunnels_and_drains_open_ones() {
    let echo = echo_upstream("127.0.0.1:0").await;
    let policy = format!(
        "policies:
- name: hello
  selector: {{actor: demo/hello}}
  rules:
  - tcp: {{cidrs: [127.0.0.1/32], ports: [{}]}}
",
        echo.addr.port()
    );
    let mut pep = Pep::start(&policy, "", "").await;
    let cert = pep.actor("hello");
    let (status, _, mut tls) = pep.tunnel(&cert, &echo.addr.to_string()).await;
    assert_eq!(status, 200);
    let mut buf = [0u8; 5];
    within(BOUND, "echo before SIGTERM", async {
        tls.write_all(b"one\n\n").await.unwrap();
        tls.flush().await.unwrap();
        tls.read_exact(&mut buf).await.unwrap();
    })
    .await;
    assert_eq!(&buf, b"one\n\n");

    pep.gw.signal("TERM");
    let (addr, ca) = (pep.addr(), pep.pki.ca_file());
    pep.gw
        .eventually(BOUND, "new CONNECTs are refused", async || {
            let Ok(mut t) = try_pep_tls(addr, &ca, &cert).await else {
                return Some(());
            };
            let head = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.addr);
            if t.write_all(head.as_bytes()).await.is_err() {
                return Some(());
            }
            let (status, body) = read_answer(&mut t).await;
            match status {
                200 => None,
                503 => {
                    assert_eq!(body, "egress unavailable");
                    Some(())
                }
                0 => Some(()),
                other => panic!("a CONNECT while draining answered {other} {body}"),
            }
        })
        .await;
    // The open tunnel still works while the PEP drains.
    within(BOUND, "echo while draining", async {
        let broken = "the open tunnel stopped working while draining";
        tls.write_all(b"two\n\n").await.expect(broken);
        tls.flush().await.expect(broken);
        tls.read_exact(&mut buf).await.expect(broken);
    })
    .await;
    assert_eq!(&buf, b"two\n\n");

    let status = pep.gw.wait_exit(BOUND).await;
    assert_eq!(status.code(), Some(0), "{}", pep.gw.log_text());
    assert!(
        pep.gw.log_text().contains("drain timeout reached"),
        "the open tunnel held the drain until its deadline:\n{}",
        pep.gw.log_text()
    );
    let mut rest = Vec::new();
    let _ = within(BOUND, "the tunnel closes", tls.read_to_end(&mut rest)).await;
    assert!(rest.is_empty());
}

/// The guard, inside a network namespace of the test's own (169.254.169.254, NAT64 and a
/// private address live on its loopback, with listeners that count connections): with
/// `0.0.0.0/0`, `::/0` and `http *` allowed in audit mode, tunnels to the metadata address
/// (also IPv4-mapped and NAT64), loopback, `0.0.0.0` and the PEP's own listener are refused and
/// nothing is dialled; a `tcp` rule naming 169.254.169.254/32 reaches it; a hostname rule whose
/// name resolves to a private address is refused unless it sets `allow_private`.
#[test]
fn the_guard_holds_in_a_network_namespace() {
    let ns = TestNetns::create();
    for cidr in [
        "169.254.169.254/32",
        "64:ff9b::a9fe:a9fe/128",
        "10.1.2.3/32",
    ] {
        ns.add_address(cidr);
    }
    let program = ns.command(env!("CARGO_BIN_EXE_actorgate"));
    ns.run(move || async move { guard_checks(program).await });
}

async fn guard_checks(program: std::process::Command) {
    // Counting listeners, all inside the namespace.
    let meta = http_upstream("169.254.169.254:80", "meta").await;
    let nat64 = http_upstream("[64:ff9b::a9fe:a9fe]:80", "nat64").await;
    let private = http_upstream("10.1.2.3:80", "private").await;
    let lo = http_upstream("127.0.0.1:0", "loopback").await;
    let unspecified = http_upstream("127.0.0.1:0", "unspecified").await;
    let counters = [&meta, &nat64, &private, &lo, &unspecified];

    let policy = "\
policies:
- name: everything
  selector: {actor: demo/audit}
  mode: audit
  rules:
  - tcp: {cidrs: [0.0.0.0/0, \"::/0\"], ports: all}
  - http: {hostnames: [\"*\"], ports: all}
- name: metadata
  selector: {actor: demo/meta}
  rules:
  - tcp: {cidrs: [169.254.169.254/32], ports: [80]}
- name: named
  selector: {actor: demo/named}
  rules:
  - http: {hostnames: [internal.test], ports: [80]}
- name: private
  selector: {actor: demo/private}
  rules:
  - http: {hostnames: [internal.test], ports: [80], allow_private: true}
";
    let pki = test_pki(&[]);
    let dir = tempfile::tempdir().unwrap();
    let audit_dir = tempfile::tempdir().unwrap();
    let audit = audit_dir.path().join("audit.jsonl");
    std::fs::write(dir.path().join("actors.yaml"), ACTORS).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
    // The PEP listens on every address of the namespace: 10.1.2.3:<its port> is its own.
    let text = config(
        &pki,
        "0.0.0.0:0",
        "meta.test: [169.254.169.254], internal.test: [10.1.2.3]",
        "",
        &audit,
    );
    let gw = Gateway::start_command(program, &write_config(dir.path(), &text)).await;
    let own_port = gw.addr("egress").port();
    let pep: SocketAddr = format!("127.0.0.1:{own_port}").parse().unwrap();
    let ca = pki.ca_file();
    let record = async |what: &str, pred: &dyn Fn(&Value) -> bool| -> Value {
        gw.eventually(BOUND, format!("an audit record: {what}"), async || {
            audit_records(&audit).into_iter().find(|r| pred(r))
        })
        .await
    };

    // Everything allowed, in audit mode: still nothing guarded is dialled.
    let auditor = actor_cert(&pki, "audit");
    let targets = [
        "169.254.169.254:80".to_owned(),
        "[::ffff:169.254.169.254]:80".to_owned(),
        "[64:ff9b::a9fe:a9fe]:80".to_owned(),
        lo.addr.to_string(),
        format!("0.0.0.0:{}", unspecified.addr.port()),
        format!("10.1.2.3:{own_port}"),
        format!("127.0.0.1:{own_port}"),
    ];
    for target in &targets {
        let host = target;
        let dst: SocketAddr = target.parse().unwrap();
        // Opaque bytes: the tcp rule (0.0.0.0/0 or ::/0) decides, the guard refuses the dial.
        let (status, body, mut tls) = atunnel(pep, &ca, &auditor, target).await;
        assert_eq!(status, 200, "CONNECT {target}: {body}\n{}", gw.log_text());
        let got = bytes_back(&mut tls, b"ping\n").await;
        assert!(
            got.is_empty(),
            "CONNECT {target}: opaque bytes were answered: {:?}",
            String::from_utf8_lossy(&got)
        );
        let rec = record(&format!("opaque tunnel to {target}"), &|r| {
            about(r, "tunnel", dst, "audit") && r["reason"] != "per_request"
        })
        .await;
        assert_eq!(rec["reason"], "guarded", "CONNECT {target}: {rec}");
        assert_ne!(rec["verdict"], "allow", "{rec}");

        // A cleartext request naming the address: `*` matches it, the guard refuses: 403.
        let (status, _, tls) = atunnel(pep, &ca, &auditor, target).await;
        assert_eq!(status, 200);
        let mut client = TunnelClient::new(tls).await;
        let (s, b) = client.get(host, "/latest/meta-data/").await;
        assert_eq!((s, b.as_str()), (403, "egress denied"), "GET Host: {host}");
        let rec = record(&format!("request to {host}"), &|r| {
            about(r, "request", dst, "audit")
        })
        .await;
        assert!(
            rec["reason"] == "guarded" || rec["reason"] == "private_address",
            "GET Host: {host}: {rec}"
        );
    }
    // A name resolving to the metadata address, through `*`: refused.
    let (status, _, tls) = atunnel(pep, &ca, &auditor, "169.254.169.254:80").await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tls).await;
    let (s, b) = client.get("meta.test", "/").await;
    assert_eq!((s, b.as_str()), (403, "egress denied"));
    let rec = record("request for meta.test", &|r| {
        r["kind"] == "request" && r["authority"] == "meta.test"
    })
    .await;
    assert_eq!(rec["reason"], "guarded", "{rec}");
    for c in counters {
        assert_eq!(
            c.accepted(),
            0,
            "a guarded destination ({}) saw a connection:\n{}",
            c.addr,
            gw.log_text()
        );
    }

    // A tcp rule naming the address itself reaches it.
    let meta_actor = actor_cert(&pki, "meta");
    let (status, _, tls) = atunnel(pep, &ca, &meta_actor, "169.254.169.254:80").await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tls).await;
    let (s, b) = client.get("169.254.169.254", "/latest/").await;
    assert_eq!((s, b.as_str()), (200, "meta 169.254.169.254 /latest/"));
    assert_eq!(meta.accepted(), 1);

    // A hostname rule whose name resolves to a private address: refused by default …
    let named = actor_cert(&pki, "named");
    let (status, _, tls) = atunnel(pep, &ca, &named, "10.1.2.3:80").await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tls).await;
    let (s, b) = client.get("internal.test", "/").await;
    assert_eq!((s, b.as_str()), (403, "egress denied"));
    let rec = record("request of demo/named", &|r| {
        r["kind"] == "request" && r["actor"]["name"] == "named"
    })
    .await;
    assert_eq!(rec["reason"], "private_address", "{rec}");
    assert_eq!(private.accepted(), 0);
    // … and reached when the rule sets allow_private.
    let allowed = actor_cert(&pki, "private");
    let (status, _, tls) = atunnel(pep, &ca, &allowed, "10.1.2.3:80").await;
    assert_eq!(status, 200);
    let mut client = TunnelClient::new(tls).await;
    let (s, b) = client.get("internal.test", "/x").await;
    assert_eq!((s, b.as_str()), (200, "private internal.test /x"));
    assert_eq!(private.accepted(), 1);

    for c in [&nat64, &lo, &unspecified] {
        assert_eq!(c.accepted(), 0, "{} saw a connection", c.addr);
    }
    drop(gw);
}
