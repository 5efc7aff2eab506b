//! TLS and mTLS on both control-plane hops: the ateapi client against a TLS ate-api-server, and
//! actorgate's own gRPC listener (the ateapi.Control simulator) with required client certificates.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use identity::ActorIdentity;
use identity::devca::DevCa;
use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings, TlsMode};
use routing_core::extract::{ExtractorKind, Target};
use routing_core::proto;
use routing_core::proto::ActorState;
use routing_core::testing::FakeControlPlane;
use routing_core::{ActorRef, Extractor, Resolver, ResolverMetrics, ResolverSettings};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

struct Pki {
    dir: tempfile::TempDir,
    ca: DevCa,
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate(
            &format!("test CA {:x}", std::process::id() ^ fastrand_u32()),
            YEAR,
        )
        .unwrap();
        ca.write_dir(dir.path()).unwrap();
        Self { dir, ca }
    }
    fn path(&self, f: &str) -> std::path::PathBuf {
        self.dir.path().join(f)
    }
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
}

fn settings(
    p: &Pki,
    addr: std::net::SocketAddr,
    tls: TlsMode,
    client_cert: bool,
) -> AteApiSettings {
    AteApiSettings {
        address: addr.to_string(),
        tls,
        ca_file: Some(p.path("ca.crt")),
        cert_file: client_cert.then(|| p.path("router.crt")),
        key_file: client_cert.then(|| p.path("router.key")),
        server_name: Some("localhost".into()),
        token_file: None,
        connect_timeout: Duration::from_millis(500),
        rpc_timeout: Duration::from_secs(5),
    }
}

async fn resolve(s: &AteApiSettings) -> Result<std::net::SocketAddr, (u16, String)> {
    let dir = AteApiDirectory::new(s).unwrap();
    let r = Resolver::new(
        Arc::new(dir),
        ResolverSettings {
            budget: Duration::from_millis(600),
            ..ResolverSettings::default()
        },
        Extractor::default(),
        ResolverMetrics::new(),
    );
    let t = Target {
        actor: ActorRef::parse("ns/a").unwrap(),
        port: 8080,
        via: ExtractorKind::Header,
    };
    r.resolve(&t)
        .await
        .map(|r| r.endpoint)
        .map_err(|e| (e.http_status(), e.client_message()))
}

#[tokio::test]
async fn ateapi_client_over_tls_and_mtls() {
    let p = Pki::new();
    let server = p.ca.issue_server(&["localhost".into()], &[], YEAR).unwrap();
    let router =
        p.ca.issue_component(
            identity::spiffe::DEFAULT_TRUST_DOMAIN,
            "ate-system",
            "router",
            &[],
            &[],
            YEAR,
        )
        .unwrap();
    router.write(p.dir.path(), "router").unwrap();

    // TLS: server-authenticated.
    let tls = FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, None).await;
    tls.add_actor("ns/a", ActorState::Running, "10.9.0.1", Duration::ZERO);
    assert_eq!(
        resolve(&settings(&p, tls.addr, TlsMode::Tls, false))
            .await
            .unwrap(),
        "10.9.0.1:8080".parse().unwrap()
    );

    // mTLS: the server requires a client certificate from the CA.
    let mtls =
        FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, Some(p.ca.cert_pem())).await;
    mtls.add_actor("ns/a", ActorState::Running, "10.9.0.2", Duration::ZERO);
    assert_eq!(
        resolve(&settings(&p, mtls.addr, TlsMode::Mtls, true))
            .await
            .unwrap(),
        "10.9.0.2:8080".parse().unwrap()
    );

    // Without a client certificate the handshake fails: the control plane is unavailable (503).
    assert_eq!(
        resolve(&settings(&p, mtls.addr, TlsMode::Tls, false))
            .await
            .unwrap_err(),
        (503, "actor ns/a unavailable".into())
    );

    // A server certificate from a CA we do not trust: unavailable, and no internals leak.
    let other = Pki::new();
    let mut s = settings(&p, tls.addr, TlsMode::Tls, false);
    s.ca_file = Some(other.path("ca.crt"));
    assert_eq!(
        resolve(&s).await.unwrap_err(),
        (503, "actor ns/a unavailable".into())
    );
}

#[tokio::test]
async fn simulator_serves_grpc_over_mtls() {
    let p = Pki::new();
    p.ca.issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()], YEAR)
        .unwrap()
        .write(p.dir.path(), "server")
        .unwrap();
    let client =
        p.ca.issue_actor(
            identity::spiffe::DEFAULT_TRUST_DOMAIN,
            &ActorIdentity::new("dev", "client", None).unwrap(),
            false,
            YEAR,
        )
        .unwrap();
    let TestConfig {
        path: config,
        admin,
        grpc,
        ..
    } = write_config(
        p.dir.path(),
        "admin: {listen: ADMIN_ADDR}\n\
         grpc:\n  listen: GRPC_ADDR\n  control_plane_simulator: true\n  tls: {cert_file: server.crt, key_file: server.key, client_ca_file: ca.crt, client_auth: required}\n\
         directory: {static: {actors: [{atespace: ns, name: a, endpoint: '10.1.1.1:80'}]}}\n",
    );
    let gw = Gateway::start(&config, admin).await;
    gw.wait_ready().await;

    let base = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(p.ca.cert_pem()))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://{grpc}"))
        .unwrap()
        .tls_config(
            base.clone()
                .identity(Identity::from_pem(&client.cert_pem, &client.key_pem)),
        )
        .unwrap()
        .connect()
        .await
        .unwrap();
    let a = proto::control_client::ControlClient::new(ch)
        .get_actor(proto::GetActorRequest {
            actor: Some(proto::ObjectRef {
                atespace: "ns".into(),
                name: "a".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        a.status.unwrap().worker_assignment.unwrap().worker_pod_ips,
        ["10.1.1.1"]
    );

    // A valid request without a client certificate, or in plaintext, gets no answer at all
    // (a transport failure), not an application error.
    let valid = || proto::GetActorRequest {
        actor: Some(proto::ObjectRef {
            atespace: "ns".into(),
            name: "a".into(),
        }),
    };
    for (label, endpoint, tls) in [
        (
            "no client certificate",
            format!("https://{grpc}"),
            Some(base),
        ),
        ("plaintext", format!("http://{grpc}"), None),
    ] {
        let result = async {
            let mut ep = Channel::from_shared(endpoint)
                .unwrap()
                .connect_timeout(Duration::from_secs(2));
            if let Some(t) = tls {
                ep = ep.tls_config(t).unwrap();
            }
            let ch = ep.connect().await.map_err(|e| e.to_string())?;
            proto::control_client::ControlClient::new(ch)
                .get_actor(valid())
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        }
        .await;
        let err = result.expect_err(label);
        assert!(
            !err.starts_with("InvalidArgument") && !err.starts_with("NotFound"),
            "{label}: {err}"
        );
    }
}

#[test]
fn grpc_tls_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.yaml");
    std::fs::write(
        &cfg,
        "grpc: {control_plane_simulator: true, tls: {cert_file: nope.crt, key_file: nope.key, client_auth: required}}\n\
         directory: {static: {}}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("grpc.tls.cert_file:") && err.contains("does not exist"),
        "{err}"
    );
    assert!(err.contains("grpc.tls.key_file:"), "{err}");
    assert!(
        err.contains("grpc.tls.client_ca_file: is required"),
        "{err}"
    );
}
