//! Interception building blocks (issue 12), with real TLS: the interception CA and its leaf
//! minter (leaves for the SNI, DNS or IP SAN, signed by the CA, server-auth, within the
//! lifetime; one mint for many concurrent first requests; a rotated CA on disk applies to the
//! next leaf; a broken CA is refused with the reason and keeps the previous one), terminating an
//! actor's TLS with that leaf (ALPN, no SNI refused, deadline), and re-originated TLS verified
//! against system and extra roots (invalid certificates told apart).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use egress_pep::intercept_ca::{InterceptCa, InterceptCaError, LeafMinter, MinterSettings};
use identity::devca::DevCa;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

const BOUND: Duration = Duration::from_secs(5);

fn write_ca(dir: &Path, cn: &str) -> DevCa {
    let ca = DevCa::generate(cn, Duration::from_secs(3600)).expect("CA");
    ca.write_dir(dir).expect("write CA");
    ca
}

fn files(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// Verifies `leaf` as a server certificate for `name` against `ca_pem` only.
fn verify(leaf: &CertifiedKey, ca_pem: &str, name: &str) -> Result<(), rustls::Error> {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), identity::tls::provider())
            .build()
            .expect("verifier");
    let name = ServerName::try_from(name.to_owned()).expect("server name");
    verifier
        .verify_server_cert(&leaf.cert[0], &leaf.cert[1..], &name, &[], UnixTime::now())
        .map(|_| ())
}

#[tokio::test]
async fn a_leaf_is_for_the_sni_signed_by_the_ca_and_short_lived() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "interception test CA");
    let (c, k) = files(dir.path());
    let settings = MinterSettings {
        lifetime: Duration::from_secs(600),
        ..MinterSettings::default()
    };
    let minter = LeafMinter::new(c, k, settings).expect("minter");

    let leaf = minter.leaf("API.Example.com.").await.expect("leaf");
    verify(&leaf, ca.cert_pem(), "api.example.com").expect("chains to the CA for the SNI");
    let other = verify(&leaf, ca.cert_pem(), "other.example.com");
    assert!(other.is_err(), "the leaf covers only its name: {other:?}");
    assert_eq!(leaf.cert.len(), 2, "leaf and CA are sent");

    let (_, parsed) = X509Certificate::from_der(leaf.cert[0].as_ref()).unwrap();
    let not_after = parsed.validity().not_after.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        not_after <= now + 600 && not_after > now + 590,
        "expires within the lifetime: {} s from now",
        not_after - now
    );
    let eku = parsed.extended_key_usage().unwrap().expect("EKU").value;
    assert!(eku.server_auth && !eku.client_auth, "server-auth only");
    assert!(!parsed.is_ca());

    // An IP-literal SNI gets an IP SAN.
    let ip = minter.leaf("127.0.0.9").await.expect("ip leaf");
    verify(&ip, ca.cert_pem(), "127.0.0.9").expect("IP SAN");
    // Each name its own key.
    assert_ne!(
        leaf.cert[0].as_ref(),
        ip.cert[0].as_ref(),
        "different certificates"
    );
    let key = |k: &CertifiedKey| {
        let (_, p) = X509Certificate::from_der(k.cert[0].as_ref()).unwrap();
        p.public_key().subject_public_key.data.to_vec()
    };
    assert_ne!(key(&leaf), key(&ip), "a key per leaf");

    // Cached: the same leaf again, nothing minted.
    let again = minter.leaf("api.example.com").await.expect("leaf");
    assert!(Arc::ptr_eq(&leaf, &again));
    assert_eq!(minter.minted(), 2);

    // A name no certificate can carry.
    for name in ["bad name!", "", "*.example.com", "a..b"] {
        let bad = minter.leaf(name).await;
        assert!(
            matches!(bad, Err(InterceptCaError::BadName(_))),
            "{name:?}: {bad:?}"
        );
    }
    assert_eq!(minter.minted(), 2, "refusals mint nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_first_requests_mint_one_leaf() {
    let dir = tempfile::tempdir().unwrap();
    write_ca(dir.path(), "interception test CA");
    let (c, k) = files(dir.path());
    let minter = Arc::new(LeafMinter::new(c, k, MinterSettings::default()).expect("minter"));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let m = minter.clone();
            tokio::spawn(async move { m.leaf("new.example.com").await.expect("leaf") })
        })
        .collect();
    let mut leaves = Vec::new();
    for t in tasks {
        leaves.push(t.await.unwrap());
    }
    assert_eq!(minter.minted(), 1, "one mint for 200 concurrent callers");
    assert!(leaves.iter().all(|l| Arc::ptr_eq(l, &leaves[0])));
}

