//! Actor token verification: each refusal of DESIGN §6 in its own test, and JWKS rotation.

use std::time::Duration;

use base64::Engine;
use identity::testing::*;
use identity::token::{Claims, MAX_TOKEN_BYTES, TokenError, now_secs};
use identity::{ActorIdentity, Verifier};
use jsonwebtoken::{Algorithm, EncodingKey, Header};

const HOUR: Duration = Duration::from_secs(3600);

fn actor() -> ActorIdentity {
    ActorIdentity::new("team-a", "agent-7", Some("uid-7".into())).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    jwks_path: std::path::PathBuf,
    key: TestKey,
    verifier: Verifier,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    let key = TestKey::new(Algorithm::ES256, "k1");
    write_jwks(&jwks_path, &[&key]);
    let verifier = verifier_for(&jwks_path, HOUR).await;
    Setup {
        _dir: dir,
        jwks_path,
        key,
        verifier,
    }
}

/// A valid actor token for [`actor`] signed with `key`, living 60 s.
fn minted(key: &TestKey) -> String {
    key.signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
        .unwrap()
}

/// Why the setup's verifier refuses `token`; panics when it accepts it.
async fn refusal(s: &Setup, token: &str) -> TokenError {
    s.verifier
        .verify(token)
        .await
        .expect_err("the token must be refused")
}

fn claims(s: &Setup) -> Claims {
    s.key
        .signer()
        .claims(&actor(), AUDIENCE, Duration::from_secs(300))
}

#[tokio::test]
async fn a_valid_token_yields_the_actor() {
    let s = setup().await;
    let token = s
        .key
        .signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(300))
        .unwrap();
    let v = s.verifier.verify(&token).await.unwrap();
    assert_eq!(v.actor, actor());
    assert_eq!(v.claims.sub, "actor/team-a/agent-7");
    assert_eq!(
        v.claims.nbf + 300,
        v.claims.iat,
        "nbf is backdated 5 minutes"
    );
    assert_eq!(v.claims.ate.actor_uid, "uid-7");
}

#[tokio::test]
async fn rs384_and_rs512_tokens_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let rs384 = TestKey::new(Algorithm::RS384, "rs384");
    let rs512 = TestKey::new(Algorithm::RS512, "rs512");
    write_jwks(&path, &[&rs384, &rs512]);
    let v = verifier_for(&path, HOUR).await;
    for k in [&rs384, &rs512] {
        let t = minted(k);
        assert_eq!(jsonwebtoken::decode_header(&t).unwrap().alg, k.alg);
        assert_eq!(v.verify(&t).await.unwrap().actor, actor(), "{:?}", k.alg);
    }
}

/// A token in exactly the shape upstream's `MintActorJWT` writes (hand-built payload: `aud`
/// array, `nbf` 5 minutes before `iat`, `ate.dev.actorUID`) verifies.
#[tokio::test]
async fn an_upstream_shaped_token_verifies() {
    let s = setup().await;
    let now = now_secs();
    let payload = serde_json::json!({
        "iss": ISSUER,
        "sub": "actor/team-a/agent-7",
        "aud": [AUDIENCE],
        "iat": now,
        "nbf": now - 300,
        "exp": now + 600,
        "jti": "0f3c2a",
        "ate.dev": {"atespace": "team-a", "actorName": "agent-7", "actorUID": "uid-7"},
    });
    let key = EncodingKey::from_ec_pem(s.key.pem.as_bytes()).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(&header, &payload, &key).unwrap();
    let v = s.verifier.verify(&token).await.unwrap();
    assert_eq!(v.actor, actor());
    // The old subject spelling no longer names an actor.
    let mut old = payload.clone();
    old["sub"] = "atespaces:team-a:actors:agent-7".into();
    let token = jsonwebtoken::encode(&header, &old, &key).unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::SubjectMismatch);
}

#[tokio::test]
async fn eddsa_and_rs256_tokens_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let ed = TestKey::new(Algorithm::EdDSA, "ed");
    let rs = TestKey::new(Algorithm::RS256, "rs");
    write_jwks(&path, &[&ed, &rs]);
    let v = verifier_for(&path, HOUR).await;
    for k in [&ed, &rs] {
        let t = minted(k);
        assert_eq!(v.verify(&t).await.unwrap().actor, actor(), "{:?}", k.alg);
    }
}

