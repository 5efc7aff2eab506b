//! The gateway-neutral adapters with real peers: Envoy 1.40 using actorgate as its ExtProc server
//! (the deploy/ example config), and ResolveRoute over gRPC.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, Method, Step};

async fn get(addr: SocketAddr, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    request(addr, "/", headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_routes_through_actorgate_extproc_and_fails_closed() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "right").await;
    let (decoy, _d) = echo_worker("127.0.0.1:0", "decoy").await;
    let mut fake = FakeControlPlane::start().await;
    fake.add_actor("ns/hello", ActorState::Running, "127.0.0.1", Duration::ZERO);
    fake.add_actor(
        "ns/sleepy",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::from_millis(800),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\ngrpc: {{listen: GRPC_ADDR}}\ningress: {{enabled: false}}\n\
             directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
            fake.addr
        ),
    )
    .await;
    let envoy = Envoy::example(dir.path(), "extproc-original-dst.yaml", gw.grpc(), &[]).await;
    let listener = envoy.listener;
    // The actor's port travels in the authority; the worker runs on that port of the pod IP.
    let host = |a: &str| {
        format!(
            "{a}.ns.actors.resources.substrate.ate.dev:{}",
            worker.port()
        )
    };

    let (s, h, body) = get(listener, &[("host", &host("hello"))]).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(h["x-echo-worker"], "right");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seen: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
    let get_h = |n: &str| seen.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    assert_eq!(
        get_h("x-gateway-destination-endpoint"),
        Some(worker.to_string())
    );
    assert_eq!(get_h("ate-target-actor").as_deref(), Some("ns/hello"));
    assert_eq!(
        get_h("host"),
        Some(worker.to_string()),
        ":authority rewritten to the worker endpoint"
    );

    // A client-supplied destination pointing at another worker is ignored.
    let (s, h, _) = get(
        listener,
        &[
            ("host", &host("hello")),
            ("x-gateway-destination-endpoint", &decoy.to_string()),
        ],
    )
    .await;
    assert_eq!((s, h["x-echo-worker"].to_str().unwrap()), (200, "right"));
    // A client-supplied source actor never reaches the worker.
    let (_, _, body) = get(
        listener,
        &[("host", &host("hello")), ("ate-source-actor", "evil/x")],
    )
    .await;
    assert!(!body.contains("evil/x"), "{body}");

    // Unknown actor: the table's status and body, through Envoy.
    let (s, h, body) = get(listener, &[("host", &host("ghost"))]).await;
    assert_eq!((s, body.as_str()), (404, "actor ns/ghost not found"));
    assert!(
        h["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let (s, _, body) = get(listener, &[("host", "example.com")]).await;
    assert_eq!((s, body.as_str()), (404, "invalid actor reference"));

    // Suspended actor: Envoy waits while actorgate resumes it.
    let (s, h, _) = get(listener, &[("host", &host("sleepy"))]).await;
    assert_eq!((s, h["x-echo-worker"].to_str().unwrap()), (200, "right"));
    assert_eq!(fake.calls(Method::ResumeActor, "ns/sleepy"), 1);

    // actorgate ends each stream after answering request_headers; Envoy takes that as the clean
    // close of the protocol: no failed streams, no spurious messages, no rejected mutations.
    let stat = async |name: &str| -> u64 {
        let suffix = format!(".ext_proc.{name}");
        envoy.stat("ext_proc", |k| k.ends_with(&suffix)).await
    };
    // Six requests went through ExtProc above, one stream each.
    assert_eq!(stat("streams_started").await, 6);
    assert_eq!(stat("streams_closed").await, 6);
    for zero in [
        "streams_failed",
        "spurious_msgs_received",
        "rejected_header_mutations",
    ] {
        assert_eq!(stat(zero).await, 0, "{zero}");
    }

    // Control plane down: 503 with the table's body. The stopped fake may still finish the
    // connection actorgate holds, so poll, each time with an actor never asked for before
    // (running if the fake still answered); what is answered before it is gone is not asserted.
    fake.stop();
    let mut n = 0;
    gw.eventually(BOUND, "control plane down read as 503", async || {
        n += 1;
        let name = format!("later{n}");
        fake.add_actor(
            &format!("ns/{name}"),
            ActorState::Running,
            "127.0.0.1",
            Duration::ZERO,
        );
        let (s, _, body) = get(listener, &[("host", &host(&name))]).await;
        if s == 503 {
            assert_eq!(body, format!("actor ns/{name} unavailable"));
            return Some(());
        }
        assert_eq!(s, 200, "only the fake's last answer may route: {body}");
        None
    })
    .await;

    // actorgate gone: the fail-closed example answers 500 and sends nothing to a guessed backend.
    gw.signal("KILL");
    gw.wait_exit(Duration::from_secs(5)).await;
    let (s, _, _) = get(
        listener,
        &[
            ("host", &host("hello")),
            ("x-gateway-destination-endpoint", &decoy.to_string()),
        ],
    )
    .await;
    assert_eq!(s, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_through_envoy_share_one_resume() {
    let (worker, _w) = echo_worker("127.0.0.1:0", "w").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "ns/cold",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::from_millis(1500),
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\ngrpc: {{listen: GRPC_ADDR}}\ningress: {{enabled: false}}\ndirectory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
            fake.addr
        ),
    )
    .await;
    let envoy = Envoy::example(dir.path(), "extproc-original-dst.yaml", gw.grpc(), &[]).await;
    let listener = envoy.listener;
    let host = format!(
        "cold.ns.actors.resources.substrate.ate.dev:{}",
        worker.port()
    );
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let host = host.clone();
            tokio::spawn(async move { get(listener, &[("host", &host)]).await.0 })
        })
        .collect();
    for t in tasks {
        assert_eq!(within(BOUND, "a request", t).await.unwrap(), 200);
    }
    assert_eq!(
        fake.calls(Method::ResumeActor, "ns/cold"),
        1,
        "100 requests across Envoy's workers, one resume"
    );
    // They did spread: each of Envoy's two workers accepted some of the 100 connections.
    for worker in ["worker_0", "worker_1"] {
        let accepted = envoy
            .stat("downstream_cx_total", |k| {
                k.starts_with("listener.127.0.0.1_") && k.contains(worker)
            })
            .await;
        assert!(accepted > 0, "{worker} took no connection");
    }
}