#[tokio::test]
async fn a_rotated_ca_signs_the_next_leaves_and_a_broken_one_is_kept_out() {
    let dir = tempfile::tempdir().unwrap();
    let old = write_ca(dir.path(), "old CA");
    let (c, k) = files(dir.path());
    let minter = LeafMinter::new(c.clone(), k.clone(), MinterSettings::default()).expect("minter");
    let before = minter.leaf("svc.example.com").await.expect("leaf");
    verify(&before, old.cert_pem(), "svc.example.com").expect("old CA");

    // The same CA written again: nothing changes, the cached leaf is kept.
    old.write_dir(dir.path()).unwrap();
    minter.reload().expect("reload");
    let same = minter.leaf("svc.example.com").await.expect("leaf");
    assert!(Arc::ptr_eq(&before, &same), "unchanged CA keeps its leaves");
    assert_eq!(minter.minted(), 1);

    let new = write_ca(dir.path(), "new CA");
    minter.reload().expect("reload");
    let after = minter.leaf("svc.example.com").await.expect("leaf");
    verify(&after, new.cert_pem(), "svc.example.com").expect("chains to the new CA");
    assert!(verify(&after, old.cert_pem(), "svc.example.com").is_err());
    assert_eq!(
        minter.minted(),
        2,
        "the rotated CA mints anew for a cached name"
    );

    // A key that does not belong to the certificate: refused, the new CA stays.
    let stranger = DevCa::generate("stranger", Duration::from_secs(3600)).unwrap();
    let stranger_dir = tempfile::tempdir().unwrap();
    stranger.write_dir(stranger_dir.path()).unwrap();
    std::fs::copy(stranger_dir.path().join("ca.key"), &k).unwrap();
    let err = minter.reload().expect_err("mismatched key refused");
    assert!(err.contains("does not belong"), "{err}");
    assert!(minter.status().last_error.is_some(), "shows in status");
    let still = minter.leaf("other.example.com").await.expect("leaf");
    verify(&still, new.cert_pem(), "other.example.com").expect("previous CA kept");
}

#[test]
fn a_certificate_that_is_not_a_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "CA");
    let server = ca
        .issue_server(&["pep.local".to_owned()], &[], Duration::from_secs(3600))
        .expect("server cert");
    let err = InterceptCa::from_pem(&server.cert_pem, &server.key_pem).expect_err("not a CA");
    assert!(err.to_string().contains("not a CA"), "{err}");
    let missing = InterceptCa::load(&dir.path().join("nope.crt"), &dir.path().join("ca.key"))
        .expect_err("missing file");
    assert!(missing.to_string().contains("nope.crt"), "{missing}");
}