#[tokio::test]
async fn alg_none_is_refused() {
    let s = setup().await;
    let token = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
        b64(&serde_json::to_vec(&claims(&s)).unwrap())
    );
    assert_eq!(
        refusal(&s, &token).await,
        TokenError::UnsupportedAlgorithm("none".into())
    );
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let s = setup().await;
    // The classic confusion attack: HMAC keyed with the verifier's public key (SPKI PEM bytes).
    let public = rcgen::KeyPair::from_pem(&s.key.pem)
        .unwrap()
        .public_key_pem()
        .into_bytes();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    let token =
        jsonwebtoken::encode(&header, &claims(&s), &EncodingKey::from_secret(&public)).unwrap();
    assert_eq!(
        refusal(&s, &token).await,
        TokenError::UnsupportedAlgorithm("HS256".into())
    );
}

#[tokio::test]
async fn wrong_audience_is_refused() {
    let s = setup().await;
    let token = s
        .key
        .signer()
        .actor_token(&actor(), "someone-else", Duration::from_secs(60))
        .unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::WrongAudience);
}

#[tokio::test]
async fn wrong_issuer_is_refused() {
    let s = setup().await;
    let signer = identity::Signer::from_pem(
        Algorithm::ES256,
        "k1",
        s.key.pem.as_bytes(),
        "https://evil.test",
    )
    .unwrap();
    let token = signer
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
        .unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::WrongIssuer);
}

#[tokio::test]
async fn expired_token_is_refused() {
    let s = setup().await;
    let mut c = claims(&s);
    let now = now_secs();
    (c.iat, c.nbf, c.exp) = (now - 700, now - 700, now - 600);
    let token = s.key.signer().sign(&c).unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::Expired);
}

#[tokio::test]
async fn not_yet_valid_token_is_refused() {
    let s = setup().await;
    let mut c = claims(&s);
    let now = now_secs();
    (c.iat, c.nbf, c.exp) = (now, now + 600, now + 900);
    let token = s.key.signer().sign(&c).unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::NotYetValid);
}

#[tokio::test]
async fn unknown_kid_is_refused() {
    let s = setup().await;
    let stranger = TestKey::new(Algorithm::ES256, "k-unknown");
    let token = minted(&stranger);
    assert_eq!(
        refusal(&s, &token).await,
        TokenError::UnknownKid("k-unknown".into())
    );
}

#[tokio::test]
async fn tampered_payload_is_refused() {
    let s = setup().await;
    let token = s
        .key
        .signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
        .unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    let mut c = claims(&s);
    c.ate.actor_name = "admin".into();
    c.sub = "actor/team-a/admin".into();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&c).unwrap()),
        parts[2]
    );
    assert_eq!(
        s.verifier.verify(&forged).await.unwrap_err(),
        TokenError::BadSignature
    );
}

#[tokio::test]
async fn key_removed_from_jwks_stops_verifying_after_refresh() {
    let s = setup().await;
    let k2 = TestKey::new(Algorithm::ES256, "k2");
    write_jwks(&s.jwks_path, &[&s.key, &k2]);
    s.verifier.keys().refresh().await.unwrap();
    let token = minted(&k2);
    assert!(s.verifier.verify(&token).await.is_ok());
    write_jwks(&s.jwks_path, &[&s.key]);
    s.verifier.keys().refresh().await.unwrap();
    assert_eq!(
        refusal(&s, &token).await,
        TokenError::UnknownKid("k2".into())
    );
}

#[tokio::test]
async fn key_added_to_jwks_is_accepted_without_restart() {
    let s = setup().await;
    let k3 = TestKey::new(Algorithm::EdDSA, "k3");
    let token = minted(&k3);
    assert_eq!(
        refusal(&s, &token).await,
        TokenError::UnknownKid("k3".into())
    );
    write_jwks(&s.jwks_path, &[&s.key, &k3]);
    // No explicit refresh: the unknown kid triggers one (rate-limited; zero here).
    assert_eq!(s.verifier.verify(&token).await.unwrap().actor, actor());
}

#[tokio::test]
async fn unknown_kid_refreshes_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let k1 = TestKey::new(Algorithm::ES256, "k1");
    write_jwks(&path, &[&k1]);
    let keys = identity::jwks::KeySet::load(
        identity::jwks::JwksSource::File(path.clone()),
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        keys.refresh_for_unknown_kid().await,
        "first refresh happens"
    );
    assert!(
        !keys.refresh_for_unknown_kid().await,
        "second within the interval does not"
    );
}

