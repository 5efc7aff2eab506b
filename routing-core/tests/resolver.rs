//! Resolver behaviour against a real gRPC fake of ate-api-server (DESIGN §4). Tests wait on
//! events (calls reaching the fake, RPCs finishing, the server stopping), never on sleeps, and
//! every await is bounded.

use std::sync::Arc;
use std::time::Duration;

use routing_core::directory::ateapi::{AteApiDirectory, AteApiSettings};
use routing_core::extract::{ExtractorKind, Target};
use routing_core::proto::ActorState;
use routing_core::resolver::BackoffSettings;
use routing_core::testing::{FakeControlPlane, Method, Step, TEST_TIMEOUT, wait_until, within};
use routing_core::{
    ActorDirectory, ActorRef, Extractor, ResolveKind, Resolver, ResolverMetrics, ResolverSettings,
    RouteError,
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
        let route = within("a joined resolve", t)
            .await
            .unwrap()
            .expect("resolves");
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
    let route = within("resolve", r.resolve(&target("ns/a")))
        .await
        .expect("succeeds after retries");
    assert_eq!(route.endpoint, "10.0.0.5:8080".parse().unwrap());
    assert_eq!(route.kind, ResolveKind::Resumed);
    // One probe, then the two refused resumes and the one that succeeded.
    assert_eq!(fake.calls(Method::GetActor, "ns/a"), 1);
    assert_eq!(fake.calls(Method::ResumeActor, "ns/a"), 3);
}

#[tokio::test]
async fn not_found_is_404_at_once_without_retry() {
    let fake = FakeControlPlane::start().await;
    let r = resolver_for(&fake, settings(5000));
    let err = within("resolve", r.resolve(&target("ns/ghost")))
        .await
        .unwrap_err();
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
    let err = within("resolve", r.resolve(&target("ns/busy")))
        .await
        .unwrap_err();
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
    let err = within("resolve", r.resolve(&target("ns/slowfail")))
        .await
        .unwrap_err();
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
    let err = within("resolve", r.resolve(&target("ns/dl")))
        .await
        .unwrap_err();
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
    // The RPC hangs well past the 300 ms budget, then answers: whether the client cancelled it
    // at the budget shows on the server once it finishes, either way.
    fake.script(
        Method::ResumeActor,
        "ns/stuck",
        [Step::Delay(Duration::from_millis(900))],
    );
    let r = resolver_for(&fake, settings(300));
    let err = within("resolve", r.resolve(&target("ns/stuck")))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RouteError::Timeout(ActorRef::parse("ns/stuck").unwrap())
    );
    assert_eq!(err.http_status(), 504);
    assert_eq!(err.client_message(), "actor ns/stuck request timed out");
    // GetActor, then the hung ResumeActor: both finish on the server.
    fake.wait_for_finished(2, TEST_TIMEOUT).await;
    assert_eq!(
        (fake.completed(), fake.cancelled()),
        (2, 0),
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
    wait_until(
        "both requests hold their parking slots",
        TEST_TIMEOUT,
        || r.status().parked == 2,
    )
    .await;
    let err = within("resolve", r.resolve(&target("ns/slow")))
        .await
        .unwrap_err();
    assert_eq!(err.http_status(), 503);
    assert_eq!(
        err.client_message(),
        "actor ns/slow unavailable: router at capacity"
    );
    assert_eq!(r.status().parking_rejected, 1);
    // A running actor (not cached yet) still resolves while parking is full.
    let up = within("resolve", r.resolve(&target("ns/up")))
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
    fake.wait_for_calls(Method::ResumeActor, "ns/c", 1, TEST_TIMEOUT)
        .await;
    first.abort();
    assert!(
        within("the aborted caller", first)
            .await
            .unwrap_err()
            .is_cancelled()
    );
    let route = within("resolve", r.resolve(&target("ns/c")))
        .await
        .expect("second caller gets the result");
    assert_eq!(route.endpoint, "10.0.0.10:8080".parse().unwrap());
    assert_eq!(
        fake.calls(Method::ResumeActor, "ns/c"),
        1,
        "no second resume"
    );
    fake.wait_for_finished(2, TEST_TIMEOUT).await;
    assert_eq!(fake.cancelled(), 0, "the server saw no cancellation");
    assert_eq!(
        fake.completed(),
        2,
        "GetActor and ResumeActor both completed"
    );
}

