//! Real rustls handshakes over loopback with dev-CA certificates: identities, refusals, SPIFFE
//! server checks, rotation without restart, and interop with curl and openssl.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use identity::cert::{CertIdentityError, identity_from_der};
use identity::devca::Issued;
use identity::testing::*;
use identity::tls::{
    ClientAuth, ClientTlsFiles, ReloadableClientConfig, ReloadableServerConfig, ServerIdentity,
    ServerTlsFiles,
};
use identity::{ActorIdentity, PeerIdentity};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, SanType};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bound on every network step of these tests.
const STEP: Duration = Duration::from_secs(5);

/// A TLS test server requiring client certificates from `p`'s CA, with a localhost certificate.
async fn mtls_server(
    p: &TestPki,
) -> (
    SocketAddr,
    Arc<ReloadableServerConfig>,
    tokio::sync::mpsc::UnboundedReceiver<Seen>,
) {
    let (cert, key) = p.localhost_server("server");
    let tls = ReloadableServerConfig::server(ServerTlsFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: Some(p.ca_file()),
        client_auth: ClientAuth::Required,
        client_trust_domain: Some(TD.into()),
        alpn: vec![b"http/1.1".to_vec()],
    })
    .unwrap();
    let (addr, seen) = tls_server(tls.clone()).await;
    (addr, tls, seen)
}

/// A client trusting `ca_dir/ca.crt`, presenting `cert` (certificate and key files) if given.
fn client(
    ca_dir: &Path,
    cert: Option<(&Path, &Path)>,
    expect: ServerIdentity,
) -> Arc<ReloadableClientConfig> {
    ReloadableClientConfig::client(ClientTlsFiles {
        ca_file: ca_dir.join("ca.crt"),
        cert_file: cert.map(|c| c.0.to_path_buf()),
        key_file: cert.map(|c| c.1.to_path_buf()),
        server_identity: expect,
        alpn: vec![b"http/1.1".to_vec()],
    })
    .unwrap()
}

/// Presents the certificate `cert` (certificate and key files) to the mTLS server at `addr`
/// and returns the server's handshake error; panics when the server accepted it.
async fn server_refusal(
    addr: SocketAddr,
    p: &TestPki,
    cert: (&Path, &Path),
    seen: &mut tokio::sync::mpsc::UnboundedReceiver<Seen>,
) -> String {
    let _ = talk(addr, &client(p.dir(), Some(cert), ServerIdentity::Hostname)).await;
    match next_seen(seen).await {
        Seen::HandshakeFailed(e) => e,
        other => panic!("the server accepted the certificate: {other:?}"),
    }
}

fn actor() -> ActorIdentity {
    ActorIdentity::new("demo", "agent", Some("uid-42".into())).unwrap()
}

/// Connects, sends a line, reads it back; returns the client-side handshake error if any.
/// Bounded by [`STEP`].
async fn talk(addr: SocketAddr, client: &ReloadableClientConfig) -> Result<(), String> {
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = client
            .connector()
            .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
            .await
            .map_err(|e| format!("{e:?}"))?;
        s.write_all(b"ping\n").await.map_err(|e| format!("{e:?}"))?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.map_err(|e| format!("{e:?}"))?;
        Ok(())
    };
    tokio::time::timeout(STEP, exchange)
        .await
        .unwrap_or_else(|_| panic!("TLS exchange with {addr} did not finish within {STEP:?}"))
}

fn bad_cert(
    p: &TestPki,
    stem: &str,
    edit: impl FnOnce(&mut CertificateParams),
) -> (std::path::PathBuf, std::path::PathBuf, Issued) {
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(
        identity::spiffe::actor_uri(TD, "demo", "agent")
            .try_into()
            .unwrap(),
    )];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    edit(&mut params);
    let issued = p.ca.sign(params, YEAR).unwrap();
    let (c, k) = p.write(stem, &issued);
    (c, k, issued)
}