#[tokio::test]
async fn broken_jwks_refresh_keeps_the_previous_keys() {
    let s = setup().await;
    std::fs::write(&s.jwks_path, "{not json").unwrap();
    assert!(s.verifier.keys().refresh().await.is_err());
    assert!(s.verifier.keys().status().last_error.is_some());
    let token = s
        .key
        .signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
        .unwrap();
    assert!(s.verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn header_alg_must_match_the_keys_algorithm() {
    let s = setup().await;
    // An RS256 token claiming kid k1, which is an ES256 key.
    let rsa = TestKey::new(Algorithm::RS256, "k1");
    let token = minted(&rsa);
    assert!(matches!(
        refusal(&s, &token).await,
        TokenError::AlgorithmMismatch { .. }
    ));
}

#[tokio::test]
async fn over_long_lifetime_and_inconsistent_subject_are_refused() {
    let s = setup().await;
    let long = s
        .key
        .signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(2 * 3600))
        .unwrap();
    assert!(matches!(
        s.verifier.verify(&long).await.unwrap_err(),
        TokenError::LifetimeTooLong { .. }
    ));
    let mut c = claims(&s);
    c.sub = "actor/team-a/someone-else".into();
    let token = s.key.signer().sign(&c).unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::SubjectMismatch);
}