#[tokio::test]
async fn cached_route_skips_rpc_until_invalidated() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/hot", ActorState::Running, "10.0.0.11", Duration::ZERO);
    let r = resolver_for(&fake, settings(5000));
    let first = within("resolve", r.resolve(&target("ns/hot")))
        .await
        .unwrap();
    assert_eq!(first.kind, ResolveKind::Running);
    assert_eq!(fake.calls(Method::GetActor, "ns/hot"), 1);
    let second = within("resolve", r.resolve(&target("ns/hot")))
        .await
        .unwrap();
    assert_eq!(second.kind, ResolveKind::Cached);
    assert_eq!(second.endpoint, first.endpoint);
    assert_eq!(
        fake.calls(Method::GetActor, "ns/hot"),
        1,
        "served from cache"
    );

    fake.set_pod_ip("ns/hot", "10.0.0.12");
    r.invalidate(&ActorRef::parse("ns/hot").unwrap());
    let third = within("resolve", r.resolve(&target("ns/hot")))
        .await
        .unwrap();
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
    within("the fake stops", fake.stopped()).await;
    let r = resolver_for(&fake, settings(300));
    let err = within("resolve", r.resolve(&target("ns/x")))
        .await
        .unwrap_err();
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
        let err = within("resolve", r.resolve(&target(actor)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.http_status(), err.client_message().as_str()),
            (status, body)
        );
    }
    // RUNNING with an unusable worker address → 500 routing failed.
    fake.add_actor("ns/badip", ActorState::Running, "not-an-ip", Duration::ZERO);
    let r = resolver_for(&fake, settings(1000));
    let err = within("resolve", r.resolve(&target("ns/badip")))
        .await
        .unwrap_err();
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
    let route = within(
        "route",
        r.route(&routing_core::RequestMeta {
            target_actor: None,
            authority: Some("bot.team.actors.resources.substrate.ate.dev:9000"),
        }),
    )
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
async fn bearer_token_file_is_sent_rotated_and_bad_tokens_are_refused() {
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/t", ActorState::Running, "10.0.0.15", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").unwrap();
    let client = Arc::new(AteApiDirectory::new(&ateapi(&fake, Some(token.clone()))).unwrap());
    let r = Resolver::new(
        client.clone(),
        settings(1000),
        Extractor::default(),
        ResolverMetrics::new(),
    );
    within("resolve", r.resolve(&target("ns/t"))).await.unwrap();
    assert_eq!(
        fake.last_authorization().as_deref(),
        Some("Bearer s3cr3t-token")
    );

    // A rotated token is sent from the next RPC on.
    let reloader = client.token_reloader().expect("token file watched").clone();
    let actor = ActorRef::parse("ns/t").unwrap();
    let mut attempts = reloader.attempts();
    std::fs::write(&token, "rotated-token\n").unwrap();
    within("token re-read", async {
        while reloader.status().reloads == 0 {
            attempts.changed().await.unwrap();
        }
    })
    .await;
    within("get", client.get(&actor)).await.unwrap();
    assert_eq!(
        fake.last_authorization().as_deref(),
        Some("Bearer rotated-token")
    );

    // A replacement that is not a valid header value keeps the previous token.
    std::fs::write(&token, "bad\u{7f}token").unwrap();
    within("bad token re-read", async {
        while reloader.status().last_error.is_none() {
            attempts.changed().await.unwrap();
        }
    })
    .await;
    within("get", client.get(&actor)).await.unwrap();
    assert_eq!(
        fake.last_authorization().as_deref(),
        Some("Bearer rotated-token")
    );

    // A token file that is not a valid header value is refused at construction.
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
    within("resolve", r.resolve(&target("ns/a")))
        .await
        .expect("connected");
    // An RPC still in flight keeps the old connection half-open (GOAWAY) while the server stops.
    fake.add_actor("ns/h", ActorState::Suspended, "10.0.0.19", Duration::ZERO);
    fake.script(Method::ResumeActor, "ns/h", [Step::Hang]);
    let hung = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&target("ns/h")).await })
    };
    fake.wait_for_calls(Method::ResumeActor, "ns/h", 1, TEST_TIMEOUT)
        .await;
    within("the fake stops", fake.stopped()).await;
    // The listener is closed and the open connection told to go away; until the client has read
    // the GOAWAY a new call may still be served on it, so ask until the client sees the server
    // gone. Whatever fails must fail as UNAVAILABLE.
    let b = ActorRef::parse("ns/b").unwrap();
    let direct = within("the client sees the control plane gone", async {
        loop {
            match raw.get(&b).await {
                Ok(_) => tokio::task::yield_now().await,
                Err(e) => break e,
            }
        }
    })
    .await;
    assert_eq!(direct.code, tonic::Code::Unavailable, "{direct:?}");
    let err = within("resolve", r.resolve(&target("ns/b")))
        .await
        .unwrap_err();
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (503, "actor ns/b unavailable")
    );
    hung.abort();
}

