//! The control-plane (ate-api-server) client end to end, through the real binary (issue 9,
//! faults 13, 15, 17): dual-stack workers of upstream v0.4 routed by address family, `tls`
//! required, TLS material and address form checked by `check-config`, and a control plane that
//! cannot be reached explained in the log and on `/statusz`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use identity::devca::DevCa;
use routing_core::proto::ActorState;
use routing_core::testing::FakeControlPlane;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
const SUFFIX: &str = "actors.resources.substrate.ate.dev";

/// An IPv4 and an IPv6 echo worker on the same port (127.0.4.2:P and [::1]:P).
async fn dual_stack_workers() -> (u16, Vec<tokio::sync::oneshot::Sender<()>>) {
    for _ in 0..20 {
        let (v4, stop4) = echo_worker("127.0.4.2:0", "v4").await;
        let port = v4.port();
        if tokio::net::TcpListener::bind(("::1", port)).await.is_ok() {
            // Free a moment ago; the listener above is dropped, so bind it for real.
            let (_, stop6) = echo_worker(&format!("[::1]:{port}"), "v6").await;
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
        let cfg = write_config(
            dir.path(),
            &format!(
                "admin: {{listen: ADMIN_ADDR}}\n\
                 directory: {{ateapi: {{address: '{}', tls: plaintext{family}}}}}\n",
                fake.addr
            ),
        );
        let gw = Gateway::start(&cfg.path, cfg.admin).await;
        gw.wait_ready().await;
        for actor in ["v4first", "v6first"] {
            assert_eq!(
                worker_name(cfg.http, actor, port).await,
                want,
                "{actor} with config {family:?}"
            );
        }
    }
}

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A dev CA (`ca.crt`), a server certificate for localhost/127.0.0.1 (`server.*`), two
    /// client certificates (`router.*`, `other.*`), an empty file and a garbage file.
    fn new(ca_name: &str) -> (Self, DevCa) {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate(ca_name, YEAR).unwrap();
        ca.write_dir(dir.path()).unwrap();
        ca.issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], YEAR)
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        for name in ["router", "other"] {
            ca.issue_component(
                identity::spiffe::DEFAULT_TRUST_DOMAIN,
                "ate-system",
                name,
                &[],
                &[],
                YEAR,
            )
            .unwrap()
            .write(dir.path(), name)
            .unwrap();
        }
        std::fs::write(dir.path().join("empty.crt"), "").unwrap();
        std::fs::write(
            dir.path().join("garbage.crt"),
            "this is not a certificate\n-----BEGIN CERTIFICATE-----\nbm90IERFUg==\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        (Self { dir }, ca)
    }

    fn path(&self, f: &str) -> String {
        self.dir.path().join(f).display().to_string()
    }
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
    let (p, _ca) = Pki::new("control-plane test CA");
    let scratch = tempfile::tempdir().unwrap();
    let mtls = |ca: &str, cert: &str, key: &str| {
        format!(
            "address: 'api:8443', tls: mtls, ca_file: '{}', cert_file: '{}', key_file: '{}'",
            p.path(ca),
            p.path(cert),
            p.path(key)
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

/// Polls `f` every 50 ms until it returns `Some`, at most `within`.
async fn eventually<T>(within: Duration, what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_untrusted_control_plane_is_explained_in_the_log_and_on_statusz() {
    let (server_pki, server_ca) = Pki::new("server CA");
    let server = server_ca
        .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], YEAR)
        .unwrap();
    let fake = FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, None).await;
    drop(server_pki);
    // The gateway trusts a different CA.
    let (client_pki, _) = Pki::new("client CA");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\n\
             directory: {{ateapi: {{address: '{}', tls: tls, ca_file: '{}', server_name: localhost}}}}\n",
            fake.addr,
            client_pki.path("ca.crt")
        ),
    );
    let gw = Gateway::start(&cfg.path, cfg.admin).await;

    let line = eventually(
        Duration::from_secs(15),
        "a warning naming the reason",
        async || {
            gw.log_text()
                .lines()
                .find(|l| {
                    l.contains("WARN") && l.contains("ate-api-server has never been reachable")
                })
                .map(str::to_owned)
        },
    )
    .await;
    assert!(line.contains("unknown CA"), "{line}");
    assert!(
        line.contains(&fake.addr.to_string()),
        "names the address: {line}"
    );

    let conn = eventually(
        Duration::from_secs(15),
        "/statusz connection error",
        async || {
            let (status, body) = get(cfg.admin, "/statusz?format=json").await.ok()?;
            assert_eq!(status, 200);
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let c = v.pointer("/directory/connection")?.clone();
            c.get("last_connect_error")?.as_str()?;
            Some(c)
        },
    )
    .await;
    assert_eq!(conn["address"], fake.addr.to_string());
    assert_eq!(conn["ever_connected"], false);
    let e = conn["last_connect_error"].as_str().unwrap();
    assert!(
        e.starts_with("server certificate not trusted: unknown CA"),
        "{e}"
    );
    let (status, _) = get(cfg.admin, "/readyz").await.unwrap();
    assert_eq!(status, 503);
    let (_, html) = get(cfg.admin, "/statusz").await.unwrap();
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

    let (p, ca) = Pki::new("mtls server CA");
    let server = ca.issue_server(&["localhost".into()], &[], YEAR).unwrap();
    let fake =
        FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, Some(ca.cert_pem())).await;
    let (stranger, _) = Pki::new("stranger CA");
    let settings = |cert: Option<(String, String)>| AteApiSettings {
        address: fake.addr.to_string(),
        tls: if cert.is_some() {
            TlsMode::Mtls
        } else {
            TlsMode::Tls
        },
        ca_file: Some(p.path("ca.crt").into()),
        cert_file: cert.as_ref().map(|c| c.0.clone().into()),
        key_file: cert.as_ref().map(|c| c.1.clone().into()),
        server_name: Some("localhost".into()),
        token_file: None,
        connect_timeout: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(5),
    };
    let reason = async |s: AteApiSettings| {
        let dir = AteApiDirectory::new(&s).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), dir.health())
            .await
            .expect("health answers within 10 s")
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
        stranger.path("router.crt"),
        stranger.path("router.key"),
    ))))
    .await;
    assert!(
        wrong.starts_with("server refused our client certificate"),
        "{wrong}"
    );
    // The right certificate gets through.
    let dir = AteApiDirectory::new(&settings(Some((
        p.path("router.crt"),
        p.path("router.key"),
    ))))
    .unwrap();
    tokio::time::timeout(Duration::from_secs(10), dir.health())
        .await
        .expect("health answers within 10 s")
        .expect("mTLS works");
}