#[tokio::test]
async fn jwks_over_https_with_the_dev_ca() {
    let pki = TestPki::new();
    let (cert, key) = pki.localhost_server("server");
    let tls = identity::tls::ReloadableServerConfig::server(identity::tls::ServerTlsFiles {
        cert_file: cert,
        key_file: key,
        client_ca_file: None,
        client_auth: identity::tls::ClientAuth::None,
        client_trust_domain: None,
        alpn: vec![b"http/1.1".to_vec()],
    })
    .unwrap();
    let k = TestKey::new(Algorithm::ES256, "https-key");
    let body = serde_json::to_string(&identity::keys::jwks(vec![k.jwk()])).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.acceptor();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(move |_req| {
                    let body = body.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let keys = identity::jwks::KeySet::load(
        identity::jwks::JwksSource::Url {
            url: format!("https://127.0.0.1:{}/jwks.json", addr.port()),
            ca_file: Some(pki.ca_file()),
        },
        Duration::ZERO,
    )
    .await
    .unwrap();
    let v = Verifier::new(
        keys,
        identity::VerifierSettings {
            issuers: vec![ISSUER.into()],
            audience: AUDIENCE.into(),
            leeway: Duration::from_secs(5),
            max_lifetime: HOUR,
        },
    );
    let token = minted(&k);
    assert_eq!(v.verify(&token).await.unwrap().actor, actor());
    // An HTTPS JWKS whose certificate we do not trust is refused.
    let other = TestPki::new();
    let err = identity::jwks::KeySet::load(
        identity::jwks::JwksSource::Url {
            url: format!("https://127.0.0.1:{}/jwks.json", addr.port()),
            ca_file: Some(other.ca_file()),
        },
        Duration::ZERO,
    )
    .await
    .err()
    .expect("untrusted JWKS server refused");
    assert!(
        matches!(err, identity::jwks::JwksError::Fetch { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn plain_http_jwks_urls_are_refused() {
    // Anyone on the path could hand us keys.
    let err = identity::jwks::KeySet::load(
        identity::jwks::JwksSource::Url {
            url: "http://127.0.0.1:9/jwks.json".into(),
            ca_file: None,
        },
        Duration::ZERO,
    )
    .await
    .err()
    .expect("http refused");
    assert!(err.to_string().contains("must be https://"), "{err}");
}

#[tokio::test]
async fn an_egress_assertion_is_not_an_actor_token() {
    let s = setup().await;
    let minter = identity::assertion::AssertionMinter::new(
        s.key.signer(),
        AUDIENCE,
        Duration::from_secs(30),
    );
    let assertion = minter
        .mint(&actor(), "10.0.0.1:443".parse().unwrap())
        .unwrap();
    assert_eq!(
        s.verifier.verify(&assertion).await.unwrap_err(),
        TokenError::BadClaim("typ")
    );
}

#[tokio::test]
async fn uid_claims_must_be_printable_and_short() {
    let s = setup().await;
    let mut c = claims(&s);
    c.ate.actor_uid = "bad\nuid".into();
    let token = s.key.signer().sign(&c).unwrap();
    assert_eq!(refusal(&s, &token).await, TokenError::BadClaim("ate.dev"));
}

// ---- crit (RFC 7515 §4.1.11), aud as an array (RFC 7519 §4.1.3), readable refusals ----

fn jwt_header(kid: &str) -> serde_json::Value {
    serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid})
}

fn payload(s: &Setup) -> serde_json::Value {
    serde_json::to_value(claims(s)).unwrap()
}

#[tokio::test]
async fn crit_header_is_refused_for_known_looking_and_unknown_names() {
    let s = setup().await;
    // Control: the same raw signing without crit verifies.
    let plain = sign_raw(&s.key, &jwt_header("k1"), &payload(&s));
    assert_eq!(s.verifier.verify(&plain).await.unwrap().actor, actor());
    for (crit, extra) in [
        // RFC 7797's unencoded payload: a conformant verifier would read a different payload.
        (serde_json::json!(["b64"]), serde_json::json!({"b64": true})),
        // Names defined by RFC 7515/7519 (producers must not list them; still refused).
        (serde_json::json!(["exp"]), serde_json::json!({"exp": 1})),
        (serde_json::json!(["alg"]), serde_json::json!({})),
        // An extension nobody here understands.
        (
            serde_json::json!(["x-policy"]),
            serde_json::json!({"x-policy": "require-mfa"}),
        ),
        (
            serde_json::json!(["x-policy", "b64"]),
            serde_json::json!({"x-policy": 1, "b64": true}),
        ),
    ] {
        let mut h = jwt_header("k1");
        h["crit"] = crit.clone();
        for (k, v) in extra.as_object().unwrap() {
            h[k] = v.clone();
        }
        let token = sign_raw(&s.key, &h, &payload(&s));
        let err = s
            .verifier
            .verify(&token)
            .await
            .expect_err(&format!("crit {crit} must be refused"));
        let reason = err.to_string();
        assert!(reason.contains("crit"), "{reason}");
        assert!(reason.contains(crit[0].as_str().unwrap()), "{reason}");
        assert_plain_line(&reason);
    }
}

#[tokio::test]
async fn malformed_or_empty_crit_is_refused() {
    let s = setup().await;
    for crit in [
        serde_json::json!([]),
        serde_json::json!(null),
        serde_json::json!("b64"),
        serde_json::json!([1]),
        serde_json::json!([""]),
        serde_json::json!({"b64": true}),
    ] {
        let mut h = jwt_header("k1");
        h["crit"] = crit.clone();
        let token = sign_raw(&s.key, &h, &payload(&s));
        let err = s
            .verifier
            .verify(&token)
            .await
            .expect_err(&format!("crit {crit} must be refused"));
        let reason = err.to_string();
        assert!(reason.contains("crit"), "{crit}: {reason}");
        assert_plain_line(&reason);
    }
}

#[tokio::test]
async fn aud_array_containing_the_audience_is_accepted() {
    let s = setup().await;
    for aud in [
        serde_json::json!([AUDIENCE]),
        serde_json::json!(["someone-else", AUDIENCE]),
        serde_json::json!(AUDIENCE),
    ] {
        let mut p = payload(&s);
        p["aud"] = aud.clone();
        let token = sign_raw(&s.key, &jwt_header("k1"), &p);
        match s.verifier.verify(&token).await {
            Ok(v) => assert_eq!(v.actor, actor(), "{aud}"),
            Err(e) => panic!("aud {aud} refused: {e}"),
        }
    }
}

#[tokio::test]
async fn minted_actor_tokens_carry_aud_as_an_array() {
    // Upstream's MintActorJWT form (DESIGN §6).
    let s = setup().await;
    let token = s
        .key
        .signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
        .unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let c: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c["aud"], serde_json::json!([AUDIENCE]));
    assert!(s.verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn aud_array_without_the_audience_or_empty_is_refused() {
    let s = setup().await;
    for aud in [
        serde_json::json!(["someone-else"]),
        serde_json::json!([]),
        serde_json::json!(["someone-else", "another"]),
    ] {
        let mut p = payload(&s);
        p["aud"] = aud.clone();
        let token = sign_raw(&s.key, &jwt_header("k1"), &p);
        let err = refusal(&s, &token).await;
        assert_eq!(err, TokenError::WrongAudience, "{aud}");
        assert_plain_line(&err.to_string());
    }
    // Neither a string nor an array of strings: refused, readably.
    for aud in [
        serde_json::json!(5),
        serde_json::json!([AUDIENCE, 1]),
        serde_json::json!({"aud": AUDIENCE}),
    ] {
        let mut p = payload(&s);
        p["aud"] = aud.clone();
        let token = sign_raw(&s.key, &jwt_header("k1"), &p);
        let reason = refusal(&s, &token).await.to_string();
        assert!(reason.contains("aud"), "{aud}: {reason}");
        assert_plain_line(&reason);
    }
}

#[tokio::test]
async fn every_refusal_reason_is_one_plain_line() {
    let s = setup().await;
    let mut tokens: Vec<(&str, String)> = Vec::new();
    tokens.push((
        "alg none",
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#),
            b64(&serde_json::to_vec(&claims(&s)).unwrap())
        ),
    ));
    tokens.push((
        "alg with quotes and braces",
        format!(
            "{}.{}.",
            b64(br#"{"alg":"{\"x\"}\n","typ":"JWT","kid":"k1"}"#),
            b64(b"{}")
        ),
    ));
    tokens.push((
        "unknown kid with quotes, braces and a newline",
        sign_raw(&s.key, &jwt_header("k\"{\n}x"), &payload(&s)),
    ));
    tokens.push((
        "alg mismatch",
        TestKey::new(Algorithm::RS256, "k1")
            .signer()
            .actor_token(&actor(), AUDIENCE, Duration::from_secs(60))
            .unwrap(),
    ));
    tokens.push(("header not base64url", "!!!.e30.sig".into()));
    tokens.push(("header not JSON", format!("{}.e30.sig", b64(b"{nope"))));
    tokens.push(("header without alg", format!("{}.e30.sig", b64(b"{}"))));
    tokens.push((
        "duplicate header parameter",
        format!(
            "{}.e30.sig",
            b64(br#"{"alg":"ES256","kid":"k1","kid":"k2"}"#)
        ),
    ));
    tokens.push(("two parts", format!("{}.e30", b64(b"{}"))));
    let mut p = payload(&s);
    p.as_object_mut().unwrap().remove("jti");
    tokens.push(("missing jti", sign_raw(&s.key, &jwt_header("k1"), &p)));
    let mut p = payload(&s);
    p["exp"] = serde_json::json!("soon \"{}\"");
    tokens.push((
        "exp of the wrong type",
        sign_raw(&s.key, &jwt_header("k1"), &p),
    ));
    let mut p = payload(&s);
    p["aud"] = serde_json::json!(["x", {"y": 1}]);
    tokens.push((
        "aud with an object",
        sign_raw(&s.key, &jwt_header("k1"), &p),
    ));
    let mut p = payload(&s);
    p["aud"] = serde_json::json!(["x"]);
    tokens.push(("wrong aud", sign_raw(&s.key, &jwt_header("k1"), &p)));
    let mut h = jwt_header("k1");
    h["crit"] = serde_json::json!(["x\"{\n}"]);
    tokens.push(("crit", sign_raw(&s.key, &h, &payload(&s))));
    let good = sign_raw(&s.key, &jwt_header("k1"), &payload(&s));
    let mut parts: Vec<&str> = good.split('.').collect();
    parts[2] = "AAAA";
    tokens.push(("bad signature", parts.join(".")));
    tokens.push(("payload not base64url", format!("{}.!!!.sig", parts[0])));
    for (what, token) in tokens {
        match s.verifier.verify(&token).await {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                let reason = e.to_string();
                eprintln!("{what}: {reason}");
                assert_plain_line(&reason);
            }
        }
    }
}

// ---- size, shape, required claims and time order: each refusal with its exact reason ----

#[tokio::test]
async fn oversized_tokens_are_refused_before_anything_is_parsed() {
    let s = setup().await;
    // At the limit a token is read (and refused for its shape); one byte over, for its size.
    let at_limit = "a".repeat(MAX_TOKEN_BYTES);
    assert_eq!(
        s.verifier.verify(&at_limit).await.unwrap_err(),
        TokenError::Malformed("not a compact JWS (header.payload.signature)".into())
    );
    let over = "a".repeat(MAX_TOKEN_BYTES + 1);
    assert_eq!(
        s.verifier.verify(&over).await.unwrap_err(),
        TokenError::TooLarge
    );
    // A correctly signed token is refused for its size too, before its claims are looked at.
    let mut c = claims(&s);
    c.jti = "j".repeat(MAX_TOKEN_BYTES);
    let big = s.key.signer().sign(&c).unwrap();
    assert!(big.len() > MAX_TOKEN_BYTES);
    let err = s.verifier.verify(&big).await.unwrap_err();
    assert_eq!(err, TokenError::TooLarge);
    assert_eq!(err.to_string(), "token too large");
}

#[tokio::test]
async fn malformed_tokens_are_refused_with_their_reason() {
    let s = setup().await;
    let not_jws = TokenError::Malformed("not a compact JWS (header.payload.signature)".into());
    let good = sign_raw(&s.key, &jwt_header("k1"), &payload(&s));
    let parts: Vec<&str> = good.split('.').collect();
    let cases: Vec<(&str, String, TokenError)> = vec![
        ("empty", String::new(), not_jws.clone()),
        ("one part", parts[0].to_owned(), not_jws.clone()),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            not_jws.clone(),
        ),
        ("four parts", format!("{good}.x"), not_jws.clone()),
        (
            "header not base64url",
            format!("!!!.{}.{}", parts[1], parts[2]),
            TokenError::Malformed("header is not base64url".into()),
        ),
        (
            "header without kid",
            sign_raw(&s.key, &serde_json::json!({"alg": "ES256"}), &payload(&s)),
            TokenError::MissingKid,
        ),
        (
            "empty kid",
            sign_raw(
                &s.key,
                &serde_json::json!({"alg": "ES256", "kid": ""}),
                &payload(&s),
            ),
            TokenError::MissingKid,
        ),
        (
            "payload not base64url",
            format!("{}.!!!.{}", parts[0], parts[2]),
            TokenError::BadSignature,
        ),
    ];
    for (what, token, want) in cases {
        let err = refusal(&s, &token).await;
        assert_eq!(err, want, "{what}");
        assert_plain_line(&err.to_string());
    }
    // Header JSON that does not parse: refused as malformed, naming the header.
    let err = s
        .verifier
        .verify(&format!("{}.{}.{}", b64(b"{nope"), parts[1], parts[2]))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TokenError::Malformed(m) if m.starts_with("header: ")),
        "{err:?}"
    );
    // Correctly signed claims that are not JSON.
    let header = b64(&serde_json::to_vec(&jwt_header("k1")).unwrap());
    let msg = format!("{header}.{}", b64(b"not json"));
    let enc = identity::keys::encoding_key(s.key.alg, s.key.pem.as_bytes()).unwrap();
    let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), &enc, s.key.alg).unwrap();
    let err = s
        .verifier
        .verify(&format!("{msg}.{sig}"))
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Malformed(_)), "{err:?}");
    assert_plain_line(&err.to_string());
}

