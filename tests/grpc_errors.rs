//! gRPC clients get gRPC errors from actorgate's proxy: every reply the proxy makes itself is a
//! Trailers-Only response (HTTP 200, `grpc-status` from the error table, `grpc-message` = the
//! table's body), asserted with a real tonic client over h2c against the binary, with the echo
//! worker and a fake ate-api-server.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method, Step};
use tonic::Code;

const SUFFIX: &str = "actors.resources.substrate.ate.dev";

/// Calls `name.demo.<suffix>:<port>` through the proxy and expects a gRPC error.
async fn grpc_error(proxy: SocketAddr, authority: &str) -> tonic::Status {
    match echo_unary(proxy, authority, &[], "hi").await {
        Ok(r) => panic!("{authority}: expected an error, got {r:?}"),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_clients_get_grpc_status_and_message_from_the_proxy() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "right").await;
    let mut fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/hello",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    fake.add_actor(
        "demo/dead",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    fake.add_actor(
        "demo/sleepy",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::ZERO,
    );
    fake.script(Method::ResumeActor, "demo/sleepy", [Step::Hang]);
    fake.add_actor(
        "demo/later",
        ActorState::Running,
        "127.0.0.1",
        Duration::ZERO,
    );
    let dir = tempfile::tempdir().expect("tempdir");
    // A short resolver budget makes the hung resume a quick DEADLINE_EXCEEDED.
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\nresolver: {{budget: 400ms}}\n\
             directory: {{ateapi: {{address: '{}', tls: plaintext, connect_timeout: 200ms}}}}\n",
            fake.addr
        ),
    )
    .await;
    let proxy = gw.http();
    let host = |name: &str, port: u16| format!("{name}.demo.{SUFFIX}:{port}");

    // A successful call still goes through (over HTTP/2 to the worker, trailers intact).
    let reply = echo_unary(proxy, &host("hello", worker.port()), &[], "ping")
        .await
        .expect("a successful call through the proxy");
    assert_eq!(
        (reply.message.as_str(), reply.worker.as_str()),
        ("ping", "right")
    );
    // The worker's own gRPC errors pass through unchanged.
    let status = echo_unary_request(
        proxy,
        &host("hello", worker.port()),
        &[],
        ingress::echo::proto::EchoRequest {
            message: "x".into(),
            fail_code: Code::AlreadyExists as i32,
            ..Default::default()
        },
    )
    .await
    .expect_err("the worker fails the call");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    // Unknown actor: NOT_FOUND with the table's body, not UNIMPLEMENTED "…status: 404".
    let s = grpc_error(proxy, &host("ghost", worker.port())).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::NotFound, "actor demo/ghost not found"),
        "{s:?}"
    );
    // The Trailers-Only reply keeps the request id.
    assert!(s.metadata().get("x-request-id").is_some(), "{s:?}");

    // No actor in the request at all: INVALID_ARGUMENT.
    let s = grpc_error(proxy, &proxy.to_string()).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "invalid actor reference"),
        "{s:?}"
    );
    // An invalid ate-target-actor value: the same.
    let s = echo_unary(
        proxy,
        &proxy.to_string(),
        &[("ate-target-actor", "Not_A/Ref!")],
        "hi",
    )
    .await
    .expect_err("invalid reference");
    assert_eq!(
        (s.code(), s.message()),
        (Code::InvalidArgument, "invalid actor reference"),
        "{s:?}"
    );

    // Unreachable worker (nothing listens on the actor's port): the proxy's own 502 reply.
    let closed = ClosedPort::new();
    let s = grpc_error(proxy, &host("dead", closed.port())).await;
    assert_eq!(
        (s.code(), s.message()),
        (Code::Unavailable, "actor demo/dead worker unreachable"),
        "{s:?}"
    );

    // Hung resume: the resolver budget runs out → DEADLINE_EXCEEDED.
    let started = Instant::now();
    let s = grpc_error(proxy, &host("sleepy", worker.port())).await;
    assert_eq!(
        (s.code(), s.message()),
        (
            Code::DeadlineExceeded,
            "actor demo/sleepy request timed out"
        ),
        "{s:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "budget honoured"
    );
    assert_eq!(fake.calls(Method::ResumeActor, "demo/sleepy"), 1);

    // Plain HTTP clients still get the text/plain table answer.
    let (status, h, body) = request(proxy, "/", &[("host", &host("ghost", worker.port()))]).await;
    assert_eq!((status, body.as_str()), (404, "actor demo/ghost not found"));
    assert!(
        h["content-type"]
            .to_str()
            .is_ok_and(|v| v.starts_with("text/plain")),
        "{h:?}"
    );
    assert!(h.get("grpc-status").is_none(), "{h:?}");

    // Control plane down: UNAVAILABLE with the table's body. The stopped fake may still finish
    // the connection actorgate holds, so poll, each time with an actor never asked for before
    // (nothing cached); what is answered before the connection is gone is not asserted.
    fake.stop();
    let mut n = 0;
    let s = gw
        .eventually(
            BOUND,
            "control plane down read as UNAVAILABLE",
            async || {
                n += 1;
                let name = format!("later{n}");
                let want = format!("actor demo/{name} unavailable");
                match echo_unary(proxy, &host(&name, worker.port()), &[], "hi").await {
                    Err(s) if s.code() == Code::Unavailable && s.message() == want => Some(s),
                    _ => None,
                }
            },
        )
        .await;
    assert!(s.metadata().get("x-request-id").is_some(), "{s:?}");
}

