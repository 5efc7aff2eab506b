//! TLS and mTLS on both control-plane hops: the ateapi client against a TLS ate-api-server, and
//! actorgate's own gRPC listener (the ateapi.Control simulator) with required client certificates.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use identity::ActorIdentity;
use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings, TlsMode};
use routing_core::extract::{ExtractorKind, Target};
use routing_core::proto;
use routing_core::proto::ActorState;
use routing_core::testing::FakeControlPlane;
use routing_core::{ActorRef, Extractor, Resolver, ResolverMetrics, ResolverSettings};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

fn settings(
    p: &TestPki,
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
    let p = test_pki(&["router"]);
    let server = p.ca.issue_server(&["localhost".into()], &[], YEAR).unwrap();

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
    let other = TestPki::new();
    let mut s = settings(&p, tls.addr, TlsMode::Tls, false);
    s.ca_file = Some(other.path("ca.crt"));
    assert_eq!(
        resolve(&s).await.unwrap_err(),
        (503, "actor ns/a unavailable".into())
    );
}

/// What the server's refusal of a TLS client looks like from the client: the rustls error of
/// the handshake or, in TLS 1.3 where the client finishes first, of the first read.
async fn tls_refusal(
    addr: std::net::SocketAddr,
    ca_file: &std::path::Path,
    client: Option<(&std::path::Path, &std::path::Path)>,
) -> rustls::Error {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = tls_client_config(ca_file, &[b"h2"], client);
    let tcp = within(BOUND, "TCP connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let io_error = match within(
        BOUND,
        "TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
    )
    .await
    {
        Err(e) => e,
        Ok(mut stream) => {
            let _ = stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            match within(BOUND, "the server's answer", stream.read(&mut buf)).await {
                Err(e) => e,
                Ok(n) => panic!("the server answered a refused client: {:?}", &buf[..n]),
            }
        }
    };
    io_error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .cloned()
        .unwrap_or_else(|| panic!("not a TLS error: {io_error:?}"))
}

#[tokio::test]
async fn simulator_serves_grpc_over_mtls() {
    let p = test_pki(&[]);
    let client =
        p.ca.issue_actor(
            identity::spiffe::DEFAULT_TRUST_DOMAIN,
            &ActorIdentity::new("dev", "client", None).unwrap(),
            false,
            YEAR,
        )
        .unwrap();
    // The same identity from a CA the gateway does not trust.
    let stranger = TestPki::new()
        .ca
        .issue_actor(
            identity::spiffe::DEFAULT_TRUST_DOMAIN,
            &ActorIdentity::new("dev", "client", None).unwrap(),
            false,
            YEAR,
        )
        .unwrap();
    let (stranger_cert, stranger_key) = p.write("stranger", &stranger);
    let gw = Gateway::ready(
        p.dir(),
        "admin: {listen: ADMIN_ADDR}\n\
         grpc:\n  listen: GRPC_ADDR\n  control_plane_simulator: true\n  tls: {cert_file: server.crt, key_file: server.key, client_ca_file: ca.crt, client_auth: required}\n\
         directory: {static: {actors: [{atespace: ns, name: a, endpoint: '10.1.1.1:80'}]}}\n",
    )
    .await;
    let grpc = gw.grpc();

    let base = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(p.ca.cert_pem()))
        .domain_name("localhost");
    let ch = within(
        BOUND,
        "mTLS connect",
        Channel::from_shared(format!("https://{grpc}"))
            .unwrap()
            .timeout(BOUND)
            .tls_config(
                base.clone()
                    .identity(Identity::from_pem(&client.cert_pem, &client.key_pem)),
            )
            .unwrap()
            .connect(),
    )
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
        let result = within(BOUND, label, async {
            let mut ep = Channel::from_shared(endpoint)
                .unwrap()
                .connect_timeout(Duration::from_secs(2))
                .timeout(BOUND);
            if let Some(t) = tls {
                ep = ep.tls_config(t).unwrap();
            }
            let ch = ep.connect().await.map_err(|e| e.to_string())?;
            proto::control_client::ControlClient::new(ch)
                .get_actor(valid())
                .await
                .map(|_| ())
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
        })
        .await;
        let err = result.expect_err(label);
        assert!(
            !err.starts_with("InvalidArgument") && !err.starts_with("NotFound"),
            "{label}: {err}"
        );
    }

    // The specific refusals, from the TLS layer itself.
    use rustls::AlertDescription;
    assert_eq!(
        tls_refusal(grpc, &p.ca_file(), None).await,
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        "no client certificate"
    );
    assert_eq!(
        tls_refusal(grpc, &p.ca_file(), Some((&stranger_cert, &stranger_key))).await,
        rustls::Error::AlertReceived(AlertDescription::UnknownCA),
        "a client certificate from another CA"
    );
    // Plaintext: the listener speaks only TLS. An HTTP/2 preface gets no HTTP/2 frame back:
    // the connection is closed, at most after a TLS alert record (content type 21).
    let answer = raw_http(
        grpc,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
    )
    .await;
    let answer = answer.as_bytes();
    assert!(
        answer.is_empty() || answer[0] == 21,
        "plaintext answered with {answer:?}"
    );
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
