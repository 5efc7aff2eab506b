//! The `actorgate.router.v1.Router/ResolveRoute` gRPC API: the routing contract for integrations
//! that do not speak ExtProc. Routing failures come back as a structured `error` (HTTP status,
//! client-safe message, gRPC code, reason), so callers can answer their clients directly.

use std::sync::Arc;

use routing_core::Resolver;
use routing_core::validate::{MetaInput, Values};

use crate::trusted_peers::TrustedPeers;

/// Generated types of `actorgate.router.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("actorgate.router.v1");
}

/// The encoded descriptor set of `actorgate.router.v1`, for gRPC server reflection.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/router_descriptor.bin"));

use proto::resolve_route_response::Result as Outcome;
use proto::router_server::{Router, RouterServer};

/// The Router service over a resolver.
#[derive(Clone)]
pub struct RouterService {
    resolver: Resolver,
    trusted: Arc<TrustedPeers>,
}

impl RouterService {
    /// A Router service answering from `resolver`; nobody may name a source actor.
    pub fn new(resolver: Resolver) -> Self {
        Self {
            resolver,
            trusted: Arc::default(),
        }
    }

    /// Callers whose verified client certificate `trusted` names may pass `source_actor`
    /// (DESIGN §5); it comes back in the route for the worker's `ate-source-actor`.
    pub fn with_trusted_peers(mut self, trusted: Arc<TrustedPeers>) -> Self {
        self.trusted = trusted;
        self
    }

    /// The tonic server for this service.
    pub fn into_server(self) -> RouterServer<Self> {
        RouterServer::new(self)
    }
}

#[tonic::async_trait]
impl Router for RouterService {
    async fn resolve_route(
        &self,
        request: tonic::Request<proto::ResolveRouteRequest>,
    ) -> Result<tonic::Response<proto::ResolveRouteResponse>, tonic::Status> {
        let trusted_caller = !request.get_ref().source_actor.is_empty()
            && self.trusted.trusts(
                request
                    .extensions()
                    .get::<runtime::listener::GrpcConnInfo>()
                    .and_then(|c| c.0.spiffe_id()),
            );
        let r = request.into_inner();
        // A trusted caller's one valid source actor, else none (never from anyone else).
        let source_actor = if trusted_caller {
            routing_core::wire::source_actor(Values::One(r.source_actor.as_bytes()))
                .map(|a| a.to_string())
                .unwrap_or_default()
        } else {
            String::new()
        };
        // The rules every front shares (routing_core::validate), read from the header map as
        // ExtProc reads Envoy's headers. `host` is the client's Host or :authority; a
        // `:authority` or `host` entry in `headers` must agree with it (a `:scheme` entry
        // supplies the default port, so `h:80` and `h` agree).
        let mut input = MetaInput {
            authority_must_match_host: true,
            ..MetaInput::default()
        };
        if !r.host.is_empty() {
            input.target_authority.push(r.host.as_bytes());
        }
        for (name, value) in &r.headers {
            // The same authority given twice is one value.
            if !r.host.is_empty()
                && name.eq_ignore_ascii_case(":authority")
                && value.eq_ignore_ascii_case(&r.host)
            {
                continue;
            }
            input.push_header(name, value.as_bytes());
        }
        let validated = match input.validate_target(self.resolver.extractor()) {
            Ok(v) => v,
            Err(e) => {
                return Ok(tonic::Response::new(proto::ResolveRouteResponse {
                    result: Some(Outcome::Error(proto::RouteError {
                        http_status: u32::from(e.http_status()),
                        message: e.client_message(),
                        grpc_code: e.grpc_code() as i32,
                        reason: e.outcome().to_owned(),
                    })),
                }));
            }
        };
        let result = match validated.route(&self.resolver).await {
            Ok(route) => Outcome::Route(proto::Route {
                actor: route.actor().to_string(),
                endpoint: route.endpoint.to_string(),
                template: route
                    .placement
                    .template
                    .as_ref()
                    .map(|t| format!("{}/{}", t.namespace, t.name))
                    .unwrap_or_default(),
                resumed: route.resumed(),
                actor_port: u32::from(route.actor_port),
                kind: route.kind.as_str().to_owned(),
                source_actor,
            }),
            Err(e) => Outcome::Error(proto::RouteError {
                http_status: u32::from(e.http_status()),
                message: e.client_message(),
                grpc_code: e.grpc_code() as i32,
                reason: e.outcome().to_owned(),
            }),
        };
        Ok(tonic::Response::new(proto::ResolveRouteResponse {
            result: Some(result),
        }))
    }
}