#[tokio::test]
async fn each_missing_claim_is_named() {
    let s = setup().await;
    for claim in ["iss", "sub", "aud", "iat", "nbf", "exp", "jti", "ate.dev"] {
        let mut p = payload(&s);
        assert!(
            p.as_object_mut().unwrap().remove(claim).is_some(),
            "{claim} is minted"
        );
        let token = sign_raw(&s.key, &jwt_header("k1"), &p);
        let err = refusal(&s, &token).await;
        assert_eq!(
            err,
            TokenError::Malformed(format!("missing claim {claim}")),
            "{claim}"
        );
        assert_eq!(
            err.to_string(),
            format!("malformed token: missing claim {claim}")
        );
    }
}

#[tokio::test]
async fn iat_in_the_future_is_refused_beyond_the_leeway() {
    let s = setup().await;
    let now = now_secs();
    let mut c = claims(&s);
    (c.iat, c.nbf, c.exp) = (now + 600, now, now + 900);
    let token = s.key.signer().sign(&c).unwrap();
    let err = refusal(&s, &token).await;
    assert_eq!(err, TokenError::IssuedInFuture);
    assert_eq!(err.to_string(), "token issued in the future");
    // Within the 5 s leeway (clock skew between minter and verifier) it is accepted.
    let mut c = claims(&s);
    (c.iat, c.nbf, c.exp) = (now + 2, now, now + 300);
    let token = s.key.signer().sign(&c).unwrap();
    assert_eq!(s.verifier.verify(&token).await.unwrap().actor, actor());
}

#[tokio::test]
async fn exp_before_iat_is_refused_as_an_invalid_exp() {
    let s = setup().await;
    let now = now_secs();
    let mut c = claims(&s);
    // Not expired, not issued beyond the leeway, but expiring before it was issued.
    (c.iat, c.nbf, c.exp) = (now + 3, now, now + 1);
    let token = s.key.signer().sign(&c).unwrap();
    let err = refusal(&s, &token).await;
    assert_eq!(err, TokenError::BadClaim("exp"));
    assert_eq!(err.to_string(), "missing or invalid claim exp");
}
