//! The control-plane (ate-api-server) client end to end, through the real binary (issue 9,
//! faults 13, 15, 17): dual-stack workers of upstream v0.4 routed by address family, `tls`
//! required, TLS material and address form checked by `check-config`, and a control plane that
//! cannot be reached explained in the log and on `/statusz`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use routing_core::proto::ActorState;
use routing_core::testing::FakeControlPlane;

const SUFFIX: &str = "actors.resources.substrate.ate.dev";

/// An IPv4 and an IPv6 echo worker on the same port (127.0.4.2:P and [::1]:P). Both listeners
/// are bound before either serves, so no port is ever released in between.
async fn dual_stack_workers() -> (u16, Vec<EchoStop>) {
    for _ in 0..20 {
        let v4 = tokio::net::TcpListener::bind("127.0.4.2:0").await.unwrap();
        let port = v4.local_addr().unwrap().port();
        if let Ok(v6) = tokio::net::TcpListener::bind(("::1", port)).await {
            let (_, stop4) = echo_worker_on(v4, "v4");
            let (_, stop6) = echo_worker_on(v6, "v6");
            return (port, vec![stop4, stop6]);
        }
    }
    panic!("no port free on both 127.0.4.2 and ::1");
}

async fn worker_name(http: std::net::SocketAddr, actor: &str, port: u16) -> String {
    let host = format!("{actor}.ns.{SUFFIX}:{port}");
    let (status, h, body) = request(http, "/", &[("host", &host)]).await;
    assert_eq!(status, 200, "{actor}: {body}");
    h["x-echo-worker"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn dual_stack_workers_are_routed_by_address_family() {
    let (port, _stop) = dual_stack_workers().await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/v4first", ActorState::Running, "x", Duration::ZERO);
    fake.set_pod_ips("ns/v4first", &["127.0.4.2", "::1"]);
    fake.add_actor("ns/v6first", ActorState::Suspended, "x", Duration::ZERO);
    fake.set_pod_ips("ns/v6first", &["::1", "127.0.4.2"]);

    for (family, want) in [("", "v4"), (", worker_address_family: ipv6", "v6")] {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::ready(
            dir.path(),
            &format!(
                "admin: {{listen: ADMIN_ADDR}}\n\
                 directory: {{ateapi: {{address: '{}', tls: plaintext{family}}}}}\n",
                fake.addr
            ),
        )
        .await;
        for actor in ["v4first", "v6first"] {
            assert_eq!(
                worker_name(gw.http(), actor, port).await,
                want,
                "{actor} with config {family:?}"
            );
        }
    }
}

/// A test PKI (`ca.crt`, `server.*`) with two client certificates (`router.*`, `other.*`), an
/// empty file and a garbage file.
fn pki() -> TestPki {
    let p = test_pki(&["router", "other"]);
    std::fs::write(p.path("empty.crt"), "").unwrap();
    std::fs::write(
        p.path("garbage.crt"),
        "this is not a certificate\n-----BEGIN CERTIFICATE-----\nbm90IERFUg==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    p
}

fn path(p: &TestPki, f: &str) -> String {
    p.path(f).display().to_string()
}

/// `actorgate check-config` of `ateapi` (the body of `directory.ateapi`) → (exit code, stderr).
fn check_ateapi(dir: &Path, ateapi: &str) -> (Option<i32>, String) {
    let path = dir.join("check.yaml");
    std::fs::write(
        &path,
        format!("admin: {{listen: '127.0.0.1:0'}}\ndirectory: {{ateapi: {{{ateapi}}}}}\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_config_refuses_control_plane_tls_that_serve_cannot_use() {
    let p = pki();
    let scratch = tempfile::tempdir().unwrap();
    let mtls = |ca: &str, cert: &str, key: &str| {
        format!(
            "address: 'api:8443', tls: mtls, ca_file: '{}', cert_file: '{}', key_file: '{}'",
            path(&p, ca),
            path(&p, cert),
            path(&p, key)
        )
    };

    // Sound material passes, so the refusals below are about what they name.
    let (code, err) = check_ateapi(scratch.path(), &mtls("ca.crt", "router.crt", "router.key"));
    assert_eq!(code, Some(0), "{err}");

    let cases = [
        (
            "address: 'api:8443'".to_owned(),
            "directory.ateapi.tls: is required",
        ),
        (
            mtls("empty.crt", "router.crt", "router.key"),
            "directory.ateapi.ca_file: ",
        ),
        (
            mtls("garbage.crt", "router.crt", "router.key"),
            "directory.ateapi.ca_file: ",
        ),
        (
            mtls("ca.crt", "router.crt", "other.key"),
            "directory.ateapi.cert_file: ",
        ),
        (
            mtls("ca.crt", "router.crt", "router.key").replace("'api:8443'", "'http://api:8443'"),
            "directory.ateapi.address: \"http://api:8443\" has a scheme: http:// means plaintext but tls is mtls",
        ),
    ];
    for (ateapi, want) in cases {
        let (code, err) = check_ateapi(scratch.path(), &ateapi);
        assert_eq!(code, Some(2), "{ateapi}: {err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line for {ateapi}:\n{err}");
        let line = lines[0]
            .split_once("check.yaml: ")
            .map(|(_, l)| l)
            .unwrap_or_else(|| panic!("names the file: {err}"));
        assert!(
            line.starts_with(want),
            "{ateapi}: want {want:?}, got {line:?}"
        );
        // The reason, not only the field.
        let reason_ok = match want {
            "directory.ateapi.ca_file: " if ateapi.contains("empty.crt") => {
                line.contains("empty.crt: no PEM certificate found")
            }
            "directory.ateapi.ca_file: " => {
                line.contains("garbage.crt: a certificate in it cannot be parsed (BadEncoding)")
            }
            "directory.ateapi.cert_file: " => {
                line.contains("router.crt does not belong to key_file")
                    && line.contains("other.key")
            }
            _ => true,
        };
        assert!(reason_ok, "{ateapi}: reason missing in {line:?}");
    }
}

#[tokio::test]
async fn an_untrusted_control_plane_is_explained_in_the_log_and_on_statusz() {
    let server = TestPki::new().issue_localhost();
    let fake = FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, None).await;
    // The gateway trusts a different CA.
    let client_pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\n\
             directory: {{ateapi: {{address: '{}', tls: tls, ca_file: '{}', server_name: localhost}}}}\n",
            fake.addr,
            path(&client_pki, "ca.crt")
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let admin = gw.admin;

    let line = gw
        .log_line("a warning naming the reason", |l| {
            l.contains("WARN") && l.contains("ate-api-server has never been reachable")
        })
        .await;
    assert!(line.contains("unknown CA"), "{line}");
    assert!(
        line.contains(&fake.addr.to_string()),
        "names the address: {line}"
    );

    let conn = gw
        .eventually(BOUND, "/statusz connection error", async || {
            let (status, body) = get(admin, "/statusz?format=json").await.ok()?;
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let c = v.pointer("/directory/connection")?.clone();
            c.get("last_connect_error")?.as_str()?;
            Some(c)
        })
        .await;
    assert_eq!(conn["address"], fake.addr.to_string());
    assert_eq!(conn["ever_connected"], false);
    let e = conn["last_connect_error"].as_str().unwrap();
    assert!(
        e.starts_with("server certificate not trusted: unknown CA"),
        "{e}"
    );
    let (status, _) = get(admin, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    let (_, html) = get(admin, "/statusz").await.unwrap();
    assert!(
        html.contains("last connect error") && html.contains("unknown CA"),
        "{html}"
    );
}

/// The same explanations come from the client itself: an mTLS server that refuses the client
/// (no certificate, or one from a CA it does not trust).
#[tokio::test]
async fn refused_client_certificates_are_explained() {
    use routing_core::ActorDirectory;
    use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings, TlsMode};

    let p = pki();
    let server = p.ca.issue_server(&["localhost".into()], &[], YEAR).unwrap();
    let fake =
        FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, Some(p.ca.cert_pem())).await;
    let stranger = pki();
    let settings = |cert: Option<(String, String)>| AteApiSettings {
        address: fake.addr.to_string(),
        tls: if cert.is_some() {
            TlsMode::Mtls
        } else {
            TlsMode::Tls
        },
        ca_file: Some(p.path("ca.crt")),
        cert_file: cert.as_ref().map(|c| c.0.clone().into()),
        key_file: cert.as_ref().map(|c| c.1.clone().into()),
        server_name: Some("localhost".into()),
        token_file: None,
        connect_timeout: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(5),
    };
    let reason = async |s: AteApiSettings| {
        let dir = AteApiDirectory::new(&s).unwrap();
        let e = within(BOUND, "the health probe", dir.health())
            .await
            .expect_err("refused");
        assert_eq!(e.code, tonic::Code::Unavailable);
        assert_eq!(
            dir.connection().unwrap().last_connect_error.as_deref(),
            Some(e.message.as_str())
        );
        e.message
    };
    let none = reason(settings(None)).await;
    assert!(
        none.starts_with("server refused the connection: it requires a client certificate"),
        "{none}"
    );
    let wrong = reason(settings(Some((
        path(&stranger, "router.crt"),
        path(&stranger, "router.key"),
    ))))
    .await;
    assert!(
        wrong.starts_with("server refused our client certificate"),
        "{wrong}"
    );
    // The right certificate gets through.
    let dir = AteApiDirectory::new(&settings(Some((
        path(&p, "router.crt"),
        path(&p, "router.key"),
    ))))
    .unwrap();
    within(BOUND, "the health probe", dir.health())
        .await
        .expect("mTLS works");
}
