//! `actorgate dev-ca` and `actorgate token`: the files they write work with openssl, with
//! actorgate's own verifier, and keys are private.

use std::path::Path;
use std::process::{Command, Output};

fn actorgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = actorgate(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn dev_ca_issues_certificates_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let certs = dir.path().join("certs");
    ok(&["dev-ca", "init", "--dir", s(&ca)]);
    let again = actorgate(&["dev-ca", "init", "--dir", s(&ca)]);
    assert_eq!(
        again.status.code(),
        Some(1),
        "an existing CA is not overwritten"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    ok(&[
        "dev-ca",
        "server",
        "--ca-dir",
        s(&ca),
        "--out",
        s(&certs),
        "--dns",
        "localhost",
        "--ip",
        "127.0.0.1",
    ]);
    ok(&[
        "dev-ca",
        "actor",
        "--ca-dir",
        s(&ca),
        "--out",
        s(&certs),
        "--actor",
        "demo/hello",
        "--uid",
        "u-1",
    ]);
    ok(&[
        "dev-ca",
        "component",
        "--ca-dir",
        s(&ca),
        "--out",
        s(&certs),
        "--namespace",
        "ate-system",
        "--service-account",
        "pep",
    ]);
    for leaf in ["server.crt", "demo.hello.crt", "ate-system.pep.crt"] {
        let out = Command::new("openssl")
            .args([
                "verify",
                "-CAfile",
                s(&ca.join("ca.crt")),
                s(&certs.join(leaf)),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{leaf}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The actor certificate carries the SPIFFE ID and the upstream extension identity reads.
    let pem = std::fs::read(certs.join("demo.hello.crt")).unwrap();
    let der = {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap()
    };
    let id = identity::cert::actor_from_der(&der, identity::spiffe::DEFAULT_TRUST_DOMAIN).unwrap();
    let (_, form) = identity::cert::identity_from_der_with(
        &der,
        identity::spiffe::DEFAULT_TRUST_DOMAIN,
        identity::spiffe::SpiffeOptions::default(),
    )
    .unwrap();
    assert_eq!(form, Some(identity::spiffe::ActorIdForm::AteomForActor));
    assert_eq!(
        (id.atespace.as_str(), id.name.as_str(), id.uid.as_deref()),
        ("demo", "hello", Some("u-1"))
    );
    #[cfg(unix)]
    for key in [
        ca.join("ca.key"),
        certs.join("server.key"),
        certs.join("demo.hello.key"),
        certs.join("ate-system.pep.key"),
    ] {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600,
            "{key:?}"
        );
    }
    let bad = actorgate(&[
        "dev-ca",
        "actor",
        "--ca-dir",
        s(&ca),
        "--actor",
        "Not_Valid/x",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let line = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.starts_with("actorgate: --actor \"Not_Valid/x\""),
        "{line}"
    );
}

#[test]
fn token_keygen_mint_and_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let jwt = dir.path().join("jwt");
    for (kid, alg) in [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")] {
        ok(&[
            "token",
            "keygen",
            "--alg",
            alg,
            "--kid",
            kid,
            "--out",
            s(&jwt),
        ]);
    }
    let jwks = jwt.join("jwks.json");
    #[cfg(unix)]
    for kid in ["es", "ed", "rs"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(jwt.join(format!("{kid}.key")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let again = actorgate(&["token", "keygen", "--kid", "es", "--out", s(&jwt)]);
    assert!(
        !again.status.success(),
        "an existing key is not replaced without --force"
    );
    let set: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwks).unwrap()).unwrap();
    assert_eq!(
        set["keys"].as_array().unwrap().len(),
        3,
        "keygen adds to one JWKS"
    );
    for (kid, alg) in [("es", "ES256"), ("ed", "EdDSA"), ("rs", "RS256")] {
        let key = jwt.join(format!("{kid}.key"));
        let token = ok(&[
            "token",
            "mint",
            "--key",
            s(&key),
            "--kid",
            kid,
            "--alg",
            alg,
            "--issuer",
            "https://iss",
            "--audience",
            "pep",
            "--actor",
            "demo/hello",
            "--ttl",
            "2m",
        ]);
        let claims = ok(&[
            "token",
            "verify",
            "--jwks",
            s(&jwks),
            "--issuer",
            "https://iss",
            "--audience",
            "pep",
            token.trim(),
        ]);
        let c: serde_json::Value = serde_json::from_str(&claims).unwrap();
        assert_eq!(c["sub"], "actor/demo/hello", "{alg}");
        assert_eq!(
            c["nbf"].as_u64().unwrap() + 300,
            c["iat"].as_u64().unwrap(),
            "{alg}"
        );
        assert_eq!(c["ate.dev"]["actorName"], "hello");
        let wrong = actorgate(&[
            "token",
            "verify",
            "--jwks",
            s(&jwks),
            "--issuer",
            "https://iss",
            "--audience",
            "other",
            token.trim(),
        ]);
        assert!(!wrong.status.success());
        assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong audience"));
    }
    let assertion = ok(&[
        "token",
        "mint-assertion",
        "--key",
        s(&jwt.join("es.key")),
        "--kid",
        "es",
        "--issuer",
        "https://iss",
        "--audience",
        "pep",
        "--actor",
        "demo/hello",
        "--dst",
        "93.184.216.34:443",
    ]);
    let c = ok(&[
        "token",
        "verify",
        "--jwks",
        s(&jwks),
        "--issuer",
        "https://iss",
        "--audience",
        "pep",
        "--max-lifetime",
        "60s",
        "--dst",
        "93.184.216.34:443",
        assertion.trim(),
    ]);
    assert!(c.contains("\"dst\": \"93.184.216.34:443\""));
    let mismatch = actorgate(&[
        "token",
        "verify",
        "--jwks",
        s(&jwks),
        "--issuer",
        "https://iss",
        "--audience",
        "pep",
        "--dst",
        "93.184.216.34:80",
        assertion.trim(),
    ]);
    assert!(String::from_utf8_lossy(&mismatch.stderr).contains("does not match the destination"));
}

#[test]
fn dev_ca_intercept_ca_writes_a_ca_the_pep_minter_loads() {
    let dir = tempfile::tempdir().unwrap();
    ok(&["dev-ca", "intercept-ca", "--dir", s(dir.path())]);
    assert!(dir.path().join("intercept-ca.crt").exists());
    let again = actorgate(&["dev-ca", "intercept-ca", "--dir", s(dir.path())]);
    assert_eq!(again.status.code(), Some(1), "not overwritten");
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("intercept-ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key is private");
    }
    let ca = egress_pep::intercept_ca::InterceptCa::load(
        &dir.path().join("intercept-ca.crt"),
        &dir.path().join("intercept-ca.key"),
    );
    assert!(ca.is_ok(), "{ca:?}");
}
