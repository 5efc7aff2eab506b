//! Resolver behaviour against a real gRPC fake of ate-api-server (DESIGN §4).

use std::sync::Arc;
use std::time::Duration;

use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings};
use routing_core::extract::{ExtractorKind, Target};
use routing_core::proto::ActorState;
use routing_core::resolver::BackoffSettings;
use routing_core::testing::{FakeControlPlane, Method, Step};
use routing_core::{
    ActorRef, Extractor, ResolveKind, Resolver, ResolverMetrics, ResolverSettings, RouteError,
};

fn settings(budget_ms: u64) -> ResolverSettings {
    ResolverSettings {
        budget: Duration::from_millis(budget_ms),
        backoff: BackoffSettings {
            initial: Duration::from_millis(10),
            factor: 1.1,
            jitter: 0.1,
            max: Duration::from_millis(50),
        },
        ..ResolverSettings::default()
    }
}

fn ateapi(fake: &FakeControlPlane, token_file: Option<std::path::PathBuf>) -> AteApiSettings {
    AteApiSettings {
        token_file,
        ..fake.plaintext_settings()
    }
}

fn resolver_for(fake: &FakeControlPlane, s: ResolverSettings) -> Resolver {
    let dir = AteApiDirectory::new(&ateapi(fake, None)).expect("client");
    Resolver::new(
        Arc::new(dir),
        s,
        Extractor::default(),
        ResolverMetrics::new(),
    )
}

fn target(actor: &str) -> Target {
    Target {
        actor: ActorRef::parse(actor).unwrap(),
        port: 8080,
        via: ExtractorKind::Header,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_resolves_of_suspended_actor_share_one_resume() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/sleepy",
        ActorState::Suspended,
        "10.1.2.3",
        Duration::from_millis(200),
    );
    let r = resolver_for(&fake, settings(5000));
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve(&target("ns/sleepy")).await })
        })
        .collect();
    let mut endpoints = std::collections::HashSet::new();
    let mut resumed = 0;
    for t in tasks {
        let route = t.await.unwrap().expect("resolves");
        endpoints.insert(route.endpoint);
        resumed += route.resumed() as usize;
    }
    assert_eq!(
        fake.calls(Method::ResumeActor, "ns/sleepy"),
        1,
        "exactly one ResumeActor RPC"
    );
    assert_eq!(endpoints.len(), 1);
    assert_eq!(
        endpoints.into_iter().next().unwrap(),
        "10.1.2.3:8080".parse().unwrap()
    );
    assert_eq!(resumed, 200, "every joined request reports the resume");
}

#[tokio::test]
async fn aborted_twice_then_ok_succeeds_after_retries() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/a", ActorState::Suspended, "10.0.0.5", Duration::ZERO);
    fake.script(
        Method::ResumeActor,
        "ns/a",
        [
            Step::Fail(
                tonic::Code::Aborted,
                "another operation holds this actor".into(),
            ),
            Step::Fail(
                tonic::Code::Aborted,
                "another operation holds this actor".into(),
            ),
        ],
    );
    let r = resolver_for(&fake, settings(5000));
    let route = r
        .resolve(&target("ns/a"))
        .await
        .expect("succeeds after retries");
    assert_eq!(route.endpoint, "10.0.0.5:8080".parse().unwrap());
    assert_eq!(route.kind, ResolveKind::Resumed);
    assert_eq!(fake.calls(Method::ResumeActor, "ns/a"), 3);
}

#[tokio::test]
async fn not_found_is_404_at_once_without_retry() {
    let fake = FakeControlPlane::start().await;
    let r = resolver_for(&fake, settings(5000));
    let err = r.resolve(&target("ns/ghost")).await.unwrap_err();
    assert_eq!(err.http_status(), 404);
    assert_eq!(err.client_message(), "actor ns/ghost not found");
    assert_eq!(fake.calls(Method::GetActor, "ns/ghost"), 1);
    assert_eq!(fake.calls(Method::ResumeActor, "ns/ghost"), 0);
}

