//! End to end, the branches issue 10 found untested: the worker's response timeout, an HTTP/1.1
//! request without Host, two `ate-target-actor` headers, a retry whose re-resolution fails,
//! listeners configured on one address, and resolver settings from the file reaching the
//! resolver. Real `actorgate serve`, real workers and a real fake control plane; every wait is on
//! an event and bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method, Step};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SUFFIX: &str = "actors.resources.substrate.ate.dev";

/// A config routing `demo/hello` to `worker` through the static directory.
fn static_config(worker: SocketAddr, extra: &str) -> String {
    format!(
        "admin: {{listen: ADMIN_ADDR}}\n{extra}\n\
         directory: {{static: {{actors: [{{atespace: demo, name: hello, endpoint: '{worker}'}}]}}}}\n"
    )
}

/// A config over the fake control plane, with `resolver` as the resolver section's fields.
fn ateapi_config(fake: &FakeControlPlane, resolver: &str) -> String {
    format!(
        "admin: {{listen: ADMIN_ADDR}}\nresolver: {{{resolver}}}\n\
         directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
        fake.addr
    )
}

/// Sends raw bytes and reads until the server closes the connection (bounded).
async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    within(BOUND, format!("raw exchange with {addr}"), async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        String::from_utf8_lossy(&out).into_owned()
    })
    .await
}

/// `actorgate_ingress_requests_total` of one status class and outcome.
fn requests(metrics: &str, class: &str, outcome: &str) -> f64 {
    metric_opt(
        metrics,
        "actorgate_ingress_requests_total",
        &[("class", class), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

#[tokio::test]
async fn a_worker_slower_than_response_timeout_is_a_504() {
    let (worker, mut arrivals) = held_worker().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &static_config(
            worker,
            "ingress: {http: {listen: HTTP_ADDR}, upstream: {response_timeout: 300ms}}",
        ),
    )
    .await;
    let http = gw.http();
    let started = Instant::now();
    let answer =
        tokio::spawn(
            async move { request(http, "/slow", &[("ate-target-actor", "demo/hello")]).await },
        );
    // The request reached the worker, which holds it (and never answers in this test).
    let _release = within(BOUND, "the request reaches the worker", arrivals.recv())
        .await
        .expect("the held worker runs");
    let (status, _, body) = within(BOUND, "the gateway answers", answer).await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (504, "actor demo/hello worker timed out")
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let m = gw.metrics().await;
    assert_eq!(requests(&m, "5xx", "upstream_timeout"), 1.0, "{m}");
    assert_eq!(requests(&m, "2xx", "proxied"), 0.0, "{m}");
}

#[tokio::test]
async fn http11_without_host_is_a_400_and_http10_without_host_is_routed() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(dir.path(), &static_config(worker, "")).await;
    let r = raw(
        gw.http(),
        b"GET / HTTP/1.1\r\nate-target-actor: demo/hello\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 400"), "{r}");
    assert!(r.ends_with("\r\n\r\nmissing host"), "{r}");
    // HTTP/1.0 has no Host requirement (RFC 9112 §3.2 is HTTP/1.1's): the target header routes.
    let r = raw(
        gw.http(),
        b"GET /hello HTTP/1.0\r\nate-target-actor: demo/hello\r\n\r\n",
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"),
        "{r}"
    );
    assert!(r.contains("x-echo-worker: w1"), "{r}");
    // An absolute-form target carries the authority itself: no Host needed.
    let r = raw(
        gw.http(),
        format!("GET http://hello.demo.{SUFFIX}/hello HTTP/1.1\r\nconnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let m = gw.metrics().await;
    assert_eq!(requests(&m, "4xx", "client_error"), 1.0, "{m}");
    assert_eq!(requests(&m, "2xx", "proxied"), 2.0, "{m}");
}

#[tokio::test]
async fn two_target_actor_headers_are_an_invalid_reference() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(dir.path(), &static_config(worker, "")).await;
    // Different actors or the same one twice: fail closed, never pick one.
    for (a, b) in [("demo/hello", "demo/other"), ("demo/hello", "demo/hello")] {
        let r = raw(
            gw.http(),
            format!(
                "GET / HTTP/1.1\r\nhost: gateway.example.com\r\nate-target-actor: {a}\r\n\
                 ate-target-actor: {b}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{a}, {b}: {r}");
        assert!(r.ends_with("\r\n\r\ninvalid actor reference"), "{r}");
    }
    let m = gw.metrics().await;
    assert_eq!(requests(&m, "4xx", "route_error"), 2.0, "{m}");
    assert_eq!(
        requests(&m, "2xx", "proxied"),
        0.0,
        "nothing reached the worker: {m}"
    );
}

#[tokio::test]
async fn a_retry_whose_re_resolution_fails_answers_with_that_error() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/m", ActorState::Running, "127.0.0.1", Duration::ZERO);
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &ateapi_config(&fake, "budget: 500ms, backoff: {initial: 20ms, max: 50ms}"),
    )
    .await;
    let host = format!("m.ns.{SUFFIX}:{}", worker.port());
    let headers = [("host", host.as_str())];
    let retries = |m: &str| metric(m, "actorgate_ingress_retries_total", &[]);

    // Cache the route; then the worker says the assignment is stale (the worker agent's 421,
    // here from the echo worker's /misdirected), and the control plane no longer knows the actor.
    assert_eq!(request(gw.http(), "/hello", &headers).await.0, 200);
    assert_eq!(fake.calls(Method::GetActor, "ns/m"), 1);
    fake.script(
        Method::GetActor,
        "ns/m",
        [Step::Fail(
            tonic::Code::NotFound,
            "actor ns/m not found".into(),
        )],
    );
    let (s, h, b) = request(gw.http(), "/misdirected", &headers).await;
    assert_eq!((s, b.as_str()), (404, "actor ns/m not found"));
    assert!(h.get("x-ate-assignment-stale").is_none());
    assert_eq!(fake.calls(Method::GetActor, "ns/m"), 2, "one re-resolution");
    let m = gw.metrics().await;
    assert_eq!(retries(&m), 1.0, "{m}");
    assert_eq!(requests(&m, "4xx", "route_error"), 1.0, "{m}");

    // Again, with the control plane unavailable for the whole budget: its 503.
    assert_eq!(request(gw.http(), "/hello", &headers).await.0, 200);
    assert_eq!(fake.calls(Method::GetActor, "ns/m"), 3);
    fake.script(
        Method::GetActor,
        "ns/m",
        (0..1000).map(|_| Step::Fail(tonic::Code::Unavailable, "connection refused".into())),
    );
    let (s, _, b) = request(gw.http(), "/misdirected", &headers).await;
    assert_eq!((s, b.as_str()), (503, "actor ns/m unavailable"));
    let m = gw.metrics().await;
    assert_eq!(retries(&m), 2.0, "one retry per request: {m}");
    assert_eq!(requests(&m, "5xx", "route_error"), 1.0, "{m}");
    assert_eq!(requests(&m, "2xx", "proxied"), 2.0, "{m}");
}