fn der(issued: &Issued) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn dev_ca_actor_certificate_yields_the_actor_identity() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let issued = p.ca.issue_actor(TD, &actor(), true, YEAR).unwrap();
    let (c, k) = p.write("actor", &issued);
    talk(
        addr,
        &client(p.dir(), Some((&c, &k)), ServerIdentity::Hostname),
    )
    .await
    .unwrap();
    match next_seen(&mut seen).await {
        Seen::Identity(Ok(PeerIdentity::Actor(a))) => {
            assert_eq!(a, actor(), "uid comes from the ActorIdentity extension")
        }
        other => panic!("{other:?}"),
    }
    // Without the extension: same actor, no uid.
    let plain = p.ca.issue_actor(TD, &actor(), false, YEAR).unwrap();
    assert_eq!(
        identity_from_der(&der(&plain), TD).unwrap(),
        PeerIdentity::Actor(ActorIdentity {
            uid: None,
            ..actor()
        })
    );
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_in_the_handshake() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let other = TestPki::new();
    let issued = other.ca.issue_actor(TD, &actor(), true, YEAR).unwrap();
    let (c, k) = other.write("actor", &issued);
    let e = server_refusal(addr, &p, (&c, &k), &mut seen).await;
    assert!(e.contains("UnknownIssuer"), "{e}");
}

#[tokio::test]
async fn ca_certificate_as_leaf_is_refused() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let (c, k, issued) = bad_cert(&p, "ca-leaf", |params| {
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    let e = server_refusal(addr, &p, (&c, &k), &mut seen).await;
    assert!(e.contains("CaUsedAsEndEntity"), "{e}");
    assert_eq!(
        identity_from_der(&der(&issued), TD),
        Err(CertIdentityError::CaAsLeaf)
    );
}

#[tokio::test]
async fn server_only_eku_is_refused() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let (c, k, issued) = bad_cert(&p, "server-eku", |params| {
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth]
    });
    let e = server_refusal(addr, &p, (&c, &k), &mut seen).await;
    assert!(
        e.contains("InvalidPurposeContext { required: ClientAuth"),
        "{e}"
    );
    assert_eq!(
        identity_from_der(&der(&issued), TD),
        Err(CertIdentityError::MissingClientAuth)
    );
}

#[tokio::test]
async fn two_spiffe_uris_are_refused() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let (c, k, _) = bad_cert(&p, "two-uris", |params| {
        params.subject_alt_names.push(SanType::URI(
            identity::spiffe::actor_uri(TD, "demo", "other")
                .try_into()
                .unwrap(),
        ))
    });
    let e = server_refusal(addr, &p, (&c, &k), &mut seen).await;
    assert!(e.contains("MultipleSpiffeIds(2)"), "{e}");
}

#[tokio::test]
async fn malformed_spiffe_path_is_refused() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let (c, k, _) = bad_cert(&p, "bad-path", |params| {
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{TD}/atespace/demo/agent")
                .try_into()
                .unwrap(),
        )]
    });
    let e = server_refusal(addr, &p, (&c, &k), &mut seen).await;
    assert!(
        e.contains("BadSpiffeId(BadPath(\"/atespace/demo/agent\"))"),
        "{e}"
    );
}

#[tokio::test]
async fn wrong_trust_domain_and_mismatched_extension_are_refused() {
    let p = TestPki::new();
    let other_td =
        p.ca.issue_actor("other.domain", &actor(), false, YEAR)
            .unwrap();
    assert!(matches!(
        identity_from_der(&der(&other_td), TD),
        Err(CertIdentityError::WrongTrustDomain { .. })
    ));
    let (_, _, lying) = bad_cert(&p, "lying-ext", |params| {
        params
            .custom_extensions
            .push(rcgen::CustomExtension::from_oid_content(
                &[1, 3, 6, 1, 4, 1, 11129, 2, 12, 2],
                br#"{"Atespace":"demo","ActorName":"admin","ActorUid":"x","Purpose":"atunnel"}"#
                    .to_vec(),
            ))
    });
    assert!(matches!(
        identity_from_der(&der(&lying), TD),
        Err(CertIdentityError::ExtensionMismatch { .. })
    ));
}