// ---- Branches issue 10 found untested ---------------------------------------------------------

/// A directory whose first `GetActor` answers only when the test releases it, with the address
/// the actor had then (`10.0.1.1`); every later lookup answers at once with where it runs now
/// (`10.0.1.2`). So a test decides when an in-flight lookup finishes, without timing.
struct HeldFirstLookup {
    calls: std::sync::atomic::AtomicUsize,
    release: std::sync::Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl HeldFirstLookup {
    fn new() -> (Arc<Self>, tokio::sync::oneshot::Sender<()>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let d = Self {
            calls: Default::default(),
            release: std::sync::Mutex::new(Some(rx)),
        };
        (Arc::new(d), tx)
    }

    fn calls(&self) -> usize {
        self.calls.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn running_at(actor: &ActorRef, ip: &str) -> routing_core::ActorRecord {
    routing_core::ActorRecord {
        actor: actor.clone(),
        uid: "uid".into(),
        template: None,
        state: ActorState::Running,
        worker: Some(routing_core::directory::Worker {
            pod_ip: ip.into(),
            pod: "pod".into(),
            namespace: "workers".into(),
            pool: "pool".into(),
            port: None,
        }),
    }
}

impl routing_core::ActorDirectory for HeldFirstLookup {
    fn kind(&self) -> &'static str {
        "held"
    }
    fn get(
        &self,
        actor: &ActorRef,
    ) -> routing_core::directory::DirFuture<routing_core::ActorRecord> {
        let first = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
        let actor = actor.clone();
        let release = if first {
            self.release.lock().unwrap().take()
        } else {
            None
        };
        Box::pin(async move {
            match release {
                Some(rx) => {
                    let _ = rx.await;
                    Ok(running_at(&actor, "10.0.1.1"))
                }
                None => Ok(running_at(&actor, "10.0.1.2")),
            }
        })
    }
    fn resume(
        &self,
        actor: &ActorRef,
        _boot: bool,
    ) -> routing_core::directory::DirFuture<routing_core::directory::ResumeOutcome> {
        let get = self.get(actor);
        Box::pin(async move {
            Ok(routing_core::directory::ResumeOutcome {
                record: get.await?,
                resumed: false,
            })
        })
    }
    fn list(
        &self,
        _atespace: &str,
        _page_size: i32,
        _page_token: &str,
    ) -> routing_core::directory::DirFuture<routing_core::directory::ActorPage> {
        Box::pin(async {
            Ok(routing_core::directory::ActorPage {
                actors: Vec::new(),
                next_page_token: String::new(),
            })
        })
    }
}

fn resolver_over(d: Arc<HeldFirstLookup>) -> Resolver {
    Resolver::new(
        d,
        settings(5000),
        Extractor::default(),
        ResolverMetrics::new(),
    )
}

#[tokio::test]
async fn invalidate_during_a_lookup_detaches_it_from_later_requests_and_the_cache() {
    let (dir, release) = HeldFirstLookup::new();
    let r = resolver_over(dir.clone());
    let old_flight = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&target("ns/mv")).await })
    };
    wait_until("the first lookup is under way", TEST_TIMEOUT, || {
        dir.calls() == 1
    })
    .await;
    assert_eq!(r.status().flights_in_progress, 1);
    // The worker answered 421 / refused: the route is invalidated while the lookup is in flight.
    r.invalidate(&ActorRef::parse("ns/mv").unwrap());
    assert_eq!(
        r.status().flights_in_progress,
        0,
        "the lookup under way is detached"
    );

    // A request after the invalidation starts a lookup of its own instead of joining the old one
    // (which has not answered, and would answer the old address).
    let fresh = within("resolve", r.resolve(&target("ns/mv")))
        .await
        .unwrap();
    assert_eq!(fresh.kind, ResolveKind::Running);
    assert_eq!(fresh.endpoint, "10.0.1.2:8080".parse().unwrap());
    assert_eq!(dir.calls(), 2);

    // The old lookup answers now: its waiter gets that (old) answer...
    release.send(()).unwrap();
    let old = within("the old lookup", old_flight).await.unwrap().unwrap();
    assert_eq!(old.endpoint, "10.0.1.1:8080".parse().unwrap());
    // ...but it is not cached over the fresh route.
    let cached = within("resolve", r.resolve(&target("ns/mv")))
        .await
        .unwrap();
    assert_eq!(
        (cached.kind, cached.endpoint),
        (ResolveKind::Cached, "10.0.1.2:8080".parse().unwrap())
    );
    assert_eq!(dir.calls(), 2, "no further lookup");
}

