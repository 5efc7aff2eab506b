//! ExtProc and ResolveRoute read request metadata as the HTTP proxy does (routing_core's
//! `validate` and `wire`): the scheme's default port makes `h:80` and `h` one origin, and
//! `ate-target-actor` fails closed however its copies are spelled. The resolver asks the fake
//! ate-api-server over a real loopback gRPC connection; every await is bounded.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use ep::processing_request::Request as Phase;
use ep::processing_response::Response as Answer;
use ingress::router_api::RouterService;
use ingress::router_api::proto::ResolveRouteRequest;
use ingress::router_api::proto::resolve_route_response::Result as Outcome;
use ingress::router_api::proto::router_server::Router;
use routing_core::proto::ActorState;
use routing_core::testing::{FakeControlPlane, within};
use routing_core::{Resolver, ResolverSettings};

const HELLO: &str = "hello.demo.actors.resources.substrate.ate.dev";

async fn resolver() -> (FakeControlPlane, Resolver) {
    let fake = FakeControlPlane::start().await;
    fake.add_actor(
        "demo/hello",
        ActorState::Running,
        "10.1.2.3",
        Duration::ZERO,
    );
    let resolver = fake.resolver(ResolverSettings::default());
    (fake, resolver)
}

/// ExtProc's answer to a request_headers phase with these headers: `Ok(endpoint)` for a route,
/// `Err(status)` for an immediate response.
async fn extproc(resolver: &Resolver, headers: &[(&str, &str)]) -> Result<String, i32> {
    let headers = headers
        .iter()
        .map(|(k, v)| core::HeaderValue {
            key: (*k).to_owned(),
            raw_value: v.as_bytes().to_vec(),
            ..Default::default()
        })
        .collect();
    let req = ep::ProcessingRequest {
        request: Some(Phase::RequestHeaders(ep::HttpHeaders {
            headers: Some(core::HeaderMap { headers }),
            end_of_stream: true,
            ..Default::default()
        })),
        ..Default::default()
    };
    let reply = within("ExtProc answer", ingress::extproc::answer(resolver, req)).await;
    match reply.answer.and_then(|a| a.response) {
        Some(Answer::RequestHeaders(h)) => Ok(h
            .response
            .and_then(|c| c.header_mutation)
            .and_then(|m| {
                m.set_headers
                    .into_iter()
                    .filter_map(|o| o.header)
                    .find(|h| h.key == "x-gateway-destination-endpoint")
            })
            .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
            .expect("a route answer names the endpoint")),
        Some(Answer::ImmediateResponse(r)) => Err(r.status.map(|s| s.code).unwrap_or_default()),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// ResolveRoute's answer: `Ok(endpoint)` or `Err((http_status, message))`.
async fn resolve_route(
    resolver: &Resolver,
    host: &str,
    headers: &[(&str, &str)],
) -> Result<String, (u32, String)> {
    let svc = RouterService::new(resolver.clone());
    let req = ResolveRouteRequest {
        host: host.to_owned(),
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    };
    let answer = within(
        "ResolveRoute answer",
        svc.resolve_route(tonic::Request::new(req)),
    )
    .await
    .expect("ResolveRoute answers routing failures in the response")
    .into_inner();
    match answer.result {
        Some(Outcome::Route(r)) => Ok(r.endpoint),
        Some(Outcome::Error(e)) => Err((e.http_status, e.message)),
        None => panic!("empty ResolveRoute answer"),
    }
}

#[tokio::test]
async fn the_schemes_default_port_makes_an_authority_and_its_host_agree() {
    let (_fake, resolver) = resolver().await;
    for (scheme, authority, host, endpoint) in [
        (
            "http",
            format!("{HELLO}:80"),
            HELLO.to_owned(),
            "10.1.2.3:80",
        ),
        (
            "http",
            HELLO.to_owned(),
            format!("{HELLO}:80"),
            "10.1.2.3:80",
        ),
        (
            "https",
            format!("{HELLO}:443"),
            HELLO.to_owned(),
            "10.1.2.3:443",
        ),
    ] {
        let headers = [
            (":scheme", scheme),
            (":authority", authority.as_str()),
            ("host", host.as_str()),
        ];
        let case = format!("{scheme} {authority} + host {host}");
        assert_eq!(
            extproc(&resolver, &headers).await,
            Ok(endpoint.to_owned()),
            "ExtProc: {case}"
        );
        assert_eq!(
            resolve_route(
                &resolver,
                &authority,
                &[(":scheme", scheme), ("host", &host)]
            )
            .await,
            Ok(endpoint.to_owned()),
            "ResolveRoute: {case}"
        );
    }
    // Another port, or a port without a known scheme, is still another origin.
    for (scheme, authority) in [
        (Some("http"), format!("{HELLO}:8080")),
        (Some("https"), format!("{HELLO}:80")),
        (None, format!("{HELLO}:80")),
    ] {
        let mut headers = vec![(":authority", authority.as_str()), ("host", HELLO)];
        headers.extend(scheme.map(|s| (":scheme", s)));
        let case = format!("{scheme:?} {authority} + host {HELLO}");
        assert_eq!(
            extproc(&resolver, &headers).await,
            Err(400),
            "ExtProc: {case}"
        );
        headers.retain(|(k, _)| *k != ":authority");
        assert_eq!(
            resolve_route(&resolver, &authority, &headers).await,
            Err((400, "conflicting :authority and host".to_owned())),
            "ResolveRoute: {case}"
        );
    }
}

#[tokio::test]
async fn two_spellings_of_the_target_header_are_an_invalid_reference() {
    let (fake, resolver) = resolver().await;
    let twice = [
        ("ate-target-actor", "demo/hello"),
        ("Ate-Target-Actor", "demo/other"),
    ];
    assert_eq!(
        resolve_route(&resolver, "gateway.example.com", &twice).await,
        Err((404, "invalid actor reference".to_owned()))
    );
    let mut headers = vec![(":scheme", "http"), (":authority", "gateway.example.com")];
    headers.extend(twice);
    assert_eq!(extproc(&resolver, &headers).await, Err(404));
    assert_eq!(
        fake.calls(routing_core::testing::Method::ResumeActor, "demo/hello"),
        0,
        "an invalid reference never reaches the control plane"
    );
    // One spelling, any case, is the header.
    assert_eq!(
        resolve_route(
            &resolver,
            "gateway.example.com",
            &[("ATE-TARGET-ACTOR", "demo/hello")]
        )
        .await,
        Ok("10.1.2.3:80".to_owned())
    );
}
