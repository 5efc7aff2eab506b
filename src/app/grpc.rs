//! The gRPC server: serves what the components registered in [`GrpcServices`] (the simulator,
//! ExtProc, ResolveRoute), the gRPC health service over them and, with `grpc.reflection`,
//! server reflection — on the runtime's listener (plain or TLS with reloadable material), its
//! connections held by the drain.

use std::convert::Infallible;
use std::time::Duration;

use anyhow::{Context, Result};
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use super::Wiring;
use crate::config::Loaded;

/// The gRPC services components want served, by their health-check names.
#[derive(Default)]
pub struct GrpcServices {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
}

impl GrpcServices {
    /// Serves `svc` on the gRPC listener and reports it SERVING on the health service (its
    /// name is its gRPC service name, e.g. `ateapi.Control`).
    pub fn add<S>(&mut self, svc: S)
    where
        S: Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
    }

    /// Whether any service was added.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The gRPC health service's handle, for the shutdown.
pub struct GrpcHealth {
    reporter: HealthReporter,
    served: Vec<&'static str>,
}

impl GrpcHealth {
    /// Every service served, and the server as a whole (`""`), reports NOT_SERVING.
    pub async fn not_serving(&self) {
        for name in self.served.iter().copied().chain([""]) {
            self.reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    }
}

/// Binds `grpc.listen` (when any gRPC service is on) and serves the registered services until
/// the drain starts; open streams then finish (HTTP/2 GOAWAY) under the drain.
pub async fn start(w: &mut Wiring, loaded: &Loaded) -> Result<Option<GrpcHealth>> {
    let Some(addr) = loaded.grpc_listen else {
        return Ok(None);
    };
    let mut listener = w.bind("grpc", "grpc.listen", addr).await?;
    let bound = listener.local_addr();
    if !bound.ip().is_loopback()
        && loaded
            .grpc_tls
            .as_ref()
            .is_none_or(|t| t.client_auth != identity::tls::ClientAuth::Required)
    {
        tracing::warn!(
            addr = %bound,
            "the gRPC listener accepts peers without a client certificate on a non-loopback \
             address: anyone who reaches it can resolve and resume any actor; set grpc.tls with \
             client_auth required, or restrict it with a NetworkPolicy"
        );
    }
    if let Some(files) = loaded.grpc_tls.clone() {
        let tls = identity::tls::ReloadableServerConfig::server(files).context("grpc.tls")?;
        match tls.watch() {
            Ok(handle) => w.keep(handle),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the gRPC TLS files; rotation needs a restart")
            }
        }
        listener = listener.with_tls(tls);
    }

    let GrpcServices { mut routes, names } = std::mem::take(&mut w.grpc);
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in &names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    routes.add_service(health_service);
    if loaded.config.grpc.reflection {
        routes.add_service(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(ingress::router_api::DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .context("gRPC reflection")?,
        );
    }
    // Bounded: streams per connection (one per in-flight request from each Envoy worker),
    // header list size, and dead peers found by keepalive. Messages are capped at tonic's
    // 4 MiB decoding limit; an ExtProc stream must carry request_headers within 30 s.
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .max_concurrent_streams(4096)
        .http2_max_header_list_size(64 * 1024)
        .add_routes(routes.routes());
    let signal = w.drain.signal();
    let incoming = listener.incoming(signal.clone());
    w.drain.spawn(async move {
        let stop = async move { signal.draining().await };
        if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
            tracing::warn!(error = %e, "gRPC server ended with an error");
        }
    });
    Ok(Some(GrpcHealth {
        reporter,
        served: names,
    }))
}