/// `actorgate check-config` of `yaml` written to `dir` → (exit code, stderr).
fn check_config(dir: &std::path::Path, yaml: &str) -> (Option<i32>, String) {
    let path = dir.join("check.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_actorgate"))
        .arg("check-config")
        .arg(&path)
        .env_remove("RUST_LOG")
        .output()
        .expect("run actorgate check-config");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn listeners_on_one_address_are_refused_naming_both_fields() {
    // Never bound: check-config only reads the file.
    let dir = tempfile::tempdir().unwrap();
    let directory =
        "directory: {static: {actors: [{atespace: demo, name: hello, endpoint: '127.0.0.1:1'}]}}\n";
    for (listeners, want) in [
        (
            "admin: {listen: '127.0.0.1:45001'}\ngrpc: {listen: '127.0.0.1:45002'}\n\
             ingress: {http: {listen: '127.0.0.1:45002'}}\n",
            "ingress.http.listen: 127.0.0.1:45002 is also grpc.listen",
        ),
        (
            "admin: {listen: '127.0.0.1:45001'}\ngrpc: {listen: '127.0.0.1:45001'}\n\
             ingress: {http: {listen: '127.0.0.1:45003'}}\n",
            "grpc.listen: 127.0.0.1:45001 is also admin.listen",
        ),
        (
            "admin: {listen: '127.0.0.1:45001'}\ngrpc: {listen: '127.0.0.1:45002'}\n\
             ingress: {http: {listen: '127.0.0.1:45001'}}\n",
            "ingress.http.listen: 127.0.0.1:45001 is also admin.listen",
        ),
        (
            "admin: {listen: '0.0.0.0:45001'}\ngrpc: {listen: '127.0.0.1:45002'}\n\
             ingress: {http: {listen: '127.0.0.1:45003'}}\n\
             echo_worker: {listen: '127.0.0.1:45001', name: w}\n",
            "echo_worker.listen: 127.0.0.1:45001 overlaps admin.listen (0.0.0.0:45001)",
        ),
    ] {
        let (code, stderr) = check_config(dir.path(), &format!("{listeners}{directory}"));
        assert_eq!(code, Some(2), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| l.contains(".listen")).collect();
        assert_eq!(lines.len(), 1, "one line for the pair:\n{stderr}");
        assert!(lines[0].ends_with(want), "want {want:?}:\n{stderr}");
    }
    // Port 0 never collides (each listener gets its own port), nor does a gRPC address when no
    // gRPC service is enabled (nothing binds it).
    for listeners in [
        "admin: {listen: '127.0.0.1:0'}\ngrpc: {listen: '127.0.0.1:0'}\n\
         ingress: {http: {listen: '127.0.0.1:0'}}\n",
        "admin: {listen: '127.0.0.1:45001'}\n\
         grpc: {listen: '127.0.0.1:45001', extproc: false, resolve_route: false}\n\
         ingress: {http: {listen: '127.0.0.1:45003'}}\n",
    ] {
        let (code, stderr) = check_config(dir.path(), &format!("{listeners}{directory}"));
        assert_eq!(code, Some(0), "{listeners}\n{stderr}");
    }
}