/// A rustls client trusting only `ca_pem`, offering `alpn`.
fn client(ca_pem: &str, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test]
async fn the_pep_terminates_with_the_leaf_for_the_sni_and_agrees_on_alpn() {
    use egress_pep::intercept_tls::{TerminateError, Terminator};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "interception test CA");
    let (c, k) = files(dir.path());
    let minter = Arc::new(LeafMinter::new(c, k, MinterSettings::default()).expect("minter"));
    let terminator = Arc::new(Terminator::new(minter.clone()));

    for (alpn, want_h2) in [
        (&[b"h2".as_slice(), b"http/1.1"][..], true),
        (&[b"http/1.1".as_slice()][..], false),
        (&[][..], false),
    ] {
        let (actor, pep) = tokio::io::duplex(64 * 1024);
        let t = terminator.clone();
        let server = tokio::spawn(async move {
            let mut done = t
                .terminate(pep, Some("api.example.com."), Duration::from_secs(5))
                .await
                .expect("terminate");
            let mut buf = [0u8; 5];
            done.stream.read_exact(&mut buf).await.unwrap();
            done.stream.write_all(b"world").await.unwrap();
            done.stream.flush().await.unwrap();
            (done.sni, done.h2, buf)
        });
        let name = ServerName::try_from("API.example.com").unwrap();
        let mut tls = client(ca.cert_pem(), alpn)
            .connect(name, actor)
            .await
            .expect("the actor trusts the leaf");
        tls.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        tls.read_exact(&mut back).await.unwrap();
        let (sni, h2, got) = server.await.unwrap();
        assert_eq!(
            (sni.as_str(), h2, &got, &back),
            ("api.example.com", want_h2, b"hello", b"world")
        );
        let negotiated = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        assert_eq!(
            negotiated.as_deref() == Some(b"h2".as_slice()),
            want_h2,
            "{alpn:?}"
        );
    }
    assert_eq!(
        minter.minted(),
        1,
        "one leaf for the name across connections"
    );

    // No SNI (rustls sends none for an IP address): refused before any leaf is minted.
    let (actor, pep) = tokio::io::duplex(64 * 1024);
    let t = terminator.clone();
    let server = tokio::spawn(async move {
        t.terminate(pep, None, Duration::from_secs(5))
            .await
            .map(|_| ())
    });
    let ip = ServerName::try_from("127.0.0.1").unwrap();
    let refused = client(ca.cert_pem(), &[]).connect(ip, actor).await;
    assert!(refused.is_err(), "the actor's handshake fails");
    assert!(matches!(server.await.unwrap(), Err(TerminateError::NoSni)));
    assert_eq!(minter.minted(), 1);

    // rustls reads another SNI than the one policy decided on: refused, nothing minted.
    let (actor, pep) = tokio::io::duplex(64 * 1024);
    let t = terminator.clone();
    let server = tokio::spawn(async move {
        t.terminate(pep, Some("api.example.com"), Duration::from_secs(5))
            .await
            .map(|_| ())
    });
    let other = ServerName::try_from("other.example.com").unwrap();
    assert!(
        client(ca.cert_pem(), &[])
            .connect(other, actor)
            .await
            .is_err()
    );
    assert!(matches!(
        server.await.unwrap(),
        Err(TerminateError::SniMismatch)
    ));
    assert_eq!(minter.minted(), 1);

    // An actor that does not trust the interception CA, and one that offers no HTTP ALPN.
    let stranger = DevCa::generate("stranger", Duration::from_secs(3600)).unwrap();
    for (trusts, alpn, want) in [
        (stranger.cert_pem(), &[b"h2".as_slice()][..], "CaNotTrusted"),
        (ca.cert_pem(), &[b"imap".as_slice()][..], "NotHttp"),
    ] {
        let (actor, pep) = tokio::io::duplex(64 * 1024);
        let t = terminator.clone();
        let server = tokio::spawn(async move {
            t.terminate(pep, None, Duration::from_secs(5))
                .await
                .map(|_| ())
        });
        let name = ServerName::try_from("api.example.com").unwrap();
        let _ = client(trusts, alpn).connect(name, actor).await;
        let got = server.await.unwrap();
        let ok = match want {
            "CaNotTrusted" => matches!(got, Err(TerminateError::CaNotTrusted)),
            _ => matches!(got, Err(TerminateError::NotHttp)),
        };
        assert!(ok, "{want}: {got:?}");
    }

    // Silence: the handshake deadline holds.
    let (_actor, pep) = tokio::io::duplex(1024);
    let r = terminator
        .terminate(pep, None, Duration::from_millis(100))
        .await
        .map(|_| ());
    assert!(matches!(r, Err(TerminateError::Timeout)), "{r:?}");
}

/// A TLS server on loopback presenting a certificate for `upstream.test` from `ca`; answers
/// each connection's first 5 bytes with "pong!" and reports the ALPN it agreed.
async fn upstream_server(
    ca: &DevCa,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Option<Vec<u8>>>,
) {
    upstream_server_alpn(ca, &[b"h2", b"http/1.1"]).await
}

/// As [`upstream_server`], agreeing only to `alpn`.
async fn upstream_server_alpn(
    ca: &DevCa,
    alpn: &[&[u8]],
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<Option<Vec<u8>>>,
) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let issued = ca
        .issue_server(
            &["upstream.test".to_owned()],
            &[],
            Duration::from_secs(3600),
        )
        .unwrap();
    let certs: Vec<_> = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.ok()?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let mut buf = [0u8; 5];
        tls.read_exact(&mut buf).await.ok()?;
        tls.write_all(b"pong!").await.ok()?;
        tls.flush().await.ok()?;
        alpn
    });
    (addr, task)
}