#[tokio::test]
async fn failed_precondition_past_budget_is_503_with_description() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/busy", ActorState::Suspended, "10.0.0.6", Duration::ZERO);
    fake.script(
        Method::ResumeActor,
        "ns/busy",
        (0..1000).map(|_| {
            Step::Fail(
                tonic::Code::FailedPrecondition,
                "no free workers available".into(),
            )
        }),
    );
    let r = resolver_for(&fake, settings(400));
    let err = r.resolve(&target("ns/busy")).await.unwrap_err();
    assert_eq!(err.http_status(), 503);
    assert_eq!(
        err.client_message(),
        "actor ns/busy unavailable: no free workers available"
    );
    assert!(
        fake.calls(Method::ResumeActor, "ns/busy") > 2,
        "it retried within the budget"
    );
}

#[tokio::test]
async fn budget_ending_during_a_retry_still_reports_the_server_reason() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/slowfail",
        ActorState::Suspended,
        "10.0.0.6",
        Duration::ZERO,
    );
    // Every attempt takes 150 ms and fails: the 400 ms budget runs out in the middle of one.
    fake.script(
        Method::ResumeActor,
        "ns/slowfail",
        (0..100).map(|_| {
            Step::FailAfter(
                Duration::from_millis(150),
                tonic::Code::ResourceExhausted,
                "no free workers available".into(),
            )
        }),
    );
    let r = resolver_for(&fake, settings(400));
    let err = r.resolve(&target("ns/slowfail")).await.unwrap_err();
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (
            503,
            "actor ns/slowfail unavailable: no free workers available"
        )
    );
}

#[tokio::test]
async fn client_rpc_deadline_is_a_timeout_not_an_internal_error() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/dl", ActorState::Running, "10.0.0.16", Duration::ZERO);
    fake.script(Method::GetActor, "ns/dl", [Step::Hang]);
    let mut s = ateapi(&fake, None);
    s.rpc_timeout = Duration::from_millis(100);
    let dir = AteApiDirectory::new(&s).unwrap();
    let r = Resolver::new(
        Arc::new(dir),
        settings(3000),
        Extractor::default(),
        ResolverMetrics::new(),
    );
    let err = r.resolve(&target("ns/dl")).await.unwrap_err();
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (504, "actor ns/dl request timed out")
    );
}

