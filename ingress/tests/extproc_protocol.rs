//! The ExtProc stream protocol over real gRPC (tonic client ↔ actorgate's ExtProc server on
//! loopback, resolver against the fake ate-api-server): what each phase is answered with, when
//! the stream ends, observability mode, the direction attribute, header values in `value`,
//! `host` without `:authority`, and streams that are reset. Every await is bounded.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use ep::external_processor_client::ExternalProcessorClient;
use ep::processing_request::Request as Phase;
use ep::processing_response::Response as Answer;
use ingress::extproc::ExtProcService;
use routing_core::directory::ateapi::AteApiDirectory;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method, TEST_TIMEOUT, within};
use routing_core::{Extractor, Resolver, ResolverMetrics, ResolverSettings, WorkerTransport};
use tokio::sync::mpsc;
use tonic::transport::Channel;

struct Harness {
    fake: FakeControlPlane,
    client: ExternalProcessorClient<Channel>,
}

async fn start() -> Harness {
    start_with(ResolverSettings::default(), Duration::from_secs(30)).await
}

async fn start_with(settings: ResolverSettings, stream_deadline: Duration) -> Harness {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/hello",
        ActorState::Running,
        "10.1.2.3",
        Duration::ZERO,
    );
    fake.add_actor(
        "demo/sleepy",
        ActorState::Suspended,
        "10.1.2.4",
        Duration::from_millis(300),
    );
    let dir = AteApiDirectory::new(&fake.plaintext_settings()).expect("ateapi client");
    let resolver = Resolver::new(
        Arc::new(dir),
        settings,
        Extractor::default(),
        ResolverMetrics::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                ExtProcService::new(resolver)
                    .with_stream_deadline(stream_deadline)
                    .into_server(),
            )
            .serve_with_incoming(incoming),
    );
    let client = within(
        "connect to ExtProc",
        ExternalProcessorClient::connect(format!("http://{addr}")),
    )
    .await
    .expect("connect");
    Harness { fake, client }
}

fn header(key: &str, value: &str) -> core::HeaderValue {
    core::HeaderValue {
        key: key.to_owned(),
        raw_value: value.as_bytes().to_vec(),
        ..Default::default()
    }
}

fn request_headers(headers: &[(&str, &str)]) -> ep::ProcessingRequest {
    let mut all = vec![header(":authority", "gateway.example.com")];
    all.extend(headers.iter().map(|(k, v)| header(k, v)));
    headers_phase(all)
}

