//! The control-plane simulator's `MintActorJWT` (issue 14; DESIGN §6, §9) with the embedded
//! signer (`signer` config section, a key from `actorgate token keygen`): an upstream client
//! gets a token in upstream's form for a directory actor, with the audiences and lifetime it
//! asked for, that verifies against the JWKS keygen wrote; bad requests get upstream's codes,
//! and without a signer the method stays UNIMPLEMENTED.

mod common;

use std::process::Command;

use common::*;
use routing_core::proto;
use routing_core::proto::control_client::ControlClient;

const ISSUER: &str = "https://simulator.test";

fn object(atespace: &str, name: &str) -> Option<proto::ObjectRef> {
    Some(proto::ObjectRef {
        atespace: atespace.into(),
        name: name.into(),
    })
}

fn mint(audience: &[&str], name: &str, uid: &str, secs: i64) -> proto::MintActorJwtRequest {
    proto::MintActorJwtRequest {
        audience: audience.iter().map(|a| (*a).to_owned()).collect(),
        actor: object("demo", name),
        actor_uid: uid.into(),
        expiration_seconds: secs,
    }
}

#[tokio::test]
async fn mint_actor_jwt_signs_upstream_tokens_for_directory_actors() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .args(["token", "keygen", "--kid", "sim-1", "--out"])
        .arg(dir.path().join("tokens"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = "admin: {listen: ADMIN_ADDR}\ngrpc: {listen: GRPC_ADDR, control_plane_simulator: true}\n\
                ingress: {enabled: false}\n\
                directory: {static: {actors: [{atespace: demo, name: hello, endpoint: '127.0.0.1:1'}]}}\n";
    let gw = Gateway::ready(
        dir.path(),
        &format!("{base}signer: {{key_file: tokens/sim-1.key, kid: sim-1, issuer: '{ISSUER}'}}\n"),
    )
    .await;
    let mut c = ControlClient::new(grpc_channel(gw.grpc()).await);
    let uid = c
        .get_actor(proto::GetActorRequest {
            actor: object("demo", "hello"),
        })
        .await
        .unwrap()
        .into_inner()
        .metadata
        .unwrap()
        .uid;

    let resp = c
        .mint_actor_jwt(mint(&["api.example", "other.example"], "hello", &uid, 600))
        .await
        .unwrap()
        .into_inner();
    let verified = verify_token(
        &dir.path().join("tokens/jwks.json"),
        ISSUER,
        "other.example",
        &resp.actor_jwt,
    )
    .await;
    assert_eq!(
        (
            verified.actor.atespace.as_str(),
            verified.actor.name.as_str()
        ),
        ("demo", "hello")
    );
    assert_eq!(verified.actor.uid.as_deref(), Some(uid.as_str()));
    let c_ = &verified.claims;
    assert_eq!(c_.sub, "actor/demo/hello");
    assert_eq!(c_.exp - c_.iat, 600);
    assert_eq!(
        c_.iat - c_.nbf,
        300,
        "nbf 5 minutes before iat, as upstream"
    );
    assert!(c_.aud.contains("api.example") && c_.aud.contains("other.example"));
    assert_eq!(
        resp.expires_at.unwrap().seconds,
        i64::try_from(c_.exp).unwrap()
    );
    // 0 asks for the longest lifetime.
    let long = c
        .mint_actor_jwt(mint(&["other.example"], "hello", "", 0))
        .await
        .unwrap()
        .into_inner();
    let jwks = dir.path().join("tokens/jwks.json");
    let v = verify_token(&jwks, ISSUER, "other.example", &long.actor_jwt).await;
    assert_eq!(v.claims.exp - v.claims.iat, 3600);

    for (req, code) in [
        (mint(&["a"], "nobody", "", 600), tonic::Code::NotFound),
        (mint(&[], "hello", "", 600), tonic::Code::InvalidArgument),
        (mint(&[""], "hello", "", 600), tonic::Code::InvalidArgument),
        (mint(&["a"], "hello", "", 60), tonic::Code::InvalidArgument),
        (
            mint(&["a"], "hello", "", 7200),
            tonic::Code::InvalidArgument,
        ),
        (
            mint(&["a"], "hello", "not-the-uid", 600),
            tonic::Code::FailedPrecondition,
        ),
    ] {
        let got = c.mint_actor_jwt(req.clone()).await.unwrap_err();
        assert_eq!(got.code(), code, "{req:?}: {got}");
    }
    drop(gw);

    // Without a signer the simulator does not pretend.
    let dir2 = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(dir2.path(), base).await;
    let mut c = ControlClient::new(grpc_channel(gw.grpc()).await);
    let got = c
        .mint_actor_jwt(mint(&["a"], "hello", "", 600))
        .await
        .unwrap_err();
    assert_eq!(got.code(), tonic::Code::Unimplemented);
}
