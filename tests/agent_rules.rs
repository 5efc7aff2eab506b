//! The tunnel agent's capture rules (issue 13, first part), applied with `actorgate agent
//! install-rules` to a network namespace the test creates: TCP to any address is redirected to
//! the capture port and the listener there reads the original destination (IPv4 and IPv6);
//! DNS over TCP and UDP and the agent's own uid are left alone; other UDP is dropped; installing
//! twice leaves one copy, `remove-rules` removes it all (twice is fine).
//!
//! Every address is on the namespace's own loopback: nothing leaves the machine.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::netns::TestNetns;
use egress_pep::agent::original_dst::original_destination;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(10);

fn agent(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("agent")
        .args(args)
        .output()
        .expect("run actorgate agent");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ruleset(ns: &TestNetns) -> String {
    let out = ns
        .command("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("nft list ruleset");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connects to `dst` and returns what the capture listener that accepted it reads as the
/// original destination.
async fn captured(listener: &TcpListener, dst: SocketAddr) -> SocketAddr {
    let (client, accepted) = tokio::time::timeout(WAIT, async {
        tokio::join!(TcpStream::connect(dst), listener.accept())
    })
    .await
    .unwrap_or_else(|_| panic!("no capture of a connection to {dst}"));
    let _client = client.unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    let (stream, _) = accepted.unwrap();
    original_destination(&stream).unwrap_or_else(|e| panic!("original destination: {e}"))
}

#[test]
fn tcp_is_captured_with_its_original_destination_and_dns_passes() {
    let ns = TestNetns::create();
    ns.add_address("10.9.9.9/32");
    ns.add_address("fd00::9/128");
    let netns = ns.name().to_owned();
    // Installed twice: one copy. The test's own uid (root) is not the excluded one.
    for _ in 0..2 {
        let (ok, err) = agent(&[
            "install-rules",
            "--port",
            "15001",
            "--exclude-uid",
            "4242",
            "--netns",
            &netns,
        ]);
        assert!(ok, "{err}");
    }
    let rules = ruleset(&ns);
    assert_eq!(
        rules.matches("table inet actorgate_agent").count(),
        1,
        "{rules}"
    );
    assert_eq!(rules.matches("redirect to :15001").count(), 1, "{rules}");

    ns.run(|| async {
        let v4 = TcpListener::bind("127.0.0.1:15001").await.unwrap();
        let v6 = TcpListener::bind("[::1]:15001").await.unwrap();
        for dst in ["10.9.9.9:80", "10.9.9.9:8443"] {
            let dst: SocketAddr = dst.parse().unwrap();
            assert_eq!(captured(&v4, dst).await, dst);
        }
        let dst: SocketAddr = "[fd00::9]:443".parse().unwrap();
        assert_eq!(captured(&v6, dst).await, dst);

        // DNS over TCP reaches its server directly.
        let dns = TcpListener::bind("10.9.9.9:53").await.unwrap();
        let (client, accepted) = tokio::time::timeout(WAIT, async {
            tokio::join!(TcpStream::connect("10.9.9.9:53"), dns.accept())
        })
        .await
        .expect("DNS over TCP is not captured");
        client.unwrap();
        accepted.unwrap();

        // UDP: DNS passes, anything else is dropped.
        let dns_udp = UdpSocket::bind("10.9.9.9:53").await.unwrap();
        let other = UdpSocket::bind("10.9.9.9:9999").await.unwrap();
        let sender = UdpSocket::bind("10.9.9.9:0").await.unwrap();
        sender.send_to(b"q", "10.9.9.9:53").await.unwrap();
        let mut buf = [0u8; 8];
        let (n, _) = tokio::time::timeout(WAIT, dns_udp.recv_from(&mut buf))
            .await
            .expect("UDP to port 53 arrives")
            .unwrap();
        assert_eq!(&buf[..n], b"q");
        let _ = sender.send_to(b"x", "10.9.9.9:9999").await;
        let dropped =
            tokio::time::timeout(Duration::from_millis(500), other.recv_from(&mut buf)).await;
        assert!(dropped.is_err(), "UDP to another port arrived");
    });

    for _ in 0..2 {
        let (ok, err) = agent(&["remove-rules", "--netns", &netns]);
        assert!(ok, "{err}");
    }
    let rules = ruleset(&ns);
    assert!(!rules.contains("actorgate_agent"), "{rules}");
    // Without the rules a connection goes where it was sent.
    ns.run(|| async {
        let direct = TcpListener::bind("10.9.9.9:80").await.unwrap();
        let (client, accepted) = tokio::time::timeout(WAIT, async {
            tokio::join!(TcpStream::connect("10.9.9.9:80"), direct.accept())
        })
        .await
        .expect("a direct connection");
        client.unwrap();
        accepted.unwrap();
    });
}

#[test]
fn rules_that_would_capture_the_agent_are_refused_in_one_line() {
    let (ok, err) = agent(&["install-rules", "--dry-run"]);
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--exclude-uid"), "{err}");
    let (ok, err) = agent(&["install-rules", "--exclude-mark", "nope", "--dry-run"]);
    assert!(!ok);
    assert!(err.contains("\"nope\" is not a mark"), "{err}");
}