#[tokio::test]
async fn resolve_route_answers_routes_and_structured_errors() {
    use ingress::router_api::proto::ResolveRouteRequest;
    use ingress::router_api::proto::resolve_route_response::Result as R;
    use ingress::router_api::proto::router_client::RouterClient;
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::ready(
        dir.path(),
        "admin: {listen: ADMIN_ADDR}\ngrpc: {listen: GRPC_ADDR}\ningress: {enabled: false}\n\
         resolver: {budget: 300ms}\n\
         directory: {static: {resume_delay: 50ms, actors: [{atespace: demo, name: hello, template: demo/echo, endpoint: '10.1.2.3:8080'},\n\
         {atespace: demo, name: sleepy, state: suspended, endpoint: '10.1.2.4:8080'},\n\
         {atespace: demo, name: broken, state: crashed, endpoint: '10.1.2.5:8080'}]}}\n",
    )
    .await;
    let mut c = RouterClient::new(grpc_channel(gw.grpc()).await);
    async fn resolve(
        c: &mut RouterClient<tonic::transport::Channel>,
        req: ResolveRouteRequest,
    ) -> R {
        let answer = c
            .resolve_route(req)
            .await
            .expect("routing failures are answers");
        answer.into_inner().result.expect("a route or an error")
    }
    match resolve(
        &mut c,
        ResolveRouteRequest {
            host: "gateway.example".into(),
            path: "/x".into(),
            method: "GET".into(),
            headers: [("ate-target-actor".to_owned(), "demo/hello".to_owned())].into(),
            ..Default::default()
        },
    )
    .await
    {
        R::Route(r) => {
            assert_eq!(
                (r.actor.as_str(), r.endpoint.as_str(), r.template.as_str()),
                ("demo/hello", "10.1.2.3:8080", "demo/echo")
            );
            assert!(!r.resumed);
        }
        other => panic!("{other:?}"),
    }
    // A suspended actor is resumed by this request, and the answer says so.
    match resolve(
        &mut c,
        ResolveRouteRequest {
            host: "sleepy.demo.actors.resources.substrate.ate.dev:8080".into(),
            ..Default::default()
        },
    )
    .await
    {
        R::Route(r) => {
            assert_eq!(
                (r.actor.as_str(), r.endpoint.as_str()),
                ("demo/sleepy", "10.1.2.4:8080")
            );
            assert!(r.resumed);
        }
        other => panic!("{other:?}"),
    }
    match resolve(
        &mut c,
        ResolveRouteRequest {
            host: "nobody.demo.actors.resources.substrate.ate.dev".into(),
            ..Default::default()
        },
    )
    .await
    {
        R::Error(e) => {
            assert_eq!(
                (e.http_status, e.message.as_str(), e.reason.as_str()),
                (404, "actor demo/nobody not found", "not_found")
            );
            assert_eq!(e.grpc_code, tonic::Code::NotFound as i32);
        }
        other => panic!("{other:?}"),
    }
    match resolve(
        &mut c,
        ResolveRouteRequest {
            headers: [("ate-target-actor".to_owned(), "demo/broken".to_owned())].into(),
            ..Default::default()
        },
    )
    .await
    {
        R::Error(e) => {
            assert_eq!((e.http_status, e.reason.as_str()), (503, "unavailable"));
            assert!(
                e.message.starts_with("actor demo/broken unavailable"),
                "{e:?}"
            );
            assert_eq!(e.grpc_code, tonic::Code::FailedPrecondition as i32);
        }
        other => panic!("{other:?}"),
    }
    // Reflection lists the Router service.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut r = ServerReflectionClient::new(grpc_channel(gw.grpc()).await);
    let reqs = [
        MessageRequest::ListServices(String::new()),
        // What `grpcurl describe` asks for: the file declaring the service.
        MessageRequest::FileContainingSymbol("actorgate.router.v1.Router".into()),
    ]
    .map(|m| tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    });
    let mut stream = r
        .server_reflection_info(futures_util::stream::iter(reqs))
        .await
        .unwrap()
        .into_inner();
    let resp = within(BOUND, "ListServices", stream.message())
        .await
        .unwrap()
        .unwrap();
    let names: Vec<String> = match resp.message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => l.service.into_iter().map(|s| s.name).collect(),
        other => panic!("{other:?}"),
    };
    assert!(
        names.contains(&"actorgate.router.v1.Router".to_owned()),
        "{names:?}"
    );
    let resp = within(BOUND, "FileContainingSymbol", stream.message())
        .await
        .unwrap()
        .unwrap();
    let files = match resp.message_response.unwrap() {
        MessageResponse::FileDescriptorResponse(f) => f.file_descriptor_proto,
        other => panic!("{other:?}"),
    };
    let file = files
        .iter()
        .map(|b| {
            <prost_types::FileDescriptorProto as prost::Message>::decode(b.as_slice()).unwrap()
        })
        .find(|f| f.package() == "actorgate.router.v1")
        .expect("the router.proto descriptor");
    let service = &file.service[0];
    assert_eq!(service.name(), "Router");
    assert_eq!(service.method[0].name(), "ResolveRoute");
}

