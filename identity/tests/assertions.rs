//! Egress assertions: `dst` must match, `jti` must be new, lifetime ≤ 60 s.

use std::time::Duration;

use base64::Engine;
use identity::ActorIdentity;
use identity::assertion::{AssertionError, AssertionMinter, AssertionVerifier};
use identity::replay::ReplayError;
use identity::testing::*;
use identity::token::{TokenError, now_secs};
use jsonwebtoken::Algorithm;

async fn setup() -> (tempfile::TempDir, TestKey, AssertionVerifier) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let key = TestKey::new(Algorithm::ES256, "agent-1");
    write_jwks(&path, &[&key]);
    let v = AssertionVerifier::new(verifier_for(&path, Duration::from_secs(60)).await, 10_000);
    (dir, key, v)
}

fn actor() -> ActorIdentity {
    ActorIdentity::new("team", "bot", None).unwrap()
}

#[tokio::test]
async fn matching_dst_verifies_once() {
    let (_d, key, v) = setup().await;
    let minter = AssertionMinter::new(key.signer(), AUDIENCE, Duration::from_secs(30));
    let dst = "93.184.216.34:443".parse().unwrap();
    let token = minter.mint(&actor(), dst).unwrap();
    let ok = v.verify(&token, dst).await.unwrap();
    assert_eq!(ok.actor, actor());
    assert_eq!(ok.claims.dst.as_deref(), Some("93.184.216.34:443"));
    assert_eq!(
        v.verify(&token, dst).await.unwrap_err(),
        AssertionError::Replay(ReplayError::Replayed),
        "a reused jti is refused"
    );
}

#[tokio::test]
async fn different_dst_is_refused() {
    let (_d, key, v) = setup().await;
    let minter = AssertionMinter::new(key.signer(), AUDIENCE, Duration::from_secs(30));
    let token = minter
        .mint(&actor(), "10.0.0.1:443".parse().unwrap())
        .unwrap();
    assert!(matches!(
        v.verify(&token, "10.0.0.2:443".parse().unwrap())
            .await
            .unwrap_err(),
        AssertionError::DstMismatch { .. }
    ));
    // An actor token is not an assertion (its typ says so).
    let plain = key
        .signer()
        .actor_token(&actor(), AUDIENCE, Duration::from_secs(30))
        .unwrap();
    assert_eq!(
        v.verify(&plain, "10.0.0.1:443".parse().unwrap())
            .await
            .unwrap_err(),
        AssertionError::Token(TokenError::BadClaim("typ"))
    );
}

#[tokio::test]
async fn replay_is_refused_after_expiry_while_the_skew_still_accepts_the_token() {
    let (_d, key, v) = setup().await;
    let dst = "10.0.0.3:443".parse().unwrap();
    // Already past exp, within the 5 s leeway (no waiting for the clock): the signature and
    // times pass, so it is accepted once; the jti must be remembered past exp.
    let now = now_secs();
    let mut claims = key
        .signer()
        .claims(&actor(), AUDIENCE, Duration::from_secs(1));
    (claims.iat, claims.nbf, claims.exp) = (now - 3, now - 3, now - 2);
    claims.dst = Some("10.0.0.3:443".into());
    let token = key.signer().sign(&claims).unwrap();
    let first = v.verify(&token, dst).await.unwrap();
    assert!(first.claims.exp < now_secs(), "verified after its exp");
    assert_eq!(
        v.verify(&token, dst).await.unwrap_err(),
        AssertionError::Replay(ReplayError::Replayed)
    );
}

#[tokio::test]
async fn lifetime_is_capped_at_sixty_seconds() {
    let (_d, key, v) = setup().await;
    // The minter caps its own lifetime...
    let minter = AssertionMinter::new(key.signer(), AUDIENCE, Duration::from_secs(3600));
    let dst = "10.0.0.1:80".parse().unwrap();
    let t = minter.mint(&actor(), dst).unwrap();
    let c = v.verify(&t, dst).await.unwrap().claims;
    assert!(c.exp - c.iat <= 60);
    // ...and the verifier refuses a longer one minted elsewhere, even when its inner verifier
    // would allow an hour.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    write_jwks(&path, &[&key]);
    let lenient = AssertionVerifier::new(verifier_for(&path, Duration::from_secs(3600)).await, 100);
    let mut claims = key
        .signer()
        .claims(&actor(), AUDIENCE, Duration::from_secs(120));
    claims.dst = Some("10.0.0.1:80".into());
    let long = key.signer().sign(&claims).unwrap();
    assert!(matches!(
        lenient.verify(&long, dst).await.unwrap_err(),
        AssertionError::Token(TokenError::LifetimeTooLong { .. })
    ));
    let mut claims = key
        .signer()
        .claims(&actor(), AUDIENCE, Duration::from_secs(120));
    claims.dst = Some("10.0.0.1:80".into());
    let long = key.signer().sign(&claims).unwrap();
    assert!(matches!(
        v.verify(&long, dst).await.unwrap_err(),
        AssertionError::Token(TokenError::LifetimeTooLong { .. })
    ));
}

// ---- crit (RFC 7515 §4.1.11), aud as an array (RFC 7519 §4.1.3), readable refusals ----

fn assertion_header(kid: &str) -> serde_json::Value {
    serde_json::json!({"alg": "ES256", "typ": "ate-egress+jwt", "kid": kid})
}

/// Fresh assertion claims (new jti) for `dst`.
fn assertion_payload(key: &TestKey, dst: &str) -> serde_json::Value {
    let mut p = serde_json::to_value(key.signer().claims(
        &actor(),
        AUDIENCE,
        Duration::from_secs(30),
    ))
    .unwrap();
    p["dst"] = serde_json::json!(dst);
    p
}