#[tokio::test]
async fn hung_rpc_past_budget_is_504() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/stuck",
        ActorState::Suspended,
        "10.0.0.7",
        Duration::ZERO,
    );
    fake.script(Method::ResumeActor, "ns/stuck", [Step::Hang]);
    let r = resolver_for(&fake, settings(300));
    let err = r.resolve(&target("ns/stuck")).await.unwrap_err();
    assert_eq!(
        err,
        RouteError::Timeout(ActorRef::parse("ns/stuck").unwrap())
    );
    assert_eq!(err.http_status(), 504);
    assert_eq!(err.client_message(), "actor ns/stuck request timed out");
    // Give a (wrong) client-side cancel time to reach the server before checking.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fake.cancelled(),
        0,
        "the hung RPC is left running, not cancelled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_limit_refuses_extra_waiters_but_not_running_actors() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/slow",
        ActorState::Suspended,
        "10.0.0.8",
        Duration::from_secs(3),
    );
    fake.add_actor("ns/up", ActorState::Running, "10.0.0.9", Duration::ZERO);
    let r = resolver_for(
        &fake,
        ResolverSettings {
            parking_limit: 2,
            ..settings(10_000)
        },
    );
    let parked: Vec<_> = (0..2)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve(&target("ns/slow")).await })
        })
        .collect();
    // Wait until both hold their parking slots.
    for _ in 0..500 {
        if r.status().parked == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(r.status().parked, 2);
    let err = r.resolve(&target("ns/slow")).await.unwrap_err();
    assert_eq!(err.http_status(), 503);
    assert_eq!(
        err.client_message(),
        "actor ns/slow unavailable: router at capacity"
    );
    // A running actor (not cached yet) still resolves while parking is full.
    let up = r
        .resolve(&target("ns/up"))
        .await
        .expect("running actor resolves");
    assert_eq!(up.kind, ResolveKind::Running);
    assert_eq!(
        r.status().parked,
        2,
        "the parked requests are still waiting"
    );
    assert_eq!(fake.calls(Method::ResumeActor, "ns/up"), 0);
    for p in parked {
        p.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_first_caller_does_not_cancel_the_flight() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/c",
        ActorState::Suspended,
        "10.0.0.10",
        Duration::from_millis(400),
    );
    let r = resolver_for(&fake, settings(5000));
    let first = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&target("ns/c")).await })
    };
    for _ in 0..500 {
        if fake.calls(Method::ResumeActor, "ns/c") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        fake.calls(Method::ResumeActor, "ns/c"),
        1,
        "the resume RPC was sent"
    );
    first.abort();
    assert!(first.await.unwrap_err().is_cancelled());
    let route = r
        .resolve(&target("ns/c"))
        .await
        .expect("second caller gets the result");
    assert_eq!(route.endpoint, "10.0.0.10:8080".parse().unwrap());
    assert_eq!(
        fake.calls(Method::ResumeActor, "ns/c"),
        1,
        "no second resume"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(fake.cancelled(), 0, "the server saw no cancellation");
    assert!(
        fake.completed() >= 2,
        "GetActor and ResumeActor both completed"
    );
}

#[tokio::test]
async fn cached_route_skips_rpc_until_invalidated() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/hot", ActorState::Running, "10.0.0.11", Duration::ZERO);
    let r = resolver_for(&fake, settings(5000));
    let first = r.resolve(&target("ns/hot")).await.unwrap();
    assert_eq!(first.kind, ResolveKind::Running);
    assert_eq!(fake.calls(Method::GetActor, "ns/hot"), 1);
    let second = r.resolve(&target("ns/hot")).await.unwrap();
    assert_eq!(second.kind, ResolveKind::Cached);
    assert_eq!(second.endpoint, first.endpoint);
    assert_eq!(
        fake.calls(Method::GetActor, "ns/hot"),
        1,
        "served from cache"
    );

    fake.set_pod_ip("ns/hot", "10.0.0.12");
    r.invalidate(&ActorRef::parse("ns/hot").unwrap());
    let third = r.resolve(&target("ns/hot")).await.unwrap();
    assert_eq!(
        fake.calls(Method::GetActor, "ns/hot"),
        2,
        "asked the server again"
    );
    assert_eq!(third.endpoint, "10.0.0.12:8080".parse().unwrap());
}

#[tokio::test]
async fn control_plane_down_is_503_unavailable() {
    let mut fake = FakeControlPlane::start().await;
    fake.add_actor("ns/x", ActorState::Running, "10.0.0.13", Duration::ZERO);
    fake.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = resolver_for(&fake, settings(300));
    let err = r.resolve(&target("ns/x")).await.unwrap_err();
    assert_eq!(err.http_status(), 503);
    assert_eq!(err.client_message(), "actor ns/x unavailable");
}