/// Every shipped Envoy example, with a real Envoy: HTTP/1.1 and gRPC (a real tonic client over
/// HTTP/2) reach the right worker, and gRPC clients get actorgate's errors as gRPC statuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envoy_routing_variant_reaches_the_right_worker() {
    use tonic::Code;
    let (worker, _w) = echo_worker("127.0.0.1:0", "right").await;
    let (decoy, _d) = echo_worker("127.0.0.1:0", "decoy").await;
    let mut fake = FakeControlPlane::start().await;
    fake.add_actor("ns/hello", ActorState::Running, "127.0.0.1", Duration::ZERO);
    fake.add_actor("ns/dead", ActorState::Running, "127.0.0.1", Duration::ZERO);
    fake.add_actor(
        "ns/sleepy",
        ActorState::Suspended,
        "127.0.0.1",
        Duration::ZERO,
    );
    let dir = tempfile::tempdir().unwrap();
    // A short resolver budget makes a hung resume a quick DEADLINE_EXCEEDED.
    let gw = Gateway::ready(
        dir.path(),
        &format!(
            "admin: {{listen: ADMIN_ADDR}}\ngrpc: {{listen: GRPC_ADDR}}\ningress: {{enabled: false}}\n\
             resolver: {{budget: 400ms}}\n\
             directory: {{ateapi: {{address: '{}', tls: plaintext, connect_timeout: 200ms}}}}\n",
            fake.addr
        ),
    )
    .await;
    let actor_host =
        |name: &str, port: u16| format!("{name}.ns.actors.resources.substrate.ate.dev:{port}");
    let host = actor_host("hello", worker.port());
    let mut envoys = Vec::new();
    for variant in [
        "extproc-original-dst.yaml",
        "extproc-metadata.yaml",
        "extproc-override-host.yaml",
        "extproc-authority.yaml",
    ] {
        // Only the override-host example names the workers' ports itself.
        let workers = [
            (
                "port_value: 18081",
                format!("port_value: {}", worker.port()),
            ),
            ("port_value: 18082", format!("port_value: {}", decoy.port())),
        ];
        let extra: &[(&str, String)] = if variant == "extproc-override-host.yaml" {
            &workers
        } else {
            &[]
        };
        let envoy = Envoy::example(dir.path(), variant, gw.grpc(), extra).await;
        let listener = envoy.listener;
        for _ in 0..3 {
            let (s, h, body) = get(
                listener,
                &[
                    ("host", &host),
                    ("x-gateway-destination-endpoint", &decoy.to_string()),
                ],
            )
            .await;
            assert_eq!(s, 200, "{variant}: {body}");
            assert_eq!(h["x-echo-worker"], "right", "{variant}");
        }
        let (s, _, body) = get(
            listener,
            &[("host", "ghost.ns.actors.resources.substrate.ate.dev")],
        )
        .await;
        assert_eq!(
            (s, body.as_str()),
            (404, "actor ns/ghost not found"),
            "{variant}"
        );

        // gRPC end to end: a unary call reaches the right worker over HTTP/2 (the worker cluster
        // speaks the client's protocol), and a worker's own status passes through.
        for _ in 0..3 {
            let reply = echo_unary(
                listener,
                &host,
                &[("x-gateway-destination-endpoint", &decoy.to_string())],
                "ping",
            )
            .await
            .unwrap_or_else(|s| panic!("{variant}: gRPC call failed: {s:?}"));
            assert_eq!(
                (reply.message.as_str(), reply.worker.as_str()),
                ("ping", "right"),
                "{variant}"
            );
        }
        let s = echo_unary_request(
            listener,
            &host,
            &[],
            ingress::echo::proto::EchoRequest {
                message: "x".into(),
                fail_code: Code::AlreadyExists as i32,
                ..Default::default()
            },
        )
        .await
        .expect_err("the worker fails the call");
        assert_eq!(s.code(), Code::AlreadyExists, "{variant}: {s:?}");

        // actorgate's errors reach gRPC clients as gRPC statuses (ImmediateResponse.grpc_status;
        // Envoy answers Trailers-Only with the body as grpc-message).
        let grpc_error = |authority: String| async move {
            echo_unary(listener, &authority, &[], "hi")
                .await
                .expect_err("an error")
        };
        let s = grpc_error(actor_host("ghost", worker.port())).await;
        assert_eq!(
            (s.code(), s.message()),
            (Code::NotFound, "actor ns/ghost not found"),
            "{variant}: {s:?}"
        );
        let s = grpc_error("example.com".to_owned()).await;
        assert_eq!(
            (s.code(), s.message()),
            (Code::InvalidArgument, "invalid actor reference"),
            "{variant}: {s:?}"
        );
        fake.script(Method::ResumeActor, "ns/sleepy", [Step::Hang]);
        let s = grpc_error(actor_host("sleepy", worker.port())).await;
        assert_eq!(
            (s.code(), s.message()),
            (Code::DeadlineExceeded, "actor ns/sleepy request timed out"),
            "{variant}: {s:?}"
        );
        // Unreachable worker: actorgate routes, Envoy cannot connect and answers the gRPC client
        // UNAVAILABLE itself. With override_host the pick is not in the worker pool: the example
        // fails closed (no host, 503), never another worker's answer.
        let closed = ClosedPort::new();
        let s = grpc_error(actor_host("dead", closed.port())).await;
        let want = if variant == "extproc-override-host.yaml" {
            "no healthy upstream"
        } else {
            "upstream connect error"
        };
        assert_eq!(s.code(), Code::Unavailable, "{variant}: {s:?}");
        assert!(s.message().contains(want), "{variant}: {s:?}");
        let (st, h, body) = get(listener, &[("host", &actor_host("dead", closed.port()))]).await;
        assert_eq!(st, 503, "{variant}: {body}");
        assert!(h.get("x-echo-worker").is_none(), "{variant}: {h:?}");
        envoys.push((variant, listener, envoy));
    }

    // Control plane down: UNAVAILABLE with the table's body through every variant. The stopped
    // fake may still finish the connection actorgate holds, so poll, each time with an actor
    // never asked for before; what is answered before that connection is gone is not asserted.
    fake.stop();
    let mut n = 0;
    for (variant, listener, _envoy) in &envoys {
        gw.eventually(
            BOUND,
            format!("{variant}: control plane down read as UNAVAILABLE"),
            async || {
                n += 1;
                let name = format!("later{n}");
                let want = format!("actor ns/{name} unavailable");
                match echo_unary(*listener, &actor_host(&name, worker.port()), &[], "hi").await {
                    Err(s) if s.code() == Code::Unavailable && s.message() == want => Some(()),
                    _ => None,
                }
            },
        )
        .await;
    }
}