#[tokio::test]
async fn assertion_with_crit_is_refused() {
    let (_d, key, v) = setup().await;
    let dst = "10.0.0.9:443";
    // Control: raw signing without crit verifies.
    let plain = sign_raw(
        &key,
        &assertion_header("agent-1"),
        &assertion_payload(&key, dst),
    );
    assert_eq!(
        v.verify(&plain, dst.parse().unwrap()).await.unwrap().actor,
        actor()
    );
    for (crit, extra) in [
        (serde_json::json!(["b64"]), serde_json::json!({"b64": true})),
        (serde_json::json!(["dst"]), serde_json::json!({"dst": dst})),
        (
            serde_json::json!(["x-policy"]),
            serde_json::json!({"x-policy": "require-mfa"}),
        ),
        (serde_json::json!([]), serde_json::json!({})),
        (serde_json::json!("b64"), serde_json::json!({})),
    ] {
        let mut h = assertion_header("agent-1");
        h["crit"] = crit.clone();
        for (k, val) in extra.as_object().unwrap() {
            h[k] = val.clone();
        }
        let token = sign_raw(&key, &h, &assertion_payload(&key, dst));
        let err = v
            .verify(&token, dst.parse().unwrap())
            .await
            .expect_err(&format!("crit {crit} must be refused"));
        let reason = err.to_string();
        assert!(reason.contains("crit"), "{crit}: {reason}");
        assert_plain_line(&reason);
    }
}

#[tokio::test]
async fn assertion_aud_array_containing_the_pep_is_accepted() {
    let (_d, key, v) = setup().await;
    let dst = "10.0.0.9:443";
    for aud in [
        serde_json::json!([AUDIENCE]),
        serde_json::json!(["other", AUDIENCE]),
    ] {
        let mut p = assertion_payload(&key, dst);
        p["aud"] = aud.clone();
        let token = sign_raw(&key, &assertion_header("agent-1"), &p);
        match v.verify(&token, dst.parse().unwrap()).await {
            Ok(ok) => assert_eq!(ok.actor, actor(), "{aud}"),
            Err(e) => panic!("aud {aud} refused: {e}"),
        }
    }
}

#[tokio::test]
async fn assertion_aud_array_without_the_pep_or_empty_is_refused() {
    let (_d, key, v) = setup().await;
    let dst = "10.0.0.9:443";
    for aud in [serde_json::json!(["other"]), serde_json::json!([])] {
        let mut p = assertion_payload(&key, dst);
        p["aud"] = aud.clone();
        let token = sign_raw(&key, &assertion_header("agent-1"), &p);
        let err = v.verify(&token, dst.parse().unwrap()).await.unwrap_err();
        assert_eq!(
            err,
            AssertionError::Token(TokenError::WrongAudience),
            "{aud}"
        );
        assert_plain_line(&err.to_string());
    }
    let mut p = assertion_payload(&key, dst);
    p["aud"] = serde_json::json!([1]);
    let token = sign_raw(&key, &assertion_header("agent-1"), &p);
    let reason = v
        .verify(&token, dst.parse().unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(reason.contains("aud"), "{reason}");
    assert_plain_line(&reason);
}

#[tokio::test]
async fn minted_assertions_keep_aud_as_a_string() {
    // Egress assertions stay in the form every actorgate PEP accepts.
    let (_d, key, v) = setup().await;
    let minter = AssertionMinter::new(key.signer(), AUDIENCE, Duration::from_secs(30));
    let dst = "10.0.0.9:443".parse().unwrap();
    let token = minter.mint(&actor(), dst).unwrap();
    let payload = token.split('.').nth(1).unwrap();
    let c: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(c["aud"], serde_json::json!(AUDIENCE));
    assert!(v.verify(&token, dst).await.is_ok());
}

#[tokio::test]
async fn assertion_refusal_reasons_are_one_plain_line() {
    let (_d, key, v) = setup().await;
    let dst: std::net::SocketAddr = "10.0.0.9:443".parse().unwrap();
    let mut cases: Vec<(&str, String)> = Vec::new();
    cases.push((
        "dst with quotes, braces and a newline",
        sign_raw(
            &key,
            &assertion_header("agent-1"),
            &assertion_payload(&key, "10.0.0.9:443\"{\n}"),
        ),
    ));
    let mut p = assertion_payload(&key, "10.0.0.9:443");
    p["dst"] = serde_json::json!(["10.0.0.9:443"]);
    cases.push((
        "dst of the wrong type",
        sign_raw(&key, &assertion_header("agent-1"), &p),
    ));
    cases.push((
        "unknown kid",
        sign_raw(
            &key,
            &assertion_header("\"{}\""),
            &assertion_payload(&key, "10.0.0.9:443"),
        ),
    ));
    let mut p = assertion_payload(&key, "10.0.0.9:443");
    p["aud"] = serde_json::json!("nobody");
    cases.push((
        "wrong aud",
        sign_raw(&key, &assertion_header("agent-1"), &p),
    ));
    let replayed = sign_raw(
        &key,
        &assertion_header("agent-1"),
        &assertion_payload(&key, "10.0.0.9:443"),
    );
    v.verify(&replayed, dst).await.unwrap();
    cases.push(("replay", replayed));
    for (what, token) in cases {
        match v.verify(&token, dst).await {
            Ok(_) => panic!("{what}: accepted"),
            Err(e) => {
                let reason = e.to_string();
                eprintln!("{what}: {reason}");
                assert_plain_line(&reason);
            }
        }
    }
}
