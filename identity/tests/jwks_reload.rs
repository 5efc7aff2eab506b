//! A JWKS file follows its edits through the runtime's reload helper: a key added to the file
//! verifies without a restart (and without an unknown-`kid` refresh), a broken edit keeps the
//! previous keys and reports why, and the TLS configs report their reloads the same way.

use std::sync::Arc;
use std::time::Duration;

use identity::jwks::{JwksSource, KeySet};
use identity::testing::*;
use identity::tls::{ClientAuth, ReloadableServerConfig, ServerTlsFiles};
use identity::token::TokenError;
use identity::{ActorIdentity, Verifier, VerifierSettings};
use jsonwebtoken::Algorithm;

fn actor() -> ActorIdentity {
    ActorIdentity::new("team-a", "agent-7", Some("uid-7".into())).expect("a valid actor")
}

fn token(key: &TestKey) -> String {
    key.signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
        .expect("sign a test token")
}

#[tokio::test]
async fn a_jwks_file_edit_applies_without_restart_and_a_broken_one_keeps_the_keys() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jwks.json");
    let k1 = TestKey::new(Algorithm::ES256, "k1");
    let k2 = TestKey::new(Algorithm::EdDSA, "k2");
    write_jwks(&path, &[&k1]);
    // Unknown-kid refreshes at most once an hour: only the file watch can bring k2 in.
    let keys = KeySet::load(JwksSource::File(path.clone()), Duration::from_secs(3600))
        .await
        .expect("load the JWKS file");
    let verifier = Verifier::new(
        keys.clone(),
        VerifierSettings {
            issuers: vec![ISSUER.into()],
            audience: AUDIENCE.into(),
            leeway: Duration::from_secs(5),
            max_lifetime: Duration::from_secs(3600),
        },
    );
    let reloader = keys
        .file_reloader()
        .expect("a JWKS file is watched")
        .clone();
    // The one refresh the rate limit allows is spent on k2 before it exists.
    assert_eq!(
        verifier.verify(&token(&k2)).await.unwrap_err(),
        TokenError::UnknownKid("k2".into())
    );

    write_jwks(&path, &[&k1, &k2]);
    wait_for_reload(&reloader, "k2 from the edited file", || {
        keys.get("k2").is_some()
    })
    .await;
    assert_eq!(
        verifier
            .verify(&token(&k2))
            .await
            .expect("k2 verifies")
            .actor,
        actor()
    );
    assert_eq!((keys.status().keys, keys.status().last_error), (2, None));

    std::fs::write(&path, "{not json").expect("break the JWKS file");
    wait_for_reload(&reloader, "the broken edit to be reported", || {
        keys.status().last_error.is_some()
    })
    .await;
    let error = keys.status().last_error.expect("an error");
    assert!(error.starts_with("invalid JWKS:"), "{error}");
    let status = reloader.status();
    assert_eq!(status.last_error.as_deref(), Some(error.as_str()));
    assert!(status.failures >= 1, "{status:?}");
    assert_eq!(keys.status().keys, 2, "the previous keys stay");
    for key in [&k1, &k2] {
        assert_eq!(
            verifier
                .verify(&token(key))
                .await
                .expect("the previous keys still verify")
                .actor,
            actor()
        );
    }

    // A later good edit clears the error and drops k1.
    write_jwks(&path, &[&k2]);
    wait_for_reload(&reloader, "the repaired file", || {
        keys.status().last_error.is_none() && keys.get("k1").is_none()
    })
    .await;
    assert_eq!(reloader.status().last_error, None);
}

#[tokio::test]
async fn a_refresh_of_a_keyless_file_keeps_the_key_and_reports_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("jwks.json");
    let k1 = TestKey::new(Algorithm::ES256, "k1");
    write_jwks(&path, &[&k1]);
    let keys: Arc<KeySet> = KeySet::load(JwksSource::File(path.clone()), Duration::ZERO)
        .await
        .expect("load the JWKS file");
    std::fs::write(&path, "{\"keys\": []}").expect("empty the JWKS file");
    let err = keys.refresh().await.expect_err("no usable key");
    assert_eq!(err.to_string(), "JWKS has no usable signing keys");
    assert_eq!(
        keys.status().last_error.as_deref(),
        Some("JWKS has no usable signing keys")
    );
    assert!(keys.get("k1").is_some(), "the previous key stays");
}

#[tokio::test]
async fn a_tls_reload_failure_is_typed_and_in_the_status() {
    let pki = TestPki::new();
    let (cert, key) = pki.localhost_server("server");
    let tls = ReloadableServerConfig::server(ServerTlsFiles {
        cert_file: cert.clone(),
        key_file: key,
        client_ca_file: None,
        client_auth: ClientAuth::None,
        client_trust_domain: None,
        alpn: vec![],
    })
    .expect("load the server TLS files");
    assert_eq!(tls.status(), Default::default(), "nothing reloaded yet");
    let before = tls.current();

    std::fs::write(&cert, "not a certificate").expect("break the certificate");
    let err = tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || tls.reload()
    })
    .await
    .expect("the reload ran")
    .expect_err("a broken certificate is refused");
    assert!(
        matches!(err, identity::tls::TlsError::Pem(_)),
        "a PEM error, not only its text: {err:?}"
    );
    let status = tls.status();
    assert_eq!((status.reloads, status.failures), (0, 1));
    assert_eq!(status.last_error, Some(err.to_string()));
    assert_eq!(tls.last_error(), Some(err.to_string()));
    assert!(
        Arc::ptr_eq(&before, &tls.current()),
        "the previous config stays"
    );

    pki.localhost_server("server");
    tokio::task::spawn_blocking({
        let tls = tls.clone();
        move || tls.reload()
    })
    .await
    .expect("the reload ran")
    .expect("the new certificate loads");
    let status = tls.status();
    assert_eq!((status.reloads, status.last_error), (1, None));
    assert!(!Arc::ptr_eq(&before, &tls.current()));
}