#[tokio::test]
async fn re_originated_tls_verifies_the_name_against_system_and_extra_roots() {
    use egress_pep::intercept_upstream::{UpstreamAlpn, UpstreamTls, UpstreamTlsError};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let trusted = write_ca(&dir.path().join("trusted"), "upstream test CA");
    let untrusted = DevCa::generate("unknown CA", Duration::from_secs(3600)).unwrap();
    let tls = UpstreamTls::new(true, &[dir.path().join("trusted/ca.crt")]).expect("roots");
    let extra_only = UpstreamTls::new(false, &[dir.path().join("trusted/ca.crt")]).expect("roots");
    assert_eq!(extra_only.roots(), 1);
    assert!(
        tls.roots() >= extra_only.roots(),
        "system roots and the extra CA"
    );

    for (alpn, want) in [
        (UpstreamAlpn::H2, b"h2".as_slice()),
        (UpstreamAlpn::Http1, b"http/1.1"),
    ] {
        let (addr, server) = upstream_server(&trusted).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut s = tls
            .connect(tcp, "upstream.test", alpn, BOUND)
            .await
            .expect("verified");
        s.write_all(b"ping!").await.unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong!");
        assert_eq!(
            server.await.unwrap().as_deref(),
            Some(want),
            "only {alpn:?} offered"
        );
    }

    // A server whose certificate comes from a CA nobody listed; the right CA, the wrong name.
    for (ca, name) in [(&untrusted, "upstream.test"), (&trusted, "other.test")] {
        let (addr, _server) = upstream_server(ca).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let r = tls.connect(tcp, name, UpstreamAlpn::Http1, BOUND).await;
        let invalid = matches!(r, Err(UpstreamTlsError::CertificateInvalid(_)));
        assert!(invalid, "{name}: {:?}", r.err());
    }

    // h2 asked for, the server knows only http/1.1 (it refuses the offer) or no ALPN at all
    // (it completes without one): NoH2 either way, never an h2 preface to an HTTP/1.1 server.
    for alpn in [&[b"http/1.1".as_slice()][..], &[][..]] {
        let (addr, _server) = upstream_server_alpn(&trusted, alpn).await;
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let r = tls
            .connect(tcp, "upstream.test", UpstreamAlpn::H2, BOUND)
            .await;
        assert!(
            matches!(r, Err(UpstreamTlsError::NoH2)),
            "{alpn:?}: {:?}",
            r.err()
        );
    }

    // A server that speaks no TLS: a handshake failure, not a certificate one.
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = plain.accept().await.unwrap();
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    });
    let tcp = tokio::net::TcpStream::connect(plain_addr).await.unwrap();
    let r = tls
        .connect(tcp, "upstream.test", UpstreamAlpn::Http1, BOUND)
        .await;
    assert!(
        matches!(r, Err(UpstreamTlsError::Handshake(_))),
        "{:?}",
        r.err()
    );

    // A server that never answers: the deadline holds.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpStream::connect(silent.local_addr().unwrap())
        .await
        .unwrap();
    let r = tls
        .connect(
            tcp,
            "upstream.test",
            UpstreamAlpn::Http1,
            Duration::from_millis(200),
        )
        .await;
    assert!(matches!(r, Err(UpstreamTlsError::Timeout)), "{:?}", r.err());

    // Config mistakes name the file.
    let missing = UpstreamTls::new(false, &[dir.path().join("nope.pem")])
        .err()
        .expect("missing");
    assert!(missing.to_string().contains("nope.pem"), "{missing}");
    std::fs::write(dir.path().join("empty.pem"), "").unwrap();
    let empty = UpstreamTls::new(false, &[dir.path().join("empty.pem")])
        .err()
        .expect("empty");
    assert!(empty.to_string().contains("no certificate"), "{empty}");
    assert!(matches!(
        UpstreamTls::new(false, &[]),
        Err(UpstreamTlsError::NoRoots)
    ));
}