#[tokio::test]
async fn client_checks_the_servers_spiffe_id() {
    let p = TestPki::new();
    let pep =
        p.ca.issue_component(TD, "ate-system", "pep", &[], &[], YEAR)
            .unwrap();
    let (cert, key) = p.write("pep", &pep);
    let tls = ReloadableServerConfig::server(ServerTlsFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: None,
        client_auth: ClientAuth::None,
        client_trust_domain: None,
        alpn: vec![],
    })
    .unwrap();
    let (addr, _seen) = tls_server(tls).await;
    let id = identity::spiffe::component_uri(TD, "ate-system", "pep");
    talk(
        addr,
        &client(p.dir(), None, ServerIdentity::Spiffe(id.clone())),
    )
    .await
    .unwrap();
    talk(
        addr,
        &client(
            p.dir(),
            None,
            ServerIdentity::SpiffePrefix(format!("spiffe://{TD}/ns/ate-system/")),
        ),
    )
    .await
    .unwrap();
    let err = talk(
        addr,
        &client(
            p.dir(),
            None,
            ServerIdentity::Spiffe(format!("spiffe://{TD}/ns/x/sa/y")),
        ),
    )
    .await
    .unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");
    let other = TestPki::new();
    let err = talk(addr, &client(other.dir(), None, ServerIdentity::Spiffe(id)))
        .await
        .unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_rotation_applies_to_new_handshakes_only() {
    let p = TestPki::new();
    let (addr, tls, _seen) = mtls_server(&p).await;
    let _watch = tls.watch().unwrap();
    let issued = p.ca.issue_actor(TD, &actor(), true, YEAR).unwrap();
    let (c, k) = p.write("actor", &issued);
    let client = client(p.dir(), Some((&c, &k)), ServerIdentity::Hostname);

    async fn connect(
        addr: SocketAddr,
        client: &ReloadableClientConfig,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let handshake = async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            client
                .connector()
                .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
                .await
                .unwrap()
        };
        tokio::time::timeout(STEP, handshake)
            .await
            .expect("TLS handshake within 5 s")
    }
    let presented = |s: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
    };

    let mut old_conn = connect(addr, &client).await;
    let old_cert = presented(&old_conn);

    // Replace the server's files with a new certificate (write-then-rename, both files).
    let mut attempts = tls.reloader().attempts();
    let fresh = p.issue_localhost();
    let staging = p.path("staging");
    std::fs::create_dir_all(&staging).unwrap();
    fresh.write(&staging, "server").unwrap();
    std::fs::rename(staging.join("server.key"), p.path("server.key")).unwrap();
    std::fs::rename(staging.join("server.crt"), p.path("server.crt")).unwrap();

    // One handshake per reload attempt (the key and certificate may land in two), until one
    // presents the new certificate.
    tokio::time::timeout(RELOAD_BOUND, async {
        while presented(&connect(addr, &client).await) == old_cert {
            attempts.changed().await.expect("the reloader is alive");
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no handshake presented the new certificate within {RELOAD_BOUND:?}; {:?}",
            tls.status()
        )
    });
    assert!(tls.last_error().is_none());

    // The connection made before the rotation still works and still has the old certificate.
    let mut buf = [0u8; 11];
    tokio::time::timeout(STEP, async {
        old_conn.write_all(b"still-here\n").await.unwrap();
        old_conn.read_exact(&mut buf).await.unwrap();
    })
    .await
    .expect("the old connection answers within 5 s");
    assert_eq!(&buf, b"still-here\n");
    assert_eq!(presented(&old_conn), old_cert);

    // A broken replacement keeps the current material.
    std::fs::write(p.path("server.crt"), "not a certificate").unwrap();
    wait_for_reload(
        tls.reloader(),
        "the broken certificate to be reported",
        || tls.last_error().is_some(),
    )
    .await;
    assert!(
        tls.last_error().unwrap().contains("server.crt"),
        "{:?}",
        tls.last_error()
    );
    connect(addr, &client).await; // still serving
}

#[tokio::test]
async fn dev_ca_output_works_with_curl_and_openssl() {
    let p = TestPki::new();
    let (addr, _tls, mut seen) = mtls_server(&p).await;
    let issued = p.ca.issue_actor(TD, &actor(), true, YEAR).unwrap();
    let (c, k) = p.write("actor", &issued);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&k).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(p.path("ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let ca = p.path("ca.crt");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&c)
            .arg("--key")
            .arg(&k)
            .arg(&url)
            .output()
            .expect("curl is installed")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "actor demo/agent");
    assert!(matches!(
        next_seen(&mut seen).await,
        Seen::Identity(Ok(PeerIdentity::Actor(_)))
    ));

    // Without a client certificate the server refuses the handshake.
    let url = format!("https://127.0.0.1:{}/", addr.port());
    let ca = p.path("ca.crt");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca)
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success(), "no client certificate → no response");
    // Refused for that reason, not for any other.
    match next_seen(&mut seen).await {
        Seen::HandshakeFailed(e) => assert!(e.contains("NoCertificatesPresented"), "{e}"),
        other => panic!("{other:?}"),
    }

    for leaf in ["actor.crt", "server.crt"] {
        let out = std::process::Command::new("openssl")
            .args(["verify", "-CAfile"])
            .arg(p.path("ca.crt"))
            .arg(p.path(leaf))
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl verify {leaf}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .trim_end()
                .ends_with(": OK")
        );
    }
}

