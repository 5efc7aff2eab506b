//! End-to-end tests of `actorgate serve` and `actorgate check-config`: the real binary, real
//! sockets, real gRPC.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use routing_core::proto;
use routing_core::proto::control_client::ControlClient;
use routing_core::testing::FakeControlPlane;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn control_client(addr: std::net::SocketAddr) -> ControlClient<tonic::transport::Channel> {
    ControlClient::new(grpc_channel(addr).await)
}

fn object(actor: &str) -> Option<proto::ObjectRef> {
    let (ns, name) = actor.split_once('/').unwrap();
    Some(proto::ObjectRef {
        atespace: ns.into(),
        name: name.into(),
    })
}

/// The shipped demo config, with only its listeners moved to port 0 (the demo's fixed ports may
/// be taken on a CI machine): every other line as the README's first command runs it.
fn demo_config(dir: &std::path::Path) -> std::path::PathBuf {
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/local");
    let text = std::fs::read_to_string(local.join("actorgate.yaml")).unwrap();
    let mut moved = 0;
    let text: String = text
        .lines()
        .map(|line| match line.split_once("listen: 127.0.0.1:") {
            Some((indent, rest)) if rest.split_whitespace().next().is_some() => {
                moved += 1;
                let comment = rest.split_once('#').map(|(_, c)| format!(" #{c}"));
                format!(
                    "{indent}listen: 127.0.0.1:0{}\n",
                    comment.unwrap_or_default()
                )
            }
            _ => format!("{line}\n"),
        })
        .collect();
    assert_eq!(
        moved, 5,
        "admin, grpc, ingress.http, ingress.resolve and echo_worker listeners:\n{text}"
    );
    std::fs::write(dir.join("actorgate.yaml"), text).unwrap();
    std::fs::copy(local.join("actors.yaml"), dir.join("actors.yaml")).unwrap();
    dir.join("actorgate.yaml")
}

