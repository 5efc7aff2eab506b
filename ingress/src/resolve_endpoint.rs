//! The HTTP resolve endpoint (DESIGN §5) for `auth_request` / ForwardAuth-style proxies (nginx,
//! Traefik, HAProxy), served on a listener of its own (`ingress.resolve.listen`, wired by the
//! binary's `app::resolve`; never the admin port, since resolving resumes actors):
//!
//! * `GET /resolve`: the actor comes from `ate-target-actor`, else from `X-Forwarded-Host`
//!   (Traefik, and what the nginx example sets), else from `Host`. Success: `200` with
//!   `x-gateway-destination-endpoint`, `ate-target-actor`, `x-actor-template` and, in worker agent
//!   mode, `x-ate-target-port`. Failure: the DESIGN §4 status and `text/plain` body, and the same
//!   in `x-actorgate-status` /
//!   `x-actorgate-message` so a proxy that only passes 2xx/401/403 from its auth subrequest
//!   (nginx) can still answer with the right status (see `/resolve/error`).
//! * `GET /resolve/error`: answers with the status and message given in `x-actorgate-status` and
//!   `x-actorgate-message` (only the table's statuses, message sanitised): nginx's
//!   `error_page` location calls it to replay a failure without resolving twice.

use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use routing_core::validate::{MetaInput, Values};
use routing_core::wire::{
    ACTOR_TEMPLATE, ACTORGATE_MESSAGE, ACTORGATE_STATUS, GATEWAY_DESTINATION_ENDPOINT,
    TARGET_ACTOR, TARGET_PORT,
};
use routing_core::{Resolver, WorkerTransport};

use crate::headers::X_FORWARDED_HOST;

/// Statuses of DESIGN §4's table and the 400 of refused request metadata (the only ones
/// `/resolve/error` replays).
const TABLE_STATUSES: [u16; 7] = [400, 401, 403, 404, 500, 503, 504];

fn header<'a>(h: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Answers `GET /resolve`: validates the request's actor reference (fail-closed, as every front),
/// resolves it (resuming the actor if needed) and answers `200` with the route headers, or the
/// DESIGN §4 status with a `text/plain` body made by `body` and the same status and message in
/// `x-actorgate-status` / `x-actorgate-message`. `body` turns a message into the response body
/// type of the caller's server.
pub async fn resolve<B>(
    resolver: &Resolver,
    headers: &HeaderMap,
    body: impl FnOnce(String) -> B,
) -> Response<B> {
    // The rules every front shares (routing_core::validate). The actor's authority is
    // X-Forwarded-Host when present (the forward-auth proxy's client Host), else Host; Host is
    // still checked (one valid value) but may name the auth hop itself. X-Forwarded-Host must
    // hold one value: several lines, or a comma list of more than one element, are the same
    // `multiple host values` 400 as two Host lines (never "the first one wins").
    let mut forwarded_host = Values::Absent;
    for line in headers.get_all(&X_FORWARDED_HOST) {
        for element in line.as_bytes().split(|b| *b == b',') {
            forwarded_host.push(element.trim_ascii());
        }
    }
    let input = MetaInput {
        target_actor: Values::header(headers, &TARGET_ACTOR),
        target_authority: forwarded_host,
        host: Values::header(headers, header::HOST),
        require_host: false,
        authority_must_match_host: false,
        default_port: None,
    };
    let routed = match input.validate_target(resolver.extractor()) {
        Ok(v) => v
            .route(resolver)
            .await
            .map_err(|e| (e.http_status(), e.client_message())),
        Err(e) => Err((e.http_status(), e.client_message())),
    };
    match routed {
        Ok(route) => {
            let mut r = Response::new(body(String::new()));
            let h = r.headers_mut();
            if let Ok(v) = HeaderValue::from_str(&route.endpoint.to_string()) {
                h.insert(&GATEWAY_DESTINATION_ENDPOINT, v);
            }
            if let Ok(v) = HeaderValue::from_str(route.actor().as_str()) {
                h.insert(&TARGET_ACTOR, v);
            }
            if let Some(t) = &route.placement.template
                && let Ok(v) = HeaderValue::from_str(&format!("{}/{}", t.namespace, t.name))
            {
                h.insert(&ACTOR_TEMPLATE, v);
            }
            // Worker agent mode: the actor port the agent must dial (the proxy sends it on).
            if let WorkerTransport::Agent { .. } = resolver.settings().worker_transport {
                h.insert(&TARGET_PORT, HeaderValue::from(route.actor_port));
            }
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        Err((status, message)) => {
            let mut r = Response::new(body(message.clone()));
            *r.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(&ACTORGATE_STATUS, HeaderValue::from(status));
            if let Ok(v) = HeaderValue::from_str(&message) {
                h.insert(&ACTORGATE_MESSAGE, v);
            }
            r
        }
    }
}

/// Answers `GET /resolve/error`: replays a failure reported by `/resolve` from its
/// `x-actorgate-status` (only DESIGN §4's statuses and 400; anything else is 500) and
/// `x-actorgate-message` (sanitised; `routing failed` when absent) headers.
pub fn replay_error<B>(headers: &HeaderMap, body: impl FnOnce(String) -> B) -> Response<B> {
    let status = header(headers, &ACTORGATE_STATUS)
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|s| TABLE_STATUSES.contains(s))
        .unwrap_or(500);
    let message: String = header(headers, &ACTORGATE_MESSAGE)
        .map(routing_core::error::sanitize_detail)
        .filter(|m| m != "no details")
        .unwrap_or_else(|| "routing failed".to_owned());
    let mut r = Response::new(body(message));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