#[test]
fn every_envoy_example_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/envoy");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        // Security settings every example must keep: the client's destination header is
        // stripped before ext_proc runs, and ext_proc fails closed.
        let text = std::fs::read_to_string(&path).unwrap();
        let strip = text.find("remove: x-gateway-destination-endpoint");
        let ext_proc = text.find("name: envoy.filters.http.ext_proc");
        assert!(
            matches!((strip, ext_proc), (Some(a), Some(b)) if a < b),
            "{}: strip x-gateway-destination-endpoint before ext_proc",
            path.display()
        );
        for must in [
            "failure_mode_allow: false",
            "disallow_is_error: true",
            // gRPC end to end: the worker cluster speaks the client's HTTP version.
            "use_downstream_protocol_config:",
        ] {
            assert!(text.contains(must), "{}: {must}", path.display());
        }
        // CERT_DIR stands for a directory of certificates (gateway.crt/key, ca.crt).
        let certs = test_pki(&[]);
        std::fs::copy(certs.path("server.crt"), certs.path("gateway.crt")).unwrap();
        std::fs::copy(certs.path("server.key"), certs.path("gateway.key")).unwrap();
        let validated = certs.path("example.yaml");
        std::fs::write(
            &validated,
            text.replace("CERT_DIR", &certs.dir().display().to_string()),
        )
        .unwrap();
        let out = std::process::Command::new(envoy())
            .args(["--mode", "validate", "-c"])
            .arg(&validated)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert!(n >= 4, "expected the four Envoy examples, found {n}");
}

