//! Egress assertions: `dst` must match, `jti` must be new, lifetime ≤ 60 s.

mod common;

use std::time::Duration;

use common::*;
use identity::ActorIdentity;
use identity::assertion::{AssertionError, AssertionMinter, AssertionVerifier};
use identity::replay::ReplayError;
use identity::token::TokenError;
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
    let minter = AssertionMinter::new(key.signer(), AUDIENCE, Duration::from_secs(1));
    let dst = "10.0.0.3:443".parse().unwrap();
    let token = minter.mint(&actor(), dst).unwrap();
    v.verify(&token, dst).await.unwrap();
    // Past exp, within the 5 s leeway: the signature and times still pass, the jti must not.
    tokio::time::sleep(Duration::from_millis(2100)).await;
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
