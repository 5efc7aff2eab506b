//! The cheapest ExtProc server that still routes, for `bench/ingress.sh`: it answers every
//! `request_headers` with the answer actorgate would send for one fixed route (same header
//! mutations and `envoy.lb` metadata) and ends the stream, with no resolution at all. Envoy does
//! the same work as with actorgate, so "Envoy + this" against Envoy's static route measures
//! Envoy's own ext_proc cost, and against "Envoy + actorgate" what actorgate's server adds.
//!
//!   cargo run --release -p ingress --example extproc_floor -- 127.0.0.1:50061 demo/hello 127.0.0.1:8080

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use envoy_types::pb::envoy::service::ext_proc::v3 as ep;
use futures_util::Stream;
use ingress::extproc::route_answer;
use routing_core::resolver::Placement;
use routing_core::{ActorRef, ResolveKind, Route, WorkerTransport};

type AnswerStream =
    Pin<Box<dyn Stream<Item = Result<ep::ProcessingResponse, tonic::Status>> + Send>>;

struct Floor {
    answer: ep::ProcessingResponse,
}

#[tonic::async_trait]
impl ep::external_processor_server::ExternalProcessor for Floor {
    type ProcessStream = AnswerStream;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ep::ProcessingRequest>>,
    ) -> Result<tonic::Response<AnswerStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let answer = self.answer.clone();
        let out = futures_util::stream::once(async move {
            match inbound.message().await {
                Ok(Some(_)) => Ok(answer),
                Ok(None) => Err(tonic::Status::cancelled("no request")),
                Err(e) => Err(e),
            }
        });
        Ok(tonic::Response::new(Box::pin(out)))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, actor, endpoint] = args.as_slice() else {
        return Err("usage: extproc_floor LISTEN ATESPACE/NAME WORKER_IP:PORT".into());
    };
    let listen: SocketAddr = listen.parse()?;
    let endpoint: SocketAddr = endpoint.parse()?;
    let route = Route {
        placement: Arc::new(Placement {
            actor: ActorRef::parse(actor)?,
            uid: String::new(),
            template: None,
            worker_ip: endpoint.ip(),
            worker_port: Some(endpoint.port()),
            worker_pod: String::new(),
        }),
        endpoint,
        actor_port: endpoint.port(),
        kind: ResolveKind::Cached,
    };
    let answer = route_answer(&route, &WorkerTransport::Plain);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .add_service(ep::external_processor_server::ExternalProcessorServer::new(
            Floor { answer },
        ))
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}