#[test]
fn kubernetes_manifests_parse_and_keep_the_fail_closed_settings() {
    // Not applied to a cluster here (no Kubernetes); at least every document parses and the
    // settings that matter are present.
    for (file, must) in [
        (
            "deploy/envoy-gateway/actorgate-extproc.yaml",
            &[
                "failOpen: false",
                "messageTimeout: 10s",
                "kind: EnvoyExtensionPolicy",
                "kind: EnvoyPatchPolicy",
                "allow_all_routing: true",
                "disallow_is_error: true",
                "remove: x-gateway-destination-endpoint",
                "name: httproute/ate-system/actors/rule/0",
                "use_downstream_protocol_config:",
            ][..],
        ),
        (
            "deploy/istio/actorgate-extproc.yaml",
            &[
                "failure_mode_allow: false",
                "message_timeout: 10s",
                "remove: x-gateway-destination-endpoint",
                "allow_all_routing: true",
                "disallow_is_error: true",
                "use_downstream_protocol_config:",
            ][..],
        ),
    ] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(docs.len() >= 2, "{file}");
        assert!(
            docs.iter()
                .all(|d| d["apiVersion"].is_string() && d["kind"].is_string()),
            "{file}"
        );
        for m in must {
            assert!(text.contains(m), "{file} lacks {m}");
        }
    }
}