#[tokio::test]
async fn resolver_settings_from_the_file_reach_the_resolver() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w1").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/up", ActorState::Running, "127.0.0.1", Duration::ZERO);
    // Resumes far slower than the budget.
    fake.add_actor(
        "ns/slow",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::from_secs(30),
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &ateapi_config(
            &fake,
            "budget: 3s, parking_limit: 1, route_cache: {ttl: 0s}, probe_with_get_actor: false, \
             resume_boot: true, backoff: {initial: 20ms, max: 50ms}",
        ),
    )
    .await;
    let host = |a: &str| format!("{a}.ns.{SUFFIX}:{}", worker.port());

    // route_cache.ttl 0: no cache; probe_with_get_actor false: ResumeActor only; resume_boot.
    for _ in 0..2 {
        let (s, h, _) = request(gw.http(), "/hello", &[("host", &host("up"))]).await;
        assert_eq!((s, h["x-echo-worker"].to_str().unwrap()), (200, "w1"));
    }
    assert_eq!(fake.calls(Method::GetActor, "ns/up"), 0);
    assert_eq!(fake.calls(Method::ResumeActor, "ns/up"), 2);
    assert_eq!(fake.last_resume_boot(), Some(true));
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "actorgate_route_cache_hits_total", &[]),
        0.0,
        "{m}"
    );

    // parking_limit 1: one request waits for the resume, the next is refused at once.
    let http = gw.http();
    let slow = host("slow");
    let started = Instant::now();
    let parked = tokio::spawn(async move { request(http, "/", &[("host", &slow)]).await });
    gw.eventually(BOUND, "one request parked", async || {
        let m = get(gw.admin, "/metrics").await.ok()?.1;
        (metric_opt(&m, "actorgate_parked_requests", &[]) == Some(1.0)).then_some(())
    })
    .await;
    let (s, _, b) = request(gw.http(), "/", &[("host", &host("slow"))]).await;
    assert_eq!(
        (s, b.as_str()),
        (503, "actor ns/slow unavailable: router at capacity")
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "actorgate_parking_rejected_total", &[]),
        1.0,
        "{m}"
    );

    // budget 3s: the parked request gets its 504 when the budget is spent, not before.
    let (s, _, b) = within(BOUND, "the parked request's answer", parked)
        .await
        .unwrap();
    assert_eq!((s, b.as_str()), (504, "actor ns/slow request timed out"));
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "answered after {:?}",
        started.elapsed()
    );
    assert_eq!(fake.calls(Method::ResumeActor, "ns/slow"), 1);
}