#[tokio::test]
async fn a_lookup_invalidated_in_flight_is_not_cached() {
    let (dir, release) = HeldFirstLookup::new();
    let r = resolver_over(dir.clone());
    let flight = {
        let r = r.clone();
        tokio::spawn(async move { r.resolve(&target("ns/st")).await })
    };
    wait_until("the lookup is under way", TEST_TIMEOUT, || dir.calls() == 1).await;
    r.invalidate(&ActorRef::parse("ns/st").unwrap());
    release.send(()).unwrap();
    let route = within("the invalidated lookup", flight)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (route.kind, route.endpoint),
        (ResolveKind::Running, "10.0.1.1:8080".parse().unwrap())
    );
    // The next request asks the directory again rather than using the stale answer.
    let next = within("resolve", r.resolve(&target("ns/st")))
        .await
        .unwrap();
    assert_eq!(
        (next.kind, next.endpoint),
        (ResolveKind::Running, "10.0.1.2:8080".parse().unwrap()),
        "not served from cache"
    );
    assert_eq!(dir.calls(), 2);
}

#[tokio::test]
async fn running_actor_with_an_unusable_worker_address_is_500_routing_failed() {
    let fake = FakeControlPlane::start().await;
    for (name, addrs) in [
        ("none", &[][..]),
        ("empty", &[""][..]),
        ("notip", &["not-an-ip"][..]),
        ("unspec4", &["0.0.0.0"][..]),
        ("unspec6", &["::"][..]),
        ("multicast", &["224.0.0.1"][..]),
        ("withport", &["10.0.0.1:8080"][..]),
    ] {
        let actor = format!("ns/{name}");
        fake.add_actor(&actor, ActorState::Running, "10.0.0.1", Duration::ZERO);
        fake.set_pod_ips(&actor, addrs);
        let r = resolver_for(&fake, settings(1000));
        let err = within("resolve", r.resolve(&target(&actor)))
            .await
            .unwrap_err();
        assert_eq!(
            (err.http_status(), err.client_message()),
            (500, format!("actor {actor} routing failed")),
            "{addrs:?}"
        );
        assert_eq!(err.outcome(), "routing_failed");
        // Final at once: one lookup, no retry, no resume.
        assert_eq!(fake.calls(Method::GetActor, &actor), 1, "{addrs:?}");
        assert_eq!(fake.calls(Method::ResumeActor, &actor), 0, "{addrs:?}");
    }
}

/// A directory whose only actor is RUNNING without any worker assignment (a control plane
/// mid-update can answer that).
struct Unassigned;

impl routing_core::ActorDirectory for Unassigned {
    fn kind(&self) -> &'static str {
        "unassigned"
    }
    fn get(
        &self,
        actor: &ActorRef,
    ) -> routing_core::directory::DirFuture<routing_core::ActorRecord> {
        let record = routing_core::ActorRecord {
            actor: actor.clone(),
            uid: "uid".into(),
            template: None,
            state: ActorState::Running,
            worker: None,
        };
        Box::pin(async move { Ok(record) })
    }
    fn resume(
        &self,
        actor: &ActorRef,
        _boot: bool,
    ) -> routing_core::directory::DirFuture<routing_core::directory::ResumeOutcome> {
        let get = self.get(actor);
        Box::pin(async move {
            Ok(routing_core::directory::ResumeOutcome {
                record: get.await?,
                resumed: false,
            })
        })
    }
    fn list(
        &self,
        _atespace: &str,
        _page_size: i32,
        _page_token: &str,
    ) -> routing_core::directory::DirFuture<routing_core::directory::ActorPage> {
        Box::pin(async {
            Ok(routing_core::directory::ActorPage {
                actors: Vec::new(),
                next_page_token: String::new(),
            })
        })
    }
}

#[tokio::test]
async fn running_actor_without_a_worker_assignment_is_500_routing_failed() {
    let r = Resolver::new(
        Arc::new(Unassigned),
        settings(1000),
        Extractor::default(),
        ResolverMetrics::new(),
    );
    let err = within("resolve", r.resolve(&target("ns/nowhere")))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        RouteError::RoutingFailed(ActorRef::parse("ns/nowhere").unwrap())
    );
    assert_eq!(
        (err.http_status(), err.client_message().as_str()),
        (500, "actor ns/nowhere routing failed")
    );
}