#[test]
fn minter_settings_and_ca_files_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "CA");
    let (c, k) = files(dir.path());
    for (settings, want) in [
        (
            MinterSettings {
                lifetime: Duration::from_secs(10),
                ..MinterSettings::default()
            },
            "lifetime",
        ),
        (
            MinterSettings {
                lifetime: Duration::from_secs(30 * 24 * 3600),
                ..MinterSettings::default()
            },
            "lifetime",
        ),
        (
            MinterSettings {
                renew_before: Duration::from_secs(15 * 60),
                ..MinterSettings::default()
            },
            "renew_before",
        ),
        (
            MinterSettings {
                max_entries: 0,
                ..MinterSettings::default()
            },
            "max_entries",
        ),
        (
            MinterSettings {
                max_concurrent_mints: 0,
                ..MinterSettings::default()
            },
            "max_concurrent_mints",
        ),
    ] {
        let err = LeafMinter::new(c.clone(), k.clone(), settings)
            .err()
            .expect("refused");
        assert!(err.to_string().contains(want), "{want}: {err}");
    }
    // A CA file with a second certificate (a chain) is refused: leaves carry their CA only.
    let other = DevCa::generate("other", Duration::from_secs(3600)).unwrap();
    let chain = format!("{}{}", ca.cert_pem(), other.cert_pem());
    let key = std::fs::read_to_string(&k).unwrap();
    let err = InterceptCa::from_pem(&chain, &key).expect_err("two certificates");
    assert!(err.to_string().contains("2 certificates"), "{err}");
}

#[tokio::test]
async fn leaves_name_their_issuer_key_for_rotation_overlaps() {
    let dir = tempfile::tempdir().unwrap();
    write_ca(dir.path(), "CA");
    let (c, k) = files(dir.path());
    let minter = LeafMinter::new(c, k, MinterSettings::default()).expect("minter");
    let leaf = minter.leaf("svc.example.com").await.expect("leaf");
    let (_, parsed) = X509Certificate::from_der(leaf.cert[0].as_ref()).unwrap();
    let (_, ca) = X509Certificate::from_der(leaf.cert[1].as_ref()).unwrap();
    let aki = parsed
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                a.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("authority key identifier");
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("CA subject key identifier");
    assert_eq!(aki, ski, "the leaf's AKI is its CA's SKI");
}

#[tokio::test]
async fn an_actors_next_connection_to_a_name_resumes_its_session() {
    use egress_pep::intercept_tls::Terminator;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "interception test CA");
    let (c, k) = files(dir.path());
    let minter = Arc::new(LeafMinter::new(c, k, MinterSettings::default()).expect("minter"));
    let terminator = Arc::new(Terminator::new(minter));
    let connector = client(ca.cert_pem(), &[b"http/1.1"]);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let (actor, pep) = tokio::io::duplex(64 * 1024);
        let t = terminator.clone();
        let server = tokio::spawn(async move {
            let mut done = t.terminate(pep, None, BOUND).await.expect("terminate");
            done.stream.write_all(b"hi").await.unwrap();
            done.stream.flush().await.unwrap();
            let mut rest = Vec::new();
            let _ = done.stream.read_to_end(&mut rest).await;
        });
        let name = ServerName::try_from("svc.example.com").unwrap();
        let mut tls = connector.connect(name, actor).await.expect("handshake");
        // Reading takes in the session tickets sent after the handshake.
        let mut hi = [0u8; 2];
        tls.read_exact(&mut hi).await.unwrap();
        kinds.push(tls.get_ref().1.handshake_kind());
        tls.shutdown().await.unwrap();
        drop(tls);
        server.await.unwrap();
    }
    assert_eq!(
        kinds,
        vec![
            Some(rustls::HandshakeKind::Full),
            Some(rustls::HandshakeKind::Resumed)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_names_at_once_are_all_minted_with_a_mint_bound_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path(), "CA");
    let (c, k) = files(dir.path());
    let settings = MinterSettings {
        max_concurrent_mints: 1,
        ..MinterSettings::default()
    };
    let minter = Arc::new(LeafMinter::new(c, k, settings).expect("minter"));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let m = minter.clone();
            tokio::spawn(async move { (i, m.leaf(&format!("n{i}.example.com")).await) })
        })
        .collect();
    for t in tasks {
        let (i, leaf) = t.await.unwrap();
        let leaf = leaf.expect("leaf");
        verify(&leaf, ca.cert_pem(), &format!("n{i}.example.com")).expect("its own name");
    }
    assert_eq!(minter.minted(), 50);
}
