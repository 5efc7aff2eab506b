//! Issue 10: the control-plane client's TLS material rotates like everything else. The client's
//! certificate and key are replaced on disk while the client runs; the next connection it opens
//! presents the new certificate to the (fake) ate-api-server, with no restart.

use std::path::Path;
use std::time::Duration;

use identity::devca::{DevCa, Issued};
use routing_core::ActorDirectory;
use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings, TlsMode};
use routing_core::testing::{FakeControlPlane, within};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

/// The leaf certificate of `issued`, DER, as a TLS server sees it.
fn der(issued: &Issued) -> Vec<u8> {
    CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .expect("certificate PEM")
        .as_ref()
        .to_vec()
}

fn router_certificate(ca: &DevCa) -> Issued {
    ca.issue_component(
        identity::spiffe::DEFAULT_TRUST_DOMAIN,
        "ate-system",
        "router",
        &[],
        &[],
        YEAR,
    )
    .expect("router certificate")
}

fn mtls_settings(fake: &FakeControlPlane, dir: &Path) -> AteApiSettings {
    AteApiSettings {
        address: fake.addr.to_string(),
        tls: TlsMode::Mtls,
        ca_file: Some(dir.join("ca.crt")),
        cert_file: Some(dir.join("router.crt")),
        key_file: Some(dir.join("router.key")),
        server_name: Some("localhost".into()),
        token_file: None,
        connect_timeout: Duration::from_secs(2),
        rpc_timeout: Duration::from_secs(5),
    }
}

/// Which of `certs` each connection the fake accepted presented (index; `None`: another one).
fn seen(fake: &FakeControlPlane, certs: &[&[u8]]) -> Vec<Option<usize>> {
    fake.connections()
        .iter()
        .map(|c| {
            c.client_certificate
                .as_deref()
                .and_then(|got| certs.iter().position(|want| *want == got))
        })
        .collect()
}

#[tokio::test]
async fn a_rotated_client_certificate_is_presented_on_the_next_connection() {
    let pki = tempfile::tempdir().expect("tempdir");
    let ca = DevCa::generate("ateapi rotation test CA", YEAR).expect("CA");
    ca.write_dir(pki.path()).expect("write CA");
    let server = ca
        .issue_server(&["localhost".into()], &[], YEAR)
        .expect("server certificate");
    let first = router_certificate(&ca);
    first.write(pki.path(), "router").expect("write first");
    let fake =
        FakeControlPlane::start_tls(&server.cert_pem, &server.key_pem, Some(ca.cert_pem())).await;
    let dir = AteApiDirectory::new(&mtls_settings(&fake, pki.path())).expect("client");

    within("call with the first certificate", dir.health())
        .await
        .expect("mTLS with the first certificate");
    let old = der(&first);
    assert_eq!(
        seen(&fake, &[&old]),
        [Some(0)],
        "one connection, first certificate"
    );

    // Rotate: same identity, new key and serial; each file replaced atomically (rename).
    let second = router_certificate(&ca);
    let new = der(&second);
    assert_ne!(old, new);
    let reloader = dir.tls_reloader().expect("mTLS files are watched").clone();
    let mut attempts = reloader.attempts();
    second.write(pki.path(), "router").expect("write second");

    // The established connection keeps the certificate it was opened with; make the client
    // reconnect (GOAWAY) until a new connection shows the new certificate. Until the watch has
    // reloaded the files, each retry waits for the next reload attempt; after it, a retry is
    // only needed when the client had not yet seen the GOAWAY.
    within("a connection with the new certificate", async {
        loop {
            fake.go_away();
            let _ = dir.health().await;
            if seen(&fake, &[&old, &new]).contains(&Some(1)) {
                break;
            }
            let status = reloader.status();
            if status.reloads == 0 || status.last_error.is_some() {
                attempts.changed().await.expect("the reloader is alive");
            }
        }
    })
    .await;

    // From then on calls work, and the connections presented the old certificate until the
    // first one with the new certificate, and only the new one after it.
    within("call with the new certificate", dir.health())
        .await
        .expect("calls work with the new certificate");
    let order = seen(&fake, &[&old, &new]);
    let switch = order
        .iter()
        .position(|c| *c == Some(1))
        .expect("a connection with the new certificate");
    assert!(
        order[..switch].iter().all(|c| *c == Some(0))
            && order[switch..].iter().all(|c| *c == Some(1)),
        "old certificate, then only the new one: {order:?}"
    );
    let status = dir.connection().expect("connection status");
    assert!(status.ever_connected, "{status:?}");
}