/// A request_headers phase with exactly these headers after `:method`, `:path` and `:scheme`.
fn headers_phase(headers: Vec<core::HeaderValue>) -> ep::ProcessingRequest {
    let mut all = vec![
        header(":method", "GET"),
        header(":path", "/hello"),
        header(":scheme", "http"),
    ];
    all.extend(headers);
    ep::ProcessingRequest {
        request: Some(Phase::RequestHeaders(ep::HttpHeaders {
            headers: Some(core::HeaderMap { headers: all }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn with_direction(mut req: ep::ProcessingRequest, direction: &str) -> ep::ProcessingRequest {
    req.metadata_context = Some(core::Metadata {
        filter_metadata: HashMap::from([(
            "actorgate".to_owned(),
            Struct {
                fields: HashMap::from([(
                    "direction".to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(direction.to_owned())),
                    },
                )]),
            },
        )]),
        ..Default::default()
    });
    req
}

/// Opens a stream; the sender stays open (Envoy's side) until dropped.
async fn open(
    h: &mut Harness,
) -> (
    mpsc::Sender<ep::ProcessingRequest>,
    tonic::Streaming<ep::ProcessingResponse>,
) {
    let (tx, rx) = mpsc::channel(8);
    let inbound = within(
        "open an ExtProc stream",
        h.client
            .process(futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|m| (m, rx))
            })),
    )
    .await
    .expect("stream opens")
    .into_inner();
    (tx, inbound)
}

async fn next(inbound: &mut tonic::Streaming<ep::ProcessingResponse>) -> ep::ProcessingResponse {
    tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("an answer in time")
        .expect("no gRPC error")
        .expect("a message, not the end of the stream")
}

/// The stream ends cleanly (grpc-status OK) without the client having closed its side.
async fn ends_ok(inbound: &mut tonic::Streaming<ep::ProcessingResponse>) {
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the server ends the stream");
    assert!(matches!(end, Ok(None)), "expected a clean end, got {end:?}");
}

fn set_headers(a: &ep::CommonResponse) -> HashMap<String, String> {
    a.header_mutation
        .as_ref()
        .expect("a header mutation")
        .set_headers
        .iter()
        .map(|o| {
            let h = o.header.as_ref().expect("header");
            (
                h.key.clone(),
                String::from_utf8(h.raw_value.clone()).unwrap(),
            )
        })
        .collect()
}

fn immediate(a: &ep::ProcessingResponse) -> (i32, String) {
    match &a.response {
        Some(Answer::ImmediateResponse(i)) => (
            i.status.as_ref().expect("status").code,
            String::from_utf8(i.body.clone()).unwrap(),
        ),
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

#[tokio::test]
async fn request_headers_get_the_route_and_the_stream_ends_cleanly() {
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(request_headers(&[
        ("ate-target-actor", "demo/hello"),
        ("ate-source-actor", "demo/forged"),
    ]))
    .await
    .unwrap();
    let a = next(&mut inbound).await;
    let Some(Answer::RequestHeaders(hr)) = &a.response else {
        panic!("expected a request_headers answer, got {a:?}");
    };
    let common = hr.response.as_ref().expect("common response");
    let set = set_headers(common);
    // The route stays (re-matching on the ip:port authority would miss actor-host virtual hosts).
    assert!(!common.clear_route_cache);
    assert_eq!(set[":authority"], "10.1.2.3:80");
    assert_eq!(set["x-gateway-destination-endpoint"], "10.1.2.3:80");
    assert_eq!(set["ate-target-actor"], "demo/hello");
    // Plain worker transport: a client-supplied actor port for a worker agent never passes.
    assert_eq!(
        common.header_mutation.as_ref().unwrap().remove_headers,
        vec![
            "ate-source-actor".to_owned(),
            "x-ate-target-port".to_owned()
        ]
    );
    assert!(!set.contains_key("x-ate-target-port"));
    let lb = &a
        .dynamic_metadata
        .as_ref()
        .expect("dynamic metadata")
        .fields["envoy.lb"];
    let Some(Kind::StructValue(lb)) = &lb.kind else {
        panic!("envoy.lb is a struct");
    };
    assert_eq!(
        lb.fields["x-gateway-destination-endpoint"].kind,
        Some(Kind::StringValue("10.1.2.3:80".into()))
    );
    // Ingress needs nothing after the request headers: the server closes the stream with OK
    // (Envoy then proceeds without sending further phases) while Envoy's side is still open.
    ends_ok(&mut inbound).await;
    drop(tx);
}

#[tokio::test]
async fn other_phases_are_answered_without_mutation() {
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    let body = ep::HttpBody {
        body: b"payload".to_vec(),
        end_of_stream: false,
        ..Default::default()
    };
    let phases = [
        Phase::ResponseHeaders(ep::HttpHeaders::default()),
        Phase::RequestBody(body.clone()),
        Phase::ResponseBody(body),
        Phase::RequestTrailers(ep::HttpTrailers::default()),
        Phase::ResponseTrailers(ep::HttpTrailers::default()),
    ];
    for phase in phases {
        let name = format!("{phase:?}");
        tx.send(ep::ProcessingRequest {
            request: Some(phase),
            ..Default::default()
        })
        .await
        .unwrap();
        let a = next(&mut inbound).await;
        assert!(a.dynamic_metadata.is_none(), "{name}: no metadata");
        let common = match &a.response {
            Some(Answer::ResponseHeaders(r)) => r.response.clone(),
            Some(Answer::RequestBody(r)) | Some(Answer::ResponseBody(r)) => r.response.clone(),
            Some(Answer::RequestTrailers(t)) | Some(Answer::ResponseTrailers(t)) => {
                assert!(t.header_mutation.is_none(), "{name}: trailers untouched");
                None
            }
            other => panic!("{name}: unexpected answer {other:?}"),
        };
        if let Some(c) = common {
            assert!(c.header_mutation.is_none(), "{name}: headers untouched");
            assert!(c.body_mutation.is_none(), "{name}: body untouched");
        }
    }
    // The stream is still open for the request headers, which end it.
    tx.send(request_headers(&[("ate-target-actor", "demo/hello")]))
        .await
        .unwrap();
    assert!(matches!(
        next(&mut inbound).await.response,
        Some(Answer::RequestHeaders(_))
    ));
    ends_ok(&mut inbound).await;
}

#[tokio::test]
async fn routing_errors_are_immediate_responses_with_the_table_body() {
    let mut h = start().await;
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Headers, i32, &str); 3] = [
        (
            &[("ate-target-actor", "demo/nobody")],
            404,
            "actor demo/nobody not found",
        ),
        (
            &[("ate-target-actor", "not an actor")],
            404,
            "invalid actor reference",
        ),
        // Two target headers: fail closed rather than pick one (DESIGN §4: no valid actor → 404).
        (
            &[
                ("ate-target-actor", "demo/hello"),
                ("ate-target-actor", "demo/other"),
            ],
            404,
            "invalid actor reference",
        ),
    ];
    for (headers, status, body) in cases {
        let (tx, mut inbound) = open(&mut h).await;
        tx.send(request_headers(headers)).await.unwrap();
        let a = next(&mut inbound).await;
        assert_eq!(immediate(&a), (status, body.to_owned()), "{headers:?}");
        ends_ok(&mut inbound).await;
    }
}

#[tokio::test]
async fn egress_direction_is_refused_until_the_pep_exists() {
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(with_direction(
        request_headers(&[("ate-target-actor", "demo/hello")]),
        "egress",
    ))
    .await
    .unwrap();
    let a = next(&mut inbound).await;
    assert_eq!(immediate(&a), (501, "egress mode is not available".into()));
    assert_eq!(h.fake.calls(Method::GetActor, "demo/hello"), 0, "no lookup");

    // An explicit ingress direction routes.
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(with_direction(
        request_headers(&[("ate-target-actor", "demo/hello")]),
        "ingress",
    ))
    .await
    .unwrap();
    assert!(matches!(
        next(&mut inbound).await.response,
        Some(Answer::RequestHeaders(_))
    ));
}

#[tokio::test]
async fn observability_mode_is_never_answered_nor_resolved() {
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    let mut req = request_headers(&[("ate-target-actor", "demo/sleepy")]);
    req.observability_mode = true;
    tx.send(req).await.unwrap();
    tx.send(ep::ProcessingRequest {
        request: Some(Phase::ResponseHeaders(ep::HttpHeaders::default())),
        observability_mode: true,
        ..Default::default()
    })
    .await
    .unwrap();
    // The stream ends cleanly after the request headers, without a single answer.
    ends_ok(&mut inbound).await;
    drop(tx);
    // Nobody waits for an answer, so nothing was looked up or resumed.
    assert_eq!(h.fake.calls(Method::GetActor, "demo/sleepy"), 0);
    assert_eq!(h.fake.calls(Method::ResumeActor, "demo/sleepy"), 0);
}

#[tokio::test]
async fn agent_transport_sends_the_actor_port() {
    let mut h = start_with(
        ResolverSettings {
            worker_transport: WorkerTransport::Agent { port: 15008 },
            ..ResolverSettings::default()
        },
        Duration::from_secs(30),
    )
    .await;
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(request_headers(&[
        ("ate-target-actor", "demo/hello"),
        ("x-ate-target-port", "22"),
    ]))
    .await
    .unwrap();
    let a = next(&mut inbound).await;
    let Some(Answer::RequestHeaders(hr)) = &a.response else {
        panic!("expected a route, got {a:?}");
    };
    let set = set_headers(hr.response.as_ref().unwrap());
    assert_eq!(set["x-gateway-destination-endpoint"], "10.1.2.3:15008");
    assert_eq!(set["x-ate-target-port"], "80", "overwrites the client's 22");
}

#[tokio::test]
async fn a_non_utf8_target_header_fails_closed() {
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    let mut req = request_headers(&[]);
    if let Some(Phase::RequestHeaders(hh)) = &mut req.request {
        hh.headers
            .as_mut()
            .unwrap()
            .headers
            .push(core::HeaderValue {
                key: "ate-target-actor".into(),
                raw_value: vec![0xff, 0xfe],
                ..Default::default()
            });
    }
    tx.send(req).await.unwrap();
    assert_eq!(
        immediate(&next(&mut inbound).await),
        (404, "invalid actor reference".into())
    );
}

#[tokio::test]
async fn an_unreadable_message_ends_the_stream_with_an_error_not_ok() {
    // An OK end before request_headers is answered would make Envoy proceed unrouted; a message
    // over the server's decoding limit (4 MiB) must end the stream with an error status instead.
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    let huge = "x".repeat(5 << 20);
    tx.send(request_headers(&[
        ("ate-target-actor", "demo/hello"),
        ("x-padding", &huge),
    ]))
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the server ends the stream");
    let status = end.expect_err("an error status, not an answer or a clean end");
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
}

#[tokio::test]
async fn a_reset_stream_does_not_cancel_the_resume_and_the_next_stream_is_served() {
    let mut h = start().await;
    let (tx, inbound) = open(&mut h).await;
    tx.send(request_headers(&[("ate-target-actor", "demo/sleepy")]))
        .await
        .unwrap();
    // Envoy gives up (client reset / timeout) while the actor is being resumed.
    h.fake
        .wait_for_calls(Method::ResumeActor, "demo/sleepy", 1, TEST_TIMEOUT)
        .await;
    drop(inbound);
    drop(tx);
    // The next request for the same actor joins the resume that is still under way or uses
    // its result: one ResumeActor in all, and the route is served.
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(request_headers(&[("ate-target-actor", "demo/sleepy")]))
        .await
        .unwrap();
    let a = next(&mut inbound).await;
    let Some(Answer::RequestHeaders(hr)) = &a.response else {
        panic!("expected a route, got {a:?}");
    };
    assert_eq!(
        set_headers(hr.response.as_ref().unwrap())["x-gateway-destination-endpoint"],
        "10.1.2.4:80"
    );
    assert_eq!(h.fake.calls(Method::GetActor, "demo/sleepy"), 1);
    assert_eq!(h.fake.calls(Method::ResumeActor, "demo/sleepy"), 1);
    // GetActor and ResumeActor both finished on the server, answered rather than cancelled.
    h.fake.wait_for_finished(2, TEST_TIMEOUT).await;
    assert_eq!(
        (h.fake.completed(), h.fake.cancelled()),
        (2, 0),
        "the control plane saw no cancellation"
    );
    ends_ok(&mut inbound).await;
}

#[tokio::test]
async fn a_stream_without_request_headers_is_ended_with_an_error_at_the_deadline() {
    // Other phases keep being answered, but they don't extend the stream's life: without
    // request_headers it ends with DEADLINE_EXCEEDED (never OK) when the deadline passes.
    let mut h = start_with(ResolverSettings::default(), Duration::from_millis(300)).await;
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(ep::ProcessingRequest {
        request: Some(Phase::ResponseHeaders(ep::HttpHeaders::default())),
        ..Default::default()
    })
    .await
    .unwrap();
    assert!(matches!(
        next(&mut inbound).await.response,
        Some(Answer::ResponseHeaders(_))
    ));
    let end = tokio::time::timeout(Duration::from_secs(5), inbound.message())
        .await
        .expect("the server ends the stream");
    let status = end.expect_err("an error status, not a clean end");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    drop(tx);
}

/// A header as older Envoys send it: the value in `value`, `raw_value` empty.
fn header_in_value(key: &str, value: &str) -> core::HeaderValue {
    core::HeaderValue {
        key: key.to_owned(),
        value: value.to_owned(),
        ..Default::default()
    }
}

/// The endpoint a request_headers answer routes to.
fn routed_to(a: &ep::ProcessingResponse) -> String {
    let Some(Answer::RequestHeaders(hr)) = &a.response else {
        panic!("expected a route, got {a:?}");
    };
    set_headers(hr.response.as_ref().expect("common response"))["x-gateway-destination-endpoint"]
        .clone()
}

#[tokio::test]
async fn header_values_sent_in_value_instead_of_raw_value_are_read() {
    let mut h = start().await;
    // The target header and the authority in `value` only.
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(headers_phase(vec![
        header_in_value(":authority", "gateway.example.com"),
        header_in_value("ate-target-actor", "demo/hello"),
    ]))
    .await
    .unwrap();
    assert_eq!(routed_to(&next(&mut inbound).await), "10.1.2.3:80");
    ends_ok(&mut inbound).await;

    // The authority alone in `value`: the host extractor reads it (port included).
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(headers_phase(vec![header_in_value(
        ":authority",
        "hello.demo.actors.resources.substrate.ate.dev:8080",
    )]))
    .await
    .unwrap();
    assert_eq!(routed_to(&next(&mut inbound).await), "10.1.2.3:8080");
    ends_ok(&mut inbound).await;

    // When both are set, `raw_value` is the value (Envoy 1.40's field).
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(headers_phase(vec![
        header(":authority", "gateway.example.com"),
        core::HeaderValue {
            key: "ate-target-actor".into(),
            value: "demo/nobody".into(),
            raw_value: b"demo/hello".to_vec(),
        },
    ]))
    .await
    .unwrap();
    assert_eq!(routed_to(&next(&mut inbound).await), "10.1.2.3:80");
    ends_ok(&mut inbound).await;
    assert_eq!(h.fake.calls(Method::GetActor, "demo/nobody"), 0);
}

#[tokio::test]
async fn host_is_read_when_authority_is_absent() {
    let mut h = start().await;
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(headers_phase(vec![header(
        "host",
        "hello.demo.actors.resources.substrate.ate.dev:9000",
    )]))
    .await
    .unwrap();
    let a = next(&mut inbound).await;
    assert_eq!(routed_to(&a), "10.1.2.3:9000");
    let Some(Answer::RequestHeaders(hr)) = &a.response else {
        unreachable!()
    };
    assert_eq!(
        set_headers(hr.response.as_ref().unwrap())["ate-target-actor"],
        "demo/hello"
    );
    ends_ok(&mut inbound).await;

    // In `value` too.
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(headers_phase(vec![header_in_value(
        "host",
        "hello.demo.actors.resources.substrate.ate.dev",
    )]))
    .await
    .unwrap();
    assert_eq!(routed_to(&next(&mut inbound).await), "10.1.2.3:80");
    ends_ok(&mut inbound).await;

    // Neither `:authority` nor `host` nor a target header: no actor to route to.
    let (tx, mut inbound) = open(&mut h).await;
    tx.send(headers_phase(vec![])).await.unwrap();
    assert_eq!(
        immediate(&next(&mut inbound).await),
        (404, "invalid actor reference".into())
    );
    ends_ok(&mut inbound).await;
    // One lookup: the later streams used the cached route.
    assert_eq!(h.fake.calls(Method::GetActor, "demo/hello"), 1);
}