#[tokio::test]
async fn demo_config_serves_readyz_metrics_and_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&demo_config(dir.path())).await;
    gw.wait_ready().await;
    let admin = gw.admin;
    for listener in ["grpc", "ingress_http", "ingress_resolve", "echo_worker"] {
        assert!(gw.addr(listener).ip().is_loopback(), "{listener}");
    }

    let (status, body) = get(admin, "/readyz").await.unwrap();
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    // The README's resolve line: the demo serves the nginx example's resolve listener.
    let (status, headers, _) = request(
        gw.addr("ingress_resolve"),
        "/resolve",
        &[("ate-target-actor", "demo/hello")],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-gateway-destination-endpoint"], "127.0.0.1:18080",
        "the demo actors' endpoint"
    );
    let (status, metrics) = get(admin, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "actorgate_directory_up", &[]), 1.0);

    let mut c = control_client(gw.grpc()).await;
    let hello = c
        .get_actor(proto::GetActorRequest {
            actor: object("demo/hello"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.metadata.as_ref().unwrap().name, "hello");
    let st = hello.status.unwrap();
    assert_eq!(st.state, proto::ActorState::Running as i32);
    assert_eq!(st.worker_assignment.unwrap().worker_pod_ips, ["127.0.0.1"]);
    assert_eq!(hello.actor_template.unwrap().name, "echo");

    let sleepy = c
        .get_actor(proto::GetActorRequest {
            actor: object("demo/sleepy"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        sleepy.status.unwrap().state,
        proto::ActorState::Suspended as i32
    );
    let resumed = c
        .resume_actor(proto::ResumeActorRequest {
            actor: object("demo/sleepy"),
            boot: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(resumed.resumed);
    assert_eq!(
        resumed.actor.unwrap().status.unwrap().state,
        proto::ActorState::Running as i32
    );
    let again = c
        .resume_actor(proto::ResumeActorRequest {
            actor: object("demo/sleepy"),
            boot: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.resumed, "already running");

    let missing = c
        .get_actor(proto::GetActorRequest {
            actor: object("demo/nobody"),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = c
        .get_actor(proto::GetActorRequest {
            actor: object("Demo/x_y"),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    let list = c
        .list_actors(proto::ListActorsRequest {
            atespace: "demo".into(),
            page_size: 10,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.actors.len(), 2);

    // gRPC health reports the simulator as serving.
    let mut health =
        tonic_health::pb::health_client::HealthClient::new(grpc_channel(gw.grpc()).await);
    let h = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "ateapi.Control".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        h.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    gw.signal("TERM");
    assert!(gw.wait_exit(Duration::from_secs(10)).await.success());
}

#[tokio::test]
async fn static_file_edits_apply_and_broken_edits_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let actors = dir.path().join("actors.yaml");
    std::fs::write(
        &actors,
        "actors:\n- {atespace: ns, name: one, endpoint: '127.0.0.1:1001'}\n",
    )
    .unwrap();
    let gw = Gateway::ready(
        dir.path(),
        "admin: {listen: ADMIN_ADDR}\ngrpc: {listen: GRPC_ADDR, control_plane_simulator: true}\n\
         directory: {static: {file: actors.yaml}}\n",
    )
    .await;
    let admin = gw.admin;
    let mut c = control_client(gw.grpc()).await;
    assert_eq!(
        c.get_actor(proto::GetActorRequest {
            actor: object("ns/two")
        })
        .await
        .unwrap_err()
        .code(),
        tonic::Code::NotFound
    );

    replace_file(
        &actors,
        "actors:\n- {atespace: ns, name: one, endpoint: '127.0.0.1:1001'}\n- {atespace: ns, name: two, endpoint: '127.0.0.2:1002'}\n",
    );
    let two = gw
        .eventually(BOUND, "edit applied without restart", async || {
            c.get_actor(proto::GetActorRequest {
                actor: object("ns/two"),
            })
            .await
            .ok()
            .map(tonic::Response::into_inner)
        })
        .await;
    assert_eq!(
        two.status
            .unwrap()
            .worker_assignment
            .unwrap()
            .worker_pod_ips,
        ["127.0.0.2"]
    );

    replace_file(
        &actors,
        "actors:\n- {atespace: ns, name: one, endpoint: '10.0.0.1'}\n",
    );
    let last_error = gw
        .eventually(BOUND, "reload error on /statusz", async || {
            let (_, body) = get(admin, "/statusz?format=json").await.ok()?;
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            v.pointer("/directory/static/last_error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
        })
        .await;
    assert!(
        last_error.contains(r#"actors[0].endpoint: invalid socket address "10.0.0.1""#),
        "{last_error}"
    );
    let (_, html) = get(admin, "/statusz").await.unwrap();
    assert!(
        html.contains("invalid socket address &quot;10.0.0.1&quot;"),
        "HTML status shows the error"
    );
    // Logged: the line is written with the reload, so it is waited for (bounded).
    gw.log_line("the reload error", |l| {
        l.contains("reload failed")
            && l.contains("static_directory")
            && l.contains("invalid socket address")
    })
    .await;
    // The previous directory still answers.
    let still = c
        .get_actor(proto::GetActorRequest {
            actor: object("ns/two"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        still
            .status
            .unwrap()
            .worker_assignment
            .unwrap()
            .worker_pod_ips,
        ["127.0.0.2"]
    );
    assert_eq!(
        get(admin, "/readyz").await.unwrap().0,
        200,
        "a bad edit does not make us unready"
    );
}

/// The whole server ("") and each adapter service report `expected` over gRPC health.
async fn assert_health(
    health: &mut HealthClient<tonic::transport::Channel>,
    expected: ServingStatus,
) {
    for service in [
        "",
        "envoy.service.ext_proc.v3.ExternalProcessor",
        "actorgate.router.v1.Router",
    ] {
        let h = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("{service:?}: {e}"))
            .into_inner();
        assert_eq!(h.status, expected as i32, "{service:?}");
    }
}

#[tokio::test]
async fn sigterm_flips_readiness_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    // A drain delay long enough that the checks below fit in it on a loaded machine.
    let mut gw = Gateway::ready(
        dir.path(),
        "admin: {listen: ADMIN_ADDR}\nshutdown: {drain_delay: 5s, drain_timeout: 5s}\n\
         directory: {static: {actors: [{atespace: a, name: b, endpoint: '127.0.0.1:9'}]}}\n",
    )
    .await;
    let admin = gw.admin;
    let mut health = HealthClient::new(grpc_channel(gw.grpc()).await);
    assert_health(&mut health, ServingStatus::Serving).await;
    gw.signal("TERM");
    // Every answer until the 503 is 200 `ready`; the 503 comes during the drain delay, and the
    // process still answers /healthz below, so the drain has not ended.
    let body = gw
        .eventually(
            BOUND,
            "readiness went 503 during the drain delay",
            async || match get(admin, "/readyz").await {
                Ok((503, body)) => Some(body),
                Ok((200, _)) => None,
                Ok(other) => panic!("/readyz during the drain delay: {other:?}"),
                Err(_) => None,
            },
        )
        .await;
    assert_eq!(body, "draining\n");
    // gRPC health too: every service reports NOT_SERVING during the drain delay, so Envoy's
    // health checks move traffic away before the listener closes.
    assert_health(&mut health, ServingStatus::NotServing).await;
    assert_eq!(
        get(admin, "/healthz").await.unwrap().0,
        200,
        "still alive while draining"
    );
    let status = gw.wait_exit(BOUND).await;
    assert!(status.success(), "exit 0, got {status}");
    assert!(get(admin, "/healthz").await.is_err(), "listener closed");
    assert!(
        gw.log_text().contains("drained; exiting"),
        "{}",
        gw.log_text()
    );
}

#[tokio::test]
async fn readiness_follows_the_ateapi_control_plane() {
    let mut fake = FakeControlPlane::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\ndirectory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
            fake.addr
        ),
    )
    .await;
    let admin = gw.admin;
    fake.stop();
    // The probe runs every `readiness.interval`; unready after `failure_threshold` failures.
    let body = gw
        .eventually(
            Duration::from_secs(60),
            "readiness reports the unreachable control plane",
            async || match get(admin, "/readyz").await {
                Ok((503, body)) => Some(body),
                _ => None,
            },
        )
        .await;
    assert_eq!(body, "directory unreachable\n");
    assert_eq!(
        metric(&gw.metrics().await, "actorgate_directory_up", &[]),
        0.0
    );
}

#[tokio::test]
async fn port_in_use_is_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &format!("admin: {{listen: '{addr}'}}\ndirectory: {{static: {{}}}}\n"),
    );
    let (code, line) = serve_error(&config);
    assert_eq!(code, Some(1));
    assert!(
        line.contains(&format!("admin.listen: cannot listen on {addr}")),
        "{line}"
    );
}

#[test]
fn check_config_prints_effective_config_or_every_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "directory: {static: {actors: [{atespace: a, name: b, endpoint: '127.0.0.1:80'}]}}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains("budget: 5s") && printed.contains("parking_limit: 1000"),
        "{printed}"
    );

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "admin: {listen: ':9090'}\nresolver: {budget: 0s}\n\
         directory:\n  static:\n    actors:\n    - {atespace: a, name: b, endpoint: '127.0.0.1:1'}\n\
         \x20   - {atespace: a, name: c, endpoint: '127.0.0.1:2'}\n    - {atespace: a, name: d, endpoint: '10.0.0.1'}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 3, "one line per problem:\n{stderr}");
    let prefix = format!("actorgate: {}: ", bad.display());
    assert_eq!(
        lines[0],
        format!(r#"{prefix}admin.listen: invalid socket address ":9090" (want ip:port)"#)
    );
    assert!(
        lines[1].starts_with(&format!("{prefix}resolver.budget: 0s is out of range")),
        "{stderr}"
    );
    assert_eq!(
        lines[2],
        format!(
            r#"{prefix}directory.static.actors[2].endpoint: invalid socket address "10.0.0.1""#
        )
    );
}