/// The raw shape on the wire: HTTP 200, `content-type: application/grpc`, `grpc-status`,
/// percent-encoded `grpc-message`, no body (Trailers-Only), for gRPC content types only.
#[tokio::test]
async fn a_local_reply_to_a_grpc_request_is_trailers_only_on_the_wire() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::ready(
        dir.path(),
        "admin: {listen: ADMIN_ADDR}\n\
         directory: {static: {actors: [{atespace: demo, name: hello, endpoint: '127.0.0.1:1'}]}}\n",
    )
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    for content_type in ["application/grpc", "application/grpc+proto"] {
        let req = http::Request::post(format!("http://{}/actorgate.echo.v1.Echo/Unary", gw.http()))
            .header("ate-target-actor", "demo/ghost")
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .expect("request");
        let resp = within(BOUND, "the local reply", client.request(req))
            .await
            .expect("response");
        assert_eq!(resp.status(), 200, "{content_type}");
        let h = resp.headers().clone();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(
            h["grpc-status"],
            (Code::NotFound as i32).to_string().as_str()
        );
        assert_eq!(h["grpc-message"], "actor demo/ghost not found");
        assert!(h.get("content-length").is_none(), "{h:?}");
        let body = within(BOUND, "the local reply's body", resp.into_body().collect())
            .await
            .expect("body");
        assert!(body.trailers().is_none());
        assert!(body.to_bytes().is_empty(), "Trailers-Only has no body");
    }
}

/// A request the proxy refuses as malformed gets the same gRPC code on every front:
/// `INVALID_ARGUMENT` with the refusal's message (as ExtProc and ResolveRoute give it), not
/// `INTERNAL` from the HTTP 400 — for validation refusals (conflicting actors, several Hosts,
/// a Host that is not the `:authority`, userinfo) with a real tonic client, and for the
/// request-target refusals on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_are_invalid_argument_for_grpc_clients() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "right").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\n\
             directory: {{static: {{actors: [{{atespace: demo, name: hello, endpoint: '{worker}'}}]}}}}\n"
        ),
    )
    .await;
    let proxy = gw.http();
    let hello = format!("hello.demo.{SUFFIX}:{}", worker.port());
    let other = format!("other.demo.{SUFFIX}:{}", worker.port());
    /// What is refused, the `:authority`, the metadata, the expected message.
    type Case<'a> = (&'a str, String, Vec<(&'static str, &'a str)>, &'a str);
    let cases: [Case; 4] = [
        (
            "conflicting actors",
            hello.clone(),
            vec![("ate-target-actor", "demo/other")],
            "conflicting actor references",
        ),
        (
            "two Host values",
            hello.clone(),
            vec![("host", &hello), ("host", &other)],
            "multiple host values",
        ),
        (
            "Host differs from :authority",
            hello.clone(),
            vec![("host", &other)],
            "conflicting :authority and host",
        ),
        (
            "userinfo",
            format!("user:pw@{hello}"),
            vec![],
            "userinfo is not allowed in the authority",
        ),
    ];
    for (what, authority, metadata, message) in cases {
        let s = echo_unary_metadata(proxy, &authority, &metadata).await;
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, message),
            "{what}: {s:?}"
        );
    }
    // The proxy's request-target refusals, in gRPC's Trailers-Only form on the wire.
    for (target, message) in [
        ("*", "asterisk-form request target is only for OPTIONS"),
        ("ftp://h/", "unsupported scheme"),
    ] {
        let r = raw_http(
            proxy,
            format!(
                "POST {target} HTTP/1.1\r\nhost: h\r\ncontent-type: application/grpc\r\n\
                 content-length: 0\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await;
        let lower = r.to_ascii_lowercase();
        assert!(r.starts_with("HTTP/1.1 200"), "{target}: {r}");
        assert!(lower.contains("grpc-status: 3\r\n"), "{target}: {r}");
        assert!(
            r.contains(&format!("grpc-message: {message}\r\n")),
            "{target}: {r}"
        );
    }
}

/// A unary echo call with metadata values that may repeat (appended, not replaced); expects an
/// error.
async fn echo_unary_metadata(
    addr: SocketAddr,
    authority: &str,
    metadata: &[(&'static str, &str)],
) -> tonic::Status {
    use ingress::echo::proto::echo_client::EchoClient;
    let origin: http::Uri = format!("http://{authority}").parse().expect("authority");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .origin(origin)
        .connect_lazy();
    let mut req = tonic::Request::new(ingress::echo::proto::EchoRequest {
        message: "hi".into(),
        ..Default::default()
    });
    for (k, v) in metadata {
        req.metadata_mut()
            .append(*k, v.parse().expect("ASCII metadata value"));
    }
    match within(BOUND, "a gRPC answer", EchoClient::new(channel).unary(req)).await {
        Ok(r) => panic!("{authority} {metadata:?}: expected an error, got {r:?}"),
        Err(s) => s,
    }
}
