//! Verifications per second (ES256, EdDSA actor tokens) and full mTLS handshakes per second on
//! one core (in memory, TLS 1.3, dev-CA P-256 certificates, client certificate required).
//! Run: `cargo bench -p identity` (criterion prints `thrpt` in elements/s = operations/s).

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use identity::ActorIdentity;
use identity::devca::DevCa;
use identity::jwks::{JwksSource, KeySet};
use identity::keys::{encoding_key, generate_private_key_pem, jwks, public_jwk};
use identity::{Signer, Verifier, VerifierSettings};
use jsonwebtoken::Algorithm;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn verify(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let actor = ActorIdentity::new("team", "agent", Some("uid".into())).unwrap();
    let mut g = c.benchmark_group("verify_token");
    g.throughput(Throughput::Elements(1));
    for (name, alg) in [("es256", Algorithm::ES256), ("eddsa", Algorithm::EdDSA)] {
        let pem = generate_private_key_pem(alg).unwrap();
        let jwk = public_jwk(alg, "k", &encoding_key(alg, pem.as_bytes()).unwrap()).unwrap();
        let keys = rt
            .block_on(KeySet::load(
                JwksSource::Fixed(jwks(vec![jwk])),
                Duration::ZERO,
            ))
            .unwrap();
        let v = Verifier::new(
            keys,
            VerifierSettings {
                issuers: vec!["iss".into()],
                audience: "pep".into(),
                leeway: Duration::from_secs(5),
                max_lifetime: Duration::from_secs(3600),
            },
        );
        let token = Signer::from_pem(alg, "k", pem.as_bytes(), "iss")
            .unwrap()
            .actor_token(&actor, "pep", Duration::from_secs(3600))
            .unwrap();
        g.bench_function(name, |b| b.iter(|| rt.block_on(v.verify(&token)).unwrap()));
    }
    g.finish();
}

fn handshake(c: &mut Criterion) {
    let year = Duration::from_secs(365 * 24 * 3600);
    let ca = DevCa::generate("bench CA", year).unwrap();
    let server = ca.issue_server(&["pep.local".into()], &[], year).unwrap();
    let client = ca
        .issue_actor(
            identity::spiffe::DEFAULT_TRUST_DOMAIN,
            &ActorIdentity::new("team", "agent", None).unwrap(),
            true,
            year,
        )
        .unwrap();
    let certs = |pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect::<Vec<_>>()
    };
    let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs(ca.cert_pem())[0].clone()).unwrap();
    let roots = Arc::new(roots);
    let provider = identity::tls::provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .unwrap();
    let server_cfg = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs(&server.cert_pem), key(&server.key_pem))
            .unwrap(),
    );
    let client_cfg = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(certs(&client.cert_pem), key(&client.key_pem))
            .unwrap(),
    );
    let name = ServerName::try_from("pep.local").unwrap();
    let mut g = c.benchmark_group("mtls_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("tls13_p256_client_cert", |b| {
        b.iter(|| {
            let mut cl = rustls::ClientConnection::new(client_cfg.clone(), name.clone()).unwrap();
            let mut sv = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
            let mut buf = Vec::with_capacity(16 * 1024);
            while cl.is_handshaking() || sv.is_handshaking() {
                buf.clear();
                cl.write_tls(&mut buf).unwrap();
                if !buf.is_empty() {
                    sv.read_tls(&mut buf.as_slice()).unwrap();
                    sv.process_new_packets().unwrap();
                }
                buf.clear();
                sv.write_tls(&mut buf).unwrap();
                if !buf.is_empty() {
                    cl.read_tls(&mut buf.as_slice()).unwrap();
                    cl.process_new_packets().unwrap();
                }
            }
            // The server saw and verified the actor's certificate.
            assert!(sv.peer_certificates().is_some());
        })
    });
    g.finish();
}

criterion_group!(benches, verify, handshake);
criterion_main!(benches);
