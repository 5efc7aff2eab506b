//! The `actorgate.router.v1.Router/ResolveRoute` gRPC API: the routing contract for integrations
//! that do not speak ExtProc. Routing failures come back as a structured `error` (HTTP status,
//! client-safe message, gRPC code, reason), so callers can answer their clients directly.

use routing_core::{RequestMeta, Resolver};

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
}

impl RouterService {
    pub fn new(resolver: Resolver) -> Self {
        Self { resolver }
    }

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
        let r = request.into_inner();
        let target = r.headers.get("ate-target-actor").map(String::as_str);
        let authority = (!r.host.is_empty())
            .then_some(r.host.as_str())
            .or_else(|| r.headers.get("host").map(String::as_str));
        let result = match self
            .resolver
            .route(&RequestMeta {
                target_actor: target,
                authority,
            })
            .await
        {
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