#[tokio::test]
async fn errors_map_to_the_table() {
    let fake = FakeControlPlane::start().await;
    for (actor, code, status, body) in [
        (
            "ns/p",
            tonic::Code::PermissionDenied,
            403,
            "actor ns/p access denied",
        ),
        (
            "ns/u",
            tonic::Code::Unauthenticated,
            401,
            "actor ns/u authentication required",
        ),
        (
            "ns/d",
            tonic::Code::DeadlineExceeded,
            504,
            "actor ns/d request timed out",
        ),
        (
            "ns/i",
            tonic::Code::Internal,
            500,
            "error resuming actor ns/i",
        ),
    ] {
        fake.script(
            Method::GetActor,
            actor,
            [Step::Fail(code, "rpc error: secret internal detail".into())],
        );
        let r = resolver_for(&fake, settings(1000));
        let err = r.resolve(&target(actor)).await.unwrap_err();
        assert_eq!(
            (err.http_status(), err.client_message().as_str()),
            (status, body)
        );
    }
    // RUNNING with an unusable worker address → 500 routing failed.
    fake.add_actor("ns/badip", ActorState::Running, "not-an-ip", Duration::ZERO);
    let r = resolver_for(&fake, settings(1000));
    let err = r.resolve(&target("ns/badip")).await.unwrap_err();
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (500, "actor ns/badip routing failed")
    );
}

#[tokio::test]
async fn route_extracts_then_resolves() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("team/bot", ActorState::Running, "10.0.0.14", Duration::ZERO);
    let r = resolver_for(&fake, settings(1000));
    let route = r
        .route(&routing_core::RequestMeta {
            target_actor: None,
            authority: Some("bot.team.actors.resources.substrate.ate.dev:9000"),
        })
        .await
        .unwrap();
    assert_eq!(route.endpoint, "10.0.0.14:9000".parse().unwrap());
    let err = r
        .route(&routing_core::RequestMeta {
            target_actor: None,
            authority: Some("example.com"),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (404, "invalid actor reference")
    );
}

#[tokio::test]
async fn bearer_token_file_is_sent_and_bad_tokens_are_refused() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/t", ActorState::Running, "10.0.0.15", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").unwrap();
    let client = AteApiDirectory::new(&ateapi(&fake, Some(token.clone()))).unwrap();
    let r = Resolver::new(
        Arc::new(client),
        settings(1000),
        Extractor::default(),
        ResolverMetrics::new(),
    );
    r.resolve(&target("ns/t")).await.unwrap();
    assert_eq!(
        fake.last_authorization().as_deref(),
        Some("Bearer s3cr3t-token")
    );

    // A token file that is not a valid header value is refused at construction.
    std::fs::write(&token, "bad\u{7f}token").unwrap();
    let err = AteApiDirectory::new(&ateapi(&fake, Some(token.clone())))
        .err()
        .expect("bad token refused");
    assert!(
        err.to_string()
            .contains("does not hold a valid header value"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("bad"),
        "the token is not echoed: {err}"
    );
}

#[tokio::test]
async fn control_plane_going_down_after_connecting_is_503_unavailable() {
    let mut fake = FakeControlPlane::start().await;
    fake.add_actor("ns/a", ActorState::Running, "10.0.0.17", Duration::ZERO);
    fake.add_actor("ns/b", ActorState::Running, "10.0.0.18", Duration::ZERO);
    let dir = AteApiDirectory::new(&ateapi(&fake, None)).unwrap();
    let raw: Arc<dyn routing_core::ActorDirectory> = Arc::new(dir);
    let r = Resolver::new(
        raw.clone(),
        settings(500),
        Extractor::default(),
        ResolverMetrics::new(),
    );
    r.resolve(&target("ns/a")).await.expect("connected");
    // An RPC still in flight keeps the old connection half-open (GOAWAY) while the server stops.
    fake.add_actor("ns/h", ActorState::Suspended, "10.0.0.19", Duration::ZERO);
    fake.script(Method::ResumeActor, "ns/h", [Step::Hang]);
    let hung = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&target("ns/h")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    fake.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let direct = raw
        .get(&ActorRef::parse("ns/b").unwrap())
        .await
        .unwrap_err();
    assert_eq!(direct.code, tonic::Code::Unavailable, "{direct:?}");
    let err = r.resolve(&target("ns/b")).await.unwrap_err();
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (503, "actor ns/b unavailable")
    );
    hung.abort();
}