/// One GET over TLS to `addr` (SNI localhost, trusting `pki`'s CA) with the client certificate
/// `client` if any → the `ate-source-actor` values the echo worker received.
async fn sources_over_tls(
    pki: &TestPki,
    addr: SocketAddr,
    client: Option<&str>,
    headers: &[(&str, &str)],
) -> Vec<String> {
    use http_body_util::BodyExt;
    let (cert, key) = match client {
        Some(n) => (pki.path(&format!("{n}.crt")), pki.path(&format!("{n}.key"))),
        None => Default::default(),
    };
    let tls = tls_connect_as(
        &pki.ca_file(),
        addr,
        b"http/1.1",
        client.map(|_| (cert.as_path(), key.as_path())),
    )
    .await;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::get("/");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = within(
        BOUND,
        "the answer",
        sender.send_request(
            req.body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let seen: Vec<(String, String)> = serde_json::from_value(v["headers"].clone()).unwrap();
    seen.into_iter()
        .filter(|(k, _)| k == "ate-source-actor")
        .map(|(_, v)| v)
        .collect()
}

/// The ExtProc trusted-peer path with a real Envoy (deploy/envoy/extproc-trusted-peers.yaml):
/// the peer identity Envoy reports — the attribute `connection.uri_san_peer_certificate`, or
/// `x-forwarded-client-cert` under SANITIZE_SET — decides whether a request's
/// `ate-source-actor` reaches the worker. A trusted PEP's single valid value passes; another
/// certificate, no certificate, or a forged XFCC header never gets one through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reports_the_peer_and_only_trusted_peers_name_the_source_actor() {
    const PEP_ID: &str = "spiffe://substrate-actor.local/ns/ate-system/sa/actorgate-pep";
    let (worker, _w) = echo_worker("127.0.0.1:0", "w").await;
    let fake = FakeControlPlane::start().await;
    fake.add_actor("ns/hello", ActorState::Running, "127.0.0.1", Duration::ZERO);
    let pki = test_pki(&["actorgate-pep", "other"]);
    std::fs::copy(pki.path("server.crt"), pki.path("gateway.crt")).unwrap();
    std::fs::copy(pki.path("server.key"), pki.path("gateway.key")).unwrap();
    let host = format!(
        "hello.ns.actors.resources.substrate.ate.dev:{}",
        worker.port()
    );
    for identity in ["uri_san", "xfcc"] {
        let dir = tempfile::tempdir().unwrap();
        let gw = Gateway::ready(
            dir.path(),
            &format!(
                "admin: {{listen: ADMIN_ADDR}}\ningress: {{enabled: false}}\n\
                 grpc: {{listen: GRPC_ADDR, extproc_source_actor: {{peer_identity: {identity}, trusted_peers: ['{PEP_ID}']}}}}\n\
                 directory: {{ateapi: {{address: '{}', tls: plaintext}}}}\n",
                fake.addr
            ),
        )
        .await;
        let envoy = Envoy::example(
            dir.path(),
            "extproc-trusted-peers.yaml",
            gw.grpc(),
            &[("CERT_DIR", pki.dir().display().to_string())],
        )
        .await;
        let at = envoy.listener;
        let one = [("host", host.as_str()), ("ate-source-actor", "demo/caller")];
        assert_eq!(
            sources_over_tls(&pki, at, Some("actorgate-pep"), &one).await,
            ["demo/caller"],
            "{identity}: the trusted PEP"
        );
        assert!(
            sources_over_tls(&pki, at, Some("other"), &one)
                .await
                .is_empty(),
            "{identity}: another certificate"
        );
        assert!(
            sources_over_tls(&pki, at, None, &one).await.is_empty(),
            "{identity}: no certificate"
        );
        let forged = [
            ("host", host.as_str()),
            ("ate-source-actor", "demo/caller"),
            ("x-forwarded-client-cert", &format!("By=x;URI={PEP_ID}")),
        ];
        assert!(
            sources_over_tls(&pki, at, None, &forged).await.is_empty(),
            "{identity}: a forged XFCC"
        );
        let two = [
            ("host", host.as_str()),
            ("ate-source-actor", "demo/a"),
            ("ate-source-actor", "demo/b"),
        ];
        assert!(
            sources_over_tls(&pki, at, Some("actorgate-pep"), &two)
                .await
                .is_empty(),
            "{identity}: two values from the trusted PEP"
        );
        let bad = [
            ("host", host.as_str()),
            ("ate-source-actor", "not an actor"),
        ];
        assert!(
            sources_over_tls(&pki, at, Some("actorgate-pep"), &bad)
                .await
                .is_empty(),
            "{identity}: an invalid value from the trusted PEP"
        );
    }
}