#[test]
fn spiffe_prefixes_must_end_at_a_path_boundary() {
    let p = TestPki::new();
    // "…/ns/ate-sys" would otherwise also match "…/ns/ate-system" and "…/ns/ate-sys-evil".
    for prefix in [
        format!("spiffe://{TD}/ns/ate-sys"),
        "spiffe://".into(),
        "https://x/".into(),
    ] {
        let r = ReloadableClientConfig::client(ClientTlsFiles {
            ca_file: p.path("ca.crt"),
            cert_file: None,
            key_file: None,
            server_identity: ServerIdentity::SpiffePrefix(prefix.clone()),
            alpn: vec![],
        });
        assert!(
            r.err()
                .expect("refused")
                .to_string()
                .contains("must be spiffe://"),
            "{prefix}"
        );
    }
}

#[tokio::test]
async fn optional_client_auth_admits_anonymous_clients_and_identifies_the_rest() {
    let p = TestPki::new();
    let (cert, key) = p.localhost_server("server");
    let tls = ReloadableServerConfig::server(ServerTlsFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: Some(p.path("ca.crt")),
        client_auth: ClientAuth::Optional,
        client_trust_domain: Some(TD.into()),
        alpn: vec![],
    })
    .unwrap();
    let (addr, mut seen) = tls_server(tls).await;
    talk(addr, &client(p.dir(), None, ServerIdentity::Hostname))
        .await
        .unwrap();
    match next_seen(&mut seen).await {
        Seen::Identity(r) => assert_eq!(r, Err(CertIdentityError::NoCertificate)),
        other => panic!("{other:?}"),
    }
    let issued = p.ca.issue_actor(TD, &actor(), false, YEAR).unwrap();
    let (c, k) = p.write("actor", &issued);
    talk(
        addr,
        &client(p.dir(), Some((&c, &k)), ServerIdentity::Hostname),
    )
    .await
    .unwrap();
    match next_seen(&mut seen).await {
        Seen::Identity(Ok(PeerIdentity::Actor(a))) => assert_eq!(a.name, "agent"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn certificate_actor_forms_and_the_legacy_setting() {
    use identity::cert::identity_from_der_with;
    use identity::spiffe::{ActorIdForm, SpiffeOptions, actor_uri_in};
    let p = TestPki::new();
    let legacy = SpiffeOptions {
        accept_legacy_actor: true,
    };
    let want = PeerIdentity::Actor(ActorIdentity::new("demo", "agent", None).unwrap());
    // The dev CA mints the form upstream's atunnel presents.
    let minted = p.ca.issue_actor(TD, &actor(), false, YEAR).unwrap();
    assert_eq!(
        identity_from_der_with(&der(&minted), TD, SpiffeOptions::default())
            .unwrap()
            .1,
        Some(ActorIdForm::AteomForActor)
    );
    for form in [
        ActorIdForm::AteomForActor,
        ActorIdForm::Actor,
        ActorIdForm::Legacy,
    ] {
        let (_, _, issued) = bad_cert(&p, &format!("{form:?}"), |params| {
            params.subject_alt_names = vec![SanType::URI(
                actor_uri_in(form, TD, "demo", "agent").try_into().unwrap(),
            )]
        });
        let by_default = identity_from_der_with(&der(&issued), TD, SpiffeOptions::default());
        if form == ActorIdForm::Legacy {
            assert!(
                matches!(by_default, Err(CertIdentityError::BadSpiffeId(_))),
                "{by_default:?}"
            );
        } else {
            assert_eq!(by_default.unwrap(), (want.clone(), Some(form)));
        }
        assert_eq!(
            identity_from_der_with(&der(&issued), TD, legacy).unwrap(),
            (want.clone(), Some(form))
        );
    }
}
